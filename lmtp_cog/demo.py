"""``make demo``: build the bundled example model, serve it, and query it like a user would.

Everything happens offline on this machine: a tiny random Llama checkpoint is made into
``examples/tiny/model``, the build pipeline turns it into ``work/tiny-llama``, and ``./serve``'s
stack runs it with the real Cog runtime on 127.0.0.1. Then one LMQL query runs through LMQL's
native LMTP endpoint, one LMTP batch (GENERATE + SCORE) and one plain-text prediction go through
the Replicate-compatible API with the official ``replicate`` client, and everything started is
stopped. The tiny model's answers are gibberish by design: it shows the path, not the quality.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .build import BuildOptions, build
from .paths import DEFAULT_WORK_DIR, EXAMPLES_DIR

EXAMPLE_DIR = EXAMPLES_DIR / "tiny"
MODEL_NAME = "tiny-llama"
MODEL_REF = f"demo/{MODEL_NAME}"


def make_example_checkpoint() -> Path:
    """``examples/tiny/model``: the example's tiny random Llama, made offline once."""
    model_dir = EXAMPLE_DIR / "model"
    if not (model_dir / "config.json").exists():
        from .tiny_models import make_model

        _say(f"making a tiny random Llama checkpoint in {_shown(model_dir)}")
        make_model(model_dir, arch="llama", layers=2, hidden=64, chat_template=True)
    return model_dir


def main(argv: Sequence[str] | None = None) -> int:
    """``lmtp-cog demo`` (``make demo``); ``--checkpoint-only`` makes the example checkpoint."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    make_example_checkpoint()
    if arguments == ["--checkpoint-only"]:
        return 0

    work_dir = DEFAULT_WORK_DIR
    _heading(f"lmtp-cog build --config {_shown(EXAMPLE_DIR / 'config.toml')}")
    started = time.monotonic()
    build(BuildOptions(config_path=EXAMPLE_DIR / "config.toml", work_dir=work_dir), report=_say)
    _say(f"(build took {time.monotonic() - started:.2f} s)")

    from .serve.service import serve_project

    project = work_dir / MODEL_NAME
    _heading(f"./serve {MODEL_NAME}")
    started = time.monotonic()
    with serve_project(project, port=0, lmtp_port=0) as served:
        _say(f"ready after {time.monotonic() - started:.1f} s")
        _say(f"  Replicate-compatible API  {served.api_url}")
        _say(f"  LMQL's LMTP endpoint      {served.lmtp_endpoint}")
        checkpoints = str(project / "checkpoints")
        _lmql_query(served.lmtp_endpoint, checkpoints)
        _lmtp_batch(served.api_url, checkpoints)
        _text_prediction(served.api_url)
    _heading("done")
    _say("Every server was stopped. Next: cp config.toml.example config.toml, edit it, ./build,")
    _say("then `cd work/NAME && ./push` (see README.md).")
    return 0


def _lmql_query(endpoint: str, tokenizer: str) -> None:
    import lmql

    query = 'argmax "Hello[WHO]" where STOPS_AT(WHO, ".") and len(TOKENS(WHO)) < 12'
    _heading("LMQL, native LMTP endpoint")
    _say(f'lmql.model("{MODEL_REF}", endpoint="{endpoint}", tokenizer="work/{MODEL_NAME}/checkpoints")')
    _say(f"query: {query}")
    model = lmql.model(MODEL_REF, endpoint=endpoint, tokenizer=tokenizer)
    result = lmql.run_sync(query, model=model)
    _say(f"WHO = {result.variables['WHO']!r}")


def _lmtp_batch(api_url: str, tokenizer_dir: str) -> None:
    import replicate
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = [tokenizer.bos_token_id, *tokenizer("Hello world", add_special_tokens=False).input_ids]
    ops = [
        ["GENERATE", {"stream_id": 1, "prompt": ids, "max_tokens": 4, "temperature": 0,
                      "top_logprobs": 2}],
        ["SCORE", {"stream_id": 2, "prompt": ids[:2], "scored": ids[2:]}],
    ]
    _heading("LMTP through the Replicate API (replicate.Client(base_url=...).stream)")
    _say(f"ops_batch_json = {json.dumps(ops)}")
    client = replicate.Client(api_token="demo", base_url=api_url)
    for event in client.stream(MODEL_REF, input={"ops_batch_json": json.dumps(ops)}):
        if event.event.value == "output":
            for line in str(event).splitlines():
                _say(f"  {line}")


def _text_prediction(api_url: str) -> None:
    import replicate

    inputs = {"prompt": "Who are you?", "max_new_tokens": 16, "temperature": 0}
    _heading("Plain text through the Replicate API (replicate.Client(base_url=...).run)")
    _say(f"input = {json.dumps(inputs)}")
    client = replicate.Client(api_token="demo", base_url=api_url)
    output = client.run(MODEL_REF, input=inputs)
    _say(f"output = {''.join(output)!r}")


def _shown(path: Path) -> str:
    """``path`` relative to the current directory where it lies below it (a checkout)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
