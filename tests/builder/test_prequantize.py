"""``./build --prequantize``: quantized weights in ``work/NAME/checkpoints``, served as built.

The real ``./build`` runs as a subprocess on a tiny Llama in a local folder; the real runtime
(``LmtpPredictor``) loads what it wrote. The reference for "served as built" is the same model
quantized at boot, as a build without ``--prequantize`` ships it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from lmtp_cog.prequantize import MARKER
from tests.support.builds import (
    BuildRun,
    Project,
    closed_endpoint,
    files_under,
    model_table,
    snapshot,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*MatMul8bitLt.*")

PROMPT = [1, 40, 41, 42, 43]
MAX_TOKENS = 12


def _ok(run: BuildRun) -> BuildRun:
    assert run.returncode == 0, run
    return run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lmtp_cog.tiny_models import make_model

    return make_model(tmp_path_factory.mktemp("tiny") / "model", layers=2, hidden=128)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> tuple[Project, BuildRun]:
    """A project with an 8-bit and an unquantized model, built once with --prequantize."""
    project = Project(tmp_path_factory.mktemp("project"), endpoint=closed_endpoint())
    shutil.copytree(model_dir, project.root / "model")
    project.write_config(
        model_table("q8", "./model", config__load_in_8bit=True),
        model_table("plain", "./model"),
    )
    return project, _ok(project.build("--prequantize"))


@pytest.fixture(scope="module")
def predictors(built: tuple[Project, BuildRun], model_dir: Path) -> Iterator[dict[str, Any]]:
    """The prequantized project's predictor, and one quantizing the original weights at boot."""
    from lmtp_runtime.predictor import LmtpPredictor

    project, _ = built
    settings_path = project.work_dir / "q8" / "model_settings.json"
    at_boot = json.loads(settings_path.read_text())
    del at_boot["load"]["prequantized"]
    at_boot["checkpoint_dir"] = str(model_dir)
    yield {
        "prequantized": LmtpPredictor.from_settings(settings_path),
        "at_boot": LmtpPredictor.from_settings(at_boot),
    }


def _lines(predictor: Any, ops: list[Any]) -> list[dict[str, Any]]:
    output = "".join(predictor.stream(ops_batch_json=json.dumps(ops)))
    return [json.loads(line.partition(" ")[2]) for line in output.splitlines() if line]


def _generate(predictor: Any) -> list[dict[str, Any]]:
    op = {"prompt": PROMPT, "stream_id": 1, "temperature": 0, "max_tokens": MAX_TOKENS}
    return _lines(predictor, [["GENERATE", op]])


def test_checkpoints_hold_int8_weights_and_are_smaller(
    built: tuple[Project, BuildRun], model_dir: Path
) -> None:
    project, run = built
    checkpoints = project.work_dir / "q8" / "checkpoints"

    with safe_open(checkpoints / "model.safetensors", "pt") as weights:
        dtypes = {name: weights.get_slice(name).get_dtype() for name in weights.keys()}
    projections = [name for name in dtypes if name.endswith("q_proj.weight")]
    assert projections and all(dtypes[name] == "I8" for name in projections), dtypes
    assert all(dtypes[name.replace(".weight", ".SCB")] == "F32" for name in projections)
    original = (model_dir / "model.safetensors").stat().st_size
    assert (checkpoints / "model.safetensors").stat().st_size < 0.7 * original
    config = json.loads((checkpoints / "config.json").read_text())
    assert config["quantization_config"]["load_in_8bit"] is True
    # Everything but the weights and config.json is the original file, linked.
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        linked = project.root / "model" / name
        assert (checkpoints / name).stat().st_ino == linked.stat().st_ino, name
    assert project.settings("q8")["load"]["prequantized"] is True
    assert "q8: quantized to 8bit on cpu" in run.stdout, run


def test_a_model_without_8_or_4_bit_is_skipped_with_a_note(
    built: tuple[Project, BuildRun],
) -> None:
    project, run = built

    assert "note: plain: --prequantize skipped" in run.stdout, run
    assert project.settings("plain")["load"]["prequantized"] is False
    checkpoints = project.work_dir / "plain" / "checkpoints"
    for name in files_under(project.root / "model"):
        assert (checkpoints / name).stat().st_ino == (project.root / "model" / name).stat().st_ino


def test_runtime_serves_what_quantizing_at_boot_gives(predictors: dict[str, Any]) -> None:
    prequantized, at_boot = predictors["prequantized"], predictors["at_boot"]
    assert type(prequantized.model.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"

    served, expected = _generate(prequantized), _generate(at_boot)

    assert [line["token"] for line in served] == [line["token"] for line in expected]
    assert len(served) == MAX_TOKENS
    for got, want in zip(served, expected, strict=True):
        assert got["logprob"] == pytest.approx(want["logprob"], abs=1e-3)


def test_model_info_says_prequantized(predictors: dict[str, Any]) -> None:
    infos = {
        name: _lines(predictor, [["MODEL_INFO", {"stream_id": 7}]])[0]["model_info"]
        for name, predictor in predictors.items()
    }

    assert infos["prequantized"]["quantization"] == infos["at_boot"]["quantization"] == "8bit"
    assert infos["prequantized"]["prequantized"] is True
    assert infos["at_boot"]["prequantized"] is False


def test_rebuilds_reuse_then_drop_and_a_failure_changes_nothing(
    built: tuple[Project, BuildRun], tmp_path: Path
) -> None:
    """One copy of the built project goes through a rebuild, a build without the flag, a failure."""
    source, first = built
    project = Project(tmp_path / "copy", endpoint=source.endpoint)
    shutil.copytree(source.root, project.root, dirs_exist_ok=True)
    quantized = project.work_dir / "q8"
    before = snapshot(quantized)

    again = _ok(project.build("--prequantize"))

    assert "q8: 8bit weights up to date" in again.stdout and "q8: up to date" in again.stdout, again
    assert snapshot(quantized) == before
    assert again.seconds < first.seconds

    without = _ok(project.build())

    assert project.settings("q8")["load"]["prequantized"] is False
    checkpoints = quantized / "checkpoints"
    assert not (checkpoints / MARKER).exists()
    for name in files_under(project.root / "model"):
        assert (checkpoints / name).stat().st_ino == (project.root / "model" / name).stat().st_ino
    assert "q8: built" in without.stdout, without

    # An option from_pretrained refuses makes the quantization itself fail, in staging.
    project.write_config(
        model_table("q8", "./model", config__load_in_8bit=True, config__attn_implementation="nope")
    )
    unchanged = snapshot(project.work_dir)

    failed = project.build("--prequantize")

    assert failed.returncode == 1, failed
    assert failed.stderr.startswith("error: model 'q8': quantizing its checkpoint to 8bit failed")
    assert "work/ was left as it was" in failed.stderr
    assert snapshot(project.work_dir) == unchanged
    assert project.staging_leftovers() == []


# --- the runtime's side of load.prequantized --------------------------------------------------


def _settings(checkpoint_dir: Path, **load: Any) -> dict[str, Any]:
    return {
        "format": 1,
        "name": "tiny",
        "checkpoint_dir": str(checkpoint_dir),
        "load": {"quantization": "8bit", "prequantized": True, **load},
    }


def test_runtime_refuses_prequantized_without_a_quantization(model_dir: Path) -> None:
    from lmtp_runtime.errors import SettingsError
    from lmtp_runtime.settings import read_settings

    with pytest.raises(SettingsError, match=r"'load\.prequantized' is true but 'load\.quant"):
        read_settings(_settings(model_dir, quantization="none"))


def test_runtime_refuses_a_prequantized_flag_on_original_weights(model_dir: Path) -> None:
    """Else the checkpoint would silently load unquantized, at four times the memory."""
    from lmtp_runtime.errors import ModelLoadError
    from lmtp_runtime.loading import load_model
    from lmtp_runtime.settings import read_settings

    with pytest.raises(ModelLoadError, match="config.json has no quantization_config"):
        load_model(read_settings(_settings(model_dir)))
