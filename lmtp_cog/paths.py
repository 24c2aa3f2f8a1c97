"""Where the toolkit's own folders are: templates and the predictor runtime shipped into images."""

from __future__ import annotations

from pathlib import Path

TOOLKIT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = TOOLKIT_ROOT / "templates"
PREDICTORS_DIR = TOOLKIT_ROOT / "predictors"
RUNTIME_PACKAGE_DIR = PREDICTORS_DIR / "lmtp_runtime"
RUNTIME_REQUIREMENTS = PREDICTORS_DIR / "requirements.txt"
