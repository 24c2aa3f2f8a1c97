"""Putting it together: a built project served by Cog, behind the Replicate-compatible API and
LMQL's native LMTP websocket endpoint, which share one queue of predictions.

The order matters. The addresses are taken first, so that a port already in use is reported
before minutes of model loading, not after. The Cog server gets the OpenAPI schema and the
concurrency ``cog build`` would bake into the image, read from ``predict.py``'s source
(:class:`~lmtp_cog.cogserver.CogServer`); the version the API shows carries the same schema. Both
endpoints answer only once ``setup()`` finished;
requests that arrive earlier wait in the sockets' backlogs. While serving, a
:class:`~.health.CogWatch` watches the Cog server: if it or its worker dies, every prediction
queued or running fails with the reason at once, and :meth:`Served.wait_until_down` returns it.
On the way out the watch stops, then the websocket endpoint (its clients' predictions are
canceled), then the API (ending its streams and canceling what runs), then the Cog server's
process group.
"""

from __future__ import annotations

import errno
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..cog_interface import openapi_schema
from ..cogserver import CogServer
from .cog_client import CogClient
from .errors import ServeError
from .health import CogWatch
from .lmtp_websocket import LmtpWebsocketServer
from .project import ServedModel, load_served_model
from .replicate_api import ReplicateApi, ReplicateApiServer
from .runner import PredictionRunner

DEFAULT_HOST = "127.0.0.1"
DEFAULT_SETUP_TIMEOUT = 900.0
"""Seconds ``setup()`` may take: loading a 7B model in 8-bit from a cold disk takes minutes."""


@dataclass(frozen=True)
class Served:
    """A running model: where its servers listen, and the process behind Cog's."""

    model: ServedModel
    cog: CogServer
    api: ReplicateApiServer
    watch: CogWatch
    lmtp: LmtpWebsocketServer | None = None
    """LMQL's native endpoint; ``None`` when served without it."""

    def wait_until_down(self, timeout: float | None = None) -> str | None:
        """Block until the Cog server or its worker died; why, in one sentence naming the log.

        ``None`` if ``timeout`` seconds passed first. Every prediction queued or running has
        failed with that reason by the time this returns.
        """
        return self.watch.wait(timeout)

    @property
    def api_url(self) -> str:
        return self.api.url

    @property
    def lmtp_endpoint(self) -> str | None:
        """``HOST:PORT`` for ``lmql.model(..., endpoint=...)``, if the endpoint is served."""
        return None if self.lmtp is None else self.lmtp.endpoint


@contextmanager
def serve_project(
    project_dir: Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = 0,
    cog_port: int | None = None,
    lmtp_port: int | None = 0,
    python: str = sys.executable,
    setup_timeout: float = DEFAULT_SETUP_TIMEOUT,
    on_cog_started: Callable[[CogServer], None] | None = None,
    on_setup_wait: Callable[[float], None] | None = None,
) -> Iterator[Served]:
    """Serve ``project_dir`` until the block ends; every server is stopped on the way out.

    Args:
        project_dir: A project made by ``./build`` (any Cog project with model_settings.json).
        host: Where the API and the websocket endpoint listen; the Cog server always listens on
            127.0.0.1.
        port: The API's port; 0 takes a free one.
        cog_port: The Cog server's port; ``None`` takes a free one.
        lmtp_port: The port of LMQL's LMTP websocket endpoint, on ``host``; 0 takes a free one,
            ``None`` serves none.
        python: The interpreter with cog and the model's packages (the venv's).
        setup_timeout: Seconds the model's ``setup()`` may take.
        on_cog_started: Called once the Cog server process runs, before ``setup()`` finished.
        on_setup_wait: Called about five times a second while ``setup()`` runs, with the seconds
            waited so far (./serve shows the setup log with it).

    Raises:
        ServeError: the API cannot listen on ``host:port``, or the websocket endpoint on
            ``host:lmtp_port``.
        CogInterfaceError: ``predict.py`` does not declare its interface the way ``cog build``
            reads it.
        CogServerError: the Cog server did not start, or ``setup()`` failed (the model's error),
            or did not finish in ``setup_timeout`` seconds (``CogSetupTimeoutError``).
    """
    cog = CogServer(project_dir, port=cog_port, python=python)
    model = load_served_model(project_dir, openapi_schema(cog.interface))
    runner = PredictionRunner(CogClient(cog.url))
    api = _listen(host, port, ReplicateApi(model, runner))
    lmtp: LmtpWebsocketServer | None = None
    try:
        if lmtp_port is not None:
            lmtp = _listen_lmtp(host, lmtp_port, model=model, runner=runner)
        with cog:
            if on_cog_started is not None:
                on_cog_started(cog)
            cog.wait_ready(timeout=setup_timeout, on_wait=on_setup_wait)
            watch = CogWatch(cog, on_death=runner.fail_all).start()
            thread = threading.Thread(target=api.serve_forever, name="replicate-api", daemon=True)
            thread.start()
            if lmtp is not None:
                lmtp.start()
            try:
                yield Served(model=model, cog=cog, api=api, watch=watch, lmtp=lmtp)
            finally:
                watch.stop()
                if lmtp is not None:
                    lmtp.stop()
                api.shutdown()
                thread.join(timeout=5)
    finally:
        if lmtp is not None:
            lmtp.stop()  # frees the port when setup() failed
        api.server_close()


def _listen(host: str, port: int, api: ReplicateApi) -> ReplicateApiServer:
    try:
        return ReplicateApiServer((host, port), api)
    except OSError as error:
        raise ServeError(
            f"cannot listen on {host}:{port}: {_why(error)}; choose another with --port."
        ) from None


def _listen_lmtp(
    host: str, port: int, *, model: ServedModel, runner: PredictionRunner
) -> LmtpWebsocketServer:
    try:
        return LmtpWebsocketServer((host, port), model=model, runner=runner)
    except OSError as error:
        raise ServeError(
            f"cannot listen on {host}:{port} for the LMTP websocket endpoint: {_why(error)}; "
            "choose another with --lmtp-port."
        ) from None


def _why(error: OSError) -> str:
    return "the port is in use" if error.errno == errno.EADDRINUSE else str(error.strerror)
