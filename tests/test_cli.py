"""The ``./build`` command line: options, messages and exit codes, run as a user runs it.

Each test runs the checkout's real ``./build`` script as a subprocess. None of them needs the
Hub: ``HF_ENDPOINT`` points at a closed port, so a test that reached for the network would fail.
What a build produces is tested in ``tests/builder/test_build.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.builds import (
    BUILD_SCRIPT,
    Project,
    closed_endpoint,
    files_under,
    isolated_environment,
    model_table,
    run_build,
)


OPTIONS = ("--config", "--work-dir", "--only", "--dry-run", "--offline", "--update", "--list", "-v")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path / "models", endpoint=closed_endpoint())


def _environment(tmp_path: Path) -> dict[str, str]:
    return isolated_environment(
        endpoint=closed_endpoint(), hf_home=tmp_path / "hf-home", hf_cache=tmp_path / "hf-cache"
    )


def test_help_exits_0_and_names_every_option(tmp_path: Path) -> None:
    run = run_build(["--help"], env=_environment(tmp_path), cwd=tmp_path)

    assert run.returncode == 0, run
    assert run.stdout.startswith("usage: lmtp-cog build")
    for option in OPTIONS:
        assert option in run.stdout
    assert not any(tmp_path.iterdir())


def test_version_names_the_toolkit(project: Project) -> None:
    from lmtp_cog import __version__

    run = project.build("--version")

    assert run.returncode == 0, run
    assert run.stdout.strip() == f"lmtp-cog {__version__}"


def test_list_prints_each_model_and_fetches_nothing(project: Project) -> None:
    project.write_config(
        model_table("base-8bit", "meta-llama/Llama-2-7b-hf", config__load_in_8bit=True),
        model_table("chat-4bit", "meta-llama/Llama-2-7b-chat-hf", huggingface__version="v1.0",
                    config__load_in_4bit=True),
        model_table("plain", "acme/plain"),
    )  # fmt: skip

    run = project.build("--list")

    assert run.returncode == 0, run
    assert [line.split("\t") for line in run.stdout.splitlines()] == [
        ["base-8bit", "meta-llama/Llama-2-7b-hf", "8bit"],
        ["chat-4bit", "meta-llama/Llama-2-7b-chat-hf@v1.0", "4bit"],
        ["plain", "acme/plain", "none"],
    ]
    assert run.stderr == ""
    assert not project.work_dir.exists() and not project.lock_path.exists()


def test_only_with_an_unknown_name_suggests_the_closest(project: Project) -> None:
    project.write_config(model_table("tiny-8bit", "acme/tiny"), model_table("other", "acme/other"))

    line = project.build("--only", "tiny-8bt").one_error_line()

    assert "'tiny-8bt'" in line and "did you mean 'tiny-8bit'?" in line
    assert str(project.config_path) in line
    assert not project.work_dir.exists()


def test_verbose_adds_the_traceback_to_the_error(project: Project) -> None:
    project.write_config(model_table("tiny", "acme/tiny", config__load_in_9bit=True))

    quiet = project.build()
    verbose = project.build("-v")

    line = quiet.one_error_line()
    assert "config.load_in_9bit" in line
    assert verbose.returncode == 1, verbose
    assert "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr_lines[-1] == line


def test_without_config_toml_it_says_how_to_make_one(tmp_path: Path) -> None:
    folder = tmp_path / "fresh-clone"
    folder.mkdir()

    line = run_build([], env=_environment(tmp_path), cwd=folder).one_error_line()

    assert "config.toml" in line and "`cp config.toml.example config.toml`" in line
    assert not any(folder.iterdir())


def test_work_dir_option_puts_the_projects_there(
    project: Project, tmp_path: Path, tiny_checkpoint: Callable[[str], Path]
) -> None:
    shutil.copytree(tiny_checkpoint("safetensors"), project.root / "model")
    project.write_config(model_table("local", "./model"))
    elsewhere = tmp_path / "elsewhere" / "projects"

    # From another folder: the relative ./model is found beside config.toml, not in the cwd.
    run = run_build(
        ["--config", str(project.config_path), "--work-dir", str(elsewhere)],
        env=project.environment(),
        cwd=tmp_path,
    )

    assert run.returncode == 0, run
    assert files_under(elsewhere / "local" / "checkpoints") == files_under(project.root / "model")
    assert not project.work_dir.exists()


def test_build_script_without_a_venv_says_make_venv(tmp_path: Path) -> None:
    """A fresh clone before ``make venv``: the script says what to run, not a Python error."""
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy2(BUILD_SCRIPT, clone / "build")

    done = subprocess.run(
        [str(clone / "build"), "--help"], cwd=clone, env={"PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip

    assert done.returncode == 1, done
    assert done.stderr == (
        f"error: no virtual environment in {clone}/.venv; run 'make venv' first.\n"
    )
