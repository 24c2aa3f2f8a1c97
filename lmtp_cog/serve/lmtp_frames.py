"""LMTP's websocket messages, and how they map onto one Cog prediction each.

LMQL's websocket client (``lmql.models.lmtp.lmtp_client.LMTPWebSocketClient`` in 0.7.3, used for
``lmql.model(..., endpoint="HOST:PORT")``) and ``lmql serve-model`` exchange text messages:

- client to server, one command per message: ``COMMAND {json}``, with ``COMMAND`` one of
  ``GENERATE``, ``SCORE``, ``MODEL_INFO`` and a ``stream_id`` in the object, unique per
  connection (each connection counts from 1);
- server to client: ``TOKEN [{...}, ...]`` and ``MSG [{...}, ...]``, always a JSON *list* of
  objects (the client iterates over it), each routed by its ``stream_id``.

Our predictor answers the same ops in Cog's output, one line per object: ``TOKEN {...}`` (see
LMTP.md). Each websocket command becomes its own Cog prediction holding just that op, so every
line of that prediction belongs to that command: we stamp the command's own ``stream_id`` on it
(the model echoes it anyway; stamping also routes an error whose id the model could not read)
and send the lines of a chunk in as few messages as their kinds allow.

Errors take the shapes LMQL's own server gives them: a GENERATE or SCORE that fails gets
``TOKEN [{"stream_id": id, "error": ...}]``, which makes the client raise ``LMTPStreamError``
(nothing else ends its wait); a message that is no command gets
``MSG [{"stream_id": id or null, "error": ...}]``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from lmtp_runtime.inputs import OPS_BATCH_JSON

log = logging.getLogger(__name__)

KINDS = ("TOKEN", "MSG")
"""The kinds of line (and of websocket message) the model sends back."""

STREAMED_COMMANDS = frozenset({"GENERATE", "SCORE"})
"""Commands whose answer the client reads as a stream of TOKEN objects."""

PREVIEW_CHARS = 60


class FrameError(ValueError):
    """A websocket message that is no ``COMMAND {json object}`` (so it has no ``stream_id``)."""


@dataclass(frozen=True)
class Command:
    """One command of a websocket client: its name, its arguments and its ``stream_id``."""

    name: str
    args: dict[str, Any]

    @property
    def stream_id(self) -> Any:
        return self.args.get("stream_id")

    def cog_input(self) -> dict[str, str]:
        """The input of the one Cog prediction that answers this command."""
        return ops_batch_input([[self.name, self.args]])

    def error_message(self, error: str) -> str:
        """``error`` as LMQL's server reports a failure of this command."""
        kind = "TOKEN" if self.name in STREAMED_COMMANDS else "MSG"
        return _message(kind, [{"stream_id": self.stream_id, "error": error}])


def ops_batch_input(ops: list[list[Any]]) -> dict[str, str]:
    """The Cog input of the prediction that runs ``ops`` (``[[COMMAND, args], ...]``)."""
    return {OPS_BATCH_JSON: json.dumps(ops)}


def output_line(line: str) -> tuple[str, dict[str, Any]] | None:
    """``(KIND, object)`` of one line of the model's output (``KIND {json}``); ``None`` for a
    line that is not one. The kind is not checked: callers keep the kinds they read."""
    kind, _, body = line.partition(" ")
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    return (kind, payload) if isinstance(payload, dict) else None


def parse_command(text: str) -> Command:
    """The command of one websocket text message, as LMQL's server splits it.

    Raises:
        FrameError: the message is not ``COMMAND {json object}``.
    """
    name, _, body = text.partition(" ")
    if not name or not body:
        raise FrameError(f"expected 'COMMAND {{json}}', got {_preview(text)}")
    try:
        args = json.loads(body)
    except ValueError as error:
        raise FrameError(f"the arguments of {name} are not JSON: {error}") from None
    if not isinstance(args, dict):
        raise FrameError(f"the arguments of {name} must be a JSON object, got {_preview(body)}")
    return Command(name, args)


def frame_error_message(error: FrameError) -> str:
    """The answer to a message that is no command (LMQL's server answers MSG there too)."""
    return _message("MSG", [{"stream_id": None, "error": f"invalid LMTP message: {error}"}])


def answer_messages(chunk: str, command: Command) -> list[str]:
    """The websocket messages for one chunk of Cog output answering ``command``.

    A chunk holds whole ``KIND {json}`` lines; consecutive lines of one kind share a message.
    A line that is not one (there should be none) is logged and left out.
    """
    messages: list[str] = []
    batch_kind, batch = "", []
    for line in chunk.splitlines():
        if not line:
            continue
        parsed = output_line(line)
        if parsed is None or parsed[0] not in KINDS:
            log.warning("left out a line of the model's output, not LMTP: %s", _preview(line))
            continue
        kind, payload = parsed
        payload["stream_id"] = command.stream_id
        if kind != batch_kind and batch:
            messages.append(_message(batch_kind, batch))
            batch = []
        batch_kind = kind
        batch.append(payload)
    if batch:
        messages.append(_message(batch_kind, batch))
    return messages


def _message(kind: str, payloads: list[dict[str, Any]]) -> str:
    return f"{kind} {json.dumps(payloads, separators=(',', ':'))}"


def _preview(text: str) -> str:
    return repr(text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…")
