"""Where the toolkit's own files are (the templates, the runtime and its pins, the examples),
and where its output goes by default (``work/``).

They are package data of the installed distribution (see pyproject.toml): ``templates/``,
``predictors/requirements.txt`` and ``examples/`` of a checkout are mapped to the packages
``lmtp_cog.templates``, ``lmtp_cog.predictors`` and ``lmtp_cog.examples``, and the runtime is
the package ``lmtp_runtime``. So the same lookups work in a checkout (an editable install) and
from a wheel, and no path climbs out of the package.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import lmtp_runtime


def _folder(package: str) -> Path:
    return Path(str(files(package)))


TEMPLATES_DIR = _folder("lmtp_cog.templates")
RUNTIME_PACKAGE_DIR = Path(lmtp_runtime.__file__).parent
"""The runtime copied into every generated project."""
RUNTIME_REQUIREMENTS = _folder("lmtp_cog.predictors") / "requirements.txt"
EXAMPLES_DIR = _folder("lmtp_cog.examples")

DEFAULT_WORK_DIR = Path("work")
"""``work/`` in the current directory: where ``./build`` writes and ``./serve`` looks."""
