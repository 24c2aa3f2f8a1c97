"""What ``./serve`` knows about a built project: its name, its owner and its version.

Replicate addresses a model as ``OWNER/NAME`` and each build of it by a version id. Locally, NAME
and the owner come from ``model_settings.json`` (the owner is the account of the push destination,
``r8.im/ACCOUNT/NAME``, or ``local`` for a model without one), and the version id is a digest of
the settings and the OpenAPI schema: the same build keeps its id across restarts, and a rebuild
that changes either gets a new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..names import model_name_problem
from ..settings import SETTINGS_FILE
from .errors import ProjectNotFoundError
from .prediction import iso_time

LOCAL_OWNER = "local"
"""The owner shown for a model built without ``dest_prefix``; any owner is accepted anyway."""


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
    settings_bytes = settings_path.read_bytes()
    settings = json.loads(settings_bytes)
    destination = settings.get("destination")
    owner = destination.split("/")[-2] if destination else LOCAL_OWNER
    digest = hashlib.sha256(settings_bytes)
    digest.update(json.dumps(openapi_schema, sort_keys=True).encode())
    created = settings_path.stat().st_mtime
    return ServedModel(
        owner=owner,
        name=settings.get("name") or project_dir.name,
        version_id=digest.hexdigest(),
        openapi_schema=openapi_schema,
        created_at=iso_time(created),
    )
