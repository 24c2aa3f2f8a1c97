"""Run a generated project with the real Cog prediction server, without Docker.

``cog predict`` needs Docker; the Cog runtime itself (``coglet``, from PyPI) does not. This starts
``python -m cog.server.http`` in ``work/NAME`` exactly as the container would, waits for setup to
finish, and stops it again. Used by ``make demo``, the end-to-end tests and ``./serve``.
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

from .errors import LmtpCogError
from .settings import SETTINGS_FILE


class CogServerError(LmtpCogError):
    """The Cog server did not start, or its setup() failed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def project_concurrency(project_dir: Path) -> int:
    """``serve.concurrency`` of the project's ``model_settings.json``; 1 without one."""
    try:
        settings = json.loads((project_dir / SETTINGS_FILE).read_text(encoding="utf-8"))
        concurrency = settings["serve"]["concurrency"]
    except (OSError, ValueError, KeyError, TypeError):
        return 1
    return concurrency if isinstance(concurrency, int) and concurrency >= 1 else 1


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
        concurrency: int | None = None,
    ) -> None:
        """
        Args:
            concurrency: most predictions Cog runs at once; ``None``: the project's
                ``serve.concurrency`` (what ``cog build`` declares in the image), else 1.
        """
        self.project_dir = project_dir
        self.concurrency = concurrency or project_concurrency(project_dir)
        self.host = host
        self.port = port or free_port()
        self.python = python
        self.log_path = log_path or project_dir.parent / f".{project_dir.name}.cog-server.log"
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> CogServer:
        # The server starts its worker with plain `python` from PATH: the interpreter that has
        # coglet must come first, or setup never finishes.
        bin_dir = str(Path(self.python).parent)
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            # In an image, `cog build` sets this from the predictor's @cog.concurrent(max=N).
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
