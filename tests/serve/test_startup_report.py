"""What ./serve reports while it starts, on plain files: the build it serves, setup()'s lines.

The whole of it, through the real CLI and Cog server, is in ``test_cli.py``; these are the cases
a real start does not show on demand (a local checkpoint, an unreadable settings file, a log line
caught half-written).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtp_cog.serve.errors import ServeError
from lmtp_cog.serve.project import read_build_info
from lmtp_cog.serve.setup_log import SetupProgress


def _project(tmp_path: Path, settings: object) -> Path:
    project = tmp_path / "work" / "m"
    project.mkdir(parents=True)
    (project / "model_settings.json").write_text(
        json.dumps({"checkpoint_dir": "checkpoints", **settings})  # type: ignore[dict-item]
    )
    return project


def test_a_build_from_a_local_folder_says_it_has_no_commit(tmp_path: Path) -> None:
    local = {"name": "m", "huggingface": {"repo": "./model", "revision": None, "commit": None}}

    described = read_build_info(_project(tmp_path, local)).describe()

    assert described.startswith(f"{tmp_path.resolve() / 'work' / 'm'}, built 20")
    assert described.endswith(", from ./model (a local folder: no commit)")


def test_a_build_without_a_recorded_source_says_so(tmp_path: Path) -> None:
    described = read_build_info(_project(tmp_path, {"name": "m"})).describe()

    assert described.endswith(", its weights' source is not recorded")


@pytest.mark.parametrize("text", ["{ not json", "[1, 2]"])
def test_an_unreadable_settings_file_is_one_sentence(tmp_path: Path, text: str) -> None:
    project = _project(tmp_path, {"name": "m"})
    (project / "model_settings.json").write_text(text)

    with pytest.raises(ServeError, match=r"model_settings\.json .*: run \./build again\.$"):
        read_build_info(project)


def test_setup_lines_are_shown_once_whole_and_coglets_own_are_not(tmp_path: Path) -> None:
    log = tmp_path / "cog.log"
    said: list[str] = []
    progress = SetupProgress(log, say=said.append, quiet_seconds=5)
    setup = {"level": "INFO", "fields": {"message": "loading shards", "source": "Stderr"}}
    coglet = {"level": "INFO", "fields": {"message": "Spawning worker"}, "target": "coglet"}
    line = json.dumps({**setup, "target": "coglet::setup"}) + "\n"

    progress(0.0)  # no log yet
    log.write_text(json.dumps(coglet) + "\n" + line[:20])
    progress(1.0)  # half a line: not yet
    with log.open("a") as appended:
        appended.write(line[20:] + "Traceback (most recent call last):\n")
    progress(2.0)
    progress(8.0)  # five quiet seconds

    assert said == [
        "  setup: loading shards",
        "  setup: Traceback (most recent call last):",
        f"  still setting up (8 s), see {log}",
    ]
