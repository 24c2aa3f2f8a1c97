"""LMTP conformance: errors and bad input (docs/lmtp.md §5).

Failures are reported in band, because an exception out of ``predict`` reaches LMQL only as an
empty result and an obscure ``IndexError`` later. Each row of the contract's table is checked
together with valid ops in the same prediction, which must complete exactly as they would alone:
one bad stream never takes down another.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.lmtp_reference import (
    LOGPROB_TOLERANCE,
    Harness,
    Line,
    assert_steps,
    by_stream,
    generate_op,
    same_json,
    score_op,
)

PROMPT_TEXT = "Hello world. The quick brown fox"
SCORED_TEXT = " jumps over the lazy dog."
INVALID_PREFIX = "invalid ops_batch_json: "


@dataclass(frozen=True)
class Case:
    """What a bad op needs to know about the model: a good prompt, the vocabulary, the window."""

    prompt: list[int]
    vocab: int
    window: int


@pytest.fixture(scope="module")
def case(llama: Harness) -> Case:
    reference = llama.reference
    return Case(reference.encode(PROMPT_TEXT), reference.vocab_size, reference.context_length)


def _valid_ops(llama: Harness, case: Case) -> list[list[Any]]:
    scored = llama.reference.tokenizer.encode(SCORED_TEXT, add_special_tokens=False)
    return [
        generate_op(case.prompt, stream_id="before", max_tokens=3, top_logprobs=2),
        score_op(case.prompt, scored, stream_id="after"),
    ]


def _assert_valid_ops_completed(llama: Harness, case: Case, lines: list[Line]) -> None:
    streams = by_stream(lines)
    expected = llama.reference.greedy(case.prompt, max_tokens=3)
    assert_steps(
        streams.get("before", []), expected, top_logprobs=2, what="valid GENERATE beside a bad op"
    )
    scored = llama.reference.tokenizer.encode(SCORED_TEXT, add_special_tokens=False)
    after = streams.get("after", [])
    assert [line.token for line in after] == scored, "valid SCORE beside a bad op"
    for line, logprob in zip(after, llama.reference.score(case.prompt, scored), strict=True):
        assert line.logprob == pytest.approx(logprob, abs=LOGPROB_TOLERANCE)


def _assert_readable(error: object) -> None:
    """One readable sentence: a non-empty string, no traceback."""
    assert isinstance(error, str) and error.strip(), f"error is not a message: {error!r}"
    assert "Traceback" not in error and 'File "' not in error, f"traceback in error line: {error!r}"


# --- the whole batch is unreadable ----------------------------------------------------------------

VALID_GENERATE = (
    '["GENERATE", {"prompt": [1, 5, 6], "max_tokens": 2, "temperature": 0, "stream_id": 1}]'
)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "{",
        "GENERATE",
        '"[]"',
        "null",
        "42",
        '{"ops": []}',
        "[1]",
        '[["GENERATE"]]',
        '[[1, {"prompt": [1]}]]',
        '[[null, {"prompt": [1]}]]',
        '[["GENERATE", []]]',
        '[["GENERATE", null]]',
        '[["GENERATE", "prompt"]]',
        '[["GENERATE", {"prompt": [1]}, {}]]',
        '[{"command": "GENERATE", "args": {"prompt": [1]}}]',
        f"[{VALID_GENERATE}, 5]",
        f'[{VALID_GENERATE}, ["SCORE"]]',
    ],
)
def test_unreadable_batch_gives_one_invalid_line_and_ends(llama: Harness, raw: str) -> None:
    lines = llama.run_raw(raw)
    assert len(lines) == 1, (
        f"expected exactly one line for {raw!r}, got {[line.data for line in lines]}"
    )
    line = lines[0]
    assert line.kind == "MSG"
    assert "stream_id" in line.data and line.stream_id is None
    _assert_readable(line.error)
    assert line.error.startswith(INVALID_PREFIX), line.error
    assert len(line.error) > len(INVALID_PREFIX), "the message should say what is wrong"


def test_empty_batch_gives_no_lines(llama: Harness) -> None:
    assert llama.run_raw("[]") == []


def test_non_standard_json_constants_never_crash(llama: Harness, case: Case) -> None:
    """``NaN`` is not JSON: the batch or that op is invalid; nothing may raise or leak a NaN."""
    bad = (
        f'["GENERATE", {{"prompt": {case.prompt}, "max_tokens": 2, "temperature": NaN,'
        ' "stream_id": "bad"}]'
    )
    valid = json.dumps(_valid_ops(llama, case))[1:-1]
    lines = llama.run_raw(f"[{bad}, {valid}]")  # parsed strictly: no NaN can come back
    if len(lines) == 1 and lines[0].stream_id is None:
        assert lines[0].kind == "MSG" and lines[0].error.startswith(INVALID_PREFIX)
        return
    streams = by_stream(lines)
    assert [line.kind for line in streams["bad"]] == ["TOKEN"] and "temperature" in streams["bad"][
        0
    ].error
    _assert_valid_ops_completed(llama, case, [line for line in lines if line.stream_id != "bad"])


# --- one op is bad --------------------------------------------------------------------------------


def test_unknown_command_is_an_error_for_that_op_only(llama: Harness, case: Case) -> None:
    before, after = _valid_ops(llama, case)
    lines = llama.run([before, ["FOO", {"stream_id": 5, "prompt": case.prompt}], after])
    streams = by_stream(lines)
    assert len(streams[5]) == 1
    line = streams[5][0]
    assert line.kind == "MSG"
    _assert_readable(line.error)
    assert "unknown command" in line.error and "'FOO'" in line.error, line.error
    _assert_valid_ops_completed(llama, case, lines)


BadOp = Callable[[Case], list[Any]]


def _generate(**changes: Any) -> BadOp:
    """A GENERATE op with fields changed (a value of ``...`` removes the field)."""
    return _changed_op(
        "GENERATE",
        lambda case: {"prompt": case.prompt, "max_tokens": 3, "temperature": 0},
        changes,
    )


def _score(**changes: Any) -> BadOp:
    """A SCORE op with fields changed (a value of ``...`` removes the field)."""
    return _changed_op(
        "SCORE", lambda case: {"prompt": case.prompt, "scored": case.prompt[1:4]}, changes
    )


def _changed_op(
    command: str, fields: Callable[[Case], dict[str, Any]], changes: dict[str, Any]
) -> BadOp:
    """``[command, args]`` for a case: its valid ``fields``, then ``changes`` applied (a callable
    value is called with the case; ``...`` removes the field)."""

    def build(case: Case) -> list[Any]:
        args = {"model": "tiny", **fields(case), "stream_id": "bad"}
        for name, value in changes.items():
            value = value(case) if callable(value) else value
            if value is ...:
                args.pop(name)
            else:
                args[name] = value
        return [command, args]

    return build


BAD_OPS: dict[str, tuple[BadOp, str]] = {
    "GENERATE without prompt": (_generate(prompt=...), "prompt"),
    "GENERATE prompt is a string": (_generate(prompt="Hello"), "prompt"),
    "GENERATE prompt holds strings": (_generate(prompt=["1", "5"]), "prompt"),
    "GENERATE prompt holds a float": (_generate(prompt=[1, 5.5]), "prompt"),
    "GENERATE prompt holds a bool": (_generate(prompt=[1, True]), "prompt"),
    "GENERATE prompt id -1": (_generate(prompt=lambda c: [*c.prompt, -1]), "prompt"),
    "GENERATE prompt id = vocab": (_generate(prompt=lambda c: [*c.prompt, c.vocab]), "prompt"),
    "GENERATE prompt longer than window": (
        _generate(prompt=lambda c: (c.prompt * c.window)[: c.window + 1]),
        "prompt",
    ),
    "GENERATE negative max_tokens": (_generate(max_tokens=-1), "max_tokens"),
    "GENERATE max_tokens string": (_generate(max_tokens="5"), "max_tokens"),
    "GENERATE max_tokens float": (_generate(max_tokens=2.5), "max_tokens"),
    "GENERATE max_tokens bool": (_generate(max_tokens=True), "max_tokens"),
    "GENERATE temperature string": (_generate(temperature="hot"), "temperature"),
    "GENERATE top_logprobs > vocab": (
        _generate(top_logprobs=lambda c: c.vocab + 1),
        "top_logprobs",
    ),
    "GENERATE top_logprobs string": (_generate(top_logprobs="3"), "top_logprobs"),
    "GENERATE logit_bias is a list": (_generate(logit_bias=[[5, 100]]), "logit_bias"),
    "GENERATE logit_bias key not a number": (_generate(logit_bias={"abc": 100}), "logit_bias"),
    "GENERATE logit_bias key = vocab": (
        _generate(logit_bias=lambda c: {str(c.vocab): 100}),
        "logit_bias",
    ),
    "GENERATE logit_bias key -1": (_generate(logit_bias={"-1": 100}), "logit_bias"),
    "GENERATE logit_bias value string": (_generate(logit_bias={"5": "high"}), "logit_bias"),
    "GENERATE unknown argument": (_generate(foo_bar=1), "foo_bar"),
    "GENERATE top_k string": (_generate(temperature=1.0, top_k="x"), "top_k"),
    "GENERATE top_p string": (_generate(temperature=1.0, top_p="x"), "top_p"),
    "GENERATE seed string": (_generate(temperature=1.0, seed="x"), "seed"),
    "GENERATE frequency_penalty string": (_generate(frequency_penalty="x"), "frequency_penalty"),
    # Values that pass a type check but would overflow float32 into NaN logits: refused naming
    # the field, not reported as the model's NaN.
    "GENERATE presence_penalty 1e39": (_generate(presence_penalty=1e39), "presence_penalty"),
    "GENERATE frequency_penalty -1e39": (_generate(frequency_penalty=-1e39), "frequency_penalty"),
    "GENERATE repetition_penalty 1e39": (_generate(repetition_penalty=1e39), "repetition_penalty"),
    "GENERATE temperature 1e-300": (_generate(temperature=1e-300), "temperature"),
    "GENERATE temperature 1e300": (_generate(temperature=1e300), "temperature"),
    "GENERATE logit_bias 1e39": (_generate(logit_bias={"5": 1e39}), "logit_bias"),
    "SCORE without prompt": (_score(prompt=...), "prompt"),
    "SCORE without scored": (_score(scored=...), "scored"),
    "SCORE scored is a string": (_score(scored="dog"), "scored"),
    "SCORE scored id = vocab": (_score(scored=lambda c: [5, c.vocab]), "scored"),
    "SCORE scored id -1": (_score(scored=[5, -1]), "scored"),
    "SCORE prompt id = vocab": (_score(prompt=lambda c: [*c.prompt, c.vocab]), "prompt"),
    "SCORE prompt longer than window": (
        _score(prompt=lambda c: (c.prompt * c.window)[: c.window + 1]),
        "prompt",
    ),
}


@pytest.mark.parametrize("name", list(BAD_OPS))
def test_bad_op_gets_one_error_line_naming_the_field(llama: Harness, case: Case, name: str) -> None:
    build, field_name = BAD_OPS[name]
    before, after = _valid_ops(llama, case)
    lines = llama.run([before, build(case), after])
    bad = by_stream(lines).get("bad", [])
    assert len(bad) == 1, f"{name}: expected one error line, got {[line.data for line in bad]}"
    assert bad[0].kind == "TOKEN", bad[0]
    _assert_readable(bad[0].error)
    assert field_name in bad[0].error, (
        f"{name}: error does not name {field_name!r}: {bad[0].error!r}"
    )
    _assert_valid_ops_completed(llama, case, lines)


def test_each_bad_op_in_a_batch_gets_its_own_error(llama: Harness, case: Case) -> None:
    names = ["GENERATE negative max_tokens", "SCORE scored id -1", "GENERATE unknown argument"]
    ops = []
    for index, name in enumerate(names):
        op = BAD_OPS[name][0](case)
        op[1]["stream_id"] = index
        ops.append(op)
    before, after = _valid_ops(llama, case)
    lines = llama.run([ops[0], before, ops[1], after, ops[2]])
    streams = by_stream(lines)
    for index, name in enumerate(names):
        assert len(streams[index]) == 1 and BAD_OPS[name][1] in streams[index][0].error, name
    _assert_valid_ops_completed(llama, case, lines)


def test_error_line_of_an_op_without_stream_id_has_null_stream_id(
    llama: Harness, case: Case
) -> None:
    bad = _generate(max_tokens=-1)(case)
    del bad[1]["stream_id"]
    before, after = _valid_ops(llama, case)
    lines = llama.run([before, bad, after])
    errors = [line for line in lines if line.error is not None]
    assert len(errors) == 1 and "stream_id" in errors[0].data and errors[0].stream_id is None
    _assert_valid_ops_completed(llama, case, lines)


# Inputs the contract does not spell out: whatever the runtime makes of them, it answers in band,
# without raising, hanging or harming the valid ops beside them.
ODD_OPS: dict[str, BadOp] = {
    "GENERATE max_tokens 0": _generate(max_tokens=0),
    "GENERATE empty prompt": _generate(prompt=[]),
    "GENERATE negative top_logprobs": _generate(top_logprobs=-1),
    "GENERATE negative temperature": _generate(temperature=-1.0),
    "GENERATE top_k 0": _generate(temperature=1.0, top_k=0, seed=1),
    "GENERATE top_p 0": _generate(temperature=1.0, top_p=0.0, seed=1),
    "GENERATE logit_bias null": _generate(logit_bias=None),
    "GENERATE huge max_tokens": _generate(max_tokens=10**12),
    "GENERATE args with list stream_id": _generate(stream_id=[1, 2]),
    "SCORE scored is empty with empty prompt": _score(prompt=[], scored=[]),
    "SCORE prompt + scored beyond window": _score(
        prompt=lambda c: (c.prompt * c.window)[: c.window - 2], scored=lambda c: c.prompt[1:6]
    ),
    "GENERATE logit_bias beyond float32": _generate(logit_bias={"5": 1e39}),
    "MODEL_INFO with extra arguments": lambda case: ["MODEL_INFO", {"stream_id": "bad", "x": 1}],
}


@pytest.mark.parametrize("name", list(ODD_OPS))
def test_odd_input_is_answered_in_band(llama: Harness, case: Case, name: str) -> None:
    before, after = _valid_ops(llama, case)
    lines = llama.run([before, ODD_OPS[name](case), after])
    for line in lines:
        if line.error is not None:
            _assert_readable(line.error)
    odd = [
        line
        for line in lines
        if not same_json(line.stream_id, "before") and not same_json(line.stream_id, "after")
    ]
    errors = [line for line in odd if line.error is not None]
    assert len(errors) <= 1, f"{name}: several error lines {[line.data for line in errors]}"
    assert not errors or odd[-1] is errors[0], f"{name}: lines after the error line"
    _assert_valid_ops_completed(llama, case, [line for line in lines if line not in odd])


def test_an_abandoned_prediction_leaves_the_predictor_usable(llama: Harness, case: Case) -> None:
    """Cog stops reading when a prediction is cancelled: the next one must be unaffected."""
    before, after = _valid_ops(llama, case)
    abandoned = llama.predictor.stream(
        ops_batch_json=json.dumps(
            [generate_op(case.prompt, stream_id="gone", max_tokens=20), after]
        )
    )
    first = next(iter(abandoned))
    assert isinstance(first, str)
    abandoned.close()
    _assert_valid_ops_completed(llama, case, llama.run([before, after]))


def test_a_top_k_beyond_the_vocabulary_keeps_every_token(llama: Harness, case: Case) -> None:
    """top_k = 2**63 (larger than any integer torch holds) samples exactly as top_k = 0."""
    sampled = {
        top_k: llama.run(
            [generate_op(case.prompt, stream_id=1, max_tokens=6, temperature=1.0, seed=7, top_k=top_k)]
        )
        for top_k in (0, 2**63)
    }
    assert [line.token for line in sampled[2**63]] == [line.token for line in sampled[0]]
    assert all(line.error is None for line in sampled[2**63])
