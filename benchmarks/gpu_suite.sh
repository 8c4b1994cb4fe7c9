#!/usr/bin/env bash
# Everything a GPU machine should check, in one call (well under 10 minutes on one H100):
#   1. the CUDA correctness tests of the Triton kernels (tests/kernels),
#   2. the benchmark table (python -m benchmarks.report --device cuda).
# Uses the machine's own torch / triton: no installs, the repository on PYTHONPATH.
# Usage: bash benchmarks/gpu_suite.sh [RESULTS_FILE]   (default benchmarks/RESULTS.md; its 'cuda' section
# is replaced. A new RESULTS_FILE starts as a copy of benchmarks/RESULTS.md, so it can be copied back whole.)
set -uo pipefail
cd "$(dirname "$0")/.."
OUTPUT="${1:-benchmarks/RESULTS.md}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
SCRATCH="${TMPDIR:-/tmp}/awpo-gpu-suite"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="$SCRATCH/inductor" TRITON_CACHE_DIR="$SCRATCH/triton" XDG_CACHE_HOME="$SCRATCH/xdg"
export PYTHONDONTWRITEBYTECODE=1
mkdir -p "$SCRATCH"
if [ "$OUTPUT" != "benchmarks/RESULTS.md" ] && [ ! -e "$OUTPUT" ]; then
    mkdir -p "$(dirname "$OUTPUT")" && cp benchmarks/RESULTS.md "$OUTPUT"
fi

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1/2 CUDA correctness tests of the kernels (tests/kernels)"
timeout 240 "$PYTHON" -m pytest tests/kernels -q -p no:cacheprovider
tests_status=$?

echo "== 2/2 benchmark table -> $OUTPUT"
# The report rewrites its section after every shape: a timeout still leaves the shapes done so far.
timeout 330 "$PYTHON" -m benchmarks.report --device cuda --output "$OUTPUT"
report_status=$?

echo "== tests exit status $tests_status, report exit status $report_status"
[ "$tests_status" -eq 0 ] && [ "$report_status" -eq 0 ]
