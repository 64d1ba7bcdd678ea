#!/usr/bin/env bash
# Benchmarks 1 (stage throughput), 2 (whole sweep) and 4 (cost growth, up to 100 lanes and
# 4096-wide models) on one GPU, sized to finish within 5 minutes. Writes the same JSON and
# Markdown tables as `make bench`, named after the GPU: benchmarks/results/gpu-<device>.{json,md}.
#
# Needs a CUDA build of jax in the environment that runs it, e.g.
#   .venv/bin/pip install -U "jax[cuda12]"
# Extra arguments go to run_all (e.g. --only cost_growth).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3

"$PYTHON" - <<'CHECK'
import sys
import jax
if jax.default_backend() != "gpu":
    sys.exit(f"benchmarks/gpu.sh: jax sees no GPU (backend {jax.default_backend()!r}); "
             "install jax[cuda12]")
print("GPU:", jax.devices()[0].device_kind, file=sys.stderr)
CHECK

# allocate on demand, so the device's peak memory is what the programs used
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# results are written after each benchmark, so a run cut short keeps what it measured
exec timeout --signal=INT 290 "$PYTHON" -m benchmarks.run_all --gpu \
    --only stage_throughput,whole_sweep,cost_growth "$@"
