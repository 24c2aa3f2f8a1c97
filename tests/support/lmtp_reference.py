"""Helpers for the LMTP conformance suite: a strict line parser and a plain-transformers reference.

The conformance tests treat the predictor runtime as a black box: they send ``ops_batch_json``
strings to ``LmtpPredictor.stream`` and read back the lines, exactly as LMQL's Replicate client
does. What they compare against is computed here, by :class:`Reference`, with nothing but
``model(input_ids).logits`` on an independently loaded float32 copy of the same checkpoint: every
step recomputes the whole prefix (no KV cache, no padding, no batching, no ``generate``), so a
bug in the runtime's optimisations cannot hide in the reference too.

Everything expensive (tiny checkpoints, loaded predictors, reference models) is cached per pytest
session by the ``harness`` fixture of ``tests/predictors/conformance/conftest.py``. See
docs/lmtp.md for the contract the tests check.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from lmtp_cog.model_settings import local_model_settings

# Generous: the tiny models answer in well under a second. Only a hang gets anywhere near this.
PREDICTION_TIMEOUT_S = 60.0
LOGPROB_TOLERANCE = 1e-4
LINE_PATTERN = re.compile(r"(TOKEN|MSG) (\{.*\})")
FINISH_REASONS = (None, "stop", "length")
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
RUNTIME_VERSION = "0.1.0"

JsonScalar = None | bool | int | float | str
MakeHarness = Callable[..., "Harness"]
"""The conformance suite's ``harness(max_batch_size=8, **make_model_args)`` fixture."""


def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded for a while, then restore the thread count (a fixture body).

    A 2-layer model is too small to gain from intra-op threads, and on a busy 2-core machine
    they make every forward pass 10-50x slower: the whole suite then takes minutes, not seconds.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- reading the predictor's output ---------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses ``NaN`` and ``±Infinity``: LMQL's client chokes on them."""
    return json.loads(text, parse_constant=_reject_constant)


@dataclass(frozen=True)
class Line:
    """One output line, ``TOKEN {...}`` or ``MSG {...}``, with its JSON object decoded."""

    kind: str
    data: dict[str, Any]

    @property
    def stream_id(self) -> JsonScalar:
        return self.data.get("stream_id")

    @property
    def error(self) -> str | None:
        return self.data.get("error")

    @property
    def token(self) -> int:
        return self.data["token"]

    @property
    def logprob(self) -> float:
        return self.data["logprob"]

    @property
    def finish_reason(self) -> str | None:
        return self.data["finish_reason"]

    @property
    def top_logprobs(self) -> dict[str, float]:
        return self.data["top_logprobs"]


def parse_chunks(chunks: Iterable[object]) -> list[Line]:
    """Check the framing rules of docs/lmtp.md §1 on every chunk and return the decoded lines.

    Each chunk must be a ``str`` of whole lines (so no line is ever split across two SSE events),
    each line one strict-JSON object behind ``TOKEN`` or ``MSG``.
    """
    lines: list[Line] = []
    for index, chunk in enumerate(chunks):
        assert isinstance(chunk, str), (
            f"chunk {index} is {type(chunk).__name__}, not str: {chunk!r}"
        )
        assert chunk.endswith("\n"), f"chunk {index} does not end with a newline: {chunk!r}"
        for text in chunk[:-1].split("\n"):
            match = LINE_PATTERN.fullmatch(text)
            assert match, (
                f"chunk {index} holds a line that is not `TOKEN {{...}}`/`MSG {{...}}`: {text!r}"
            )
            try:
                data = strict_json(match.group(2))
            except ValueError as error:
                raise AssertionError(f"not strict JSON ({error}): {text!r}") from None
            assert isinstance(data, dict), f"not one JSON object: {text!r}"
            lines.append(Line(match.group(1), data))
    return lines


def check_token_line(line: Line) -> None:
    """A non-error TOKEN line has an int token, a finite float logprob and a known finish reason."""
    assert line.kind == "TOKEN", line
    assert isinstance(line.token, int) and not isinstance(line.token, bool), line
    assert isinstance(line.logprob, int | float) and math.isfinite(line.logprob), line
    assert line.logprob <= 1e-6, f"a log-probability above 0: {line}"
    assert line.finish_reason in FINISH_REASONS, line
    if "top_logprobs" in line.data and line.top_logprobs is not None:
        top = line.top_logprobs
        assert isinstance(top, dict) and top, line
        for key, value in top.items():
            assert key.isdigit() and str(int(key)) == key, (
                f"top_logprobs key {key!r} is not a decimal id"
            )
            assert isinstance(value, int | float) and math.isfinite(value), line


def check_stream_ends(lines: Sequence[Line]) -> None:
    """Nothing follows a stream's finish line or error line (stream ids must be unique here)."""
    finished: set[str] = set()
    for line in lines:
        key = json.dumps(line.stream_id)
        assert key not in finished, f"line after stream {key} had finished: {line}"
        if line.error is not None or (line.kind == "TOKEN" and line.data.get("finish_reason")):
            finished.add(key)


def by_stream(lines: Sequence[Line]) -> dict[JsonScalar, list[Line]]:
    """Group lines by stream id, keeping each stream's order."""
    streams: dict[JsonScalar, list[Line]] = {}
    for line in lines:
        streams.setdefault(line.stream_id, []).append(line)
    return streams


def same_json(a: object, b: object) -> bool:
    """Equal as JSON values, so ``1``, ``1.0``, ``true`` and ``"1"`` are all told apart."""
    return json.dumps(a) == json.dumps(b)


# --- the reference --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """What the reference expects for one generated token."""

    token: int
    logprob: float
    dist: torch.Tensor  # log_softmax over the (biased, penalised) logits, float32
    finish_reason: str | None


@dataclass(frozen=True)
class Penalties:
    """Penalties a GENERATE op may ask for.

    ``presence`` and ``frequency`` are OpenAI's, over the tokens generated so far in the stream
    (docs/lmtp.md §2); ``repetition`` is transformers' (divide positive logits, multiply
    negative ones) over prompt and output alike (docs/lmtp.md, Decisions).
    """

    presence: float = 0.0
    frequency: float = 0.0
    repetition: float = 1.0


class Reference:
    """Expected GENERATE/SCORE results from full, uncached forward passes of a float32 model."""

    def __init__(self, checkpoint_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.checkpoint_dir = checkpoint_dir
        self.model = AutoModelForCausalLM.from_pretrained(str(checkpoint_dir), dtype=torch.float32)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir))
        config = self.model.config
        self.vocab_size: int = config.vocab_size
        self.context_length: int = (
            getattr(config, "max_position_embeddings", None) or config.n_positions
        )
        eos = config.eos_token_id
        self.eos_ids: list[int] = list(eos) if isinstance(eos, list) else [eos]

    def encode(self, text: str) -> list[int]:
        """BOS + the text's ids, the way LMQL builds prompts."""
        return [self.tokenizer.bos_token_id, *self.ids(text)]

    def ids(self, text: str) -> list[int]:
        """The text's own ids, no special tokens (an LMQL ``distribution`` value, say)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def completion_ids(self, text: str) -> list[int]:
        """An OpenAI completion's prompt, tokenized as a tokenizer does by default."""
        return self.tokenizer(text).input_ids

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template's text with the generation prompt, tokenized as it is."""
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def text(self, ids: Sequence[int]) -> str:
        """The decoded text of generated ids, end-of-sequence tokens left out."""
        return self.tokenizer.decode(
            [i for i in ids if i not in self.eos_ids], skip_special_tokens=True
        )

    @torch.no_grad()
    def logprobs(self, ids: Sequence[int]) -> torch.Tensor:
        """``log_softmax`` of the next-token logits after every prefix of ``ids`` (one pass)."""
        return torch.log_softmax(self.model(torch.tensor([list(ids)])).logits[0].float(), dim=-1)

    def greedy_ids(self, prompt: Sequence[int], max_tokens: int) -> list[int]:
        """Greedy decoding by full recomputation, stopped after an end-of-sequence token."""
        ids = list(prompt)
        for _ in range(max_tokens):
            ids.append(int(self.logprobs(ids)[-1].argmax()))
            if ids[-1] in self.eos_ids:
                break
        return ids[len(prompt) :]

    def ended_by(self, generated: Sequence[int]) -> str:
        """OpenAI's ``finish_reason`` of ``generated``: ``stop`` after an end-of-sequence token."""
        return "stop" if generated and generated[-1] in self.eos_ids else "length"

    @torch.no_grad()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Next-token logits after ``ids``, float32, from one full forward pass."""
        return self.model(torch.tensor([list(ids)])).logits[0, -1].float()

    def bias_vector(self, bias: Mapping[int | str, float] | None) -> torch.Tensor:
        vector = torch.zeros(self.vocab_size)
        for key, value in (bias or {}).items():
            vector[int(key)] += float(value)
        return vector

    def dist(
        self,
        ids: Sequence[int],
        *,
        bias: Mapping[int | str, float] | None = None,
        generated: Sequence[int] = (),
        penalties: Penalties = Penalties(),
    ) -> torch.Tensor:
        """``log_softmax(penalised logits + bias)`` after ``ids``, ending in ``generated``."""
        logits = self.logits(ids)
        seen = torch.tensor(sorted(set(ids)), dtype=torch.long)
        logits[seen] = torch.where(
            logits[seen] > 0,
            logits[seen] / penalties.repetition,
            logits[seen] * penalties.repetition,
        )
        logits = logits + self.bias_vector(bias)
        counts = torch.bincount(
            torch.tensor(list(generated), dtype=torch.long), minlength=self.vocab_size
        )
        logits = (
            logits
            - penalties.presence * (counts > 0).float()
            - penalties.frequency * counts.float()
        )
        return torch.log_softmax(logits, dim=-1)

    def finish_reason(
        self, token: int, *, index: int, max_tokens: int, prompt_length: int
    ) -> str | None:
        if token in self.eos_ids:
            return "stop"
        if index + 1 == max_tokens or prompt_length + index + 1 >= self.context_length:
            return "length"
        return None

    def replay(
        self,
        prompt: Sequence[int],
        tokens: Sequence[int],
        *,
        max_tokens: int,
        bias: Mapping[int | str, float] | None = None,
        penalties: Penalties = Penalties(),
    ) -> list[Step]:
        """The steps for a given token sequence (e.g. a sampled one), teacher-forced."""
        steps = []
        for index, token in enumerate(tokens):
            dist = self.dist(
                [*prompt, *tokens[:index]], bias=bias, generated=tokens[:index], penalties=penalties
            )
            reason = self.finish_reason(
                token, index=index, max_tokens=max_tokens, prompt_length=len(prompt)
            )
            steps.append(Step(token, float(dist[token]), dist, reason))
        return steps

    def greedy(
        self,
        prompt: Sequence[int],
        *,
        max_tokens: int,
        bias: Mapping[int | str, float] | None = None,
        penalties: Penalties = Penalties(),
    ) -> list[Step]:
        """Greedy decoding by argmax, stopping at EOS, ``max_tokens`` or a full context window."""
        tokens: list[int] = []
        steps: list[Step] = []
        while not steps or steps[-1].finish_reason is None:
            dist = self.dist([*prompt, *tokens], bias=bias, generated=tokens, penalties=penalties)
            token = int(dist.argmax())
            reason = self.finish_reason(
                token, index=len(tokens), max_tokens=max_tokens, prompt_length=len(prompt)
            )
            steps.append(Step(token, float(dist[token]), dist, reason))
            tokens.append(token)
        return steps

    def score(self, prompt: Sequence[int], scored: Sequence[int]) -> list[float]:
        """``log_softmax(model(prompt + scored[:j]).logits[-1])[scored[j]]`` for every j."""
        return [float(self.dist([*prompt, *scored[:j]])[token]) for j, token in enumerate(scored)]


def expected_top_keys(dist: torch.Tensor, token: int, n: int) -> set[str]:
    """The chosen token plus the top ``n`` of ``dist``, as decimal strings."""
    return {str(token), *(str(int(i)) for i in torch.topk(dist, n).indices)}


def assert_steps(
    lines: Sequence[Line],
    expected: Sequence[Step],
    *,
    top_logprobs: int | None = 1,
    what: str = "stream",
) -> None:
    """Lines equal the expected steps: tokens and finish reasons exactly, logprobs within 1e-4.

    With ``top_logprobs`` set, each line's map must hold exactly the chosen token plus the top n of
    the expected distribution, with the distribution's values.
    """
    got = [(line.token, line.finish_reason) for line in lines]
    want = [(step.token, step.finish_reason) for step in expected]
    assert got == want, f"{what}: (token, finish_reason) {got} != expected {want}"
    for index, (line, step) in enumerate(zip(lines, expected, strict=True)):
        assert line.logprob == pytest.approx(step.logprob, abs=LOGPROB_TOLERANCE), (
            f"{what} token {index}: logprob {line.logprob} != expected {step.logprob}"
        )
        if top_logprobs is None:
            continue
        assert isinstance(line.data.get("top_logprobs"), dict), (
            f"{what} token {index}: no top_logprobs map"
        )
        top = line.top_logprobs
        assert set(top) == expected_top_keys(step.dist, step.token, top_logprobs), (
            f"{what} token {index}: top_logprobs keys {sorted(top)} != chosen + top {top_logprobs}"
        )
        for key, value in top.items():
            assert value == pytest.approx(float(step.dist[int(key)]), abs=LOGPROB_TOLERANCE), (
                f"{what} token {index}: top_logprobs[{key}] = {value} != {step.dist[int(key)]}"
            )


def assert_same_stream(batched: Sequence[Line], alone: Sequence[Line], *, what: str) -> None:
    """Two runs of one op agree: tokens, finish reasons, top_logprobs keys exactly; values ~1e-4."""
    assert [(x.token, x.finish_reason) for x in batched] == [
        (x.token, x.finish_reason) for x in alone
    ], what
    for index, (b, a) in enumerate(zip(batched, alone, strict=True)):
        assert b.logprob == pytest.approx(a.logprob, abs=LOGPROB_TOLERANCE), f"{what} token {index}"
        b_top, a_top = b.data.get("top_logprobs"), a.data.get("top_logprobs")
        assert (b_top is None) == (a_top is None), (
            f"{what} token {index}: top_logprobs presence differs"
        )
        if b_top is not None:
            assert set(b_top) == set(a_top), f"{what} token {index}: top_logprobs keys differ"
            for key in b_top:
                assert b_top[key] == pytest.approx(a_top[key], abs=LOGPROB_TOLERANCE), (
                    f"{what} token {index}"
                )


# --- the runtime under test -----------------------------------------------------------------------


def settings(checkpoint_dir: Path, *, max_batch_size: int = 8) -> dict[str, Any]:
    """``model_settings.json`` as the builder writes it, pointing at a local checkpoint."""
    return local_model_settings(
        checkpoint_dir.resolve(), commit=FAKE_COMMIT, max_batch_size=max_batch_size
    )


def collect(
    predictor: Any, ops_batch_json: str, *, timeout: float = PREDICTION_TIMEOUT_S
) -> list[object]:
    """All chunks of one prediction, failing (not hanging) if it takes longer than ``timeout``.

    ``predict`` must never raise: LMTP reports failures in band, so an exception is a failure too.
    """
    chunks: list[object] = []
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            chunks.extend(predictor.stream(ops_batch_json=ops_batch_json))
        except BaseException as error:  # reported to the test below
            failure.append(error)

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), (
        f"prediction still running after {timeout} s: {ops_batch_json[:300]}"
    )
    if failure:
        raise AssertionError(
            f"predict raised instead of answering in band: {failure[0]!r}"
        ) from failure[0]
    return chunks


@dataclass
class Harness:
    """One loaded predictor plus the reference for the same checkpoint."""

    predictor: Any
    reference: Reference
    checkpoint_dir: Path

    def run_raw(self, ops_batch_json: str) -> list[Line]:
        return parse_chunks(collect(self.predictor, ops_batch_json))

    def run(self, ops: Sequence[Sequence[Any]]) -> list[Line]:
        """Send ``ops`` in one prediction; check framing, and stream endings when ids are unique."""
        lines = self.run_raw(json.dumps(ops))
        for line in lines:
            if line.kind == "TOKEN" and line.error is None:
                check_token_line(line)
        ids = [json.dumps(args.get("stream_id")) for _, args in ops if isinstance(args, dict)]
        if len(ids) == len(set(ids)):
            check_stream_ends(lines)
        return lines

    def run_one(self, command: str, args: dict[str, Any]) -> list[Line]:
        """One op alone; every line must belong to it."""
        lines = self.run([[command, args]])
        for line in lines:
            assert same_json(line.stream_id, args.get("stream_id")), line
        return lines


def generate_op(prompt: Sequence[int], *, stream_id: JsonScalar = 1, **args: Any) -> list[Any]:
    """A GENERATE op as LMQL sends it (greedy unless ``temperature`` is given)."""
    return [
        "GENERATE",
        {"model": "tiny", "prompt": list(prompt), "temperature": 0, "stream_id": stream_id, **args},
    ]


def score_op(
    prompt: Sequence[int], scored: Sequence[int], *, stream_id: JsonScalar = 1
) -> list[Any]:
    return [
        "SCORE",
        {"model": "tiny", "prompt": list(prompt), "scored": list(scored), "stream_id": stream_id},
    ]
