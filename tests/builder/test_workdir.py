"""A build never destroys what it did not make, and lands everything or nothing.

The real ``./build`` runs as a subprocess on a local tiny checkpoint (no Hub needed) or on a repo
of the session's Hub stand-in; failures are checked the way the CLI promises them: exit 1, one
``error:`` line naming the problem and the fix, no traceback, and ``work/`` and the lock file as
they were, byte for byte and inode for inode.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lmtp_cog import lockfile, render
from lmtp_cog.build import BuildOptions, build
from lmtp_cog.errors import BuildError
from tests.support.builds import (
    BUILD_SCRIPT,
    BuildRun,
    Project,
    closed_endpoint,
    model_table,
    snapshot,
)


@pytest.fixture
def project(tmp_path: Path, tiny_checkpoint: Callable[[str], Path]) -> Project:
    """A user's folder with a checkpoint in ./model and a config naming it as model 'local'."""
    project = Project(tmp_path / "models", endpoint=closed_endpoint())
    shutil.copytree(tiny_checkpoint("safetensors"), project.root / "model")
    project.write_config(model_table("local", "./model"))
    return project


# --- folders that are not ours ---------------------------------------------------------------------


def test_a_folder_the_builder_did_not_make_is_refused_and_kept(project: Project) -> None:
    target = project.work_dir / "local"
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine\n")
    (target / "predict.py").write_text("# my own predictor\n")
    before = snapshot(project.work_dir)

    line = project.build().one_error_line()

    assert str(target) in line and "--force" in line and "not made by ./build" in line
    assert snapshot(project.work_dir) == before


def test_force_builds_into_it_and_keeps_every_other_file(project: Project) -> None:
    target = project.work_dir / "local"
    (target / "data").mkdir(parents=True)
    (target / "notes.txt").write_text("mine\n")
    (target / "data" / "eval.jsonl").write_text("{}\n")

    run = project.build("--force")

    assert run.returncode == 0, run
    assert (target / "notes.txt").read_text() == "mine\n"
    assert (target / "data" / "eval.jsonl").read_text() == "{}\n"
    assert project.settings("local")["name"] == "local"
    assert project.staging_leftovers() == []


def test_a_rebuild_keeps_what_cog_and_the_user_put_in_the_project(project: Project) -> None:
    assert project.build().returncode == 0
    target = project.work_dir / "local"
    (target / ".cog").mkdir()
    (target / ".cog" / "openapi_schema.json").write_text("{}")
    (target / "notes.txt").write_text("mine\n")
    kept = {path: (target / path).stat().st_ino for path in (".cog/openapi_schema.json", "notes.txt")}

    # Nothing changed: nothing is rewritten, the extra files included.
    before = snapshot(project.work_dir)
    assert project.build().returncode == 0
    assert snapshot(project.work_dir) == before

    # A changed setting replaces the project, and carries the extra files over unchanged.
    project.write_config(model_table("local", "./model", config__max_batch_size=2))
    assert project.build().returncode == 0
    assert project.settings("local")["serve"]["max_batch_size"] == 2
    assert {path: (target / path).stat().st_ino for path in kept} == kept
    assert (target / "notes.txt").read_text() == "mine\n"
    assert project.staging_leftovers() == []


def test_a_work_dir_that_is_a_file_is_one_sentence(project: Project) -> None:
    work = project.root / "work"
    work.write_text("not a folder\n")

    line = project.build().one_error_line()

    assert str(work) in line and "--work-dir" in line
    assert work.read_text() == "not a folder\n"


def test_a_target_that_is_a_file_is_refused(project: Project) -> None:
    project.work_dir.mkdir()
    (project.work_dir / "local").write_text("a file where the project goes\n")

    line = project.build().one_error_line()

    assert "local exists and is not a folder" in line
    assert (project.work_dir / "local").read_text() == "a file where the project goes\n"


# --- sources that the build would overwrite ----------------------------------------------------------


@pytest.mark.parametrize("where", ["work/local", "work/local/checkpoints", "work/other"])
def test_a_checkpoint_inside_a_build_folder_is_refused(project: Project, where: str) -> None:
    """``huggingface.repo = "./work/NAME"``: the build would replace the folder holding it."""
    source = project.root / where
    source.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(project.root / "model", source)
    project.write_config(model_table("local", f"./{where}"), model_table("other", f"./{where}"))
    before = snapshot(project.root)

    line = project.build().one_error_line()

    assert f"./{where}" in line and "overlap" in line and "huggingface.repo" in line
    assert snapshot(project.root) == before


def test_a_work_dir_inside_the_checkpoint_is_refused(project: Project) -> None:
    line = project.build("--work-dir", str(project.root / "model" / "work")).one_error_line()
    assert "overlap" in line
    assert not (project.root / "model" / "work").exists()


# --- everything or nothing ------------------------------------------------------------------------


def test_a_failure_at_the_very_last_step_leaves_work_and_lock_unchanged(
    tmp_path: Path,
    hub_repo: Callable[..., str],
    hub_server,
    hf_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lock is staged before any project is installed and renamed into place last; when that
    rename fails, every installed project is put back."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub_server.endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub_server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    config = tmp_path / "config.toml"
    config.write_text(
        'dest_prefix = "r8.im/alice/"\n'
        + model_table("first", hub_repo())
        + model_table("second", hub_repo())
    )
    work = tmp_path / "work"
    options = BuildOptions(config_path=config, work_dir=work)
    build(options, report=lambda line: None)
    work_before, lock_before = snapshot(work), (tmp_path / "config.lock.json").read_bytes()

    config.write_text(
        'dest_prefix = "r8.im/alice/"\n'
        + model_table("first", hub_repo(), config__max_batch_size=2)
        + model_table("second", hub_repo(), config__concurrency=1)
    )

    def refuse(self: lockfile.PendingWrite) -> None:
        raise OSError(errno.EIO, "Input/output error", str(self.path))

    monkeypatch.setattr(lockfile.PendingWrite, "commit", refuse)
    with pytest.raises(BuildError) as caught:
        build(options, report=lambda line: None)

    assert "config.lock.json" in str(caught.value) and "\n" not in str(caught.value)
    assert snapshot(work) == work_before
    assert (tmp_path / "config.lock.json").read_bytes() == lock_before
    leftovers = sorted(path.name for path in tmp_path.iterdir())
    assert leftovers == ["config.lock.json", "config.toml", "hf-cache", "work"]


# --- the operating system says no -------------------------------------------------------------------


def _without_root_powers() -> list[str]:
    """A command prefix under which file permissions hold, root or not (root ignores them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to hold")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def _build_as_user(project: Project, *args: str, **popen: object) -> BuildRun:
    done = subprocess.run(
        [*_without_root_powers(), str(BUILD_SCRIPT), "--config", str(project.config_path), *args],
        env=project.environment(),
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **popen,  # type: ignore[arg-type]
    )
    return BuildRun(tuple(args), done.returncode, done.stdout, done.stderr, 0.0)


@pytest.mark.parametrize("read_only", ["work", "parent"])
def test_an_unwritable_work_dir_is_one_sentence(project: Project, read_only: str) -> None:
    if read_only == "work":
        project.work_dir.mkdir()
        locked = project.work_dir
    else:
        locked = project.root / "locked"
        locked.mkdir()
    locked.chmod(0o555)
    work = project.work_dir if read_only == "work" else locked / "work"
    try:
        run = _build_as_user(project, "--work-dir", str(work))
    finally:
        locked.chmod(0o755)

    line = run.one_error_line()
    assert "permission denied" in line and "--work-dir" in line and str(work) in line
    assert not (work / "local").exists()


def test_an_unwritable_lock_file_folder_changes_nothing(
    project: Project, hub_repo: Callable[..., str], hub_server, tmp_path: Path
) -> None:
    project.endpoint = hub_server.endpoint
    project.hf_cache = tmp_path / "hf-cache"  # writable: only the config's folder is not
    project.write_config(model_table("hub", hub_repo()))
    project.root.chmod(0o555)  # the lock file goes beside config.toml
    work = project.root.parent / "elsewhere"
    try:
        run = _build_as_user(project, "--work-dir", str(work))
    finally:
        project.root.chmod(0o755)

    line = run.one_error_line()
    assert "lock file" in line and "permission denied" in line
    assert not project.lock_path.exists()
    assert not (work / "hub").exists()


def test_an_unwritable_hugging_face_cache_is_one_sentence(
    project: Project, hub_repo: Callable[..., str], hub_server
) -> None:
    project.endpoint = hub_server.endpoint
    project.write_config(model_table("hub", hub_repo()))
    project.hf_cache.mkdir()
    project.hf_cache.chmod(0o555)
    try:
        run = _build_as_user(project)
    finally:
        project.hf_cache.chmod(0o755)

    line = run.one_error_line()
    assert "Hugging Face cache" in line and "permission denied" in line and "HF_HUB_CACHE" in line
    assert not project.work_dir.exists() and not project.lock_path.exists()


def test_a_file_size_limit_is_one_sentence(project: Project) -> None:
    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))  # smaller than the README

    run = _build_as_user(project, preexec_fn=limit_file_size)

    line = run.one_error_line()
    assert "ulimit -f" in line
    assert not (project.work_dir / "local").exists()
    assert project.staging_leftovers() == []


def test_a_full_disk_is_one_sentence_and_changes_nothing(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC cannot be had on demand here: the runtime copy raises it, as a full disk would."""
    assert project.build().returncode == 0
    project.write_config(model_table("local", "./model", config__max_batch_size=2))
    before = snapshot(project.work_dir)

    def full(source: Path, target: Path) -> list[Path]:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(render, "_copy_runtime", full)
    monkeypatch.chdir(project.root)
    with pytest.raises(BuildError) as caught:
        build(BuildOptions(config_path=project.config_path), report=lambda line: None)

    assert "the disk is full" in str(caught.value) and "lmtp_runtime" in str(caught.value)
    assert snapshot(project.work_dir) == before


# --- a checkpoint whose config.json is broken ------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"a', "is not JSON"),
        (b"[]", "holds a JSON list, not an object"),
        (b"\xff\xfe\x00not utf-8", "is not UTF-8 text"),
    ],
    ids=["truncated", "a-list", "not-utf8"],
)
def test_a_corrupt_config_json_is_one_sentence(project: Project, content: bytes, says: str) -> None:
    (project.root / "model" / "config.json").write_bytes(content)

    line = project.build().one_error_line()

    assert "model 'local'" in line and says in line and "re-download" in line
    assert not project.work_dir.exists()


def test_settings_of_a_built_project_mark_it_as_ours(project: Project) -> None:
    assert project.build().returncode == 0
    settings = json.loads((project.work_dir / "local" / "model_settings.json").read_text())
    assert settings["name"] == "local" and settings["lmtp_cog_version"]
    assert render.GENERATED_ENTRIES >= {path.name for path in (project.work_dir / "local").iterdir()}


# --- nothing of the build machine is published ---------------------------------------------------


def test_a_built_project_holds_no_path_of_the_build_machine(
    project: Project, tmp_path: Path
) -> None:
    """What goes into the image (the README, model_settings.json, cog.yaml, the runtime) never
    names a folder of the machine that built it, even for a checkpoint given by absolute path."""
    absolute = tmp_path / "elsewhere" / "my-checkpoint"
    shutil.copytree(project.root / "model", absolute)
    project.write_config(
        model_table("relative", "./model"), model_table("absolute", str(absolute))
    )
    assert project.build().returncode == 0

    machine_paths = {str(project.root), str(tmp_path), str(Path.home()), str(BUILD_SCRIPT.parent)}
    for name in ("relative", "absolute"):
        built = project.work_dir / name
        for path in built.rglob("*"):
            if path.is_file() and path.suffix not in (".safetensors", ".bin"):
                text = path.read_bytes().decode("utf-8", errors="replace")
                leaked = [place for place in machine_paths if place in text]
                assert not leaked, f"{path.relative_to(built)} names {leaked}"
    assert project.settings("absolute")["huggingface"]["repo"] == "my-checkpoint"
    assert project.settings("relative")["huggingface"]["repo"] == "./model"
