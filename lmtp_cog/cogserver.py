"""Run a generated project with the real Cog prediction server, without Docker.

``cog run`` needs Docker; the Cog runtime itself (``coglet``, from PyPI) does not. This starts
``python -m cog.server.http`` in ``work/NAME`` exactly as the image would: with the OpenAPI
schema and the concurrency that ``cog build`` bakes into it, both read from ``predict.py``'s
source the way cog reads them (:mod:`lmtp_cog.cog_interface`), and nothing else. It waits for
setup to finish, and stops it again. Used by ``make demo``, the end-to-end tests and ``./serve``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .cog_interface import DeclaredPredictor, openapi_schema, read_predictor
from .errors import LmtpCogError

SCHEMA_PATH = Path(".cog") / "openapi_schema.json"
"""Where ``cog build`` puts the schema in the image, and where coglet reads it (relative to the
project folder). Without it coglet validates no input, answers SSE with 406 and /openapi.json
with 503."""


class CogServerError(LmtpCogError):
    """The Cog server did not start, or its setup() failed."""


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
        self.log_path = log_path or project_dir.parent / f".{project_dir.name}.cog-server.log"
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

    def wait_ready(self, *, timeout: float = 120.0) -> dict[str, Any]:
        """Block until setup() finished; raise CogServerError with the model's own error if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise CogServerError(
                    f"the Cog server for {self.project_dir.name} exited with status "
                    f"{self.process.returncode}; see {self.log_path}."
                )
            try:
                health = self.request("GET", "/health-check", timeout=2)
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
                continue
            status = health.get("status")
            if status == "READY":
                return health
            if status == "SETUP_FAILED":
                logs = (health.get("setup") or {}).get("logs", "").strip()
                last = logs.splitlines()[-1] if logs else "no logs"
                # coglet wraps the model's exception in "worker setup failed: ... setup failed: ".
                last = re.split(r"(?i)\bsetup failed: ", last)[-1]
                raise CogServerError(
                    f"setup() of {self.project_dir.name} failed: {last} (full log: {self.log_path})"
                )
            time.sleep(0.2)
        raise CogServerError(
            f"the Cog server for {self.project_dir.name} was not ready after {timeout:.0f} s; "
            f"see {self.log_path}."
        )

    def predict(self, inputs: dict[str, Any], *, timeout: float = 300.0) -> dict[str, Any]:
        """POST /predictions and return Cog's response (``output`` is the list of chunks).

        Cog answers 409 while its one slot is busy, which includes the moment after a prediction
        ended and before the worker took the next: such a request is simply sent again.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.request("POST", "/predictions", {"input": inputs}, timeout=timeout)
            except urllib.error.HTTPError as error:
                if error.code != 409 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30.0
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def stop(self, *, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
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
