"""The scheduler: concurrent predictions share forward passes and answer as if each ran alone.

Every test runs a real tiny model. Which rows each forward pass computed is recorded with a
forward pre-hook on the model (what it is really fed), never inferred. To make work of several
predictions meet deterministically, a test holds the model thread inside a forward pass
(:func:`held`) while it submits the others, then lets it go.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from lmtp_runtime.engine import (
    Engine,
    GenerationStream,
    ScoreResult,
    StreamFailed,
    TokenEvent,
)
from lmtp_runtime.errors import SchedulerStopped
from lmtp_runtime.requests import GenerationRequest, SamplingParams, ScoreRequest
from lmtp_runtime.scheduler import BatchScheduler
from transformers import AutoModelForCausalLM

TOLERANCE = 1e-4
EOS = 2
NO_EOS = ((EOS, -100.0),)


@pytest.fixture(scope="module")
def model(llama_dir: Path) -> Any:
    """A model of this module's own (tests attach hooks to it)."""
    return AutoModelForCausalLM.from_pretrained(str(llama_dir)).eval()


def engine_for(model: Any, **cache: Any) -> Engine:
    return Engine.start(model, context_length=256, eos_token_ids=[EOS], **cache)


@pytest.fixture
def scheduler(model: Any) -> Iterator[BatchScheduler]:
    running = BatchScheduler(engine_for(model), max_batch_size=8)
    yield running
    running.close()


def gen_op(prompt: list[int], max_tokens: int, **args: Any) -> GenerationRequest:
    return GenerationRequest(
        prompt=tuple(prompt),
        max_tokens=max_tokens,
        logit_bias=NO_EOS,
        top_logprobs=2,
        **args,
    )


def prompts(count: int, *, seed: int = 0, length: int = 24) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1, *(rng.randrange(3, 400) for _ in range(length - 1 + row))] for row in range(count)]


Triples = list[tuple[int, float, dict[int, float]]]


def triples(answers: list[Any]) -> Triples:
    """``(token, logprob, top_logprobs)`` of every token event in ``answers``."""
    events = [event for answer in answers for event in answer]
    assert not [event for event in events if isinstance(event, StreamFailed)], events
    return [(e.token, e.logprob, e.top_logprobs) for e in events if isinstance(e, TokenEvent)]


def alone(model: Any, op: GenerationRequest) -> Triples:
    """What ``op`` gives run by itself on an engine without a prefix cache."""
    engine = engine_for(model, prefix_cache_mb=0)
    stream = GenerationStream(op)
    return triples(list(engine.generate([stream])))


def assert_same(got: Triples, want: Triples) -> None:
    assert [token for token, _, _ in got] == [token for token, _, _ in want]
    assert [lp for _, lp, _ in got] == pytest.approx([lp for _, lp, _ in want], abs=TOLERANCE)
    for (_, _, got_top), (_, _, want_top) in zip(got, want, strict=True):
        assert got_top.keys() == want_top.keys()
        assert list(got_top.values()) == pytest.approx(list(want_top.values()), abs=TOLERANCE)


@dataclass
class Passes:
    """``(rows, new tokens per row)`` of every forward pass the model ran."""

    shapes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def widest(self) -> int:
        return max(rows for rows, _ in self.shapes)


@contextmanager
def recorded(model: Any) -> Iterator[Passes]:
    passes = Passes()

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        passes.shapes.append(tuple(kwargs["input_ids"].shape))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield passes
    finally:
        handle.remove()


class Gates:
    """Holds the model thread at chosen forward passes, counted from 0 once registered."""

    def __init__(self, at: set[int]) -> None:
        self.entered = {index: threading.Event() for index in at}
        """``entered[i]`` is set once the model thread is held in pass ``i``."""
        self.release = {index: threading.Event() for index in at}
        """Set ``release[i]`` to let pass ``i`` go on."""
        self._passes = 0

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        index, self._passes = self._passes, self._passes + 1
        if index in self.entered:
            self.entered[index].set()
            self.release[index].wait(timeout=30)

    def wait(self, index: int) -> None:
        assert self.entered[index].wait(timeout=10), f"the model never reached pass {index}"


@contextmanager
def held(model: Any, *, at: set[int] | None = None) -> Iterator[Gates]:
    """Hold the model thread at these forward passes (default: the next one)."""
    gates = Gates(at if at is not None else {0})
    handle = model.register_forward_pre_hook(gates, with_kwargs=True)
    try:
        yield gates
    finally:
        for release in gates.release.values():
            release.set()
        handle.remove()


@contextmanager
def slowed(model: Any, seconds: float) -> Iterator[None]:
    """Make every forward pass take at least ``seconds`` longer, so steps are countable."""
    handle = model.register_forward_pre_hook(lambda *args: time.sleep(seconds))
    try:
        yield
    finally:
        handle.remove()


# --- concurrent predictions share forward passes -------------------------------------------------


def test_concurrent_predictions_decode_as_one_batch_and_as_each_alone(
    model: Any, scheduler: BatchScheduler
) -> None:
    ops = [
        gen_op(
            prompt,
            max_tokens=6,
            sampling=SamplingParams(temperature=0.8, seed=row) if row % 2 else SamplingParams(),
        )
        for row, prompt in enumerate(prompts(4))
    ]
    with recorded(model) as passes, held(model) as gate:
        first = scheduler.run(streams=[GenerationStream(ops[0])])
        gate.wait(0)  # the model thread is inside the first one's prefill
        rest = [scheduler.run(streams=[GenerationStream(op)]) for op in ops[1:]]
        gate.release[0].set()
        results = [triples(list(answers)) for answers in (first, *rest)]
    for op, got in zip(ops, results, strict=True):
        assert_same(got, alone(model, op))
    # The three that came while the first prefilled joined it: four rows decode together.
    assert passes.widest == 4
    assert sum(rows == 4 for rows, _ in passes.shapes) >= 4


def test_a_stream_that_arrives_mid_generation_joins_the_running_batch(
    model: Any, scheduler: BatchScheduler
) -> None:
    long_op, short_op = (gen_op(p, n) for p, n in zip(prompts(2, seed=1), (24, 3), strict=True))
    with recorded(model) as passes:
        with held(model, at={3}) as gate:  # the prefill and two steps, then hold the third
            long_answers = scheduler.run(streams=[GenerationStream(long_op)])
            gate.wait(3)
            short_answers = scheduler.run(streams=[GenerationStream(short_op)])
        short = triples(list(short_answers))
        long = triples(list(long_answers))
    assert_same(short, alone(model, short_op))
    assert_same(long, alone(model, long_op))
    shapes = passes.shapes
    first_joint = next(index for index, (rows, _) in enumerate(shapes) if rows == 2)
    # It joined at the next step, while the long stream had decoded only three tokens...
    assert first_joint == 4
    # ...and resumed from its cached KV: the joint pass fed it one token, not its whole
    # sequence again, beside the newcomer's whole prompt (the BOS both start with is too short
    # a prefix to reuse: MIN_REUSE), left-padded to the same width.
    assert shapes[first_joint] == (2, len(short_op.prompt))
    # The short one finished; the long one went on alone to its end.
    assert sum(rows == 2 for rows, _ in shapes) == short_op.max_tokens
    assert shapes[-1][0] == 1


def test_scores_that_arrive_during_a_generation_are_answered_before_it_ends(
    model: Any, scheduler: BatchScheduler
) -> None:
    [prompt] = prompts(1, seed=2)
    generation = scheduler.run(streams=[GenerationStream(gen_op(prompt, 40))])
    next(generation)
    score_op = ScoreRequest(prompt=tuple(prompt), scored=(5, 6, 7))
    [result] = list(scheduler.run(scores=[score_op]))
    remaining = list(generation)
    assert isinstance(result, ScoreResult) and result.error is None and len(result.logprobs) == 3
    assert len(remaining) > 30  # the generation was far from done when the score came back
    want = engine_for(model, prefix_cache_mb=0).score([score_op])[0]
    assert result.logprobs == pytest.approx(want.logprobs, abs=TOLERANCE)


def test_scores_of_concurrent_predictions_share_one_forward_pass(
    model: Any, scheduler: BatchScheduler
) -> None:
    [prompt] = prompts(1, seed=3, length=40)
    ops = [ScoreRequest(prompt=tuple(prompt), scored=(10 + row, 11)) for row in range(6)]
    with recorded(model) as passes, held(model) as gate:
        blocker = scheduler.run(streams=[GenerationStream(gen_op([1, 5, 6], 1))])
        gate.wait(0)
        pending = [scheduler.run(scores=[op]) for op in ops]
        gate.release[0].set()
        list(blocker)
        results = [list(answers)[0] for answers in pending]
    plain = engine_for(model, prefix_cache_mb=0)
    for op, result in zip(ops, results, strict=True):
        assert result.logprobs == pytest.approx(plain.score([op])[0].logprobs, abs=TOLERANCE)
    assert any(rows == 6 for rows, _ in passes.shapes)  # six predictions, one pass


def test_a_canceled_prediction_leaves_the_batch_at_the_next_step(
    model: Any, scheduler: BatchScheduler
) -> None:
    canceled_op, kept_op = (gen_op(p, 20) for p in prompts(2, seed=4))
    with recorded(model) as passes, held(model, at={0, 4}) as gate:
        canceled = scheduler.run(streams=[GenerationStream(canceled_op)])
        gate.wait(0)  # its prefill
        kept = scheduler.run(streams=[GenerationStream(kept_op)])
        gate.release[0].set()
        gate.wait(4)  # both decode as one batch (passes 1 to 4)
        for _ in range(3):
            next(canceled)
        canceled.close()
        gate.release[4].set()
        got = triples(list(kept))
    assert_same(got, alone(model, kept_op))
    rows = [rows for rows, _ in passes.shapes]
    # Once canceled, it was dropped at the next step: one row from pass 5 to the end.
    assert rows[:6] == [1, 2, 2, 2, 2, 1]
    assert set(rows[5:]) == {1}


def test_a_failed_batch_retries_each_prediction_alone(
    model: Any, scheduler: BatchScheduler
) -> None:
    ops = [gen_op(p, 4) for p in prompts(2, seed=5)]

    def fail_batches(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    with held(model) as gate:
        first = scheduler.run(streams=[GenerationStream(ops[0])])
        gate.wait(0)
        second = scheduler.run(streams=[GenerationStream(ops[1])])
        handle = model.register_forward_pre_hook(fail_batches, with_kwargs=True)
        gate.release[0].set()
        try:
            results = [triples(list(answers)) for answers in (first, second)]
        finally:
            handle.remove()
    for op, got in zip(ops, results, strict=True):
        assert_same(got, alone(model, op))
    assert [submission.failures for submission in (first, second)] == [1, 1]


def test_without_a_prefix_cache_newcomers_wait_for_the_running_batch(model: Any) -> None:
    scheduler = BatchScheduler(engine_for(model, prefix_cache_mb=0), max_batch_size=8)
    try:
        long_op, short_op = (gen_op(p, n) for p, n in zip(prompts(2, seed=6), (12, 2), strict=True))
        with recorded(model) as passes:
            long_answers = scheduler.run(streams=[GenerationStream(long_op)])
            next(long_answers)
            short = triples(list(scheduler.run(streams=[GenerationStream(short_op)])))
            list(long_answers)
        assert_same(short, alone(model, short_op))
        assert passes.widest == 1  # resuming would recompute whole sequences: no joint batch
    finally:
        scheduler.close()


def test_more_streams_than_rows_wait_their_turn(model: Any) -> None:
    scheduler = BatchScheduler(engine_for(model), max_batch_size=2)
    try:
        ops = [gen_op(p, 3) for p in prompts(5, seed=7)]
        with recorded(model) as passes:
            streams = [GenerationStream(op) for op in ops]
            answers = triples(list(scheduler.run(streams=streams)))
        assert len(answers) == 15
        assert passes.widest == 2
        for stream, op in zip(streams, ops, strict=True):
            assert stream.generated == [token for token, _, _ in alone(model, op)]
    finally:
        scheduler.close()


# --- it never hangs -------------------------------------------------------------------------------


def test_a_closed_scheduler_refuses_work_at_once(model: Any) -> None:
    scheduler = BatchScheduler(engine_for(model), max_batch_size=8)
    scheduler.close()
    with pytest.raises(SchedulerStopped, match="not running"):
        scheduler.run(streams=[GenerationStream(gen_op([1, 5], 2))])


def test_work_left_at_close_ends_with_an_error_rather_than_waiting(model: Any) -> None:
    scheduler = BatchScheduler(engine_for(model), max_batch_size=8)
    with held(model) as gate:
        running = scheduler.run(streams=[GenerationStream(gen_op([1, 5, 6], 50))])
        gate.wait(0)
        scheduler.close(timeout=0)  # while the model thread is busy with it
        gate.release[0].set()
        started = time.monotonic()
        answers = list(running)  # the work it had is finished; nothing hangs
    assert len(triples(answers)) == 50
    assert time.monotonic() - started < 30
    with pytest.raises(SchedulerStopped):
        scheduler.run(streams=[GenerationStream(gen_op([1, 5], 2))])


def test_an_empty_request_needs_no_model_thread(model: Any) -> None:
    scheduler = BatchScheduler(engine_for(model), max_batch_size=8)
    scheduler.close()
    done = GenerationStream(gen_op([1, 5], 2), finished=True)
    assert list(scheduler.run(streams=[done])) == []
