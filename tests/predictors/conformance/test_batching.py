"""LMTP conformance: batching (docs/lmtp.md §6) is an optimisation only.

Several ops in one prediction may run as one padded batch, but every stream must get what its op
gets alone: same tokens, same logprobs within float tolerance, its own ``max_tokens``,
``top_logprobs``, ``logit_bias`` and penalties. Checked for Llama and GPT-2 (whose position ids
are the classic left-padding trap), for GENERATE and SCORE, and with more ops than
``serve.max_batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

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
    score_op,
)

TEXTS = [
    "Hi",
    "Hello world. The quick brown fox",
    "Question: Is the sky blue? Answer:",
    "Once upon a time there was a little model that wanted to speak. Every day it read a few words",
    "Colors: red, green",
]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def small_batches(
    request: pytest.FixtureRequest, harness: MakeHarness
) -> Harness:
    """The same checkpoints served with ``serve.max_batch_size = 2``."""
    return harness(arch=request.param, max_batch_size=2)


@dataclass
class Expected:
    """One op of a batch and what the reference says it must produce."""

    op: list[Any]
    steps: list[Step] | None = None  # GENERATE
    scores: list[float] | None = None  # SCORE
    top_logprobs: int = 1


def _prompts(h: Harness) -> list[list[int]]:
    prompts = [h.reference.encode(text) for text in TEXTS]
    prompts.append([h.reference.tokenizer.bos_token_id])  # a one-token prompt: the most padding
    assert len({len(p) for p in prompts}) == len(prompts), "prompt lengths should all differ"
    return prompts


def _generate_mix(h: Harness) -> list[Expected]:
    """GENERATE ops that differ in every per-stream setting, with their expected steps."""
    ref = h.reference
    vocab = ref.vocab_size
    prompts = _prompts(h)
    eos = ref.eos_ids[0]
    masked = {str(step.token): -100 for step in ref.greedy(prompts[3], max_tokens=5)}
    allowed = {str(t): 100 for t in range(50, 330, 23)}
    forced = 77
    specs: list[tuple[list[int], int, int, dict[str, float] | None, Penalties]] = [
        (prompts[0], 1, 1, None, Penalties()),
        (prompts[1], 6, 3, {}, Penalties()),
        (prompts[2], 4, 2, {str(forced): 100}, Penalties()),
        (prompts[3], 5, vocab, masked, Penalties()),
        (prompts[5], 3, 1, {str(eos): 100}, Penalties()),
        (prompts[1], 6, 4, allowed, Penalties()),
        (prompts[4], 7, 2, None, Penalties(frequency=0.5)),
        (prompts[2], 5, 1, None, Penalties(presence=0.8)),
    ]
    mix = []
    for index, (prompt, max_tokens, top_logprobs, bias, penalties) in enumerate(specs):
        args: dict[str, Any] = {"max_tokens": max_tokens, "top_logprobs": top_logprobs}
        if bias is not None:
            args["logit_bias"] = bias
        if penalties.presence:
            args["presence_penalty"] = penalties.presence
        if penalties.frequency:
            args["frequency_penalty"] = penalties.frequency
        steps = ref.greedy(prompt, max_tokens=max_tokens, bias=bias, penalties=penalties)
        mix.append(
            Expected(
                generate_op(prompt, stream_id=index, **args), steps=steps, top_logprobs=top_logprobs
            )
        )
    # Guards that keep the comparison meaningful on a random model.
    assert [(s.token, s.finish_reason) for s in mix[4].steps] == [(eos, "stop")], (
        "the EOS stream stops at once"
    )
    assert {s.token for s in mix[2].steps} == {forced}
    assert not {str(s.token) for s in mix[3].steps} & set(masked)
    assert len({s.token for mix_op in mix for s in mix_op.steps}) >= 10, (
        "the streams should produce varied tokens"
    )
    return mix


def _score_mix(h: Harness, *, first_id: int = 0) -> list[Expected]:
    """SCORE ops with different prompt and scored lengths (1 to 6 tokens, then none)."""
    ref = h.reference
    prompts = _prompts(h)
    source = prompts[3]
    mix = []
    for index, prompt in enumerate(prompts):
        scored = source[1 + index : 2 + 2 * index]
        mix.append(
            Expected(
                score_op(prompt, scored, stream_id=first_id + index),
                scores=ref.score(prompt, scored),
            )
        )
    mix.append(Expected(score_op(prompts[2], [], stream_id=first_id + len(mix)), scores=[]))
    return mix


def _check_against_reference(lines_by_stream: dict[Any, list[Any]], mix: list[Expected]) -> None:
    for expected in mix:
        stream_id = expected.op[1]["stream_id"]
        lines = lines_by_stream.get(stream_id, [])
        if expected.steps is not None:
            assert_steps(
                lines,
                expected.steps,
                top_logprobs=expected.top_logprobs,
                what=f"stream {stream_id}",
            )
        else:
            scored = expected.op[1]["scored"]
            assert [line.token for line in lines] == scored, f"stream {stream_id}"
            assert [line.finish_reason for line in lines] == [None] * (len(scored) - 1) + ["stop"][
                : len(scored)
            ]
            for index, (line, logprob) in enumerate(zip(lines, expected.scores, strict=True)):
                assert line.logprob == pytest.approx(logprob, abs=LOGPROB_TOLERANCE), (
                    f"stream {stream_id} #{index}"
                )


def test_generate_batch_equals_each_op_alone(model: Harness) -> None:
    mix = _generate_mix(model)
    batched = by_stream(model.run([expected.op for expected in mix]))
    _check_against_reference(batched, mix)
    for expected in mix:
        stream_id = expected.op[1]["stream_id"]
        alone = model.run_one(*expected.op)
        assert_same_stream(batched[stream_id], alone, what=f"stream {stream_id} batched vs alone")


def test_score_batch_equals_each_op_alone(model: Harness) -> None:
    mix = _score_mix(model)
    batched = by_stream(model.run([expected.op for expected in mix]))
    _check_against_reference(batched, mix)
    for expected in mix:
        stream_id = expected.op[1]["stream_id"]
        alone = model.run_one(*expected.op)
        assert_same_stream(
            batched.get(stream_id, []), alone, what=f"stream {stream_id} batched vs alone"
        )


def test_seeded_sampling_in_a_batch_equals_the_op_alone(model: Harness) -> None:
    prompts = _prompts(model)
    ops = [
        generate_op(prompts[1], stream_id=0, max_tokens=6),
        generate_op(
            prompts[2], stream_id=1, max_tokens=6, temperature=1.5, seed=42, top_logprobs=3
        ),
        generate_op(prompts[3], stream_id=2, max_tokens=4, temperature=0.7, seed=7, top_k=20),
        generate_op(
            prompts[2], stream_id=3, max_tokens=6, temperature=1.5, seed=43, top_logprobs=3
        ),
    ]
    batched = by_stream(model.run(ops))
    for op in ops:
        stream_id = op[1]["stream_id"]
        assert_same_stream(
            batched[stream_id], model.run_one(*op), what=f"stream {stream_id} batched vs alone"
        )
    assert [line.token for line in batched[1]] != [line.token for line in batched[3]], (
        "seeds 42 and 43 agree"
    )


def test_identical_ops_in_one_batch_get_identical_streams(model: Harness) -> None:
    """LMQL's ``distribution`` clause and concurrent callers send the same op many times over."""
    prompt = _prompts(model)[2]
    lines = by_stream(
        model.run(
            [generate_op(prompt, stream_id=i, max_tokens=5, top_logprobs=2) for i in range(4)]
        )
    )
    for stream_id in range(1, 4):
        assert_same_stream(lines[stream_id], lines[0], what=f"copy {stream_id}")
    assert_steps(lines[0], model.reference.greedy(prompt, max_tokens=5), top_logprobs=2)


def test_prompts_sharing_a_prefix_batch_correctly(model: Harness) -> None:
    """Constrained decoding re-sends a growing prompt: many ops whose prompts share a prefix."""
    long_prompt = _prompts(model)[3]
    mix = []
    for index, cut in enumerate(range(4, len(long_prompt), 4)):
        prompt = long_prompt[:cut]
        steps = model.reference.greedy(prompt, max_tokens=3)
        mix.append(
            Expected(
                generate_op(prompt, stream_id=index, max_tokens=3, top_logprobs=2),
                steps=steps,
                top_logprobs=2,
            )
        )
    _check_against_reference(by_stream(model.run([expected.op for expected in mix])), mix)


def test_pad_and_eos_ids_inside_prompts_are_attended_to(model: Harness) -> None:
    """Padding must come from the attention mask, never from comparing ids with the pad id."""
    tokenizer = model.reference.tokenizer
    special = [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    prompts = _prompts(model)
    vocab = model.reference.vocab_size
    mix = []
    for index, prompt in enumerate(
        [prompts[1][:3] + special + prompts[1][3:], [*special, *prompts[2]], prompts[4]]
    ):
        steps = model.reference.greedy(prompt, max_tokens=3)
        op = generate_op(prompt, stream_id=index, max_tokens=3, top_logprobs=vocab)
        mix.append(Expected(op, steps=steps, top_logprobs=vocab))
    scored = [tokenizer.pad_token_id, *prompts[3][1:4]]
    mix.append(
        Expected(
            score_op([*prompts[1], *special], scored, stream_id=len(mix)),
            scores=model.reference.score([*prompts[1], *special], scored),
        )
    )
    _check_against_reference(by_stream(model.run([expected.op for expected in mix])), mix)


def test_predictions_sharing_prefixes_with_earlier_ones(model: Harness) -> None:
    """LMQL re-sends its whole, growing prompt on every call (docs/lmtp.md §7).

    Whatever a runtime reuses from earlier predictions must not show: each round below is one
    prediction whose prompts overlap earlier ones in a different way, and every stream must
    equal the reference's full distribution.
    """
    ref = model.reference
    vocab = ref.vocab_size
    prompts = _prompts(model)
    base = prompts[3]
    first = [step.token for step in ref.greedy(base, max_tokens=4)]
    second = [step.token for step in ref.greedy([*base, *first], max_tokens=4)]
    detour = [*base[:10], *prompts[2][1:5]]
    rounds = {
        "a new prompt": [base],
        "extended by its output": [[*base, *first]],
        "the same prompt again": [[*base, *first]],
        "ending inside earlier output": [[*base, *first[:2]]],
        "diverging mid-way": [detour],
        "a strict prefix": [base[:6]],
        "all of these at once": [[*base, *first, *second], base[:12], detour, prompts[1]],
    }
    for name, round_prompts in rounds.items():
        ops = [
            generate_op(prompt, stream_id=index, max_tokens=4, top_logprobs=vocab)
            for index, prompt in enumerate(round_prompts)
        ]
        streams = by_stream(model.run(ops))
        for index, prompt in enumerate(round_prompts):
            expected = ref.greedy(prompt, max_tokens=4)
            assert_steps(
                streams[index], expected, top_logprobs=vocab, what=f"{name}, stream {index}"
            )
    mix = [
        Expected(
            score_op(base[:8], base[8:16], stream_id=0), scores=ref.score(base[:8], base[8:16])
        ),
        Expected(
            score_op([*base, *first], second, stream_id=1),
            scores=ref.score([*base, *first], second),
        ),
    ]
    _check_against_reference(by_stream(model.run([expected.op for expected in mix])), mix)


def test_more_ops_than_max_batch_size(small_batches: Harness) -> None:
    generate = _generate_mix(small_batches)
    score = _score_mix(small_batches, first_id=len(generate))
    info_id = len(generate) + len(score)
    ops = [expected.op for expected in generate + score]
    ops.insert(3, ["MODEL_INFO", {"stream_id": info_id}])
    streams = by_stream(small_batches.run(ops))
    _check_against_reference(streams, generate + score)
    assert [line.kind for line in streams[info_id]] == ["MSG"]
    assert isinstance(streams[info_id][0].data.get("model_info"), dict)
