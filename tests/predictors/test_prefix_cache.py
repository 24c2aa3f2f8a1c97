"""The prefix cache: prompts that share a prefix with an earlier sequence compute only the rest.

Every test compares an engine with the cache against an engine without it on the same model:
tokens must be identical and logprobs equal within float tolerance. Work saved is counted with a
forward hook on the embedding layer (the tokens the model is really fed), never inferred.
Models are the tiny random Llama and GPT-2 checkpoints, loaded once per module.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from lmtp_runtime.engine import (
    MIN_SHARED_PREFIX,
    Engine,
    GenerationStream,
    StreamFailed,
    TokenEvent,
)
from lmtp_runtime.errors import SettingsError
from lmtp_runtime.lmtp_mode import LmtpMode
from lmtp_runtime.prefix_cache import (
    CPU_BUDGET_MB,
    MIB,
    PrefixCache,
    budget_bytes,
    common_prefix_length,
    shared_prefixes,
)
from lmtp_runtime.requests import GenerationRequest, SamplingParams, ScoreRequest
from lmtp_runtime.scheduler import BatchScheduler
from lmtp_runtime.settings import read_settings
from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

TOLERANCE = 1e-4
EOS = 2
ARCHS = ["llama", "gpt2"]

Result = list[tuple[int, float, dict[int, float]]]


# --- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(llama_dir: Path, gpt2_dir: Path) -> dict[str, Any]:
    """Models of this module's own (tests attach hooks to them)."""
    return {
        arch: AutoModelForCausalLM.from_pretrained(str(directory)).eval()
        for arch, directory in (("llama", llama_dir), ("gpt2", gpt2_dir))
    }


def engines(model: Any, **cache: Any) -> tuple[Engine, Engine]:
    """A fresh engine with a prefix cache (``cache`` as for ``Engine.start``), and one without."""
    cached = Engine.start(model, context_length=256, eos_token_ids=[EOS], **cache)
    plain = Engine.start(model, context_length=256, eos_token_ids=[EOS], prefix_cache_mb=0)
    assert cached.prefix_cache is not None and plain.prefix_cache is None
    return cached, plain


def generate(engine: Engine, *ops: GenerationRequest) -> list[Result]:
    """Run ``ops`` as one batch; per op, its ``(token, logprob, top_logprobs)`` triples."""
    streams = [GenerationStream(op) for op in ops]
    events = [event for step in engine.generate(streams) for event in step]
    assert not [event for event in events if isinstance(event, StreamFailed)]
    return [
        [
            (event.token, event.logprob, event.top_logprobs)
            for event in events
            if isinstance(event, TokenEvent) and event.stream is stream
        ]
        for stream in streams
    ]


def gen_op(
    prompt: Sequence[int], max_tokens: int = 4, *, logit_bias: Any = ((EOS, -100.0),), **args: Any
) -> GenerationRequest:
    """A generation; by default EOS is masked, so every stream runs to ``max_tokens``."""
    return GenerationRequest(
        prompt=tuple(prompt), max_tokens=max_tokens, logit_bias=logit_bias, **args
    )


def assert_same(got: Result, want: Result) -> None:
    assert [token for token, _, _ in got] == [token for token, _, _ in want]
    assert [logprob for _, logprob, _ in got] == pytest.approx(
        [logprob for _, logprob, _ in want], abs=TOLERANCE
    )
    for (_, _, got_top), (_, _, want_top) in zip(got, want, strict=True):
        assert got_top.keys() == want_top.keys()
        assert list(got_top.values()) == pytest.approx(list(want_top.values()), abs=TOLERANCE)


def tokens_of(result: Result) -> list[int]:
    return [token for token, _, _ in result]


@contextmanager
def fed_tokens(model: Any) -> Iterator[list[int]]:
    """Count the token positions each forward pass feeds the model (padding included)."""
    counts: list[int] = []
    handle = model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: counts.append(args[0].numel())
    )
    try:
        yield counts
    finally:
        handle.remove()


def random_prompt(rng: random.Random, length: int, vocab: int) -> list[int]:
    return [1, *(rng.randrange(3, vocab) for _ in range(length - 1))]


# --- what LMQL does: re-send the growing prompt ---------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded"])
def test_an_lmql_trace_decodes_identically_with_and_without_the_cache(
    models: dict[str, Any], arch: str, sampled: bool
) -> None:
    """30 calls, each re-sending the previous prompt plus what it generated, under a mask."""
    model = models[arch]
    cached, plain = engines(model)
    rng = random.Random(7)
    vocab = model.config.vocab_size
    allowed = tuple((token, 100.0) for token in rng.sample(range(3, vocab), vocab // 3))
    prompt = random_prompt(rng, 30, vocab)
    fed_by_cached = fed_by_plain = 0
    for call in range(30):
        sampling = SamplingParams(temperature=0.8, seed=call, top_k=40) if sampled else SamplingParams()
        op = gen_op(
            prompt,
            max_tokens=(6, 1, 4)[call % 3],
            logit_bias=allowed,  # LMQL's mask: +100 on the allowed tokens (EOS is not one)
            top_logprobs=3,
            sampling=sampling,
        )
        with fed_tokens(model) as counts:
            [got] = generate(cached, op)
        fed_by_cached += sum(counts)
        with fed_tokens(model) as counts:
            [want] = generate(plain, op)
        fed_by_plain += sum(counts)
        assert_same(got, want)
        prompt += tokens_of(got)
    # Every token the cache supplied is one the model was not fed; most of the trace's work.
    assert cached.reused_prompt_tokens == fed_by_plain - fed_by_cached
    assert fed_by_cached < fed_by_plain / 5
    assert len(cached.prefix_cache) == 1  # each call's sequence extends, and replaces, the last


def test_a_call_computes_only_the_tokens_after_the_cached_sequence(
    models: dict[str, Any],
) -> None:
    model = models["llama"]
    cached, _ = engines(model)
    prompt = list(range(1, 41))
    with fed_tokens(model) as first:
        [result] = generate(cached, gen_op(prompt, max_tokens=5))
    # The prompt, then one token per decode step (the last token is chosen, never fed).
    assert first == [len(prompt), 1, 1, 1, 1]

    extra = [50, 51, 52]
    with fed_tokens(model) as second:
        generate(cached, gen_op([*prompt, *tokens_of(result), *extra], max_tokens=5))
    # The cache held prompt + the first 4 generated tokens: the 5th and the extras are new.
    assert second == [1 + len(extra), 1, 1, 1, 1]


# --- prompts that share less, or everything -------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_a_prompt_that_diverges_midway_reuses_only_the_shared_part(
    models: dict[str, Any], arch: str
) -> None:
    model = models[arch]
    cached, plain = engines(model)
    shared, first_tail, second_tail = list(range(1, 31)), [60, 61, 62, 63], [70, 71]
    generate(cached, gen_op([*shared, *first_tail]))

    op = gen_op([*shared, *second_tail], max_tokens=4, top_logprobs=2)
    with fed_tokens(model) as counts:
        [got] = generate(cached, op)
    assert counts[0] == len(second_tail)
    assert_same(got, generate(plain, op)[0])
    # Both branches stay cached: neither sequence is a prefix of the other.
    assert len(cached.prefix_cache) == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_an_identical_prompt_recomputes_only_its_last_token(
    models: dict[str, Any], arch: str
) -> None:
    model = models[arch]
    cached, plain = engines(model)
    op = gen_op(list(range(1, 25)), max_tokens=3, top_logprobs=2)
    [first] = generate(cached, op)
    # Now exactly the cached sequence: prompt + all generated tokens but the last.
    same_as_cached = gen_op([*op.prompt, *tokens_of(first)[:-1]], max_tokens=3)
    for again in (op, same_as_cached):
        with fed_tokens(model) as counts:
            [got] = generate(cached, again)
        assert counts[0] == 1  # its logits are needed, so the last prompt token is fed again
        assert_same(got, generate(plain, again)[0])
    assert_same(first, generate(plain, op)[0])


# --- SCORE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_score_reuses_a_generated_prefix_and_scores_share_theirs(
    models: dict[str, Any], arch: str
) -> None:
    """LMQL's ``distribution``: SCOREs of candidates after a prompt that GENERATE computed."""
    model = models[arch]
    cached, plain = engines(model)
    prompt = list(range(1, 31))
    [result] = generate(cached, gen_op(prompt, max_tokens=4))
    context = (*prompt, *tokens_of(result))

    candidates = [(80, 81, 82), (90,), (80, 83)]
    fed = []
    for candidate in candidates:
        op = ScoreRequest(prompt=context, scored=candidate)
        with fed_tokens(model) as counts:
            [got] = cached.score([op])
        fed.append(counts[0])
        [want] = plain.score([op])
        assert got.logprobs == pytest.approx(want.logprobs, abs=TOLERANCE)
    # The first SCORE feeds the generated sequence's last token and 80, 81; the later ones
    # only the positions whose logits they read (the prompt's last token, and the third's 80).
    assert fed == [1 + 2, 1, 2]


# --- batches --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_a_batch_mixing_hits_and_misses_decodes_each_row_as_alone(
    models: dict[str, Any], arch: str
) -> None:
    model = models[arch]
    cached, plain = engines(model)
    rng = random.Random(3)
    vocab = model.config.vocab_size
    long, short = random_prompt(rng, 40, vocab), random_prompt(rng, 12, vocab)
    for prompt in (long, short):
        generate(cached, gen_op(prompt, max_tokens=2))

    bias = ((5, 3.0), (9, -2.0))
    ops = [
        gen_op([*long, 7, 8, 9], max_tokens=5, top_logprobs=2),  # a long hit
        gen_op([13, *random_prompt(rng, 20, vocab)[1:]], max_tokens=3),  # a miss
        gen_op([*short, 11], max_tokens=6, logit_bias=bias),  # a short hit
        gen_op([*long[:25], 4, 4], max_tokens=2),  # diverges from a cached sequence
        gen_op(short[:5], max_tokens=4),  # shorter than a cached sequence
    ]
    with fed_tokens(model) as counts:
        batched = generate(cached, *ops)
    # One forward pass for all rows, as wide as the longest part that was not cached.
    assert counts[0] == len(ops) * 20
    for op, got in zip(ops, batched, strict=True):
        assert_same(got, generate(plain, op)[0])

    scores = [
        ScoreRequest(prompt=(*long, 7), scored=(8, 9, 10)),
        ScoreRequest(prompt=tuple(random_prompt(rng, 9, vocab)), scored=(3, 4)),
        ScoreRequest(prompt=tuple(short), scored=(11,)),
    ]
    for got, op in zip(cached.score(scores), scores, strict=True):
        assert got.logprobs == pytest.approx(plain.score([op])[0].logprobs, abs=TOLERANCE)


def test_rows_of_a_padded_batch_are_stored_compact(models: dict[str, Any]) -> None:
    model = models["llama"]
    cached, _ = engines(model)
    ops = [gen_op(list(range(1, 31)), max_tokens=2), gen_op(list(range(100, 110)), max_tokens=5)]
    generate(cached, *ops)
    entries = cached.prefix_cache.entries
    assert sorted(len(entry.tokens) for entry in entries) == [10 + 4, 30 + 1]
    per_token = _bytes_per_token(model)
    for entry in entries:
        assert entry.nbytes == per_token * len(entry.tokens)
        for keys, values in entry.layers:
            for tensor in (keys, values):
                assert tensor.shape[0] == 1 and tensor.shape[-2] == len(entry.tokens)
                assert tensor.untyped_storage().nbytes() == tensor.nbytes  # no batch behind it
    assert cached.prefix_cache.bytes_used == sum(entry.nbytes for entry in entries)


def test_cached_entries_are_never_written_to(models: dict[str, Any]) -> None:
    model = models["llama"]
    cached, plain = engines(model)
    prompt = list(range(1, 21))
    generate(cached, gen_op(prompt, max_tokens=3))
    [entry] = cached.prefix_cache.entries
    before = [(keys.clone(), values.clone()) for keys, values in entry.layers]

    ops = [gen_op([*prompt[:10], 99], max_tokens=4), gen_op([*prompt[:15], 98], max_tokens=2)]
    for op in ops:  # alone: the cache takes the entry's tensors as views
        generate(cached, op)
    generate(cached, *ops)  # batched: they are copied into the batch
    cached.score([ScoreRequest(prompt=tuple(prompt[:12]), scored=(5, 6))])
    for (keys, values), (old_keys, old_values) in zip(entry.layers, before, strict=True):
        assert torch.equal(keys, old_keys) and torch.equal(values, old_values)


# --- rows of one batch that share a prefix --------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_sharing_a_prompt_in_one_batch_compute_it_once(
    models: dict[str, Any], arch: str
) -> None:
    """LMQL's ``distribution``: one prediction of SCOREs, one per candidate, after one prompt."""
    model = models[arch]
    cached, plain = engines(model)
    rng = random.Random(11)
    prompt = tuple(random_prompt(rng, 40, model.config.vocab_size))
    candidates = [(30 + row, *range(50, 50 + row % 4)) for row in range(8)]
    ops = [
        ScoreRequest(prompt=prompt, scored=candidate)
        for row, candidate in enumerate(candidates)
    ]
    with fed_tokens(model) as counts:
        batched = cached.score(ops)
    # The prompt but its last token (whose logits every row reads) once, as a row of its own;
    # then each row only the positions it scores.
    widest = max(len(candidate) for candidate in candidates)
    assert counts == [len(prompt) - 1, len(ops) * widest]
    for op, got in zip(ops, batched, strict=True):
        assert got.logprobs == pytest.approx(plain.score([op])[0].logprobs, abs=TOLERANCE)


@pytest.mark.parametrize("arch", ARCHS)
def test_sampled_streams_of_one_prompt_compute_it_once(models: dict[str, Any], arch: str) -> None:
    """``sample(n=4)``: four seeded streams of one prompt, each decoding as it would alone."""
    model = models[arch]
    cached, plain = engines(model)
    prompt = random_prompt(random.Random(5), 30, model.config.vocab_size)
    ops = [
        gen_op(
            prompt,
            max_tokens=3 + seed,
            top_logprobs=2,
            sampling=SamplingParams(temperature=0.9, seed=seed, top_k=(0, 20)[seed % 2]),
        )
        for seed in range(4)
    ]
    with fed_tokens(model) as counts:
        batched = generate(cached, *ops)
    # The shared prompt once; the streams then feed its last token, then one token per step.
    assert counts[:2] == [len(prompt) - 1, len(ops)]
    for op, got in zip(ops, batched, strict=True):
        assert_same(got, generate(plain, op)[0])


def test_rows_sharing_a_short_or_cached_prefix_run_as_one_batch(models: dict[str, Any]) -> None:
    model = models["llama"]
    cached, plain = engines(model)
    shared = list(range(3, 3 + MIN_SHARED_PREFIX - 1))  # one token too short to be worth it
    ops = [gen_op([*shared, tail], max_tokens=3) for tail in (60, 61, 62)]
    for engine in (cached, plain):
        with fed_tokens(model) as counts:
            generate(engine, *ops)
        assert counts[0] == len(ops) * (len(shared) + 1)

    # Long enough, but the cache already holds all of it but a few tokens: no extra pass.
    long = list(range(3, 43))
    generate(cached, gen_op(long[:-3], max_tokens=1))
    ops = [gen_op([*long, tail], max_tokens=2) for tail in (60, 61)]
    with fed_tokens(model) as counts:
        batched = generate(cached, *ops)
    assert counts[0] == len(ops) * 4
    for op, got in zip(ops, batched, strict=True):
        assert_same(got, generate(plain, op)[0])


def test_without_a_cache_shared_prompts_are_computed_per_row(models: dict[str, Any]) -> None:
    model = models["llama"]
    _, plain = engines(model)
    prompt = list(range(3, 43))
    ops = [ScoreRequest(prompt=tuple(prompt), scored=(50 + row,)) for row in range(3)]
    with fed_tokens(model) as counts:
        plain.score(ops)
    assert counts == [len(ops) * len(prompt)]


def test_shared_prefixes_are_the_longest_that_rows_have_in_common() -> None:
    a = [1, *range(10, 40)]
    b = [*a[:25], 7, 7]
    c = [*a[:18], 9]
    d = [5, *range(10, 40)]

    def shared(sequences: list[list[int]], limits: list[int] | None = None) -> list[int]:
        limits = limits or [len(sequence) for sequence in sequences]
        found = shared_prefixes(sequences, limits=limits, minimum=16)
        return [len(prefix) for prefix in found]

    # c's 18 tokens are a prefix of a and b's 25: that one entry serves all three rows.
    assert shared([d, c, a, b]) == [25]
    assert shared([a, a, d]) == [len(a)]
    assert shared([a, a], limits=[len(a), 20]) == [20]  # the second row needs its last tokens
    assert shared([a, d, [1, 2, 3]]) == []
    assert shared([a]) == []
    assert shared_prefixes([b, a], limits=[27, 31], minimum=16) == [tuple(a[:25])]


# --- memory ---------------------------------------------------------------------------------------


def _bytes_per_token(model: Any) -> int:
    """What one token's keys and values take over all layers, from a real forward pass."""
    cache = PrefixCache(budget_bytes=MIB)
    engine = Engine(model, vocab_size=1, context_length=None, eos_token_ids=[], prefix_cache=cache)
    engine.score([ScoreRequest(prompt=(1, 2, 3), scored=(4,))])
    return cache.bytes_used // 3


@pytest.mark.parametrize("arch", ARCHS)
def test_the_least_recently_used_entries_go_when_the_budget_is_full(
    models: dict[str, Any], arch: str
) -> None:
    model = models[arch]
    per_token = _bytes_per_token(model)
    length, max_tokens = 20, 3
    entry_bytes = per_token * (length + max_tokens - 1)
    cache = PrefixCache(budget_bytes=int(2.5 * entry_bytes))  # room for two entries
    cached = Engine(
        model,
        vocab_size=model.config.vocab_size,
        context_length=256,
        eos_token_ids=[EOS],
        prefix_cache=cache,
    )
    _, plain = engines(model)
    a, b, c = ([first, *range(3, 3 + length - 1)] for first in (10, 11, 12))

    [first_a] = generate(cached, gen_op(a, max_tokens=max_tokens))
    generate(cached, gen_op(b, max_tokens=max_tokens))
    assert [entry.tokens[0] for entry in cache.entries] == [10, 11]
    assert cache.bytes_used == 2 * entry_bytes

    # Growing a makes b the least recently used (a's longer entry replaces its old one); c's
    # entry then pushes b out.
    grown_a = gen_op([*a, *tokens_of(first_a), 40], max_tokens=max_tokens)
    with fed_tokens(model) as counts:
        [got_a] = generate(cached, grown_a)
    assert counts[0] == 2  # the last generated token, which was never fed, and 40
    generate(cached, gen_op(c, max_tokens=max_tokens))
    assert [entry.tokens[0] for entry in cache.entries] == [10, 12]
    assert cache.bytes_used == sum(entry.nbytes for entry in cache.entries) <= cache.budget_bytes
    assert_same(got_a, generate(plain, grown_a)[0])

    # b is gone: computed in full again, with the same result as without any cache.
    with fed_tokens(model) as counts:
        [got_b] = generate(cached, gen_op(b, max_tokens=max_tokens))
    assert counts[0] == length
    assert_same(got_b, generate(plain, gen_op(b, max_tokens=max_tokens))[0])

    # A sequence bigger than the whole budget is not stored, and evicts nothing.
    kept = [entry.tokens.tobytes() for entry in cache.entries]
    generate(cached, gen_op([13, *range(3, 3 + 3 * length)], max_tokens=1))
    assert [entry.tokens.tobytes() for entry in cache.entries] == kept


def test_the_number_of_entries_is_bounded_too(models: dict[str, Any]) -> None:
    model = models["llama"]
    cache = PrefixCache(budget_bytes=MIB, max_entries=2)
    engine = Engine(
        model,
        vocab_size=model.config.vocab_size,
        context_length=256,
        eos_token_ids=[EOS],
        prefix_cache=cache,
    )
    for first in (20, 21, 22):
        generate(engine, gen_op([first, 5, 6, 7], max_tokens=2))
    assert [entry.tokens[0] for entry in cache.entries] == [21, 22]


def test_the_budget_is_a_setting_with_defaults_by_device(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert budget_bytes(device=cpu, size_mb=None, gpu_share=None) == CPU_BUDGET_MB * MIB
    assert budget_bytes(device=cpu, size_mb=3, gpu_share=0.9) == 3 * MIB

    base = {"format": 1, "name": "tiny", "checkpoint_dir": str(tmp_path)}
    assert read_settings(base).serve.prefix_cache_mb is None  # files from before the setting
    settings = read_settings(
        {**base, "serve": {"prefix_cache_mb": 0, "prefix_cache_gpu_share": 0.5}}
    )
    assert (settings.serve.prefix_cache_mb, settings.serve.prefix_cache_gpu_share) == (0, 0.5)
    for serve, key in [
        ({"prefix_cache_mb": -1}, "serve.prefix_cache_mb"),
        ({"prefix_cache_mb": 1.5}, "serve.prefix_cache_mb"),
        ({"prefix_cache_gpu_share": 1}, "serve.prefix_cache_gpu_share"),
        ({"prefix_cache_gpu_share": True}, "serve.prefix_cache_gpu_share"),
    ]:
        with pytest.raises(SettingsError, match=key):
            read_settings({**base, "serve": serve})


def test_common_prefix_length_counts_shared_leading_tokens() -> None:
    import numpy as np

    def length(a: list[int], b: list[int]) -> int:
        return common_prefix_length(np.array(a), np.array(b))

    assert length([1, 2, 3], [1, 2, 3, 4]) == 3
    assert length([1, 2, 3], [1, 5, 3]) == 1
    assert length([7], [1]) == 0
    assert length([], [1]) == 0


# --- models whose cache cannot be cropped ---------------------------------------------------------


def test_a_sliding_window_model_serves_without_reuse() -> None:
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
        max_position_embeddings=64,
    )
    model = MistralForCausalLM(config).eval()
    engine = Engine.start(model, context_length=64, eos_token_ids=[EOS])
    assert engine.prefix_cache is None and engine.reused_prompt_tokens == 0
    prompt = list(range(1, 21))
    [first] = generate(engine, gen_op(prompt, max_tokens=3))
    with fed_tokens(model) as counts:
        [again] = generate(engine, gen_op(prompt, max_tokens=3))
    assert counts[0] == len(prompt)
    assert_same(again, first)


# --- serving --------------------------------------------------------------------------------------


GREEDY = {"temperature": 0, "logit_bias": {str(EOS): -100}}


def _server(engine: Engine) -> LmtpMode:
    return LmtpMode(BatchScheduler(engine, max_batch_size=8), model_info={})


def _serve(server: LmtpMode, ops: list[Any]) -> list[dict[str, Any]]:
    chunks = server.serve(json.dumps(ops))
    return [json.loads(line.split(" ", 1)[1]) for chunk in chunks for line in chunk.splitlines()]


def test_each_prediction_logs_the_prompt_tokens_it_reused(
    models: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    cached, _ = engines(models["llama"])
    server = _server(cached)
    caplog.set_level(logging.INFO, logger="lmtp_runtime")
    prompt = list(range(1, 33))
    first = _serve(server, [["GENERATE", {"prompt": prompt, "max_tokens": 4, **GREEDY}]])
    grown = [*prompt, *(line["token"] for line in first)]
    _serve(server, [["GENERATE", {"prompt": grown, "max_tokens": 4, **GREEDY}]])
    summaries = [r.getMessage() for r in caplog.records if r.name == "lmtp_runtime.lmtp_mode"]
    assert "; 0 prompt tokens from the prefix cache;" in summaries[0]
    assert f"; {len(prompt) + 3} prompt tokens from the prefix cache;" in summaries[1]


def test_a_failed_batch_empties_the_cache_before_its_streams_are_retried(
    models: dict[str, Any],
) -> None:
    model = models["llama"]
    cached, plain = engines(model)
    server = _server(cached)
    _serve(server, [["GENERATE", {"prompt": [1, 2, 3, 4], "max_tokens": 2, **GREEDY}]])

    def fail_batches(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    ops = [
        ["GENERATE", {"prompt": [1, 2, 3, 9], "max_tokens": 3, **GREEDY, "stream_id": 1}],
        ["GENERATE", {"prompt": [1, 5, 6], "max_tokens": 3, **GREEDY, "stream_id": 2}],
    ]
    handle = model.register_forward_pre_hook(fail_batches, with_kwargs=True)
    try:
        lines = _serve(server, ops)
    finally:
        handle.remove()
    # The earlier sequence ([1, 2, 3, 4, ...]) is gone; only what the retries fed is cached.
    assert sorted(entry.tokens[:3].tolist() for entry in cached.prefix_cache.entries) == [
        [1, 2, 3],
        [1, 5, 6],
    ]
    assert not any("error" in line for line in lines)
    for stream_id, (_, args) in enumerate(ops, start=1):
        want = generate(plain, gen_op(args["prompt"], max_tokens=3))[0]
        assert [line["token"] for line in lines if line["stream_id"] == stream_id] == tokens_of(
            want
        )


def test_one_prediction_of_scores_sharing_a_prompt_answers_as_one_per_prediction(
    models: dict[str, Any],
) -> None:
    """Workload 2 of the benchmark, small: ``distribution`` sent as one prediction."""
    model = models["llama"]
    cached, plain = engines(model)
    server, alone = (_server(e) for e in (cached, plain))
    prompt = random_prompt(random.Random(2), 48, model.config.vocab_size)
    ops = [
        ["SCORE", {"prompt": prompt, "scored": [40 + row, 41, 42][: 1 + row % 3], "stream_id": row}]
        for row in range(8)
    ]
    with fed_tokens(model) as counts:
        lines = _serve(server, ops)
    assert sum(counts) == len(prompt) - 1 + len(ops) * 3  # the prompt went through once
    for op in ops:
        want = _serve(alone, [op])
        got = [line for line in lines if line["stream_id"] == op[1]["stream_id"]]
        assert [line["token"] for line in got] == [line["token"] for line in want]
        assert [line["logprob"] for line in got] == pytest.approx(
            [line["logprob"] for line in want], abs=TOLERANCE
        )


# --- the predictor --------------------------------------------------------------------------------


def test_the_predictor_reuses_prefixes_by_default(
    llama_dir: Path, load_predictor: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    predictor = load_predictor(llama_dir)
    caplog.set_level(logging.DEBUG, logger="lmtp_runtime")
    prompt = [17, *range(300, 330)]
    generated = []
    for _ in range(2):
        ops = [["GENERATE", {"prompt": [*prompt, *generated], "max_tokens": 4, **GREEDY}]]
        for chunk in predictor.stream(ops_batch_json=json.dumps(ops)):
            generated += [json.loads(line.split(" ", 1)[1])["token"] for line in chunk.splitlines()]
    summaries = [r.getMessage() for r in caplog.records if r.name == "lmtp_runtime.lmtp_mode"]
    assert f"; {len(prompt) + 3} prompt tokens from the prefix cache;" in summaries[-1]

