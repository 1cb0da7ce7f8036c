#!/usr/bin/env bash
# The GPU check (tools/gpu_check.py): on a machine with a CUDA device, rebuild with the CUDA
# kernels, run the CUDA tests, train every headline row briefly with AMP on and off, run the
# diagnostics and the CUDA benchmarks; one log under output/gpu_check/. Arguments go to
# tools/gpu_check.py (--parts, --iters, --budget-min, --out, --dry-run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$D2ALIGN_ROOT"
exec "$D2ALIGN_PY" tools/gpu_check.py "$@"
