"""The lock file: the exact commit and files each Hub model was built from.

It sits beside config.toml as ``<config stem>.lock.json`` and is meant to be committed: a later
build, on this machine or another, fetches the same commit even after the branch has moved, until
``./build --update`` resolves the revisions again. A local directory has no commit to pin, so only
Hub models are recorded.

The file is rendered deterministically (models and files sorted, fixed layout, one line per file
for readable diffs) and only rewritten when its content changes, so an unchanged build leaves it
byte-identical, mtime included.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lmtp_cog.errors import LockfileError
from lmtp_cog.resolution import FileSelection, RepoFile, ResolvedModel

FORMAT_VERSION = 1
COMMENT = (
    "Written by lmtp-cog's build: the commit and files each model was built from. Commit this "
    "file; `./build --update` moves the models to their revisions' newest commits."
)


def lockfile_path(config_path: Path) -> Path:
    """``config.toml`` → ``config.lock.json``, in the same folder."""
    return config_path.with_name(f"{config_path.stem}.lock.json")


@dataclass(frozen=True)
class Lockfile:
    """The lock file's content; an immutable value, written only by :meth:`save`."""

    path: Path
    models: Mapping[str, ResolvedModel] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Lockfile:
        """Read ``path``; a missing file is an empty lock.

        Raises:
            LockfileError: The file cannot be read or is not a lock file this version writes.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError) as error:
            raise _broken(path, f"it cannot be read ({error})") from error
        return cls(path, _parse(path, text))

    def entry(self, name: str) -> ResolvedModel | None:
        return self.models.get(name)

    def with_entry(self, resolved: ResolvedModel) -> Lockfile:
        """This lock with ``resolved`` recorded (a local-directory model removes its name)."""
        models = {n: m for n, m in self.models.items() if n != resolved.name}
        if resolved.commit is not None:
            models[resolved.name] = resolved
        return replace(self, models=models)

    def without(self, names: Iterable[str]) -> Lockfile:
        """This lock without the given models (e.g. ones removed from config.toml)."""
        dropped = set(names)
        return replace(self, models={n: m for n, m in self.models.items() if n not in dropped})

    def render(self) -> str:
        """The file's exact text."""
        models = ",\n".join(
            f"    {json.dumps(name)}: {_render_model(self.models[name])}"
            for name in sorted(self.models)
        )
        body = f"{{\n{models}\n  }}" if models else "{}"
        return (
            "{\n"
            f'  "comment": {json.dumps(COMMENT)},\n'
            f'  "version": {FORMAT_VERSION},\n'
            f'  "models": {body}\n'
            "}\n"
        )

    def save(self) -> bool:
        """Write the file atomically, unless it already says exactly this.

        Returns:
            Whether the file changed.
        """
        pending = self.stage()
        if pending is None:
            return False
        pending.commit()
        return True

    def stage(self) -> PendingWrite | None:
        """The new text written beside the file, not yet in its place (``None``: no change).

        The build stages the lock before it installs any project, so that a lock it cannot write
        (a read-only folder, a full disk) stops it while ``work/`` is untouched.
        An empty lock is not written where no file exists yet (a config of local models only).
        """
        text = self.render()
        try:
            if self.path.read_text(encoding="utf-8") == text:
                return None
        except FileNotFoundError:
            if not self.models:
                return None
        except (OSError, UnicodeDecodeError):
            pass  # unreadable: replace it
        return PendingWrite.of(self.path, text)


@dataclass(frozen=True)
class PendingWrite:
    """A file's new text, written and synced beside it: :meth:`commit` renames it into place."""

    path: Path
    temporary: Path

    @classmethod
    def of(cls, path: Path, text: str) -> PendingWrite:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return cls(path, Path(temporary))

    def commit(self) -> None:
        """Replace the file: a reader sees the old or the new one, never a mix."""
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        self.temporary.unlink(missing_ok=True)


# --- rendering ------------------------------------------------------------------------------------


def _render_model(model: ResolvedModel) -> str:
    lines = [
        f'      "repo": {json.dumps(model.repo)}',
        f'      "revision": {json.dumps(model.revision)}',
        f'      "commit": {json.dumps(model.commit)}',
        f'      "selection": {json.dumps(asdict(model.selection), sort_keys=True)}',
    ]
    files = [f"        {json.dumps(_file_json(f))}" for f in sorted(model.files, key=_path)]
    listed = "[\n" + ",\n".join(files) + "\n      ]" if files else "[]"
    lines.append(f'      "files": {listed}')
    return "{\n" + ",\n".join(lines) + "\n    }"


def _path(file: RepoFile) -> str:
    return file.path


def _file_json(file: RepoFile) -> dict[str, Any]:
    value: dict[str, Any] = {"path": file.path, "size": file.size}
    if file.sha256 is not None:
        value["sha256"] = file.sha256
    if file.blob_id is not None:
        value["blob_id"] = file.blob_id
    return value


# --- parsing --------------------------------------------------------------------------------------


def _broken(path: Path, problem: str) -> LockfileError:
    return LockfileError(
        f"{path}: {problem}; delete the file (the next build writes a new one) or fix it."
    )


def _parse(path: Path, text: str) -> dict[str, ResolvedModel]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise _broken(path, f"it is not valid JSON ({error})") from error
    if not isinstance(document, dict):
        raise _broken(path, "it is not a JSON object")
    version = document.get("version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise LockfileError(
            f"{path}: it was written by a newer lmtp-cog (format {version}); upgrade lmtp-cog, "
            "or delete the file to resolve the models again."
        )
    if version != FORMAT_VERSION:
        raise _broken(path, f"its 'version' is {version!r}, not {FORMAT_VERSION}")
    models = document.get("models")
    if not isinstance(models, dict):
        raise _broken(path, "it has no 'models' object")
    return {name: _parse_model(path, name, entry) for name, entry in models.items()}


def _parse_model(path: Path, name: str, entry: Any) -> ResolvedModel:
    where = f"model '{name}'"
    if not isinstance(entry, dict):
        raise _broken(path, f"{where} is not a JSON object")
    files = entry.get("files")
    if not isinstance(files, list):
        raise _broken(path, f"{where} has no 'files' list")
    selection = entry.get("selection", {})
    if not isinstance(selection, dict):
        raise _broken(path, f"{where} 'selection' is not a JSON object")
    return ResolvedModel(
        name=name,
        repo=_get(path, entry, "repo", str, where=where),
        revision=_get(path, entry, "revision", str | None, where=where),
        commit=_get(path, entry, "commit", str, where=where),
        selection=FileSelection(
            use_safetensors=_get(
                path, selection, "use_safetensors", bool | None, where=where, required=False
            ),
            trust_remote_code=bool(
                _get(path, selection, "trust_remote_code", bool | None, where=where, required=False)
            ),
        ),
        files=tuple(
            _parse_file(path, file, where=f"{where} files[{i}]") for i, file in enumerate(files)
        ),
    )


def _parse_file(path: Path, entry: Any, *, where: str) -> RepoFile:
    if not isinstance(entry, dict):
        raise _broken(path, f"{where} is not a JSON object")
    size = _get(path, entry, "size", int, where=where)
    if isinstance(size, bool) or size < 0:
        raise _broken(path, f"{where} 'size' is not a byte count")
    return RepoFile(
        path=_get(path, entry, "path", str, where=where),
        size=size,
        sha256=_get(path, entry, "sha256", str | None, where=where, required=False),
        blob_id=_get(path, entry, "blob_id", str | None, where=where, required=False),
    )


def _get(
    path: Path, entry: dict[str, Any], key: str, kind: Any, *, where: str, required: bool = True
) -> Any:
    if key not in entry and required:
        raise _broken(path, f"{where} lacks '{key}'")
    value = entry.get(key)
    if not isinstance(value, kind):
        raise _broken(path, f"{where} '{key}' is {json.dumps(value)}, of the wrong type")
    return value
