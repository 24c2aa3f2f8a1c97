"""The LMTP predictor runtime: serves a Hugging Face causal LM to LMQL through one Cog input.

This package is copied into every generated Cog project (``work/NAME/lmtp_runtime/``) and runs
inside the image, where the builder (``lmtp_cog``) is absent: it depends only on torch,
transformers, accelerate, bitsandbytes, safetensors, tokenizers and cog.

One concern per module, in the order data flows through them:

- :mod:`.inputs`      the inputs of ``run()``: one table, rendered into ``predict.py``
- :mod:`.errors`      every error the runtime raises on purpose, each one sentence
- :mod:`.settings`    ``model_settings.json`` → a frozen :class:`~.settings.ModelSettings`
- :mod:`.offline`     keeps transformers/huggingface_hub off the network
- :mod:`.loading`     the checkpoint directory → model + tokenizer on the right device/dtype
- :mod:`.checkpoint_kind` whether config.json describes a model LMTP can serve (stdlib only)
- :mod:`.model_info`  facts about the loaded model (context window, EOS ids, MODEL_INFO)
- :mod:`.checks`      checking outside values, one way, with one way of saying what is wrong
- :mod:`.requests`    what the engine computes: generation and score requests, sampling params
- :mod:`.protocol`    ``ops_batch_json`` → typed ops; typed results → ``TOKEN``/``MSG`` lines
- :mod:`.text_request` text mode's Cog inputs → a checked request; :mod:`.prompt_format` its text
- :mod:`.sampling`    logit bias, penalties, greedy/top-k/top-p/seeded sampling, top logprobs
- :mod:`.prefix_cache` KV of recent sequences, reused across predictions
- :mod:`.engine`      batched prefill, the KV-cached decode loop, scoring
- :mod:`.scheduler`   one model thread batching the work of concurrent predictions
- :mod:`.lmtp_mode`   one LMTP prediction: ops in, streamed lines out, in-band errors
- :mod:`.text_mode`   one text prediction: a prompt in, streamed text out
- :mod:`.metrics`     per-prediction metrics through Cog's API
- :mod:`.predictor`   the model behind every generated ``predict.py``: ``run()`` hands it its inputs
"""

__version__ = "0.1.0"
