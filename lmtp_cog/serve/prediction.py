"""One prediction as Replicate shows it, with the events of its stream.

A prediction is written by the task that copies it from the Cog server and read by any number of
HTTP handlers at once (``GET`` it, wait for it, follow its stream), all on ./serve's one event
loop. Every change fires a :class:`~.pulse.Pulse`, which wakes the readers; once the prediction
is terminal it never changes again, so late or repeated reports from Cog are ignored rather than
reordered.

The stream keeps every event, so a client that connects late, or reconnects with
``Last-Event-ID``, gets the whole stream from where it left off. Events are Replicate's:
``output`` (one output chunk), ``logs``, ``error`` (``{"detail": ...}``) and, always last,
``done`` (``{}``, or ``{"reason": "canceled" | "error"}``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from .pulse import Pulse
from .sse import Event

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


def iso_time(timestamp: float) -> str:
    """A UTC timestamp as Replicate writes it: ISO 8601 with a ``Z``."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


class Prediction:
    """The state and the event stream of one prediction."""

    def __init__(self, *, id: str, model: str, version: str, input: dict[str, Any]) -> None:
        self.id = id
        self.model = model
        self.version = version
        self.input = input
        self.status = "starting"
        self.output: list[Any] | None = None
        self.logs = ""
        self.error: str | None = None
        self.metrics: dict[str, Any] = {}
        self.created_at = time.time()
        self.started_at: float | None = None
        self.completed_at: float | None = None
        self._events: list[Event] = []
        self._changed = Pulse()

    # --- written by the task that copies the prediction from Cog ---------------------------------

    def mark_processing(self) -> None:
        if self.status == "starting":
            self.status = "processing"
            self.started_at = time.time()
            self.output = []
            self._changed.fire()

    def add_output(self, chunk: Any) -> None:
        if self.done:
            return
        self.output = [*(self.output or []), chunk]
        data = chunk if isinstance(chunk, str) else json.dumps(chunk)
        self._emit("output", data)

    def add_logs(self, text: str) -> None:
        if self.done or not text:
            return
        self.logs += text
        self._emit("logs", text.removesuffix("\n"))

    def finish(
        self, status: str, *, error: str | None = None, metrics: dict[str, Any] | None = None
    ) -> None:
        """End the prediction as ``succeeded``, ``failed`` or ``canceled``, and end its stream."""
        if status not in TERMINAL:
            raise ValueError(f"not a terminal status: {status!r}")
        if self.done:
            return
        self.status = status
        self.error = error
        self.completed_at = time.time()
        self.metrics = {**(metrics or {}), "total_time": self.completed_at - self.created_at}
        if status == "failed":
            self._emit("error", json.dumps({"detail": error or "the prediction failed"}))
            self._emit("done", json.dumps({"reason": "error"}))
        elif status == "canceled":
            self._emit("done", json.dumps({"reason": "canceled"}))
        else:
            self._emit("done", json.dumps({}))

    def _emit(self, name: str, data: str) -> None:
        self._events.append(Event(name, data, str(len(self._events))))
        self._changed.fire()

    # --- read by the HTTP handlers ---------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    async def wait(self, timeout: float, *, stop: asyncio.Event | None = None) -> bool:
        """Wait until the prediction is terminal, ``timeout`` seconds passed or ``stop`` is set
        (the server is going away); return ``done``."""
        deadline = time.monotonic() + timeout
        while not self.done and not (stop is not None and stop.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # Wake at least once a second to notice `stop`.
            await self._changed.wait(timeout=min(left, 1.0))
        return self.done

    async def follow(
        self, *, after: int = -1, stop: asyncio.Event, keepalive: float = 15.0
    ) -> AsyncIterator[Event | None]:
        """The stream's events after index ``after``, as they happen, ending with ``done``.

        Yields ``None`` when nothing happened for ``keepalive`` seconds (the caller writes a
        comment, which also tells it whether the client is still there). Ends early when ``stop``
        is set, so that a server shutting down does not wait for its streams; the events already
        recorded are still sent then (a prediction failed because Cog died ends with its error).
        """
        position = after + 1
        quiet_since = time.monotonic()
        while True:
            stopping = stop.is_set()
            if not stopping and len(self._events) <= position:
                # Wake at least once a second to notice `stop`.
                await self._changed.wait(timeout=1.0)
            new = self._events[position:]
            for event in new:
                yield event
                if event.name == "done":
                    return
            if stopping:
                return
            position += len(new)
            if new:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= keepalive:
                quiet_since = time.monotonic()
                yield None

    def to_json(self, base_url: str) -> dict[str, Any]:
        """The prediction object of Replicate's HTTP API; URLs are built on ``base_url``."""
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "input": self.input,
            "logs": self.logs,
            "output": list(self.output) if self.output is not None else None,
            "data_removed": False,
            "error": self.error,
            "status": self.status,
            "created_at": iso_time(self.created_at),
            "started_at": _optional_time(self.started_at),
            "completed_at": _optional_time(self.completed_at),
            "urls": {
                "get": f"{base_url}/v1/predictions/{self.id}",
                "cancel": f"{base_url}/v1/predictions/{self.id}/cancel",
                "stream": f"{base_url}/v1/predictions/{self.id}/stream",
            },
            "metrics": dict(self.metrics),
        }


def _optional_time(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso_time(timestamp)
