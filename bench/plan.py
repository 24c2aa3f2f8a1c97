"""What a benchmark run measures: the rows of the warm table, and the targets set for ours.

:mod:`workloads` knows how to run one request pattern once; this module picks the patterns, their
sizes and the servers each runs on, and states the goals the report checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import backends
import workloads
from report import Row, Target
from workloads import Run, Sizes, Vocabulary

ALL_BACKENDS = ("ours", "lmql", "floor-recompute", "floor-prefix")
TRACE_ROWS = ("1a", "1b")
PARALLEL_ROW = "1c"
DISTRIBUTION_ROWS = ("2-one", "2-sep")
SAMPLING_ROWS = ("3-one", "3-sep")
STEP_ROW = "step"
MODES: tuple[workloads.Mode, ...] = ("one-prediction", "separate-predictions")
"""Workloads 2 and 3 run twice: their ops as one prediction, and as one prediction each."""


@dataclass(frozen=True)
class Step:
    """One row of the warm table: what to run, on which servers."""

    row: Row
    run: Callable[[backends.Backend, int], Run]
    """``(server, seed) -> Run``."""
    backends: tuple[str, ...] = ALL_BACKENDS
    times_decode_steps: bool = False
    """Its runs also feed the per-decode-step row (see :func:`workloads.lmql_trace`)."""
    same_requests_as: str | None = None
    """The key of an earlier row whose requests (seed) this row sends again, differently."""


def steps(sizes: Sizes, *, vocab: Vocabulary) -> list[Step]:
    """Workloads 1 to 3, in the order they run within a repeat."""
    return [
        *_trace_steps(sizes, vocab=vocab),
        _parallel_step(sizes, vocab=vocab),
        *_distribution_steps(sizes, vocab=vocab),
        *_sampling_steps(sizes, vocab=vocab),
    ]


def rows(planned: Sequence[Step]) -> list[Row]:
    """The warm table's rows: one per step, then the per-decode-step row they feed."""
    (source,) = [step for step in planned if step.times_decode_steps]
    label = source.row.label.split(" ")[0]
    return [*(step.row for step in planned), Row(STEP_ROW, f"per decode step (median over the calls of {label})", unit="ms")]


def targets(sizes: Sizes) -> list[Target]:
    return [
        Target("1a", "1(a): ours within 15% of the ideal-prefix floor", "ours", "floor-prefix", 1.15, at_most=True),
        Target("1b", "1(b): ours within 15% of the ideal-prefix floor", "ours", "floor-prefix", 1.15, at_most=True),
        Target("2-one", "2, one prediction: ours ≥ 3× faster than LMQL", "lmql", "ours", 3.0, at_most=False),
        Target(
            "2-sep", f"2, {sizes.candidates} predictions: ours ≥ 3× faster than LMQL", "lmql", "ours", 3.0, at_most=False
        ),
        Target("3-one", "3, one prediction: ours ≥ 3× faster than LMQL", "lmql", "ours", 3.0, at_most=False),
        Target(
            "3-sep", f"3, {sizes.sampling_streams} predictions: ours ≥ 3× faster than LMQL", "lmql", "ours", 3.0, at_most=False
        ),
        Target(STEP_ROW, "per decode step: ours within 15% of the bare loop", "ours", "floor-prefix", 1.15, at_most=True),
        Target("cold", "cold start: ours within 10% of bare load + one forward", "ours", "floor", 1.10, at_most=True),
    ]


def _trace_steps(sizes: Sizes, *, vocab: Vocabulary) -> list[Step]:
    planned = []
    for key, (prompt, calls, max_tokens) in zip(TRACE_ROWS, (sizes.trace_a, sizes.trace_b)):
        label = f"{key[0]}({key[1]}) LMQL trace: {prompt}-token prompt, {calls} calls × {max_tokens} tokens, logit_bias"

        def run(server: backends.Backend, seed: int, p: int = prompt, c: int = calls, m: int = max_tokens) -> Run:
            return workloads.lmql_trace(server, vocab=vocab, seed=seed, prompt_tokens=p, calls=c, max_tokens=m)

        planned.append(Step(Row(key, label), run, times_decode_steps=key == "1a"))
    return planned


def _parallel_step(sizes: Sizes, *, vocab: Vocabulary) -> Step:
    traces, prompt, calls, max_tokens = sizes.parallel_traces
    label = (
        f"1(c) {traces} LMQL traces at once (parallel queries): each {prompt}-token prompt, "
        f"{calls} calls × {max_tokens} tokens, logit_bias"
    )

    def run(server: backends.Backend, seed: int) -> Run:
        return workloads.parallel_traces(
            server, vocab=vocab, seed=seed, traces=traces, prompt_tokens=prompt, calls=calls, max_tokens=max_tokens
        )

    # The floors are single loops: run one trace after another, they only repeat row 1(a).
    return Step(Row(PARALLEL_ROW, label), run, backends=("ours", "lmql"))


def _distribution_steps(sizes: Sizes, *, vocab: Vocabulary) -> list[Step]:
    planned = []
    for key, mode in zip(DISTRIBUTION_ROWS, MODES):
        label = (
            f"2 distribution: {sizes.candidates} SCOREs of 3–5 tokens, shared "
            f"{sizes.distribution_prompt}-token prompt, {_how(mode, sizes.candidates)}"
        )

        def run(server: backends.Backend, seed: int, mode: workloads.Mode = mode) -> Run:
            return workloads.distribution(
                server,
                vocab=vocab,
                seed=seed,
                prompt_tokens=sizes.distribution_prompt,
                candidates=sizes.candidates,
                mode=mode,
            )

        planned.append(Step(Row(key, label), run))
    return planned


def _sampling_steps(sizes: Sizes, *, vocab: Vocabulary) -> list[Step]:
    planned = []
    for key, mode in zip(SAMPLING_ROWS, MODES):
        label = (
            f"3 sampling: {sizes.sampling_streams} streams × {sizes.sampling_tokens} tokens, T=1.0, "
            f"{sizes.sampling_prompt}-token prompt, {_how(mode, sizes.sampling_streams)}"
        )

        def run(server: backends.Backend, seed: int, mode: workloads.Mode = mode) -> Run:
            return workloads.sampling(
                server,
                vocab=vocab,
                seed=seed,
                prompt_tokens=sizes.sampling_prompt,
                streams=sizes.sampling_streams,
                max_tokens=sizes.sampling_tokens,
                mode=mode,
                adapt=backends.lmql_supports if server.name == "lmql" else workloads.identity,
            )

        # floor-prefix decodes the streams of one prediction as one batch (see floors); the
        # recompute floor, a batch-1 loop, would only measure 4 × 128 sequential steps.
        floors = ("floor-prefix",) if mode == "one-prediction" else ()
        same = SAMPLING_ROWS[0] if key != SAMPLING_ROWS[0] else None
        planned.append(Step(Row(key, label), run, backends=("ours", "lmql", *floors), same_requests_as=same))
    return planned


def _how(mode: workloads.Mode, ops: int) -> str:
    return "one prediction" if mode == "one-prediction" else f"{ops} predictions"
