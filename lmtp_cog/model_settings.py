"""From a model of config.toml to its ``model_settings.json``: the builder's side of the file.

The generated project carries the model's settings as data, in this one JSON document, and never
as values pasted into Python or shell source (``predict.py``'s literal concurrency aside, which
cog reads from the source). So no setting, however odd its characters, can change what the
generated code does. The schema, its defaults, its writer and its reader are the runtime's
(:class:`lmtp_runtime.settings.ModelSettings`): this module only fills it in from config.toml.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmtp_runtime.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_BATCH_SIZE,
    SETTINGS_FILE,
    HubSource,
    LoadOptions,
    ModelSettings,
    ServeOptions,
)

from lmtp_cog import __version__
from lmtp_cog.config import HuggingFaceSource, ModelArgs, ModelSpec, ProjectConfig
from lmtp_cog.resolution import ResolvedModel

__all__ = [
    "CHECKPOINT_DIR",
    "SETTINGS_FILE",
    "local_model_settings",
    "model_settings",
    "prequantized",
    "published_repo",
]

CHECKPOINT_DIR = "checkpoints"
"""Where the weights and tokenizer lie in the generated project, relative to ``predict.py``."""


def model_settings(
    *, config: ProjectConfig, model: ModelSpec, resolved: ResolvedModel
) -> ModelSettings:
    """The settings of one model; write them with :meth:`ModelSettings.to_json`.

    Args:
        config: The whole configuration; it knows the model's push destination.
        model: The model's ``[models.NAME]`` table.
        resolved: The model's source pinned to a commit (``commit`` is ``None`` for a local
            directory).
    """
    args = model.args
    return ModelSettings(
        name=model.name,
        checkpoint_dir=Path(CHECKPOINT_DIR),
        destination=config.destination(model),
        huggingface=HubSource(
            repo=published_repo(model), revision=resolved.revision, commit=resolved.commit
        ),
        load=LoadOptions(
            quantization=args.quantization,
            torch_dtype=args.torch_dtype,
            trust_remote_code=args.trust_remote_code,
            device_map=args.device_map,
            attn_implementation=args.attn_implementation,
            use_safetensors=args.use_safetensors,
            from_pretrained=dict(args.from_pretrained),
        ),
        serve=ServeOptions(
            max_batch_size=args.max_batch_size,
            concurrency=args.concurrency,
            prefix_cache_mb=args.prefix_cache_mb,
            log_predictions=args.log_predictions,
        ),
        lmtp_cog_version=__version__,
    )


def published_repo(model: ModelSpec) -> str:
    """``huggingface.repo`` as a published project names it: the Hub id, or a local folder as
    config.toml names it relative to itself (``./model``). An absolute or home path is a path of
    the build machine (a user name, a layout), so only the folder's own name is published."""
    repo = model.source.repo
    if model.source.is_local and repo.startswith(("/", "~")):
        return Path(repo).expanduser().name or repo
    return repo


def prequantized(settings: ModelSettings) -> ModelSettings:
    """``settings`` for a project whose ``checkpoints/`` holds weights quantized at build time.

    The runtime then loads them as saved (their config.json carries the ``quantization_config``)
    instead of quantizing at every boot; ``load.quantization`` still says which kind they are.
    """
    return replace(settings, load=replace(settings.load, prequantized=True))


def local_model_settings(
    checkpoint_dir: Path,
    *,
    name: str = "tiny",
    repo: str = "local/tiny",
    revision: str | None = None,
    commit: str | None = None,
    quantization: str = "none",
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    log_predictions: bool = False,
    **load: Any,
) -> dict[str, Any]:
    """The decoded ``model_settings.json`` that ``./build`` would write for a checkpoint on
    disk, for callers that drive the runtime in-process without a build (the tests, the
    benchmarks: ``LmtpPredictor.from_settings(...)``); ``load`` overrides ``load.*`` keys.

    A relative ``checkpoint_dir`` stays relative: the runtime resolves it against the settings
    file's folder, as it does for a built project.
    """
    args = ModelArgs(
        load_in_8bit=quantization == "8bit",
        load_in_4bit=quantization == "4bit",
        max_batch_size=max_batch_size,
        concurrency=concurrency,
        log_predictions=log_predictions,
    )
    model = ModelSpec(name=name, source=HuggingFaceSource(repo=repo, revision=revision), args=args)
    settings = json.loads(
        model_settings(
            config=ProjectConfig(
                path=checkpoint_dir / "config.toml", dest_prefix=None, models=(model,)
            ),
            model=model,
            resolved=ResolvedModel(name=name, repo=repo, revision=revision, commit=commit, files=()),
        ).to_json()
    )
    settings["checkpoint_dir"] = str(checkpoint_dir)
    settings["load"].update(load)
    return settings
