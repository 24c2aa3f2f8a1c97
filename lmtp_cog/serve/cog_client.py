"""Starting, following and canceling predictions on a Cog server (coglet 0.23).

We ask Cog for its own server-sent events (``Accept: text/event-stream``) rather than for webhooks
(``Prefer: respond-async`` + ``webhook``). Measured on the test model with a chunk every 20 ms,
both deliver each chunk within a millisecond or two of the ``yield``. But every webhook carries the
*whole* output so far (quadratic bytes over a long generation) on a new connection of its own,
whereas the SSE stream sends each chunk once, in order, on one connection, and ends with a
``completed`` event holding the final status, error and metrics. Cog's events are ``start``,
``log`` (``{"data", "source"}``), ``output`` (``{"chunk", "index"}``), ``metric`` and
``completed``.

Cog checks the input before it checks capacity: an invalid input gets a 422 even while another
prediction runs, and a valid one gets a 409 then. The runner uses this to reject bad input at once.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .sse import Event, parse_events

CONNECT_TIMEOUT = 10.0


@dataclass
class Started:
    """Cog accepted the prediction; its events are being streamed."""

    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(name, data)`` of each of Cog's events, until Cog closes the stream."""
        for event in parse_events(iter(self.response.readline, b"")):
            yield event.name, _json_object(event)

    def close(self) -> None:
        self.connection.close()


@dataclass(frozen=True)
class Busy:
    """Every prediction slot of Cog is taken (HTTP 409); the input is valid."""


@dataclass(frozen=True)
class Rejected:
    """Cog refused the prediction: ``status`` 422 for an invalid input, ``body`` its answer."""

    status: int
    body: Any


class CogClient:
    """The prediction endpoints of one Cog server on ``base_url`` (``http://HOST:PORT``)."""

    def __init__(self, base_url: str) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80

    def start(self, prediction_id: str, inputs: dict[str, Any]) -> Started | Busy | Rejected:
        """``POST /predictions`` with our id, asking for the event stream."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT)
        try:
            connection.request(
                "POST",
                "/predictions",
                body=json.dumps({"id": prediction_id, "input": inputs}),
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            )
            response = connection.getresponse()
        except OSError:
            connection.close()
            raise
        if response.status == 200:
            # A generation may pause for long (a long prompt, a busy GPU): no read timeout.
            if connection.sock is not None:
                connection.sock.settimeout(None)
            return Started(connection, response)
        body = response.read()
        connection.close()
        if response.status == 409:
            return Busy()
        try:
            decoded: Any = json.loads(body)
        except ValueError:
            decoded = body.decode(errors="replace")
        return Rejected(response.status, decoded)

    def cancel(self, prediction_id: str) -> None:
        """``POST /predictions/ID/cancel``; a prediction Cog no longer knows is left alone."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT)
        try:
            connection.request("POST", f"/predictions/{urllib.parse.quote(prediction_id)}/cancel")
            connection.getresponse().read()
        finally:
            connection.close()


def _json_object(event: Event) -> dict[str, Any]:
    try:
        data = json.loads(event.data)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
