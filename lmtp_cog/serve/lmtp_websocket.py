"""LMQL's native LMTP endpoint: the websocket that ``lmql serve-model`` speaks, in front of Cog.

``lmql.model("NAME", endpoint="HOST:PORT", tokenizer=...)`` opens a websocket on
``http://HOST:PORT`` (LMQL 0.7.3 prefixes ``http://`` to the endpoint and connects to it as it is,
so to the path ``/``; with no endpoint it uses ``localhost:8080``). Nothing in LMQL is patched for
this path, unlike its Replicate client, which hard-codes api.replicate.com. The route is ``GET /``
of ./serve's one application (:mod:`.app`), which listens on ``--lmtp-port`` (default 8080) for
it; a plain HTTP request there is told what the endpoint is (426).

Each command of a client becomes one Cog prediction, submitted to the same
:class:`~.runner.PredictionRunner` as the other APIs': every kind of client shares the model's
queue, and each prediction's output is its own command's alone. A client's commands are
independent of each other: they run as separate predictions (one task each), and what one
answers is sent as it streams, whatever the others do. One writer task per connection sends the
messages in the order they came. A client that disconnects has its unfinished predictions
canceled, so that it does not hold the queue. The message formats are in :mod:`.lmtp_frames`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from aiohttp import WSCloseCode, WSMsgType, web

from .errors import CogRefused, CogUnreachable
from .lmtp_frames import Command, FrameError, answer_messages, frame_error_message, parse_command
from .prediction import Prediction
from .project import ServedModel
from .request_body import MAX_BODY_BYTES
from .runner import PredictionRunner

log = logging.getLogger(__name__)

LMQL_DEFAULT_PORT = 8080
"""The port of ``lmql serve-model`` and of LMQL's default endpoint, ``localhost:8080``."""

MAX_MESSAGE_BYTES = MAX_BODY_BYTES
"""The largest command accepted (aiohttp's default is 4 MiB): the same LMQL calls as the HTTP
APIs take, so the same limit."""

CLOSE_TIMEOUT = 5.0
"""Seconds a closing websocket waits for the client's close frame."""

DRAIN_TIMEOUT = 2.0
"""Seconds a server going away gives a connection to send the messages already queued."""

NOT_A_WEBSOCKET = (
    "This is an LMTP websocket endpoint, as served by `lmql serve-model`: connect with "
    'lmql.model("NAME", endpoint="HOST:PORT", tokenizer=...).\n'
)


class LmtpWebsocket:
    """The websocket endpoint of one served model: its route, and its open connections."""

    def __init__(self, *, model: ServedModel, runner: PredictionRunner) -> None:
        self._model = model
        self._runner = runner
        self._connections: set[_Connection] = set()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, timeout=CLOSE_TIMEOUT)
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, text=NOT_A_WEBSOCKET, headers={"Upgrade": "websocket"})
        await ws.prepare(request)
        connection = _Connection(ws, model=self._model, runner=self._runner)
        self._connections.add(connection)
        log.info("%s: an LMTP websocket client connected", request.remote)
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    connection.run(message.data)
                else:
                    log.warning("%s: ignored a %s websocket message", request.remote, message.type)
        finally:
            self._connections.discard(connection)
            canceled = await connection.close()
            log.info(
                "%s: the LMTP websocket client left%s",
                request.remote,
                f"; canceled its {canceled} unfinished command(s)" if canceled else "",
            )
        return ws

    async def close_connections(self) -> None:
        """Close every connection as a server going away (canceling its unfinished predictions).

        At once: each close waits up to CLOSE_TIMEOUT for its client, and LMQL leaves the
        connections of finished queries open, some of them with nobody left to answer.
        """
        await asyncio.gather(*(connection.shut() for connection in list(self._connections)))


class _Connection:
    """One websocket client: the predictions of its commands, and the writer of their answers."""

    def __init__(
        self, ws: web.WebSocketResponse, *, model: ServedModel, runner: PredictionRunner
    ) -> None:
        self.ws = ws
        self._model = model
        self._runner = runner
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write())
        self._closed = asyncio.Event()
        self._running: dict[str, Prediction] = {}
        self._commands: set[asyncio.Task[None]] = set()

    def run(self, text: str) -> None:
        """Answer one message of the client; returns at once."""
        try:
            command = parse_command(text)
        except FrameError as error:
            log.warning("an LMTP websocket client sent an invalid message: %s", error)
            self._send(frame_error_message(error))
            return
        task = asyncio.create_task(self._answer(command), name=f"lmtp-{command.name}")
        self._commands.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._commands.discard)

    async def shut(self) -> None:
        """Send what is queued (e.g. the errors of predictions failed because Cog died), then close
        the websocket as a server going away."""
        try:
            await asyncio.wait_for(self._outbox.join(), timeout=DRAIN_TIMEOUT)
        except TimeoutError:
            log.warning("an LMTP websocket client did not take its last messages")
        await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def close(self) -> int:
        """Stop sending and cancel the unfinished predictions; how many there were."""
        self._closed.set()
        self._writer.cancel()
        running = list(self._running.values())
        for prediction in running:
            await self._runner.cancel(prediction)
        return len(running)

    async def _answer(self, command: Command) -> None:
        """Run ``command`` as one prediction and send its answer as it streams."""
        prediction = Prediction(
            id=_new_prediction_id(),
            model=self._model.ref,
            version=self._model.version_id,
            input=command.cog_input(),
        )
        log.debug("%s stream %r: prediction %s", command.name, command.stream_id, prediction.id)
        try:
            await self._runner.submit(prediction)
        except CogRefused as refused:
            self._send(command.error_message(f"the Cog server refused the command: {refused.body}"))
            return
        except CogUnreachable as unreachable:
            self._send(command.error_message(str(unreachable)))
            return
        if self._closed.is_set():  # the client left while Cog was being asked
            await self._runner.cancel(prediction)
            return
        self._running[prediction.id] = prediction
        try:
            async for event in prediction.follow(stop=self._closed):
                if event is not None and event.name == "output":
                    for message in answer_messages(event.data, command):
                        self._send(message)
        finally:
            self._running.pop(prediction.id, None)
        # Without an error line the client would wait for its stream forever.
        if prediction.status == "failed":
            self._send(command.error_message(f"the prediction failed: {prediction.error}"))
        elif prediction.status == "canceled":
            self._send(command.error_message("the prediction was canceled"))

    def _send(self, message: str) -> None:
        """Queue ``message`` for the client."""
        if not self._closed.is_set():
            self._outbox.put_nowait(message)

    async def _write(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self.ws.send_str(message)
            except ConnectionError:
                self._drop_outbox()
                return  # the client is gone; close() follows
            finally:
                self._outbox.task_done()

    def _drop_outbox(self) -> None:
        """Forget what was queued for a client that left, so that nobody waits to send it."""
        while not self._outbox.empty():
            self._outbox.get_nowait()
            self._outbox.task_done()


def _new_prediction_id() -> str:
    """A prediction id that shows, in Cog's log, that a websocket client asked for it."""
    return "lmtp-ws-" + secrets.token_hex(10)
