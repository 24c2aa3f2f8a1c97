"""Installing rendered projects into ``work/`` all at once, or not at all.

Every model is first rendered into a staging folder inside ``work/`` (same filesystem, so the final
move is a rename). Only when every model of the build staged without error are the staged
projects swapped in. A project whose staged tree equals the installed one is left alone, so a
build with nothing changed rewrites nothing.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_PREFIX = ".staging-"


@contextmanager
def staging_area(work_dir: Path) -> Iterator[Path]:
    """A fresh folder inside ``work_dir`` that is removed on exit, whatever happens.

    ``work_dir`` itself is created if needed; if the build fails and ``work_dir`` was created only
    for this build, it is removed again so that ``work/`` is left exactly as it was.
    """
    created = not work_dir.exists()
    work_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=work_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(work_dir.iterdir()):
            work_dir.rmdir()


def trees_equal(left: Path, right: Path) -> bool:
    """Whether two project folders hold the same files with the same contents and modes.

    Hard links to the same inode count as equal without reading them, which keeps the check cheap
    for multi-GB checkpoints linked from the Hugging Face cache.
    """
    left_files = _relative_files(left)
    if left_files != _relative_files(right):
        return False
    return all(_same_file(left / rel, right / rel) for rel in left_files)


def install(staged: Path, target: Path) -> None:
    """Replace ``target`` by ``staged`` with two renames; the old tree is deleted afterwards."""
    if not target.exists():
        os.replace(staged, target)
        return
    trash = target.with_name(f".old-{target.name}-{os.getpid()}")
    os.replace(target, trash)
    try:
        os.replace(staged, target)
    except OSError:
        os.replace(trash, target)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def _relative_files(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() or path.is_symlink()
    }


def _same_file(left: Path, right: Path) -> bool:
    a, b = left.lstat(), right.lstat()
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        return True
    if a.st_size != b.st_size or (a.st_mode & 0o777) != (b.st_mode & 0o777):
        return False
    return filecmp.cmp(left, right, shallow=False)
