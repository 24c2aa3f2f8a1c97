"""Server-sent events, both ways: framing what we send, parsing what Cog sends.

One event on the wire is a few ``field: value`` lines and a blank line. A value cannot hold a line
break, so a multi-line payload becomes one ``data:`` line per line, and the reader joins them with
``\\n`` again (the WHATWG rule, which Replicate's stream follows). A payload that ends in a newline,
as every LMTP chunk does, ends in an empty ``data:`` line, so the round trip is exact.

Which characters end a line is up to the reader. WHATWG says ``\\r\\n``, ``\\r`` and ``\\n``, so a
raw CR cannot travel inside a ``data:`` line at all. The official ``replicate`` client (1.0, through
httpx's ``iter_lines``, which is ``str.splitlines``) also ends lines at VT, FF, the separators
U+001C to U+001E, NEL, U+2028 and U+2029: sent inside a line, each would cut off the rest of it,
and what follows would be read as a field of its own. So the payload is split at every one of
these, and such a client reads each as ``\\n``: a stream carries every other character exactly,
and nothing is lost or misread. (No framing does better for that client: its ``output`` event is
the joined ``data:`` lines, with nothing to undo an escape.) The prediction itself, ``GET
/v1/predictions/ID``, keeps the exact text. LMTP chunks never meet this: they are ASCII JSON lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

LINE_BREAK = re.compile(r"\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
"""What ends a line for some reader of the stream: WHATWG's three and ``str.splitlines``' rest."""


@dataclass(frozen=True)
class Event:
    """One server-sent event: its type, its payload (lines joined by ``\\n``) and its id."""

    name: str
    data: str
    id: str | None = None


def format_event(event: Event) -> bytes:
    """The bytes of one event, ``data`` split into one ``data:`` line per line of the payload.

    Lines end at every :data:`LINE_BREAK` (see the module docstring).
    """
    lines = []
    if event.id is not None:
        lines.append(f"id: {event.id}")
    lines.append(f"event: {event.name}")
    lines += [f"data: {line}" for line in LINE_BREAK.split(event.data)]
    return ("\n".join(lines) + "\n\n").encode()


KEEPALIVE = b": keep-alive\n\n"
"""A comment line: readers ignore it, and writing it notices a client that has gone away."""


def parse_events(lines: Iterable[bytes]) -> Iterator[Event]:
    """Events from the raw lines of a stream (response lines, with or without their EOLs)."""
    parser = EventParser()
    for raw in lines:
        event = parser.feed(raw)
        if event is not None:
            yield event


class EventParser:
    """Reads a stream one line at a time (:meth:`feed`), giving each event as it completes.

    Comments and fields other than ``event``, ``data`` and ``id`` are skipped; an event without an
    ``event:`` field is a ``message``, as the standard says.
    """

    def __init__(self) -> None:
        self._name = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, raw: bytes) -> Event | None:
        """Take one line; the event it completes (an empty line ends one), else ``None``."""
        line = raw.decode().rstrip("\r\n")
        if not line:
            event = None
            if self._data or self._name:
                event = Event(self._name or "message", "\n".join(self._data), self._id)
            self._name, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            self._id = value
        return None
