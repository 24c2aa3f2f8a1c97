"""A model built by the real ``./build`` pipeline, served by the real Cog runtime and ./serve."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lmtp_cog.build import BuildOptions, build
from lmtp_cog.serve.service import Served, serve_project
from lmtp_cog.tiny_models import make_model
from tests.support.served_projects import E2E_MODEL, E2E_OWNER


@pytest.fixture(scope="package")
def built_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``work/tiny-llama``, built from a tiny local checkpoint by the real build pipeline."""
    root = tmp_path_factory.mktemp("e2e")
    make_model(root / "model", arch="llama", layers=2, hidden=64, chat_template=True)
    config = root / "config.toml"
    config.write_text(
        f'dest_prefix = "r8.im/{E2E_OWNER}/"\n\n'
        f"[models.{E2E_MODEL}]\n"
        'huggingface.repo = "./model"\n'
        "config.max_batch_size = 4\n"
    )
    build(BuildOptions(config_path=config, work_dir=root / "work"), report=lambda line: None)
    return root / "work" / E2E_MODEL


@pytest.fixture(scope="package")
def served(built_project: Path) -> Iterator[Served]:
    with serve_project(built_project, port=0) as served:
        yield served
