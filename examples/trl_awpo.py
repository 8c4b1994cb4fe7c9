"""AWPO on the built-in tool-use tasks with TRL's trainer: one process, or many with `accelerate launch`.

    # one process (CPU: add --use_cpu true; a CUDA GPU: --use_vllm true for vLLM rollouts)
    python examples/trl_awpo.py --output_dir runs/trl --max_steps 20 --use_cpu true

    # 8 GPUs, DDP, vLLM colocated on each GPU (FSDP / ZeRO-3: the other configs in examples/)
    accelerate launch --config_file examples/accelerate_multi_gpu.yaml examples/trl_awpo.py \\
        --model Qwen/Qwen3-4B --output_dir runs/trl-qwen3-4b --bf16 true --use_vllm true --vllm_mode colocate \\
        --num_generations 8 --per_device_train_batch_size 8 --max_completion_length 512

Every `AWPOConfig` option is a flag (`--help` lists them: TRL's GRPOConfig options plus AWPO's `--estimator`,
`--gate`, `--weight`, `--clip`, `--clip_shrink`, `--reasoning_coef`, `--graded_outcome`,
`--missing_reasoning_score`, `--fused_loss`, ...); the script's own flags choose the model and the tasks.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from awpo.data import builtin_dataset, load_tasks, tasks_dataset
from awpo.data.task import SINGLE_TURN_CATEGORIES
from awpo.integrations.trl import AWPOConfig, AWPOTrainer, outcome_reward, reasoning_reward
from awpo.models import resolve_model_path


@dataclass
class ScriptArguments:
    model: str = field(default="", metadata={"help": "HF model directory or hub id; empty: SmolLM2-135M-Instruct, "
                                                     "prepared on first use (as python -m awpo.train does)"})
    dataset: str = field(default="builtin", metadata={"help": "'builtin' or a single-turn task file read by "
                                                              "awpo.data.load_tasks (jsonl / json / parquet)"})
    train_tasks: int = field(default=512, metadata={"help": "number of built-in training tasks"})
    categories: str = field(default=",".join(SINGLE_TURN_CATEGORIES),
                            metadata={"help": "comma-separated built-in task categories"})
    worked_examples: bool = field(default=True, metadata={"help": "built-in tasks open with worked examples"})


def build_dataset(script: ScriptArguments, seed: int):
    if script.dataset != "builtin":
        return tasks_dataset(load_tasks(script.dataset))
    categories = tuple(c.strip() for c in script.categories.split(",") if c.strip())
    return builtin_dataset("train", n=script.train_tasks, seed=seed, categories=categories,
                           worked_examples=script.worked_examples)


def main(argv: list[str] | None = None) -> AWPOTrainer:
    parser = HfArgumentParser((ScriptArguments, AWPOConfig))
    script, args = parser.parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    rewards = [outcome_reward, reasoning_reward] if args.uses_reasoning else [outcome_reward]
    trainer = AWPOTrainer(model=resolve_model_path(script.model), reward_funcs=rewards, args=args,
                          train_dataset=build_dataset(script, args.seed))
    trainer.train()
    trainer.save_model(args.output_dir)
    return trainer


if __name__ == "__main__":
    main()
