"""LMQL's native LMTP endpoint: the websocket that ``lmql serve-model`` speaks, in front of Cog.

``lmql.model("NAME", endpoint="HOST:PORT", tokenizer=...)`` opens a websocket on
``http://HOST:PORT`` (LMQL 0.7.3 prefixes ``http://`` to the endpoint and connects to it as it is,
so to the path ``/``; with no endpoint it uses ``localhost:8080``). Nothing in LMQL is patched for
this path, unlike its Replicate client, which hard-codes api.replicate.com.

Each command of a client becomes one Cog prediction, submitted to the same
:class:`~.runner.PredictionRunner` as the Replicate-compatible API's: both kinds of client share
the model's queue, and each prediction's output is its own command's alone. A client's commands
are independent of each other: they run as separate predictions, and what one answers is sent as
it streams, whatever the others do. The message formats are in :mod:`.lmtp_frames`.

Threads: aiohttp runs its event loop on a thread of its own. Following a prediction blocks
(:meth:`~.runner.PredictionRunner.submit`, :meth:`~.prediction.Prediction.follow`), so each
command gets a thread that follows its prediction and hands the messages to the loop, where one
writer task per connection sends them in the order they came. A client that disconnects has its
unfinished predictions canceled, so that it does not hold the queue.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading

from aiohttp import WSCloseCode, WSMsgType, web

from .lmtp_frames import Command, FrameError, answer_messages, frame_error_message, parse_command
from .prediction import Prediction
from .project import ServedModel
from .runner import CogDown, CogRefused, PredictionRunner

log = logging.getLogger(__name__)

LMQL_DEFAULT_PORT = 8080
"""The port of ``lmql serve-model`` and of LMQL's default endpoint, ``localhost:8080``."""

MAX_MESSAGE_BYTES = 64 * 2**20
"""The largest command accepted (aiohttp's default is 4 MiB). Every GENERATE of LMQL carries the
whole prompt and a ``logit_bias`` mask that can cover much of the vocabulary: about 2 MB for a
150k-token vocabulary, before the prompt."""

CLOSE_TIMEOUT = 5.0
"""Seconds a closing websocket waits for the client's close frame."""

DRAIN_TIMEOUT = 2.0
"""Seconds a server going away gives a connection to send the messages already queued."""

STOP_TIMEOUT = 30.0
"""Seconds :meth:`LmtpWebsocketServer.stop` waits for the connections to close."""

NOT_A_WEBSOCKET = (
    "This is an LMTP websocket endpoint, as served by `lmql serve-model`: connect with "
    'lmql.model("NAME", endpoint="HOST:PORT", tokenizer=...).\n'
)


class LmtpWebsocketServer:
    """The websocket endpoint of one served model; :meth:`start` it, :meth:`stop` it.

    The port is taken when the object is made, so that a port in use is reported before the model
    loads; connections are served only from :meth:`start` on.
    """

    def __init__(
        self, address: tuple[str, int], *, model: ServedModel, runner: PredictionRunner
    ) -> None:
        """Listen on ``address`` (``(host, 0)`` takes a free port).

        Raises:
            OSError: the address cannot be bound (e.g. the port is in use).
        """
        self._socket = socket.create_server(address)
        self._model = model
        self._runner = runner
        self._loop = asyncio.new_event_loop()
        self._app_runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[_Connection] = set()

    @property
    def endpoint(self) -> str:
        """``HOST:PORT``, what ``lmql.model(..., endpoint=...)`` takes."""
        host, port = self._socket.getsockname()[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"ws://{self.endpoint}/"

    def start(self) -> None:
        """Serve connections, on a thread of the server's own."""
        app = web.Application()
        app.router.add_get("/", self._handle)
        app.on_shutdown.append(self._close_connections)
        self._app_runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=STOP_TIMEOUT, access_log=None
        )
        self._loop.run_until_complete(self._app_runner.setup())
        site = web.SockSite(self._app_runner, self._socket)
        self._loop.run_until_complete(site.start())
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lmtp-websocket", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Close every connection (canceling its unfinished predictions) and the port.

        Safe to call more than once, and on a server that never started.
        """
        if self._thread is not None and self._app_runner is not None:
            cleanup = asyncio.run_coroutine_threadsafe(self._app_runner.cleanup(), self._loop)
            try:
                cleanup.result(timeout=STOP_TIMEOUT)
            except Exception:  # noqa: BLE001 - stopping goes on whatever happened
                log.exception("the LMTP websocket endpoint did not stop cleanly")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=STOP_TIMEOUT)
            self._thread = None
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()
        self._socket.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
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

    async def _close_connections(self, app: web.Application) -> None:
        # At once: each close waits up to CLOSE_TIMEOUT for its client, and LMQL leaves the
        # connections of finished queries open, some of them with nobody left to answer.
        await asyncio.gather(*(connection.shut() for connection in list(self._connections)))


class _Connection:
    """One websocket client: the predictions of its commands, and the writer of their answers."""

    def __init__(
        self, ws: web.WebSocketResponse, *, model: ServedModel, runner: PredictionRunner
    ) -> None:
        self.ws = ws
        self._model = model
        self._runner = runner
        self._loop = asyncio.get_running_loop()
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write())
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, Prediction] = {}

    def run(self, text: str) -> None:
        """Answer one message of the client; on the loop, returns at once."""
        try:
            command = parse_command(text)
        except FrameError as error:
            log.warning("an LMTP websocket client sent an invalid message: %s", error)
            self._send(frame_error_message(error))
            return
        thread = threading.Thread(
            target=self._answer, args=(command,), name=f"lmtp-{command.name}", daemon=True
        )
        thread.start()

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
        with self._lock:
            running = list(self._running.values())
        for prediction in running:
            await asyncio.to_thread(self._runner.cancel, prediction)
        return len(running)

    # --- on the thread of one command ------------------------------------------------------------

    def _answer(self, command: Command) -> None:
        """Run ``command`` as one prediction and send its answer as it streams."""
        prediction = Prediction(
            id=_new_prediction_id(),
            model=self._model.ref,
            version=self._model.version_id,
            input=command.cog_input(),
        )
        log.debug("%s stream %r: prediction %s", command.name, command.stream_id, prediction.id)
        try:
            self._runner.submit(prediction)
        except CogRefused as refused:
            self._send(command.error_message(f"the Cog server refused the command: {refused.body}"))
            return
        except CogDown as down:
            self._send(command.error_message(str(down)))
            return
        except OSError as error:
            self._send(command.error_message(f"the Cog server cannot be reached: {error}"))
            return
        with self._lock:
            self._running[prediction.id] = prediction
            left = self._closed.is_set()
        if left:  # the client left while Cog was being asked; close() did not see this one
            self._runner.cancel(prediction)
        try:
            for event in prediction.follow(stop=self._closed):
                if event is not None and event.name == "output":
                    for message in answer_messages(event.data, command):
                        self._send(message)
        finally:
            with self._lock:
                self._running.pop(prediction.id, None)
        # Without an error line the client would wait for its stream forever.
        if prediction.status == "failed":
            self._send(command.error_message(f"the prediction failed: {prediction.error}"))
        elif prediction.status == "canceled":
            self._send(command.error_message("the prediction was canceled"))

    def _send(self, message: str) -> None:
        """Queue ``message`` for the client; from any thread."""
        if self._closed.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, message)
        except RuntimeError:
            pass  # the loop is closed: the server has stopped

    # --- on the loop ------------------------------------------------------------------------------

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

