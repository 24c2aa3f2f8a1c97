"""./serve's one aiohttp application: every API of a served model, in front of one Cog server.

    /v1/...             the Replicate-compatible API (:mod:`.replicate_api`)
    /openai/v1/...      the OpenAI-compatible API (:mod:`.openai_routes`)
    /                   LMQL's LMTP websocket (:mod:`.lmtp_websocket`), when it is served

One application, one event loop, one :class:`~.cog_client.AsyncCogClient` and one
:class:`~.runner.PredictionRunner`: every API's predictions share the model's queue, and Cog
batches them together. The application listens on two sockets (:mod:`.http_server`): the API's
``--port`` and the websocket's ``--lmtp-port``, LMQL's ``endpoint="HOST:PORT"``, whose path is
``/``. Both serve the same routes (so the websocket also answers on the API's port, and the API on
the websocket's): splitting them would take two applications, or a router that looks at the
port, for no gain in what a client can do.

Every route's errors are answered by one middleware (:mod:`.middleware`), in OpenAI's shape under
``/openai/`` and in Replicate's elsewhere. On shutdown the health watch stops first, then the
streams and waits end, the websocket clients are told the server goes away (their predictions
canceled), and what is left on Cog is canceled.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..cogserver import CogServer
from .cog_client import AsyncCogClient
from .health import CogWatch
from .lmtp_websocket import LmtpWebsocket
from .middleware import error_middleware
from .openai_routes import PREFIX as OPENAI_PREFIX
from .openai_routes import OpenAiApi, openai_error
from .project import ServedModel
from .replicate_api import ReplicateApi
from .request_body import MAX_BODY_BYTES
from .runner import PredictionRunner
from .tokenizer import ProjectTokenizer


class ServeApp:
    """The pieces behind the routes, and the :class:`aiohttp.web.Application` that holds them."""

    def __init__(
        self,
        *,
        cog: CogServer,
        model: ServedModel,
        tokenizer: ProjectTokenizer,
        websocket: bool,
    ) -> None:
        self.client = AsyncCogClient(cog.url)
        self.runner = PredictionRunner(self.client)
        self.watch = CogWatch(cog, self.client, on_death=self.runner.fail_all)
        self.stopping = asyncio.Event()
        """Set when the server goes away: every stream and wait ends."""
        self.replicate = ReplicateApi(model, self.runner, stopping=self.stopping)
        self.openai = OpenAiApi(model, self.runner, tokenizer, stopping=self.stopping)
        self.lmtp = LmtpWebsocket(model=model, runner=self.runner) if websocket else None

    def application(self) -> web.Application:
        app = web.Application(
            middlewares=[error_middleware(renderers={OPENAI_PREFIX: openai_error})],
            client_max_size=MAX_BODY_BYTES,
        )
        app.add_routes(self.replicate.routes())
        app.add_routes(self.openai.routes())
        if self.lmtp is not None:
            app.add_routes(self.lmtp.routes())
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._shut_down)
        app.on_cleanup.append(self._clean_up)
        return app

    async def _start(self, app: web.Application) -> None:
        await self.client.open()
        self.watch.start()

    async def _shut_down(self, app: web.Application) -> None:
        await self.watch.stop()
        self.stopping.set()
        if self.lmtp is not None:
            await self.lmtp.close_connections()
        await self.runner.close()

    async def _clean_up(self, app: web.Application) -> None:
        await self.client.close()
