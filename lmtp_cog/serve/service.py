"""Putting it together: a built project served by Cog, behind ./serve's one application (the
Replicate-compatible API, the OpenAI-compatible API and LMQL's native LMTP websocket, which share
one queue of predictions; :mod:`.app`).

The order matters. The addresses are taken first, so that a port already in use is reported
before minutes of model loading, not after. The Cog server gets the OpenAPI schema and the
concurrency ``cog build`` would bake into the image, read from ``predict.py``'s source
(:class:`~lmtp_cog.cogserver.CogServer`); the version the API shows carries the same schema.
While ``setup()`` loads the model, the model's tokenizer loads here too, for the OpenAI-compatible
API (:mod:`.tokenizer`). Every endpoint answers only once ``setup()`` finished; requests that
arrive earlier wait in the sockets' backlogs. While serving, a :class:`~.health.CogWatch` watches
the Cog server: if it or its worker dies, every prediction queued or running fails with the
reason at once, and :meth:`Served.wait_until_down` returns it. On the way out the application
stops (:class:`~.app.ServeApp` says in which order), then the Cog server's process group.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from lmtp_runtime.prompt_format import has_chat_template

from ..cog_interface import openapi_schema
from ..cogserver import CogServer
from .app import ServeApp
from .errors import ServeError
from .health import CogWatch
from .http_server import AppThread
from .openai_routes import BASE as OPENAI_BASE
from .project import ServedModel, load_served_model
from .tokenizer import TokenizerLoad

DEFAULT_HOST = "127.0.0.1"
DEFAULT_SETUP_TIMEOUT = 900.0
"""Seconds ``setup()`` may take: loading a 7B model in 8-bit from a cold disk takes minutes."""


@dataclass(frozen=True)
class Served:
    """A running model: where its endpoints listen, and the process behind Cog's."""

    model: ServedModel
    cog: CogServer
    api_url: str
    """``http://HOST:PORT`` of the Replicate-compatible API (and of the OpenAI-compatible one)."""
    watch: CogWatch
    lmtp_endpoint: str | None = None
    """``HOST:PORT`` for ``lmql.model(..., endpoint=...)``; ``None`` when served without it."""
    openai_problem: str | None = None
    """Why the OpenAI-compatible API cannot answer (no tokenizer); ``None`` when it can."""
    openai_chat: bool = False
    """Whether its chat completions work: the model's tokenizer has a chat template."""

    def wait_until_down(self, timeout: float | None = None) -> str | None:
        """Block until the Cog server or its worker died; why, in one sentence naming the log.

        ``None`` if ``timeout`` seconds passed first. Every prediction queued or running has
        failed with that reason by the time this returns.
        """
        return self.watch.wait(timeout)

    @property
    def openai_url(self) -> str:
        """The ``base_url`` for OpenAI's clients."""
        return self.api_url + OPENAI_BASE


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
        host: Where the APIs and the websocket endpoint listen; the Cog server always listens on
            127.0.0.1.
        port: The APIs' port; 0 takes a free one.
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
    with ExitStack() as sockets:
        api_socket = sockets.enter_context(_listen(host, port, option="--port"))
        lmtp_socket = None
        if lmtp_port is not None:
            lmtp_socket = sockets.enter_context(
                _listen(
                    host, lmtp_port, option="--lmtp-port", what=" for the LMTP websocket endpoint"
                )
            )
        tokenizer = TokenizerLoad(project_dir).start()
        with cog:
            if on_cog_started is not None:
                on_cog_started(cog)
            cog.wait_ready(timeout=setup_timeout, on_wait=on_setup_wait)
            loaded = tokenizer.result()
            app = ServeApp(
                cog=cog, model=model, tokenizer=loaded, websocket=lmtp_socket is not None
            )
            listening = [api_socket] if lmtp_socket is None else [api_socket, lmtp_socket]
            server = AppThread(app.application(), listening)
            try:
                server.start()
                yield Served(
                    model=model,
                    cog=cog,
                    api_url=_url(api_socket),
                    watch=app.watch,
                    lmtp_endpoint=None if lmtp_socket is None else _endpoint(lmtp_socket),
                    openai_problem=loaded.problem,
                    openai_chat=has_chat_template(loaded.tokenizer),
                )
            finally:
                server.stop()


@contextmanager
def _listen(host: str, port: int, *, option: str, what: str = "") -> Iterator[socket.socket]:
    """A socket listening on ``host:port``, closed on the way out.

    Raises:
        ServeError: the address cannot be bound, naming ``option`` to choose another port.
    """
    try:
        sock = socket.create_server((host, port))
    except OSError as error:
        raise ServeError(
            f"cannot listen on {host}:{port}{what}: {_why(error)}; choose another with {option}."
        ) from None
    with sock:
        yield sock


def _endpoint(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _url(sock: socket.socket) -> str:
    return f"http://{_endpoint(sock)}"


def _why(error: OSError) -> str:
    return "the port is in use" if error.errno == errno.EADDRINUSE else str(error.strerror)
