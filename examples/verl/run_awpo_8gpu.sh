#!/usr/bin/env bash
# AWPO with verl 0.9.1 on one node of 8 GPUs: export the built-in tool-use tasks, then train Qwen3-4B.
#
#   pip install "verl==0.9.1" vllm ... && pip install --no-deps -e .   # awpo into verl's environment
#   bash examples/verl/run_awpo_8gpu.sh                                 # extra args are Hydra overrides:
#   bash examples/verl/run_awpo_8gpu.sh actor_rollout_ref.model.path=Qwen/Qwen3-8B trainer.nnodes=2
#
# Every verl process must import awpo.integrations.verl (the estimator `awpo`, the policy loss `awpo` and the shim
# that hands verl's non_tensor_batch to the estimator): installed awpo does it through its verl.plugins entry point,
# and the example config also sets VERL_USE_EXTERNAL_MODULES for every Ray worker (docs/VERL.md, "Registration").
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA_DIR="${DATA_DIR:-$HOME/data/awpo}"
if [[ ! -f "$DATA_DIR/train.parquet" ]]; then
    python -m awpo.integrations.verl.data --output "$DATA_DIR"
fi

python -m verl.trainer.main_ppo \
    --config-path "$PWD/examples/verl" --config-name awpo_tool_use \
    data.train_files="$DATA_DIR/train.parquet" \
    data.val_files="$DATA_DIR/test.parquet" \
    "$@"
