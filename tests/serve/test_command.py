"""``./serve`` as a user runs it: the checkout's real script, as a subprocess.

What it prints (the build it serves, setup()'s progress, errors as one line, the banner's
snippets, which are run as printed) and how it stops: both servers, every process, on SIGTERM,
when the model's setup fails or takes too long, and when the Cog server or its worker dies,
before or after setup() (the echo model's ``ECHO_SETUP`` makes it do so).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lmtp_cog.serve.sse import Event, parse_events
from tests.support.paths import SERVE_SCRIPT, VENV_PYTHON
from tests.support.served_projects import ECHO_MODEL, SETUP_FAILS, banner_snippet, make_work_dir


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


def _serve(*args: str, cwd: Path, env: dict[str, str] | None = None) -> ServeProcess:
    process = subprocess.Popen(
        [str(SERVE_SCRIPT), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    serve = ServeProcess(process)
    threading.Thread(target=serve.read, daemon=True).start()
    return serve


def _run_serve(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SERVE_SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
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
            ["bash", "-c", banner_snippet(banner, "curl")], capture_output=True, text=True, timeout=30
        )
        replicate_client = subprocess.run(
            [str(VENV_PYTHON), "-c", banner_snippet(banner, "Replicate Python client")],
            capture_output=True, text=True, timeout=60,
        )
        compile(banner_snippet(banner, "LMQL"), "<LMQL snippet>", "exec")

        assert '"status": "succeeded"' in curl.stdout and "echo-model" in curl.stdout, curl
        assert replicate_client.returncode == 0, replicate_client.stderr
        assert "MSG" in replicate_client.stdout and "model_info" in replicate_client.stdout
        assert "LiteLLM: not for this model: it requires ops_batch_json" in banner
        assert "OpenAI-compatible API     not for this model: " in banner  # no tokenizer

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
    assert run.stdout.startswith("usage: lmtp-cog serve")
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


# --- a Cog server or worker that dies, before or after setup() ---------------------------------


def _cog_worker_pid(cog_pid: int, timeout: float = 10.0) -> int:
    """The pid of the Cog server's worker process (its one child), from /proc."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [
            int(child)
            for tasks in Path(f"/proc/{cog_pid}/task").glob("*/children")
            for child in tasks.read_text().split()
        ]
        if children:
            assert len(children) == 1, children
            return children[0]
        time.sleep(0.05)
    raise AssertionError(f"the Cog server {cog_pid} has no worker process")


def _post_prediction(api_url: str, inputs: dict[str, str], **headers: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{api_url}/v1/models/someone/{ECHO_MODEL}/predictions",
        data=json.dumps({"input": inputs}).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def _stream_events(url: str) -> list[Event]:
    request = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return list(parse_events(iter(response.readline, b"")))


def _generate(prompt_last: int, max_tokens: int, delay: float) -> dict[str, str]:
    op = {"stream_id": 1, "prompt": [prompt_last], "max_tokens": max_tokens, "delay": delay}
    return {"ops_batch_json": json.dumps([["GENERATE", op]])}


async def _websocket_answer(endpoint: str, message: str) -> str:
    async with aiohttp.ClientSession() as session, session.ws_connect(f"http://{endpoint}") as ws:
        await ws.send_str(message)
        return await ws.receive_str(timeout=60)


def test_a_dead_cog_worker_fails_every_waiting_prediction_and_ends_serve(work_dir: Path) -> None:
    serve = _serve(
        ECHO_MODEL, "--work-dir", str(work_dir), "--port", "0", "--lmtp-port", "0",
        cwd=work_dir.parent,
    )
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        banner = serve.wait_for("Ctrl-C")
        api_url = re.search(r"Replicate-compatible API\s+(http://\S+)", banner).group(1)
        lmtp = re.search(r"LMTP websocket \(LMQL\)\s+ws://(\S+)/", banner).group(1)
        log_path = re.search(r"\(log: (\S+)\)\n", banner).group(1)
        cog_pid = _cog_pid(banner)
        running = _post_prediction(api_url, _generate(10, 100, delay=0.2))  # 20 s, unless stopped
        queued = _post_prediction(api_url, _generate(20, 2, delay=0.01))
        assert queued["status"] == "starting"
        streams = [pool.submit(_stream_events, p["urls"]["stream"]) for p in (running, queued)]
        waiting = pool.submit(_post_prediction, api_url, _generate(30, 2, 0.01), Prefer="wait")
        generate = 'GENERATE {"stream_id": 1, "prompt": [40], "max_tokens": 2}'
        websocket = pool.submit(asyncio.run, _websocket_answer(lmtp, generate))

        # Each request is queued within milliseconds; noticing the death takes a second or two.
        os.kill(_cog_worker_pid(cog_pid), signal.SIGKILL)
        killed = time.monotonic()
        status = serve.process.wait(timeout=60)
        took = time.monotonic() - killed

        died = (
            f"the Cog worker of {ECHO_MODEL} died while serving (Cog reports UNHEALTHY); "
            f"see {log_path}."
        )
        waited = waiting.result(timeout=30)
        running_events, queued_events = (stream.result(timeout=30) for stream in streams)
        answer = websocket.result(timeout=30)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        _stop(serve)

    assert status == 1 and took < 15, (status, took, serve.output)
    errors = [line for line in serve.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {died}"], serve.output
    assert "Traceback" not in serve.output
    # What was queued fails with that sentence; what ran fails with Cog's own "Worker crashed".
    assert (waited["status"], waited["error"]) == ("failed", died)
    assert [e.name for e in queued_events] == ["error", "done"]
    assert json.loads(queued_events[0].data) == {"detail": died}
    assert [e.name for e in running_events][-2:] == ["error", "done"]
    error = f"the prediction failed: {died}"
    assert answer == f'TOKEN [{{"stream_id":1,"error":{json.dumps(error)}}}]'
    assert _group_is_gone(cog_pid)


def test_a_worker_that_dies_during_setup_is_reported_at_once(work_dir: Path) -> None:
    started = time.monotonic()
    run = _run_serve(
        ECHO_MODEL, "--port", "0", "--lmtp-port", "0",
        cwd=work_dir.parent, env={"ECHO_SETUP": "exit"},
    )

    assert run.returncode == 1, run
    assert time.monotonic() - started < 30
    log_path = re.search(r"\(log: (\S+)\)", run.stdout).group(1)
    assert run.stderr == (
        f"error: the Cog worker running setup() of {ECHO_MODEL} died (killed, out of memory, or a "
        f"crash in native code); see {log_path}.\n"
    )
    assert _group_is_gone(_cog_pid(run.stdout))


def test_a_cog_server_that_dies_during_setup_is_reported_at_once(work_dir: Path) -> None:
    started = time.monotonic()
    run = _run_serve(
        ECHO_MODEL, "--port", "0", "--lmtp-port", "0",
        cwd=work_dir.parent, env={"ECHO_SETUP": "kill-server"},
    )

    assert run.returncode == 1, run
    assert time.monotonic() - started < 30  # the worker would sit in setup() for 30 s
    log_path = re.search(r"\(log: (\S+)\)", run.stdout).group(1)
    assert run.stderr == (
        f"error: the Cog server for {ECHO_MODEL} exited with status -9 before setup() finished; "
        f"see {log_path}.\n"
    )
    assert _group_is_gone(_cog_pid(run.stdout))


def test_a_setup_that_takes_too_long_is_reported_when_the_time_is_up(work_dir: Path) -> None:
    run = _run_serve(
        ECHO_MODEL, "--port", "0", "--lmtp-port", "0", "--setup-timeout", "1.5",
        cwd=work_dir.parent, env={"ECHO_SETUP": "slow:60"},
    )

    assert run.returncode == 1, run
    log_path = re.search(r"\(log: (\S+)\)", run.stdout).group(1)
    assert run.stderr == (
        f"error: setup() of {ECHO_MODEL} did not finish within 1.5 s (allow it more with "
        f"--setup-timeout SECONDS); see {log_path}.\n"
    )
    assert _group_is_gone(_cog_pid(run.stdout))


# --- what ./serve says while it starts -----------------------------------------------------------


def test_serve_names_its_build_and_shows_the_progress_of_setup(tmp_path: Path) -> None:
    work = make_work_dir(tmp_path)
    settings_path = work / ECHO_MODEL / "model_settings.json"
    settings = json.loads(settings_path.read_text())
    commit = "0123456789abcdef0123456789abcdef01234567"
    settings["huggingface"] = {"repo": "someone/echo-base", "revision": None, "commit": commit}
    settings_path.write_text(json.dumps(settings))

    serve = _serve(
        ECHO_MODEL, "--port", "0", "--lmtp-port", "0", "--quiet-setup-seconds", "0.5",
        cwd=tmp_path, env={"ECHO_SETUP": "slow:1.5"},
    )
    try:
        output = serve.wait_for("Ctrl-C")
    finally:
        _stop(serve)

    first, second, *rest = output.splitlines()
    build = re.fullmatch(
        rf"serving (\S+), built (\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{{4}}), "
        rf"from someone/echo-base at commit {commit}",
        first,
    )
    assert build and build.group(1) == str(work.resolve() / ECHO_MODEL), first
    built = datetime.strptime(build.group(2), "%Y-%m-%d %H:%M:%S %z").timestamp()
    assert abs(built - settings_path.stat().st_mtime) < 1
    log_path = re.fullmatch(r"starting the Cog server .*\(log: (\S+)\)", second).group(1)
    cog_port = re.search(r"Cog server\s+http://127\.0\.0\.1:(\d+)", output).group(1)
    assert log_path == f"work/_logs/{ECHO_MODEL}.cog-{cog_port}.log"
    setup = rest[: next(i for i, line in enumerate(rest) if "is ready after" in line)]
    loading, ready = "  setup: echo model: loading slowly", "  setup: echo model ready"
    assert [line for line in setup if line.startswith("  setup: ")] == [loading, ready]
    still = rf"  still setting up \(\d+ s\), see {re.escape(log_path)}"
    assert all(line in (loading, ready) or re.fullmatch(still, line) for line in setup), setup
    assert setup.index(ready) - setup.index(loading) > 1, "no word during the quiet 1.5 s"
    assert f"  Build                     {build.group(1)}, built {build.group(2)}" in output
    assert f"model and Cog server: {tmp_path.resolve() / log_path}" in output
