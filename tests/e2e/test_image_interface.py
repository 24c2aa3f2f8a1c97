"""What a model built by ./build shows the world, compared with what cog build would bake in.

``./serve`` must run a project as its image runs: the version it lists carries the OpenAPI schema
cog's own generator writes for that ``predict.py`` (``tests/builder/cog_interface_cases/``, made
with cog v0.22.0), and the Cog server behind it runs the decorator's concurrency. Callers of the
Replicate-compatible API never see Cog's 409: predictions sent back to back all succeed, with one
slot or eight.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lmtp_cog.build import BuildOptions, build
from lmtp_cog.cog_interface import COG_CLI_VERSION
from lmtp_cog.serve.service import Served, serve_project
from tests.support.served_projects import E2E_MODEL, E2E_OWNER

CASES = Path(__file__).parents[1] / "builder" / "cog_interface_cases"
MODEL_INFO = json.dumps([["MODEL_INFO", {"stream_id": 1}]])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_the_listed_version_has_the_schema_cog_build_writes(
    built_project: Path, served: Served
) -> None:
    cog = json.loads((CASES / "rendered-concurrency-8" / f"cog-v{COG_CLI_VERSION}.json").read_text())
    assert (built_project / "predict.py").read_text() == (
        CASES / "rendered-concurrency-8" / "predict.py"
    ).read_text()

    model = get_json(f"{served.api_url}/v1/models/{E2E_OWNER}/{E2E_MODEL}")
    version = model["latest_version"]
    assert version["openapi_schema"] == cog["schema"]
    baked = json.loads((built_project / ".cog" / "openapi_schema.json").read_text())
    assert baked == cog["schema"]
    assert served.cog.concurrency == cog["info"]["concurrency_max"] == 8


@pytest.fixture(scope="module")
def served_one_at_a_time(tmp_path_factory: pytest.TempPathFactory, built_project: Path):
    """The same checkpoint built with config.concurrency = 1, and served."""
    root = tmp_path_factory.mktemp("one-at-a-time")
    config = root / "config.toml"
    config.write_text(
        f'dest_prefix = "r8.im/{E2E_OWNER}/"\n\n[models.{E2E_MODEL}]\n'
        f"huggingface.repo = {json.dumps(str(built_project / 'checkpoints'))}\n"
        "config.concurrency = 1\n"
    )
    build(BuildOptions(config_path=config, work_dir=root / "work"), report=lambda line: None)
    with serve_project(root / "work" / E2E_MODEL, port=0, lmtp_port=None) as served:
        yield served


def _predict_waiting(served: Served) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{served.api_url}/v1/models/{E2E_OWNER}/{E2E_MODEL}/predictions",
        data=json.dumps({"input": {"ops_batch_json": MODEL_INFO}}).encode(),
        headers={"Content-Type": "application/json", "Prefer": "wait"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("fixture", ["served", "served_one_at_a_time"])
def test_back_to_back_predictions_all_succeed(fixture: str, request: pytest.FixtureRequest) -> None:
    """coglet answers 409 for a moment after each prediction when all its slots were taken; the
    API queues and asks again, as Replicate does, so a caller never sees it."""
    served = request.getfixturevalue(fixture)
    statuses = [_predict_waiting(served)["status"] for _ in range(200)]
    assert statuses == ["succeeded"] * 200, {status: statuses.count(status) for status in statuses}

