"""Whether a checkpoint is one LMTP can serve, decided from its ``config.json`` alone.

LMTP scores and extends one token sequence, which only decoder-only (causal) language models do.
The builder asks once the checkpoint's files are fetched, before it writes anything; the runtime
asks again before it loads (and then also asks transformers whether the architecture loads as a
causal LM). Stdlib only, so the builder can import it without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def encoder_decoder_problem(config: Mapping[str, Any]) -> str | None:
    """Why the model of this ``config.json`` cannot be served, if it is an encoder-decoder;
    else ``None``. The sentence fits after "the checkpoint ..."."""
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = []
    named = [str(name) for name in architectures]
    if config.get("is_encoder_decoder") or any("ConditionalGeneration" in a for a in named):
        kind = ", ".join(named) or str(config.get("model_type"))
        return (
            f"is an encoder-decoder model ({kind}), which LMTP cannot serve; use a decoder-only "
            "(causal) language model"
        )
    return None
