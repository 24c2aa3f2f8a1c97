"""Reading a request's body, and refusing one the server cannot use with a 4xx, never a 5xx.

Every request's body is read whole before its handler runs (see :mod:`.problems`): a chunked body
(411), one over 64 MiB (413), one slow to come (408) or one that ends before its
``Content-Length`` (400) is refused, each closing the connection, whose next bytes could not be
told apart from this body. A ``Content-Length`` that is no number, or several, never get here:
the HTTP parser refuses them (:mod:`.http_server`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from .problems import ApiError

MAX_BODY_BYTES = 64 * 2**20
"""The largest request body taken, and the largest websocket command. Every GENERATE of LMQL
carries the whole prompt and a ``logit_bias`` mask that can cover much of the vocabulary: about
2 MB for a 150k-token vocabulary, before the prompt."""

BODY_TIMEOUT_SECONDS = 30.0
"""How long a request's body may take to arrive once its headers did."""

BODY: web.RequestKey[bytes] = web.RequestKey("body", bytes)
"""Where the middleware leaves the body it read, for the handlers."""


async def read_body(request: web.Request) -> bytes:
    """The request's body, all of it (``Content-Length`` bytes).

    Raises:
        ApiError: 411 for a chunked body, 413 for one over :data:`MAX_BODY_BYTES`, 408 for one
            that does not arrive within :data:`BODY_TIMEOUT_SECONDS`, 400 for one that ends
            before its ``Content-Length``; each closes the connection.
    """
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        raise _error(411, "Length required", "send the body with a Content-Length header")
    length = request.content_length or 0
    if length > MAX_BODY_BYTES:
        raise _error(
            413,
            "Payload too large",
            f"the body has {length} bytes; this server takes at most {MAX_BODY_BYTES}",
        )
    if length == 0:
        return b""
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            return await request.content.readexactly(length)
    except TimeoutError:
        raise _error(
            408,
            "Request timeout",
            f"the body did not arrive within {BODY_TIMEOUT_SECONDS:.0f} s",
        ) from None
    except asyncio.IncompleteReadError as short:
        raise _error(
            400,
            "Bad request",
            f"the body ended after {len(short.partial)} of the {length} bytes its "
            "Content-Length says",
        ) from None


def read_json_object(body: bytes, *, hint: str) -> dict[str, Any]:
    """The body as a JSON object; ``hint`` says what to send (e.g. ``{"input": {...}}``).

    Raises:
        ApiError: 400 for no body, one that is no JSON or nested too deeply, or not an object.
    """
    if not body.strip():
        raise ApiError(400, "Bad request", f"the request has no body: send a JSON object {hint}")
    try:
        decoded = json.loads(body)
    except RecursionError:
        raise ApiError(400, "Bad request", "the body is nested too deeply") from None
    except ValueError as error:
        raise ApiError(400, "Bad request", f"the body is not JSON: {error}") from None
    if not isinstance(decoded, dict):
        raise ApiError(400, "Bad request", "the body must be a JSON object")
    return decoded


def _error(status: int, title: str, detail: str) -> ApiError:
    return ApiError(status, title, detail, close=True)
