"""The data model of config.toml, and (TODO: config helper) its loading and validation.

This module defines what the rest of the builder consumes. Everything downstream reads these
frozen dataclasses, never the raw TOML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PLACEHOLDER_DEST_PREFIX = "r8.im/YOURACCOUNT/"


@dataclass(frozen=True)
class HuggingFaceSource:
    """Where a model's files come from: ``[models.NAME] huggingface.*``."""

    repo: str
    """A Hub id ``owner/name``, or a local directory exactly as written in config.toml."""
    revision: str | None = None
    """``huggingface.version``: a branch, tag or commit; ``None`` means the default branch."""
    local_dir: Path | None = None
    """The absolute directory when ``repo`` names a local directory, else ``None``."""

    @property
    def is_local(self) -> bool:
        return self.local_dir is not None


@dataclass(frozen=True)
class ModelArgs:
    """``[models.NAME] config.*``: how the predictor loads and serves the model."""

    load_in_8bit: bool = False
    load_in_4bit: bool = False
    torch_dtype: str | None = None
    """``"float16"``, ``"bfloat16"``, ``"float32"`` or ``"auto"``; ``None``: checkpoint's own."""
    use_safetensors: bool | None = None
    """``False`` fetches ``.bin`` weights even when safetensors exist; ``None``: prefer safetensors."""
    trust_remote_code: bool = False
    device_map: str | None = None
    """Passed to ``from_pretrained``; ``None`` means ``"auto"`` on GPU."""
    attn_implementation: str | None = None
    max_batch_size: int = 8
    """Most LMTP streams computed in one forward pass."""

    @property
    def quantization(self) -> str:
        """``"8bit"``, ``"4bit"`` or ``"none"``."""
        if self.load_in_8bit:
            return "8bit"
        if self.load_in_4bit:
            return "4bit"
        return "none"


@dataclass(frozen=True)
class CogOptions:
    """``[models.NAME] cog.*``: overrides for the generated cog.yaml."""

    gpu: bool = True
    cuda: str | None = None
    """``None`` lets ``cog build`` pick the CUDA that matches the pinned torch."""
    python_version: str = "3.11"
    extra_requirements: tuple[str, ...] = ()
    """Extra pinned pip requirements (``name==version``), appended to requirements.txt."""
    system_packages: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """One ``[models.NAME]`` table, validated."""

    name: str
    source: HuggingFaceSource
    args: ModelArgs = field(default_factory=ModelArgs)
    cog: CogOptions = field(default_factory=CogOptions)


@dataclass(frozen=True)
class ProjectConfig:
    """A whole config.toml, validated."""

    path: Path
    """The absolute path of the config file (relative local repos resolve against its folder)."""
    dest_prefix: str | None
    """``r8.im/ACCOUNT/`` with the trailing slash; ``None`` while still the placeholder."""
    models: tuple[ModelSpec, ...]

    def destination(self, model: ModelSpec) -> str | None:
        """``r8.im/ACCOUNT/NAME`` for ``cog push``, or ``None`` when no account is set yet."""
        if self.dest_prefix is None:
            return None
        return f"{self.dest_prefix}{model.name}"

    def model(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)
