"""``make demo``: build the bundled example model and serve one GENERATE and one SCORE.

Everything happens offline on this machine: a tiny random Llama checkpoint is made into
``examples/tiny/model``, ``./build`` turns it into ``work/tiny-llama``, the real Cog runtime serves
it on 127.0.0.1, and two LMTP predictions are sent to it. The server is stopped at the end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .build import BuildOptions, build
from .cogserver import CogServer
from .paths import TOOLKIT_ROOT

EXAMPLE_DIR = TOOLKIT_ROOT / "examples" / "tiny"
MODEL_NAME = "tiny-llama"


def main() -> int:
    model_dir = EXAMPLE_DIR / "model"
    if not (model_dir / "config.json").exists():
        from .testing.tiny_models import make_model

        print(f"making a tiny random Llama checkpoint in {model_dir} ...", flush=True)
        make_model(model_dir, arch="llama", layers=2, hidden=64, chat_template=True)

    work_dir = TOOLKIT_ROOT / "work"
    started = time.monotonic()
    build(BuildOptions(config_path=EXAMPLE_DIR / "config.toml", work_dir=work_dir))
    print(f"build took {time.monotonic() - started:.2f} s\n", flush=True)

    project = work_dir / MODEL_NAME
    print(f"starting the Cog server in {project} ...", flush=True)
    with CogServer(project) as server:
        started = time.monotonic()
        server.wait_ready()
        print(f"ready after {time.monotonic() - started:.1f} s at {server.url}\n", flush=True)
        tokenizer_ids = _encode(project, "Hello world")
        ops = [
            ["GENERATE", {"stream_id": 1, "prompt": tokenizer_ids, "max_tokens": 8,
                          "temperature": 0, "top_logprobs": 2}],
            ["SCORE", {"stream_id": 2, "prompt": tokenizer_ids[:2], "scored": tokenizer_ids[2:]}],
            ["MODEL_INFO", {"stream_id": 3}],
        ]
        print(f"POST /predictions ops_batch_json={json.dumps(ops)}", flush=True)
        response = server.predict({"ops_batch_json": json.dumps(ops)})
        print(f"status: {response['status']}")
        for line in "".join(response.get("output") or []).splitlines():
            print("  " + line)
        if response["status"] != "succeeded":
            print(response.get("error"), file=sys.stderr)
            return 1
    print("\nserver stopped. Next: edit config.toml, ./build, then `cd work/NAME && ./push`.")
    return 0


def _encode(project: Path, text: str) -> list[int]:
    """Token ids the way LMQL sends them: BOS first, then the text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(project / "checkpoints")
    return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids]


if __name__ == "__main__":
    sys.exit(main())
