"""Starting, following and canceling predictions on a Cog server (coglet 0.23).

This is ./serve's one HTTP client for Cog: aiohttp's ``ClientSession``. :class:`AsyncCogClient`
runs on the event loop that runs the APIs; :class:`CogClient` is its blocking twin for scripts and
tests that follow predictions from threads (the same client, run on a loop thread of its own).
(:class:`~lmtp_cog.cogserver.CogServer`'s blocking ``health``/``predict``, used before the loop
runs, make their one-shot requests with aiohttp too, on the same loop thread:
:mod:`lmtp_cog.blocking`.)

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

Every request has a connection of its own (``force_close``), as a fresh ``http.client`` connection
had: a kept-alive connection that Cog closes between two requests would fail the second one, and a
local connection costs a fraction of a millisecond. Failures to reach Cog are raised as
``ConnectionError`` (an ``OSError``), whatever aiohttp called them.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..blocking import blocking_loop, run_blocking
from .sse import Event, EventParser

CONNECT_TIMEOUT = 10.0
"""Seconds to connect to Cog and get its answer's headers; a stream's body may then pause for as
long as a generation does (a long prompt, a busy GPU)."""


@dataclass
class AsyncStarted:
    """Cog accepted the prediction; its events are being streamed."""

    response: aiohttp.ClientResponse

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(name, data)`` of each of Cog's events, until Cog closes the stream.

        Raises:
            ConnectionError: the stream broke off.
        """
        parser = EventParser()
        try:
            async for line in _lines(self.response.content):
                event = parser.feed(line)
                if event is not None:
                    yield event.name, _json_object(event)
        except aiohttp.ClientError as error:
            raise ConnectionError(f"the Cog stream broke off: {_describe(error)}") from error

    def close(self) -> None:
        self.response.close()


@dataclass(frozen=True)
class Busy:
    """Every prediction slot of Cog is taken (HTTP 409); the input is valid."""


@dataclass(frozen=True)
class Rejected:
    """Cog refused the prediction: ``status`` 422 for an invalid input, ``body`` its answer."""

    status: int
    body: Any


class AsyncCogClient:
    """The prediction and health endpoints of one Cog server on ``base_url`` (``http://HOST:PORT``).

    :meth:`open` it on the loop that will use it, :meth:`close` it there.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def start(
        self, prediction_id: str, inputs: dict[str, Any]
    ) -> AsyncStarted | Busy | Rejected:
        """``POST /predictions`` with our id, asking for the event stream.

        Raises:
            ConnectionError: Cog cannot be reached, or did not answer in time.
        """
        body = json.dumps({"id": prediction_id, "input": inputs})
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        response = await self._request("POST", "/predictions", data=body, headers=headers)
        if response.status == 200:
            return AsyncStarted(response)
        try:
            data = await response.read()
        except aiohttp.ClientError as error:
            raise ConnectionError(f"Cog's answer broke off: {_describe(error)}") from error
        finally:
            response.release()
        if response.status == 409:
            return Busy()
        try:
            decoded: Any = json.loads(data)
        except ValueError:
            decoded = data.decode(errors="replace")
        return Rejected(response.status, decoded)

    async def cancel(self, prediction_id: str) -> None:
        """``POST /predictions/ID/cancel``; a prediction Cog no longer knows is left alone.

        Raises:
            ConnectionError: Cog cannot be reached.
        """
        path = f"/predictions/{urllib.parse.quote(prediction_id)}/cancel"
        response = await self._request("POST", path)
        try:
            await response.read()
        except aiohttp.ClientError:
            pass
        finally:
            response.release()

    async def health(self, *, timeout: float = 2.0) -> dict[str, Any]:
        """``GET /health-check``: ``status`` (``READY``, ``BUSY``, ``UNHEALTHY``...) and setup logs.

        Raises:
            ConnectionError: no answer within ``timeout`` seconds, or not coglet's JSON.
        """
        try:
            async with asyncio.timeout(timeout):
                response = await self._request("GET", "/health-check")
                try:
                    health = await response.json(content_type=None)
                finally:
                    response.release()
        except TimeoutError:
            raise ConnectionError(f"/health-check did not answer within {timeout:g} s") from None
        except (aiohttp.ClientError, ValueError) as error:
            raise ConnectionError(f"/health-check did not answer JSON: {error}") from None
        return health if isinstance(health, dict) else {}

    async def _request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """The response to one request, its headers read (the body is left to the caller)."""
        if self._session is None:
            raise ConnectionError("the Cog client is closed")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await self._session.request(method, self.base_url + path, **kwargs)
        except TimeoutError:
            raise ConnectionError(
                f"the Cog server did not answer {method} {path} within {CONNECT_TIMEOUT:g} s"
            ) from None
        except aiohttp.ClientError as error:
            raise ConnectionError(_describe(error)) from error


class CogClient:
    """:class:`AsyncCogClient`, blocking: for threads that follow predictions themselves.

    Each call runs on the process's one blocking loop (:mod:`lmtp_cog.blocking`), with a session
    of its own (a started prediction keeps its session until :meth:`Started.close`).
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def start(self, prediction_id: str, inputs: dict[str, Any]) -> Started | Busy | Rejected:
        """``POST /predictions`` with our id, asking for the event stream.

        Raises:
            ConnectionError: Cog cannot be reached, or did not answer in time.
        """
        client = AsyncCogClient(self.base_url)

        async def start() -> AsyncStarted | Busy | Rejected:
            await client.open()
            try:
                answer = await client.start(prediction_id, inputs)
            except BaseException:
                await client.close()
                raise
            if not isinstance(answer, AsyncStarted):
                await client.close()
            return answer

        answer = run_blocking(start())
        return Started(answer, client) if isinstance(answer, AsyncStarted) else answer

    def cancel(self, prediction_id: str) -> None:
        """``POST /predictions/ID/cancel``; a prediction Cog no longer knows is left alone."""
        client = AsyncCogClient(self.base_url)

        async def cancel() -> None:
            await client.open()
            try:
                await client.cancel(prediction_id)
            finally:
                await client.close()

        run_blocking(cancel())


class Started:
    """Cog accepted the prediction; :meth:`events` blocks for each of them. :meth:`close` it."""

    def __init__(self, started: AsyncStarted, client: AsyncCogClient) -> None:
        self._started = started
        self._client = client

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(name, data)`` of each of Cog's events, until Cog closes the stream."""
        events = self._started.events()

        async def following() -> tuple[str, dict[str, Any]] | None:
            return await anext(events, None)

        async def stop() -> None:
            await events.aclose()

        try:
            while (event := run_blocking(following())) is not None:
                yield event
        finally:
            # Not waited for: this may run wherever the garbage collector closes the generator.
            asyncio.run_coroutine_threadsafe(stop(), blocking_loop())

    def close(self) -> None:
        async def close() -> None:
            self._started.close()
            await self._client.close()

        run_blocking(close())


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The lines of a stream, however long (aiohttp's own ``readline`` stops at 128 KiB, and Cog's
    ``completed`` event carries the whole output on one line)."""
    pending = bytearray()
    async for chunk in content.iter_any():
        searched = len(pending)
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", max(start, searched))) >= 0:
            yield bytes(pending[start : end + 1])
            start = end + 1
        del pending[:start]
    if pending:
        yield bytes(pending)


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _json_object(event: Event) -> dict[str, Any]:
    try:
        data = json.loads(event.data)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
