"""Correctness across servers: a fast answer only counts if it is the same answer.

- Workload 1 is greedy, so every server must produce the same tokens. Ours and the floors must
  agree exactly (the run fails otherwise); LMQL's agreement is reported.
- Workload 2's SCORE logprobs are compared with ``floor-recompute`` (the plainest computation);
  float32 on different batch shapes differs in the last digits, so the largest gap is reported.
- Workload 3's seeded samples are compared with ``floor-prefix`` for information only: LMTP
  promises reproducible seeds, not the floor's order of random draws. Ours must draw the same
  samples whether the streams come as one prediction or as concurrent ones (batched with each
  other by the scheduler): the run fails otherwise.
- Token lines beyond ``max_tokens`` are counted (LMQL's duplicated last token).
"""

from __future__ import annotations

from collections.abc import Sequence

from plan import DISTRIBUTION_ROWS, PARALLEL_ROW, SAMPLING_ROWS, TRACE_ROWS
from workloads import Run

Runs = dict[tuple[str, int, str], Run]
"""``(row, repeat, server) -> Run``."""

MUST_MATCH = ("ours", "floor-recompute", "floor-prefix")


def check_outputs(runs: Runs, *, repeats: int, servers: Sequence[str]) -> tuple[bool, list[tuple[str, str]]]:
    """``(ours and the floors agree on workload 1, (check, outcome) lines for the report)``."""
    lines: list[tuple[str, str]] = []
    agree = True
    for row in TRACE_ROWS:
        row_agrees, row_lines = _greedy_tokens(runs, row=row, repeats=repeats, servers=servers)
        agree = agree and row_agrees
        lines += row_lines
    lines += _parallel_tokens(runs, repeats=repeats)
    for row in DISTRIBUTION_ROWS:
        lines += _score_gaps(runs, row=row, repeats=repeats, servers=servers)
    lines += _seeded_samples(runs, repeats=repeats, servers=servers)
    batching_agrees, batching_lines = _samples_whatever_the_batching(runs, repeats=repeats)
    lines += batching_lines
    lines += _surplus(runs, servers=servers)
    return agree and batching_agrees, lines


def _greedy_tokens(
    runs: Runs, *, row: str, repeats: int, servers: Sequence[str]
) -> tuple[bool, list[tuple[str, str]]]:
    floors = [name for name in ("floor-prefix", "floor-recompute") if name in servers]
    if not floors:
        return True, [(f"{row}: greedy tokens", "not checked: no floor in this run")]
    reference = floors[0]
    agree, lines = True, []
    for name in [n for n in servers if n != reference]:
        same = [
            runs[(row, r, name)].tokens == runs[(row, r, reference)].tokens
            for r in range(repeats)
            if (row, r, name) in runs and (row, r, reference) in runs
        ]
        if not same:
            continue
        if all(same):
            outcome = f"identical in {len(same)}/{len(same)} runs"
        else:
            outcome = f"**differ** in {same.count(False)}/{len(same)} runs"
            agree = agree and name not in MUST_MATCH
        lines.append((f"{row}: greedy tokens of {name} vs {reference}", outcome))
    return agree, lines


def _parallel_tokens(runs: Runs, *, repeats: int) -> list[tuple[str, str]]:
    """1(c) has no floor: ours batched with the other traces vs LMQL one trace at a time."""
    same = [
        runs[(PARALLEL_ROW, r, "ours")].tokens == runs[(PARALLEL_ROW, r, "lmql")].tokens
        for r in range(repeats)
        if (PARALLEL_ROW, r, "ours") in runs and (PARALLEL_ROW, r, "lmql") in runs
    ]
    if not same:
        return []
    outcome = f"identical in {sum(same)}/{len(same)} runs" if all(same) else f"**differ** in {same.count(False)}/{len(same)} runs"
    return [(f"{PARALLEL_ROW}: greedy tokens of ours (traces batched together) vs lmql", outcome)]


def _score_gaps(runs: Runs, *, row: str, repeats: int, servers: Sequence[str]) -> list[tuple[str, str]]:
    reference = "floor-recompute"
    lines = []
    for name in [n for n in servers if n != reference]:
        gaps = [
            _max_abs_difference(runs[(row, r, name)].logprobs, runs[(row, r, reference)].logprobs)
            for r in range(repeats)
            if (row, r, name) in runs and (row, r, reference) in runs
        ]
        if gaps:
            lines.append((f"{row}: SCORE logprobs of {name} vs {reference}", f"max |difference| {max(gaps):.2e}"))
    return lines


def _seeded_samples(runs: Runs, *, repeats: int, servers: Sequence[str]) -> list[tuple[str, str]]:
    row = SAMPLING_ROWS[0]
    same = [
        runs[(row, r, "ours")].tokens == runs[(row, r, "floor-prefix")].tokens
        for r in range(repeats)
        if (row, r, "ours") in runs and (row, r, "floor-prefix") in runs
    ]
    if not same:
        return []
    outcome = f"identical in {sum(same)}/{len(same)} runs (information only)"
    return [(f"{row}: seeded samples of ours vs floor-prefix", outcome)]


def _samples_whatever_the_batching(runs: Runs, *, repeats: int) -> tuple[bool, list[tuple[str, str]]]:
    """Ours, same seeds and prompt: one prediction of 4 streams vs 4 concurrent predictions."""
    one, separate = SAMPLING_ROWS
    same = [
        runs[(one, r, "ours")].tokens == runs[(separate, r, "ours")].tokens
        for r in range(repeats)
        if (one, r, "ours") in runs and (separate, r, "ours") in runs
    ]
    if not same:
        return True, []
    outcome = f"identical in {sum(same)}/{len(same)} runs" if all(same) else f"**differ** in {same.count(False)}/{len(same)} runs"
    return all(same), [(f"{separate}: seeded samples of ours, concurrent predictions vs one", outcome)]


def _surplus(runs: Runs, *, servers: Sequence[str]) -> list[tuple[str, str]]:
    lines = []
    for name in servers:
        count = sum(run.surplus_lines for (_, _, server), run in runs.items() if server == name)
        if count:
            outcome = f"{count} (the harness ignores them; LMQL's client would read them as tokens)"
            lines.append((f"{name}: token lines beyond max_tokens", outcome))
    return lines


def _max_abs_difference(a: list[list[float]], b: list[list[float]]) -> float:
    if [len(x) for x in a] != [len(y) for y in b]:
        return float("inf")
    return max((abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b)), default=0.0)
