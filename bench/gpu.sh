#!/usr/bin/env bash
# Run bench/gpu.py on the rented GPU machine (or here): carried wheels, a hard timeout, a log.
#
#   OUT=/some/dir bash bench/gpu.sh [gpu.py arguments...]
#
# - Wheels in .whl/ (bitsandbytes, a newer transformers: the device has neither) are installed
#   with --no-index --no-deps into /tmp/site, which goes first on PYTHONPATH. No network is used.
# - gpu.py writes $OUT/gpu.md and $OUT/gpu.json as it goes; this script tees everything it
#   prints to $OUT/gpu.log and ends it after GPU_BENCH_TIMEOUT seconds whatever happens.
#
# Environment: OUT (default work/gpu-bench), PYTHON (default python3), WHEEL_DIR (default .whl;
# empty: install nothing), SITE (default /tmp/site), GPU_BENCH_TIMEOUT (default 420 s: gpu.py's
# 360 s budget, its watchdog's 40 s grace, and some slack; 960 s with --big). With --budget-s,
# set GPU_BENCH_TIMEOUT to at least the budget + 60.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${PYTHON:-python3}"
out="${OUT:-work/gpu-bench}"
wheel_dir="${WHEEL_DIR-.whl}"
site="${SITE:-/tmp/site}"
default_limit=420
for argument in "$@"; do
    [[ "$argument" == --big ]] && default_limit=960  # gpu.py's budget is 900 s with --big
done
limit="${GPU_BENCH_TIMEOUT:-$default_limit}"
mkdir -p "$out"
log="$out/gpu.log"
: >"$log"

say() { echo "[gpu.sh $(date -u +%H:%M:%S)] $*" | tee -a "$log" >&2; }

say "python: $(command -v "$python") ($("$python" --version 2>&1)); out: $out; timeout: ${limit} s"
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 20 nvidia-smi 2>&1 | tee -a "$log" >&2
fi

shopt -s nullglob
wheels=()
if [[ -n "$wheel_dir" ]]; then
    wheels=("$wheel_dir"/*.whl)
fi
imports_ok() {
    timeout 120 "$python" -c 'import torch, transformers, bitsandbytes
print("imports:", "torch", torch.__version__, "transformers", transformers.__version__, transformers.__file__,
      "bitsandbytes", bitsandbytes.__version__)' 2>&1 | tail -n 3 | tee -a "$log" >&2
    return "${PIPESTATUS[0]}"
}

if ((${#wheels[@]})); then
    say "installing ${#wheels[@]} carried wheel(s) into $site: ${wheels[*]##*/}"
    if timeout 180 "$python" -m pip install --quiet --no-index --no-deps --target "$site" "${wheels[@]}" 2>&1 | tee -a "$log" >&2; then
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        if ! imports_ok; then
            # --no-deps cannot tell whether the machine's other packages suit the carried ones
            # (transformers checks huggingface_hub's version at import): try the machine's own
            # transformers with the carried rest, so the run still measures something.
            say "the carried packages do not import together; retrying without the carried transformers"
            rm -rf "$site"/transformers "$site"/transformers-*.dist-info
            imports_ok || say "still failing: gpu.py will record what it can"
        fi
    else
        say "pip install of the carried wheels failed; running with the machine's own packages"
    fi
else
    say "no wheels in '${wheel_dir}': running with the machine's own packages"
fi
export PYTHONUNBUFFERED=1

started=$SECONDS
timeout --kill-after=15 "$limit" "$python" bench/gpu.py --out "$out" "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
say "bench/gpu.py exited with status $status after $((SECONDS - started)) s (124/137: killed by the timeout)"

if [[ -f "$out/gpu.md" ]]; then
    # The targets, again at the end of the output: whatever else is lost, the tail shows them.
    sed -n '/^## Targets/,/^## /p' "$out/gpu.md" | sed '$d'
fi
exit "$status"
