"""``lmtp_cog.cog_interface`` against cog's own static schema generator.

Each folder of ``cog_interface_cases/`` holds a ``predict.py`` and ``cog-v0.22.0.json``: what
cog v0.22.0's generator (``schema.GenerateCombined`` and ``GenerateInfo``, built from cog's
source as docs/cog-build.md describes) printed for it: the OpenAPI document, ``is_async``,
``concurrency_max``, streaming and its warnings. The reader must say the same, document for
document, or refuse the file where cog would silently change its meaning.

Three cases are the ``predict.py`` the builder renders (concurrency 1, 4 and 8); a test fails when
the template changes without the cases being regenerated with cog.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmtp_cog.cog_interface import (
    COG_CLI_VERSION,
    PREDICTOR_REF,
    openapi_schema,
    parse_predictor,
    read_predictor,
)
from lmtp_cog.errors import CogInterfaceError
from lmtp_cog.render import render_predict_py

CASES = Path(__file__).parent / "cog_interface_cases"
COG_OUTPUT = f"cog-v{COG_CLI_VERSION}.json"
ACCEPTED = [
    "rendered-concurrency-1",
    "rendered-concurrency-4",
    "rendered-concurrency-8",
    "every-input-kind",
    "decorators-by-name",
    "bare-concurrent-sync",
]


def cog_said(case: str) -> dict[str, Any]:
    return json.loads((CASES / case / COG_OUTPUT).read_text())


@pytest.mark.parametrize("case", ACCEPTED)
def test_the_schema_is_the_one_cog_build_writes(case: str) -> None:
    declared = read_predictor(CASES / case)
    cog = cog_said(case)

    assert openapi_schema(declared) == cog["schema"]
    assert declared.is_async == cog["info"]["is_async"]
    assert declared.concurrency_max == cog["info"]["concurrency_max"]
    assert declared.streaming == cog["info_full_parse"]["supports_streaming"]
    assert [f"cog: warning: {warning}" for warning in declared.warnings] == cog["warnings"]


@pytest.mark.parametrize("concurrency", [1, 4, 8])
def test_the_rendered_cases_are_what_the_builder_renders_today(concurrency: int) -> None:
    case = CASES / f"rendered-concurrency-{concurrency}" / "predict.py"
    assert render_predict_py(concurrency=concurrency) == case.read_text(), (
        "templates/predict.py.j2 or lmtp_runtime/inputs.py changed: render the cases again and "
        "run cog's generator on them (docs/cog-build.md)"
    )


@pytest.mark.parametrize("concurrency", [1, 4, 8])
def test_a_rendered_project_requires_nothing_and_streams(concurrency: int) -> None:
    cog = cog_said(f"rendered-concurrency-{concurrency}")
    schema = cog["schema"]
    assert "required" not in schema["components"]["schemas"]["Input"]
    assert schema["paths"]["/predictions"]["post"]["x-cog-streaming"] is True
    assert cog["warnings"] == []
    assert (cog["info"]["concurrency_max"], cog["info"]["is_async"]) == (
        concurrency,
        concurrency > 1,
    )


def test_an_imported_default_is_refused_because_cog_makes_the_input_required() -> None:
    cog = cog_said("imported-default")
    assert cog["schema"]["components"]["schemas"]["Input"]["required"] == ["max_new_tokens"]
    with pytest.raises(CogInterfaceError) as caught:
        read_predictor(CASES / "imported-default")
    message = str(caught.value)
    assert "predict.py, line 14" in message
    assert "max_new_tokens" in message and "required" in message and "\n" not in message


def test_a_parenthesised_description_is_refused_because_cog_drops_it() -> None:
    cog = cog_said("parenthesised-description")
    assert (
        "description" not in cog["schema"]["components"]["schemas"]["Input"]["properties"]["prompt"]
    )
    with pytest.raises(CogInterfaceError, match="input prompt: write description as one string"):
        read_predictor(CASES / "parenthesised-description")


PREAMBLE = "import cog\nfrom cog import BaseRunner, Input, ConcatenateIterator\n\n"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (
            "class Predictor(BaseRunner):\n"
            "    @cog.concurrent(max=4)\n"
            "    def run(self, x: int = Input(default=1)) -> str:\n"
            "        return ''\n",
            "@cog.concurrent(max=4) needs an async def run",
        ),
        (
            "class Predictor(BaseRunner):\n"
            "    @cog.streaming\n"
            "    def run(self, x: int = Input(default=1)) -> str:\n"
            "        return ''\n",
            "@cog.streaming needs an Iterator",
        ),
        (
            "N = 3\nclass Predictor(BaseRunner):\n"
            "    @cog.concurrent(max=N)\n"
            "    async def run(self, x: int = Input(default=1)) -> str:\n"
            "        return ''\n",
            "write @cog.concurrent(max=N) with N an integer literal",
        ),
        (
            "class Predictor(BaseRunner):\n"
            "    def run(self, x: int = Input(default=None)) -> str:\n"
            "        return ''\n",
            "input x has the default None but a type that is not optional",
        ),
        (
            "class Predictor(BaseRunner):\n"
            "    def run(self, x: int = Input(default=1, description='a\\\\nb')) -> str:\n"
            "        return ''\n",
            "input x: description holds a backslash",
        ),
        (
            "class Predictor(BaseRunner):\n"
            "    def run(self, x: list[int] = Input(default=[1])) -> str:\n"
            "        return ''\n",
            "the type of input x is list[int]",
        ),
        (
            "class Base(BaseRunner):\n"
            "    def run(self) -> str:\n"
            "        return ''\n"
            "class Predictor(Base):\n"
            "    pass\n",
            "Predictor defines no run() method in its own body",
        ),
        ("class Other(BaseRunner):\n    pass\n", "defines no class Predictor"),
        ("class Predictor(:\n", "line 4"),
    ],
)
def test_what_cog_would_misread_is_refused_in_one_sentence(body: str, complaint: str) -> None:
    with pytest.raises(CogInterfaceError) as caught:
        parse_predictor(PREAMBLE + body, path=Path("p/predict.py"), class_name="Predictor")
    message = str(caught.value)
    assert complaint in message and message.startswith("p/predict.py") and "\n" not in message


def test_a_missing_predict_py_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CogInterfaceError, match="predict.py does not exist"):
        read_predictor(tmp_path, PREDICTOR_REF)
