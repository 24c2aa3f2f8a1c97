"""Server-sent events, both ways: framing what we send, parsing what Cog sends.

One event on the wire is a few ``field: value`` lines and a blank line. A value cannot hold a line
break, so a multi-line payload becomes one ``data:`` line per line, and the reader joins them with
``\\n`` again (the WHATWG rule, which Replicate's stream follows). A payload that ends in a newline,
as every LMTP chunk does, ends in an empty ``data:`` line, so the round trip is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One server-sent event: its type, its payload (lines joined by ``\\n``) and its id."""

    name: str
    data: str
    id: str | None = None


def format_event(event: Event) -> bytes:
    """The bytes of one event, ``data`` split into one ``data:`` line per line of the payload."""
    lines = []
    if event.id is not None:
        lines.append(f"id: {event.id}")
    lines.append(f"event: {event.name}")
    lines += [f"data: {line}" for line in event.data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


KEEPALIVE = b": keep-alive\n\n"
"""A comment line: readers ignore it, and writing it notices a client that has gone away."""


def parse_events(lines: Iterable[bytes]) -> Iterator[Event]:
    """Events from the raw lines of a stream (``http.client`` response lines, with their EOLs).

    Comments and fields other than ``event``, ``data`` and ``id`` are skipped; an event without an
    ``event:`` field is a ``message``, as the standard says.
    """
    name, data, event_id = "", [], None
    for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data or name:
                yield Event(name or "message", "\n".join(data), event_id)
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
