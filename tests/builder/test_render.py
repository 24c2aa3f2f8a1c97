"""The rendered Cog project: golden files, cog.yaml against cog's own schema, the push script run
for real, and settings whose characters try to turn into code.

Golden files live in ``golden/<scenario>/``. After an intended template change, regenerate them
with ``UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/builder/test_render.py`` and review the
diff. ``golden/cog_config_schema.json`` is cog's schema of cog.yaml, copied from replicate/cog
(``pkg/config/data/config_schema_v1.0.json``).
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import jsonschema
import pytest
import yaml
from lmtp_runtime.inputs import RUN_INPUTS

from lmtp_cog import paths
from lmtp_cog.cog_interface import read_predictor
from lmtp_cog.cogserver import CogServer
from lmtp_cog.config import (
    CogOptions,
    HuggingFaceSource,
    ModelArgs,
    ModelSpec,
    ProjectConfig,
)
from lmtp_cog.errors import BuildError
from lmtp_cog.render import render_predict_py, render_project, to_json
from lmtp_cog.resolution import RepoFile, ResolvedModel
from lmtp_cog.model_settings import model_settings

GOLDEN_DIR = Path(__file__).with_name("golden")
COG_SCHEMA = json.loads((GOLDEN_DIR / "cog_config_schema.json").read_text())
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"

LLAMA_COMMIT = "01c7f73d771dfac7d292323805ebc428287df4f9"


# --- scenarios ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    config: ProjectConfig
    resolved: ResolvedModel
    with_push: bool

    @property
    def model(self) -> ModelSpec:
        return self.config.models[0]


def _hub_8bit() -> Scenario:
    """A typical model: an 8-bit Llama from the Hub, pushed to a Replicate account."""
    model = ModelSpec(
        name="llama-2-7b-hf--lmql-8bit",
        source=HuggingFaceSource(repo="meta-llama/Llama-2-7b-hf"),
        args=ModelArgs(load_in_8bit=True, torch_dtype="float16"),
        cog=CogOptions(extra_requirements=("protobuf==5.29.3",)),
    )
    config = ProjectConfig(
        path=Path("/home/user/lmql-models/config.toml"),
        dest_prefix="r8.im/lmql-demo/",
        models=(model,),
    )
    resolved = ResolvedModel(
        name=model.name,
        repo="meta-llama/Llama-2-7b-hf",
        revision=None,
        commit=LLAMA_COMMIT,
        files=(
            RepoFile("config.json", 614, blob_id="c" * 40),
            RepoFile("generation_config.json", 188, blob_id="d" * 40),
            RepoFile("model-00001-of-00002.safetensors", 9_976_576_152, sha256="a" * 64),
            RepoFile("model-00002-of-00002.safetensors", 3_500_296_424, sha256="b" * 64),
            RepoFile("model.safetensors.index.json", 26_788, blob_id="e" * 40),
            RepoFile("special_tokens_map.json", 414, blob_id="f" * 40),
            RepoFile("tokenizer.json", 1_842_767, blob_id="0" * 40),
            RepoFile("tokenizer.model", 499_723, sha256="c" * 64),
            RepoFile("tokenizer_config.json", 1_618, blob_id="1" * 40),
        ),
    )
    return Scenario("hub-8bit", config, resolved, with_push=True)


def _local_no_dest() -> Scenario:
    """A model from a local folder, before the user has set dest_prefix (so no push script)."""
    model = ModelSpec(
        name="tiny-llama",
        source=HuggingFaceSource(
            repo="./models/tiny-llama", local_dir=Path("/home/user/lmql-models/models/tiny-llama")
        ),
        args=ModelArgs(device_map="auto", max_batch_size=4),
        cog=CogOptions(cuda="12.4", python_version="3.12", system_packages=("libgomp1",)),
    )
    config = ProjectConfig(
        path=Path("/home/user/lmql-models/config.toml"), dest_prefix=None, models=(model,)
    )
    resolved = ResolvedModel(
        name=model.name,
        repo="./models/tiny-llama",
        revision=None,
        commit=None,
        files=(
            RepoFile("config.json", 652, sha256="2" * 64),
            RepoFile("model.safetensors", 1_213_472, sha256="3" * 64),
            RepoFile("tokenizer.json", 24_580, sha256="4" * 64),
            RepoFile("tokenizer_config.json", 402, sha256="5" * 64),
        ),
    )
    return Scenario("local-no-dest", config, resolved, with_push=False)


SCENARIOS = [_hub_8bit(), _local_no_dest()]


STAND_IN_PREDICTOR = """\
import json
from pathlib import Path


class LmtpPredictor:
    @classmethod
    def from_settings(cls, path):
        predictor = cls()
        predictor.settings = json.loads(Path(path).read_text())
        return predictor

    def stream(self, **inputs):
        yield "MSG " + json.dumps({"settings": self.settings, "inputs": inputs}) + "\\n"
"""


@pytest.fixture(scope="module")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for predictors/lmtp_runtime (the copy and the wiring are tested, not the
    runtime): its predictor answers with the settings it read, and it has bytecode and a link.
    Its settings reader is the real one (stdlib only), which the push script runs."""
    root = tmp_path_factory.mktemp("runtime") / "lmtp_runtime"
    (root / "protocol").mkdir(parents=True)
    (root / "__init__.py").write_text('"""The LMTP runtime."""\n')
    for module in ("settings.py", "errors.py"):
        (root / module).write_bytes((paths.RUNTIME_PACKAGE_DIR / module).read_bytes())
    (root / "predictor.py").write_text(STAND_IN_PREDICTOR)
    (root / "protocol" / "lines.py").write_text("TOKEN = 'TOKEN'\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "predictor.cpython-311.pyc").write_bytes(b"\x00bytecode")
    (root / "protocol" / "lines.pyc").write_bytes(b"\x00bytecode")
    (root / "linked.py").symlink_to(root / "predictor.py")
    return root


def render(scenario: Scenario, out_dir: Path, runtime_dir: Path, **overrides) -> list[Path]:
    arguments = dict(
        config=scenario.config,
        model=scenario.model,
        resolved=scenario.resolved,
        out_dir=out_dir,
        with_push=scenario.with_push,
        runtime_dir=runtime_dir,
    )
    return render_project(**{**arguments, **overrides})


def read_cog_yaml(out_dir: Path) -> dict:
    return yaml.safe_load((out_dir / "cog.yaml").read_text())


# --- golden files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_rendered_files_match_golden(scenario: Scenario, tmp_path: Path, runtime_dir: Path):
    render(scenario, tmp_path, runtime_dir)
    rendered = {p.name: p.read_text() for p in sorted(tmp_path.iterdir()) if p.is_file()}
    golden = GOLDEN_DIR / scenario.name
    if UPDATE_GOLDEN:
        golden.mkdir(exist_ok=True)
        for stale in golden.iterdir():
            stale.unlink()
        for name, text in rendered.items():
            (golden / name).write_text(text)

    expected = {p.name: p.read_text() for p in sorted(golden.iterdir())}
    assert sorted(rendered) == sorted(expected), "the set of rendered files changed"
    diffs = [
        "".join(
            difflib.unified_diff(
                expected[name].splitlines(keepends=True),
                rendered[name].splitlines(keepends=True),
                fromfile=f"golden/{scenario.name}/{name}",
                tofile=f"rendered/{name}",
            )
        )
        for name in expected
        if expected[name] != rendered[name]
    ]
    if diffs:
        pytest.fail(
            "rendered files differ from the golden files (if intended, rerun with "
            "UPDATE_GOLDEN=1 and review the diff):\n" + "\n".join(diffs),
            pytrace=False,
        )


# --- cog.yaml -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_cog_yaml_is_valid_for_cog(scenario: Scenario, tmp_path: Path, runtime_dir: Path):
    render(scenario, tmp_path, runtime_dir)
    document = read_cog_yaml(tmp_path)

    jsonschema.validators.validator_for(COG_SCHEMA)(COG_SCHEMA).validate(document)
    build = document["build"]
    assert build["gpu"] is scenario.model.cog.gpu
    assert build["python_version"] == scenario.model.cog.python_version  # a string, not 3.1
    assert build["python_requirements"] == "requirements.txt"
    assert "python_packages" not in build
    assert build.get("cuda") == scenario.model.cog.image_cuda
    assert build.get("system_packages", []) == list(scenario.model.cog.system_packages)
    assert document["run"] == "predict.py:Predictor" and "predict" not in document
    assert document.get("image") == scenario.config.destination(scenario.model)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_requirements_pin_the_runtime_packages_and_the_extras(
    scenario: Scenario, tmp_path: Path, runtime_dir: Path
):
    render(scenario, tmp_path, runtime_dir)
    lines = (tmp_path / "requirements.txt").read_text().splitlines()
    requirements = [line for line in lines if line and not line.startswith("#")]

    source = paths.RUNTIME_REQUIREMENTS.read_text().splitlines()
    runtime = [line for line in source if line and not line.startswith("#")]
    assert requirements == runtime + list(scenario.model.cog.extra_requirements)
    assert all("==" in requirement for requirement in requirements)


def test_extra_requirement_that_is_not_one_line_is_refused(tmp_path: Path, runtime_dir: Path):
    scenario = _hub_8bit()
    sneaky = replace(
        scenario.model,
        cog=CogOptions(extra_requirements=("numpy==2.4.6\n--index-url http://127.0.0.1:1/",)),
    )
    config = replace(scenario.config, models=(sneaky,))

    with pytest.raises(BuildError, match=r"model 'llama-2-7b-hf--lmql-8bit'.*extra_requirements"):
        render(scenario, tmp_path, runtime_dir, config=config, model=sneaky)
    assert list(tmp_path.iterdir()) == []


# --- settings, predict.py, the runtime ------------------------------------------------------------


def test_model_settings_document(tmp_path: Path, runtime_dir: Path):
    scenario = _hub_8bit()
    render(scenario, tmp_path, runtime_dir)

    assert json.loads((tmp_path / "model_settings.json").read_text()) == {
        "format": 1,
        "name": "llama-2-7b-hf--lmql-8bit",
        "destination": "r8.im/lmql-demo/llama-2-7b-hf--lmql-8bit",
        "huggingface": {
            "repo": "meta-llama/Llama-2-7b-hf",
            "revision": None,
            "commit": LLAMA_COMMIT,
        },
        "checkpoint_dir": "checkpoints",
        "load": {
            "quantization": "8bit",
            "torch_dtype": "float16",
            "trust_remote_code": False,
            "device_map": None,
            "attn_implementation": None,
            "use_safetensors": None,
            "from_pretrained": {},
            "prequantized": False,
        },
        "serve": {
            "max_batch_size": 8,
            "concurrency": 8,
            "prefix_cache_mb": None,
            "prefix_cache_gpu_share": None,
            "log_predictions": False,
        },
        "lmtp_cog_version": "0.1.0",
    }


def test_predict_py_depends_on_the_concurrency_alone(tmp_path: Path, runtime_dir: Path):
    """No setting but config.concurrency reaches predict.py's source: everything else about the
    model is data, in model_settings.json."""
    texts = {}
    for scenario in [*SCENARIOS, _with_concurrency(_hub_8bit(), 1)]:
        out = tmp_path / f"{scenario.name}-{scenario.model.args.concurrency}"
        render(scenario, out, runtime_dir)
        text = (out / "predict.py").read_text()
        assert scenario.resolved.repo not in text and scenario.model.name not in text
        texts.setdefault(scenario.model.args.concurrency, set()).add(text)
    assert sorted(texts) == [1, 8] and all(len(same) == 1 for same in texts.values())
    tree = ast.parse(texts[8].pop())
    predictor = next(node for node in tree.body if isinstance(node, ast.ClassDef))
    assert predictor.name == "Predictor"
    assert [ast.unparse(base) for base in predictor.bases] == ["BaseRunner"]


def _with_concurrency(scenario: Scenario, concurrency: int) -> Scenario:
    model = replace(scenario.model, args=replace(scenario.model.args, concurrency=concurrency))
    return replace(scenario, config=replace(scenario.config, models=(model,)))


@pytest.mark.parametrize("concurrency", [1, 4, 8])
def test_predict_py_declares_everything_in_literals(concurrency: int) -> None:
    """What cog build reads without running Python: every Input(...) keyword is a literal,
    every decorator is literal, and nothing is computed at import time."""
    tree = ast.parse(render_predict_py(concurrency=concurrency))
    predictor = next(node for node in tree.body if isinstance(node, ast.ClassDef))
    run = next(node for node in predictor.body if getattr(node, "name", None) == "run")
    assert isinstance(run, ast.AsyncFunctionDef) == (concurrency > 1)
    assert [ast.unparse(d) for d in run.decorator_list] == [
        "cog.streaming",
        f"cog.concurrent(max={concurrency})",
    ]
    assert ast.unparse(run.returns) == "ConcatenateIterator[str]"
    declared = {}
    for argument, default in zip(run.args.args[1:], run.args.defaults, strict=True):
        assert isinstance(default, ast.Call) and ast.unparse(default.func) == "Input"
        assert not default.args
        declared[argument.arg] = {k.arg: ast.literal_eval(k.value) for k in default.keywords}
    assert declared == {
        spec.name: {
            "default": spec.default,
            **({"ge": spec.ge} if spec.ge is not None else {}),
            **({"le": spec.le} if spec.le is not None else {}),
            "description": spec.description,
        }
        for spec in RUN_INPUTS
    }
    # The module body: imports, one constant, the class; no calls that shape the interface.
    assert [type(node).__name__ for node in tree.body] == [
        "Expr", "ImportFrom", "Import", "ImportFrom", "ImportFrom", "Assign", "ClassDef",
    ]


# The Cog SDK's own view of a project's predictor: what coglet's worker sees when it imports
# predict.py (the inputs it fills in and validates, the shape of run).
_SDK_INSPECTOR = """\
import inspect, json, warnings
warnings.simplefilter("error", DeprecationWarning)
from cog._inspector import create_predictor
from predict import Predictor
info = create_predictor("predict", "Predictor")
print(json.dumps({
    "inputs": {name: {"type": f.type.primitive.name, "repetition": f.type.repetition.name,
                      "default": f.default, "description": f.description, "ge": f.ge,
                      "le": f.le, "choices": f.choices, "min_length": f.min_length,
                      "max_length": f.max_length, "regex": f.regex}
               for name, f in info.inputs.items()},
    "output": [info.output.kind.name, info.output.type.name],
    "async": inspect.iscoroutinefunction(Predictor.run),
    "concurrency": getattr(Predictor.run, "__cog_concurrent_max__", None),
}))
"""
_SDK_TYPES = {"STRING": "string", "INTEGER": "integer", "FLOAT": "number", "BOOL": "boolean"}


@pytest.mark.parametrize("concurrency", [1, 4, 8])
def test_the_static_view_equals_the_cog_sdks_input_by_input(concurrency: int, tmp_path: Path):
    """cog build reads predict.py statically; coglet's worker imports it. The two must agree on
    every input (type, default, bounds, nullability, description), the output and the
    concurrency, and neither may require an input."""
    scenario = _with_concurrency(_hub_8bit(), concurrency)
    project = tmp_path / "project"
    render(scenario, project, paths.RUNTIME_PACKAGE_DIR)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", _SDK_INSPECTOR],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    sdk = json.loads(result.stdout.strip().splitlines()[-1])
    static = read_predictor(project)

    assert list(sdk["inputs"]) == [declared.name for declared in static.inputs]
    for declared in static.inputs:
        seen = sdk["inputs"][declared.name]
        assert (_SDK_TYPES[seen["type"]], seen["repetition"] == "OPTIONAL") == (
            declared.json_type,
            declared.nullable,
        ), declared.name
        assert seen["default"] == declared.default and declared.has_default, declared.name
        assert (seen["ge"], seen["le"], seen["description"]) == (
            declared.ge,
            declared.le,
            declared.description,
        ), declared.name
        assert seen["choices"] is seen["min_length"] is seen["max_length"] is seen["regex"] is None
        assert not declared.required
    assert sdk["output"] == ["CONCAT_ITERATOR", "STRING"] and static.streaming
    assert (sdk["async"], sdk["concurrency"]) == (static.is_async, static.concurrency_max)
    assert static.concurrency_max == concurrency and static.warnings == ()


def test_runtime_is_copied_as_plain_files_without_bytecode(tmp_path: Path, runtime_dir: Path):
    written = render(_hub_8bit(), tmp_path, runtime_dir)
    copy = tmp_path / "lmtp_runtime"

    copied = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file())
    assert copied == [
        "__init__.py", "errors.py", "linked.py", "predictor.py", "protocol/lines.py", "settings.py"
    ]
    assert not any(p.is_symlink() for p in copy.rglob("*"))
    assert (copy / "linked.py").read_text() == (runtime_dir / "predictor.py").read_text()
    assert (copy / "protocol" / "lines.py").read_bytes() == (
        runtime_dir / "protocol" / "lines.py"
    ).read_bytes()
    assert set(written) == {p for p in tmp_path.rglob("*") if p.is_file()}


@pytest.mark.skipif(
    not (paths.RUNTIME_PACKAGE_DIR / "predictor.py").is_file(),
    reason="predictors/lmtp_runtime has no predictor.py yet",
)
def test_the_real_runtime_is_copied_by_default(tmp_path: Path):
    scenario = _hub_8bit()
    render_project(
        config=scenario.config, model=scenario.model, resolved=scenario.resolved, out_dir=tmp_path
    )
    assert (tmp_path / "lmtp_runtime" / "predictor.py").read_bytes() == (
        paths.RUNTIME_PACKAGE_DIR / "predictor.py"
    ).read_bytes()
    assert not list(tmp_path.rglob("__pycache__"))


def test_cog_serves_the_rendered_project_with_its_settings(tmp_path: Path, runtime_dir: Path):
    """predict.py binds the copied runtime to the settings beside it and hands run()'s inputs
    over, as Cog's server (with the image's schema and concurrency) loads and calls it."""
    scenario = _hub_8bit()
    project = tmp_path / "project"
    render(scenario, project, runtime_dir)

    with CogServer(project, env={"PYTHONPATH": ""}) as server:
        server.wait_ready(timeout=60)
        output = server.predict({"ops_batch_json": "[]"})["output"]

    kind, payload = "".join(output).split(" ", 1)
    assert kind == "MSG"
    assert json.loads(payload) == {
        "settings": json.loads((project / "model_settings.json").read_text()),
        "inputs": {spec.name: spec.default for spec in RUN_INPUTS} | {"ops_batch_json": "[]"},
    }


def test_missing_runtime_is_a_build_error(tmp_path: Path):
    with pytest.raises(BuildError, match="predictor runtime is missing"):
        render(_hub_8bit(), tmp_path / "out", tmp_path / "nowhere")


def test_refuses_to_overwrite_a_rendered_project(tmp_path: Path, runtime_dir: Path):
    render(_hub_8bit(), tmp_path, runtime_dir)
    with pytest.raises(BuildError, match="already holds"):
        render(_hub_8bit(), tmp_path, runtime_dir)


def test_without_push_there_is_no_push_script(tmp_path: Path, runtime_dir: Path):
    written = render(_hub_8bit(), tmp_path, runtime_dir, with_push=False)
    assert not (tmp_path / "push").exists()
    assert tmp_path / "push" not in written


# --- the push script, run for real ----------------------------------------------------------------


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A PATH folder with exactly what push needs: bash, dirname and python3 (but no cog)."""
    folder = tmp_path / "tools"
    folder.mkdir()
    for tool in ("bash", "dirname"):
        (folder / tool).symlink_to(_which(tool))
    (folder / "python3").symlink_to(sys.executable)
    return folder


@pytest.fixture
def fake_cog(tmp_path: Path) -> Path:
    """A folder holding a ``cog`` that records its arguments, one JSON list per line, in cog.log."""
    folder = tmp_path / "fake-cog"
    folder.mkdir()
    script = folder / "cog"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"with open({str(folder / 'cog.log')!r}, 'a') as log:\n"
        "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    script.chmod(0o755)
    return folder


def _which(tool: str) -> str:
    for folder in os.environ["PATH"].split(os.pathsep):
        if os.access(Path(folder) / tool, os.X_OK):
            return str(Path(folder) / tool)
    raise AssertionError(f"{tool} is not on PATH")


def run_script(
    script: Path, *args: str, path: list[Path], cwd: Path
) -> subprocess.CompletedProcess:
    """Run ``script`` from an unrelated folder with only ``path`` on PATH."""
    env = {"PATH": os.pathsep.join(map(str, path)), "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )


def cog_calls(fake_cog: Path) -> list[list[str]]:
    log = fake_cog / "cog.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_push_is_executable_and_pushes_to_the_destination(
    tmp_path: Path, runtime_dir: Path, tools: Path, fake_cog: Path
):
    project = tmp_path / "project"
    render(_hub_8bit(), project, runtime_dir)
    assert (project / "push").stat().st_mode & 0o777 == 0o755

    plain = run_script(project / "push", path=[fake_cog, tools], cwd=tmp_path)
    extra = run_script(project / "push", "--separate-weights", path=[fake_cog, tools], cwd=tmp_path)

    assert plain.returncode == 0, plain.stderr
    assert extra.returncode == 0, extra.stderr
    destination = "r8.im/lmql-demo/llama-2-7b-hf--lmql-8bit"
    assert cog_calls(fake_cog) == [
        ["push", destination],
        ["push", destination, "--separate-weights"],
    ]


def test_push_without_cog_says_how_to_install_it(tmp_path: Path, runtime_dir: Path, tools: Path):
    project = tmp_path / "project"
    render(_hub_8bit(), project, runtime_dir)

    result = run_script(project / "push", path=[tools], cwd=tmp_path)

    assert result.returncode != 0
    assert "cog command-line tool is not on PATH" in result.stderr
    assert "install" in result.stderr


def test_push_without_destination_says_to_set_dest_prefix(
    tmp_path: Path, runtime_dir: Path, tools: Path, fake_cog: Path
):
    project = tmp_path / "project"
    render(_local_no_dest(), project, runtime_dir, with_push=True)

    result = run_script(project / "push", path=[fake_cog, tools], cwd=tmp_path)

    assert result.returncode != 0
    assert "set dest_prefix in config.toml and rebuild" in result.stderr
    assert cog_calls(fake_cog) == []


# --- settings that try to become code -------------------------------------------------------------

TRICKY_STRINGS = [
    'double " quote',
    "single ' quote",
    "back\\slash",
    "new\nline",
    "carriage\rreturn",
    "tab\tand NUL \x00",
    "DEL \x7f",
    "YAML line breaks \x85 \u2028 \u2029",
    "BOM \ufeff and noncharacter \uffff",
    "astral \U0001f600",
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "# not a comment",
    "key: value",
    "- item",
    "[flow, {seq}]",
    "{{ jinja }} {% raw %}",
    "null",
    "3.10",
    "",
]


@pytest.mark.parametrize("value", TRICKY_STRINGS)
def test_tojson_reads_back_as_the_same_value_in_yaml_json_and_python(value: str):
    text = to_json(value)
    assert yaml.safe_load(f"key: {text}\n") == {"key": value}
    assert yaml.safe_load(f"key: {to_json([value, value])}\n") == {"key": [value, value]}
    assert json.loads(text) == value
    assert ast.literal_eval(text) == value


@pytest.fixture
def injection(tmp_path: Path) -> tuple[Scenario, Path]:
    """A model whose every string setting tries to break out of its file, and the folder where
    the commands it smuggles in would leave their marks (it must stay empty)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    nasty = (
        f"q\"uo'te\n$(touch {marks}/dollar) `touch {marks}/tick` "
        "\\ # x: - [y] \u2028\x85 \U0001f600"
    )
    model = ModelSpec(
        name=f"name-{nasty}",
        source=HuggingFaceSource(repo=f"org/{nasty}", revision=f"rev-{nasty}"),
        # torch_dtype is one of four words (config.toml and the settings reader both check it),
        # so it cannot carry anything; every free-form string does.
        args=ModelArgs(torch_dtype="float16", attn_implementation=nasty),
        cog=CogOptions(
            cuda=f"12.{nasty}",
            python_version=f"3.{nasty}",
            system_packages=(f"pkg-{nasty}", "git"),
            extra_requirements=(f'odd==1.0 ; python_version > "3" and "$(touch {marks}/pip)"',),
        ),
    )
    config = ProjectConfig(
        path=tmp_path / f"config-{nasty.replace('/', '_')}.toml",
        dest_prefix=f"r8.im/acct-{nasty}/",
        models=(model,),
    )
    resolved = ResolvedModel(
        name=model.name,
        repo=model.source.repo,
        revision=model.source.revision,
        commit=f"commit-{nasty}",
        files=(RepoFile("model.safetensors", 10),),
    )
    return Scenario("injection", config, resolved, with_push=True), marks


def test_injected_settings_stay_data(
    injection, tmp_path: Path, runtime_dir: Path, tools: Path, fake_cog: Path
):
    scenario, marks = injection
    model, resolved = scenario.model, scenario.resolved
    destination = scenario.config.destination(model)
    project = tmp_path / "project"
    render(scenario, project, runtime_dir)

    # cog.yaml holds exactly the keys it should, with the values as they were.
    document = read_cog_yaml(project)
    assert set(document) == {"build", "image", "run"}
    assert document["image"] == destination
    assert document["build"]["cuda"] == model.cog.cuda
    assert document["build"]["python_version"] == model.cog.python_version
    assert document["build"]["system_packages"] == list(model.cog.system_packages)
    assert document["build"]["sdk_version"] == model.cog.sdk_version
    assert set(document["build"]) == {
        "gpu", "python_version", "cuda", "sdk_version", "python_requirements", "system_packages"
    }

    # model_settings.json round-trips every value.
    settings = json.loads((project / "model_settings.json").read_text())
    built = model_settings(config=scenario.config, model=model, resolved=resolved)
    assert settings == json.loads(built.to_json())
    assert settings["huggingface"]["repo"] == resolved.repo
    assert settings["huggingface"]["revision"] == resolved.revision

    # requirements.txt: the odd but single-line requirement is one line of its own.
    requirements = (project / "requirements.txt").read_text().splitlines()
    assert model.cog.extra_requirements[0] in requirements

    # predict.py carries no setting: it is the same text as for any other model.
    static = (GOLDEN_DIR / "hub-8bit" / "predict.py").read_text()
    assert (project / "predict.py").read_text() == static

    # push hands the destination to cog as one argument and runs nothing else.
    push = run_script(project / "push", "--separate-weights", path=[fake_cog, tools], cwd=tmp_path)
    assert push.returncode == 0, push.stderr
    assert cog_calls(fake_cog) == [["push", destination, "--separate-weights"]]

    assert list(marks.iterdir()) == []


def test_readme_code_samples_quote_injected_settings(
    injection, tmp_path: Path, runtime_dir: Path, tools: Path, fake_cog: Path
):
    scenario, marks = injection
    resolved, destination = scenario.resolved, scenario.config.destination(scenario.model)
    project = tmp_path / "project"
    render(scenario, project, runtime_dir)
    readme = (project / "README.md").read_text()

    # The Python samples compile, and their string literals are the settings.
    python_blocks = re.findall(r"^```python\n(.*?)^```$", readme, flags=re.S | re.M)
    assert len(python_blocks) == 3  # LMQL, replicate (LMTP), replicate (text)
    literals = set()
    for block in python_blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
    replicate_model = destination.partition("/")[2]
    assert {resolved.repo, f"replicate:{replicate_model}", replicate_model} <= literals

    # The shell samples run: each is a `cog run` with one well-formed ops_batch_json, and the
    # pushed image's name reaches cog as one argument.
    shell_blocks = re.findall(r"^```sh\n(.*?)^```$", readme, flags=re.S | re.M)
    result = run_script_text("\n".join(shell_blocks), path=[fake_cog, tools], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    calls = cog_calls(fake_cog)
    assert [call[0] for call in calls] == ["run"] * 3
    assert calls[-1][1] == destination
    for call in calls:
        option = call[call.index("-i") + 1]
        assert option.startswith("ops_batch_json=")
        ops = json.loads(option.removeprefix("ops_batch_json="))
        assert all(command in {"GENERATE", "SCORE", "MODEL_INFO"} for command, _ in ops)

    assert list(marks.iterdir()) == []


def run_script_text(text: str, *, path: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    script = cwd / "snippet.sh"
    script.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + text)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return run_script(script, path=path, cwd=cwd)
