"""LMTP conformance: SCORE (docs/lmtp.md §3) and MODEL_INFO (§4): the non-generating commands.

SCORE must return the raw model log-probabilities of given tokens, which the reference computes
with one full forward pass per prefix. MODEL_INFO must describe the loaded model; the contract
fixes what it says, not the key names, so the checks look values up by what their keys mention.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import bitsandbytes
import pytest
import torch
import transformers

from tests.support.lmtp_reference import (
    FAKE_COMMIT,
    LOGPROB_TOLERANCE,
    RUNTIME_VERSION,
    Harness,
    by_stream,
    collect,
    generate_op,
    parse_chunks,
    same_json,
    score_op,
)

PROMPT_TEXT = "Hello world. The quick brown fox"
SCORED_TEXT = " jumps over the lazy dog."


def _texts(h: Harness) -> tuple[list[int], list[int]]:
    prompt = h.reference.encode(PROMPT_TEXT)
    scored = h.reference.tokenizer.encode(SCORED_TEXT, add_special_tokens=False)
    assert len(set(scored)) >= 4
    return prompt, scored


# --- SCORE ----------------------------------------------------------------------------------------


def test_score_returns_the_reference_logprobs_of_each_scored_token(model: Harness) -> None:
    prompt, scored = _texts(model)
    lines = model.run_one(*score_op(prompt, scored, stream_id=3))
    assert [line.kind for line in lines] == ["TOKEN"] * len(scored)
    assert [line.token for line in lines] == scored
    expected = model.reference.score(prompt, scored)
    for index, (line, logprob) in enumerate(zip(lines, expected, strict=True)):
        assert line.logprob == pytest.approx(logprob, abs=LOGPROB_TOLERANCE), (
            f"scored token {index}"
        )


def test_score_finish_reason_is_null_until_stop_on_the_last_line(model: Harness) -> None:
    prompt, scored = _texts(model)
    lines = model.run([score_op(prompt, scored)])
    assert [line.finish_reason for line in lines] == [None] * (len(scored) - 1) + ["stop"]


def test_scoring_one_token_gives_one_stop_line(model: Harness) -> None:
    prompt, scored = _texts(model)
    lines = model.run([score_op(prompt, scored[:1])])
    assert [(line.token, line.finish_reason) for line in lines] == [(scored[0], "stop")]
    assert lines[0].logprob == pytest.approx(
        model.reference.score(prompt, scored[:1])[0], abs=LOGPROB_TOLERANCE
    )


def test_score_top_logprobs_when_present_are_the_model_distribution(model: Harness) -> None:
    prompt, scored = _texts(model)
    lines = model.run([score_op(prompt, scored)])
    for index, line in enumerate(lines):
        top = line.data.get("top_logprobs")
        if top is None:
            continue
        dist = model.reference.dist([*prompt, *scored[:index]])
        for key, value in top.items():
            assert value == pytest.approx(float(dist[int(key)]), abs=LOGPROB_TOLERANCE), (
                f"token {index}: {key}"
            )


def test_special_tokens_inside_scored_do_not_end_the_stream(model: Harness) -> None:
    """SCORE scores every token it is given: an EOS or pad id in the middle is just a token."""
    prompt, scored = _texts(model)
    tokenizer = model.reference.tokenizer
    scored = [scored[0], tokenizer.eos_token_id, scored[1], tokenizer.pad_token_id, scored[2]]
    lines = model.run([score_op(prompt, scored)])
    assert [(line.token, line.finish_reason) for line in lines] == [
        (t, None) for t in scored[:-1]
    ] + [(scored[-1], "stop")]
    for index, (line, logprob) in enumerate(
        zip(lines, model.reference.score(prompt, scored), strict=True)
    ):
        assert line.logprob == pytest.approx(logprob, abs=LOGPROB_TOLERANCE), (
            f"scored token {index}"
        )


def test_score_has_no_bias_or_temperature_even_beside_a_biased_generate(llama: Harness) -> None:
    """Ops in one prediction share a batch; a GENERATE's bias must not reach a SCORE beside it."""
    prompt, scored = _texts(llama)
    lines = llama.run(
        [
            generate_op(
                prompt,
                stream_id=1,
                max_tokens=3,
                temperature=1.7,
                seed=1,
                logit_bias={str(scored[0]): -100},
            ),
            score_op(prompt, scored, stream_id=2),
        ]
    )
    streams = by_stream(lines)
    assert len(streams[1]) == 3
    assert [line.token for line in streams[2]] == scored
    for line, logprob in zip(streams[2], llama.reference.score(prompt, scored), strict=True):
        assert line.logprob == pytest.approx(logprob, abs=LOGPROB_TOLERANCE)


def test_empty_scored_gives_no_lines_and_returns_promptly(llama: Harness) -> None:
    prompt, scored = _texts(llama)
    start = time.monotonic()
    assert llama.run([score_op(prompt, [], stream_id=1)]) == []
    assert time.monotonic() - start < 10
    lines = llama.run([score_op(prompt, [], stream_id=1), score_op(prompt, scored, stream_id=2)])
    assert [line.stream_id for line in lines] == [2] * len(scored)


def test_empty_prompt_is_an_error_for_that_stream_only(llama: Harness) -> None:
    prompt, scored = _texts(llama)
    lines = llama.run(
        [score_op([], scored, stream_id="empty"), score_op(prompt, scored, stream_id="ok")]
    )
    streams = by_stream(lines)
    assert len(streams["empty"]) == 1
    error = streams["empty"][0]
    assert error.kind == "TOKEN" and isinstance(error.error, str) and "prompt" in error.error
    assert "Traceback" not in error.error
    assert [line.token for line in streams["ok"]] == scored
    assert streams["ok"][-1].finish_reason == "stop"


def test_score_of_a_greedy_continuation_equals_generate_logprobs(model: Harness) -> None:
    prompt, _ = _texts(model)
    generated = model.run([generate_op(prompt, max_tokens=6)])
    tokens = [line.token for line in generated]
    scored = model.run([score_op(prompt, tokens)])
    assert [line.token for line in scored] == tokens
    for index, (s, g) in enumerate(zip(scored, generated, strict=True)):
        assert s.logprob == pytest.approx(g.logprob, abs=LOGPROB_TOLERANCE), f"token {index}"


def test_score_stream_id_is_echoed_exactly(llama: Harness) -> None:
    prompt, scored = _texts(llama)
    for stream_id in ("s-1", 0, None):
        lines = llama.run_one(*score_op(prompt, scored[:2], stream_id=stream_id))
        assert len(lines) == 2 and all(same_json(line.stream_id, stream_id) for line in lines)


def test_score_may_fill_the_window_but_not_exceed_it(llama: Harness) -> None:
    """``len(prompt) + len(scored) - 1`` tokens are fed; up to the window is fine (Decisions)."""
    prompt, scored = _texts(llama)
    window = llama.reference.context_length
    long_prompt = (prompt * window)[: window - 3]
    fits, too_long = scored[:4], scored[:5]
    lines = llama.run(
        [
            score_op(long_prompt, fits, stream_id="fits"),
            score_op(long_prompt, too_long, stream_id="over"),
        ]
    )
    streams = by_stream(lines)
    assert [line.token for line in streams["fits"]] == fits
    for line, logprob in zip(
        streams["fits"], llama.reference.score(long_prompt, fits), strict=True
    ):
        assert line.logprob == pytest.approx(logprob, abs=LOGPROB_TOLERANCE)
    assert len(streams["over"]) == 1 and streams["over"][0].kind == "TOKEN"
    error = streams["over"][0].error
    assert isinstance(error, str) and ("scored" in error or "prompt" in error), error


def test_a_msg_line_ends_its_chunk(llama: Harness) -> None:
    """LMQL's client stops reading a chunk after its first MSG line (docs/lmtp.md, Decisions)."""
    prompt, scored = _texts(llama)
    ops = [
        generate_op(prompt, stream_id=1, max_tokens=3),
        ["MODEL_INFO", {"stream_id": 2}],
        score_op(prompt, scored, stream_id=3),
        ["FOO", {"stream_id": 4}],
        ["MODEL_INFO", {"stream_id": 5}],
    ]
    chunks = collect(llama.predictor, json.dumps(ops))
    lines = parse_chunks(chunks)
    assert sum(line.kind == "MSG" for line in lines) == 3
    for chunk in chunks:
        kinds = [line.kind for line in parse_chunks([chunk])]
        assert "MSG" not in kinds[:-1], f"a line follows a MSG line in its chunk: {chunk!r}"


# --- MODEL_INFO -----------------------------------------------------------------------------------


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(lower-cased slash-joined key path, value) for every non-object value in ``value``."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _leaves(child, (*path, str(key).lower()))
    else:
        yield "/".join(path), value


def _has(info: dict[str, Any], key_words: tuple[str, ...], predicate: Any) -> bool:
    return any(
        any(word in path for word in key_words) and predicate(value)
        for path, value in _leaves(info)
    )


@pytest.fixture(scope="module")
def model_info(llama: Harness) -> dict[str, Any]:
    lines = llama.run_one("MODEL_INFO", {"stream_id": 9})
    assert len(lines) == 1
    line = lines[0]
    assert line.kind == "MSG" and line.error is None and same_json(line.stream_id, 9)
    assert isinstance(line.data.get("model_info"), dict), (
        f"model_info is not an object: {line.data}"
    )
    return line.data["model_info"]


@pytest.mark.parametrize(
    ("what", "key_words", "predicate"),
    [
        ("model name", ("name",), lambda v, ref: v == "tiny"),
        ("repo", ("repo",), lambda v, ref: v == "local/tiny"),
        ("commit", ("commit", "sha", "revision"), lambda v, ref: v == FAKE_COMMIT),
        (
            "quantization",
            ("quant",),
            lambda v, ref: v is None or (isinstance(v, str) and v.lower() == "none"),
        ),
        ("dtype", ("dtype",), lambda v, ref: isinstance(v, str) and "float32" in v),
        ("device", ("device",), lambda v, ref: isinstance(v, str) and v.startswith("cpu")),
        ("vocabulary size", ("vocab",), lambda v, ref: v == ref.vocab_size),
        (
            "context length",
            ("context", "max_position", "positions", "window"),
            lambda v, ref: v == ref.context_length,
        ),
        ("eos ids", ("eos",), lambda v, ref: v == ref.eos_ids or [v] == ref.eos_ids),
        ("runtime version", ("runtime", "lmtp"), lambda v, ref: v == RUNTIME_VERSION),
        ("torch version", ("torch",), lambda v, ref: v == torch.__version__),
        ("transformers version", ("transformers",), lambda v, ref: v == transformers.__version__),
        ("bitsandbytes version", ("bitsandbytes",), lambda v, ref: v == bitsandbytes.__version__),
    ],
)
def test_model_info_describes_the_model(
    model_info: dict[str, Any],
    llama: Harness,
    what: str,
    key_words: tuple[str, ...],
    predicate: Any,
) -> None:
    found = _has(model_info, key_words, lambda value: predicate(value, llama.reference))
    assert found, f"model_info says nothing right about the {what}: {model_info}"


def test_model_info_without_stream_id_echoes_null(llama: Harness) -> None:
    lines = llama.run([["MODEL_INFO", {}]])
    assert len(lines) == 1 and lines[0].kind == "MSG"
    assert "stream_id" in lines[0].data and lines[0].stream_id is None
    assert isinstance(lines[0].data.get("model_info"), dict)


def test_model_info_beside_other_ops(llama: Harness) -> None:
    prompt, scored = _texts(llama)
    lines = llama.run(
        [
            generate_op(prompt, stream_id=1, max_tokens=2),
            ["MODEL_INFO", {"stream_id": 2}],
            score_op(prompt, scored, stream_id=3),
        ]
    )
    streams = by_stream(lines)
    assert [line.kind for line in streams[2]] == ["MSG"]
    assert isinstance(streams[2][0].data.get("model_info"), dict)
    assert len(streams[1]) == 2 and len(streams[3]) == len(scored)
