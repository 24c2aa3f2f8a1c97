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
        same = _same_tokens(runs, repeats=repeats, left=(row, name), right=(row, reference))
        if not same:
            continue
        if not all(same):
            agree = agree and name not in MUST_MATCH
        lines.append((f"{row}: greedy tokens of {name} vs {reference}", _agreement(same)))
    return agree, lines


def _parallel_tokens(runs: Runs, *, repeats: int) -> list[tuple[str, str]]:
    """1(c) has no floor: ours batched with the other traces vs LMQL one trace at a time."""
    same = _same_tokens(runs, repeats=repeats, left=(PARALLEL_ROW, "ours"), right=(PARALLEL_ROW, "lmql"))
    if not same:
        return []
    return [(f"{PARALLEL_ROW}: greedy tokens of ours (traces batched together) vs lmql", _agreement(same))]


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
    same = _same_tokens(runs, repeats=repeats, left=(row, "ours"), right=(row, "floor-prefix"))
    if not same:
        return []
    outcome = f"identical in {sum(same)}/{len(same)} runs (information only)"
    return [(f"{row}: seeded samples of ours vs floor-prefix", outcome)]


def _samples_whatever_the_batching(runs: Runs, *, repeats: int) -> tuple[bool, list[tuple[str, str]]]:
    """Ours, same seeds and prompt: one prediction of 4 streams vs 4 concurrent predictions."""
    one, separate = SAMPLING_ROWS
    same = _same_tokens(runs, repeats=repeats, left=(one, "ours"), right=(separate, "ours"))
    if not same:
        return True, []
    return all(same), [(f"{separate}: seeded samples of ours, concurrent predictions vs one", _agreement(same))]


def _surplus(runs: Runs, *, servers: Sequence[str]) -> list[tuple[str, str]]:
    lines = []
    for name in servers:
        count = sum(run.surplus_lines for (_, _, server), run in runs.items() if server == name)
        if count:
            outcome = f"{count} (the harness ignores them; LMQL's client would read them as tokens)"
            lines.append((f"{name}: token lines beyond max_tokens", outcome))
    return lines


def _same_tokens(runs: Runs, *, repeats: int, left: tuple[str, str], right: tuple[str, str]) -> list[bool]:
    """Per repeat that has both runs, whether ``left`` and ``right`` (each ``(row, server)``)
    produced the same tokens."""
    return [
        runs[(left[0], r, left[1])].tokens == runs[(right[0], r, right[1])].tokens
        for r in range(repeats)
        if (left[0], r, left[1]) in runs and (right[0], r, right[1]) in runs
    ]


def _agreement(same: list[bool]) -> str:
    if all(same):
        return f"identical in {len(same)}/{len(same)} runs"
    return f"**differ** in {same.count(False)}/{len(same)} runs"


def _max_abs_difference(a: list[list[float]], b: list[list[float]]) -> float:
    if [len(x) for x in a] != [len(y) for y in b]:
        return float("inf")
    return max((abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b)), default=0.0)
