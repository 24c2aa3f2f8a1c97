"""Run a generated project with the real Cog prediction server, without Docker.

``cog run`` needs Docker; the Cog runtime itself (``coglet``, from PyPI) does not. This starts
``python -m cog.server.http`` in ``work/NAME`` exactly as the image would: with the OpenAPI
schema and the concurrency that ``cog build`` bakes into it, both read from ``predict.py``'s
source the way cog reads them (:mod:`lmtp_cog.cog_interface`), and nothing else. It waits for
setup to finish, and stops it again. Used by ``make demo``, the end-to-end tests and ``./serve``.

Each running server writes its own log, ``WORK/_logs/NAME.cog-PORT.log`` beside the project
folder: a port has one server at a time, so two servers of one project never share (or truncate)
a file, and the folder's name, which no model can have, keeps it apart from the projects.

The process started here is Cog's HTTP server; it runs the model in a worker process of its own
(``python -c "import coglet; coglet.server._run_worker()"``). What coglet 0.23.1 reports when that
worker dies, as seen on ``GET /health-check``: during setup, ``SETUP_FAILED`` with the setup logs
``"worker crashed"``; once ready, ``UNHEALTHY`` for good (the server itself stays up, fails the
running prediction with "Worker crashed", answers the next one "Broken pipe" and every later one
409, its slots poisoned).

Its few blocking requests (``health``, ``predict``, ``request``) use aiohttp's client, as ./serve
does on its event loop (:mod:`lmtp_cog.serve.cog_client`): one HTTP client for Cog everywhere,
here run on the process's one blocking loop (:mod:`lmtp_cog.blocking`), as the blocking
``CogClient`` runs too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from .blocking import run_blocking
from .cog_interface import DeclaredPredictor, openapi_schema, read_predictor
from .errors import LmtpCogError

LOG_DIR = "_logs"
"""The folder of the Cog servers' logs, in the folder that holds the project (``work/``). A model
name starts with a letter or digit, so no project is ever called this."""

HEALTHY = frozenset({"READY", "BUSY"})
"""``/health-check`` statuses of a server that runs predictions (``BUSY``: every slot is taken)."""

WORKER_CRASHED = "worker crashed"
"""coglet's setup logs, in full, when its worker process died before setup() ended."""

SCHEMA_PATH = Path(".cog") / "openapi_schema.json"
"""Where ``cog build`` puts the schema in the image, and where coglet reads it (relative to the
project folder). Without it coglet validates no input, answers SSE with 406 and /openapi.json
with 503."""


class CogServerError(LmtpCogError):
    """The Cog server did not start, or its setup() failed."""


class CogSetupTimeoutError(CogServerError):
    """setup() did not finish in the time allowed (the server still runs it when this is raised)."""


class CogHttpError(CogServerError):
    """The Cog server answered a request with an error status; ``status`` and ``body`` say which
    and why."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"the Cog server answered {method} {path} with {status}: {body}")
        self.status = status
        self.body = body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CogServer:
    """A Cog prediction server for one project folder, on 127.0.0.1.

    Use as a context manager; the server (its whole process group) is stopped on exit.
    """

    def __init__(
        self,
        project_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """
        Raises:
            CogInterfaceError: ``predict.py`` does not declare its interface the way ``cog
                build`` reads it (the message names the file, line and input).
        """
        self.project_dir = project_dir
        self.interface: DeclaredPredictor = read_predictor(project_dir)
        """What ``cog build`` reads from ``predict.py``: the schema and concurrency it bakes."""
        self.host = host
        self.port = port or free_port()
        self.python = python
        self.log_path = log_path or default_log_path(project_dir, self.port)
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def concurrency(self) -> int:
        """Most predictions Cog runs at once, as in the image: ``@cog.concurrent(max=N)``."""
        return self.interface.max_concurrency

    def write_schema(self) -> Path:
        """Write ``.cog/openapi_schema.json`` as ``cog build`` would; return its path."""
        path = self.project_dir / SCHEMA_PATH
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(openapi_schema(self.interface), indent=2) + "\n")
        return path

    def start(self) -> CogServer:
        """Start the server; return at once (:meth:`wait_ready` waits for setup()).

        Raises:
            CogServerError: the port is taken (checked first, so that the log of the server
                that holds it is not truncated).
        """
        if not _port_is_free(self.host, self.port):
            raise CogServerError(
                f"cannot start the Cog server for {self.project_dir.name}: {self.host}:{self.port} "
                "is in use; choose another port."
            )
        self.write_schema()  # coglet reads it once, at start-up
        # The server starts its worker with plain `python` from PATH: the interpreter that has
        # coglet must come first, or setup never finishes.
        bin_dir = str(Path(self.python).parent)
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            # In an image, `cog build` bakes this in from the predictor's @cog.concurrent(max=N).
            "COG_MAX_CONCURRENCY": str(self.concurrency),
            **self.extra_env,
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [self.python, "-m", "cog.server.http", "--host", self.host],
            cwd=self.project_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(
        self, *, timeout: float = 120.0, on_wait: Callable[[float], None] | None = None
    ) -> dict[str, Any]:
        """Block until setup() finished; raise CogServerError with the model's own error if not.

        A server or worker that dies during setup is reported at once, not when the time is up.
        ``on_wait`` is called with the seconds waited so far about five times a second (./serve
        shows the setup log with it).

        Raises:
            CogServerError: the server exited, its worker died, or setup() failed.
            CogSetupTimeoutError: setup() took longer than ``timeout`` seconds.
        """
        started = time.monotonic()
        while (waited := time.monotonic() - started) < timeout:
            if on_wait is not None:
                on_wait(waited)
            if self.process is not None and self.process.poll() is not None:
                raise CogServerError(
                    f"the Cog server for {self.project_dir.name} exited with status "
                    f"{self.process.returncode} before setup() finished; see {self.log_path}."
                )
            try:
                health = self.health()
            except OSError:
                time.sleep(0.2)
                continue
            status = health.get("status")
            if status in HEALTHY:
                return health
            if status == "SETUP_FAILED":
                raise self._setup_failed(health)
            time.sleep(0.2)
        raise CogSetupTimeoutError(
            f"setup() of {self.project_dir.name} did not finish within {timeout:.0f} s; "
            f"see {self.log_path}."
        )

    def health(self, *, timeout: float = 2.0) -> dict[str, Any]:
        """Cog's ``GET /health-check``: ``status`` (see :data:`HEALTHY`) and the setup logs.

        Raises:
            OSError: the server does not answer, or not with coglet's JSON.
        """
        try:
            health = self.request("GET", "/health-check", timeout=timeout)
        except (ValueError, CogHttpError) as error:  # not coglet's JSON: no coglet
            raise OSError(f"/health-check did not answer JSON: {error}") from None
        return health if isinstance(health, dict) else {}

    def _setup_failed(self, health: dict[str, Any]) -> CogServerError:
        logs = str((health.get("setup") or {}).get("logs") or "").strip()
        name = self.project_dir.name
        if logs == WORKER_CRASHED:
            return CogServerError(
                f"the Cog worker running setup() of {name} died (killed, out of memory, or a "
                f"crash in native code); see {self.log_path}."
            )
        last = logs.splitlines()[-1] if logs else "no logs"
        # coglet wraps the model's exception in "worker setup failed: ... setup failed: ".
        last = re.split(r"(?i)\bsetup failed: ", last)[-1]
        return CogServerError(f"setup() of {name} failed: {last} (full log: {self.log_path})")

    def predict(self, inputs: dict[str, Any], *, timeout: float = 300.0) -> dict[str, Any]:
        """POST /predictions and return Cog's response (``output`` is the list of chunks).

        Cog answers 409 while its one slot is busy, which includes the moment after a prediction
        ended and before the worker took the next: such a request is simply sent again.

        Raises:
            CogHttpError: Cog refused the prediction (e.g. 422 for an invalid input).
            OSError: the server does not answer.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.request("POST", "/predictions", {"input": inputs}, timeout=timeout)
            except CogHttpError as error:
                if error.status != 409 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30.0
    ) -> dict[str, Any]:
        """One request to the server; its JSON answer (``None`` for an empty one).

        Raises:
            CogHttpError: an answer with a status of 400 or more.
            ValueError: an answer that is not JSON.
            OSError: no answer within ``timeout`` seconds, or the server cannot be reached.
        """
        return run_blocking(_request_json(self.url, method, path, body, timeout=timeout))

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop the server's whole process group (its worker too)."""
        if self.process is None:
            return
        if self.process.poll() is not None:
            # The server died first: its worker may still be there, in the same group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass

    def __enter__(self) -> CogServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _request_json(
    base_url: str, method: str, path: str, body: Any, *, timeout: float
) -> Any:
    """One request with aiohttp's client; the decoded JSON answer."""
    data = None if body is None else json.dumps(body)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.request(
                method, base_url + path, data=data, headers={"Content-Type": "application/json"}
            ) as response:
                text = await response.read()
                status = response.status
    except TimeoutError:
        raise TimeoutError(
            f"the Cog server did not answer {method} {path} within {timeout:g} s"
        ) from None
    except aiohttp.ClientError as error:
        raise ConnectionError(f"the Cog server cannot be reached: {error}") from error
    if status >= 400:
        try:
            reason: Any = json.loads(text)
        except ValueError:
            reason = text.decode(errors="replace")
        raise CogHttpError(method, path, status, reason)
    return json.loads(text) if text else None


def default_log_path(project_dir: Path, port: int) -> Path:
    """``WORK/_logs/NAME.cog-PORT.log``: one file per running server (see the module docstring)."""
    return project_dir.parent / LOG_DIR / f"{project_dir.name}.cog-{port}.log"


def _port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` (with SO_REUSEADDR, as servers bind: a
    port whose last connections linger in TIME_WAIT is free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
