"""LMTP over Cog, the wire format (LMTP.md §1, §5): parse ``ops_batch_json``, format output lines.

Parsing turns the one JSON string into typed ops. A batch that is not a list of
``[COMMAND, ARGS]`` pairs is rejected whole (:class:`~.errors.BatchFormatError`); anything wrong
with a single op becomes a :class:`RejectedOp` that is answered in band, so one bad op never
takes the others down. Validation happens here, against the model's :class:`Limits`, so the
engine only ever sees token ids it can index with. A good GENERATE or SCORE op carries the
engine's request (:mod:`.requests`) beside the stream id the client gave it; the engine never
sees the wire format.

Formatting writes one compact, strict JSON object per line (no ``NaN``/``Infinity``: LMQL's
client cannot parse them) behind ``TOKEN`` or ``MSG``, each line ending in ``\\n``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import checks
from .errors import BatchFormatError
from .requests import (
    MAX_LOGIT_BIAS,
    MAX_PENALTY,
    MAX_SEED,
    MAX_TEMPERATURE,
    GenerationRequest,
    SamplingParams,
    ScoreRequest,
    temperature_problem,
)

StreamId = None | bool | int | float | str
"""Any JSON scalar: echoed back exactly as the client sent it."""

LineKind = Literal["TOKEN", "MSG"]
FinishReason = Literal["stop", "length"] | None

DEFAULT_MAX_TOKENS = 32
DEFAULT_TOP_LOGPROBS = 1
# `model` names the endpoint and is ignored. `length_penalty` is one of the decoding parameters
# LMQL forwards from `lmql.model(...)`; it only means something to beam search, so it is accepted
# and has no effect, rather than failing queries that set it.
_COMMON_ARGS = frozenset({"stream_id", "model"})
GENERATE_ARGS = _COMMON_ARGS | {
    "prompt",
    "max_tokens",
    "temperature",
    "top_logprobs",
    "logit_bias",
    "top_p",
    "top_k",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "length_penalty",
}
SCORE_ARGS = _COMMON_ARGS | {"prompt", "scored"}


# --- typed ops -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What the served model takes: token ids in ``[0, vocab_size)``, sequences up to the window."""

    vocab_size: int
    context_length: int | None
    """``None`` when the checkpoint does not say; then no length is refused up front."""


@dataclass(frozen=True)
class GenerateOp:
    stream_id: StreamId
    request: GenerationRequest


@dataclass(frozen=True)
class ScoreOp:
    stream_id: StreamId
    request: ScoreRequest


@dataclass(frozen=True)
class ModelInfoOp:
    stream_id: StreamId


@dataclass(frozen=True)
class RejectedOp:
    """An op answered with one error line and nothing else."""

    stream_id: StreamId
    kind: LineKind
    error: str


Op = GenerateOp | ScoreOp | ModelInfoOp | RejectedOp


class _FieldError(ValueError):
    """One argument of one op is invalid; the message names the field."""


# --- parsing --------------------------------------------------------------------------------------


def parse_ops_batch(ops_batch_json: object, *, limits: Limits) -> list[Op]:
    """Decode ``ops_batch_json`` into one typed op per ``[COMMAND, ARGS]`` pair, in order.

    Raises:
        BatchFormatError: not a string of strict JSON, not a list, or an item that is not a
            ``[str, object]`` pair.
    """
    if not isinstance(ops_batch_json, str):
        raise BatchFormatError(f"expected a JSON string, got {_describe_type(ops_batch_json)}")
    try:
        batch = json.loads(
            ops_batch_json, parse_constant=_reject_constant, parse_float=_finite_float
        )
    except ValueError as error:
        raise BatchFormatError(str(error)) from None
    except RecursionError:
        raise BatchFormatError("JSON nested too deeply") from None
    if not isinstance(batch, list):
        raise BatchFormatError(
            f"expected a list of [COMMAND, ARGS] pairs, got {_describe_type(batch)}"
        )
    for index, item in enumerate(batch):
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], dict)
        ):
            raise BatchFormatError(f"item {index} is not a [COMMAND, ARGS] pair: {checks.preview(item)}")
    return [parse_op(command, args, limits=limits) for command, args in batch]


def parse_op(command: str, args: Mapping[str, Any], *, limits: Limits) -> Op:
    """Validate one op; problems come back as a :class:`RejectedOp`, never as an exception."""
    stream_id = args.get("stream_id")
    if isinstance(stream_id, list | dict):
        return RejectedOp(
            None,
            "TOKEN",
            f"field 'stream_id' must be a JSON scalar, got {_describe_type(stream_id)}",
        )
    parsers = {"GENERATE": _parse_generate, "SCORE": _parse_score, "MODEL_INFO": _parse_model_info}
    parser = parsers.get(command)
    if parser is None:
        return RejectedOp(stream_id, "MSG", f"unknown command {command!r}")
    try:
        return parser(stream_id, args, limits)
    except _FieldError as error:
        return RejectedOp(stream_id, "TOKEN", f"{command}: {error}")


def _parse_generate(stream_id: StreamId, args: Mapping[str, Any], limits: Limits) -> GenerateOp:
    _check_known(args, GENERATE_ARGS)
    prompt = _token_ids(args, "prompt", limits)
    if not prompt:
        raise _FieldError("field 'prompt' must hold at least one token id")
    if limits.context_length is not None and len(prompt) > limits.context_length:
        raise _FieldError(
            f"field 'prompt' has {len(prompt)} tokens, more than the model's context window "
            f"of {limits.context_length}"
        )
    top_logprobs = _integer(args, "top_logprobs", default=DEFAULT_TOP_LOGPROBS, minimum=0)
    if top_logprobs > limits.vocab_size:
        raise _FieldError(
            f"field 'top_logprobs' is {top_logprobs}, more than the vocabulary size "
            f"{limits.vocab_size}"
        )
    _number(args, "length_penalty", default=1.0)
    request = GenerationRequest(
        prompt=prompt,
        max_tokens=_integer(args, "max_tokens", default=DEFAULT_MAX_TOKENS, minimum=0),
        top_logprobs=top_logprobs,
        logit_bias=_logit_bias(args, limits),
        sampling=SamplingParams(
            temperature=_temperature(args),
            # A top_k of the vocabulary or more keeps every token, as 0 does.
            top_k=min(_integer(args, "top_k", default=0, minimum=0), limits.vocab_size),
            top_p=_number(args, "top_p", default=1.0, above=0.0, maximum=1.0),
            repetition_penalty=_number(
                args, "repetition_penalty", default=1.0, above=0.0, maximum=MAX_PENALTY
            ),
            presence_penalty=_number(
                args, "presence_penalty", default=0.0, minimum=-MAX_PENALTY, maximum=MAX_PENALTY
            ),
            frequency_penalty=_number(
                args, "frequency_penalty", default=0.0, minimum=-MAX_PENALTY, maximum=MAX_PENALTY
            ),
            seed=_optional_integer(args, "seed", minimum=0, maximum=MAX_SEED),
        ),
    )
    return GenerateOp(stream_id=stream_id, request=request)


def _parse_score(stream_id: StreamId, args: Mapping[str, Any], limits: Limits) -> ScoreOp:
    _check_known(args, SCORE_ARGS)
    prompt = _token_ids(args, "prompt", limits)
    if not prompt:
        raise _FieldError(
            "field 'prompt' must hold at least one token id: the first scored token needs a "
            "predecessor"
        )
    scored = _token_ids(args, "scored", limits)
    # Scoring feeds prompt + scored[:-1]; the last scored token is only read, never fed.
    fed = len(prompt) + max(len(scored) - 1, 0)
    if limits.context_length is not None and fed > limits.context_length:
        raise _FieldError(
            f"fields 'prompt' and 'scored' need {fed} positions, more than the model's context "
            f"window of {limits.context_length}"
        )
    return ScoreOp(stream_id=stream_id, request=ScoreRequest(prompt=prompt, scored=scored))


def _parse_model_info(stream_id: StreamId, args: Mapping[str, Any], limits: Limits) -> ModelInfoOp:
    # LMQL sends {"model": ..., "data": {...}}; nothing in it changes the answer.
    return ModelInfoOp(stream_id=stream_id)


def _check_known(args: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(args) - known)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise _FieldError(
            f"unknown argument{plural} {names} (this runtime knows {', '.join(sorted(known))})"
        )


def _token_ids(args: Mapping[str, Any], name: str, limits: Limits) -> tuple[int, ...]:
    value = args.get(name)
    if value is None:
        raise _FieldError(f"field {name!r} is required (a list of token ids)")
    if not isinstance(value, list) or not all(checks.is_integer(item) for item in value):
        raise _FieldError(
            f"field {name!r} must be a list of integer token ids, got {checks.preview(value)}"
        )
    for token in value:
        if not 0 <= token < limits.vocab_size:
            raise _FieldError(
                f"field {name!r} has token id {token}, outside the vocabulary "
                f"[0, {limits.vocab_size})"
            )
    return tuple(value)


def _temperature(args: Mapping[str, Any]) -> float:
    temperature = _number(args, "temperature", default=0.0, minimum=0.0, maximum=MAX_TEMPERATURE)
    problem = temperature_problem(temperature)
    if problem is not None:
        raise _FieldError(f"field 'temperature' {problem}")
    return temperature


def _logit_bias(args: Mapping[str, Any], limits: Limits) -> tuple[tuple[int, float], ...]:
    value = args.get("logit_bias")
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _FieldError(
            f"field 'logit_bias' must be an object of token ids to biases, got {checks.preview(value)}"
        )
    pairs = []
    for key, bias in value.items():
        token = _token_key(key)
        if token is None:
            raise _FieldError(
                f"field 'logit_bias' has key {key!r}, which is not a decimal token id"
            )
        if not 0 <= token < limits.vocab_size:
            raise _FieldError(
                f"field 'logit_bias' has token id {token}, outside the vocabulary "
                f"[0, {limits.vocab_size})"
            )
        if not checks.is_number(bias) or bias > MAX_LOGIT_BIAS:
            raise _FieldError(
                f"field 'logit_bias' gives token {key} the bias {checks.preview(bias)}, which is not "
                f"a number of at most {MAX_LOGIT_BIAS:g}"
            )
        pairs.append((token, float(bias)))
    return tuple(pairs)


def _token_key(key: object) -> int | None:
    """A ``logit_bias`` key as a token id: decimal digits (JSON keys are strings) or an int."""
    if checks.is_integer(key):
        return key  # type: ignore[return-value]
    if isinstance(key, str) and key.isascii() and key.isdecimal():
        return int(key)
    return None


def _integer(args: Mapping[str, Any], name: str, *, default: int, minimum: int) -> int:
    value = _optional_integer(args, name, minimum=minimum)
    return default if value is None else value


def _optional_integer(
    args: Mapping[str, Any], name: str, *, minimum: int, maximum: int | None = None
) -> int | None:
    """``None`` when absent or null: LMQL sends e.g. ``"max_tokens": null`` for "no hint"."""
    value = args.get(name)
    if value is None:
        return None
    try:
        return checks.integer(value, minimum=minimum, maximum=maximum)
    except checks.Unexpected as unexpected:
        raise _FieldError(unexpected.sentence(f"field {name!r}")) from None


def _number(
    args: Mapping[str, Any],
    name: str,
    *,
    default: float,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> float:
    value = args.get(name)
    if value is None:
        return default
    try:
        return checks.number(value, minimum=minimum, above=above, maximum=maximum)
    except checks.Unexpected as unexpected:
        raise _FieldError(unexpected.sentence(f"field {name!r}")) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _describe_type(value: object) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    return names.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


# --- formatting -----------------------------------------------------------------------------------


def _line(kind: LineKind, payload: Mapping[str, Any]) -> str:
    # allow_nan=False makes a stray NaN/Infinity a loud ValueError here instead of a line LMQL
    # cannot parse; callers turn it into an error line for that stream.
    return f"{kind} {json.dumps(payload, allow_nan=False, separators=(',', ':'))}\n"


def token_line(
    stream_id: StreamId,
    *,
    token: int,
    logprob: float,
    finish_reason: FinishReason,
    top_logprobs: Mapping[int, float] | None,
) -> str:
    """``TOKEN {"stream_id", "token", "logprob", "finish_reason", "top_logprobs"}``."""
    payload: dict[str, Any] = {
        "stream_id": stream_id,
        "token": token,
        "logprob": logprob,
        "finish_reason": finish_reason,
    }
    if top_logprobs is not None:
        payload["top_logprobs"] = {str(key): value for key, value in top_logprobs.items()}
    return _line("TOKEN", payload)


def error_line(stream_id: StreamId, message: str, *, kind: LineKind = "TOKEN") -> str:
    """An error for one stream (or, with a null stream id, for the whole batch)."""
    return _line(kind, {"stream_id": stream_id, "error": message})


def model_info_line(stream_id: StreamId, model_info: Mapping[str, Any]) -> str:
    return _line("MSG", {"stream_id": stream_id, "model_info": model_info})


def batch_error_line(error: BatchFormatError) -> str:
    return error_line(None, str(error), kind="MSG")


def join_lines(lines: Sequence[str]) -> str:
    """One chunk of whole lines: the client parses each streamed chunk on its own."""
    return "".join(lines)
