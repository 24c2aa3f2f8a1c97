"""Focused tests of the predictor runtime's modules (predictors/lmtp_runtime).

The black-box LMTP conformance suite lives in test_conformance_*.py; these tests pin down the
pieces underneath: parsing and formatting, settings, sampling helpers, padding and the KV cache
the decode loop owns, resuming after a failed batch, loading choices, and 8-bit serving.
Models are the tiny random checkpoints of ``lmtp_cog.tiny_models``; expected numbers
always come from a plain full forward pass of the same model, never from hard-coded outputs.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from lmtp_runtime import __version__
from lmtp_runtime.engine import (
    DecodeBatch,
    Engine,
    GenerationStream,
    ScoreResult,
    StreamFailed,
    TokenEvent,
    left_pad,
)
from lmtp_runtime.errors import (
    BatchFormatError,
    ModelLoadError,
    RuntimeSetupError,
    SettingsError,
    TextInputError,
    UnsupportedModelError,
)
from lmtp_runtime.loading import choose_dtype, from_pretrained_kwargs
from lmtp_runtime.model_info import context_length, eos_token_ids
from lmtp_runtime.offline import hub_offline
from lmtp_runtime.predictor import NOT_READY, LmtpPredictor
from lmtp_runtime.protocol import (
    GenerateOp,
    Limits,
    ModelInfoOp,
    RejectedOp,
    ScoreOp,
    error_line,
    parse_ops_batch,
    token_line,
)
from lmtp_runtime.requests import GenerationRequest, SamplingParams, ScoreRequest
from lmtp_runtime.sampling import (
    LOGPROB_FLOOR,
    apply_presence_frequency,
    apply_repetition_penalty,
    bias_matrix,
    filter_top_k,
    filter_top_p,
    make_generator,
    token_counts,
)
from lmtp_runtime.settings import LoadOptions, read_settings
from transformers import (
    BitsAndBytesConfig,
    DynamicCache,
    GPT2Config,
    LlamaConfig,
    T5Config,
    ViTConfig,
)

LIMITS = Limits(vocab_size=100, context_length=16)
PROMPTS = ([1, 5, 6, 7, 8, 9, 10, 11], [1, 20], [1, 40, 41, 42, 43])
TOLERANCE = 1e-4

Line = tuple[str, dict[str, Any]]


# --- helpers --------------------------------------------------------------------------------------


def _strict(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_lines(chunks: Iterable[str]) -> list[Line]:
    """Whole strict-JSON lines per chunk, as LMQL's client needs them."""
    lines = []
    for chunk in chunks:
        assert chunk.endswith("\n"), chunk
        for text in chunk[:-1].split("\n"):
            kind, _, payload = text.partition(" ")
            assert kind in ("TOKEN", "MSG"), text
            lines.append((kind, json.loads(payload, parse_constant=_strict)))
    return lines


def run(predictor: Any, ops: Sequence[Sequence[Any]]) -> list[Line]:
    return parse_lines(predictor.stream(ops_batch_json=json.dumps(ops)))


def of_stream(lines: Sequence[Line], stream_id: Any) -> list[dict[str, Any]]:
    return [data for _, data in lines if data.get("stream_id") == stream_id]


def generate(prompt: Sequence[int], stream_id: Any = 1, **args: Any) -> list[Any]:
    return ["GENERATE", {"prompt": list(prompt), "stream_id": stream_id, "temperature": 0, **args}]


def score(prompt: Sequence[int], scored: Sequence[int], stream_id: Any = 1) -> list[Any]:
    return ["SCORE", {"prompt": list(prompt), "scored": list(scored), "stream_id": stream_id}]


def full_logits(model: Any, ids: Sequence[int]) -> torch.Tensor:
    """Next-token logits from one uncached, unpadded forward pass: the reference."""
    with torch.inference_mode():
        return model(torch.tensor([list(ids)])).logits[0, -1].float()


def fail_when(model: Any, predicate: Callable[[torch.Tensor], bool]) -> Any:
    """Make the real model raise CUDA's out-of-memory error on the forward passes picked."""

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if predicate(kwargs["input_ids"]):
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)"
            )

    return model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.fixture(scope="module")
def llama(llama_dir: Path, load_predictor: Callable[..., Any]) -> Any:
    return load_predictor(llama_dir)


@pytest.fixture(scope="module")
def engine(llama: Any) -> Engine:
    return Engine.start(llama.model, context_length=256, eos_token_ids=[2])


# --- protocol: parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ops_batch_json", "reason"),
    [
        ("not json", "Expecting value"),
        ('{"GENERATE": {}}', "expected a list of [COMMAND, ARGS] pairs, got an object"),
        ('[["GENERATE"]]', "item 0 is not a [COMMAND, ARGS] pair"),
        ('[["MODEL_INFO", {}], [1, {}]]', "item 1 is not a [COMMAND, ARGS] pair"),
        ('[["GENERATE", []]]', "item 0 is not a [COMMAND, ARGS] pair"),
        ('[["SCORE", {"prompt": [NaN]}]]', "NaN is not valid JSON"),
        ('[["SCORE", {"prompt": [-Infinity]}]]', "-Infinity is not valid JSON"),
        ('[["GENERATE", {"temperature": 1e999}]]', "out of range"),
        (None, "expected a JSON string, got null"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_an_unusable_batch_is_rejected_whole(ops_batch_json: Any, reason: str) -> None:
    with pytest.raises(BatchFormatError) as caught:
        parse_ops_batch(ops_batch_json, limits=LIMITS)
    assert str(caught.value).startswith("invalid ops_batch_json: ")
    assert reason in str(caught.value)


def test_an_empty_batch_has_no_ops() -> None:
    assert parse_ops_batch("[]", limits=LIMITS) == []


def test_defaults_and_nulls_give_greedy_decoding_of_32_tokens() -> None:
    absent, nulls = parse_ops_batch(
        json.dumps(
            [
                ["GENERATE", {"prompt": [1, 2]}],
                [
                    "GENERATE",
                    {
                        "prompt": [1, 2],
                        "max_tokens": None,
                        "temperature": None,
                        "logit_bias": None,
                        "top_logprobs": None,
                    },
                ],
            ]
        ),
        limits=LIMITS,
    )
    expected = GenerateOp(
        stream_id=None,
        request=GenerationRequest(
            prompt=(1, 2), max_tokens=32, top_logprobs=1, logit_bias=(), sampling=SamplingParams()
        ),
    )
    assert absent == nulls == expected
    assert expected.request.sampling.greedy


def test_generate_fields_are_typed() -> None:
    [op] = parse_ops_batch(
        json.dumps(
            [
                [
                    "GENERATE",
                    {
                        "prompt": [1, 2, 3],
                        "max_tokens": 4.0,
                        "temperature": 0.7,
                        "top_logprobs": 5,
                        "logit_bias": {"7": 100, "07": -1.5, "9": 2},
                        "top_k": 3,
                        "top_p": 0.9,
                        "repetition_penalty": 1.2,
                        "presence_penalty": -0.5,
                        "frequency_penalty": 0.25,
                        "seed": 2**64 - 1,
                        "length_penalty": 2.0,
                        "model": "anything",
                        "stream_id": "s",
                    },
                ]
            ]
        ),
        limits=LIMITS,
    )
    assert op == GenerateOp(
        stream_id="s",
        request=GenerationRequest(
            prompt=(1, 2, 3),
            max_tokens=4,
            top_logprobs=5,
            logit_bias=((7, 100.0), (7, -1.5), (9, 2.0)),
            sampling=SamplingParams(
                temperature=0.7,
                top_k=3,
                top_p=0.9,
                repetition_penalty=1.2,
                presence_penalty=-0.5,
                frequency_penalty=0.25,
                seed=2**64 - 1,
            ),
        ),
    )


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "1 2 3"}, "prompt"),
        ({"prompt": [1, True]}, "prompt"),
        ({"prompt": [1, 2.5]}, "prompt"),
        ({"prompt": [1, 100]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": list(range(17))}, "prompt"),
        ({"prompt": [1], "max_tokens": -1}, "max_tokens"),
        ({"prompt": [1], "max_tokens": "5"}, "max_tokens"),
        ({"prompt": [1], "top_logprobs": 101}, "top_logprobs"),
        ({"prompt": [1], "top_logprobs": -1}, "top_logprobs"),
        ({"prompt": [1], "temperature": -0.1}, "temperature"),
        ({"prompt": [1], "temperature": "hot"}, "temperature"),
        ({"prompt": [1], "temperature": True}, "temperature"),
        ({"prompt": [1], "logit_bias": [1, 2]}, "logit_bias"),
        ({"prompt": [1], "logit_bias": {"x": 1}}, "logit_bias"),
        ({"prompt": [1], "logit_bias": {"1_0": 1}}, "logit_bias"),
        ({"prompt": [1], "logit_bias": {" 7": 1}}, "logit_bias"),
        ({"prompt": [1], "logit_bias": {"100": 1}}, "logit_bias"),
        ({"prompt": [1], "logit_bias": {"5": "high"}}, "logit_bias"),
        ({"prompt": [1], "top_p": 0}, "top_p"),
        ({"prompt": [1], "top_p": 1.5}, "top_p"),
        ({"prompt": [1], "top_k": -2}, "top_k"),
        ({"prompt": [1], "repetition_penalty": 0}, "repetition_penalty"),
        ({"prompt": [1], "seed": -1}, "seed"),
        ({"prompt": [1], "seed": 2**64}, "seed"),
        ({"prompt": [1], "best_of": 3}, "best_of"),
    ],
)
def test_a_bad_generate_field_rejects_that_op_naming_the_field(
    args: dict[str, Any], field: str
) -> None:
    [op] = parse_ops_batch(json.dumps([["GENERATE", {"stream_id": 4, **args}]]), limits=LIMITS)
    assert isinstance(op, RejectedOp)
    assert (op.stream_id, op.kind) == (4, "TOKEN")
    assert f"'{field}'" in op.error
    assert "\n" not in op.error


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"scored": [1]}, "prompt"),
        ({"prompt": [], "scored": [1]}, "prompt"),
        ({"prompt": [1]}, "scored"),
        ({"prompt": [1], "scored": [100]}, "scored"),
        ({"prompt": [1] * 10, "scored": [1] * 8}, "scored"),
        ({"prompt": [1], "scored": [2], "temperature": 0}, "temperature"),
    ],
)
def test_a_bad_score_field_rejects_that_op_naming_the_field(
    args: dict[str, Any], field: str
) -> None:
    [op] = parse_ops_batch(json.dumps([["SCORE", {"stream_id": None, **args}]]), limits=LIMITS)
    assert isinstance(op, RejectedOp) and op.kind == "TOKEN"
    assert f"'{field}'" in op.error


def test_the_window_bounds_what_is_fed() -> None:
    """A prompt may fill the window; scoring feeds prompt + scored[:-1], so one more token fits."""
    full, scored = parse_ops_batch(
        json.dumps(
            [["GENERATE", {"prompt": [1] * 16}], ["SCORE", {"prompt": [1] * 10, "scored": [1] * 7}]]
        ),
        limits=LIMITS,
    )
    assert isinstance(full, GenerateOp) and isinstance(scored, ScoreOp)


def test_unknown_commands_and_model_info_are_per_op() -> None:
    unknown, info, bad_id = parse_ops_batch(
        json.dumps(
            [
                ["FOO", {"stream_id": 3}],
                ["MODEL_INFO", {"stream_id": 2, "data": {"x": 1}}],
                ["MODEL_INFO", {"stream_id": [1]}],
            ]
        ),
        limits=LIMITS,
    )
    assert unknown == RejectedOp(3, "MSG", "unknown command 'FOO'")
    assert info == ModelInfoOp(2)
    assert (
        isinstance(bad_id, RejectedOp) and bad_id.stream_id is None and "stream_id" in bad_id.error
    )


# --- protocol: formatting -------------------------------------------------------------------------


def test_token_lines_are_compact_single_json_objects() -> None:
    line = token_line(
        7, token=12, logprob=-0.5, finish_reason=None, top_logprobs={12: -0.5, 3: -1.25}
    )
    assert line == (
        'TOKEN {"stream_id":7,"token":12,"logprob":-0.5,"finish_reason":null,'
        '"top_logprobs":{"12":-0.5,"3":-1.25}}\n'
    )
    assert error_line("a", "bad", kind="MSG") == 'MSG {"stream_id":"a","error":"bad"}\n'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_formatting_refuses_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        token_line(1, token=1, logprob=value, finish_reason=None, top_logprobs=None)


# --- settings -------------------------------------------------------------------------------------


def test_settings_resolve_checkpoint_dir_against_their_folder(
    tmp_path: Path, make_settings: Callable[..., Any]
) -> None:
    data = make_settings(
        Path("checkpoints"), quantization="8bit", torch_dtype="bfloat16", max_batch_size=3
    )
    data["from_a_newer_builder"] = {"ignored": True}
    path = tmp_path / "model_settings.json"
    path.write_text(json.dumps(data))
    settings = read_settings(path)
    assert settings.checkpoint_dir == tmp_path / "checkpoints"
    assert settings.load == LoadOptions(quantization="8bit", torch_dtype="bfloat16")
    assert (settings.name, settings.serve.max_batch_size, settings.huggingface.repo) == (
        "tiny",
        3,
        "local/tiny",
    )


def test_minimal_settings_take_defaults(tmp_path: Path) -> None:
    settings = read_settings({"name": "m", "checkpoint_dir": str(tmp_path)})
    assert settings.load == LoadOptions() and settings.serve.max_batch_size == 8


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"load": {"quantization": "16bit"}}, "load.quantization"),
        ({"load": {"torch_dtype": "float8"}}, "load.torch_dtype"),
        ({"load": {"trust_remote_code": "yes"}}, "load.trust_remote_code"),
        ({"serve": {"max_batch_size": 0}}, "serve.max_batch_size"),
        ({"serve": {"max_batch_size": True}}, "serve.max_batch_size"),
        ({"serve": {"concurrency": 0}}, "serve.concurrency"),
        ({"format": 2}, "format"),
        ({"name": None}, "name"),
    ],
)
def test_invalid_settings_name_the_key(
    tmp_path: Path, make_settings: Callable[..., Any], change: dict[str, Any], key: str
) -> None:
    path = tmp_path / "model_settings.json"
    path.write_text(json.dumps({**make_settings(tmp_path), **change}))
    with pytest.raises(SettingsError, match=f"'{key}'") as caught:
        read_settings(path)
    assert str(path) in str(caught.value)


def test_missing_or_broken_settings_files_are_setup_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        read_settings(tmp_path / "model_settings.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SettingsError, match="not readable JSON"):
        read_settings(tmp_path / "broken.json")
    assert issubclass(SettingsError, RuntimeError)


# --- sampling helpers -----------------------------------------------------------------------------


def test_bias_matrix_adds_every_entry_and_is_none_without_bias() -> None:
    assert bias_matrix([(), ()], vocab_size=5, device=torch.device("cpu")) is None
    matrix = bias_matrix(
        [((1, 2.0), (1, 3.0)), (), ((4, -100.0),)], vocab_size=5, device=torch.device("cpu")
    )
    expected = torch.zeros(3, 5)
    expected[0, 1], expected[2, 4] = 5.0, -100.0
    assert torch.equal(matrix, expected)


def test_token_counts_count_per_row() -> None:
    counts = token_counts([[1, 1, 3], [], [0]], vocab_size=4, device=torch.device("cpu"))
    assert counts.tolist() == [[0, 2, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]]


def test_top_k_is_per_row_and_zero_keeps_everything() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.1, 0.9, 0.5, 0.7], [4.0, 3.0, 2.0, 1.0]])
    kept = filter_top_k(scores, torch.tensor([2, 0, 1])).isfinite()
    assert kept.tolist() == [[False, True, False, True], [True] * 4, [True, False, False, False]]


def test_top_p_keeps_the_smallest_nucleus_and_always_the_best_token() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3)
    scores = probs.log()
    kept = filter_top_p(scores, torch.tensor([0.7, 1e-9, 1.0])).isfinite()
    assert kept.tolist() == [[True, True, False, False], [True, False, False, False], [True] * 4]
    assert torch.equal(filter_top_p(scores, torch.tensor([1.0, 1.0, 1.0])), scores)


def test_penalties_follow_openai_and_transformers() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    counts = torch.tensor([[3.0, 1.0, 0.0]])
    penalised = apply_presence_frequency(logits, counts, torch.tensor([0.5]), torch.tensor([0.25]))
    assert penalised.tolist() == [[2.0 - 0.5 - 0.75, -2.0 - 0.5 - 0.25, 1.0]]
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, torch.tensor([2.0])).tolist() == [
        [1.0, -4.0, 1.0]
    ]


def test_seeded_generators_repeat_and_unseeded_ones_differ() -> None:
    probs = torch.full((1000,), 1e-3)

    def draw(generator: torch.Generator) -> list[int]:
        return torch.multinomial(probs, 20, replacement=True, generator=generator).tolist()

    cpu = torch.device("cpu")
    assert draw(make_generator(42, cpu)) == draw(make_generator(42, cpu))
    assert draw(make_generator(None, cpu)) != draw(make_generator(None, cpu))


# --- padding and the KV cache ---------------------------------------------------------------------


def test_left_padding_counts_positions_per_row() -> None:
    input_ids, mask, positions = left_pad([[5, 6, 7], [8]], device="cpu", pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_padded_batch_decodes_exactly_like_each_row_alone(
    arch: str, request: pytest.FixtureRequest, load_predictor: Callable[..., Any]
) -> None:
    model = load_predictor(request.getfixturevalue(f"{arch}_dir")).model
    grown = [list(prompt) for prompt in PROMPTS]
    with torch.inference_mode():
        batch, logits = DecodeBatch.prefill(model, grown, device=torch.device("cpu"))
        for _ in range(4):
            for row, sequence in enumerate(grown):
                torch.testing.assert_close(
                    logits[row].float(), full_logits(model, sequence), atol=TOLERANCE, rtol=0
                )
            tokens = logits.argmax(dim=-1)
            for sequence, token in zip(grown, tokens.tolist(), strict=True):
                sequence.append(token)
            logits = batch.step(tokens)


def test_the_decode_batch_owns_its_cache_and_drops_finished_rows(llama: Any) -> None:
    model = llama.model
    sequences = [list(prompt) for prompt in PROMPTS]
    width = max(map(len, sequences))
    with torch.inference_mode():
        batch, logits = DecodeBatch.prefill(model, sequences, device=torch.device("cpu"))
        assert isinstance(batch.cache, DynamicCache)
        assert batch.cache.get_seq_length() == width
        tokens = logits.argmax(dim=-1)
        batch.keep([2, 0])
        assert [layer.keys.shape[0] for layer in batch.cache.layers] == [2] * len(
            batch.cache.layers
        )
        logits = batch.step(tokens[[2, 0]])
    assert batch.cache.get_seq_length() == width + 1
    for row, original in enumerate([2, 0]):
        expected = full_logits(model, [*sequences[original], int(tokens[original])])
        torch.testing.assert_close(logits[row], expected, atol=TOLERANCE, rtol=0)


# --- the engine -----------------------------------------------------------------------------------


def _drain(events: Iterable[list[TokenEvent | StreamFailed]]) -> list[TokenEvent]:
    flat = [event for step in events for event in step]
    assert all(isinstance(event, TokenEvent) for event in flat)
    return flat  # type: ignore[return-value]


def test_each_step_yields_one_event_per_unfinished_stream(engine: Engine) -> None:
    short = GenerationStream(GenerationRequest(prompt=tuple(PROMPTS[0]), max_tokens=2))
    long = GenerationStream(GenerationRequest(prompt=tuple(PROMPTS[1]), max_tokens=4))
    none = GenerationStream(GenerationRequest(prompt=tuple(PROMPTS[2]), max_tokens=0))
    steps = list(engine.generate([short, long, none]))
    assert [[event.stream for event in step] for step in steps] == [
        [short, long],
        [short, long],
        [long],
        [long],
    ]
    assert [event.finish_reason for step in steps for event in step if event.stream is short] == [
        None,
        "length",
    ]
    assert none.generated == [] and len(long.generated) == 4


def test_an_interrupted_generation_resumes_where_it_stopped(engine: Engine) -> None:
    """What the server does after a batch failure: the stream goes on alone from its state."""
    sampling = SamplingParams(
        temperature=1.3, seed=5, presence_penalty=0.5, repetition_penalty=1.3, top_k=50
    )
    op = GenerationRequest(
        prompt=tuple(PROMPTS[0]), max_tokens=7, top_logprobs=3, sampling=sampling
    )
    other = GenerationStream(GenerationRequest(prompt=tuple(PROMPTS[1]), max_tokens=7))
    whole = _drain(engine.generate([GenerationStream(op)]))

    stream = GenerationStream(op)
    steps = engine.generate([stream, other])
    first = [
        event
        for _, step in zip(range(3), steps, strict=False)
        for event in step
        if event.stream is stream
    ]
    steps.close()  # the batch is gone, as after an exception
    assert len(stream.generated) == 3 and not stream.finished
    rest = _drain(engine.generate([stream]))

    resumed = first + rest
    assert [e.token for e in resumed] == [e.token for e in whole] == stream.generated
    for got, want in zip(resumed, whole, strict=True):
        assert got.logprob == pytest.approx(want.logprob, abs=TOLERANCE)
        assert got.top_logprobs.keys() == want.top_logprobs.keys()
        assert got.finish_reason == want.finish_reason


def test_batched_scoring_equals_scoring_alone_and_the_full_forward(
    engine: Engine, llama: Any
) -> None:
    ops = [
        ScoreRequest(tuple(PROMPTS[0]), (30, 31, 32)),
        ScoreRequest(tuple(PROMPTS[1]), ()),
        ScoreRequest(tuple(PROMPTS[2]), (50,)),
    ]
    batched = engine.score(ops)
    assert batched[1] == ScoreResult(ops[1])
    for op, result in zip(ops, batched, strict=True):
        [alone] = engine.score([op])
        assert result.logprobs == pytest.approx(alone.logprobs, abs=TOLERANCE)
        expected = [
            float(
                torch.log_softmax(full_logits(llama.model, [*op.prompt, *op.scored[:j]]), -1)[token]
            )
            for j, token in enumerate(op.scored)
        ]
        assert list(result.logprobs) == pytest.approx(expected, abs=TOLERANCE)


def test_vocab_size_comes_from_the_logits(engine: Engine, llama: Any) -> None:
    assert (
        engine.vocab_size
        == llama.model.config.vocab_size
        == llama.model.get_output_embeddings().weight.shape[0]
    )


# --- serving: in-band failures and retries --------------------------------------------------------


@pytest.fixture
def fresh_llama(llama_dir: Path, load_predictor: Callable[..., Any]) -> Any:
    """A predictor of its own, for tests that hook or damage its model."""
    return load_predictor(llama_dir, fresh=True)


MIXED_OPS = [
    generate(PROMPTS[0], "g1", max_tokens=5, top_logprobs=2),
    generate(PROMPTS[1], "g2", max_tokens=3, temperature=1.1, seed=8),
    generate(PROMPTS[2], "g3", max_tokens=6, logit_bias={"9": 5}),
    score(PROMPTS[0], [30, 31, 32], "s1"),
    score(PROMPTS[2], [50, 51], "s2"),
]


def _alone(predictor: Any, op: list[Any]) -> list[dict[str, Any]]:
    return [data for _, data in run(predictor, [op])]


def _assert_same(got: Sequence[dict[str, Any]], want: Sequence[dict[str, Any]]) -> None:
    assert [(d["token"], d["finish_reason"]) for d in got] == [
        (d["token"], d["finish_reason"]) for d in want
    ]
    assert [d["logprob"] for d in got] == pytest.approx([d["logprob"] for d in want], abs=TOLERANCE)


def test_a_batch_that_fails_is_retried_stream_by_stream(
    fresh_llama: Any, llama: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lmtp_runtime")
    handle = fail_when(fresh_llama.model, lambda input_ids: input_ids.shape[0] > 1)
    try:
        lines = run(fresh_llama, MIXED_OPS)
    finally:
        handle.remove()
    for op in MIXED_OPS:
        _assert_same(of_stream(lines, op[1]["stream_id"]), _alone(llama, op))
    failures = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert [record.exc_info[0] for record in failures] == [
        torch.OutOfMemoryError
    ] * 2  # one SCORE, one GENERATE batch
    assert "2 failed computations" in caplog.text


def test_a_failure_mid_generation_resumes_without_repeating_tokens(
    fresh_llama: Any, llama: Any
) -> None:
    decode_steps = []

    def third_batched_step(input_ids: torch.Tensor) -> bool:
        if input_ids.shape[0] > 1 and input_ids.shape[1] == 1:
            decode_steps.append(input_ids.shape[0])
            return len(decode_steps) == 3
        return False

    handle = fail_when(fresh_llama.model, third_batched_step)
    try:
        lines = run(fresh_llama, MIXED_OPS[:3])
    finally:
        handle.remove()
    assert len(decode_steps) >= 3
    for op in MIXED_OPS[:3]:
        got = of_stream(lines, op[1]["stream_id"])
        assert len(got) == op[1]["max_tokens"]
        _assert_same(got, _alone(llama, op))


def test_a_stream_that_fails_alone_too_gets_an_error_line_and_the_others_complete(
    fresh_llama: Any, llama: Any
) -> None:
    poison = 77
    ops = [
        generate([1, poison, 3], "bad", max_tokens=4),
        *MIXED_OPS[:2],
        score([1, poison], [4, 5], "bad score"),
        MIXED_OPS[3],
    ]
    handle = fail_when(fresh_llama.model, lambda input_ids: bool((input_ids == poison).any()))
    try:
        lines = run(fresh_llama, ops)
    finally:
        handle.remove()
    for stream_id in ("bad", "bad score"):
        [(kind, data)] = [(kind, data) for kind, data in lines if data["stream_id"] == stream_id]
        assert kind == "TOKEN"
        assert data["error"].startswith(
            "computing this stream failed (OutOfMemoryError: CUDA out of memory."
        )
        assert "Traceback" not in data["error"] and "\n" not in data["error"]
    for op in [*MIXED_OPS[:2], MIXED_OPS[3]]:
        _assert_same(of_stream(lines, op[1]["stream_id"]), _alone(llama, op))


def test_nan_logits_are_an_error_line_not_a_nan(fresh_llama: Any) -> None:
    with torch.no_grad():
        fresh_llama.model.get_output_embeddings().weight[7] = math.nan
    lines = run(
        fresh_llama,
        [
            generate(PROMPTS[0], "g", max_tokens=3),
            score(PROMPTS[0], [5], "s"),
            ["MODEL_INFO", {"stream_id": "i"}],
        ],
    )
    assert [data["stream_id"] for _, data in lines] == ["i", "s", "g"]
    for _, data in lines[1:]:
        assert "NaN logits" in data["error"]


def test_reported_logprobs_are_floored_instead_of_infinite(llama: Any) -> None:
    """Biases add up, past float32's range to -inf; strict JSON still needs a number."""
    vocab = llama.model.config.vocab_size
    lines = run(
        llama,
        [
            generate(
                PROMPTS[0], max_tokens=1, top_logprobs=vocab, logit_bias={"5": -3e38, "05": -3e38}
            )
        ],
    )
    [(_, data)] = lines
    assert data["top_logprobs"]["5"] == LOGPROB_FLOOR
    assert all(math.isfinite(value) for value in data["top_logprobs"].values())


# --- the predictor --------------------------------------------------------------------------------


def test_stream_is_a_sync_generator_that_streams_each_step(llama: Any) -> None:
    """A sync generator, so that Cog streams it whether run() is sync (it yields from it) or
    async (it returns it): coglet collects an async generator's output instead."""
    chunks = llama.stream(
        ops_batch_json=json.dumps(
            [generate(PROMPTS[0], 1, max_tokens=3), generate(PROMPTS[1], 2, max_tokens=3)]
        )
    )
    assert inspect.isgenerator(chunks)
    first = parse_lines([next(chunks)])
    assert sorted(data["stream_id"] for _, data in first) == [1, 2]
    assert len(parse_lines(chunks)) == 4


def test_a_msg_line_ends_its_chunk_and_rejections_share_one(llama: Any) -> None:
    """LMQL's client stops reading a chunk at its first MSG line: nothing may follow one. The
    errors of bad ops share a chunk, which the first MSG answer ends."""
    ops = [
        ["MODEL_INFO", {"stream_id": 1}],
        ["FOO", {"stream_id": 2}],
        generate(PROMPTS[0], 3, max_tokens=2),
        generate(PROMPTS[1], 4, max_tokens=-1),
        ["MODEL_INFO", {"stream_id": 5}],
    ]
    chunks = list(llama.stream(ops_batch_json=json.dumps(ops)))
    lines = [line for chunk in chunks for line in chunk.splitlines()]
    assert sum(line.startswith("MSG ") for line in lines) == 3
    for chunk in chunks:
        kinds = [line.split(" ", 1)[0] for line in chunk.splitlines()]
        assert "MSG" not in kinds[:-1], chunk
    # The rejected GENERATE (TOKEN error) and the first MSG share the first chunk.
    first = [line.split(" ", 1)[0] for line in chunks[0].splitlines()]
    assert first == ["TOKEN", "MSG"], chunks[0]


def test_ten_thousand_bad_ops_are_one_chunk(llama: Any) -> None:
    bad = [generate(PROMPTS[0], index, max_tokens=-1) for index in range(10_000)]
    ops = [*bad, generate(PROMPTS[1], "good", max_tokens=3)]
    chunks = list(llama.stream(ops_batch_json=json.dumps(ops)))
    assert len(chunks) == 1 + 3
    assert chunks[0].count("\n") == 10_000
    assert [data["stream_id"] for _, data in parse_lines(chunks[1:])] == ["good"] * 3


def test_predict_without_any_input_is_a_clear_input_error(llama: Any) -> None:
    """Neither ``prompt`` nor ``ops_batch_json``: the prediction fails with one sentence."""
    with pytest.raises(TextInputError, match="prompt.*ops_batch_json"):
        list(llama.stream())
    assert parse_lines(llama.stream(ops_batch_json="[]")) == []


def test_a_predictor_that_is_not_set_up_answers_in_band() -> None:
    [(kind, data)] = parse_lines(LmtpPredictor().stream(ops_batch_json="[]"))
    assert (kind, data) == ("MSG", {"stream_id": None, "error": NOT_READY})


def _serving_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "lmtp_runtime.lmtp_mode"]


def test_each_prediction_logs_one_summary_line_when_asked(
    llama_dir: Path, load_predictor: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    logging_predictor = load_predictor(llama_dir, log_predictions=True)
    caplog.set_level(logging.INFO, logger="lmtp_runtime")
    ops = [generate(PROMPTS[0], max_tokens=4), score(PROMPTS[1], [3, 4]), ["NOPE", {}]]
    run(logging_predictor, ops)
    [summary] = _serving_records(caplog)
    assert summary.levelno == logging.INFO
    assert "1 GENERATE, 1 SCORE, 1 rejected; 6 tokens; 0 failed computations" in summary.getMessage()


def test_lmtp_predictions_log_nothing_at_info_by_default(
    llama: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """LMQL's Replicate client would read an INFO line of a prediction as an LMTP line."""
    caplog.set_level(logging.DEBUG, logger="lmtp_runtime")
    run(llama, [generate(PROMPTS[0], max_tokens=2)])
    [summary] = _serving_records(caplog)
    assert summary.levelno == logging.DEBUG


def test_model_info_reports_the_runtime_version_of_the_package() -> None:
    import lmtp_cog

    assert __version__ == lmtp_cog.__version__


# --- loading --------------------------------------------------------------------------------------


def test_dtype_is_configured_else_the_checkpoints_else_by_device() -> None:
    half = LlamaConfig(dtype="float16")
    assert choose_dtype(LoadOptions(torch_dtype="bfloat16"), half, on_gpu=False) == torch.bfloat16
    assert choose_dtype(LoadOptions(torch_dtype="auto"), half, on_gpu=False) == torch.float16
    assert choose_dtype(LoadOptions(), half, on_gpu=False) == torch.float16
    unknown = LlamaConfig()
    unknown.dtype = None
    assert choose_dtype(LoadOptions(), unknown, on_gpu=False) == torch.float32
    assert choose_dtype(LoadOptions(), unknown, on_gpu=True) == torch.float16


def test_loading_is_offline_and_leaves_the_environment_alone(
    monkeypatch: pytest.MonkeyPatch, llama_dir: Path, make_settings: Callable[..., Any]
) -> None:
    """The image is offline for good; a test process that later talks to a stand-in Hub is not."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    with hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
    LmtpPredictor.from_settings(make_settings(llama_dir))
    assert "HF_HUB_OFFLINE" not in os.environ
    assert os.environ["TRANSFORMERS_OFFLINE"] == "0"


def test_quantization_goes_through_a_bitsandbytes_config() -> None:
    kwargs = from_pretrained_kwargs(LoadOptions(quantization="8bit"), torch.float32, on_gpu=False)
    assert isinstance(kwargs["quantization_config"], BitsAndBytesConfig)
    assert kwargs["quantization_config"].load_in_8bit
    assert "load_in_8bit" not in kwargs and "device_map" not in kwargs
    assert kwargs["local_files_only"] is True

    four = from_pretrained_kwargs(LoadOptions(quantization="4bit"), torch.bfloat16, on_gpu=True)
    config = four["quantization_config"]
    assert (
        config.load_in_4bit
        and config.bnb_4bit_quant_type == "nf4"
        and config.bnb_4bit_use_double_quant
    )
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert four["device_map"] == "auto"
    assert "quantization_config" not in from_pretrained_kwargs(
        LoadOptions(), torch.float32, on_gpu=False
    )


def test_context_length_and_eos_ids_are_found_across_spellings(
    make_checkpoint: Callable[..., Path], load_predictor: Callable[..., Any]
) -> None:
    assert context_length(GPT2Config(n_positions=77)) == 77
    assert context_length(LlamaConfig(max_position_embeddings=99)) == 99
    model = load_predictor(
        make_checkpoint(
            arch="gpt2", eos_token_id=[2, 11], generation_config={"eos_token_id": [9, 2]}
        )
    ).model
    assert eos_token_ids(model) == (2, 11, 9)


@pytest.mark.parametrize(
    ("config", "error", "says"),
    [
        (
            T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8),
            UnsupportedModelError,
            "encoder-decoder",
        ),
        (
            ViTConfig(
                hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
            ),
            UnsupportedModelError,
            "causal language model",
        ),
    ],
    ids=["t5", "vit"],
)
def test_models_lmtp_cannot_serve_are_refused(
    tmp_path: Path, make_settings: Callable[..., Any], config: Any, error: type, says: str
) -> None:
    config.save_pretrained(tmp_path)
    with pytest.raises(error, match=says) as caught:
        LmtpPredictor.from_settings(make_settings(tmp_path))
    assert str(tmp_path) in str(caught.value)


def test_setup_failures_are_one_sentence_runtime_errors(
    tmp_path: Path, llama_dir: Path, make_settings: Callable[..., Any]
) -> None:
    with pytest.raises(ModelLoadError, match="does not exist") as missing:
        LmtpPredictor.from_settings(make_settings(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in llama_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="Could not load the model weights") as corrupt:
        LmtpPredictor.from_settings(make_settings(broken))
    with pytest.raises(SettingsError, match="LmtpPredictor has no settings") as unset:
        LmtpPredictor().setup()
    for caught in (missing, corrupt, unset):
        assert isinstance(caught.value, RuntimeSetupError) and isinstance(
            caught.value, RuntimeError
        )
        assert "\n" not in str(caught.value)


# --- 8-bit ----------------------------------------------------------------------------------------


def test_an_8bit_model_serves_generate_and_score_on_the_cpu(
    llama_dir: Path, load_predictor: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    predictor = load_predictor(llama_dir, quantization="8bit")
    assert any(type(module).__name__ == "Linear8bitLt" for module in predictor.model.modules())

    generated = of_stream(run(predictor, [generate(PROMPTS[0], max_tokens=5, top_logprobs=3)]), 1)
    assert [d["finish_reason"] for d in generated] == [None] * 4 + ["length"]
    assert all(len(d["top_logprobs"]) in (3, 4) for d in generated)
    # The cached, batched decode path and one uncached forward agree on the 8-bit model too.
    scored = of_stream(run(predictor, [score(PROMPTS[0], [d["token"] for d in generated])]), 1)
    assert [d["logprob"] for d in scored] == pytest.approx(
        [d["logprob"] for d in generated], abs=1e-3
    )

    [(_, info)] = run(predictor, [["MODEL_INFO", {}]])
    assert info["model_info"]["quantization"] == "8bit"
    # bitsandbytes warns about the float16 cast on every forward; the runtime says it once.
    assert "MatMul8bitLt" not in caplog.text
