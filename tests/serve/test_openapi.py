"""The OpenAPI schema written for Cog: generated from the predictor by Cog's own SDK.

That Cog's server really validates inputs and streams with this schema is tested end to end in
test_replicate_api.py; here, the document itself and the errors of a project that does not import.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from lmtp_cog.serve.errors import SchemaError
from lmtp_cog.serve.openapi import SCHEMA_PATH, write_openapi_schema

from .conftest import FIXTURES


def _project(tmp_path: Path, predict_py: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "predict.py").write_text(textwrap.dedent(predict_py))
    return project


def test_the_echo_models_schema_describes_its_inputs_and_streams(tmp_path: Path) -> None:
    project = tmp_path / "echo"
    shutil.copytree(FIXTURES / "echo_model", project)

    path = write_openapi_schema(project)

    assert path == project / SCHEMA_PATH
    schema = json.loads(path.read_text())
    components = schema["components"]["schemas"]
    inputs = components["Input"]
    assert inputs["required"] == ["ops_batch_json"]
    assert inputs["properties"]["ops_batch_json"]["type"] == "string"
    assert inputs["properties"]["prompt"] == {
        "title": "Prompt",
        "x-order": 1,
        "type": "string",
        "default": "",
        "description": "plain text; echoed back word by word",
    }
    assert components["Output"]["x-cog-array-type"] == "iterator"
    assert components["Output"]["x-cog-array-display"] == "concatenate"
    # coglet allows SSE only with the flag on the operation (checked: not on the Output schema).
    assert schema["paths"]["/predictions"]["post"]["x-cog-streaming"] is True


def test_a_predictor_that_returns_one_value_does_not_stream(tmp_path: Path) -> None:
    project = _project(
        tmp_path,
        """
        from typing import Optional
        from cog import BasePredictor, Input

        class Predictor(BasePredictor):
            def predict(
                self,
                n: int = Input(ge=1, le=5, description="how many"),
                name: Optional[str] = None,
            ) -> str:
                return "x" * n
        """,
    )

    schema = json.loads(write_openapi_schema(project).read_text())

    assert "x-cog-streaming" not in schema["paths"]["/predictions"]["post"]
    properties = schema["components"]["schemas"]["Input"]["properties"]
    assert properties["n"]["minimum"] == 1 and properties["n"]["maximum"] == 5
    assert properties["name"]["nullable"] is True
    assert schema["components"]["schemas"]["Input"]["required"] == ["n"]
    assert schema["components"]["schemas"]["Output"]["type"] == "string"


def test_a_predict_py_that_does_not_import_is_one_sentence_naming_the_file(tmp_path: Path) -> None:
    project = _project(tmp_path, "import a_module_that_does_not_exist\n")

    with pytest.raises(SchemaError) as caught:
        write_openapi_schema(project)

    message = str(caught.value)
    assert "\n" not in message
    assert str(project / "predict.py") in message
    assert "a_module_that_does_not_exist" in message
