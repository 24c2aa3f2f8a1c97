"""Read what a backend streams back: LMTP lines, timestamped as they arrive.

Every backend, the floors included, answers a list of LMTP ops with an iterator of chunks, each
one or more ``TOKEN {...}`` / ``MSG {...}`` lines (LMTP.md §1). The harness reads them the way
LMQL's Replicate client does: per ``stream_id``, until a line with a non-null ``finish_reason``.
Lines a stream sends after that are counted, not used. LMQL's own scheduler sends its last token
twice on transformers >= 4.39 (LMTP.md §2), the second time with the finish reason, so the
workloads keep only the first ``max_tokens`` tokens of a stream and report any surplus.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class BackendStreamError(RuntimeError):
    """A backend answered an op with an error line: the benchmark cannot use its numbers."""


@dataclass
class StreamRecord:
    """Everything one stream sent, in order."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    arrival_s: list[float] = field(default_factory=list)
    """``time.perf_counter()`` when each token's chunk arrived."""
    finish_reason: str | None = None
    extra_lines: int = 0
    """Lines that came after the stream had finished (a protocol violation)."""

    def surplus(self, max_tokens: int) -> int:
        """How many token lines this stream sent beyond the ``max_tokens`` it was asked for."""
        return max(0, len(self.tokens) - max_tokens) + self.extra_lines


@dataclass
class Collected:
    """One prediction's output, by ``stream_id``."""

    started_s: float
    streams: dict[Any, StreamRecord] = field(default_factory=dict)
    finished_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.finished_s - self.started_s

    def stream(self, stream_id: Any) -> StreamRecord:
        return self.streams.setdefault(stream_id, StreamRecord())


def collect(chunks: Iterable[str], *, started_s: float | None = None) -> Collected:
    """Drain a backend's chunks into a :class:`Collected`; raise on any error line.

    Args:
        started_s: ``time.perf_counter()`` when the request was made; defaults to now, which is
            right when ``chunks`` is a generator that does nothing until first iterated.
    """
    result = Collected(started_s=time.perf_counter() if started_s is None else started_s)
    for chunk in chunks:
        now = time.perf_counter()
        for line in chunk.splitlines():
            _record_line(result, line, now)
    result.finished_s = time.perf_counter()
    return result


def _record_line(result: Collected, line: str, now: float) -> None:
    kind, _, body = line.partition(" ")
    payload = json.loads(body)
    if payload.get("error") is not None:
        raise BackendStreamError(f"stream {payload.get('stream_id')!r} failed: {payload['error']}")
    if kind != "TOKEN":
        return
    record = result.stream(payload.get("stream_id"))
    if record.finish_reason is not None:
        record.extra_lines += 1
        return
    record.tokens.append(int(payload["token"]))
    record.logprobs.append(float(payload["logprob"]))
    record.arrival_s.append(now)
    record.finish_reason = payload.get("finish_reason")


def token_line(*, stream_id: Any, token: int, logprob: float, finish_reason: str | None) -> str:
    """One ``TOKEN`` line as LMTP.md §1 specifies it; the floors answer with these."""
    payload = {
        "stream_id": stream_id,
        "token": token,
        "logprob": logprob,
        "finish_reason": finish_reason,
        "top_logprobs": {str(token): logprob},
    }
    return "TOKEN " + json.dumps(payload, separators=(",", ":")) + "\n"
