#!/usr/bin/env bash
# The accelerator numbers, in one command that ends within 6 minutes:
#   10. accelerator workloads (ResNet-18, a 10M-parameter transformer, the digits MLP: stages
#      of 5 and 15 lanes against sequential runs, compile time, memory per lane, the whole
#      default sweep, lane strategies), first, inside its own budget of about 200 s;
#   then, as far as the time limit allows:
#   5. engine costs (whole sweep against best-practice sequential code, first-step latency,
#      compile count and time, a rerun with a warm cache, lane strategies, diagnostics),
#   1. stage throughput (a 5-lane stage against one run),
#   4. cost growth (lanes up to 100, models up to 4096 wide).
# Results are written after each benchmark, as JSON and Markdown named after the device
# (gpu-<device>.{json,md}), into $OUT when it is set, else benchmarks/results.
#
#   PYTHON=python3 PYTHONPATH=. bash benchmarks/gpu.sh     # on the GPU machine, no installs
#   bash benchmarks/gpu.sh --dry                            # tiny sizes on any backend (CPU)
#
# Needs jax with a GPU backend (e.g. jax[cuda12]); optax and flax; optuna is not needed.
# Extra arguments go to run_all (e.g. --only engine_costs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null || PYTHON=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR="${OUT:-benchmarks/results}"
LIMIT="${GPU_BENCH_SECONDS:-300}"  # hard limit for the benchmarks; startup comes on top

MODE=--gpu
if [ "${1:-}" = "--dry" ]; then
    MODE=--dry
    shift
    # nothing is timed in a dry run: LLVM's optimisation passes would only slow its compiles
    case "${XLA_FLAGS:-}" in
        *xla_backend_optimization_level*) ;;
        *) export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0" ;;
    esac
else
    "$PYTHON" - <<'CHECK'
import sys
import jax
if jax.default_backend() != "gpu":
    sys.exit(f"benchmarks/gpu.sh: jax sees no GPU (backend {jax.default_backend()!r}); "
             "install jax[cuda12], or pass --dry to check the script on a CPU")
print("GPU:", jax.devices()[0].device_kind, file=sys.stderr)
CHECK
fi

# allocate on demand, so the device's peak memory is what the programs used
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# results are written after each benchmark, so a run cut short keeps what it measured;
# INT at the limit, KILL 15 s later if it did not stop
exec timeout --signal=INT --kill-after=15 "$LIMIT" "$PYTHON" -m benchmarks.run_all "$MODE" \
    --only accelerator,engine_costs,stage_throughput,cost_growth --out "$OUT_DIR" "$@"
