"""``model_settings.json``: everything the predictor runtime needs to know about its model.

The generated project carries the model's settings as data, in this one JSON document, and never
as values pasted into Python or shell source: ``predict.py`` and ``push`` are the same text for
every model and read this file. So no setting (however odd its characters) can change what the
generated code does, and the runtime in ``predictors/lmtp_runtime`` codes against one schema:

.. code-block:: json

    {"format": 1,
     "name": "llama-2-7b-hf--lmql-8bit",
     "destination": "r8.im/ACCOUNT/llama-2-7b-hf--lmql-8bit",
     "huggingface": {"repo": "meta-llama/Llama-2-7b-hf", "revision": null, "commit": "01c7f73..."},
     "checkpoint_dir": "checkpoints",
     "load": {"quantization": "8bit", "torch_dtype": "float16", "trust_remote_code": false,
              "device_map": null, "attn_implementation": null, "use_safetensors": null,
              "from_pretrained": {"low_cpu_mem_usage": true}},
     "serve": {"max_batch_size": 8, "concurrency": 8, "prefix_cache_mb": null,
               "log_predictions": false},
     "lmtp_cog_version": "0.1.0"}

``format`` changes only when a key changes meaning or disappears, so a runtime can refuse a file
it does not understand. ``./build --prequantize`` adds ``"prequantized": true`` to ``load`` (see
:func:`prequantized_settings`); absent means false, so other projects' files stay as they were.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmtp_cog import __version__
from lmtp_cog.config import ModelSpec, ProjectConfig
from lmtp_cog.resolution import ResolvedModel

SETTINGS_FORMAT = 1
SETTINGS_FILE = "model_settings.json"
"""The file name, beside ``predict.py`` in the generated project."""
CHECKPOINT_DIR = "checkpoints"
"""Where the weights and tokenizer lie in the generated project, relative to ``predict.py``."""


def model_settings(
    *, config: ProjectConfig, model: ModelSpec, resolved: ResolvedModel
) -> dict[str, Any]:
    """The ``model_settings.json`` document of one model (the schema is in the module docstring).

    Args:
        config: The whole configuration; it knows the model's push destination.
        model: The model's ``[models.NAME]`` table.
        resolved: The model's source pinned to a commit (``commit`` is ``None`` for a local
            directory).

    Returns:
        A JSON-serialisable dict; write it with :func:`settings_text`.
    """
    args = model.args
    return {
        "format": SETTINGS_FORMAT,
        "name": model.name,
        "destination": config.destination(model),
        "huggingface": {
            "repo": published_repo(model),
            "revision": resolved.revision,
            "commit": resolved.commit,
        },
        "checkpoint_dir": CHECKPOINT_DIR,
        "load": {
            "quantization": args.quantization,
            "torch_dtype": args.torch_dtype,
            "trust_remote_code": args.trust_remote_code,
            "device_map": args.device_map,
            "attn_implementation": args.attn_implementation,
            "use_safetensors": args.use_safetensors,
            "from_pretrained": dict(args.from_pretrained),
        },
        "serve": {
            "max_batch_size": args.max_batch_size,
            "concurrency": args.concurrency,
            "prefix_cache_mb": args.prefix_cache_mb,
            "log_predictions": args.log_predictions,
        },
        "lmtp_cog_version": __version__,
    }


def published_repo(model: ModelSpec) -> str:
    """``huggingface.repo`` as a published project names it: the Hub id, or a local folder as
    config.toml names it relative to itself (``./model``). An absolute or home path is a path of
    the build machine (a user name, a layout), so only the folder's own name is published."""
    repo = model.source.repo
    if model.source.is_local and repo.startswith(("/", "~")):
        return Path(repo).expanduser().name or repo
    return repo


def prequantized_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` for a project whose ``checkpoints/`` holds weights quantized at build time.

    The runtime then loads them as saved (their config.json carries the ``quantization_config``)
    instead of quantizing at every boot; ``load.quantization`` still says which kind they are.
    """
    return {**settings, "load": {**settings["load"], "prequantized": True}}


def settings_text(settings: dict[str, Any]) -> str:
    """The file's text: stable key order and indentation, so rebuilds diff cleanly."""
    return json.dumps(settings, indent=2, sort_keys=True) + "\n"
