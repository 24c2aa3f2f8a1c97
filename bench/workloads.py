"""The workloads: LMTP request patterns LMQL produces, run once against one backend.

Each function builds its ops from a seeded random generator, so every backend gets the same
requests within a repeat, and each repeat gets fresh prompts: no backend can serve a repeat from
what it cached during the previous one. Prompts are random token ids (the model is random too);
only their lengths and shared prefixes matter for speed.

- :func:`lmql_trace`: LMQL's constrained decoding. Every call re-sends the whole prompt, grown by
  the previous call's tokens, with the same ``logit_bias`` mask (+100 on a few hundred allowed
  ids, which is how LMQL encodes a constraint allowing few tokens).
- :func:`distribution`: ``distribution VAR in [...]``: one SCORE per candidate, same prompt.
- :func:`sampling`: ``sample(n=k)``: k GENERATE streams at temperature 1.0.

:func:`lmql_trace` also times decode steps: a stream's first token carries the prefill and every
later one is one decode step, so (last arrival - first arrival) / (tokens - 1) is the time per
step with the prefill, and its noise on a busy machine, kept out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from backends import Backend
from streams import Collected, collect

Mode = Literal["one-prediction", "separate-predictions"]
ArgsFilter = Callable[[dict[str, Any]], dict[str, Any]]
"""Adapts an op's arguments to a backend that cannot take some of them (see backends.lmql_supports)."""

T = TypeVar("T")
R = TypeVar("R")

ALLOWED_IDS = 300
"""Size of the constraint mask: LMQL sends +100 on the allowed ids when they are the fewer."""


@dataclass(frozen=True)
class Sizes:
    """Every size a workload takes; ``quick()`` shrinks the long ones for smoke runs."""

    trace_a: tuple[int, int, int] = (512, 30, 16)
    """Workload 1(a): prompt tokens, calls, ``max_tokens`` per call."""
    trace_b: tuple[int, int, int] = (1536, 30, 4)
    """Workload 1(b): a long few-shot prompt, short answers."""
    parallel_traces: tuple[int, int, int, int] = (4, 512, 10, 16)
    """Workload 1(c): traces running at once (parallel queries), each: prompt, calls, tokens."""
    distribution_prompt: int = 512
    candidates: int = 8
    sampling_prompt: int = 64
    sampling_streams: int = 4
    sampling_tokens: int = 128
    cold_start_runs: int = 5

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            trace_a=(512, 3, 16),
            trace_b=(1536, 3, 4),
            parallel_traces=(4, 512, 2, 16),
            sampling_tokens=16,
            cold_start_runs=1,
        )


@dataclass(frozen=True)
class Vocabulary:
    """The id ranges a workload may draw from: everything but the special tokens."""

    size: int
    bos_id: int
    eos_id: int

    def random_ids(self, rng: random.Random, count: int) -> list[int]:
        specials = {self.bos_id, self.eos_id, 0}
        ids: list[int] = []
        while len(ids) < count:
            candidate = rng.randrange(self.size)
            if candidate not in specials:
                ids.append(candidate)
        return ids

    def prompt(self, rng: random.Random, length: int) -> list[int]:
        """``length`` ids starting with BOS, as LMQL sends them."""
        return [self.bos_id, *self.random_ids(rng, length - 1)]

    def constraint_mask(self, rng: random.Random) -> dict[str, int]:
        """+100 on a few hundred ids, never EOS, so every call runs to its ``max_tokens``."""
        allowed = rng.sample([i for i in range(3, self.size) if i != self.eos_id], ALLOWED_IDS)
        return {str(token): 100 for token in sorted(allowed)}


@dataclass
class Run:
    """One workload run on one backend."""

    seconds: float
    tokens: list[list[int]] = field(default_factory=list)
    """Per stream (or per call, for traces), the tokens the harness used."""
    logprobs: list[list[float]] = field(default_factory=list)
    surplus_lines: int = 0
    """Token lines beyond ``max_tokens`` (LMQL's duplicated last token)."""
    decode_step_s: list[float] = field(default_factory=list)
    """Per GENERATE call of a trace, seconds per decode step (see the module docstring)."""


def _request(backend: Backend, ops: list[list[Any]]) -> Collected:
    started = time.perf_counter()
    return collect(backend.predict(ops), started_s=started)


def _send(backend: Backend, ops: list[list[Any]], *, mode: Mode) -> tuple[float, list[Collected]]:
    """Send ``ops`` as one prediction, or as one prediction per op.

    Separate predictions are all sent at once, as LMQL's client sends them, and served as Cog
    serves them: up to ``backend.concurrency`` at a time, each in a thread of its own (ours runs
    8 at once; LMQL's template has a sync ``predict``, which Cog runs one at a time).
    """
    started = time.perf_counter()
    if mode == "one-prediction":
        results = [_request(backend, ops)]
    else:
        results = _as_cog_serves(backend, lambda op: _request(backend, [op]), ops)
    return time.perf_counter() - started, results


def _as_cog_serves(backend: Backend, work: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``work(item)`` for every item, sent at once and served as Cog serves ``backend``'s
    predictions: up to ``backend.concurrency`` at a time, each in a thread of its own."""
    if backend.concurrency == 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(len(items), backend.concurrency)) as pool:
        return list(pool.map(work, items))


def identity(args: dict[str, Any]) -> dict[str, Any]:
    return args


# --- workload 1 ---------------------------------------------------------------------------------


def lmql_trace(
    backend: Backend,
    *,
    vocab: Vocabulary,
    seed: int,
    prompt_tokens: int,
    calls: int,
    max_tokens: int,
) -> Run:
    """``calls`` greedy GENERATEs, each prompt being the previous prompt plus its answer."""
    rng = random.Random(seed)
    prompt = vocab.prompt(rng, prompt_tokens)
    mask = vocab.constraint_mask(rng)
    run = Run(seconds=0.0)
    started = time.perf_counter()
    for call in range(calls):
        args = {
            "model": "bench",
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "logit_bias": mask,
            "top_logprobs": 1,
            "stream_id": call,
        }
        record = _request(backend, [["GENERATE", args]]).stream(call)
        answer = record.tokens[:max_tokens]
        run.tokens.append(answer)
        run.decode_step_s.append(_seconds_per_step(record.arrival_s[:max_tokens]))
        run.logprobs.append(record.logprobs[:max_tokens])
        run.surplus_lines += record.surplus(max_tokens)
        prompt = [*prompt, *answer]
    run.seconds = time.perf_counter() - started
    return run


def parallel_traces(
    backend: Backend,
    *,
    vocab: Vocabulary,
    seed: int,
    traces: int,
    prompt_tokens: int,
    calls: int,
    max_tokens: int,
) -> Run:
    """``traces`` independent :func:`lmql_trace` s at once, as parallel LMQL queries run.

    Each trace's calls follow one another; the traces run side by side, in threads, up to
    ``backend.concurrency`` (one after another for a server Cog runs one prediction at a time).
    """

    def one(index: int) -> Run:
        return lmql_trace(
            backend,
            vocab=vocab,
            seed=seed * 100 + index,
            prompt_tokens=prompt_tokens,
            calls=calls,
            max_tokens=max_tokens,
        )

    started = time.perf_counter()
    runs = _as_cog_serves(backend, one, range(traces))
    run = Run(seconds=time.perf_counter() - started)
    for each in runs:
        run.tokens += each.tokens
        run.logprobs += each.logprobs
        run.surplus_lines += each.surplus_lines
    return run


def _seconds_per_step(arrivals: list[float]) -> float:
    if len(arrivals) < 2:
        raise ValueError("a trace call needs max_tokens >= 2 to time decode steps")
    return (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)


# --- workload 2 ---------------------------------------------------------------------------------


def distribution(
    backend: Backend,
    *,
    vocab: Vocabulary,
    seed: int,
    prompt_tokens: int,
    candidates: int,
    mode: Mode,
) -> Run:
    """One SCORE per candidate continuation (3 to 5 tokens) of one shared prompt."""
    rng = random.Random(seed)
    prompt = vocab.prompt(rng, prompt_tokens)
    ops = [
        ["SCORE", {"model": "bench", "prompt": prompt, "scored": vocab.random_ids(rng, rng.randint(3, 5)), "stream_id": i}]
        for i in range(candidates)
    ]
    seconds, results = _send(backend, ops, mode=mode)
    records = _merge_streams(results)
    run = Run(seconds=seconds)
    for i, (_, args) in enumerate(ops):
        record = records[i]
        run.tokens.append(record.tokens)
        run.logprobs.append(record.logprobs)
        run.surplus_lines += record.surplus(len(args["scored"]))
    return run


# --- workload 3 ---------------------------------------------------------------------------------


def sampling(
    backend: Backend,
    *,
    vocab: Vocabulary,
    seed: int,
    prompt_tokens: int,
    streams: int,
    max_tokens: int,
    mode: Mode,
    adapt: ArgsFilter = identity,
) -> Run:
    """``streams`` seeded GENERATEs at temperature 1.0 from one prompt, ``max_tokens`` each."""
    rng = random.Random(seed)
    prompt = vocab.prompt(rng, prompt_tokens)
    ops = [
        [
            "GENERATE",
            adapt(
                {
                    "model": "bench",
                    "prompt": prompt,
                    "max_tokens": max_tokens,
                    "temperature": 1.0,
                    "top_logprobs": 1,
                    "seed": seed * 1000 + i,
                    "stream_id": i,
                }
            ),
        ]
        for i in range(streams)
    ]
    seconds, results = _send(backend, ops, mode=mode)
    records = _merge_streams(results)
    run = Run(seconds=seconds)
    for i in range(streams):
        run.tokens.append(records[i].tokens[:max_tokens])
        run.surplus_lines += records[i].surplus(max_tokens)
    return run


# --- warm-up -----------------------------------------------------------------------------------


def warm_up(backend: Backend, *, vocab: Vocabulary) -> None:
    """One small GENERATE and SCORE, so one-time costs (first kernels, allocator) are not timed."""
    rng = random.Random(-1)
    prompt = vocab.prompt(rng, 32)
    generate = {"model": "bench", "prompt": prompt, "max_tokens": 4, "temperature": 0.0, "stream_id": 0}
    score = {"model": "bench", "prompt": prompt, "scored": vocab.random_ids(rng, 3), "stream_id": 1}
    _request(backend, [["GENERATE", generate]])
    _request(backend, [["SCORE", score]])


def _merge_streams(results: Sequence[Collected]) -> dict[Any, Any]:
    merged: dict[Any, Any] = {}
    for result in results:
        merged.update(result.streams)
    return merged
