"""What the runtime knows about the served model: its limits, its stop tokens, and MODEL_INFO.

The context window and the end-of-sequence ids are spelled differently across architectures and
files (``max_position_embeddings`` vs ``n_positions``; ``eos_token_id`` as an int or a list, in
config.json, generation_config.json or the tokenizer), so they are worked out once, here.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable
from typing import Any

import torch
import transformers

from . import __version__
from .loading import LoadedModel
from .settings import ModelSettings

CONTEXT_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_sequence_length",
    "seq_length",
    "max_seq_len",
)
# Tokenizers without a known limit report a huge sentinel (int(1e30)) as model_max_length.
_NO_LIMIT = 10**9


def context_length(config: Any, tokenizer: Any = None) -> int | None:
    """The longest sequence the model takes, or ``None`` when nothing says."""
    text_config = (
        config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    )
    for key in CONTEXT_LENGTH_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < _NO_LIMIT else None


def eos_token_ids(model: Any, tokenizer: Any = None) -> tuple[int, ...]:
    """Every id that ends a sequence: config.json's, then generation_config's, then the tokenizer's.

    Chat checkpoints often disagree between these (the base model's end-of-text vs the chat
    template's end-of-turn); generating past either would be wrong, so all of them stop.
    """
    sources = (
        getattr(model.config, "eos_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    )
    ids: list[int] = []
    for value in sources:
        for token in _as_ids(value):
            if token not in ids:
                ids.append(token)
    return tuple(ids)


def describe_model(
    settings: ModelSettings,
    loaded: LoadedModel,
    *,
    vocab_size: int,
    context_length: int | None,
    eos_token_ids: Iterable[int],
) -> dict[str, Any]:
    """The ``model_info`` object of MODEL_INFO (LMTP.md §4): plain JSON values only."""
    config = loaded.model.config
    return {
        "name": settings.name,
        "destination": settings.destination,
        # A Hub id only: a checkpoint built from a local folder has no commit, and its folder is
        # a path of the machine that built it, which a published model does not show.
        "repo": settings.huggingface.repo if settings.huggingface.commit else None,
        "source": "huggingface" if settings.huggingface.commit else "local directory",
        "revision": settings.huggingface.revision,
        "commit": settings.huggingface.commit,
        "model_type": getattr(config, "model_type", None),
        "architectures": list(getattr(config, "architectures", None) or []),
        "quantization": loaded.quantization,
        "prequantized": loaded.prequantized,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": loaded.device,
        "vocab_size": vocab_size,
        "context_length": context_length,
        "eos_token_ids": list(eos_token_ids),
        "bos_token_id": getattr(loaded.tokenizer, "bos_token_id", None),
        "max_batch_size": settings.serve.max_batch_size,
        "versions": {
            "lmtp_runtime": __version__,
            "lmtp_cog": settings.lmtp_cog_version,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "bitsandbytes": _installed_version("bitsandbytes"),
            "accelerate": _installed_version("accelerate"),
        },
    }


def _as_ids(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, int) and not isinstance(item, bool)]
    return []


def _installed_version(distribution: str) -> str | None:
    """The version pip installed, without importing the package (bitsandbytes' import is slow)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
