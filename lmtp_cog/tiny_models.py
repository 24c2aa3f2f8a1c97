"""Make tiny Hugging Face checkpoints offline, in a second or two.

The Hub is out of reach on the machines this project is developed and tested on, so the tests,
``make demo`` and the benchmarks make their own models: a byte-level BPE tokenizer trained on a
few KB of text and a randomly initialised Llama or GPT-2 model. Every token of the tokenizer is
valid UTF-8 on its own (ASCII training text, no byte fallback), which keeps LMQL's detokeniser
happy. Everything is seeded, so the same call makes the same checkpoint.

Imports of torch/transformers/tokenizers are deferred: importing this module is cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

PAD, BOS, EOS = "<pad>", "<s>", "</s>"

CORPUS = """\
Hello world. The quick brown fox jumps over the lazy dog. A language model predicts the next
token from the tokens before it. LMQL is a query language for large language models: it mixes
prompts with constraints, and the runtime enforces the constraints token by token. Replicate runs
machine learning models in the cloud, packaged with Cog. Cog puts a model in a container with a
predict function and an HTTP server. Who are you? I am a small model. What is the answer? The
answer is forty two. Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000.
Colors: red, green, blue, yellow, black, white. Animals: cat, dog, bird, fish, horse, cow.
Question: Is the sky blue? Answer: yes. Question: Is fire cold? Answer: no.
Once upon a time there was a little model that wanted to speak. Every day it read a few words,
and every night it dreamt of tokens. {"key": "value", "list": [1, 2, 3]} (a) [b] <c> d_e f-g!
User: hi there. Assistant: hello, how can I help you today? System: be helpful and brief.
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}System: {{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def make_tokenizer(out_dir: Path, *, vocab_size: int = 600, chat_template: bool = False) -> Any:
    """Train a byte-level BPE tokenizer and save it with ``PreTrainedTokenizerFast``.

    Returns the loaded tokenizer. Files written: tokenizer.json, tokenizer_config.json,
    special_tokens_map.json (whatever this transformers version writes).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator([CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_input_names=["input_ids", "attention_mask"],
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    # transformers 5 writes "TokenizersBackend", which older transformers cannot read.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = ["input_ids", "attention_mask"]
    config_path.write_text(json.dumps(config, indent=2))
    return fast


def make_model(
    out_dir: Path,
    *,
    arch: Literal["llama", "gpt2"] = "llama",
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    vocab_size: int = 600,
    context_length: int = 256,
    seed: int = 0,
    eos_token_id: int | list[int] | None = None,
    generation_config: dict[str, Any] | None = None,
    safe_serialization: bool = True,
    max_shard_size: str | None = None,
    chat_template: bool = False,
    dtype: str = "float32",
) -> Path:
    """Write a complete random-weight checkpoint (model + tokenizer) to ``out_dir``.

    Args:
        arch: ``"llama"`` or ``"gpt2"``.
        eos_token_id: defaults to the tokenizer's ``</s>``; a list gives several stop ids.
        generation_config: extra fields merged into generation_config.json (e.g. ``top_k``).
        safe_serialization: ``False`` writes ``pytorch_model.bin`` instead of safetensors.
        max_shard_size: e.g. ``"100KB"`` to get a sharded checkpoint with an index file.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, GPT2Config, LlamaConfig

    tokenizer = make_tokenizer(out_dir, vocab_size=vocab_size, chat_template=chat_template)
    vocab = len(tokenizer)
    pad_id, bos_id, eos_id = (tokenizer.convert_tokens_to_ids(t) for t in (PAD, BOS, EOS))
    eos = eos_id if eos_token_id is None else eos_token_id

    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=context_length,
            bos_token_id=bos_id,
            eos_token_id=eos,
            pad_token_id=pad_id,
            tie_word_embeddings=False,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=context_length,
            bos_token_id=bos_id,
            eos_token_id=eos,
            pad_token_id=pad_id,
        )
    else:  # pragma: no cover - guarded by the Literal type
        raise ValueError(f"unknown arch {arch!r}")
    model = AutoModelForCausalLM.from_config(config)
    model = model.to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos, pad_token_id=pad_id
    )
    kwargs: dict[str, Any] = {}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(str(out_dir), **kwargs)
    if not safe_serialization:
        _convert_to_bin(out_dir)
    if generation_config:
        # Written as JSON: GenerationConfig refuses to save e.g. top_k without do_sample, and
        # such "leaky" files are exactly what real checkpoints ship and the tests need.
        path = out_dir / "generation_config.json"
        merged = {**json.loads(path.read_text()), **generation_config}
        path.write_text(json.dumps(merged, indent=2))
    return out_dir


def _convert_to_bin(out_dir: Path) -> None:
    """Replace the safetensors weights with ``pytorch_model*.bin`` files of the same shards.

    transformers 5 only saves safetensors, but older Hub repos ship pickled ``.bin`` weights
    only, and the builder must handle those.
    """
    import torch
    from safetensors.torch import load_file

    index_path = out_dir / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        renames = {
            shard: shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
            for shard in sorted(set(index["weight_map"].values()))
        }
        for shard, bin_name in renames.items():
            torch.save(load_file(str(out_dir / shard)), out_dir / bin_name)
            (out_dir / shard).unlink()
        index["weight_map"] = {k: renames[v] for k, v in index["weight_map"].items()}
        (out_dir / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
        index_path.unlink()
    else:
        torch.save(load_file(str(out_dir / "model.safetensors")), out_dir / "pytorch_model.bin")
        (out_dir / "model.safetensors").unlink()
