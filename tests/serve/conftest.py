"""Fixtures of the ./serve tests: the stand-in Cog projects of ``fixtures/``, copied into a
temporary work/ folder (:mod:`tests.support.served_projects` says what each one is)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.served_projects import make_work_dir


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_work_dir(tmp_path_factory.mktemp("serve"))
