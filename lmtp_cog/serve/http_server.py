"""Serving ./serve's one aiohttp application from an event loop on a thread of its own.

:class:`AppThread` runs the application on sockets bound beforehand (so that a port in use is
reported before the model loads, and requests that come while it loads wait in the backlog), and
lets the caller's thread run coroutines on its loop and stop it.

Three things about requests that aiohttp handles below the application, changed here so that the
API keeps its contract (:class:`_RequestHandler`, aiohttp's connection handler with):

- the pure-Python HTTP parser, not llhttp: llhttp refuses every method it does not know (a
  ``BREW``) as a malformed request, where the router answers 405 with ``Allow``;
- a request the parser refuses (a ``Content-Length`` that is no number or not the only one, a
  request line without a valid version...) is answered with a JSON problem whose detail is one
  sentence, as every other error, instead of aiohttp's plain text;
- a client that half-closes its side once it sent its request (``shutdown(SHUT_WR)``) still
  gets its answer, and a body cut short that way is answered 400 at once (asyncio would close the
  connection on the client's EOF, before anything could be answered).

These reach below aiohttp's public API (its connection handler's parser and state, as of the
pinned aiohttp 3.14.5); ``tests/serve/test_bad_requests.py`` pins every one of them down.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
)
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestPayloadError

from .problems import ApiError, replicate_problem

log = logging.getLogger(__name__)

T = TypeVar("T")

STOP_TIMEOUT = 30.0
"""Seconds :meth:`AppThread.stop` waits for the requests in progress to end."""

ACCESS_LOG_FORMAT = '%a "%r" %s %b'
"""One line per request: the client, the request line, the status, the bytes sent."""


class AppThread:
    """``app`` served on ``sockets`` by an event loop on a thread of its own."""

    def __init__(self, app: web.Application, sockets: Sequence[socket.socket]) -> None:
        self._app = app
        self._sockets = list(sockets)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="serve-http", daemon=True
        )
        self._runner: web.AppRunner | None = None

    def start(self) -> None:
        """Start the loop and serve every socket; return once they are served.

        Raises:
            Exception: whatever the application's startup raised.
        """
        self._thread.start()
        self.run(self._start())

    def run(self, work: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run ``work`` on the loop, from another thread; its result."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def stop(self) -> None:
        """Stop serving (the application's shutdown and cleanup run), then the loop and thread.

        Safe to call more than once, and on an AppThread that never started.
        """
        if self._thread.is_alive():
            if self._runner is not None:
                try:
                    self.run(self._runner.cleanup(), timeout=STOP_TIMEOUT + 10)
                except Exception:  # noqa: BLE001 - stopping goes on whatever happened
                    log.exception("the HTTP server did not stop cleanly")
                self._runner = None
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=STOP_TIMEOUT)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()
        for sock in self._sockets:
            sock.close()

    async def _start(self) -> None:
        runner = _AppRunner(
            self._app,
            handle_signals=False,
            shutdown_timeout=STOP_TIMEOUT,
            access_log=logging.getLogger("lmtp_cog.serve.access"),
            access_log_format=ACCESS_LOG_FORMAT,
        )
        await runner.setup()
        self._runner = runner
        for sock in self._sockets:
            await web.SockSite(runner, sock, shutdown_timeout=STOP_TIMEOUT).start()


class _AppRunner(web.AppRunner):
    """aiohttp's runner, whose connections are handled by :class:`_RequestHandler`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The server is the sites' protocol factory; _Server only changes what it makes.
        server.__class__ = _Server
        return server


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class _RequestHandler(web.RequestHandler):
    """aiohttp's connection handler, with the three changes of the module docstring."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, **kwargs: Any):
        super().__init__(manager, loop=loop, **kwargs)
        self._parser = HttpRequestParserPy(
            self,
            loop,
            kwargs.get("read_bufsize", 2**16),
            max_line_size=self.max_line_size,
            max_field_size=self.max_field_size,
            max_headers=self.max_headers,
            payload_exception=RequestPayloadError,
            auto_decompress=kwargs.get("auto_decompress", True),
            max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
        )

    def eof_received(self) -> bool:
        """The client will send nothing more: end the body being received (short of its
        Content-Length, which the body's reader answers with a 400), and keep the connection
        open to answer what was asked, then close it."""
        body = getattr(getattr(self._parser, "_payload_parser", None), "payload", None)
        if body is not None:
            body.feed_eof()
        asked = bool(self._messages) or (self._waiter is None and self._request_count > 0)
        if body is None and not asked:
            return False  # idle: let asyncio close the connection
        self.close()
        return True

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Aiohttp's own error answers (a request it cannot parse, a bug), as JSON problems."""
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was sent already; it cannot become an error")
        if isinstance(exc, HttpProcessingError) and 400 <= status < 500:
            error = parse_error(exc)
            log.info("%s: refused a request: %s", request.remote, error.detail)
        else:
            log.error("a request from %s failed", request.remote, exc_info=exc)
            error = ApiError(status, "Internal error", "see the log of ./serve")
        error.close = True
        return replicate_problem(error)


def parse_error(exc: HttpProcessingError) -> ApiError:
    """What the parser's refusal means, in one sentence (400)."""
    text = " ".join(str(exc.message).split())
    if isinstance(exc, InvalidHeader) and str(exc.hdr).lower() == "content-length":
        detail = "the Content-Length header is not a number of bytes"
    elif "Duplicate 'Content-Length'" in text:
        detail = "the request has Content-Length headers that disagree or repeat; send one"
    elif "Transfer-Encoding can't be present with Content-Length" in text:
        detail = "the request has both Transfer-Encoding and Content-Length; send one"
    elif isinstance(exc, BadHttpMethod):
        detail = "the request line is not METHOD PATH HTTP/VERSION with a valid method"
    elif isinstance(exc, BadStatusLine):
        detail = "the request line has no valid HTTP version (HTTP/1.0 or HTTP/1.1)"
    elif isinstance(exc, LineTooLong):
        detail = "a line of the request is too long"
    else:
        detail = f"the request is malformed: {text.rstrip('.')}"
    return ApiError(400, "Bad request", detail)
