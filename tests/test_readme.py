"""The README's "by hand" path, run as written: its marked code blocks, in order, in a checkout.

Every block preceded by ``<!-- readme-test: KIND -->`` runs here: ``build`` blocks in bash, the
``serve`` block in the background until the test ends, ``python`` blocks each in a fresh
interpreter of the checkout's venv, from a folder laid out like the repository (links to its
``.venv``, scripts, Makefile, runtime and examples; ``work/`` of its own). The only change made to
the text: the default ports (8000, 8080) become free ones, so that a test run never collides with
a ``./serve`` someone left running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmtp_cog.cogserver import free_port
from tests.support.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
MARKED_BLOCK = re.compile(r"<!-- readme-test: (\w+) -->\n```\w*\n(.*?)\n```", re.S)
CHECKOUT_ENTRIES = (".venv", "build", "serve", "Makefile", "pyproject.toml", "predictors", "examples")
SETUP_TIMEOUT_S = 180


@dataclass(frozen=True)
class Block:
    kind: str
    text: str


def marked_blocks() -> list[Block]:
    return [Block(kind, text) for kind, text in MARKED_BLOCK.findall(README.read_text())]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that looks like the repository to its commands, with a work/ of its own."""
    root = tmp_path_factory.mktemp("readme")
    for name in CHECKOUT_ENTRIES:
        (root / name).symlink_to(REPO_ROOT / name)
    return root


@pytest.fixture(scope="module")
def ports() -> tuple[int, int]:
    return free_port(), free_port()


def _with_ports(text: str, ports: tuple[int, int]) -> str:
    api, lmtp = ports
    return text.replace("127.0.0.1:8000", f"127.0.0.1:{api}").replace(
        "127.0.0.1:8080", f"127.0.0.1:{lmtp}"
    )


def _environment(ports: tuple[int, int]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return env | {
        "REPLICATE_API_TOKEN": "any",
        "REPLICATE_BASE_URL": f"http://127.0.0.1:{ports[0]}",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # LiteLLM: no fetch of its price list
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def served(checkout: Path, ports: tuple[int, int]) -> Iterator[subprocess.Popen[str]]:
    """The ``build`` blocks run, then the ``serve`` block, until the module's tests are done."""
    blocks = marked_blocks()
    env = _environment(ports)
    stale = subprocess.run(["make", "-q", "venv"], cwd=REPO_ROOT, capture_output=True, check=False)
    assert stale.returncode == 0, "the .venv is older than pyproject.toml: run `make venv` first"
    for block in blocks:
        if block.kind == "build":
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.text],
                cwd=checkout, env=env, capture_output=True, text=True, timeout=600, check=False,
            )
            assert done.returncode == 0, f"{block.text}\n{done.stdout}\n{done.stderr}"
    [serve] = [block for block in blocks if block.kind == "serve"]
    api, lmtp = ports
    command = f"{serve.text.split('#')[0].strip()} --port {api} --lmtp-port {lmtp}"
    log = (checkout / "serve.out").open("w")
    server = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=checkout, env=env, stdout=log,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        _wait_for_api(api, server, checkout / "serve.out")
        yield server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def _wait_for_api(port: int, server: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"./serve exited:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/local/tiny-llama"):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"./serve was not ready after {SETUP_TIMEOUT_S} s:\n{log.read_text()}")


def test_the_readme_marks_the_path_it_promises() -> None:
    kinds = [block.kind for block in marked_blocks()]
    assert kinds.count("build") >= 1 and kinds.count("serve") == 1 and kinds.count("python") >= 6


@pytest.mark.parametrize(
    "index", [i for i, block in enumerate(marked_blocks()) if block.kind == "python"]
)
def test_each_python_block_runs_against_the_served_example(
    index: int, served: subprocess.Popen[str], checkout: Path, ports: tuple[int, int]
) -> None:
    block = marked_blocks()[index]
    done = subprocess.run(
        [str(checkout / ".venv" / "bin" / "python"), "-c", _with_ports(block.text, ports)],
        cwd=checkout, env=_environment(ports), capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{block.text}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.stdout.strip(), f"the block printed nothing:\n{block.text}"


def test_serve_said_which_build_it_serves(served: subprocess.Popen[str], checkout: Path) -> None:
    out = (checkout / "serve.out").read_text()
    assert re.search(r"serving \S+/work/tiny-llama, built \d{4}-\d\d-\d\d", out), out
