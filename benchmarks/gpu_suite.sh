#!/usr/bin/env bash
# Everything a GPU machine should check, in one call of about 5 minutes on one H100 (stages in order,
# each under its own time limit and all under one deadline, each writing its results as it finishes):
#   env        device, versions
#   tests      every CUDA test (pytest -k cuda: tests/kernels, tests/awpo/test_attention.py)
#   profile    python -m benchmarks.profile --sweep: per-phase times of one Qwen3-4B-shape call, epilogue
#              bandwidth, the bare-GEMM floor, the GEMM probes, and every tuning switch against the floor
#   bench      the fused loss at the Qwen3-4B shape (chunk sizes, overlap, torch path, materialised, floor)
#   bench-rest the other tables (log-probs, Llama-3-8B shape, group advantages)
#   attention  python -m benchmarks.attention: shared-prompt forward + backward, flex vs dense vs separate
#   train      two steps of `python -m awpo.train --rollout hf` on a tiny model built offline (bf16
#              autocast, the fused loss, the shared-prompt layout through FlexAttention)
#   compiled   the torch.compile baseline (last; AWPO_SUITE_SKIP_COMPILE=1 skips it)
# Without a GPU it says so and runs the CPU half (about 30 s of CPU time, six Python processes): the CUDA
# tests' selection (they skip), the same profile / benchmark / attention command lines at tiny shapes, one
# training step. Expected on an H100: tests 60-90 s (6 xdist workers when pytest-xdist imports), profile
# 30-40 s, bench 15-25 s, bench-rest 20-30 s, attention 40-60 s (FlexAttention compiles), train 40-60 s,
# then compiled with what is left of the deadline.
#
# Uses the machine's own python3 / torch / triton: no installs, no network, the repository on PYTHONPATH.
# Usage: bash benchmarks/gpu_suite.sh [OUTPUT_DIR]   (default: $OUT when set, else a scratch folder)
# Writes 8 files there (the device tool returns at most 8): SUMMARY.md (status and seconds of every stage),
# RESULTS.md (a copy of benchmarks/RESULTS.md whose GPU sections the bench stages replace: copy it back
# whole), tests.log, profile.md, profile.json, attention.md, train.log, suite.log (the other stages' output).
# AWPO_SUITE_SECONDS (default 400) is the deadline for all stages together.
set -uo pipefail
cd "$(dirname "$0")/.."
SCRATCH="${TMPDIR:-/tmp}/awpo-gpu-suite"
OUTDIR="${1:-${OUT:-$SCRATCH/out}}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
DEADLINE=$(( $(date +%s) + ${AWPO_SUITE_SECONDS:-400} ))
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export TORCHINDUCTOR_CACHE_DIR="$SCRATCH/inductor" TRITON_CACHE_DIR="$SCRATCH/triton" XDG_CACHE_HOME="$SCRATCH/xdg"
export HF_HOME="$SCRATCH/hf" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SCRATCH PYTHON
unset TRITON_INTERPRET
mkdir -p "$SCRATCH" "$OUTDIR"
RESULTS="$OUTDIR/RESULTS.md"
SUMMARY="$OUTDIR/SUMMARY.md"
[ -e "$RESULTS" ] || cp benchmarks/RESULTS.md "$RESULTS"
FAILED=0

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "$PYTHON cannot import torch: set PYTHON to the interpreter that has it" | tee "$SUMMARY"; exit 2
fi
if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    GPU=1; DEVICE=cuda
else
    GPU=0; DEVICE=cpu
fi
export DEVICE

# stage NAME SECONDS COMMAND...: run under min(SECONDS, time left), log to $OUTDIR/NAME.log (or the log
# named by $LOG), and add a line to SUMMARY.md at once. COMMAND is a program (timeout cannot run shell
# functions: those go through `bash -c` with `export -f`).
stage() {
    local name="$1" budget="$2"; shift 2
    local left=$(( DEADLINE - $(date +%s) ))
    local log="$OUTDIR/${LOG:-$name}.log"
    if [ "$left" -lt 15 ]; then
        echo "| $name | not run: the suite's deadline was reached | 0 |" >> "$SUMMARY"
        echo "== $name: not run (deadline)"; FAILED=1; return
    fi
    local limit=$(( budget < left ? budget : left ))
    echo "== $name (at most ${limit}s) -> $log"
    local start=$(date +%s)
    timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee -a "$log"
    local status=${PIPESTATUS[0]} seconds=$(( $(date +%s) - start ))
    local verdict="ok"
    if [ "$status" -eq 124 ] || [ "$status" -eq 130 ]; then verdict="TIMED OUT after ${limit}s (partial results kept)"
    elif [ "$status" -ne 0 ]; then verdict="FAILED (exit $status)"; fi
    [ "$verdict" = "ok" ] || FAILED=1
    echo "| $name | $verdict | $seconds |" >> "$SUMMARY"
}

{
    echo "# GPU suite, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" - <<'EOF' 2>&1
import importlib.metadata, importlib.util, sys, torch
versions = [f"{name} {importlib.metadata.version(name)}" for name in ("triton", "transformers", "pytest")
            if importlib.util.find_spec(name)]
print("python", sys.version.split()[0], "| torch", torch.__version__, "|", " | ".join(versions),
      "| cuda available:", torch.cuda.is_available())
EOF
    echo
    [ "$GPU" = 1 ] || echo "**No CUDA GPU here: this is the CPU half (CUDA tests collected and skipped, tiny shapes).**"
    echo
    echo "| stage | result | seconds |"
    echo "|---|---|---|"
} > "$SUMMARY"
cat "$SUMMARY"

# ---- tests: every CUDA test (on CPU they are collected and skip, which checks their selection)
XDIST=""
if [ "$GPU" = 1 ] && "$PYTHON" -c "import xdist" 2>/dev/null; then XDIST="-n 6"; fi
stage tests 120 "$PYTHON" -m pytest tests/kernels tests/awpo/test_attention.py -k cuda -q -p no:cacheprovider \
    -rfE --tb=short --durations=15 $XDIST
if [ "$GPU" = 1 ] && ! grep -qE "[0-9]+ passed" "$OUTDIR/tests.log"; then
    echo "| tests | NO CUDA TEST PASSED (is CUDA visible to torch?) | 0 |" >> "$SUMMARY"; FAILED=1
fi

# ---- the same command lines on both devices; on CPU at tiny shapes
if [ "$GPU" = 1 ]; then
    FUSED_SHAPE=qwen3-4b; CHUNKS=1024,1664,2048,3456; SECTION=cuda
    BENCH=(--rounds 5 --warmup 2); ATTENTION_ARGS=(--tokens 16384)
else
    FUSED_SHAPE=smoke; CHUNKS=16,32; SECTION=cpu:suite-smoke
    BENCH=(--rounds 1 --warmup 1 --no-memory --compile-backend eager); ATTENTION_ARGS=(--tokens 512 --calls 1)
fi

# ---- profile: per-phase breakdown, bandwidth, floor, probes, sweep of the tuning switches
LOG=suite stage profile 60 "$PYTHON" -m benchmarks.profile --device "$DEVICE" --shape "$FUSED_SHAPE" \
    --chunk-sizes "$CHUNKS" --sweep --output "$OUTDIR/profile.md" --json "$OUTDIR/profile.json"

# ---- benchmark tables, one section of RESULTS.md each, rewritten after every shape: the fused loss at the
# Qwen3-4B shape first (chunk sizes, overlap, the torch path, materialised, Liger when importable, the floor)
LOG=suite stage bench 60 "$PYTHON" -m benchmarks.report --device "$DEVICE" "${BENCH[@]}" \
    --ops fused_linear_policy_loss --shapes "$FUSED_SHAPE" --chunk-sizes "$CHUNKS" \
    --exclude-impls materialised-compiled --section "$SECTION" --output "$RESULTS"
if [ "$GPU" = 1 ]; then
    LOG=suite stage bench-rest 50 "$PYTHON" -m benchmarks.report --device "$DEVICE" "${BENCH[@]}" \
        --ops fused_linear_policy_loss,linear_logprobs,group_advantages --shapes llama-3-8b,groups-16384x16 \
        --exclude-impls materialised-compiled --section cuda:other-tables --output "$RESULTS"
fi

# ---- the trainer's attention: flex vs dense vs separate at a long packed length
LOG=suite stage attention 75 "$PYTHON" -m benchmarks.attention --device "$DEVICE" "${ATTENTION_ARGS[@]}" \
    --output "$OUTDIR/attention.md"

# ---- two training steps on the GPU path (one on CPU), tiny model built offline
train() {
    local model="$SCRATCH/tiny-model" run="$SCRATCH/train-run" steps=$1
    rm -rf "$model" "$run"
    "$PYTHON" -c "import sys; sys.path.insert(0, 'tests/awpo'); import conftest; conftest.build_tiny_model(sys.argv[1])" \
        "$model" || return 1
    "$PYTHON" -m awpo.train --model "$model" --rollout hf --device "$DEVICE" --max_steps "$steps" --prompts_per_step 2 \
        --num_generations 4 --per_device_train_batch_size 8 --max_completion_length 16 --bf16_autocast true \
        --eval_dataset none --save_steps 0 --plot false --max_train_tasks 8 --mask_truncated_completions false \
        --entropy_coef 0.001 --beta 0.01 --output_dir "$run" --overwrite_output_dir true || return 1
    "$PYTHON" - "$run/metrics.jsonl" "$steps" <<'EOF'
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
steps = [r for r in rows if "update/trained_tokens" in r]
for r in steps:
    print({k: r.get(k) for k in ("step", "loss", "grad_norm", "update/trained_tokens", "time/update_s", "time/step_s")})
ok = len(steps) == int(sys.argv[2]) and all(r["update/trained_tokens"] > 0 and math.isfinite(r["loss"]) for r in steps)
print("training steps:", "ok" if ok else "FAILED")
sys.exit(0 if ok else 1)
EOF
}
export -f train
if [ "$GPU" = 1 ]; then TRAIN_STEPS=2; else TRAIN_STEPS=1; fi
stage train 70 bash -c "train $TRAIN_STEPS"

# ---- last: the torch.compile baseline (slow to compile), skippable
if [ "$GPU" = 1 ] && [ "${AWPO_SUITE_SKIP_COMPILE:-0}" != 1 ]; then
    LOG=suite stage compiled 60 "$PYTHON" -m benchmarks.report --device cuda --rounds 5 --warmup 2 \
        --ops fused_linear_policy_loss --shapes qwen3-4b --impls materialised,materialised-compiled,lm-head-gemms \
        --section cuda:compiled --output "$RESULTS"
else
    echo "| compiled | skipped ($([ "$GPU" = 1 ] && echo AWPO_SUITE_SKIP_COMPILE=1 || echo no GPU)) | 0 |" >> "$SUMMARY"
fi

echo
echo "== summary ($SUMMARY)"
cat "$SUMMARY"
[ -s "$OUTDIR/profile.md" ] && sed -n '/Wall time/,/^$/p;/Fastest/p;/achieved/p' "$OUTDIR/profile.md"
[ "$FAILED" = 0 ]
