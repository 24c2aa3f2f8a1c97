"""``./build`` end to end: the real command, the real Hub client over HTTP, real tiny checkpoints.

Every build here runs the checkout's ``./build`` script as a subprocess, as a user would, with
``HF_ENDPOINT`` pointing at a Hub stand-in on 127.0.0.1 and a Hugging Face cache of the test's
own. The stand-in records every request, so the tests can say exactly what a build fetched, and
:func:`~builds.snapshot` records inodes and mtimes, so they can tell a file left alone
from one rewritten with the same bytes.

The module has its own stand-in (not the session's): it serves the real Llama 2 repo names that
LMQL's config asks for, which no other test may claim, and its log holds only these builds.
Run with ``-s`` to see the measured build times.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.hub_server import HubServer
from tests.support.builds import (
    LMQL_REPOS,
    NEEDED_FILES,
    UNNEEDED_FILES,
    BuildRun,
    Project,
    closed_endpoint,
    files_under,
    hub_files,
    lmql_config,
    model_table,
    parse_size,
    run_build,
    runtime_files,
    snapshot,
)

NOOP_SUBPROCESS_BOUND_S = 3.0
"""A rebuild with nothing to do, Python's start included; measured at about 0.7 s."""
NOOP_IN_PROCESS_BOUND_S = 1.0

PROJECT_LAYOUT = {
    ".dockerignore",
    ".gitignore",
    "README.md",
    "checkpoints",
    "cog.yaml",
    "lmtp_runtime",
    "model_settings.json",
    "predict.py",
    "push",
    "requirements.txt",
}
"""Everything ``work/NAME`` holds when ``dest_prefix`` names a real account."""

Publish = Callable[..., str]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Callable[[str], Path]) -> Path:
    """A real tiny Llama checkpoint (safetensors); read-only."""
    return tiny_checkpoint("safetensors")


@pytest.fixture(scope="module")
def hub(checkpoint: Path) -> Iterator[HubServer]:
    """This module's Hub stand-in, already serving LMQL's six Llama 2 repos (tiny inside)."""
    with HubServer() as server:
        for repo in LMQL_REPOS:
            server.add_repo(repo, hub_files(checkpoint, readme=f"# {repo}\n"))
        yield server


@pytest.fixture
def project(tmp_path: Path, hub: HubServer) -> Project:
    return Project(tmp_path / "models", endpoint=hub.endpoint)


_REPO_NUMBERS = itertools.count()


@pytest.fixture
def publish(hub: HubServer, checkpoint: Path, request: pytest.FixtureRequest) -> Publish:
    """``publish(files=None, *, gated_token=None)`` → a new repo on the stand-in, for this test.

    ``files`` defaults to the tiny checkpoint laid out like a real Llama repo. Repo names start
    with the test's name, to tell them apart in the stand-in's log.
    """
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_"))[:50].strip("-")

    def publish(files: object = None, *, gated_token: str | None = None) -> str:
        repo = f"acme/{stem}-{next(_REPO_NUMBERS)}"
        hub.add_repo(repo, files or hub_files(checkpoint), gated_token=gated_token)
        return repo

    return publish


@pytest.fixture(scope="module")
def encoder_decoder(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """A real tiny T5 checkpoint (random weights), with the tiny model's tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-t5")
    config = T5Config(vocab_size=600, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    T5ForConditionalGeneration(config).save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(checkpoint / name, out / name)
    return out


def _ok(run: BuildRun) -> None:
    assert run.returncode == 0, run


# --- LMQL's own configuration --------------------------------------------------------------------


def _lmql_project(project: Project) -> dict[str, str]:
    """Copy LMQL's config into the project byte for byte; returns model name → repo."""
    shutil.copyfile(lmql_config(), project.config_path)
    models = tomllib.loads(project.config_path.read_text())["models"]
    return {name: table["huggingface"]["repo"] for name, table in models.items()}


def _quantization_in(name: str) -> str:
    """LMQL names its models ``REPO--lmql[-4bit|-8bit]``."""
    return name.rsplit("-", 1)[1] if name.endswith(("-4bit", "-8bit")) else "none"


def test_lmqls_config_builds_all_18_models_unchanged(project: Project, hub: HubServer) -> None:
    repos = _lmql_project(project)
    assert len(repos) == 18

    run = project.build()
    print(f"\nLMQL's 18 models, first build: {run.seconds:.2f} s")

    _ok(run)
    assert sorted(p.name for p in project.work_dir.iterdir()) == sorted(repos)
    lock = project.lock()["models"]
    for name, repo in repos.items():
        out = project.work_dir / name
        settings = project.settings(name)
        assert settings["huggingface"] == {"repo": repo, "revision": None, "commit": hub.head(repo)}
        assert settings["load"]["quantization"] == _quantization_in(name)
        assert settings["destination"] is None
        # The placeholder account: nowhere to push to, so no push script and no image name.
        assert not (out / "push").exists()
        assert "image" not in yaml.safe_load((out / "cog.yaml").read_text())
        assert lock[name]["commit"] == hub.head(repo)
    assert "dest_prefix" in run.stdout and "no `push` script" in run.stdout
    assert project.config_path.read_bytes() == lmql_config().read_bytes()
    # Three models per repo share one copy of the weights: the cache's blob, hard-linked.
    for repo in LMQL_REPOS:
        sharing = [name for name, r in repos.items() if r == repo]
        weights = [project.work_dir / n / "checkpoints" / "model.safetensors" for n in sharing]
        inodes = {path.stat().st_ino for path in weights}
        assert len(sharing) == 3 and len(inodes) == 1


def test_lmqls_config_builds_a_subset_with_only(project: Project, hub: HubServer) -> None:
    repos = _lmql_project(project)
    chosen = ["llama-2-13b-chat-hf--lmql-8bit", "llama-2-70b-hf--lmql"]
    hub.clear_requests()

    run = project.build("--only", *chosen)

    _ok(run)
    assert sorted(p.name for p in project.work_dir.iterdir()) == chosen
    assert sorted(project.lock()["models"]) == chosen
    fetched_from = {repo for repo in LMQL_REPOS if hub.requests_for(repo)}
    assert fetched_from == {repos[name] for name in chosen}


# --- a full build ---------------------------------------------------------------------------------


def test_hub_model_build_writes_the_whole_project(
    project: Project, hub: HubServer, publish: Publish
) -> None:
    repo = publish()
    project.write_config(model_table("tiny-8bit", repo, config__load_in_8bit=True))
    hub.clear_requests()

    run = project.build()
    print(f"\nfirst build of one model: {run.seconds:.2f} s")

    _ok(run)
    commit = hub.head(repo)
    out = project.work_dir / "tiny-8bit"
    assert {p.name for p in out.iterdir()} == PROJECT_LAYOUT
    assert commit[:12] in run.stdout and "tiny-8bit: built" in run.stdout

    settings = project.settings("tiny-8bit")
    assert settings["huggingface"] == {"repo": repo, "revision": None, "commit": commit}
    assert settings["destination"] == "r8.im/alice/tiny-8bit"
    assert settings["load"]["quantization"] == "8bit"
    cog = yaml.safe_load((out / "cog.yaml").read_text())
    assert cog["image"] == "r8.im/alice/tiny-8bit"
    assert cog["build"]["python_requirements"] == "requirements.txt"
    assert (out / "push").stat().st_mode & 0o111 == 0o111
    runtime = out / "lmtp_runtime"
    assert {p: (runtime / p).read_bytes() for p in files_under(runtime)} == runtime_files()
    readme = (out / "README.md").read_text()
    assert repo in readme and commit in readme

    # checkpoints/ holds exactly the files the lock records, which are the ones downloaded.
    shipped = files_under(out / "checkpoints")
    locked = project.lock()["models"]["tiny-8bit"]
    assert locked["commit"] == commit
    assert shipped == {f["path"] for f in locked["files"]} == set(hub.downloaded(repo))
    assert NEEDED_FILES <= shipped
    assert not shipped & set(UNNEEDED_FILES)
    # ... each one a hard link to the blob in the (test's own) Hugging Face cache.
    for path in shipped:
        blob = project.snapshot_blob(repo, commit, path)
        assert blob.is_relative_to(project.hf_cache.resolve())
        assert (out / "checkpoints" / path).stat().st_ino == blob.stat().st_ino, path


# --- rebuilding -----------------------------------------------------------------------------------


def test_rebuild_with_nothing_changed_touches_nothing(
    project: Project, hub: HubServer, publish: Publish, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write_config(
        model_table("first", publish(), config__load_in_8bit=True),
        model_table("second", publish(), config__torch_dtype="bfloat16"),
    )
    _ok(project.build())
    work_before = snapshot(project.work_dir)
    lock_before = project.lock_path.read_bytes()
    lock_mtime = project.lock_path.stat().st_mtime_ns
    hub.clear_requests()

    run = project.build()
    print(f"\nno-op rebuild, ./build as a subprocess: {run.seconds:.2f} s")

    _ok(run)
    assert "first: up to date" in run.stdout and "second: up to date" in run.stdout
    assert hub.requests == []
    assert snapshot(project.work_dir) == work_before
    assert project.lock_path.read_bytes() == lock_before
    assert project.lock_path.stat().st_mtime_ns == lock_mtime
    assert project.staging_leftovers() == []
    assert run.seconds < NOOP_SUBPROCESS_BOUND_S

    # The same no-op in process: the pipeline itself, without Python's start.
    from huggingface_hub import constants

    from lmtp_cog.build import BuildOptions, build

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(project.hf_cache))
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    lines: list[str] = []
    started = time.monotonic()
    monkeypatch.chdir(project.root)
    report = build(BuildOptions(config_path=project.config_path), report=lines.append)
    elapsed = time.monotonic() - started
    print(f"no-op rebuild, build() in process: {elapsed:.3f} s")

    assert [o.changed for o in report.outcomes] == [False, False], lines
    assert hub.requests == []
    assert snapshot(project.work_dir) == work_before
    assert project.lock_path.read_bytes() == lock_before
    assert elapsed < NOOP_IN_PROCESS_BOUND_S


def test_lock_keeps_the_commit_until_update(
    project: Project, hub: HubServer, publish: Publish, checkpoint: Path
) -> None:
    repo = publish()
    project.write_config(model_table("moving", repo))
    _ok(project.build())
    locked = hub.head(repo)
    new_generation_config = json.dumps({"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.5})
    moved = hub.commit(
        repo, hub_files(checkpoint) | {"generation_config.json": new_generation_config}
    )
    assert moved != locked
    hub.clear_requests()

    kept = project.build()

    _ok(kept)
    assert project.settings("moving")["huggingface"]["commit"] == locked
    assert project.lock()["models"]["moving"]["commit"] == locked
    assert hub.requests_for(repo) == []

    updated = project.build("--update")

    _ok(updated)
    assert moved[:12] in updated.stdout
    assert project.settings("moving")["huggingface"]["commit"] == moved
    assert project.lock()["models"]["moving"]["commit"] == moved
    shipped = project.work_dir / "moving" / "checkpoints" / "generation_config.json"
    assert shipped.read_text() == new_generation_config
    blob = project.snapshot_blob(repo, moved, "generation_config.json")
    assert shipped.stat().st_ino == blob.stat().st_ino
    # Only the changed file crossed the network; the cache already had every other blob.
    assert hub.downloaded(repo) == ["generation_config.json"]


# --- offline --------------------------------------------------------------------------------------


def test_offline_rebuild_needs_no_hub(project: Project, hub: HubServer, publish: Publish) -> None:
    repo = publish()
    project.write_config(model_table("cached", repo))
    _ok(project.build())
    before = snapshot(project.work_dir)

    offline = project.build("--offline", endpoint=closed_endpoint())

    _ok(offline)
    assert "cached: up to date" in offline.stdout
    assert snapshot(project.work_dir) == before

    # Without the lock, the cache alone knows which commit the default branch was at.
    project.lock_path.unlink()
    relocked = project.build("--offline", endpoint=closed_endpoint())

    _ok(relocked)
    assert project.lock()["models"]["cached"]["commit"] == hub.head(repo)
    assert snapshot(project.work_dir) == before

    # And --offline sends nothing at all, even with a Hub in reach.
    hub.clear_requests()
    _ok(project.build("--offline"))
    assert hub.requests == []


def test_hf_hub_offline_means_offline(project: Project, hub: HubServer, publish: Publish) -> None:
    """The Hub's own convention, HF_HUB_OFFLINE=1, builds from the cache as --offline does."""
    repo = publish()
    project.write_config(model_table("cached", repo))
    _ok(project.build())
    project.lock_path.unlink()
    hub.clear_requests()
    environment = {**project.environment(), "HF_HUB_OFFLINE": "1"}
    run = run_build(["--config", str(project.config_path)], env=environment, cwd=project.root)

    _ok(run)
    assert hub.requests == []
    assert project.lock()["models"]["cached"]["commit"] == hub.head(repo)

    project.write_config(model_table("never-fetched", publish()))
    run = run_build(["--config", str(project.config_path)], env=environment, cwd=project.root)
    line = run.one_error_line()
    assert "never-fetched" in line and "HF_HUB_OFFLINE" in line


def test_offline_with_an_empty_cache_names_the_model(project: Project, publish: Publish) -> None:
    project.write_config(model_table("never-fetched", publish()))

    run = project.build("--offline", endpoint=closed_endpoint())

    line = run.one_error_line()
    assert "never-fetched" in line and "without --offline" in line
    assert not project.work_dir.exists() and not project.lock_path.exists()


# --- dry run --------------------------------------------------------------------------------------

_PLAN_FILE = re.compile(r"^\s+(?P<path>\S+)\s+(?P<size>[\d.]+ [kKMG]?B)$")


def test_dry_run_prints_the_plan_and_writes_nothing(
    project: Project, hub: HubServer, publish: Publish, checkpoint: Path
) -> None:
    repo = publish()
    project.write_config(model_table("planned", repo, config__load_in_4bit=True))
    hub.clear_requests()

    dry = project.build("--dry-run")

    _ok(dry)
    assert not project.work_dir.exists() and not project.lock_path.exists()
    assert hub.downloaded(repo) == []
    listed = [_PLAN_FILE.match(line) for line in dry.stdout.splitlines()]
    plan = {m["path"]: parse_size(m["size"]) for m in listed if m}

    # The plan is what the real build then does, sizes included (to the printed precision).
    _ok(project.build())
    out = project.work_dir / "planned"
    assert set(plan) == files_under(out / "checkpoints")
    for path, size in plan.items():
        actual = (out / "checkpoints" / path).stat().st_size
        assert abs(size - actual) <= max(1, actual * 0.001), path
    assert str(out) in dry.stdout

    # A dry run over a built project changes nothing either, even one that would update it.
    hub.commit(repo, hub_files(checkpoint) | {"README.md": "# moved on\n"})
    work_before, lock_before = snapshot(project.work_dir), project.lock_path.read_bytes()

    _ok(project.build("--dry-run", "--update"))

    assert snapshot(project.work_dir) == work_before
    assert project.lock_path.read_bytes() == lock_before


# --- failing builds change nothing --------------------------------------------------------------


@dataclass(frozen=True)
class Breakage:
    """A way a build can fail after a good one, and what its one error line must name."""

    id: str
    second_model: Callable[[Publish, Path], str] | None
    """A table for a second model, broken; ``None`` when the breakage is elsewhere."""
    expected: tuple[str, ...]
    config_text: Callable[[str], str | None] = lambda text: text
    """Rewrites config.toml; ``None`` deletes it."""


BREAKAGES = [
    Breakage(
        "missing-repo",
        lambda publish, _: model_table("second", "acme/no-such-model"),
        ("model 'second'", "acme/no-such-model"),
    ),
    Breakage(
        "missing-branch",
        lambda publish, _: model_table("second", publish(), huggingface__version="no-such-branch"),
        ("model 'second'", "no-such-branch"),
    ),
    Breakage(
        "gated-repo",
        lambda publish, _: model_table("second", publish(gated_token="hf_someone_elses")),
        ("model 'second'", "license", "HF_TOKEN"),
    ),
    Breakage(
        # Fails only after every file was fetched: the last check before anything is written.
        "encoder-decoder",
        lambda publish, t5: model_table("second", publish(t5)),
        ("model 'second'", "encoder-decoder"),
    ),
    Breakage(
        "unknown-key",
        None,
        ("model 'first'", "config.load_in_9bit", "unknown key"),
        config_text=lambda text: text + "config.load_in_9bit = true\n",
    ),
    Breakage(
        "missing-config",
        None,
        ("config.toml", "cp config.toml.example config.toml"),
        config_text=lambda text: None,
    ),
]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda b: b.id)
def test_a_failed_build_leaves_work_and_lock_as_they_were(
    project: Project, publish: Publish, encoder_decoder: Path, breakage: Breakage
) -> None:
    repo = publish()
    project.write_config(model_table("first", repo))
    _ok(project.build())
    work_before = snapshot(project.work_dir)
    lock_before = project.lock_path.read_bytes()
    # The failing build also changes the first model, so a build that wrote anything before
    # failing would show in work/first.
    tables = [model_table("first", repo, config__load_in_8bit=True)]
    if breakage.second_model is not None:
        tables.append(breakage.second_model(publish, encoder_decoder))
    project.write_config(*tables)
    text = breakage.config_text(project.config_path.read_text())
    if text is None:
        project.config_path.unlink()
    else:
        project.config_path.write_text(text)

    run = project.build()

    line = run.one_error_line()
    for fragment in breakage.expected:
        assert fragment in line, run
    assert snapshot(project.work_dir) == work_before
    assert project.lock_path.read_bytes() == lock_before
    assert project.staging_leftovers() == []


# --- gated repos ----------------------------------------------------------------------------------

TOKEN = "hf_lmtpcogTestToken0123456789abcdefXYZ"


def test_gated_repo_without_a_token_says_how_to_get_access(
    project: Project, hub: HubServer, publish: Publish
) -> None:
    repo = publish(gated_token=TOKEN)
    project.write_config(model_table("gated", repo))

    line = project.build().one_error_line()

    assert "gated" in line and repo in line
    assert "accept its license" in line and "HF_TOKEN" in line
    assert hub.downloaded(repo) == []
    assert not project.work_dir.exists() and not project.lock_path.exists()


def test_gated_repo_with_a_token_builds_and_keeps_the_token_out(
    project: Project, hub: HubServer, publish: Publish
) -> None:
    repo = publish(gated_token=TOKEN)
    project.write_config(model_table("gated", repo))

    run = project.build(token=TOKEN)

    _ok(run)
    assert NEEDED_FILES <= set(hub.downloaded(repo))
    assert TOKEN not in run.stdout + run.stderr
    assert TOKEN not in project.lock_path.read_text()
    written = [p for p in project.work_dir.rglob("*") if p.is_file()]
    assert [p for p in written if TOKEN.encode() in p.read_bytes()] == []


# --- odd values stay values ---------------------------------------------------------------------

ODD = "it's \"odd\" $(touch PWNED) `touch PWNED` ; & | dir"
"""Quotes, spaces, a command substitution, backticks and shell operators, in folder names."""


def test_odd_characters_stay_data_through_the_whole_build(
    tmp_path: Path, hub: HubServer, checkpoint: Path
) -> None:
    project = Project(tmp_path / f"user {ODD}", endpoint=hub.endpoint)
    shutil.copytree(checkpoint, project.root / f"model {ODD}")
    repo = f"./model {ODD}"
    packages = ["g++", "libstdc++6", "python3.11-dev"]
    requirement = "Foo_Bar[ext.a, ext-b] == 1!2.0+local_1"
    name = "odd.name_v1--8bit"
    project.write_config(
        model_table(
            name, repo, config__load_in_8bit=True,
            cog__system_packages=packages, cog__extra_requirements=[requirement],
        )  # fmt: skip
    )

    run = project.build()

    _ok(run)
    out = project.work_dir / name
    cog = yaml.safe_load((out / "cog.yaml").read_text())
    assert cog["build"]["system_packages"] == packages
    assert cog["image"] == f"r8.im/alice/{name}"
    assert requirement in (out / "requirements.txt").read_text().splitlines()

    # The push script hands the destination to cog as one argument, whatever folder it is in.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    record = tmp_path / "cog-argv.json"
    (fake_bin / "cog").write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps([sys.argv[1:], os.getcwd()]))\n"
    )
    (fake_bin / "cog").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        [str(out / "push"), "--separate-weights", "two words"],
        cwd=project.root, env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip

    argv, cwd = json.loads(record.read_text())
    assert argv == ["push", f"r8.im/alice/{name}", "--separate-weights", "two words"]
    assert cwd == str(out)
    pwned = [p for p in [*tmp_path.rglob("*"), *Path.cwd().iterdir()] if p.name == "PWNED"]
    assert pwned == []
    # The settings record the source exactly as config.toml wrote it.
    assert project.settings(name)["huggingface"]["repo"] == repo


# --- what a build refuses, and local models ---------------------------------------------------


def test_encoder_decoder_checkpoint_is_refused(
    project: Project, publish: Publish, encoder_decoder: Path
) -> None:
    project.write_config(model_table("t5-tiny", publish(encoder_decoder)))

    line = project.build().one_error_line()

    assert "t5-tiny" in line and "encoder-decoder" in line and "decoder-only" in line
    assert not project.work_dir.exists() and not project.lock_path.exists()


def test_local_directory_model_links_its_files(
    project: Project, hub: HubServer, checkpoint: Path
) -> None:
    model_dir = project.root / "model"
    shutil.copytree(checkpoint, model_dir)
    (model_dir / "pytorch_model.bin").write_bytes(b"a stale copy of the weights")
    project.write_config(model_table("local", "./model"), dest_prefix="r8.im/YOURACCOUNT/")
    hub.clear_requests()

    run = project.build()

    _ok(run)
    out = project.work_dir / "local"
    source = project.settings("local")["huggingface"]
    assert source == {"repo": "./model", "revision": None, "commit": None}
    shipped = files_under(out / "checkpoints")
    assert shipped == files_under(checkpoint)
    for path in shipped:
        assert (out / "checkpoints" / path).stat().st_ino == (model_dir / path).stat().st_ino, path
    assert not (out / "push").exists()
    # A local folder has no commit to pin and asks nothing of the Hub.
    assert not project.lock_path.exists()
    assert hub.requests == []

    before = snapshot(project.work_dir)
    again = project.build()

    _ok(again)
    assert "local: up to date" in again.stdout
    assert snapshot(project.work_dir) == before


def test_full_build_drops_lock_entries_of_removed_models(tmp_path: Path, hub: HubServer) -> None:
    """A model deleted from config.toml leaves the lock on the next full build, not on --only."""
    project = Project(tmp_path, endpoint=hub.endpoint)
    project.write_config(
        model_table("first", "meta-llama/Llama-2-7b-hf"),
        model_table("second", "meta-llama/Llama-2-13b-hf"),
    )
    assert project.build().returncode == 0
    assert set(project.lock()["models"]) == {"first", "second"}

    project.write_config(model_table("first", "meta-llama/Llama-2-7b-hf"))
    assert project.build("--only", "first").returncode == 0
    assert set(project.lock()["models"]) == {"first", "second"}
    assert project.build().returncode == 0
    assert set(project.lock()["models"]) == {"first"}


def test_changing_use_safetensors_refetches_files_of_the_locked_commit(
    project: Project, publish: Publish, hub: HubServer
) -> None:
    """The lock pins the commit and the file list; a new file choice re-lists that same commit."""
    repo = publish()
    project.write_config(model_table("weights", repo))
    assert project.build().returncode == 0
    locked = project.lock()["models"]["weights"]
    hub.commit(repo, {"README.md": "# moved on\n"})  # the branch moves; the lock must hold

    project.write_config(model_table("weights", repo, config__use_safetensors=False))
    run = project.build()

    assert run.returncode == 0, run.stderr
    entry = project.lock()["models"]["weights"]
    assert entry["commit"] == locked["commit"]
    assert entry["selection"] == {"trust_remote_code": False, "use_safetensors": False}
    shipped = {f["path"] for f in entry["files"]}
    assert "pytorch_model.bin" in shipped
    assert not any(path.endswith(".safetensors") for path in shipped)
    assert (project.root / "work" / "weights" / "checkpoints" / "pytorch_model.bin").exists()
