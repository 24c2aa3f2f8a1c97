"""Put a model's fetched files into a generated project's ``checkpoints/`` without copying them.

The files live in the Hugging Face cache; a project gets hard links to them, so a 15 GB model costs
no extra disk and no copying time, and the cache stays the one place bytes are downloaded to.
Where a hard link cannot be made (the project is on another filesystem) the file is copied.

Two rules keep the cache and the project consistent:

- the source is never opened for writing: a changed file is replaced by renaming a new link over
  it, so a stale hard link into the cache is unlinked, never overwritten through;
- a rebuild with the same files touches nothing: a file that is already the same inode (or, for a
  copy, the same content) is left alone, so its mtime and inode survive.
"""

from __future__ import annotations

import errno
import filecmp
import os
import posixpath
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lmtp_cog.errors import BuildError

_CANNOT_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
"""``os.link`` failures that mean "no hard link possible here", so copy: another filesystem
(EXDEV), a kernel that protects hard links to others' files (EPERM), no hard links at all."""


@dataclass(frozen=True)
class LinkReport:
    """What :func:`link_checkpoints` did, by repo path (each tuple sorted)."""

    linked: tuple[str, ...] = ()
    """Newly hard-linked to the source."""
    copied: tuple[str, ...] = ()
    """Newly copied, because a hard link was not possible."""
    unchanged: tuple[str, ...] = ()
    """Already the source's inode, or a copy with the same content."""
    removed: tuple[str, ...] = ()
    """Files under ``dest`` that are no longer part of the model."""

    @property
    def changed(self) -> bool:
        return bool(self.linked or self.copied or self.removed)


def link_checkpoints(files: Mapping[str, Path], dest: Path) -> LinkReport:
    """Make ``dest`` hold exactly ``files``: ``dest/<repo path>`` → the source file.

    Args:
        files: Repo path (``/``-separated, relative) → the file to link to, e.g. from
            :func:`lmtp_cog.hub.fetch`. Symlinks (the cache's snapshot entries) are followed.
        dest: The ``checkpoints/`` folder; created if missing.

    Returns:
        What was linked, copied, left alone and removed.

    Raises:
        BuildError: A repo path escapes ``dest`` (absolute, or with ``..``), or a source file
            is missing.
    """
    targets = {_checked(path): Path(source) for path, source in files.items()}
    for path, source in targets.items():
        if not source.is_file():
            raise BuildError(f"cannot put {path} into {dest}: its source {source} does not exist.")
    dest.mkdir(parents=True, exist_ok=True)
    # Pruning first also removes symlinked folders, so nothing below is written through one.
    removed = _prune(dest, keep=set(targets))
    linked, copied, unchanged = [], [], []
    for path, source in sorted(targets.items()):
        target = dest.joinpath(*path.split("/"))
        if _same_file(source, target):
            unchanged.append(path)
        elif _place(source, target):
            linked.append(path)
        else:
            copied.append(path)
    return LinkReport(
        linked=tuple(linked), copied=tuple(copied), unchanged=tuple(unchanged), removed=removed
    )


def _checked(path: str) -> str:
    """The repo path, normalised, if it stays inside ``dest``."""
    if not path or posixpath.isabs(path) or ".." in path.split("/"):
        raise BuildError(f"refusing checkpoint path {path!r}: it would land outside checkpoints/.")
    return posixpath.normpath(path)


def _same_file(source: Path, target: Path) -> bool:
    if not target.is_file() or target.is_symlink():
        return False
    if os.path.samefile(source, target):
        return True
    # A copy made because linking was impossible: same size and mtime (copy2 keeps it), or
    # else the same bytes.
    return filecmp.cmp(source, target, shallow=True)


def _place(source: Path, target: Path) -> bool:
    """Put a hard link to (or else a copy of) ``source`` at ``target``; True when linked."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.lmtp-cog-tmp")
    temporary.unlink(missing_ok=True)
    try:
        # Link the blob, not the cache's snapshot symlink: on Linux os.link() does not follow
        # symlinks whatever its follow_symlinks says (it calls link(2)).
        os.link(os.path.realpath(source), temporary)
        linked = True
    except OSError as error:
        if error.errno not in _CANNOT_LINK:
            raise
        shutil.copy2(source, temporary)
        linked = False
    # Rename over the old name: an old hard link into the cache is unlinked, not written to.
    os.replace(temporary, target)
    return linked


def _prune(dest: Path, *, keep: set[str]) -> tuple[str, ...]:
    """Remove files under ``dest`` not in ``keep``, then the folders left empty."""
    removed = []
    for folder, subfolders, names in os.walk(dest, topdown=False):
        for name in names:
            path = Path(folder, name)
            relative = path.relative_to(dest).as_posix()
            if relative not in keep:
                path.unlink()
                removed.append(relative)
        for name in subfolders:
            sub = Path(folder, name)
            if sub.is_symlink():
                sub.unlink()
                removed.append(sub.relative_to(dest).as_posix())
            elif not any(sub.iterdir()):
                sub.rmdir()
    return tuple(sorted(removed))
