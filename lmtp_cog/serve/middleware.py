"""How every request is handled around its route: its body read first, its errors answered.

Every request's body is read whole before its handler runs, whatever the route
(:mod:`.request_body`), so that a body the server cannot use is refused the same way on every path,
and before an unknown path is. Then every :class:`~.problems.ApiError` a handler raises, aiohttp's
own answers (an unknown path: 404; a method a route does not take: 405 with ``Allow``) and any
unexpected exception (500, logged) are written in the shape of the API the path belongs to. A
request too broken for the HTTP parser never gets here: :mod:`.http_server` answers that one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from .problems import ApiError, Render, replicate_problem
from .request_body import BODY, read_body

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_middleware(*, renderers: Mapping[str, Render]) -> Any:
    """The middleware that answers errors: in the shape of the first ``renderers`` prefix the
    path starts with, else in Replicate's."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        render = next(
            (render for prefix, render in renderers.items() if request.path.startswith(prefix)),
            replicate_problem,
        )
        try:
            # First, whatever the route: an unusable body is refused the same way everywhere.
            request[BODY] = await read_body(request)
            return await handler(request)
        except ApiError as error:
            return render(error)
        except web.HTTPMethodNotAllowed as error:
            allowed = sorted(error.allowed_methods)
            return render(
                ApiError(
                    405,
                    "Method not allowed",
                    f"{request.path} answers {' and '.join(allowed)}, not {request.method}",
                    headers={"Allow": ", ".join(allowed)},
                )
            )
        except web.HTTPNotFound:
            return render(
                ApiError(404, "Not found", f"no route for {request.method} {request.path}")
            )
        except web.HTTPException as error:  # aiohttp's own, e.g. from reading the request
            if error.status < 400:
                raise
            return render(ApiError(error.status, error.reason, error.reason.lower()))
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return render(ApiError(500, "Internal error", "see the log of ./serve", close=True))

    return middleware
