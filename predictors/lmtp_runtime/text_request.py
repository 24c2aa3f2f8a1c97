"""Text mode's inputs, Replicate-LLM style: which mode a prediction is in, and a checked request.

The one ``predict`` serves two kinds of caller. LMQL sends ``ops_batch_json`` (LMTP, token ids
in and out); generic Replicate clients (the ``replicate`` package, LiteLLM, promptfoo) send a
``prompt`` and the sampling inputs Replicate's LLMs share: ``max_new_tokens``, ``temperature``,
``top_p``, ``top_k``, ``repetition_penalty``, ``stop_sequences``, ``seed`` and so on.

Cog's schema rejects most out-of-range values with a 422 before the model runs, but a direct
Python call (``predictor.stream(prompt="hi", top_p=0)``) and the bounds Cog cannot express
(``top_p > 0``: Cog's ``Input`` has ``ge``/``le`` only) are checked here. Every problem is a
:class:`TextInputError` naming the input: in text mode an exception out of ``predict`` is what
Replicate's LLM clients expect (the prediction fails with that message), unlike LMTP, where LMQL
only understands in-band error lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from . import checks
from .errors import TextInputError
from .inputs import (
    DEFAULT_FREQUENCY_PENALTY,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MIN_NEW_TOKENS,
    DEFAULT_PRESENCE_PENALTY,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    PENALTY_RANGE,
)
from .requests import (
    MAX_PENALTY,
    MAX_SEED,
    MAX_TEMPERATURE,
    SamplingParams,
    temperature_problem,
)

Mode = Literal["text", "lmtp"]


@dataclass(frozen=True)
class TextRequest:
    """One text prediction, checked: what to format, and how to decode."""

    prompt: str
    system_prompt: str | None = None
    prompt_template: str | None = None
    """``None``: the tokenizer's chat template, or the plain prompt (see :mod:`.prompt_format`)."""
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    min_new_tokens: int = DEFAULT_MIN_NEW_TOKENS
    """End-of-sequence tokens are suppressed until this many tokens have been generated."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_sequences: tuple[str, ...] = ()


def choose_mode(*, prompt: object, ops_batch_json: object) -> Mode:
    """``"text"`` for a ``prompt``, ``"lmtp"`` for ``ops_batch_json``; exactly one must be given.

    An input is given unless it is ``None``, as for any optional Cog input. An empty
    ``ops_batch_json`` is therefore LMTP, answered in band as invalid JSON (LMTP.md §5).

    Raises:
        TextInputError: both or neither were given.
    """
    if prompt is not None and ops_batch_json is not None:
        raise TextInputError(
            "Give either prompt (text generation) or ops_batch_json (LMTP, for LMQL), not both."
        )
    if prompt is None and ops_batch_json is None:
        raise TextInputError(
            "Give a prompt to generate text, or ops_batch_json to speak LMTP (as LMQL does)."
        )
    return "text" if prompt is not None else "lmtp"


def text_request(
    *,
    prompt: object,
    system_prompt: object = None,
    prompt_template: object = None,
    max_new_tokens: object = DEFAULT_MAX_NEW_TOKENS,
    max_length: object = None,
    max_tokens: object = None,
    min_new_tokens: object = DEFAULT_MIN_NEW_TOKENS,
    min_tokens: object = None,
    temperature: object = DEFAULT_TEMPERATURE,
    top_p: object = DEFAULT_TOP_P,
    top_k: object = DEFAULT_TOP_K,
    repetition_penalty: object = DEFAULT_REPETITION_PENALTY,
    presence_penalty: object = DEFAULT_PRESENCE_PENALTY,
    frequency_penalty: object = DEFAULT_FREQUENCY_PENALTY,
    stop_sequences: object = None,
    seed: object = None,
) -> TextRequest:
    """Check the text-mode inputs of one prediction; ``None`` means "not given" for each.

    Raises:
        TextInputError: an input has the wrong type or is out of range (the message names it),
            or the token limits contradict each other.
    """
    budget = _token_limit(
        {"max_new_tokens": max_new_tokens, "max_length": max_length, "max_tokens": max_tokens},
        default=DEFAULT_MAX_NEW_TOKENS,
        minimum=1,
    )
    floor = _token_limit(
        {"min_new_tokens": min_new_tokens, "min_tokens": min_tokens},
        default=DEFAULT_MIN_NEW_TOKENS,
        minimum=-1,
    )
    floor = max(floor, 0)  # -1 is Replicate's spelling of "no minimum"
    if floor > budget:
        raise TextInputError(
            f"min_new_tokens ({floor}) is more than max_new_tokens ({budget}): lower it, or "
            "raise max_new_tokens."
        )
    return TextRequest(
        prompt=_text("prompt", prompt, required=True),
        system_prompt=_text("system_prompt", system_prompt) or None,
        prompt_template=_text("prompt_template", prompt_template) or None,
        max_new_tokens=budget,
        min_new_tokens=floor,
        sampling=SamplingParams(
            temperature=_temperature(temperature),
            top_p=_number("top_p", top_p, DEFAULT_TOP_P, above=0.0, maximum=1.0),
            top_k=_integer("top_k", top_k, DEFAULT_TOP_K, minimum=0),
            repetition_penalty=_number(
                "repetition_penalty",
                repetition_penalty,
                DEFAULT_REPETITION_PENALTY,
                above=0.0,
                maximum=MAX_PENALTY,
            ),
            presence_penalty=_penalty("presence_penalty", presence_penalty),
            frequency_penalty=_penalty("frequency_penalty", frequency_penalty),
            seed=_optional_integer("seed", seed, minimum=0, maximum=MAX_SEED),
        ),
        stop_sequences=parse_stop_sequences(_text("stop_sequences", stop_sequences)),
    )


def parse_stop_sequences(value: str | None) -> tuple[str, ...]:
    """Replicate's comma-separated ``stop_sequences``, e.g. ``"<end>,<stop>"``; empty items dropped.

    Items are kept exactly, spaces included: ``"\\nUser:"`` and ``" User:"`` are different stops.
    """
    if not value:
        return ()
    return tuple(item for item in value.split(",") if item)


def _token_limit(given: dict[str, object], *, default: int, minimum: int) -> int:
    """A token limit from its input and the other names for it, which must agree when given.

    The first name (``max_new_tokens``, ``min_new_tokens``) counts as given only when it differs
    from its default: Cog always fills it in, so a client that sends only ``max_length`` still
    gets ``max_new_tokens=128`` alongside.
    """
    first = next(iter(given))
    values = {}
    for name, value in given.items():
        number = _optional_integer(name, value, minimum=minimum)
        if number is not None and not (name == first and number == default):
            values[name] = number
    if len(set(values.values())) > 1:
        listed = ", ".join(f"{name}={number}" for name, number in values.items())
        others = " and ".join(name for name in given if name != first)
        raise TextInputError(
            f"The token limits disagree ({listed}): {others} "
            f"{'are other names' if len(given) > 2 else 'is another name'} for {first}, so "
            "give one of them."
        )
    return next(iter(values.values()), default)


def _penalty(name: str, value: object) -> float:
    return _number(name, value, 0.0, minimum=-PENALTY_RANGE, maximum=PENALTY_RANGE)


def _temperature(value: object) -> float:
    temperature = _number(
        "temperature", value, DEFAULT_TEMPERATURE, minimum=0.0, maximum=MAX_TEMPERATURE
    )
    problem = temperature_problem(temperature)
    if problem is not None:
        raise TextInputError(f"temperature {problem}.")
    return temperature


def _text(name: str, value: object, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise TextInputError(checks.Unexpected("a string", value).sentence(name) + ".")
    return value


def _integer(name: str, value: object, default: int, *, minimum: int) -> int:
    number = _optional_integer(name, value, minimum=minimum)
    return default if number is None else number


def _optional_integer(
    name: str, value: object, *, minimum: int, maximum: int | None = None
) -> int | None:
    if value is None:
        return None
    try:
        return checks.integer(value, minimum=minimum, maximum=maximum)
    except checks.Unexpected as unexpected:
        raise TextInputError(unexpected.sentence(name) + ".") from None


def _number(
    name: str,
    value: object,
    default: float,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> float:
    if value is None:
        return default
    try:
        return checks.number(value, minimum=minimum, above=above, maximum=maximum)
    except checks.Unexpected as unexpected:
        raise TextInputError(unexpected.sentence(name) + ".") from None
