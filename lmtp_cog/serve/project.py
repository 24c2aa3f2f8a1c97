"""What ``./serve`` knows about a built project: its name, its owner and its version.

Replicate addresses a model as ``OWNER/NAME`` and each build of it by a version id. Locally, NAME
and the owner come from ``model_settings.json`` (the owner is the account of the push destination,
``r8.im/ACCOUNT/NAME``, or ``local`` for a model without one), and the version id is a digest of
the settings and the OpenAPI schema: the same build keeps its id across restarts, and a rebuild
that changes either gets a new one.

./serve also says which build it serves (:class:`BuildInfo`): the folder, when it was built (the
time ``./build`` wrote ``model_settings.json``), and the weights' source as the build locked it
(``huggingface.repo`` and ``huggingface.commit``, which is ``null`` for a local folder).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lmtp_runtime.errors import SettingsError
from lmtp_runtime.settings import SETTINGS_FILE, ModelSettings, read_settings

from ..names import model_name_problem
from .errors import ProjectNotFoundError, ServeError
from .prediction import iso_time

LOCAL_OWNER = "local"
"""The owner shown for a model built without ``dest_prefix``; any owner is accepted anyway."""


@dataclass(frozen=True)
class BuildInfo:
    """Which build of a model is served: its folder, its build time and its weights' source."""

    project_dir: Path
    built_at: float
    """When ``model_settings.json`` was written (a POSIX timestamp)."""
    repo: str | None
    """``huggingface.repo`` as configured: a Hub id or a local folder; ``None`` if not recorded."""
    commit: str | None
    """The Hub commit the build locked; ``None`` for a local folder (or if not recorded)."""

    def describe(self) -> str:
        """One line for the terminal, e.g. ``work/m, built 2025-01-02 10:00:00 +0100, from
        meta-llama/Llama-2-7b-hf at commit 01c7f73...``."""
        built = datetime.fromtimestamp(self.built_at).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
        if self.repo is None:
            source = "its weights' source is not recorded"
        elif self.commit is None:
            source = f"from {self.repo} (a local folder: no commit)"
        else:
            source = f"from {self.repo} at commit {self.commit}"
        return f"{self.project_dir.resolve()}, built {built}, {source}"


def read_build_info(project_dir: Path) -> BuildInfo:
    """The :class:`BuildInfo` of a project.

    Raises:
        ServeError: its ``model_settings.json`` cannot be read, or is not a JSON object.
    """
    settings_path = project_dir / SETTINGS_FILE
    settings = _read(settings_path)
    return BuildInfo(
        project_dir=project_dir,
        built_at=settings_path.stat().st_mtime,
        repo=settings.huggingface.repo or None,
        commit=settings.huggingface.commit or None,
    )


def _read(settings_path: Path) -> ModelSettings:
    try:
        return read_settings(settings_path)
    except SettingsError as error:
        raise ServeError(f"{error.args[0].rstrip('.')}: run ./build again.") from None


@dataclass(frozen=True)
class ServedModel:
    """A built model as the Replicate-compatible API presents it."""

    owner: str
    name: str
    version_id: str
    openapi_schema: dict[str, Any]
    created_at: str

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"


def find_project(work_dir: Path, name: str) -> Path:
    """The folder of model ``name`` under ``work_dir``.

    Raises:
        ProjectNotFoundError: ``name`` is no model name, or there is no such project (the message
            lists those that exist).
    """
    problem = model_name_problem(name)
    if problem is not None:
        raise ProjectNotFoundError(f"{problem}; name a model of config.toml.")
    project = work_dir / name
    if _is_project(project):
        return project
    built = sorted(p.name for p in work_dir.glob("*") if _is_project(p))
    known = f" (built: {', '.join(built)})" if built else ""
    raise ProjectNotFoundError(
        f"there is no built model {name!r} in {work_dir}{known}: "
        "add it to config.toml and run ./build, or pass --work-dir."
    )


def _is_project(folder: Path) -> bool:
    return (folder / SETTINGS_FILE).is_file() and (folder / "predict.py").is_file()


def load_served_model(project_dir: Path, openapi_schema: dict[str, Any]) -> ServedModel:
    """The model of ``project_dir``, once its OpenAPI schema has been written."""
    settings_path = project_dir / SETTINGS_FILE
    settings = _read(settings_path)
    destination = settings.destination
    owner = destination.split("/")[-2] if destination else LOCAL_OWNER
    digest = hashlib.sha256(settings_path.read_bytes())
    digest.update(json.dumps(openapi_schema, sort_keys=True).encode())
    created = settings_path.stat().st_mtime
    return ServedModel(
        owner=owner,
        name=settings.name,
        version_id=digest.hexdigest(),
        openapi_schema=openapi_schema,
        created_at=iso_time(created),
    )
