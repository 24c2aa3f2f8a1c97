"""The lock file: round trips, byte-stable rewrites, and clear errors for broken files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtp_cog.config import HuggingFaceSource
from lmtp_cog.errors import LockfileError
from lmtp_cog.hub import resolve
from lmtp_cog.lockfile import Lockfile, lockfile_path
from lmtp_cog.resolution import RepoFile, ResolvedModel

TINY = ResolvedModel(
    name="tiny",
    repo="acme/tiny",
    revision=None,
    commit="1" * 40,
    files=(
        RepoFile(path="config.json", size=714, blob_id="a" * 40),
        RepoFile(path="model.safetensors", size=557416, sha256="b" * 64),
    ),
)
OTHER = ResolvedModel(
    name="other",
    repo="acme/other",
    revision="v1.0",
    commit="2" * 40,
    files=(RepoFile(path="pytorch_model.bin", size=10, sha256="c" * 64),),
)


def test_the_lock_file_sits_beside_the_config():
    assert lockfile_path(Path("/p/config.toml")) == Path("/p/config.lock.json")
    assert lockfile_path(Path("/p/models.toml")) == Path("/p/models.lock.json")


def test_a_missing_file_is_an_empty_lock(tmp_path):
    lock = Lockfile.load(tmp_path / "config.lock.json")

    assert lock.entry("tiny") is None
    assert lock.models == {}


def test_round_trip(tmp_path):
    path = tmp_path / "config.lock.json"

    assert Lockfile.load(path).with_entry(TINY).with_entry(OTHER).save()
    loaded = Lockfile.load(path)

    assert loaded.entry("tiny") == TINY
    assert loaded.entry("other") == OTHER
    assert json.loads(path.read_text())["version"] == 1


def test_round_trip_of_a_model_resolved_through_the_hub(hub_repo, hub_server, hf_cache, tmp_path):
    resolved = resolve(
        HuggingFaceSource(repo=hub_repo("sharded")),
        model_name="tiny",
        endpoint=hub_server.endpoint,
        cache_dir=hf_cache,
    )
    path = tmp_path / "config.lock.json"

    Lockfile(path).with_entry(resolved).save()

    assert Lockfile.load(path).entry("tiny") == resolved


def test_an_unchanged_lock_is_not_rewritten(tmp_path):
    path = tmp_path / "config.lock.json"
    Lockfile(path).with_entry(TINY).with_entry(OTHER).save()
    text, mtime = path.read_bytes(), path.stat().st_mtime_ns

    # The same content reached in another order renders the same bytes.
    again = Lockfile.load(path).without(["tiny"]).with_entry(TINY)
    changed = again.save()

    assert not changed
    assert path.read_bytes() == text
    assert path.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == ["config.lock.json"]  # no temp files left


def test_models_and_files_are_sorted_one_file_per_line(tmp_path):
    shuffled = ResolvedModel(**{**TINY.__dict__, "files": tuple(reversed(TINY.files))})

    text = Lockfile(tmp_path / "x.lock.json").with_entry(shuffled).with_entry(OTHER).render()

    assert text.index('"other"') < text.index('"tiny"')
    assert text.index('"config.json"') < text.index('"model.safetensors"')
    assert '{"path": "config.json", "size": 714, "blob_id": "' + "a" * 40 + '"}' in text


def test_without_drops_models(tmp_path):
    lock = Lockfile(tmp_path / "x.lock.json").with_entry(TINY).with_entry(OTHER)

    assert set(lock.without(["tiny", "unknown"]).models) == {"other"}


def test_local_directory_models_are_not_locked(tmp_path):
    local = ResolvedModel(name="tiny", repo=str(tmp_path), revision=None, commit=None, files=())

    lock = Lockfile(tmp_path / "x.lock.json").with_entry(TINY).with_entry(local)

    assert lock.entry("tiny") is None
    assert not lock.save()  # nothing to record, no file written
    assert not (tmp_path / "x.lock.json").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"version": 1}', "no 'models' object"),
        ('{"version": "one", "models": {}}', "'version'"),
        ('{"version": 1, "models": {"tiny": {"repo": "a/b", "revision": null, "files": []}}}',
         "model 'tiny' lacks 'commit'"),
        ('{"version": 1, "models": {"tiny": {"repo": "a/b", "revision": null, "commit": "c",'
         ' "files": [{"path": "x", "size": -1}]}}}', "model 'tiny' files\\[0\\] 'size'"),
    ],
)  # fmt: skip
def test_a_broken_file_names_itself_and_the_fix(content, problem, tmp_path):
    path = tmp_path / "config.lock.json"
    path.write_text(content)

    with pytest.raises(LockfileError, match=problem) as caught:
        Lockfile.load(path)

    assert str(path) in str(caught.value)
    assert "delete the file" in str(caught.value)


def test_a_lock_from_a_newer_version_asks_for_an_upgrade(tmp_path):
    path = tmp_path / "config.lock.json"
    path.write_text('{"version": 99, "models": {}}')

    with pytest.raises(LockfileError, match="newer lmtp-cog"):
        Lockfile.load(path)
