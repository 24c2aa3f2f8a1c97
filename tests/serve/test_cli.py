"""``./serve`` as a user runs it: the checkout's real script, as a subprocess.

What it prints (errors as one line, the banner's snippets, which are run as printed) and how it
stops: both servers, every process, on SIGTERM and when the model's setup fails.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lmtp_cog.paths import TOOLKIT_ROOT

from .conftest import ECHO_MODEL, SETUP_FAILS

SERVE_SCRIPT = TOOLKIT_ROOT / "serve"
VENV_PYTHON = TOOLKIT_ROOT / ".venv" / "bin" / "python"


@dataclass
class ServeProcess:
    """A running ``./serve`` whose output is collected by a thread as it comes."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """All output so far, once ``text`` appeared in it (fails if ./serve exits first)."""
        with self.changed:
            found = self.changed.wait_for(
                lambda: text in self.output or self.process.poll() is not None, timeout=timeout
            )
        assert found and text in self.output, self.output
        return self.output

    @property
    def output(self) -> str:
        return "".join(self.lines)


def _serve(*args: str, cwd: Path) -> ServeProcess:
    process = subprocess.Popen(
        [str(SERVE_SCRIPT), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    serve = ServeProcess(process)
    threading.Thread(target=serve.read, daemon=True).start()
    return serve


def _run_serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SERVE_SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _group_is_gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether the process group ``pid`` leads (CogServer makes one) empties within ``timeout``.

    Cog's worker outlives its server by a moment, as a zombie until init reaps it, and
    ``killpg(pid, 0)`` still finds a zombie: hence the wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _stop(serve: ServeProcess) -> None:
    if serve.process.poll() is None:
        serve.process.send_signal(signal.SIGTERM)
        serve.process.wait(timeout=30)


def _cog_pid(output: str) -> int:
    match = re.search(r"starting the Cog server \(pid (\d+)\)", output)
    assert match, output
    return int(match.group(1))


def _snippet(banner: str, heading: str) -> str:
    """The indented code block after the line starting with ``heading``, dedented."""
    after = banner[banner.index("\n" + heading) :].split("\n\n", 2)[1]
    return "\n".join(line.removeprefix("    ") for line in after.splitlines())


def test_an_unknown_model_is_one_sentence_that_suggests_build(work_dir: Path) -> None:
    run = _run_serve("no-such-model", "--work-dir", str(work_dir), cwd=work_dir.parent)

    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: there is no built model 'no-such-model'")
    assert "./build" in run.stderr and ECHO_MODEL in run.stderr
    assert run.stdout == ""


def test_a_failing_setup_is_reported_with_the_models_own_error(work_dir: Path) -> None:
    run = _run_serve(SETUP_FAILS, "--port", "0", "--lmtp-port", "0", cwd=work_dir.parent)  # the default ./work

    assert run.returncode == 1, run
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith(
        f"error: setup() of {SETUP_FAILS} failed: "
        "FileNotFoundError: no weights in checkpoints/: run ./build again"
    )
    assert _group_is_gone(_cog_pid(run.stdout))


def test_a_port_in_use_is_reported_before_the_model_is_loaded(work_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _run_serve(ECHO_MODEL, "--port", str(port), "--lmtp-port", "0", cwd=work_dir.parent)

    assert run.returncode == 1
    assert run.stderr == (
        f"error: cannot listen on 127.0.0.1:{port}: the port is in use; "
        "choose another with --port.\n"
    )
    assert "starting the Cog server" not in run.stdout


def test_the_banners_snippets_work_and_sigterm_stops_both_servers(work_dir: Path) -> None:
    serve = _serve(ECHO_MODEL, "--work-dir", str(work_dir), "--port", "0", "--lmtp-port", "0", cwd=work_dir.parent)
    try:
        banner = serve.wait_for("Ctrl-C")
        api_url = re.search(r"Replicate-compatible API\s+(http://127\.0\.0\.1:\d+)", banner)
        assert api_url, banner
        cog_pid = _cog_pid(banner)

        curl = subprocess.run(
            ["bash", "-c", _snippet(banner, "curl")], capture_output=True, text=True, timeout=30
        )
        replicate_client = subprocess.run(
            [str(VENV_PYTHON), "-c", _snippet(banner, "Replicate Python client")],
            capture_output=True, text=True, timeout=60,
        )
        compile(_snippet(banner, "LMQL"), "<LMQL snippet>", "exec")

        assert '"status": "succeeded"' in curl.stdout and "echo-model" in curl.stdout, curl
        assert replicate_client.returncode == 0, replicate_client.stderr
        assert "MSG" in replicate_client.stdout and "model_info" in replicate_client.stdout
        assert "LiteLLM: not for this model: it requires ops_batch_json" in banner

        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(timeout=30) == 0
    finally:
        _stop(serve)

    assert "stopped: the API and the Cog server are down." in serve.output
    assert _group_is_gone(cog_pid)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(api_url.group(1) + f"/v1/models/x/{ECHO_MODEL}", timeout=5)
    assert "POST /v1/models/" in serve.output  # the request log went to the terminal


def test_help_names_every_option(work_dir: Path) -> None:
    run = _run_serve("--help", cwd=work_dir.parent)

    assert run.returncode == 0
    assert run.stdout.startswith("usage: serve")
    for option in ("--work-dir", "--port", "--cog-port", "--host", "--setup-timeout"):
        assert option in run.stdout


def test_ctrl_c_stops_both_servers(work_dir: Path) -> None:
    serve = _serve(ECHO_MODEL, "--work-dir", str(work_dir), "--port", "0", "--lmtp-port", "0", cwd=work_dir.parent)
    try:
        cog_pid = _cog_pid(serve.wait_for("Ctrl-C"))
        serve.process.send_signal(signal.SIGINT)
        assert serve.process.wait(timeout=30) == 0
    finally:
        _stop(serve)
    assert _group_is_gone(cog_pid)


def test_serve_exits_with_an_error_when_the_cog_server_dies(work_dir: Path) -> None:
    serve = _serve(ECHO_MODEL, "--work-dir", str(work_dir), "--port", "0", "--lmtp-port", "0", cwd=work_dir.parent)
    try:
        cog_pid = _cog_pid(serve.wait_for("Ctrl-C"))
        os.killpg(cog_pid, signal.SIGKILL)
        assert serve.process.wait(timeout=30) == 1
    finally:
        _stop(serve)

    assert f"error: the Cog server of {ECHO_MODEL} exited with status -9 while serving" in (
        serve.output
    )
