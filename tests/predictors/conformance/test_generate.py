"""LMTP conformance: GENERATE (docs/lmtp.md §1, §2), black box against a transformers reference.

Every prediction goes through ``LmtpPredictor.predict`` as a JSON string and comes back as lines
that are parsed strictly (whole lines per chunk, no NaN/Infinity). Expected tokens and logprobs
come from :class:`lmtp_reference.Reference`, which recomputes each step from the whole prefix.
The tiny random models are nearly uniform, so the prompts below are checked to give varied greedy
tokens, and the strongest comparisons ask for ``top_logprobs = vocab`` to compare whole
distributions, not just the argmax.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.support.lmtp_reference import (
    LOGPROB_TOLERANCE,
    Harness,
    MakeHarness,
    Penalties,
    Step,
    assert_same_stream,
    assert_steps,
    by_stream,
    generate_op,
    same_json,
)

PROMPT_TEXT = "Hello world. The quick brown fox"
OTHER_TEXT = "Question: Is the sky blue? Answer:"
LEAKY_STEPS = 6


@pytest.fixture(scope="module")
def prompt(llama: Harness) -> list[int]:
    """A prompt whose greedy continuation is varied enough for the comparisons to mean something."""
    ids = llama.reference.encode(PROMPT_TEXT)
    greedy = [step.token for step in llama.reference.greedy(ids, max_tokens=8)]
    assert len(set(greedy)) >= 4, f"test prompt is too repetitive to be informative: {greedy}"
    assert not set(greedy) & set(llama.reference.eos_ids)
    return ids


@pytest.fixture(scope="module")
def eos_list(
    harness: MakeHarness, llama: Harness, prompt: list[int]
) -> Harness:
    """The same weights with ``eos_token_id = [</s>, X]``, X the third greedy token of ``prompt``.

    Greedy decoding then stops by itself on its third token, in the middle of a stream.
    """
    greedy = [step.token for step in llama.reference.greedy(prompt, max_tokens=3)]
    assert greedy[2] not in greedy[:2]
    eos = [llama.reference.tokenizer.eos_token_id, greedy[2]]
    result = harness(arch="llama", eos_token_id=eos)
    assert result.reference.eos_ids == eos
    return result


@pytest.fixture(scope="module")
def leaky(harness: MakeHarness, llama: Harness, prompt: list[int]) -> Harness:
    """The same weights, with a generation_config.json setting every decoding knob there is."""
    greedy = [step.token for step in llama.reference.greedy(prompt, max_tokens=3)]
    generation_config = {
        "do_sample": True,
        "temperature": 0.3,
        "top_k": 3,
        "top_p": 0.5,
        "typical_p": 0.5,
        "repetition_penalty": 1.5,
        "no_repeat_ngram_size": 1,
        "min_new_tokens": 4,
        "max_new_tokens": 2,
        "max_length": len(prompt) + 2,
        "suppress_tokens": [greedy[0]],
        "begin_suppress_tokens": [greedy[0]],
        "bad_words_ids": [[greedy[1]]],
        "forced_bos_token_id": greedy[2],
        "forced_eos_token_id": greedy[2],
        "renormalize_logits": True,
    }
    result = harness(arch="llama", generation_config=generation_config)
    probe = torch.tensor([prompt])
    assert torch.equal(result.reference.model(probe).logits, llama.reference.model(probe).logits)
    return result


# --- greedy decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", ["0", "0.0"])
def test_greedy_tokens_and_logprobs_equal_the_reference(
    llama: Harness, prompt: list[int], temperature: str
) -> None:
    # Written by hand so that `0` and `0.0` really reach the predictor as different JSON.
    raw = (
        f'[["GENERATE", {{"model": "tiny", "prompt": {json.dumps(prompt)}, "max_tokens": 6,'
        f' "temperature": {temperature}, "stream_id": 1}}]]'
    )
    lines = llama.run_raw(raw)
    assert_steps(lines, llama.reference.greedy(prompt, max_tokens=6))
    assert all(line.kind == "TOKEN" and same_json(line.stream_id, 1) for line in lines)


def test_max_tokens_defaults_to_32(llama: Harness, prompt: list[int]) -> None:
    op = generate_op(prompt)
    assert "max_tokens" not in op[1]
    lines = llama.run([op])
    assert len(lines) == 32
    assert_steps(lines, llama.reference.greedy(prompt, max_tokens=32))


def test_exactly_max_tokens_lines_and_only_the_last_finishes(
    llama: Harness, prompt: list[int]
) -> None:
    for max_tokens in (1, 2, 5):
        lines = llama.run([generate_op(prompt, max_tokens=max_tokens)])
        assert [line.finish_reason for line in lines] == [None] * (max_tokens - 1) + ["length"]


@pytest.mark.parametrize("top_logprobs", [None, 1, 3, 5])
def test_top_logprobs_hold_the_chosen_token_and_the_top_n(
    llama: Harness, prompt: list[int], top_logprobs: int | None
) -> None:
    args = {} if top_logprobs is None else {"top_logprobs": top_logprobs}
    lines = llama.run([generate_op(prompt, max_tokens=5, **args)])
    assert_steps(
        lines, llama.reference.greedy(prompt, max_tokens=5), top_logprobs=top_logprobs or 1
    )


def test_top_logprobs_can_cover_the_whole_vocabulary(llama: Harness, prompt: list[int]) -> None:
    vocab = llama.reference.vocab_size
    lines = llama.run([generate_op(prompt, max_tokens=3, top_logprobs=vocab)])
    assert all(len(line.top_logprobs) == vocab for line in lines)
    assert_steps(lines, llama.reference.greedy(prompt, max_tokens=3), top_logprobs=vocab)


def test_top_logprobs_size_is_per_stream(llama: Harness, prompt: list[int]) -> None:
    other = llama.reference.encode(OTHER_TEXT)
    lines = llama.run(
        [
            generate_op(prompt, stream_id=1, max_tokens=4, top_logprobs=1),
            generate_op(other, stream_id=2, max_tokens=4, top_logprobs=6),
        ]
    )
    streams = by_stream(lines)
    assert_steps(
        streams[1], llama.reference.greedy(prompt, max_tokens=4), top_logprobs=1, what="stream 1"
    )
    assert_steps(
        streams[2], llama.reference.greedy(other, max_tokens=4), top_logprobs=6, what="stream 2"
    )
    assert all(len(line.top_logprobs) == 1 for line in streams[1])


# --- logit_bias -----------------------------------------------------------------------------------


def _non_greedy_token(llama: Harness, prompt: list[int], steps: int = 4) -> int:
    greedy = {step.token for step in llama.reference.greedy(prompt, max_tokens=steps)}
    return next(
        t
        for t in range(10, llama.reference.vocab_size)
        if t not in greedy | set(llama.reference.eos_ids)
    )


@pytest.mark.parametrize(
    "form", ["string key, int value", "int key, float value", "string key, float value"]
)
def test_positive_bias_forces_its_token_at_every_step(
    llama: Harness, prompt: list[int], form: str
) -> None:
    forced = _non_greedy_token(llama, prompt)
    key: int | str = forced if form.startswith("int") else str(forced)
    value: float = 100 if form.endswith("int value") else 100.0
    lines = llama.run([generate_op(prompt, max_tokens=4, logit_bias={key: value})])
    assert [line.token for line in lines] == [forced] * 4
    assert all(line.logprob == pytest.approx(0.0, abs=1e-3) for line in lines)
    assert_steps(lines, llama.reference.greedy(prompt, max_tokens=4, bias={forced: 100}))


def test_negative_bias_masks_tokens_at_every_step(llama: Harness, prompt: list[int]) -> None:
    unbiased = {step.token for step in llama.reference.greedy(prompt, max_tokens=6)}
    bias = {str(token): -100 for token in unbiased}
    expected = llama.reference.greedy(prompt, max_tokens=6, bias=bias)
    assert not {step.token for step in expected} & unbiased
    lines = llama.run([generate_op(prompt, max_tokens=6, logit_bias=bias, top_logprobs=3)])
    assert_steps(lines, expected, top_logprobs=3)


def test_allowed_set_picks_within_the_set_with_renormalised_logprobs(
    llama: Harness, prompt: list[int]
) -> None:
    unbiased = [step.token for step in llama.reference.greedy(prompt, max_tokens=5)]
    allowed = [t for t in range(40, 400, 37) if t not in unbiased][:8]
    lines = llama.run(
        [generate_op(prompt, max_tokens=5, logit_bias={str(t): 100 for t in allowed})]
    )
    assert len(lines) == 5
    tokens: list[int] = []
    for line in lines:
        logits = llama.reference.logits([*prompt, *tokens])
        within = logits[allowed]
        assert line.token == allowed[int(within.argmax())]
        renormalised = float(logits[line.token] - torch.logsumexp(within, dim=0))
        assert line.logprob == pytest.approx(renormalised, abs=LOGPROB_TOLERANCE)
        tokens.append(line.token)
    assert len(set(tokens)) > 1, "the allowed set should not collapse to one token for this prompt"


@pytest.mark.parametrize("bias", [{}, None], ids=["empty", "absent"])
def test_empty_or_absent_bias_leaves_the_distribution_alone(
    llama: Harness, prompt: list[int], bias: dict | None
) -> None:
    args = {} if bias is None else {"logit_bias": bias}
    vocab = llama.reference.vocab_size
    lines = llama.run([generate_op(prompt, max_tokens=3, top_logprobs=vocab, **args)])
    assert_steps(lines, llama.reference.greedy(prompt, max_tokens=3), top_logprobs=vocab)


@pytest.mark.parametrize("special", ["pad_token_id", "bos_token_id"])
def test_forcing_a_special_non_eos_token_is_an_ordinary_token(
    llama: Harness, prompt: list[int], special: str
) -> None:
    """A generated pad or BOS id must neither end the stream nor be masked out of the context."""
    token = getattr(llama.reference.tokenizer, special)
    assert token not in llama.reference.eos_ids
    bias = {str(token): 100}
    lines = llama.run([generate_op(prompt, max_tokens=3, logit_bias=bias, top_logprobs=3)])
    assert_steps(lines, llama.reference.greedy(prompt, max_tokens=3, bias=bias), top_logprobs=3)


# --- end of sequence and context window -----------------------------------------------------------


def test_forced_eos_gives_one_stop_line_and_nothing_after(
    llama: Harness, prompt: list[int]
) -> None:
    eos = llama.reference.eos_ids[0]
    other = llama.reference.encode(OTHER_TEXT)
    lines = llama.run(
        [
            generate_op(prompt, stream_id=1, max_tokens=5, logit_bias={str(eos): 100}),
            generate_op(other, stream_id=2, max_tokens=5),
        ]
    )
    streams = by_stream(lines)
    assert [(line.token, line.finish_reason) for line in streams[1]] == [(eos, "stop")]
    assert streams[1][0].logprob == pytest.approx(0.0, abs=1e-3)
    assert_steps(streams[2], llama.reference.greedy(other, max_tokens=5), what="stream 2")


@pytest.mark.parametrize("which", [0, 1])
def test_every_id_of_an_eos_list_stops(eos_list: Harness, prompt: list[int], which: int) -> None:
    eos = eos_list.reference.eos_ids[which]
    lines = eos_list.run([generate_op(prompt, max_tokens=5, logit_bias={str(eos): 100})])
    assert [(line.token, line.finish_reason) for line in lines] == [(eos, "stop")]


def test_stream_stops_at_a_natural_eos_without_padding(
    eos_list: Harness, prompt: list[int]
) -> None:
    other = eos_list.reference.encode(OTHER_TEXT)
    expected = eos_list.reference.greedy(prompt, max_tokens=8)
    assert [step.finish_reason for step in expected] == [None, None, "stop"]
    lines = eos_list.run(
        [
            generate_op(prompt, stream_id=1, max_tokens=8),
            generate_op(other, stream_id=2, max_tokens=8),
        ]
    )
    streams = by_stream(lines)
    assert_steps(streams[1], expected, what="stopping stream")
    assert len(streams[2]) == 8


def test_full_context_window_ends_the_stream_with_length(llama: Harness, prompt: list[int]) -> None:
    """The stream ends once prompt + generated tokens fill the window (docs/lmtp.md, Decisions)."""
    window = llama.reference.context_length
    long_prompt = (prompt * window)[: window - 3]
    expected = llama.reference.greedy(long_prompt, max_tokens=10)
    assert len(expected) == 3
    lines = llama.run([generate_op(long_prompt, max_tokens=10)])
    assert_steps(lines, expected)


def test_prompt_filling_the_window_gets_one_token(llama: Harness, prompt: list[int]) -> None:
    """A window-sized input still predicts one token (docs/lmtp.md, Decisions)."""
    window = llama.reference.context_length
    full = (prompt * window)[:window]
    lines = llama.run([generate_op(full, max_tokens=10, top_logprobs=3)])
    step = llama.reference.dist(full)
    token = int(step.argmax())
    assert_steps(lines, [Step(token, float(step[token]), step, "length")], top_logprobs=3)


def test_max_tokens_zero_gives_no_lines(llama: Harness, prompt: list[int]) -> None:
    """Like an empty ``scored``: nothing to say (docs/lmtp.md, Decisions)."""
    other = llama.reference.encode(OTHER_TEXT)
    lines = llama.run(
        [
            generate_op(prompt, stream_id=1, max_tokens=0),
            generate_op(other, stream_id=2, max_tokens=2),
        ]
    )
    assert [line.stream_id for line in lines] == [2, 2]


# --- sampling -------------------------------------------------------------------------------------


def _sample(h: Harness, prompt: list[int], **args: object) -> list[int]:
    return [line.token for line in h.run([generate_op(prompt, max_tokens=8, **args)])]


def test_seeded_sampling_is_reproducible_and_seeds_differ(
    llama: Harness, prompt: list[int]
) -> None:
    first = _sample(llama, prompt, temperature=2.0, seed=1234)
    assert _sample(llama, prompt, temperature=2.0, seed=1234) == first
    assert _sample(llama, prompt, temperature=2.0, seed=4321) != first
    greedy = [step.token for step in llama.reference.greedy(prompt, max_tokens=8)]
    assert first != greedy, "temperature 2 over 8 tokens should not reproduce greedy decoding"


def test_sampled_logprobs_are_the_untempered_distribution(
    llama: Harness, prompt: list[int]
) -> None:
    lines = llama.run([generate_op(prompt, max_tokens=6, temperature=2.0, seed=7, top_logprobs=4)])
    steps = llama.reference.replay(prompt, [line.token for line in lines], max_tokens=6)
    assert_steps(lines, steps, top_logprobs=4)


def test_sampling_with_an_allowed_set_stays_within_it(llama: Harness, prompt: list[int]) -> None:
    allowed = list(range(100, 112))
    bias = {str(t): 100 for t in allowed}
    lines = llama.run([generate_op(prompt, max_tokens=6, temperature=1.5, seed=3, logit_bias=bias)])
    assert {line.token for line in lines} <= set(allowed)
    assert_steps(
        lines,
        llama.reference.replay(prompt, [line.token for line in lines], max_tokens=6, bias=bias),
    )


@pytest.mark.parametrize("control", [{"top_k": 1}, {"top_p": 1e-6}], ids=["top_k=1", "tiny top_p"])
def test_sampling_restricted_to_the_best_token_is_greedy(
    llama: Harness, prompt: list[int], control: dict[str, float]
) -> None:
    lines = llama.run(
        [generate_op(prompt, max_tokens=6, temperature=1.5, seed=11, top_logprobs=3, **control)]
    )
    assert_steps(lines, llama.reference.greedy(prompt, max_tokens=6), top_logprobs=3)


def test_sampling_filters_do_not_leak_into_reported_logprobs(
    llama: Harness, prompt: list[int]
) -> None:
    """top_k filters the *sampling* distribution only: reported values stay finite, unfiltered."""
    vocab = llama.reference.vocab_size
    lines = llama.run(
        [generate_op(prompt, max_tokens=4, temperature=1.0, top_k=2, seed=5, top_logprobs=vocab)]
    )
    steps = llama.reference.replay(prompt, [line.token for line in lines], max_tokens=4)
    for step in steps:
        assert step.token in torch.topk(step.dist, 2).indices.tolist()
    assert_steps(lines, steps, top_logprobs=vocab)


def test_repetition_penalty_of_one_changes_nothing(llama: Harness, prompt: list[int]) -> None:
    lines = llama.run([generate_op(prompt, max_tokens=5, repetition_penalty=1.0, top_logprobs=3)])
    assert_steps(lines, llama.reference.greedy(prompt, max_tokens=5), top_logprobs=3)


def test_length_penalty_is_accepted_and_ignored(llama: Harness, prompt: list[int]) -> None:
    """LMQL forwards it from ``lmql.model(...)``; it only matters to beam search (Decisions)."""
    lines = llama.run([generate_op(prompt, max_tokens=4, length_penalty=0.5, top_logprobs=3)])
    assert_steps(lines, llama.reference.greedy(prompt, max_tokens=4), top_logprobs=3)


def test_repetition_penalty_follows_transformers_over_prompt_and_output(gpt2: Harness) -> None:
    """Documented in docs/lmtp.md, Decisions: HF semantics, prompt included, reported after it."""
    reference = gpt2.reference
    gpt2_prompt = reference.encode(PROMPT_TEXT)
    penalties = Penalties(repetition=2.0)
    unpenalised = reference.greedy(gpt2_prompt, max_tokens=6)
    expected = reference.greedy(gpt2_prompt, max_tokens=6, penalties=penalties)
    assert expected[0].token != unpenalised[0].token, "the prompt's own tokens should be penalised"
    vocab = reference.vocab_size
    op = generate_op(gpt2_prompt, max_tokens=6, top_logprobs=vocab, repetition_penalty=2.0)
    assert_steps(gpt2.run([op]), expected, top_logprobs=vocab)


@pytest.mark.parametrize(
    "penalties",
    [Penalties(presence=1.0), Penalties(frequency=0.3), Penalties(presence=0.2, frequency=0.4)],
    ids=["presence", "frequency", "both"],
)
@pytest.mark.parametrize(
    "decoding",
    [{"temperature": 0}, {"temperature": 1.0, "top_k": 1, "seed": 0}],
    ids=["greedy", "top_k=1"],
)
def test_presence_and_frequency_penalties_follow_openai(
    gpt2: Harness, penalties: Penalties, decoding: dict[str, float]
) -> None:
    """GPT-2's tiny model repeats its last prompt token, which makes the penalties bite hard."""
    reference = gpt2.reference
    gpt2_prompt = reference.encode(PROMPT_TEXT)
    unpenalised = reference.greedy(gpt2_prompt, max_tokens=8)
    expected = reference.greedy(gpt2_prompt, max_tokens=8, penalties=penalties)
    assert unpenalised[0].token in gpt2_prompt, (
        "the prompt should repeat what the model continues with"
    )
    assert [s.token for s in expected] != [s.token for s in unpenalised], (
        "penalties should change the output"
    )
    vocab = reference.vocab_size
    op = generate_op(
        gpt2_prompt,
        max_tokens=8,
        top_logprobs=vocab,
        presence_penalty=penalties.presence,
        frequency_penalty=penalties.frequency,
        **decoding,
    )
    lines = gpt2.run([op])
    # Only generated tokens count: the first step is the plain distribution even though the
    # prompt already holds the token the model likes.
    assert_steps(lines[:1], unpenalised[:1], top_logprobs=vocab, what="first step")
    assert_steps(lines, expected, top_logprobs=vocab)


# --- the checkpoint's generation_config -----------------------------------------------------------


def test_generation_config_does_not_change_greedy_decoding(
    leaky: Harness, llama: Harness, prompt: list[int]
) -> None:
    vocab = llama.reference.vocab_size
    lines = leaky.run([generate_op(prompt, max_tokens=LEAKY_STEPS, top_logprobs=vocab)])
    assert_steps(lines, llama.reference.greedy(prompt, max_tokens=LEAKY_STEPS), top_logprobs=vocab)


def test_generation_config_does_not_change_sampling(
    leaky: Harness, llama: Harness, prompt: list[int]
) -> None:
    op = generate_op(prompt, max_tokens=LEAKY_STEPS, temperature=1.0, seed=99, top_logprobs=3)
    assert_same_stream(
        leaky.run([op]), llama.run([op]), what="sampled with vs without generation_config"
    )


def test_generation_config_does_not_delay_eos(leaky: Harness, prompt: list[int]) -> None:
    eos = leaky.reference.eos_ids[0]
    lines = leaky.run([generate_op(prompt, max_tokens=5, logit_bias={str(eos): 100})])
    assert [(line.token, line.finish_reason) for line in lines] == [(eos, "stop")]


# --- stream ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream_id", [0, 7, -3, 2.5, "abc", "7", "", True, None], ids=repr)
def test_stream_id_is_echoed_exactly(llama: Harness, prompt: list[int], stream_id: object) -> None:
    lines = llama.run_one(*generate_op(prompt, stream_id=stream_id, max_tokens=2))
    assert len(lines) == 2
    assert all(same_json(line.stream_id, stream_id) for line in lines)
    assert all("stream_id" in line.data for line in lines)


def test_absent_stream_id_is_echoed_as_null(llama: Harness, prompt: list[int]) -> None:
    op = generate_op(prompt, max_tokens=2)
    del op[1]["stream_id"]
    lines = llama.run([op])
    assert len(lines) == 2
    assert all("stream_id" in line.data and line.stream_id is None for line in lines)


def test_duplicate_stream_ids_across_ops_stay_separate(llama: Harness, prompt: list[int]) -> None:
    eos = llama.reference.eos_ids[0]
    forced = _non_greedy_token(llama, prompt)
    lines = llama.run(
        [
            generate_op(prompt, stream_id=1, max_tokens=5, logit_bias={str(eos): 100}),
            generate_op(prompt, stream_id=1, max_tokens=4, logit_bias={str(forced): 100}),
            generate_op(prompt, stream_id=1, max_tokens=3),
        ]
    )
    assert all(same_json(line.stream_id, 1) for line in lines)
    stopped = [line for line in lines if line.token == eos]
    forced_lines = [line for line in lines if line.token == forced]
    free = [line for line in lines if line.token not in (eos, forced)]
    assert [line.finish_reason for line in stopped] == ["stop"]
    assert [line.finish_reason for line in forced_lines] == [None, None, None, "length"]
    # In line order, so each op's finish line is also its last line.
    assert_steps(free, llama.reference.greedy(prompt, max_tokens=3), what="unbiased op")


def test_lines_are_strict_json_even_with_extreme_bias(llama: Harness, prompt: list[int]) -> None:
    """A huge negative bias must stay a finite number in every reported value."""
    vocab = llama.reference.vocab_size
    bias = {str(t): -1e30 for t in range(3, vocab, 2)}
    lines = llama.run([generate_op(prompt, max_tokens=2, logit_bias=bias, top_logprobs=vocab)])
    assert len(lines) == 2
    for line in lines:
        assert line.token % 2 == 0 or line.token < 3
        assert all(math.isfinite(value) for value in line.top_logprobs.values())
