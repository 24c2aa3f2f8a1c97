"""The LMTP predictor runtime: serves a Hugging Face causal LM to LMQL through one Cog input.

This package is copied into every generated Cog project (``work/NAME/lmtp_runtime/``) and runs
inside the image, where the builder (``lmtp_cog``) is absent: it depends only on torch,
transformers, accelerate, bitsandbytes, safetensors, tokenizers and cog.

One concern per module, in the order data flows through them:

- :mod:`.inputs`      the inputs of ``run()``: one table, rendered into ``predict.py``
- :mod:`.errors`      setup errors (``RuntimeError``s Cog reports as SETUP_FAILED)
- :mod:`.settings`    ``model_settings.json`` → a frozen :class:`~.settings.ModelSettings`
- :mod:`.offline`     keeps transformers/huggingface_hub off the network
- :mod:`.loading`     the checkpoint directory → model + tokenizer on the right device/dtype
- :mod:`.model_info`  facts about the loaded model (context window, EOS ids, MODEL_INFO)
- :mod:`.protocol`    ``ops_batch_json`` → typed ops; typed results → ``TOKEN``/``MSG`` lines
- :mod:`.sampling`    logit bias, penalties, greedy/top-k/top-p/seeded sampling, top logprobs
- :mod:`.engine`      batched prefill, the KV-cached decode loop, scoring
- :mod:`.serving`     one prediction: batching, streaming, in-band errors, retries
- :mod:`.predictor`   the model behind every generated ``predict.py``: ``run()`` hands it its inputs
"""

__version__ = "0.1.0"
