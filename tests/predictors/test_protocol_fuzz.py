"""Property-based tests of the LMTP parser and line format (hypothesis), bounded in time.

Whatever ``ops_batch_json`` holds (random JSON, op-shaped JSON with random fields, raw text),
parsing either rejects the whole batch with a :class:`BatchFormatError` or returns one typed op
per item; every accepted op only names token ids the model has and finite sampling values; and
every line answering it is one line of strict JSON. The suite runs a few hundred examples in
seconds; ``FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/predictors/test_protocol_fuzz.py``
runs a long one.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lmtp_runtime.errors import BatchFormatError
from lmtp_runtime.protocol import (
    GenerateOp,
    Limits,
    ModelInfoOp,
    RejectedOp,
    ScoreOp,
    batch_error_line,
    error_line,
    parse_ops_batch,
    token_line,
)

LIMITS = Limits(vocab_size=500, context_length=64)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run, so CI cannot turn red by chance
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
token_ids = st.lists(st.integers(-3, LIMITS.vocab_size + 3), max_size=70)
FIELDS = {
    "prompt": token_ids | json_values,
    "scored": token_ids | json_values,
    "max_tokens": st.integers(-2, 2**64) | json_values,
    "temperature": st.floats() | st.integers(-1, 10) | json_values,
    "top_logprobs": st.integers(-2, 600) | json_values,
    "logit_bias": st.dictionaries(
        st.integers(-2, 600).map(str) | st.text(max_size=4), st.floats() | json_values, max_size=5
    )
    | json_values,
    "top_k": st.integers(-1, 2**64) | json_values,
    "top_p": st.floats() | json_values,
    "repetition_penalty": st.floats() | json_values,
    "presence_penalty": st.floats() | json_values,
    "frequency_penalty": st.floats() | json_values,
    "seed": st.integers(-1, 2**65) | json_values,
    "stream_id": scalars,
    "model": json_values,
    "unknown_field": json_values,
}
ops = st.tuples(
    st.sampled_from(["GENERATE", "SCORE", "MODEL_INFO", "FOO", ""]),
    st.fixed_dictionaries({}, optional=FIELDS),
).map(list)


def _strict(line: str) -> dict[str, Any]:
    """One line, ``TOKEN``/``MSG`` and a strict JSON object (no NaN, no Infinity)."""
    assert line.endswith("\n") and line.count("\n") == 1, line
    kind, _, payload = line[:-1].partition(" ")
    assert kind in ("TOKEN", "MSG"), line

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in {line!r}")

    data = json.loads(payload, parse_constant=refuse)
    assert isinstance(data, dict)
    return data


def _check(parsed: list[Any]) -> None:
    for op in parsed:
        if isinstance(op, RejectedOp):
            assert isinstance(op.error, str) and op.error and "\n" not in op.error
            _strict(error_line(op.stream_id, op.error, kind=op.kind))
        elif isinstance(op, GenerateOp):
            request = op.request
            assert request.prompt and all(0 <= t < LIMITS.vocab_size for t in request.prompt)
            assert len(request.prompt) <= LIMITS.context_length
            assert all(0 <= t < LIMITS.vocab_size for t, _ in request.logit_bias)
            sampling = request.sampling
            numbers = [sampling.temperature, sampling.top_p, sampling.repetition_penalty]
            numbers += [sampling.presence_penalty, sampling.frequency_penalty]
            numbers += [bias for _, bias in request.logit_bias]
            assert all(math.isfinite(value) for value in numbers)
            assert 0 <= sampling.top_k <= LIMITS.vocab_size and request.max_tokens >= 0
            first = request.prompt[0]
            line = token_line(
                op.stream_id, token=first, logprob=-1.0, finish_reason=None,
                top_logprobs={first: -1.0},
            )
            _strict(line)
        elif isinstance(op, ScoreOp):
            tokens = (*op.request.prompt, *op.request.scored)
            assert op.request.prompt and all(0 <= t < LIMITS.vocab_size for t in tokens)
        else:
            assert isinstance(op, ModelInfoOp)


@FUZZ
@given(st.lists(ops, max_size=6))
def test_op_shaped_batches_parse_into_checked_ops(batch: list[Any]) -> None:
    text = json.dumps(batch)  # Python's json writes NaN/Infinity, which the parser must refuse
    try:
        parsed = parse_ops_batch(text, limits=LIMITS)
    except BatchFormatError as error:
        _strict(batch_error_line(error))
        return
    assert len(parsed) == len(batch)
    _check(parsed)


@FUZZ
@given(json_values | st.text(max_size=40))
def test_any_json_or_text_is_a_batch_or_one_batch_error(value: Any) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        parsed = parse_ops_batch(text, limits=LIMITS)
    except BatchFormatError as error:
        _strict(batch_error_line(error))
        return
    _check(parsed)
