#!/usr/bin/env bash
# Everything a GPU machine should check, in one call (well under 10 minutes on one H100):
#   1. the CUDA correctness tests of the kernels (the `cuda` cases of tests/kernels),
#   2. the benchmark table (python -m benchmarks.report --device cuda).
# Uses the machine's own torch / triton: no installs, the repository on PYTHONPATH.
# Usage: bash benchmarks/gpu_suite.sh [RESULTS_FILE]
#   RESULTS_FILE defaults to $OUT/RESULTS.md when $OUT is set (the device tool's returned folder), else
#   benchmarks/RESULTS.md. Its 'cuda' section is replaced; a new file starts as a copy of
#   benchmarks/RESULTS.md, so it can be copied back whole. The test and report logs are written beside it.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${1:-}" ]; then OUTPUT="$1"
elif [ -n "${OUT:-}" ]; then OUTPUT="$OUT/RESULTS.md"
else OUTPUT="benchmarks/RESULTS.md"; fi
LOGS="$(dirname "$OUTPUT")"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
SCRATCH="${TMPDIR:-/tmp}/awpo-gpu-suite"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="$SCRATCH/inductor" TRITON_CACHE_DIR="$SCRATCH/triton" XDG_CACHE_HOME="$SCRATCH/xdg"
export PYTHONDONTWRITEBYTECODE=1
mkdir -p "$SCRATCH" "$LOGS"
if [ "$OUTPUT" != "benchmarks/RESULTS.md" ] && [ ! -e "$OUTPUT" ]; then
    cp benchmarks/RESULTS.md "$OUTPUT"
fi

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1/2 CUDA correctness tests of the kernels (tests/kernels -k cuda) -> $LOGS/gpu_suite_tests.log"
if "$PYTHON" -c "import pytest" 2>/dev/null; then
    # SIGINT on timeout: pytest still prints its summary of what ran.
    timeout -s INT 200 "$PYTHON" -m pytest tests/kernels -k cuda -q -p no:cacheprovider -rfE --tb=short \
        --durations=10 2>&1 | tee "$LOGS/gpu_suite_tests.log" | tail -60
    tests_status=${PIPESTATUS[0]}
    if [ "$tests_status" -eq 0 ] && ! grep -qE "[0-9]+ passed" "$LOGS/gpu_suite_tests.log"; then
        echo "no CUDA test ran (all skipped: is CUDA visible to torch, is TRITON_INTERPRET unset?)"
        tests_status=4
    fi
else
    echo "pytest is not installed on this machine: no correctness tests ran"
    tests_status=3
fi

echo "== 2/2 benchmark table -> $OUTPUT"
# The report rewrites its section after every shape: a timeout still leaves the shapes done so far.
timeout -s INT 330 "$PYTHON" -m benchmarks.report --device cuda --output "$OUTPUT" 2>&1 \
    | tee "$LOGS/gpu_suite_report.log" | tail -80
report_status=${PIPESTATUS[0]}

echo "== tests exit status $tests_status, report exit status $report_status"
[ "$tests_status" -eq 0 ] && [ "$report_status" -eq 0 ]
