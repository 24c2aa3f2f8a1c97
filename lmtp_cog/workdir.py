"""Installing rendered projects into ``work/`` all at once, or not at all, and only over our own.

Every model is first rendered into a staging folder inside ``work/`` (same filesystem, so the final
move is a rename). Only when every model of the build staged without error are the staged
projects swapped in, by an :class:`Installation` that keeps each replaced tree until the whole
build (lock file included) has landed, and puts them all back if any step fails.

A build replaces only what it made. ``work/NAME`` is recognised as a project of ours by its
``model_settings.json`` (:func:`is_generated_project`); within it, only the entries the builder
writes (:data:`GENERATED_ENTRIES`) are replaced, and everything else (``.cog/``, a user's notes)
is carried into the new tree. A folder that is not ours is refused unless ``--force`` says to
build into it. A project whose generated entries equal the staged ones is left alone, so a build
with nothing changed rewrites nothing.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lmtp_runtime.errors import SettingsError
from lmtp_runtime.settings import SETTINGS_FILE, read_settings

from .errors import BuildError
from .render import GENERATED_ENTRIES

STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".old-"


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


def is_generated_project(folder: Path) -> bool:
    """Whether ``folder`` is a project ``./build`` made: its ``model_settings.json`` says so.

    The file names the model as the folder is named and carries the builder's version stamp;
    anything else (no file, not JSON, another name) is a folder the builder did not make.
    """
    try:
        settings = read_settings(folder / SETTINGS_FILE)
    except SettingsError:
        return False
    return settings.name == folder.name and settings.lmtp_cog_version is not None


def check_target(target: Path, *, force: bool) -> None:
    """Refuse to build into ``target`` when something there is not ours to replace.

    Raises:
        BuildError: ``target`` is a file, or a folder ``./build`` did not make (unless ``force``).
    """
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise BuildError(
            f"{target} exists and is not a folder; move it away or choose another --work-dir."
        )
    if force or is_generated_project(target):
        return
    raise BuildError(
        f"{target} exists but was not made by ./build (it has no model_settings.json of "
        "lmtp-cog's); move it away, choose another --work-dir, or pass --force to build into "
        f"it, which replaces its {', '.join(sorted(GENERATED_ENTRIES))} and keeps the rest."
    )


def generated_trees_equal(staged: Path, target: Path) -> bool:
    """Whether ``target`` already holds exactly the generated entries of ``staged``.

    Hard links to the same inode count as equal without reading them, which keeps the check cheap
    for multi-GB checkpoints linked from the Hugging Face cache.
    """
    staged_files = _relative_files(staged, _generated(staged))
    if staged_files != _relative_files(target, _generated(target)):
        return False
    return all(_same_file(staged / rel, target / rel) for rel in staged_files)


class Installation:
    """Swaps staged projects in; keeps every replaced tree until :meth:`commit`.

    Use as a context manager: leaving the block with an exception puts every replaced project
    back as it was (:meth:`rollback`); :meth:`commit` deletes the replaced trees for good.
    """

    def __init__(self) -> None:
        self._swapped: list[tuple[Path, Path | None]] = []
        """``(target, old tree or None when there was none)``, in the order swapped."""

    def install(self, staged: Path, target: Path) -> None:
        """Make ``staged`` the new ``target``, carrying over every entry of ``target`` that the
        builder does not write (``.cog/``, a user's files): hard links, or copies across
        filesystems, so that nothing of them is lost even while the old tree is kept."""
        if not target.exists():
            os.replace(staged, target)
            self._swapped.append((target, None))
            return
        for name in _foreign(target):
            _link_tree(target / name, staged / name)
        trash = Path(tempfile.mkdtemp(prefix=f"{TRASH_PREFIX}{target.name}-", dir=target.parent))
        trash.rmdir()
        os.replace(target, trash)
        try:
            os.replace(staged, target)
        except OSError:
            os.replace(trash, target)
            raise
        self._swapped.append((target, trash))

    def rollback(self) -> None:
        """Put every replaced project back; remove the projects that were new."""
        for target, trash in reversed(self._swapped):
            shutil.rmtree(target, ignore_errors=True)
            if trash is not None:
                os.replace(trash, target)
        self._swapped.clear()

    def commit(self) -> None:
        """The build landed: delete the replaced trees."""
        for _, trash in self._swapped:
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        self._swapped.clear()

    def __enter__(self) -> Installation:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None:
            self.rollback()


def _generated(root: Path) -> list[str]:
    return [name for name in GENERATED_ENTRIES if (root / name).exists()]


def _foreign(root: Path) -> list[str]:
    return sorted(entry.name for entry in root.iterdir() if entry.name not in GENERATED_ENTRIES)


def _relative_files(root: Path, names: Iterable[str]) -> set[str]:
    files = set()
    for name in names:
        entry = root / name
        candidates = [entry] if not entry.is_dir() or entry.is_symlink() else entry.rglob("*")
        files |= {
            str(path.relative_to(root)) for path in candidates if path.is_file() or path.is_symlink()
        }
    return files


def _same_file(left: Path, right: Path) -> bool:
    a, b = left.lstat(), right.lstat()
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        return True
    if a.st_size != b.st_size or (a.st_mode & 0o777) != (b.st_mode & 0o777):
        return False
    return filecmp.cmp(left, right, shallow=False)


def _link_tree(source: Path, target: Path) -> None:
    """``target`` as a copy of ``source`` made of hard links (symlinks stay symlinks)."""
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    elif source.is_dir():
        target.mkdir()
        for child in source.iterdir():
            _link_tree(child, target / child.name)
        shutil.copystat(source, target)  # last: a read-only mode would refuse the children
    else:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
