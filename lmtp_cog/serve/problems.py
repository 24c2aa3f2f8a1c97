"""Error answers: one exception for every API, written in the shape each API's clients read.

A handler raises :class:`ApiError`; :mod:`.middleware` answers it. Replicate's clients read a
JSON problem (``{"title", "detail", "status"}``, ``application/problem+json``,
:func:`replicate_problem`); the OpenAI-compatible API writes its own shape from the same error
(:mod:`.openai_routes`). The detail is always one sentence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from .errors import ServeError

Render = Callable[["ApiError"], web.Response]
"""Writes an error in the shape some API's clients read."""


class ApiError(ServeError):
    """An error answer: ``status``, a short ``title``, a one-sentence ``detail``.

    ``headers`` go with the answer; ``close`` ends the connection after it (when the request's
    body could not be read, the connection's next bytes cannot be trusted). ``param`` and ``code``
    are what OpenAI's error shape names (the field at fault, a machine-readable code); ``extra``
    joins Replicate's problem object (e.g. ``invalid_fields``).
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
        param: str | None = None,
        code: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.close = close
        self.param = param
        self.code = code
        self.extra = extra


def json_response(
    status: int,
    body: Any,
    *,
    content_type: str = "application/json",
    close: bool = False,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A JSON answer with exactly this ``Content-Type`` (aiohttp would add a charset)."""
    all_headers = {"Content-Type": content_type, **(headers or {})}
    if close:
        all_headers["Connection"] = "close"
    response = web.Response(status=status, body=json.dumps(body).encode(), headers=all_headers)
    if close:
        response.force_close()
    return response


def replicate_problem(error: ApiError) -> web.Response:
    """``error`` as Replicate answers: a JSON problem."""
    body = {"title": error.title, "detail": error.detail, "status": error.status, **error.extra}
    return json_response(
        error.status,
        body,
        content_type="application/problem+json",
        close=error.close,
        headers=error.headers,
    )
