"""The projects the ./serve and end-to-end tests serve, by name.

- ``tests/serve/fixtures/``: stand-in Cog projects, one per scenario: ``echo_model`` (a fake
  LMTP model with predictable, slow-able output, whose ``setup()`` can also be made slow or die,
  see its ``ECHO_SETUP``) and ``setup_fails`` (its ``setup()`` raises). Tests copy them
  (:func:`make_work_dir`), because serving writes ``.cog/openapi_schema.json`` into the project
  and the Cog server's log into ``work/_logs/``.
- The end-to-end tests build :data:`E2E_MODEL` for :data:`E2E_OWNER` with the real pipeline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.paths import REPO_ROOT

SERVE_FIXTURES = REPO_ROOT / "tests" / "serve" / "fixtures"
ECHO_MODEL = "echo-model"
SETUP_FAILS = "setup-fails"

E2E_MODEL = "tiny-llama"
E2E_OWNER = "tester"


def make_work_dir(root: Path) -> Path:
    """A work/ folder holding the fixture projects under their model names."""
    work = root / "work"
    shutil.copytree(SERVE_FIXTURES / "echo_model", work / ECHO_MODEL)
    shutil.copytree(SERVE_FIXTURES / "setup_fails", work / SETUP_FAILS)
    return work


def banner_snippet(banner: str, heading: str) -> str:
    """The indented code block after the banner's line starting with ``heading``, dedented."""
    after = banner[banner.index("\n" + heading) :].split("\n\n", 2)[1]
    return "\n".join(line.removeprefix("    ") for line in after.splitlines())
