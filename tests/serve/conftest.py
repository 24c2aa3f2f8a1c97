"""Fixtures of the ./serve tests: stand-in Cog projects copied into a temporary work/ folder.

``fixtures/`` holds one small Cog project per scenario, named for what it exercises:
``echo_model`` (a fake LMTP model with predictable, slow-able output, whose ``setup()`` can also
be made slow or die, see its ``ECHO_SETUP``) and ``setup_fails`` (its ``setup()`` raises). Tests
copy them, because serving writes ``.cog/openapi_schema.json`` into the project and the Cog
server's log into ``work/_logs/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
ECHO_MODEL = "echo-model"
SETUP_FAILS = "setup-fails"


def make_work_dir(root: Path) -> Path:
    """A work/ folder holding the fixture projects under their model names."""
    work = root / "work"
    shutil.copytree(FIXTURES / "echo_model", work / ECHO_MODEL)
    shutil.copytree(FIXTURES / "setup_fails", work / SETUP_FAILS)
    return work


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_work_dir(tmp_path_factory.mktemp("serve"))
