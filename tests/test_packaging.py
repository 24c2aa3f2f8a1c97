"""lmtp-cog as a wheel: installed into a fresh virtual environment, it builds the example.

The wheel must carry everything a build reads (the templates, the runtime, its pins, the
examples) as package data, and nothing may depend on the checkout's layout. The project built
from the wheel is compared, file by file, with the one the checkout builds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lmtp_cog.build import BuildOptions, build
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("LMTP_SKIP_WHEEL_TEST") == "1", reason="LMTP_SKIP_WHEEL_TEST=1"
)


def _run(*command: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", out, REPO_ROOT, cwd=out,
    )
    [built] = out.glob("lmtp_cog-*.whl")
    return built


def test_the_wheel_carries_the_templates_the_runtime_and_the_examples(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lmtp_cog/templates/predict.py.j2" in names
    assert "lmtp_cog/predictors/requirements.txt" in names
    assert "lmtp_cog/examples/tiny/config.toml" in names
    assert "lmtp_runtime/predictor.py" in names and "lmtp_runtime/inputs.py" in names
    assert not any(name.startswith(("tests/", "bench/", "work/")) for name in names)


def test_a_fresh_venv_with_the_wheel_builds_the_example(
    wheel: Path, tmp_path: Path, tiny_checkpoint
) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin" / "pip", "install", "-q", wheel, cwd=tmp_path)

    # The example as a user has it: its config.toml, and the checkpoint `make example` makes.
    example = tmp_path / "examples" / "tiny"
    example.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "examples" / "tiny" / "config.toml", example / "config.toml")
    shutil.copytree(tiny_checkpoint("safetensors"), example / "model")

    built = _run(
        venv / "bin" / "lmtp-cog", "build", "--config", "examples/tiny/config.toml", cwd=tmp_path
    )

    assert "tiny-llama: built:" in built.stdout, built.stdout
    from_wheel = tmp_path / "work" / "tiny-llama"
    from_checkout = tmp_path / "checkout-work" / "tiny-llama"
    build(
        BuildOptions(config_path=example / "config.toml", work_dir=from_checkout.parent),
        report=lambda line: None,
    )
    files = sorted(p.relative_to(from_wheel) for p in from_wheel.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(from_checkout) for p in from_checkout.rglob("*") if p.is_file()
    )
    for path in files:
        assert (from_wheel / path).read_bytes() == (from_checkout / path).read_bytes(), path
