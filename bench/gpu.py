"""One-command GPU benchmark and conformance check of the LMTP runtime (fp16 and 8-bit).

    python3 bench/gpu.py --out "$OUT"          # on a CUDA machine: a ~1.3B random Llama
    python3 bench/gpu.py --out "$OUT" --big    # adds a 7B-shaped model (does not fit 8 minutes)
    .venv/bin/python bench/gpu.py --tiny       # a tiny model; chosen by itself without CUDA

``bench/gpu.sh`` wraps it for the rented device (carried wheels, ``timeout``, a log). It writes
``gpu.md`` (for people, and for docs/benchmarks.md's GPU section) and ``gpu.json`` (every raw
number) to ``--out``, after every section, so a run that fails or is killed half-way still
leaves what it measured. Each section catches its own failure, records it and the run goes on;
a time budget (``--budget-s``) skips what no longer fits, and a watchdog ends the process, after
writing, if something hangs anyway.

What it does, in order, for each model shape:

1. makes a random-weight Llama of that shape *on the device* and saves it in the serving dtype
   (``save_pretrained``, safetensors), next to bench/checkpoint.py's small tokenizer;
2. serves it unquantized through ``LmtpPredictor`` and checks conformance (greedy = a plain
   argmax loop, SCORE = log-softmax, batched = unbatched, ``logit_bias``, ``top_logprobs``),
   then measures speed (decode step vs a bare KV-cache loop; LMQL traces vs the ideal prefix
   floor of bench/floors.py; four sampled streams at once vs one after another) and memory;
3. builds the project with ``./build --prequantize`` (the real builder, in-process) and does the
   same for its 8-bit checkpoint;
4. times ``setup()`` to the first token in fresh processes: fp16, 8-bit quantized at boot, and
   8-bit pre-quantized.

The model is random, so only speed and agreement mean anything. Weights use Llama's own
initialiser range (0.02), which keeps the inputs of the 8-bit layers as free of outliers as a
trained model's (a wider range makes most columns LLM.int8 outliers and times a different code
path); the LM head alone is scaled up so that the greedy choice is not a near-tie at every step.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# Run from a plain checkout (no `pip install -e .`): the bench modules, lmtp_cog and the runtime.
for _path in (REPO_ROOT / "predictors", REPO_ROOT, BENCH_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402  (the environment above must be set before transformers loads)
from transformers import DynamicCache  # noqa: E402

JSON_NAME, MARKDOWN_NAME = "gpu.json", "gpu.md"
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "lmtp-cog-gpu-bench"
"""Checkpoints and built projects: gigabytes, so never under --out (whose files are sent back)."""
COMPLETE_MARKER = ".complete.json"
MODEL_NAME = "gpu-bench-8bit"
WATCHDOG_GRACE_S = 40.0
"""After the budget, the watchdog waits this long for the running section, then writes and exits."""

TARGETS = {
    "step": 1.10,
    "trace": 1.15,
    "sampling": 3.0,
    "memory": 0.60,
}
"""ours ÷ bare loop per decode step ≤ 1.10; traces ≤ 1.15 × the ideal prefix floor; four
concurrent sampled predictions ≥ 3× faster than one after another; 8-bit weights ≤ 60% of fp16."""


# --- shapes, sizes, variants ---------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A random Llama's architecture; with the dtype, the checkpoint's cache key."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_size: int = 32000
    context_length: int = 4096
    initializer_range: float = 0.02
    lm_head_scale: float = 4.0
    """The LM head's weights times this: sharper next-token distributions (fewer near-ties)
    without touching what the 8-bit layers see (bitsandbytes keeps the LM head unquantized)."""
    seed: int = 0

    def slug(self, dtype: torch.dtype) -> str:
        return (
            f"llama-{self.layers}x{self.hidden}-h{self.heads}kv{self.kv_heads}-ff{self.intermediate}"
            f"-v{self.vocab_size}-ctx{self.context_length}-init{self.initializer_range}"
            f"-head{self.lm_head_scale}-s{self.seed}-{dtype_name(dtype)}"
        )

    @property
    def parameters(self) -> int:
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * (self.hidden // self.heads) * self.kv_heads
        layer = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return self.layers * layer + 2 * self.vocab_size * self.hidden + self.hidden

    def describe(self) -> str:
        return (
            f"random Llama '{self.name}' ({self.parameters / 1e9:.2f} B parameters): {self.layers} layers, "
            f"hidden {self.hidden}, {self.heads} heads ({self.kv_heads} KV), feed-forward "
            f"{self.intermediate}, vocab {self.vocab_size}, context {self.context_length}"
        )


SHAPES = {
    # A wider initialiser than Llama's: at hidden 256 the default makes greedy output one repeated token.
    "tiny": Shape(
        "tiny", layers=4, hidden=256, heads=4, kv_heads=4, intermediate=688, context_length=2048, initializer_range=0.05
    ),
    "1.3b": Shape("1.3b", layers=24, hidden=2048, heads=16, kv_heads=16, intermediate=5504),
    "7b": Shape("7b", layers=32, hidden=4096, heads=32, kv_heads=32, intermediate=11008),
}


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does; the budget may shrink the traces and the sampling."""

    conformance_prompts: tuple[int, ...] = (17, 64, 200, 511)
    conformance_tokens: int = 64
    batched_tokens: int = 32
    scored_tokens: int = 8
    step_prompt: int = 128
    step_tokens: int = 65
    step_batches: tuple[int, ...] = (1, 4, 8)
    step_repeats: int = 2
    trace_a: tuple[int, int, int] = (512, 12, 16)
    """1(a): prompt tokens, calls, tokens per call (bench/README.md has 30 calls; fewer fit)."""
    trace_b: tuple[int, int, int] = (1536, 12, 4)
    trace_repeats: int = 2
    sampling: tuple[int, int, int] = (64, 4, 128)
    """Prompt tokens, streams, tokens per stream (workload 3)."""
    cold_timeout_s: float = 150.0


SIZES = {
    "tiny": Sizes(
        conformance_prompts=(9, 33, 70),
        step_prompt=32,
        step_tokens=33,
        step_repeats=1,
        trace_a=(64, 4, 8),
        trace_b=(192, 4, 4),
        trace_repeats=1,
        sampling=(32, 4, 16),
        cold_timeout_s=120.0,
    ),
    "1.3b": Sizes(),
    "7b": Sizes(
        conformance_prompts=(17, 200),
        step_batches=(1, 8),
        step_repeats=1,
        trace_a=(512, 6, 16),
        trace_b=(1536, 6, 4),
        trace_repeats=1,
        sampling=(64, 4, 64),
        cold_timeout_s=300.0,
    ),
}


@dataclass(frozen=True)
class Variant:
    """One way of serving the checkpoint: unquantized in its dtype, or 8-bit."""

    name: str
    """``"float16"``, ``"float32"``... or ``"8bit"``."""
    quantization: str
    dtype: torch.dtype

    @property
    def logprob_tolerance(self) -> float:
        """Largest |Δ logprob| accepted between two computations of the same distribution.

        float32 agrees to rounding; float16 logits are themselves rounded to ~0.01 at the
        magnitudes this LM head produces (bfloat16 to ~0.1). 8-bit starts from its dtype's and
        widens it to its measured quantization error (see :func:`conformance`).
        """
        return FLOAT_TOLERANCE[dtype_name(self.dtype)]


FLOAT_TOLERANCE = {"float32": 1e-4, "float16": 0.05, "bfloat16": 0.2}


# --- the run's record -----------------------------------------------------------------------------


class Clock:
    """The whole run's time budget."""

    def __init__(self, budget_s: float) -> None:
        self.started = time.monotonic()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()


class Record:
    """Everything measured so far, written to gpu.json and gpu.md after every section."""

    def __init__(self, out_dir: Path, clock: Clock, command: str) -> None:
        self.out_dir = out_dir
        self.clock = clock
        self.data: dict[str, Any] = {
            "command": command,
            "started_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "budget_s": clock.budget_s,
            "environment": {},
            "shapes": {},
            "sections": [],
            "notes": [],
        }
        self._lock = threading.Lock()

    def shape(self, name: str) -> dict[str, Any]:
        return self.data["shapes"].setdefault(name, {})

    def note(self, text: str) -> None:
        if text not in self.data["notes"]:
            self.data["notes"].append(text)

    def run(self, name: str, work: Callable[[], Any], *, need_s: float = 0.0, left_s: float | None = None) -> Any:
        """``work()``, timed; a failure is recorded and the run goes on (returns ``None``).

        Skipped when less than ``need_s`` is left (of ``left_s``, by default the whole run's
        budget): later sections (8-bit, cold starts) must not lose their turn to one that would
        not finish anyway.
        """
        entry: dict[str, Any] = {"name": name, "status": "running", "seconds": 0.0}
        self.data["sections"].append(entry)
        left = self.clock.left() if left_s is None else min(left_s, self.clock.left())
        if left < need_s:
            entry["status"] = f"skipped: {max(left, 0):.0f} s left for it, it needs ~{need_s:.0f} s"
            progress(f"{name}: {entry['status']}")
            self.write()
            return None
        progress(f"{name} ...")
        started = time.monotonic()
        try:
            result = work()
            entry["status"] = "ok"
        except Exception as error:  # one failing section must not lose the others' numbers
            result = None
            entry["status"] = "error"
            entry["error"] = f"{type(error).__name__}: {error}"[:2000]
            entry["traceback"] = traceback.format_exc()[-4000:]
            progress(f"{name}: FAILED: {entry['error']}")
        entry["seconds"] = round(time.monotonic() - started, 2)
        progress(f"{name}: {entry['status']} in {entry['seconds']:.1f} s (run {self.clock.elapsed():.0f} s)")
        self.write()
        return result

    def write(self, *, final_note: str | None = None) -> None:
        """Write both files; safe to call from the watchdog thread while a section runs."""
        if not self._lock.acquire(timeout=10):
            return
        try:
            data = self._snapshot()
            if data is None:
                return
            data["wall_s"] = round(self.clock.elapsed(), 1)
            if final_note:
                data["notes"].append(final_note)
            try:
                data["targets"] = targets(data)
            except Exception as error:  # a half-written record must still be saved
                data["targets"], data["render_error"] = [], f"targets: {error!r}"
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / JSON_NAME).write_text(json.dumps(strict_json(data), indent=2) + "\n")
            try:
                text = render(data)
            except Exception:
                text = f"# GPU benchmark: the report could not be rendered\n\n```\n{traceback.format_exc()}```\n"
                text += f"\nThe raw numbers are in {JSON_NAME}.\n"
            (self.out_dir / MARKDOWN_NAME).write_text(text)
        finally:
            self._lock.release()

    def _snapshot(self) -> dict[str, Any] | None:
        for _ in range(5):  # the main thread may be adding entries meanwhile: try again
            try:
                return copy.deepcopy(self.data)
            except RuntimeError:
                time.sleep(0.05)
        return None


def start_watchdog(record: Record, *, after_s: float) -> None:
    """End the process, after writing what was measured, if the run outlives its budget."""

    def fire() -> None:
        record.write(final_note=f"The watchdog ended the run after {after_s:.0f} s (a section hung or overran).")
        progress("watchdog: out of time; results written, exiting")
        os._exit(3)

    timer = threading.Timer(after_s, fire)
    timer.daemon = True
    timer.start()


# --- the checkpoint -------------------------------------------------------------------------------


def make_checkpoint(shape: Shape, *, dtype: torch.dtype, device: str, cache_dir: Path) -> Path:
    """A random Llama of ``shape`` made on ``device`` and saved in ``dtype``; cached by slug.

    Made on the device (bench/checkpoint.py's save_random_llama, with its small tokenizer: the
    benchmark only moves token ids).
    """
    from checkpoint import save_random_llama

    out_dir = cache_dir / shape.slug(dtype)
    if (out_dir / COMPLETE_MARKER).exists():
        return out_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    save_random_llama(
        out_dir,
        layers=shape.layers,
        hidden=shape.hidden,
        heads=shape.heads,
        kv_heads=shape.kv_heads,
        intermediate=shape.intermediate,
        vocab_size=shape.vocab_size,
        context_length=shape.context_length,
        initializer_range=shape.initializer_range,
        seed=shape.seed,
        lm_head_scale=shape.lm_head_scale,
        dtype=dtype,
        device=device,
    )
    free_memory()
    (out_dir / COMPLETE_MARKER).write_text(json.dumps({**asdict(shape), "dtype": dtype_name(dtype)}, indent=2))
    return out_dir


# --- talking to ours and to the floors ----------------------------------------------------------


class Ours:
    """bench/backends.py's ``Backend`` interface over a predictor made with our own settings.

    ``concurrency`` is how many predictions the workloads send at once (Cog's
    ``config.concurrency`` is 8); 1 serves them one after another.
    """

    name = "ours"

    def __init__(self, predictor: Any, *, concurrency: int) -> None:
        self.predictor = predictor
        self.concurrency = concurrency

    def predict(self, ops: Sequence[Sequence[Any]]) -> Iterator[str]:
        return iter(self.predictor.stream(ops_batch_json=json.dumps(ops)))

    def close(self) -> None:
        pass


class _OnDevice:
    """A model that moves its tensor arguments to its own device first.

    floors.FloorBackend builds its inputs on the CPU (the CPU benchmark's model lives there);
    behind this it drives a GPU model unchanged. The copy is a few token ids per call.
    """

    def __init__(self, model: Any) -> None:
        self._model = model
        self.config = model.config
        self.device = input_device(model)

    def __call__(self, **kwargs: Any) -> Any:
        moved = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return self._model(**moved)


def device_floor(model: Any) -> Any:
    """bench/floors.py's ideal-prefix floor, on ``model``'s device."""
    from floors import FloorBackend

    class DeviceFloor(FloorBackend):
        def _bias_vector(self, logit_bias: dict[Any, float]) -> torch.Tensor:
            return super()._bias_vector(logit_bias).to(input_device(model))

    return DeviceFloor(_OnDevice(model), kind="floor-prefix")


def read_lines(predictor: Any, ops: Sequence[Sequence[Any]]) -> tuple[dict[Any, list[dict[str, Any]]], bool]:
    """One prediction's TOKEN payloads by stream id, and whether every chunk was whole lines."""
    streams: dict[Any, list[dict[str, Any]]] = {}
    whole_lines = True
    for chunk in predictor.stream(ops_batch_json=json.dumps(ops)):
        whole_lines = whole_lines and chunk.endswith("\n")
        for line in chunk.splitlines():
            kind, _, body = line.partition(" ")
            payload = json.loads(body)
            if payload.get("error") is not None:
                raise RuntimeError(f"stream {payload.get('stream_id')!r} failed: {payload['error']}")
            if kind == "TOKEN":
                streams.setdefault(payload.get("stream_id"), []).append(payload)
    return streams, whole_lines


def generate_op(prompt: Sequence[int], stream_id: int, **args: Any) -> list[Any]:
    base = {"prompt": list(prompt), "max_tokens": 16, "temperature": 0.0, "top_logprobs": 2, "stream_id": stream_id}
    return ["GENERATE", {**base, **args}]


# --- the bare loop: reference and floor ----------------------------------------------------------


@dataclass
class BareRun:
    tokens: list[list[int]]
    """Per row, the greedy tokens."""
    logprobs: list[list[float]]
    gaps: list[list[float]]
    """Per row and step, top-1 minus top-2 log-probability: how close the greedy choice was."""
    arrival_s: list[float]
    """When each step's tokens reached the host."""
    forward_s: list[float]
    """Per decode step, the model forward alone, synchronised (only when asked; GPU only)."""


def bare_greedy(model: Any, prompts: Sequence[Sequence[int]], steps: int, *, time_forward: bool = False) -> BareRun:
    """A plain KV-cache argmax loop over equal-length prompts: no mask, no padding, no protocol.

    Per step: one forward of one token per row, log-softmax in float32, top-2, and one transfer
    to the host (any server must send each token, so that wait is part of the floor).
    """
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("bare_greedy takes prompts of one length (it does not pad)")
    device = input_device(model)
    rows = len(prompts)
    run = BareRun([[] for _ in prompts], [[] for _ in prompts], [[] for _ in prompts], [], [])
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        ids = torch.tensor([list(p) for p in prompts], device=device)
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        for step in range(steps):
            top = torch.topk(torch.log_softmax(logits.float(), dim=-1), 2, dim=-1)
            host = torch.cat([top.indices.double(), top.values.double()], dim=-1).tolist()
            run.arrival_s.append(time.perf_counter())
            for row in range(rows):
                run.tokens[row].append(int(host[row][0]))
                run.logprobs[row].append(host[row][2])
                run.gaps[row].append(host[row][2] - host[row][3])
            if step == steps - 1:
                break
            timed = time_forward and device.type == "cuda"
            if timed:
                torch.cuda.synchronize()
                started = time.perf_counter()
            logits = model(input_ids=top.indices[:, :1], past_key_values=cache, use_cache=True).logits[:, -1]
            if timed:
                torch.cuda.synchronize()
                run.forward_s.append(time.perf_counter() - started)
    return run


def reference_logprobs(model: Any, tokens: Sequence[int], *, last: int) -> torch.Tensor:
    """``log_softmax`` (float32) of the logits of the last ``last`` positions of one forward."""
    with torch.inference_mode():
        ids = torch.tensor([list(tokens)], device=input_device(model))
        logits = model(input_ids=ids, logits_to_keep=last).logits[0]
        return torch.log_softmax(logits.float(), dim=-1)


def compare(
    reference: tuple[list[int], list[float], list[float]],
    candidate: tuple[list[int], list[float]],
    *,
    tolerance: float,
) -> dict[str, Any]:
    """Do two greedy streams agree? Identical tokens, or a first difference at a near-tie.

    ``reference`` is (tokens, logprobs, top-1 − top-2 gaps). Logprobs are compared up to the
    first differing token (after it the two continue different sequences). A difference counts
    as a near-tie when the reference's two best tokens were within ``tolerance``.
    """
    ref_tokens, ref_logprobs, ref_gaps = reference
    tokens, logprobs = candidate
    n = min(len(ref_tokens), len(tokens))
    first = next((i for i in range(n) if ref_tokens[i] != tokens[i]), None)
    upto = n if first is None else first
    diff = max((abs(a - b) for a, b in zip(ref_logprobs[:upto], logprobs[:upto])), default=0.0)
    identical = first is None and len(ref_tokens) == len(tokens)
    near_tie = first is not None and ref_gaps[first] <= tolerance
    return {
        "tokens": len(tokens),
        "identical": identical,
        "first_difference": first,
        "gap_at_difference": None if first is None else ref_gaps[first],
        "max_logprob_diff": diff,
        "ok": diff <= tolerance and (identical or near_tie),
    }


def gaps_of(payloads: list[dict[str, Any]]) -> list[float]:
    """Top-1 − top-2 from TOKEN lines sent with ``top_logprobs`` ≥ 2."""
    gaps = []
    for payload in payloads:
        values = sorted(payload.get("top_logprobs", {}).values(), reverse=True)
        gaps.append(values[0] - values[1] if len(values) > 1 else math.inf)
    return gaps


def stream_of(payloads: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    return [int(p["token"]) for p in payloads], [float(p["logprob"]) for p in payloads]


# --- conformance ----------------------------------------------------------------------------------


def conformance(
    predictor: Any, engine: Any, variant: Variant, sizes: Sizes, vocab: Any, *, unquantized: list[list[float]] | None
) -> tuple[dict[str, Any], list[list[float]]]:
    """Every check of LMTP.md that numbers can fail, on this variant; and the plain forward's
    SCORE logprobs, the yardstick the 8-bit variant is measured against.

    8-bit outputs are not a continuous function of the inputs: LLM.int8 rounds every activation
    to int8 and picks its fp16 "outlier" columns over the whole batch, so padding, batch-mates
    and kernel choice move them by up to the quantization error itself. Two 8-bit computations
    each within that error of the unquantized value may differ by twice it, so the 8-bit
    tolerance is twice the error measured here (``unquantized``: the same SCOREs by the
    unquantized model, from the same plain forward) when that exceeds the float tolerance.
    """
    model = predictor.model
    tol = variant.logprob_tolerance
    rng = random.Random(7)  # the same prompts for every variant: the yardstick needs them
    prompts = [vocab.prompt(rng, length) for length in sizes.conformance_prompts]
    scored = [vocab.random_ids(rng, sizes.scored_tokens) for _ in prompts]
    reference = []
    for prompt, tokens in zip(prompts, scored):
        dist = reference_logprobs(model, [*prompt, *tokens[:-1]], last=len(tokens))
        reference.append([float(dist[j, t]) for j, t in enumerate(tokens)])
    checks: dict[str, Any] = {"float_tolerance": tol}
    if variant.quantization != "none":
        if unquantized is None:
            checks["quantization_error"] = None
        else:
            error = max(abs(a - b) for row, other in zip(reference, unquantized) for a, b in zip(row, other))
            checks["quantization_error"] = error
            tol = max(tol, 2 * error)
    checks["tolerance"] = tol

    # Greedy: ours alone, each prompt its own prediction, vs the plain argmax loop. The checks
    # of the computation itself start from an empty prefix cache; reuse has checks of its own.
    alone: dict[int, list[dict[str, Any]]] = {}
    whole = True
    greedy = []
    for i, prompt in enumerate(prompts):
        quiesce(engine)
        lines, ok_lines = read_lines(predictor, [generate_op(prompt, i, max_tokens=sizes.conformance_tokens)])
        whole = whole and ok_lines
        alone[i] = lines[i]
        ref = bare_greedy(model, [prompt], sizes.conformance_tokens)
        result = compare((ref.tokens[0], ref.logprobs[0], ref.gaps[0]), stream_of(lines[i]), tolerance=tol)
        result["prompt_tokens"] = len(prompt)
        result["distinct_tokens"] = len(set(ref.tokens[0]))
        greedy.append(result)
    checks["greedy_vs_argmax_loop"] = {"ok": all(r["ok"] for r in greedy), "prompts": greedy}

    # Batched GENERATE (one prediction, prompts of different lengths: left padding) vs alone.
    ops = [generate_op(p, i, max_tokens=sizes.batched_tokens) for i, p in enumerate(prompts)]
    quiesce(engine)
    together, ok_lines = read_lines(predictor, ops)
    whole = whole and ok_lines
    batched = []
    for i in range(len(prompts)):
        ref_tokens, ref_logprobs = stream_of(alone[i][: sizes.batched_tokens])
        ref = (ref_tokens, ref_logprobs, gaps_of(alone[i]))
        batched.append(compare(ref, stream_of(together[i]), tolerance=tol))
    checks["generate_batched_vs_alone"] = {"ok": all(r["ok"] for r in batched), "streams": batched}
    checks["engine_batched_vs_alone"] = engine_batched(engine, prompts, sizes.batched_tokens, tol)

    # SCORE vs log_softmax of one plain forward; batched (one prediction) and alone.
    score_ops = [["SCORE", {"prompt": p, "scored": s, "stream_id": i}] for i, (p, s) in enumerate(zip(prompts, scored))]
    quiesce(engine)
    batch_lines, ok_lines = read_lines(predictor, score_ops)
    whole = whole and ok_lines
    rows = []
    for i, (tokens, ref) in enumerate(zip(scored, reference)):
        quiesce(engine)
        one, _ = read_lines(predictor, [score_ops[i]])
        lines_batched, lines_alone = batch_lines[i], one[i]
        shape_ok = all(
            [int(p["token"]) for p in lines] == tokens and lines[-1]["finish_reason"] == "stop"
            for lines in (lines_batched, lines_alone)
        )
        rows.append(
            {
                "lines_ok": shape_ok,
                "max_diff_batched": max(abs(a - float(p["logprob"])) for a, p in zip(ref, lines_batched)),
                "max_diff_alone": max(abs(a - float(p["logprob"])) for a, p in zip(ref, lines_alone)),
            }
        )
    worst = max(max(r["max_diff_batched"], r["max_diff_alone"]) for r in rows)
    checks["score_vs_log_softmax"] = {
        "ok": worst <= tol and all(r["lines_ok"] for r in rows),
        "max_diff": worst,
        "prompts": rows,
    }
    checks.update(prefix_reuse(predictor, engine, prompts, vocab, tol, rng))
    checks.update(bias_and_top_logprobs(predictor, model, prompts[1], vocab, tol, rng))
    checks["chunks_are_whole_lines"] = {"ok": whole}
    checks["ok"] = all(value["ok"] for value in checks.values() if isinstance(value, dict))
    return checks, reference


def engine_batched(engine: Any, prompts: Sequence[Sequence[int]], tokens: int, tol: float) -> dict[str, Any]:
    """The engine itself (no scheduler, prefix cache emptied each time): batched vs alone.

    Called while no prediction runs, so the scheduler's thread, the engine's only other user,
    is idle.
    """
    from lmtp_runtime.engine import TokenEvent

    def run(prompt_group: Sequence[Sequence[int]]) -> list[list[Any]]:
        quiesce(engine)
        streams = [engine_stream(p, max_tokens=tokens, top_logprobs=2) for p in prompt_group]
        row_of = {id(stream): row for row, stream in enumerate(streams)}
        events: list[list[Any]] = [[] for _ in streams]
        for step in engine.generate(streams):
            for event in step:
                if not isinstance(event, TokenEvent):
                    raise RuntimeError(f"a stream failed: {getattr(event, 'message', event)}")
                events[row_of[id(event.stream)]].append(event)
        return events

    together = run(prompts)
    streams = []
    for row, prompt in enumerate(prompts):
        [alone] = run([prompt])
        gaps = [sorted(e.top_logprobs.values(), reverse=True) for e in alone]
        ref = ([e.token for e in alone], [e.logprob for e in alone], [g[0] - g[1] for g in gaps])
        got = together[row]
        streams.append(compare(ref, ([e.token for e in got], [e.logprob for e in got]), tolerance=tol))
    quiesce(engine)
    return {"ok": all(s["ok"] for s in streams), "streams": streams}


def engine_stream(prompt: Sequence[int], *, max_tokens: int, top_logprobs: int) -> Any:
    """A greedy ``GenerationStream`` for the engine, over an engine-level ``GenerationRequest``."""
    from lmtp_runtime.engine import GenerationStream
    from lmtp_runtime.requests import GenerationRequest

    return GenerationStream(GenerationRequest(prompt=tuple(prompt), max_tokens=max_tokens, top_logprobs=top_logprobs))


def runtime_parts(predictor: Any) -> tuple[Any, Any]:
    """``(engine, scheduler)`` behind a predictor.

    Private attributes (``LmtpPredictor._server``): the bench reads the engine's prefix cache,
    drives the engine directly and stops the scheduler's thread to free the model. A runtime
    that renames them fails here, with this message, rather than deep inside a measurement.
    """
    server = getattr(predictor, "_server", None)
    scheduler = getattr(server, "scheduler", None)
    engine = getattr(server, "engine", None) or getattr(scheduler, "engine", None)
    if engine is None or scheduler is None:
        raise RuntimeError("bench/gpu.py expects LmtpPredictor._server.engine and .scheduler; update runtime_parts()")
    return engine, scheduler


def quiesce(engine: Any) -> None:
    """Empty the prefix cache between predictions, once the scheduler's thread is idle again
    (it finishes its round just after a prediction's last answer)."""
    time.sleep(0.05)
    engine.forget_prefixes()


def prefix_reuse(
    predictor: Any, engine: Any, prompts: Sequence[list[int]], vocab: Any, tol: float, rng: random.Random
) -> dict[str, Any]:
    """A prompt served on top of cached KV vs the same prompt computed afresh.

    - ``prefix_hit_vs_fresh``: LMQL's pattern: call 2 re-sends call 1's prompt and answer, so
      all but its last token come from the cache;
    - ``bos_only_hit_vs_fresh``: an unrelated prompt shares just BOS with a cached sequence, and
      the runtime reuses that one token.

    Float models compute the same numbers either way, to rounding. 8-bit ones need not: a cached
    token's KV was computed in a forward whose outlier columns the *other* tokens of that forward
    helped choose, so it is not what this prompt's own forward would have produced.
    """
    out: dict[str, Any] = {}
    prompt = prompts[-1]

    def generate(tokens: list[int]) -> tuple[list[dict[str, Any]], int]:
        before = engine.reused_prompt_tokens
        lines, _ = read_lines(predictor, [generate_op(tokens, 0, max_tokens=16)])
        return lines[0], engine.reused_prompt_tokens - before

    quiesce(engine)
    first, _ = generate(prompt)
    grown = [*prompt, *stream_of(first)[0]]
    hit, reused = generate(grown)
    quiesce(engine)
    fresh, _ = generate(grown)
    result = compare((*stream_of(fresh), gaps_of(fresh)), stream_of(hit), tolerance=tol)
    out["prefix_hit_vs_fresh"] = {**result, "reused_tokens": reused}

    other = vocab.prompt(rng, len(prompt))  # shares only BOS with `prompt`
    quiesce(engine)
    fresh, _ = generate(prompt)
    quiesce(engine)
    generate(other)
    hit, reused = generate(prompt)
    result = compare((*stream_of(fresh), gaps_of(fresh)), stream_of(hit), tolerance=tol)
    out["bos_only_hit_vs_fresh"] = {**result, "reused_tokens": reused}
    quiesce(engine)
    return out


def bias_and_top_logprobs(
    predictor: Any, model: Any, prompt: list[int], vocab: Any, tol: float, rng: random.Random
) -> dict[str, Any]:
    """``logit_bias`` (+100 forces, −100 bans, a 300-id mask confines) and ``top_logprobs``."""
    checks: dict[str, Any] = {}
    forced_id = vocab.random_ids(rng, 1)[0]
    lines, _ = read_lines(predictor, [generate_op(prompt, 0, max_tokens=8, logit_bias={str(forced_id): 100})])
    tokens, logprobs = stream_of(lines[0])
    checks["bias_plus_100_forces"] = {
        "ok": tokens == [forced_id] * 8 and min(logprobs) > -1e-3,
        "min_logprob": min(logprobs),
    }
    dist = reference_logprobs(model, prompt, last=1)[0]
    top = torch.topk(dist, 5)
    best, runner_up = int(top.indices[0]), int(top.indices[1])
    lines, _ = read_lines(predictor, [generate_op(prompt, 0, max_tokens=1, logit_bias={str(best): -100})])
    first = int(lines[0][0]["token"])
    checks["bias_minus_100_bans"] = {
        "ok": first != best and (first == runner_up or float(top.values[1] - top.values[2]) <= tol),
        "banned": best,
        "got": first,
        "expected": runner_up,
    }
    mask = vocab.constraint_mask(rng)
    lines, _ = read_lines(predictor, [generate_op(prompt, 0, max_tokens=16, logit_bias=mask)])
    checks["bias_mask_confines"] = {"ok": all(str(p["token"]) in mask for p in lines[0])}

    lines, _ = read_lines(predictor, [generate_op(prompt, 0, max_tokens=8, top_logprobs=5)])
    payloads = lines[0]
    shape_ok = all(
        len(p["top_logprobs"]) == 5 and abs(p["top_logprobs"][str(p["token"])] - p["logprob"]) < 1e-9 for p in payloads
    )
    ours_top = sorted(payloads[0]["top_logprobs"].values(), reverse=True)
    value_diff = max(abs(a - float(b)) for a, b in zip(ours_top, top.values.tolist()))
    checks["top_logprobs_greedy"] = {"ok": shape_ok and value_diff <= tol, "max_diff_first_step": value_diff}

    op = generate_op(prompt, 0, max_tokens=16, top_logprobs=3, temperature=1.0, seed=11)
    lines, _ = read_lines(predictor, [op])
    checks["top_logprobs_sampled"] = {
        "ok": all(len(p["top_logprobs"]) in (3, 4) and str(p["token"]) in p["top_logprobs"] for p in lines[0])
    }
    return checks


# --- speed ----------------------------------------------------------------------------------------


def decode_steps(
    predictor: Any, model: Any, sizes: Sizes, vocab: Any, *, seed: int, tolerance: float
) -> dict[str, Any]:
    """Seconds per decode step, ours ÷ the bare loop, at each batch size (best of the repeats).

    Ours: one prediction of N greedy GENERATEs of distinct prompts; a step is (last token's
    arrival − first's) / (tokens − 1), the prefill kept out. The bare loop: bare_greedy. Their
    tokens are compared as in the conformance checks (``tolerance`` for near-ties).
    """
    from streams import collect

    out: dict[str, Any] = {}
    for batch in sizes.step_batches:
        ours_s, bare_s, forward_s, same = [], [], [], []
        for repeat in range(sizes.step_repeats):
            rng = random.Random(seed + 100 * batch + repeat)
            prompts = [vocab.prompt(rng, sizes.step_prompt) for _ in range(batch)]
            ops = [generate_op(p, i, max_tokens=sizes.step_tokens, top_logprobs=1) for i, p in enumerate(prompts)]
            quiesce(runtime_parts(predictor)[0])  # its tokens then test the decode, not reuse
            got = collect(predictor.stream(ops_batch_json=json.dumps(ops)))
            ours_s.append(statistics.median(per_step(got.stream(i).arrival_s) for i in range(batch)))
            bare = bare_greedy(model, prompts, sizes.step_tokens)
            bare_s.append(per_step(bare.arrival_s))
            for i in range(batch):
                reference = (bare.tokens[i], bare.logprobs[i], bare.gaps[i])
                ours = (got.stream(i).tokens, got.stream(i).logprobs)
                same.append(compare(reference, ours, tolerance=tolerance))
        if torch.cuda.is_available():  # its synchronisations would slow a timed run: a run of its own
            forward_s = bare_greedy(model, prompts, 9, time_forward=True).forward_s
        out[str(batch)] = {
            "ours_s": min(ours_s),
            "bare_s": min(bare_s),
            "ratio": min(ours_s) / min(bare_s),
            "bare_forward_synced_s": statistics.median(forward_s) if forward_s else None,
            "tokens_agree": all(c["ok"] for c in same),
            "identical_streams": f"{sum(c['identical'] for c in same)}/{len(same)}",
            "ours_all_s": ours_s,
            "bare_all_s": bare_s,
        }
    return out


def per_step(arrivals: Sequence[float]) -> float:
    return (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)


def traces(
    ours: Ours, floor: Any, sizes: Sizes, vocab: Any, *, seconds_per_step: float, budget_s: float
) -> dict[str, Any]:
    """Workloads 1(a)/1(b) of bench/workloads.py on ours and on the ideal prefix floor.

    Each server first runs a short trace of the same prompt length, so that neither pays for
    the first prefill of that shape in the timed run. Then up to ``sizes.trace_repeats`` timed
    runs, the servers' order alternating, best of each; calls per trace shrink (never below 3)
    and repeats drop when the budget cannot pay for them.
    """
    import workloads

    out: dict[str, Any] = {}
    servers = {"floor": floor, "ours": ours}
    for index, (key, (prompt, calls, tokens)) in enumerate((("1a", sizes.trace_a), ("1b", sizes.trace_b))):
        # Two servers, calls × tokens decode steps each, plus a little for every call's prefill.
        cost_per_call = 2 * (tokens + 2) * seconds_per_step
        affordable = int(budget_s / 2 / max(cost_per_call, 1e-6))
        calls = max(3, min(calls, affordable))
        repeats = max(1, min(sizes.trace_repeats, affordable // calls))
        for server in servers.values():
            workloads.lmql_trace(server, vocab=vocab, seed=4000 + index, prompt_tokens=prompt, calls=2, max_tokens=2)
        runs: dict[str, list[Any]] = {"floor": [], "ours": []}
        for repeat in range(repeats):
            for name in list(servers) if repeat % 2 == 0 else list(servers)[::-1]:
                runs[name].append(
                    workloads.lmql_trace(
                        servers[name],
                        vocab=vocab,
                        seed=5000 + 10 * index + repeat,
                        prompt_tokens=prompt,
                        calls=calls,
                        max_tokens=tokens,
                    )
                )
        best = {name: min(each, key=lambda run: run.seconds) for name, each in runs.items()}
        out[key] = {
            "prompt_tokens": prompt,
            "calls": calls,
            "max_tokens": tokens,
            "repeats": repeats,
            "ours_s": best["ours"].seconds,
            "floor_s": best["floor"].seconds,
            "ratio": best["ours"].seconds / best["floor"].seconds,
            "same_tokens": all(a.tokens == b.tokens for a, b in zip(runs["ours"], runs["floor"])),
            "ours_step_s": statistics.median(best["ours"].decode_step_s),
            "floor_step_s": statistics.median(best["floor"].decode_step_s),
            "ours_all_s": [run.seconds for run in runs["ours"]],
            "floor_all_s": [run.seconds for run in runs["floor"]],
        }
    return out


def sampling(predictor: Any, sizes: Sizes, vocab: Any, *, seconds_per_step: float, budget_s: float) -> dict[str, Any]:
    """Four seeded T=1 streams as four predictions sent at once vs one after another.

    The same requests both ways (same seeds), so the sampled tokens should match too: a
    seeded stream draws from its own generator whatever batch it shares (float rounding in a
    batch can still move a draw that lands on a boundary; reported, not asserted).
    """
    import workloads

    prompt, streams, tokens = sizes.sampling
    # One after another: streams × tokens steps; at once: about tokens steps, a bit slower each.
    affordable = int(budget_s / ((streams + 1.5) * max(seconds_per_step, 1e-6)))
    tokens = max(8, min(tokens, affordable))
    concurrent_backend, one_by_one = Ours(predictor, concurrency=8), Ours(predictor, concurrency=1)
    common = {"vocab": vocab, "prompt_tokens": prompt, "streams": streams, "mode": "separate-predictions"}
    workloads.sampling(concurrent_backend, seed=1, max_tokens=4, **common)  # first concurrent use: not timed
    concurrent = workloads.sampling(concurrent_backend, seed=2, max_tokens=tokens, **common)
    sequential = workloads.sampling(one_by_one, seed=2, max_tokens=tokens, **common)
    return {
        "prompt_tokens": prompt,
        "streams": streams,
        "max_tokens": tokens,
        "concurrent_s": concurrent.seconds,
        "sequential_s": sequential.seconds,
        "speedup": sequential.seconds / concurrent.seconds,
        "same_tokens": concurrent.tokens == sequential.tokens,
    }


def estimate_step_s(predictor: Any, vocab: Any) -> float:
    """A quick estimate from one 9-token generation, to size what follows to the budget."""
    from streams import collect

    prompt = vocab.prompt(random.Random(3), 32)
    got = collect(predictor.stream(ops_batch_json=json.dumps([generate_op(prompt, 0, max_tokens=9)])))
    return per_step(got.stream(0).arrival_s)


# --- memory and diagnostics -----------------------------------------------------------------------


def memory(model: Any | None = None) -> dict[str, Any]:
    """GPU memory now (bytes), with the weights' share when a model is given."""
    out: dict[str, Any] = {}
    if model is not None:
        out["weights_bytes"] = int(model.get_memory_footprint())
    if torch.cuda.is_available():
        out["allocated_bytes"] = torch.cuda.memory_allocated()
        out["max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["reserved_bytes"] = torch.cuda.memory_reserved()
        free, total = torch.cuda.mem_get_info()
        out["free_bytes"], out["total_bytes"] = free, total
    return out


def prefix_cache_stats(engine: Any) -> dict[str, Any]:
    """The prefix cache's budget (a share of the GPU memory free after loading) and its use."""
    cache = engine.prefix_cache
    if cache is None:
        return {"enabled": False}
    stats = {
        "enabled": True,
        "budget_bytes": cache.budget_bytes,
        "used_bytes": cache.bytes_used,
        "entries": len(cache),
        "reused_tokens": cache.reused_tokens,
    }
    if torch.cuda.is_available():
        stats["used_share_of_allocated"] = cache.bytes_used / max(torch.cuda.memory_allocated(), 1)
        stats["budget_share_of_device"] = cache.budget_bytes / torch.cuda.get_device_properties(0).total_memory
    return stats


class _SeenCounter(logging.Filter):
    """Put first among a logger's filters: counts every record, even those later filters drop."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        if len(self.messages) < 3:
            self.messages.append(record.getMessage()[:200])
        return True


class _ShownCounter(logging.Handler):
    """As a handler: counts the records that reach handlers (what Cog's log would show)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def diagnostics(predictor: Any, vocab: Any) -> dict[str, Any]:
    """What a GPU might do behind our back: bitsandbytes warnings, logits' dtype, host syncs."""
    model = predictor.model
    out: dict[str, Any] = {}
    prompt = vocab.prompt(random.Random(4), 32)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt], device=input_device(model)), logits_to_keep=1).logits
    out["logits_dtype"] = dtype_name(logits.dtype)
    out["int8_layers"] = sum(type(m).__name__ == "Linear8bitLt" for m in model.modules())

    steps = 8
    seen, shown = _SeenCounter(), _ShownCounter()
    source, parent = logging.getLogger("bitsandbytes.autograd._functions"), logging.getLogger("bitsandbytes")
    source.filters.insert(0, seen)  # before the runtime's own filter (lmtp_runtime.loading)
    parent.addHandler(shown)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bare_greedy(model, [prompt], steps + 1)
    finally:
        source.removeFilter(seen)
        parent.removeHandler(shown)
    out["per_forward"] = {
        "python_warnings": len(caught) / (steps + 1),
        "bnb_log_records": seen.count / (steps + 1),
        "bnb_log_records_shown": shown.count / (steps + 1),
    }
    out["warning_examples"] = sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught})[:5]
    out["bnb_log_examples"] = seen.messages
    if torch.cuda.is_available():
        rng = random.Random(5)
        fresh = [vocab.prompt(rng, 32) for _ in range(4)]  # unseen prompts: no prefix-cache hits
        out["host_syncs_per_step"] = {
            "ours": syncs_per_step(
                lambda n: read_lines(predictor, [generate_op(fresh.pop(), 0, max_tokens=n, top_logprobs=1)])
            ),
            "bare": syncs_per_step(lambda n: bare_greedy(model, [prompt], n)),
        }
    return out


def syncs_per_step(generate: Callable[[int], Any], *, short: int = 5, long: int = 21) -> dict[str, Any]:
    """CUDA synchronisations per decode step (torch's sync debug mode, its warnings counted).

    ``generate(n)`` makes n tokens; the difference between a long and a short run, per extra
    token, leaves the prefill and the end-of-stream bookkeeping out. Warnings raised in the
    scheduler's thread are caught too (the warning filters are process-wide).
    """
    counts, where = [], set()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        for n in (short, long):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                generate(n)
            syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
            counts.append(len(syncs))
            where |= {f"{Path(w.filename).name}:{w.lineno}" for w in syncs}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return {"per_step": (counts[1] - counts[0]) / (long - short), "counts": counts, "where": sorted(where)[:16]}


# --- one variant, end to end ----------------------------------------------------------------------


def serve_variant(
    record: Record,
    shape_record: dict[str, Any],
    variant: Variant,
    settings: dict[str, Any] | Path,
    *,
    sizes: Sizes,
    vocab: Any,
    budget_s: float,
) -> None:
    """Load one variant in this process, run every warm measurement on it, and unload it."""
    from lmtp_runtime.predictor import LmtpPredictor

    results = shape_record.setdefault("variants", {}).setdefault(variant.name, {})
    results["quantization"], results["dtype"] = variant.quantization, dtype_name(variant.dtype)
    results["settings"] = str(settings) if isinstance(settings, Path) else "in-process (local_model_settings)"
    deadline = time.monotonic() + budget_s
    state: dict[str, Any] = {}
    """The predictor and what wraps it; only here, so that unloading really frees the model."""

    def left() -> float:
        return min(deadline - time.monotonic(), record.clock.left())

    def load() -> bool:
        free_memory()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        results["memory_before_load"] = memory()
        started = time.perf_counter()
        state["predictor"] = LmtpPredictor.from_settings(settings)
        results["setup_s"] = time.perf_counter() - started
        state["engine"], state["scheduler"] = runtime_parts(state["predictor"])
        results["memory_after_load"] = memory(state["predictor"].model)
        state["ours"] = Ours(state["predictor"], concurrency=8)
        state["floor"] = device_floor(state["predictor"].model)
        import workloads

        workloads.warm_up(state["ours"], vocab=vocab)
        workloads.warm_up(state["floor"], vocab=vocab)
        results["seconds_per_step_estimate"] = estimate_step_s(state["predictor"], vocab)
        return True

    def unload() -> None:
        if "predictor" in state:
            results["memory_after_workloads"] = memory(state["predictor"].model)
            results["prefix_cache"] = prefix_cache_stats(state["engine"])
            state["scheduler"].close()  # stop the model thread, which holds the model
        state.clear()
        free_memory()
        results["memory_after_unload"] = memory()

    tag = f"{shape_record['name']}/{variant.name}"
    if not record.run(f"{tag}: load", load, need_s=20):
        record.run(f"{tag}: unload", unload)
        return
    step_s = results["seconds_per_step_estimate"]

    def attempt(name: str, work: Callable[[], Any], *, steps: float, whole_run: bool = False) -> None:
        """Run ``work`` if about ``steps`` decode steps still fit this variant's budget (or,
        ``whole_run``, what is left of the run's)."""
        value = record.run(f"{tag}: {name}", work, need_s=steps * step_s, left_s=None if whole_run else left())
        if value is not None:
            results[name] = value

    prompts = len(sizes.conformance_prompts)

    def check() -> dict[str, Any]:
        checks, reference = conformance(
            state["predictor"], state["engine"], variant, sizes, vocab, unquantized=shape_record.get("score_reference")
        )
        if variant.quantization == "none":
            shape_record["score_reference"] = reference
        return checks

    attempt(  # first, and only the whole run's budget can stop it: it matters most
        "conformance",
        check,
        steps=prompts * (2 * sizes.conformance_tokens + 3 * sizes.batched_tokens) + 60,
        whole_run=True,
    )
    attempt("diagnostics", lambda: diagnostics(state["predictor"], vocab), steps=40)
    attempt(
        "decode_step",
        lambda: decode_steps(
            state["predictor"],
            state["predictor"].model,
            sizes,
            vocab,
            seed=10,
            tolerance=results.get("conformance", {}).get("tolerance", variant.logprob_tolerance),
        ),
        steps=sum(sizes.step_repeats * 2 * sizes.step_tokens + 10 for _ in sizes.step_batches),
    )
    attempt(
        "traces",
        lambda: traces(state["ours"], state["floor"], sizes, vocab, seconds_per_step=step_s, budget_s=left() * 0.55),
        steps=2 * 2 * 3 * (sizes.trace_a[2] + 2),
    )
    attempt(
        "sampling",
        lambda: sampling(state["predictor"], sizes, vocab, seconds_per_step=step_s, budget_s=left() - 5),
        steps=(sizes.sampling[1] + 2) * 8,
    )
    record.run(f"{tag}: memory and unload", unload)


# --- the build and cold starts ---------------------------------------------------------------------


def build_prequantized(checkpoint: Path, root: Path) -> dict[str, Any]:
    """``./build --prequantize`` of a config naming the checkpoint as a local 8-bit model."""
    from lmtp_cog.build import BuildOptions, build

    shutil.rmtree(root, ignore_errors=True)  # a fresh build, so the quantization really runs
    root.mkdir(parents=True)
    config = root / "config.toml"
    config.write_text(
        'dest_prefix = "r8.im/YOURACCOUNT/"\n\n'
        f"[models.{MODEL_NAME}]\n"
        f"huggingface.repo = {json.dumps(str(checkpoint))}\n"
        "config.load_in_8bit = true\n"
    )
    lines: list[str] = []
    started = time.perf_counter()
    # The quantizing subprocess inherits PYTHONPATH after the staged project (lmtp_cog.prequantize),
    # so the carried bitsandbytes and transformers wheels that bench/gpu.sh puts there are used.
    build(BuildOptions(config_path=config, work_dir=root / "work", prequantize=True), report=lines.append)
    project = root / "work" / MODEL_NAME
    return {
        "seconds": time.perf_counter() - started,
        "project": str(project),
        "report": lines,
        "original_bytes": tree_size(checkpoint),
        "checkpoint_bytes": tree_size(project / "checkpoints"),
        "settings": json.loads((project / "model_settings.json").read_text()),
    }


COLD_PROMPT = [1, *range(100, 131)]
"""32 ids, BOS first: the content does not matter, only that the model reads a prompt."""


def cold_start(settings_path: Path, *, timeout_s: float) -> dict[str, Any]:
    """``setup()`` to the first token in a fresh interpreter (this file, ``--cold-child``)."""
    from coldstart import run_child

    result, spawned = run_child(
        [__file__, "--cold-child", str(settings_path)], what="cold start", timeout_s=timeout_s
    )
    result["process_to_first_token_s"] = result.pop("first_token_epoch_s") - spawned
    return result


def cold_child(settings_path: Path) -> dict[str, Any]:
    """The child: import what predict.py imports, then time setup() and one 1-token GENERATE.

    After the clock, 16 greedy tokens of a fixed prompt, so that the parent can check that the
    8-bit weights quantized at boot and those quantized at build time serve the same tokens.
    """
    import transformers  # noqa: F401  (imported before the clock, as Cog imports predict.py)

    from lmtp_runtime.predictor import LmtpPredictor

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    predictor = LmtpPredictor.from_settings(str(settings_path))
    setup_s = time.perf_counter() - started
    op = ["GENERATE", {"prompt": COLD_PROMPT, "max_tokens": 1, "temperature": 0.0, "stream_id": 0}]
    next(iter(predictor.stream(ops_batch_json=json.dumps([op]))))
    result: dict[str, Any] = {
        "setup_s": setup_s,
        "setup_to_first_token_s": time.perf_counter() - started,
        "first_token_epoch_s": time.time(),
    }
    lines, _ = read_lines(predictor, [generate_op(COLD_PROMPT, 0, max_tokens=16)])
    result["tokens"] = [int(p["token"]) for p in lines[0]]
    result["memory"] = memory(predictor.model)
    return result


def cold_starts(
    checkpoint: Path, project: Path | None, variant: Variant, work_dir: Path, *, timeout_s: float, clock: Clock
) -> dict[str, Any]:
    """Each way to boot: unquantized, 8-bit quantized at boot, 8-bit pre-quantized at build.

    Pre-quantized first (the comparison that matters), then at boot, then unquantized. Each
    child gets at most what is left of the budget, so none outlives the watchdog.
    """
    from lmtp_cog.model_settings import local_model_settings

    work_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        variant.name: local_model_settings(
            checkpoint,
            name="gpu-bench",
            repo="local/gpu-bench",
            quantization="none",
            torch_dtype=dtype_name(variant.dtype),
        ),
        "8bit at boot": local_model_settings(checkpoint, name="gpu-bench", repo="local/gpu-bench", quantization="8bit"),
    }
    files = {}
    for name, settings in paths.items():
        files[name] = work_dir / f"settings-{name.replace(' ', '-')}.json"
        files[name].write_text(json.dumps(settings, indent=2))
    if project is not None:
        files = {"8bit pre-quantized": project / "model_settings.json", **files}
    files = dict(sorted(files.items(), key=lambda item: item[0] == variant.name))
    out: dict[str, Any] = {}
    for name, path in files.items():
        allowed = min(timeout_s, clock.left() + WATCHDOG_GRACE_S - 10)
        if allowed < 10:
            out[name] = {"error": "skipped: the budget is spent"}
            continue
        try:
            out[name] = cold_start(path, timeout_s=allowed)
        except Exception as error:  # one boot failing must not hide the others
            out[name] = {"error": f"{type(error).__name__}: {error}"[:1500]}
        progress(f"cold start {name}: {out[name].get('setup_to_first_token_s', out[name].get('error'))}")
    boot, built = out.get("8bit at boot", {}), out.get("8bit pre-quantized", {})
    if "tokens" in boot and "tokens" in built:
        out["prequantized_same_tokens"] = boot["tokens"] == built["tokens"]
    return out


# --- one shape, end to end --------------------------------------------------------------------------


def run_shape(
    record: Record, shape: Shape, *, dtype: torch.dtype, device: str, cache_dir: Path, full_budget: bool
) -> None:
    """Checkpoint, unquantized variant, build, 8-bit variant, cold starts: each its own section."""
    from checkpoint import special_ids
    from lmtp_cog.model_settings import local_model_settings
    from workloads import Vocabulary

    sizes = SIZES[shape.name]
    shape_record = record.shape(shape.name)
    shape_record.update(
        {"name": shape.name, "describe": shape.describe(), "shape": asdict(shape), "sizes": asdict(sizes)}
    )
    shape_record["checkpoint_dtype"] = dtype_name(dtype)

    def checkpoint() -> Path:
        started = time.perf_counter()
        path = make_checkpoint(shape, dtype=dtype, device=device, cache_dir=cache_dir)
        shape_record["checkpoint"] = {
            "path": str(path),
            "bytes": tree_size(path),
            "seconds": time.perf_counter() - started,
        }
        return path

    path = record.run(f"{shape.name}: checkpoint", checkpoint, need_s=30)
    if path is None:
        return
    bos_id, eos_id = special_ids(path)
    vocab = Vocabulary(size=shape.vocab_size, bos_id=bos_id, eos_id=eos_id)
    plain = Variant(dtype_name(dtype), "none", dtype)
    eight = Variant("8bit", "8bit", dtype)
    # Shares of what is left: the unquantized variant is fast; 8-bit is slower, then cold starts.
    reserve_cold = 3 * (25 if device == "cuda" else 12) * (3 if shape.name == "7b" else 1)

    settings = local_model_settings(
        path, name="gpu-bench", repo="local/gpu-bench", quantization="none", torch_dtype=dtype_name(dtype)
    )
    budget = max(record.clock.left() - reserve_cold, 0) * (0.35 if full_budget else 0.5)
    serve_variant(record, shape_record, plain, settings, sizes=sizes, vocab=vocab, budget_s=budget)

    built = record.run(
        f"{shape.name}: ./build --prequantize",
        lambda: build_prequantized(path, cache_dir / f"build-{shape.slug(dtype)}"),
        need_s=20,
    )
    project = None
    if built is not None:
        shape_record["build"] = built
        project = Path(built["project"])
        eight_settings: dict[str, Any] | Path = project / "model_settings.json"
    else:
        record.note(f"{shape.name}: the 8-bit variant was quantized at load: the prequantized build failed.")
        eight_settings = local_model_settings(path, name="gpu-bench", repo="local/gpu-bench", quantization="8bit")
    budget = max(record.clock.left() - reserve_cold, 0) * (0.9 if full_budget else 0.5)
    serve_variant(record, shape_record, eight, eight_settings, sizes=sizes, vocab=vocab, budget_s=budget)

    cold = record.run(
        f"{shape.name}: cold starts",
        lambda: cold_starts(
            path, project, plain, cache_dir / "cold-settings", timeout_s=sizes.cold_timeout_s, clock=record.clock
        ),
        need_s=reserve_cold / 2,
    )
    if cold is not None:
        shape_record["cold_start"] = cold


# --- environment ----------------------------------------------------------------------------------


PACKAGES = (
    "torch",
    "transformers",
    "bitsandbytes",
    "accelerate",
    "safetensors",
    "tokenizers",
    "huggingface_hub",
    "numpy",
    "jinja2",
)


def environment() -> dict[str, Any]:
    """Device, driver, CUDA and library versions, and where transformers/bitsandbytes came from
    (a carried wheel under PYTHONPATH, or the machine's own)."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "versions": {},
        "module_paths": {},
    }
    for name in PACKAGES:
        try:
            env["versions"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env["versions"][name] = None
    for module in ("transformers", "bitsandbytes"):
        try:
            env["module_paths"][module] = str(Path(__import__(module).__file__).parent)
        except Exception as error:  # bitsandbytes may be missing or fail to find its library
            env["module_paths"][module] = f"import failed: {type(error).__name__}: {error}"[:300]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["device"] = torch.cuda.get_device_name(0)
        env["device_memory_bytes"] = props.total_memory
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["nvidia_smi"] = nvidia_smi()
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads"
    return env


def nvidia_smi() -> str | None:
    try:
        done = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        return done.stdout.strip() or done.stderr.strip()[:300]
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{type(error).__name__}"


# --- targets and Markdown ---------------------------------------------------------------------------


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target, per shape and variant, from what was measured (absent: not measured)."""
    rows = []
    for shape, shape_data in data.get("shapes", {}).items():
        variants = shape_data.get("variants", {})
        for name, v in variants.items():
            for batch, step in v.get("decode_step", {}).items():
                rows.append(
                    _target(
                        shape,
                        name,
                        f"decode step, batch {batch}: ours ÷ bare loop",
                        step["ratio"],
                        TARGETS["step"],
                        True,
                    )
                )
            for key, trace in v.get("traces", {}).items():
                rows.append(
                    _target(
                        shape, name, f"trace {key}: ours ÷ ideal prefix floor", trace["ratio"], TARGETS["trace"], True
                    )
                )
            if "sampling" in v:
                rows.append(
                    _target(
                        shape,
                        name,
                        "4 sampled streams: one after another ÷ at once",
                        v["sampling"]["speedup"],
                        TARGETS["sampling"],
                        False,
                    )
                )
        plain = next((v for n, v in variants.items() if n != "8bit"), None)
        eight = variants.get("8bit")
        try:
            ratio = eight["memory_after_load"]["weights_bytes"] / plain["memory_after_load"]["weights_bytes"]
        except (KeyError, TypeError, ZeroDivisionError):
            continue
        label = f"8-bit weights ÷ {plain['dtype']} weights (get_memory_footprint)"
        rows.append(_target(shape, "8bit", label, ratio, TARGETS["memory"], True))
    return rows


def _target(shape: str, variant: str, what: str, value: float, limit: float, at_most: bool) -> dict[str, Any]:
    met = value <= limit if at_most else value >= limit
    return {
        "shape": shape,
        "variant": variant,
        "what": what,
        "value": value,
        "limit": limit,
        "at_most": at_most,
        "met": met,
    }


def render(data: dict[str, Any]) -> str:
    """gpu.md: header, targets, conformance, speed, memory, cold start, diagnostics, sections."""
    env = data.get("environment", {})
    versions = env.get("versions", {})
    lines = [
        "# GPU benchmark and conformance of the LMTP runtime",
        "",
        f"Written by `bench/gpu.py` (see bench/README.md). Command: `{data['command']}`.",
        "",
        f"- Date: {data['started_utc']}; wall time {data.get('wall_s', 0):.0f} s of a {data['budget_s']:.0f} s budget",
        f"- Device: {env.get('device', '?')}"
        + (f"; nvidia-smi: {env['nvidia_smi']}" if env.get("nvidia_smi") else "")
        + (f"; compute capability {env['compute_capability']}" if env.get("compute_capability") else ""),
        f"- CUDA (torch build): {env.get('torch_cuda')}; Python {env.get('python')}; {env.get('platform')}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- transformers from {env.get('module_paths', {}).get('transformers')}; "
        f"bitsandbytes from {env.get('module_paths', {}).get('bitsandbytes')}",
    ]
    for shape in data.get("shapes", {}).values():
        lines.append(f"- Model: {shape.get('describe')}; checkpoint saved in {shape.get('checkpoint_dtype')}")
    lines += ["", "## Targets", ""]
    rows = data.get("targets") or []
    if rows:
        lines += ["| shape | variant | target | value | limit | status |", "| --- | --- | --- | ---: | ---: | --- |"]
        for t in rows:
            limit = f"≤ {t['limit']:.2f}" if t["at_most"] else f"≥ {t['limit']:.2f}"
            lines.append(
                _row(
                    t["shape"],
                    t["variant"],
                    t["what"],
                    f"{t['value']:.2f}",
                    limit,
                    "met" if t["met"] else "**not met**",
                )
            )
    else:
        lines.append("Nothing measured yet.")
    for shape in data.get("shapes", {}).values():
        lines += _render_shape(shape)
    if data.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in data["notes"]]
    lines += ["", "## Sections", "", "| section | status | seconds |", "| --- | --- | ---: |"]
    for entry in data.get("sections", []):
        status = entry["status"] + (f": `{entry['error']}`" if entry.get("error") else "")
        lines.append(f"| {entry['name']} | {status.replace('|', '/')} | {entry['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _render_shape(shape: dict[str, Any]) -> list[str]:
    variants = shape.get("variants", {})
    names = list(variants)
    lines = ["", f"## {shape['name']}: conformance", ""]
    conf = {n: v.get("conformance") for n, v in variants.items() if v.get("conformance")}
    if conf:
        lines += ["| check | " + " | ".join(conf) + " |", "| --- |" + " --- |" * len(conf)]
        keys = [k for k in next(iter(conf.values())) if isinstance(next(iter(conf.values()))[k], dict)]
        for key in keys:
            cells = [_check_cell(c.get(key)) for c in conf.values()]
            lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(cells) + " |")
        lines.append(
            "| tolerance (abs. logprob) | " + " | ".join(f"{c['tolerance']:.3g}" for c in conf.values()) + " |"
        )
        errors = [
            f"{c['quantization_error']:.3g}" if c.get("quantization_error") is not None else "—" for c in conf.values()
        ]
        lines.append("| 8-bit quantization error (vs unquantized, same forward) | " + " | ".join(errors) + " |")
        lines += [
            "",
            "Greedy streams agree when their tokens are identical, or first differ where the reference's two best "
            "tokens were within the tolerance (a near-tie that rounding may break either way); logprobs are compared "
            "up to the first difference. The unquantized tolerance is float rounding. 8-bit layers round every "
            "activation to int8 and choose their fp16 outlier columns over the whole batch, so padding, batch-mates "
            "and kernel choice move 8-bit results by up to the quantization error itself. The 8-bit tolerance is twice "
            "that error (two results, each within it of the unquantized value, differ by at most twice it), measured "
            "on the SCORE references as the largest |Δ logprob| between the 8-bit and the unquantized model on the "
            "same plain forward, when that exceeds the float tolerance.",
        ]
    else:
        lines.append("Not measured.")

    lines += ["", f"## {shape['name']}: speed", "", "Per decode step (best of the repeats; prefill excluded):", ""]
    lines += [
        _row(
            "variant",
            "batch",
            "ours",
            "bare loop",
            "ours ÷ bare",
            "bare forward alone (synchronised)",
            "tokens vs bare",
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for n in names:
        for batch, s in variants[n].get("decode_step", {}).items():
            forward = _ms(s["bare_forward_synced_s"]) if s.get("bare_forward_synced_s") else "—"
            lines.append(
                f"| {n} | {batch} | {_ms(s['ours_s'])} | {_ms(s['bare_s'])} | {s['ratio']:.2f}× | {forward} | "
                f"{'agree' if s['tokens_agree'] else '**differ**'} ({s['identical_streams']} identical) |"
            )
    lines += [
        "",
        "LMQL traces (bench/workloads.py 1(a)/1(b), greedy, 300-id logit_bias mask, "
        "each call re-sends the grown prompt):",
        "",
    ]
    lines += [
        "| variant | trace | ours | ideal prefix floor | ours ÷ floor | per step ours / floor | same tokens |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for n in names:
        for key, t in variants[n].get("traces", {}).items():
            label = f"{key}: {t['prompt_tokens']}-token prompt, {t['calls']} calls × {t['max_tokens']}"
            label += f", best of {t.get('repeats', 1)}"
            lines.append(
                f"| {n} | {label} | {t['ours_s']:.2f} s | {t['floor_s']:.2f} s | {t['ratio']:.2f}× | "
                f"{_ms(t['ours_step_s'])} / {_ms(t['floor_step_s'])} | {t['same_tokens']} |"
            )
    lines += ["", "Sampled streams (T=1, seeds) as separate predictions:", ""]
    lines += [
        "| variant | streams × tokens | at once | one after another | speed-up | same tokens |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for n in names:
        s = variants[n].get("sampling")
        if s:
            lines.append(
                f"| {n} | {s['streams']} × {s['max_tokens']} | {s['concurrent_s']:.2f} s | {s['sequential_s']:.2f} s | "
                f"{s['speedup']:.2f}× | {s['same_tokens']} |"
            )

    lines += ["", f"## {shape['name']}: memory", ""]
    lines += [
        _row(
            "variant",
            "weights (footprint)",
            "allocated after load",
            "peak after load",
            "peak after workloads",
            "prefix cache budget / used (entries)",
            "left after unload",
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in names:
        v = variants[n]
        load, work, gone = (
            v.get("memory_after_load", {}),
            v.get("memory_after_workloads", {}),
            v.get("memory_after_unload", {}),
        )
        cache = v.get("prefix_cache", {})
        cache_cell = (
            f"{_gib(cache['budget_bytes'])} / {_gib(cache['used_bytes'])} ({cache['entries']})"
            if cache.get("enabled")
            else "off"
        )
        lines.append(
            _row(
                n,
                _gib(load.get("weights_bytes")),
                _gib(load.get("allocated_bytes")),
                _gib(load.get("max_allocated_bytes")),
                _gib(work.get("max_allocated_bytes")),
                cache_cell,
                _gib(gone.get("allocated_bytes")),
            )
        )
    plain = next((variants[n] for n in names if n != "8bit"), None)
    eight = variants.get("8bit")
    if plain and eight:
        ratios = []
        for label, section, key in (
            ("weights", "memory_after_load", "weights_bytes"),
            ("peak after load", "memory_after_load", "max_allocated_bytes"),
            ("peak after workloads", "memory_after_workloads", "max_allocated_bytes"),
        ):
            a, b = eight.get(section, {}).get(key), plain.get(section, {}).get(key)
            if a and b:
                ratios.append(f"{label} {a / b:.2f}")
        if ratios:
            lines += ["", f"8-bit ÷ {plain['dtype']}: " + ", ".join(ratios) + "."]
    for n in names:
        cache = variants[n].get("prefix_cache", {})
        if "used_share_of_allocated" in cache:
            lines.append(
                f"- {n}: the prefix cache held {cache['used_share_of_allocated']:.1%} of the allocated GPU memory "
                "after "
                f"the workloads; its budget is {cache['budget_share_of_device']:.1%} of the device."
            )
    if "build" in shape:
        b = shape["build"]
        lines += [
            "",
            f"`./build --prequantize`: {b['seconds']:.1f} s; checkpoints {_gib(b['checkpoint_bytes'])} instead of "
            f"{_gib(b['original_bytes'])}. Builder: " + "; ".join(x for x in b["report"] if not x.startswith("note:")),
        ]
    cold = shape.get("cold_start")
    if cold:
        lines += ["", f"## {shape['name']}: cold start (fresh process; `setup()` → first token)", ""]
        lines += [
            "| boot | setup() | setup → first token | process → first token | peak GPU memory |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, c in cold.items():
            if not isinstance(c, dict):
                continue
            if "error" in c:
                lines.append(f"| {name} | failed: `{c['error'][:200]}` | | | |")
                continue
            peak = c.get("memory", {}).get("max_allocated_bytes")
            lines.append(
                _row(
                    name,
                    f"{c['setup_s']:.2f} s",
                    f"{c['setup_to_first_token_s']:.2f} s",
                    f"{c['process_to_first_token_s']:.2f} s",
                    _gib(peak),
                )
            )
        if "prequantized_same_tokens" in cold:
            lines += [
                "",
                f"8-bit at boot and pre-quantized serve the same 16 greedy tokens: {cold['prequantized_same_tokens']}.",
            ]
        lines.append("The checkpoint files were just written, so they load from the page cache.")

    lines += ["", f"## {shape['name']}: diagnostics", ""]
    for n in names:
        d = variants[n].get("diagnostics")
        if not d:
            continue
        per = d["per_forward"]
        lines.append(
            f"- {n}: logits dtype {d['logits_dtype']}; {d['int8_layers']} Linear8bitLt layers; per forward "
            f"{per['python_warnings']:.1f} Python warnings, {per['bnb_log_records']:.1f} bitsandbytes log records "
            f"({per['bnb_log_records_shown']:.1f} shown)"
            + (f"; e.g. {d['warning_examples'][:2]}" if d["warning_examples"] else "")
            + (f"; bnb: {d['bnb_log_examples'][:1]}" if d["bnb_log_examples"] else "")
        )
        syncs = d.get("host_syncs_per_step")
        if syncs:
            lines.append(
                f"  - host syncs per decode step: ours {syncs['ours']['per_step']:.1f} "
                f"(at {', '.join(syncs['ours']['where'])}), "
                f"bare loop {syncs['bare']['per_step']:.1f}"
            )
        if "seconds_per_step_estimate" in variants[n]:
            lines.append(
                f"  - setup() in-process {variants[n].get('setup_s', 0):.1f} s; "
                f"one decode step ≈ {_ms(variants[n]['seconds_per_step_estimate'])}"
            )
    return lines


def _check_cell(check: dict[str, Any] | None) -> str:
    if not check:
        return "—"
    mark = "pass" if check["ok"] else "**FAIL**"
    detail = ""
    items = check.get("prompts") or check.get("streams")
    if "reused_tokens" in check:
        same = "identical" if check["identical"] else f"first differs at token {check['first_difference']}"
        detail = f" ({same}, max Δ {check['max_logprob_diff']:.2g}; {check['reused_tokens']} tokens from the cache)"
    elif items and "identical" in items[0]:
        identical = sum(i["identical"] for i in items)
        worst = max(i["max_logprob_diff"] for i in items)
        detail = f" ({identical}/{len(items)} identical, max Δ {worst:.2g}"
        if "distinct_tokens" in items[0]:  # a model repeating one token would make this check trivial
            detail += f"; ≥ {min(i['distinct_tokens'] for i in items)} distinct tokens of {items[0]['tokens']}"
        detail += ")"
    elif "max_diff" in check:
        detail = f" (max Δ {check['max_diff']:.2g})"
    elif "max_diff_first_step" in check:
        detail = f" (max Δ {check['max_diff_first_step']:.2g})"
    elif "min_logprob" in check:
        detail = f" (min logprob {check['min_logprob']:.2g})"
    return mark + detail


def _row(*cells: Any) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(str(cell).replace("|", "/") for cell in cells) + " |"


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.2f} ms"


def _gib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**30:.2f} GiB"


# --- small helpers ----------------------------------------------------------------------------------


def input_device(model: Any) -> torch.device:
    return model.get_input_embeddings().weight.device


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def strict_json(value: Any) -> Any:
    """``value`` with non-finite floats as strings: gpu.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def progress(message: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.getLogger("lmtp_runtime").setLevel(logging.WARNING)


# --- command line -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = os.environ.get("OUT") or str(REPO_ROOT / "work" / "gpu-bench")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(default_out),
        help="where gpu.md and gpu.json go (default $OUT, else work/gpu-bench)",
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny shape only (the default without CUDA)")
    parser.add_argument("--big", action="store_true", help="add a 7B-shaped model after the 1.3B one")
    parser.add_argument(
        "--dtype",
        choices=("float16", "bfloat16", "float32"),
        default=None,
        help="unquantized dtype (default float16 on CUDA, float32 on CPU)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=None, help="time budget in seconds (default 360; 900 with --big)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="checkpoints and builds (large; not under --out)"
    )
    parser.add_argument("--cold-child", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_args(argv)
    if arguments.cold_child is not None:
        quiet_libraries()
        print("RESULT " + json.dumps(strict_json(cold_child(arguments.cold_child))), flush=True)
        return 0
    on_gpu = torch.cuda.is_available()
    tiny = arguments.tiny or not on_gpu
    shapes = ["tiny"] if tiny else ["1.3b", *(["7b"] if arguments.big else [])]
    dtype = getattr(torch, arguments.dtype) if arguments.dtype else (torch.float16 if on_gpu else torch.float32)
    budget = arguments.budget_s or (900.0 if arguments.big and not tiny else 360.0)
    clock = Clock(budget)
    command = " ".join(["python3", "bench/gpu.py", *(sys.argv[1:] if argv is None else argv)])
    record = Record(arguments.out, clock, command)
    start_watchdog(record, after_s=budget + WATCHDOG_GRACE_S)
    quiet_libraries()
    if not on_gpu:
        record.note(
            "No CUDA device: tiny shape on the CPU, unquantized in float32 unless --dtype says otherwise. "
            "The targets are meant for the GPU run; CPU figures only show that every code path works."
        )
    record.run("environment", lambda: record.data["environment"].update(environment()))
    record.write()
    for index, name in enumerate(shapes):
        run_shape(
            record,
            SHAPES[name],
            dtype=dtype,
            device="cuda" if on_gpu else "cpu",
            cache_dir=arguments.cache_dir,
            full_budget=index == len(shapes) - 1,
        )
    record.write()
    failed = [s["name"] for s in record.data["sections"] if s["status"] == "error"]
    conformance_failed = [
        f"{shape}/{name}"
        for shape, data in record.data["shapes"].items()
        for name, v in data.get("variants", {}).items()
        if v.get("conformance") and not v["conformance"]["ok"]
    ]
    progress(f"wrote {arguments.out / MARKDOWN_NAME} and {JSON_NAME} in {clock.elapsed():.0f} s")
    if failed or conformance_failed:
        progress(f"FAILED sections: {failed}; conformance failures: {conformance_failed}")
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the runtime's model threads are daemons; do not wait for them
