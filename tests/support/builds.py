"""Helpers for the end-to-end tests of ``./build``.

A :class:`Project` is what a user's checkout looks like: a folder with config.toml, and beside it
``work/`` and the lock file once a build ran. It has its own Hugging Face home and cache, so the
real ``./build`` script, run as a subprocess with ``HF_ENDPOINT`` pointing at the Hub stand-in,
never touches the user's cache or token. :func:`snapshot` records every file's inode, mtime and
content, which is how the tests tell "nothing was rewritten" from "rewritten with the same bytes".
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.paths import BUILD_SCRIPT, REPO_ROOT

RUNTIME_DIR = REPO_ROOT / "predictors" / "lmtp_runtime"

LMQL_CONFIG = REPO_ROOT / "tests" / "fixtures" / "lmql-config.toml.example"
"""LMQL's own ``scripts/replicate-build/config.toml.example``, kept verbatim."""

LMQL_REPOS = tuple(
    f"meta-llama/Llama-2-{size}-{kind}"
    for size in ("7b", "13b", "70b")
    for kind in ("hf", "chat-hf")
)
"""The six Hub repos LMQL's config builds its 18 models from."""

NEEDED_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
)
"""What a tiny safetensors checkpoint needs to load: every build must ship these."""
UNNEEDED_FILES = ("pytorch_model.bin", "original/consolidated.00.pth", ".gitattributes")
"""What :func:`hub_files` adds that loading must never fetch: the other weight formats."""

HF_VARIABLES_PREFIXES = ("HF_", "HUGGING_FACE_", "HUGGINGFACE_")


def lmql_config() -> Path:
    """LMQL's example config (in this repository: tests read nothing outside it)."""
    return LMQL_CONFIG


def hub_files(
    checkpoint: Path, *, readme: str = "# A tiny model\n"
) -> dict[str, bytes | str | Path]:
    """A checkpoint laid out like a real Llama repo on the Hub.

    Besides the checkpoint: the model card and license, a stale ``.bin`` copy of the weights and
    Meta's ``original/`` checkpoint. A build must fetch neither of the latter two.
    """
    files: dict[str, bytes | str | Path] = {
        path.relative_to(checkpoint).as_posix(): path
        for path in sorted(checkpoint.rglob("*"))
        if path.is_file()
    }
    files |= {
        "README.md": readme,
        "LICENSE.txt": "LLAMA 2 COMMUNITY LICENSE AGREEMENT (abridged for tests)\n",
        ".gitattributes": "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "pytorch_model.bin": b"stale pickled weights, never to be fetched" * 100,
        "original/consolidated.00.pth": b"Meta's own checkpoint format" * 100,
    }
    return files


# --- config.toml -------------------------------------------------------------------------------


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's, astral planes aside)."""
    return json.dumps(text)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def model_table(name: str, repo: str, **keys: object) -> str:
    """A ``[models.NAME]`` table; ``keys`` are dotted keys with ``__`` for the dot.

    ``model_table("m", "acme/x", config__load_in_8bit=True)`` writes
    ``config.load_in_8bit = true``.
    """
    lines = [f"[models.{toml_string(name)}]", f"huggingface.repo = {toml_string(repo)}"]
    lines += [f"{key.replace('__', '.')} = {toml_value(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


# --- running ./build ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRun:
    """One finished run of the ``./build`` command."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()

    def one_error_line(self) -> str:
        """The build failed the way the CLI promises: exit 1, one ``error:`` line, no traceback;
        that line."""
        assert self.returncode == 1, self
        assert len(self.stderr_lines) == 1 and "Traceback" not in self.stderr, self
        line = self.stderr_lines[0]
        assert line.startswith("error: "), self
        return line

    def __str__(self) -> str:
        """For assertion messages: everything needed to see why a run did what it did."""
        return (
            f"./build {' '.join(self.args)} → exit {self.returncode} in {self.seconds:.2f} s\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def run_build(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float = 120
) -> BuildRun:
    """Run the real ``./build`` script of this checkout, as a user would."""
    started = time.monotonic()
    done = subprocess.run(
        [str(BUILD_SCRIPT), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return BuildRun(
        args=tuple(args),
        returncode=done.returncode,
        stdout=done.stdout,
        stderr=done.stderr,
        seconds=time.monotonic() - started,
    )


def isolated_environment(
    *, endpoint: str, hf_home: Path, hf_cache: Path, token: str | None = None
) -> dict[str, str]:
    """This process's environment with every Hugging Face setting replaced by the test's own.

    The user's ``HF_TOKEN``, ``HF_HUB_OFFLINE`` or cache location must not leak into a test, and
    ``HF_HOME`` points away from the stored ``hf auth login`` token.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(HF_VARIABLES_PREFIXES)}
    env |= {"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_cache)}
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def closed_endpoint() -> str:
    """A URL on 127.0.0.1 where nothing listens: every connection is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Project:
    """A user's folder: config.toml, ``work/``, the lock file, and a private Hugging Face cache."""

    def __init__(self, root: Path, *, endpoint: str) -> None:
        self.root = root
        self.endpoint = endpoint
        self.config_path = root / "config.toml"
        self.work_dir = root / "work"
        self.lock_path = root / "config.lock.json"
        self.hf_home = root / "hf-home"
        self.hf_cache = root / "hf-cache"
        root.mkdir(parents=True, exist_ok=True)

    def write_config(self, *tables: str, dest_prefix: str = "r8.im/alice/") -> Path:
        text = f"dest_prefix = {toml_string(dest_prefix)}\n\n[models]\n\n" + "\n".join(tables)
        self.config_path.write_text(text, encoding="utf-8")
        return self.config_path

    def environment(
        self, *, endpoint: str | None = None, token: str | None = None
    ) -> dict[str, str]:
        return isolated_environment(
            endpoint=endpoint or self.endpoint,
            hf_home=self.hf_home,
            hf_cache=self.hf_cache,
            token=token,
        )

    def build(
        self,
        *args: str,
        endpoint: str | None = None,
        token: str | None = None,
        timeout: float = 120,
    ) -> BuildRun:
        """``./build --config config.toml ARGS``, from the project folder."""
        return run_build(
            ["--config", str(self.config_path), *args],
            env=self.environment(endpoint=endpoint, token=token),
            cwd=self.root,
            timeout=timeout,
        )

    def settings(self, name: str) -> dict[str, Any]:
        return json.loads((self.work_dir / name / "model_settings.json").read_text())

    def lock(self) -> dict[str, Any]:
        return json.loads(self.lock_path.read_text())

    def staging_leftovers(self) -> list[str]:
        """Anything a build should have cleaned up: staging folders, replaced trees."""
        if not self.work_dir.exists():
            return []
        return sorted(p.name for p in self.work_dir.iterdir() if p.name.startswith("."))

    def snapshot_blob(self, repo: str, commit: str, path: str) -> Path:
        """The blob the Hugging Face cache holds for ``path`` of ``repo`` at ``commit``."""
        folder = "models--" + repo.replace("/", "--")
        return (self.hf_cache / folder / "snapshots" / commit / path).resolve()


# --- what is on disk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileState:
    """What "unchanged" means for one entry: same inode, mode, mtime and content."""

    kind: str
    mode: int
    inode: int
    mtime_ns: int
    content: str
    """sha256 of a file, the target of a link, empty for a folder."""


def snapshot(root: Path) -> dict[str, FileState]:
    """Every entry under ``root`` (not ``root`` itself) by relative path; empty when absent."""
    if not root.exists():
        return {}
    states = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            kind, content = "link", os.readlink(path)
        elif stat.S_ISDIR(info.st_mode):
            kind, content = "folder", ""
        else:
            kind, content = "file", hashlib.sha256(path.read_bytes()).hexdigest()
        states[path.relative_to(root).as_posix()] = FileState(
            kind, stat.S_IMODE(info.st_mode), info.st_ino, info.st_mtime_ns, content
        )
    return states


def files_under(root: Path) -> set[str]:
    """Relative paths of the files under ``root``."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def runtime_files() -> dict[str, bytes]:
    """The predictor runtime a project ships, by relative path (no bytecode)."""
    return {
        p.relative_to(RUNTIME_DIR).as_posix(): p.read_bytes()
        for p in RUNTIME_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def parse_size(text: str) -> float:
    """``"557.4 KB"`` → 557400.0: a size as the build prints it, decimal units."""
    number, unit = text.split()
    return float(number) * {"B": 1, "KB": 1e3, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
