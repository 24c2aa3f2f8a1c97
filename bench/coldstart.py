"""Workload 4, cold start: ``setup()`` to the first token, in a fresh process per run.

The parent (:func:`measure`) starts ``python bench/coldstart.py --backend NAME --checkpoint DIR``
once per run. The child first imports what the server's ``predict.py`` imports at its top (Cog
imports that module before it calls ``setup()``): torch, transformers and the server's own
modules. Then it times setup plus one single-token GENERATE and prints one ``RESULT {...}``
line. The floor does the least a server can: ``from_pretrained`` and one forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLD_BACKENDS = ("ours", "lmql", "floor")
_PROMPT = [1, *range(100, 115)]
"""16 ids, BOS first; the content does not matter, only that the model reads a prompt."""


@dataclass(frozen=True)
class ColdStart:
    setup_to_first_token_s: float
    process_to_first_token_s: float
    """From spawning the interpreter: adds Python start-up and the imports."""


def measure(backend: str, *, checkpoint_dir: Path) -> ColdStart:
    """One cold start of ``backend`` in a fresh interpreter."""
    result, spawned = run_child(
        [__file__, "--backend", backend, "--checkpoint", str(checkpoint_dir)],
        what=f"cold start of {backend}",
    )
    return ColdStart(
        setup_to_first_token_s=result["setup_to_first_token_s"],
        process_to_first_token_s=result["first_token_epoch_s"] - spawned,
    )


def run_child(
    argv: Sequence[str], *, what: str, timeout_s: float | None = None
) -> tuple[dict[str, Any], float]:
    """Run ``python ARGV...`` offline in a fresh interpreter: the JSON of its last ``RESULT``
    line, and the epoch time it was spawned at (its ``first_token_epoch_s`` counts from there).
    Also bench/gpu.py's cold starts."""
    spawned = time.time()
    completed = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        check=False,
    )
    result_lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not result_lines:
        raise RuntimeError(
            f"{what} failed (exit {completed.returncode}): {completed.stderr[-2000:]}"
        )
    return json.loads(result_lines[-1].removeprefix("RESULT ")), spawned


# --- the child ----------------------------------------------------------------------------------


def _child(backend: str, checkpoint_dir: Path) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch  # noqa: F401  (imported before the clock starts, for every backend alike)
    import transformers  # noqa: F401

    import backends

    if backend == "ours":
        backends.add_predictors_to_path()
        import lmtp_runtime.predictor  # noqa: F401
    elif backend == "lmql":
        import lmql.models.lmtp.lmtp_async  # noqa: F401
        import lmql.models.lmtp.lmtp_scheduler  # noqa: F401
    else:
        import floors  # noqa: F401  (a bare predict.py imports AutoModelForCausalLM at the top)

    started = time.perf_counter()
    if backend == "floor":
        _bare_first_token(checkpoint_dir)
    else:
        server = backends.OursBackend(checkpoint_dir) if backend == "ours" else backends.LmqlSchedulerBackend(
            checkpoint_dir, wait_until_loaded=False
        )
        op = ["GENERATE", {"model": "bench", "prompt": _PROMPT, "max_tokens": 1, "temperature": 0.0, "stream_id": 0}]
        next(iter(server.predict([op])))
    return {
        "setup_to_first_token_s": time.perf_counter() - started,
        "first_token_epoch_s": time.time(),
    }


def _bare_first_token(checkpoint_dir: Path) -> int:
    import torch

    from floors import load_bare_model

    model = load_bare_model(checkpoint_dir)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([_PROMPT]), logits_to_keep=1).logits
    return int(logits[0, -1].argmax())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one cold start; run by bench/run.py")
    parser.add_argument("--backend", choices=COLD_BACKENDS, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    arguments = parser.parse_args()
    print("RESULT " + json.dumps(_child(arguments.backend, arguments.checkpoint)), flush=True)
    # LMQL's scheduler thread is a daemon; leave without waiting for it.
    os._exit(0)
