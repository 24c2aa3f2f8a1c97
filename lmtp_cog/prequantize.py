"""``./build --prequantize``: ship bitsandbytes-quantized weights instead of the original ones.

With ``config.load_in_8bit`` (or ``load_in_4bit``) the container otherwise loads the fp16/fp32
weights and quantizes them in ``setup()``, on every cold boot a Replicate user waits through.
Quantizing once at build time halves (8-bit) or quarters (4-bit) the bytes the image carries and
the boot reads, and skips the quantization itself.

The quantization is done by the very runtime the project ships: the staged project's
``lmtp_runtime`` loads the staged ``model_settings.json`` exactly as ``setup()`` would, in a
subprocess (so a multi-GB model's memory goes back when it is done), and saves the quantized
model. What the container then serves is what it would have computed at boot.

It all happens in the staging folder, before anything is installed: a failure leaves ``work/`` as
it was. A marker file in ``checkpoints/`` records what the weights were made from (the source
files' hashes from the lock, the quantization options, the library versions); a rebuild with the
same inputs hard-links the installed quantized files instead of quantizing again, so the project
stays byte- and inode-identical and the build says "up to date".
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lmtp_runtime.settings import read_settings

from lmtp_cog.checkpoints import link_checkpoints
from lmtp_cog.config import ModelSpec
from lmtp_cog.errors import BuildError
from lmtp_cog.resolution import ResolvedModel
from lmtp_cog.model_settings import (
    CHECKPOINT_DIR,
    SETTINGS_FILE,
    prequantized,
)
from lmtp_cog.units import human_size

MARKER = ".prequantized-from.json"
"""In ``checkpoints/``: what the quantized files there were made from."""
MARKER_FORMAT = 1
QUANTIZATIONS = ("8bit", "4bit")
"""``ModelArgs.quantization`` values bitsandbytes can pre-quantize."""
REQUIRED_MODULES = ("torch", "transformers", "bitsandbytes", "accelerate")
VERSIONED_PACKAGES = ("transformers", "bitsandbytes")
"""Whose versions decide the saved format: a new one quantizes again."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")
"""Original files the quantized ones replace (with config.json, which gains quantization_config)."""
QUANTIZED_CONFIG = "config.json"

# Runs in the staged project's folder, with its runtime first on sys.path. Prints the device.
_QUANTIZE_SCRIPT = """\
import sys
from lmtp_runtime.loading import load_model
from lmtp_runtime.settings import read_settings
try:
    loaded = load_model(read_settings(sys.argv[1]))
    loaded.model.save_pretrained(sys.argv[2], safe_serialization=True)
except Exception as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(1)
print(loaded.device)
"""


@dataclass(frozen=True)
class PrequantizeResult:
    """What :func:`prequantize_project` did to one staged project."""

    model: str
    quantization: str | None
    """``"8bit"``/``"4bit"``; ``None`` when skipped (the model loads unquantized)."""
    reused: bool = False
    """The quantized files of the installed project were linked, not made again."""
    device: str | None = None
    """Where the quantization ran (``"cpu"``, ``"cuda:0"``); ``None`` unless it ran."""
    seconds: float = 0.0
    original_bytes: int = 0
    quantized_bytes: int = 0

    @property
    def skipped(self) -> bool:
        return self.quantization is None

    def summary(self) -> str:
        """One line for the build's output."""
        if self.skipped:
            return (
                f"note: {self.model}: --prequantize skipped: the model loads unquantized; set "
                "config.load_in_8bit or config.load_in_4bit to ship quantized weights."
            )
        sizes = f"{human_size(self.quantized_bytes)} instead of {human_size(self.original_bytes)}"
        if self.reused:
            return f"{self.model}: {self.quantization} weights up to date ({sizes}), kept"
        return (
            f"{self.model}: quantized to {self.quantization} on {self.device} in "
            f"{self.seconds:.1f} s: checkpoints {sizes}"
        )


def prequantize_project(
    project: Path, *, model: ModelSpec, resolved: ResolvedModel, installed: Path
) -> PrequantizeResult:
    """Replace the staged ``project/checkpoints`` (the original weights) by quantized ones.

    Args:
        project: The staged project, rendered and with its original checkpoints linked.
        model: The model's ``[models.NAME]`` table; only 8-bit and 4-bit models are quantized.
        resolved: The model's files with their hashes: what the quantized files derive from.
        installed: The model's project in ``work/`` (may not exist): its quantized files are
            reused when they were made from the same inputs.

    Returns:
        What was done; ``skipped`` for a model that loads unquantized (nothing changed).

    Raises:
        BuildError: torch, transformers or bitsandbytes are missing, or the quantization failed.
    """
    quantization = model.args.quantization
    if quantization not in QUANTIZATIONS:
        return PrequantizeResult(model=model.name, quantization=None)
    checkpoints = project / CHECKPOINT_DIR
    original_bytes = _tree_size(checkpoints)
    inputs = quantization_inputs(model, resolved)
    previous = installed / CHECKPOINT_DIR
    started = time.monotonic()
    device = None
    if made_from(previous, inputs):
        # Same inputs: the installed files are what a new quantization would give. Link them.
        link_checkpoints(_files_of(previous), checkpoints)
    else:
        require_quantization_packages(model.name)
        device = _quantize(project, model=model)
        _write_marker(checkpoints, inputs=inputs, device=device)
    _mark_settings(project / SETTINGS_FILE)
    return PrequantizeResult(
        model=model.name,
        quantization=quantization,
        reused=device is None,
        device=device,
        seconds=time.monotonic() - started,
        original_bytes=original_bytes,
        quantized_bytes=_tree_size(checkpoints),
    )


def quantization_inputs(model: ModelSpec, resolved: ResolvedModel) -> dict[str, Any]:
    """Everything the quantized files depend on, as plain JSON: equal inputs, equal files."""
    args = model.args
    return {
        "quantization": args.quantization,
        "torch_dtype": args.torch_dtype,
        "trust_remote_code": args.trust_remote_code,
        "repo": resolved.repo,
        "commit": resolved.commit,
        "files": [
            {"path": f.path, "size": f.size, "sha256": f.sha256, "blob_id": f.blob_id}
            for f in sorted(resolved.files, key=lambda f: f.path)
        ],
        "versions": {name: _version(name) for name in VERSIONED_PACKAGES},
    }


def made_from(checkpoints: Path, inputs: dict[str, Any]) -> bool:
    """Whether ``checkpoints`` holds quantized files made from ``inputs``, all still present."""
    try:
        marker = json.loads((checkpoints / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return False
    if marker.get("inputs") != inputs:
        return False
    outputs = marker.get("outputs")
    if not isinstance(outputs, dict) or _files_of(checkpoints).keys() != {*outputs, MARKER}:
        return False
    return all((checkpoints / path).stat().st_size == size for path, size in outputs.items())


def require_quantization_packages(model_name: str) -> None:
    """Fail with one sentence, before any work, where the quantizing libraries are missing."""
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise BuildError(
            f"model '{model_name}': --prequantize needs {', '.join(missing)} in the builder's "
            f"Python ({sys.executable}); run `make venv`, which installs them."
        )


def _quantize(project: Path, *, model: ModelSpec) -> str:
    """Quantize the staged checkpoints in place; returns the device the runtime used."""
    checkpoints = project / CHECKPOINT_DIR
    out = project.parent / f".quantized-{project.name}"
    # The staged runtime reads the staged settings; checkpoint_dir resolves beside them.
    done = subprocess.run(
        [sys.executable, "-c", _QUANTIZE_SCRIPT, str(project / SETTINGS_FILE), str(out)],
        cwd=project,
        # The staged runtime first; what the environment adds (packages installed beside the
        # interpreter's own, as on a GPU machine) stays after it.
        env={**os.environ, "PYTHONPATH": _search_path(project), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise BuildError(
            f"model '{model.name}': quantizing its checkpoint to {model.args.quantization} "
            f"failed ({lines[-1]}); work/ was left as it was."
        )
    _replace_weights(checkpoints, quantized=out)
    return done.stdout.strip().splitlines()[-1]


def _replace_weights(checkpoints: Path, *, quantized: Path) -> None:
    """Swap the original weights and config.json for the quantized ones.

    Everything else (tokenizer, generation_config.json, remote code) stays the original file:
    ``save_pretrained`` may rewrite those with this transformers' defaults.
    """
    replaced = [
        path
        for path in checkpoints.rglob("*")
        if path.is_file() and (path.name == QUANTIZED_CONFIG or path.name.endswith(WEIGHT_SUFFIXES))
    ]
    for path in replaced:
        path.unlink()  # a hard link into the cache: unlinked, never written through
    for path in sorted(quantized.rglob("*")):
        target = checkpoints / path.relative_to(quantized)
        if path.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            path.chmod(0o644)  # safetensors are written 0600; the image's user must read them
            os.replace(path, target)


def _write_marker(checkpoints: Path, *, inputs: dict[str, Any], device: str) -> None:
    outputs = {path: (checkpoints / path).stat().st_size for path in _files_of(checkpoints)}
    marker = {"format": MARKER_FORMAT, "inputs": inputs, "outputs": outputs, "device": device}
    text = json.dumps(marker, indent=2, sort_keys=True) + "\n"
    (checkpoints / MARKER).write_text(text, encoding="utf-8")


def _search_path(project: Path) -> str:
    inherited = os.environ.get("PYTHONPATH")
    return os.pathsep.join([str(project), inherited]) if inherited else str(project)


def _mark_settings(path: Path) -> None:
    # read_settings makes checkpoint_dir absolute; the project keeps it relative.
    settings = replace(read_settings(path), checkpoint_dir=Path(CHECKPOINT_DIR))
    path.write_text(prequantized(settings).to_json(), encoding="utf-8")


def _files_of(root: Path) -> dict[str, Path]:
    """Relative path → file, for every file under ``root`` (none when it does not exist)."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def _tree_size(root: Path) -> int:
    return sum(path.stat().st_size for path in _files_of(root).values())


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
