"""Paths of this checkout, for tests that run its commands (``./build``, ``./serve``)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "build"
SERVE_SCRIPT = REPO_ROOT / "serve"
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
