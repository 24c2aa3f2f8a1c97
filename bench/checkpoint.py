"""The benchmark model: a random-weight Llama checkpoint, made offline once and cached.

``lmtp_cog.tiny_models.make_model`` sizes the model's vocabulary to its tokenizer, and
the tokenizer trainer cannot reach a realistic 32k vocabulary on its small corpus. The benchmark
only moves token ids, so this module saves that small tokenizer next to a model whose
``LlamaConfig`` has the full ``vocab_size``: the embedding and the 32k-wide LM head cost what
they cost in a real Llama, which is what makes per-token work realistic.

Making the checkpoint takes seconds; it is cached under a directory named after its spec, so
reruns and the cold-start subprocesses reuse it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "lmtp-cog-bench"
_COMPLETE_MARKER = ".complete.json"


@dataclass(frozen=True)
class ModelSpec:
    """Shape of the benchmark model; every field is part of the cache key."""

    layers: int = 8
    hidden: int = 512
    heads: int = 8
    intermediate: int = 1024
    vocab_size: int = 32000
    context_length: int = 2048
    initializer_range: float = 0.2
    """Wider than Llama's 0.02: with the default, a random model's greedy output is one token
    repeated, whatever the context, and the harness's token-equality check would prove nothing.
    Weight scale does not change the amount of compute."""
    seed: int = 0

    @property
    def slug(self) -> str:
        return (
            f"llama-{self.layers}x{self.hidden}-h{self.heads}-ff{self.intermediate}"
            f"-v{self.vocab_size}-ctx{self.context_length}-init{self.initializer_range}"
            f"-s{self.seed}-fp32"
        )

    def describe(self) -> str:
        return (
            f"random-weight Llama, {self.layers} layers, hidden {self.hidden}, {self.heads} heads, "
            f"vocab {self.vocab_size}, context {self.context_length}, float32"
        )


def ensure_checkpoint(spec: ModelSpec, *, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Return the checkpoint directory for ``spec``, making it first if the cache lacks it.

    A marker file written last makes an interrupted build count as missing, so the next run
    rebuilds it instead of loading half a checkpoint.
    """
    out_dir = cache_dir / spec.slug
    if (out_dir / _COMPLETE_MARKER).exists():
        return out_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)
    _make_checkpoint(spec, out_dir)
    (out_dir / _COMPLETE_MARKER).write_text(json.dumps(asdict(spec), indent=2))
    return out_dir


def _make_checkpoint(spec: ModelSpec, out_dir: Path) -> None:
    save_random_llama(
        out_dir,
        layers=spec.layers,
        hidden=spec.hidden,
        heads=spec.heads,
        kv_heads=spec.heads,
        intermediate=spec.intermediate,
        vocab_size=spec.vocab_size,
        context_length=spec.context_length,
        initializer_range=spec.initializer_range,
        seed=spec.seed,
    )


def save_random_llama(
    out_dir: Path,
    *,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    vocab_size: int,
    context_length: int,
    initializer_range: float,
    seed: int,
    lm_head_scale: float = 1.0,
    dtype: Any = None,
    device: str = "cpu",
) -> None:
    """Save a random-weight Llama of this shape, with the small tokenizer, into ``out_dir``.

    Used by this benchmark and by bench/gpu.py, which makes it on the GPU (a 7B model's random
    initialisation takes minutes on CPUs) and saves it in ``dtype`` (default float32).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from lmtp_cog.tiny_models import BOS, EOS, PAD, make_tokenizer

    tokenizer = make_tokenizer(out_dir)
    pad_id, bos_id, eos_id = (tokenizer.convert_tokens_to_ids(t) for t in (PAD, BOS, EOS))
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context_length,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if lm_head_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(lm_head_scale)
    model = model.to(torch.float32 if dtype is None else dtype)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(str(out_dir))


def special_ids(checkpoint_dir: Path) -> tuple[int, int]:
    """``(bos_token_id, eos_token_id)`` of a checkpoint made by :func:`ensure_checkpoint`."""
    config = json.loads((checkpoint_dir / "config.json").read_text())
    return int(config["bos_token_id"]), int(config["eos_token_id"])
