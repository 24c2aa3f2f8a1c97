"""Linking fetched files into checkpoints/: shared inodes, pruning, rebuilds that touch nothing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from lmtp_cog.checkpoints import link_checkpoints
from lmtp_cog.config import HuggingFaceSource
from lmtp_cog.errors import BuildError
from lmtp_cog.hub import fetch, resolve


def write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``folder`` → (inode, mtime_ns, content)."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def sources(tmp_path):
    return {
        "config.json": write(tmp_path / "src" / "config.json", '{"model_type": "llama"}'),
        "weights/model-1.safetensors": write(tmp_path / "src" / "blob-1", "weights one"),
    }


def test_links_share_the_inode_with_the_hf_cache(hub_repo, hub_server, hf_cache, tmp_path):
    on = {"endpoint": hub_server.endpoint, "cache_dir": hf_cache}
    source = HuggingFaceSource(repo=hub_repo("sharded"))
    fetched = fetch(resolve(source, model_name="t", **on), **on)
    dest = tmp_path / "checkpoints"

    report = link_checkpoints(fetched, dest)

    assert report.linked == tuple(sorted(fetched)) and not report.copied
    for path, cached in fetched.items():
        linked = dest / path
        assert not linked.is_symlink()
        assert linked.stat().st_ino == cached.stat().st_ino  # the blob behind the snapshot link
        assert cached.resolve().parent.name == "blobs"


def test_a_second_link_rewrites_nothing(sources, tmp_path):
    dest = tmp_path / "checkpoints"
    link_checkpoints(sources, dest)
    before = snapshot(dest)

    report = link_checkpoints(sources, dest)

    assert snapshot(dest) == before
    assert report.unchanged == tuple(sorted(sources))
    assert not report.changed


def test_stale_files_and_empty_folders_are_pruned(sources, tmp_path):
    dest = tmp_path / "checkpoints"
    write(dest / "pytorch_model.bin", "old weights")
    write(dest / "old" / "nested" / "shard.bin", "old shard")

    report = link_checkpoints(sources, dest)

    assert report.removed == ("old/nested/shard.bin", "pytorch_model.bin")
    assert sorted(snapshot(dest)) == sorted(sources)
    assert not (dest / "old").exists()
    assert (dest / "weights").is_dir()


def test_a_changed_file_is_replaced_without_touching_the_old_source(sources, tmp_path):
    dest = tmp_path / "checkpoints"
    link_checkpoints(sources, dest)
    newer = {**sources, "config.json": write(tmp_path / "src" / "config-v2.json", '{"v": 2}')}

    report = link_checkpoints(newer, dest)

    assert report.linked == ("config.json",)
    assert (dest / "config.json").read_text() == '{"v": 2}'
    assert sources["config.json"].read_text() == '{"model_type": "llama"}'  # the cache is intact


def test_a_symlink_in_dest_is_replaced_not_written_through(sources, tmp_path):
    dest = tmp_path / "checkpoints"
    elsewhere = write(tmp_path / "elsewhere" / "config.json", "precious")
    dest.mkdir()
    (dest / "config.json").symlink_to(elsewhere)

    link_checkpoints(sources, dest)

    assert elsewhere.read_text() == "precious"
    assert not (dest / "config.json").is_symlink()
    assert (dest / "config.json").stat().st_ino == sources["config.json"].stat().st_ino


@pytest.mark.parametrize("path", ["../escape.json", "/etc/passwd", "weights/../../x", ""])
def test_paths_outside_dest_are_refused(path, sources, tmp_path):
    with pytest.raises(BuildError, match="outside checkpoints"):
        link_checkpoints({path: sources["config.json"]}, tmp_path / "checkpoints")
    assert not (tmp_path / "escape.json").exists()


def test_a_missing_source_is_reported_before_anything_changes(sources, tmp_path):
    dest = tmp_path / "checkpoints"
    link_checkpoints(sources, dest)
    before = snapshot(dest)

    with pytest.raises(BuildError, match="does not exist"):
        link_checkpoints({"config.json": tmp_path / "gone"}, dest)
    assert snapshot(dest) == before


def other_filesystem(path: Path) -> Path | None:
    """A writable folder on another filesystem than ``path`` (tmpfs), if this machine has one."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != path.stat().st_dev:
        return shm
    return None


def test_across_filesystems_files_are_copied_then_left_alone(sources, tmp_path):
    base = other_filesystem(tmp_path)
    if base is None:
        pytest.skip("no second filesystem to copy across")
    with tempfile.TemporaryDirectory(dir=base) as other:
        dest = Path(other) / "checkpoints"

        first = link_checkpoints(sources, dest)
        before = snapshot(dest)
        second = link_checkpoints(sources, dest)

        assert first.copied == tuple(sorted(sources)) and not first.linked
        assert (dest / "config.json").read_text() == sources["config.json"].read_text()
        assert second.unchanged == tuple(sorted(sources))
        assert snapshot(dest) == before
