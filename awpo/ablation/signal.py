"""`python -m awpo.ablation.signal`: phase 0 of the evidence round (docs/EVIDENCE.md), a signal check
without training. Does the base model leave groups where every outcome fails (GRPO learns nothing from
them), and inside those groups, does a judge rank the completions the way the graded outcome does?

    python -m awpo.ablation.signal --output_dir results/evidence-2/phase0 \\
        [--prompts 64] [--generations 8] [--categories simple,multiple,irrelevance] [--seed 0] [--threads 1] \\
        [-- TRAIN OPTIONS]

The rollouts are the trainer's: the run's config as `python -m awpo.train` builds it (its defaults,
binary outcome, worked examples, then the TRAIN OPTIONS), its training task stream from `--seed`, its
rollout engine on the base model, and batches of `prompts_per_step` prompts sampled with the seeds of
training steps 1, 2, ... Every completion is scored with the exact (binary) outcome, the graded outcome,
the grounded rule judge and the reference judge (a control that reads the answer).

Written to the output directory: `phase0.json` (every number), `phase0.md` and `completions.jsonl`
(one line per completion with its scores). `analyse` (pure, tested) computes the statistics:

- the share of groups whose binary outcomes all fail;
- inside those groups, per judge, Spearman's rank correlation with the graded outcome: pooled (each
  group's scores and graded outcomes ranked within the group, ties at their mean rank, then one Pearson
  correlation over every completion of those groups; a group where either is constant adds only
  noise to it), and the mean of the per-group correlations over the groups where both vary;
- the share of completions that wrote `<think>`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import ConfigError
from .stats import pearson, ranks, spearman

JUDGES = ("rule", "reference")
DEFAULT_CATEGORIES = "simple,multiple,irrelevance"
TARGET_ALL_FAIL_SHARE = 0.40   # docs/EVIDENCE.md: phase 0 aims at >= 40% of groups where every outcome fails


# ----------------------------------------------------------------------------------------------
# the statistics
# ----------------------------------------------------------------------------------------------

def group_records(records: Sequence[dict]) -> list[list[dict]]:
    """The records grouped by their `group` field, in group order."""
    groups: dict[int, list[dict]] = {}
    for record in records:
        groups.setdefault(int(record["group"]), []).append(record)
    return [groups[g] for g in sorted(groups)]


def _finite_pairs(group: list[dict], judge: str) -> tuple[np.ndarray, np.ndarray]:
    """(judge scores, graded outcomes) of a group's members with a judge score (NaN = none)."""
    kept = [r for r in group if r[judge] is not None and not math.isnan(r[judge])]
    return (np.array([r[judge] for r in kept], dtype=np.float64),
            np.array([r["graded"] for r in kept], dtype=np.float64))


def within_group_correlation(groups: list[list[dict]], judge: str) -> dict:
    """Spearman's correlation of `judge` with the graded outcome inside `groups`: pooled after ranking
    within each group, and the mean of per-group correlations over the groups where both vary."""
    judge_ranks, graded_ranks, per_group = [], [], []
    judge_varies = graded_varies = 0
    for group in groups:
        scores, graded = _finite_pairs(group, judge)
        if scores.size == 0:
            continue
        judge_ranks.append(ranks(scores))
        graded_ranks.append(ranks(graded))
        judge_varies += bool(np.ptp(scores) > 0)
        graded_varies += bool(np.ptp(graded) > 0)
        if np.ptp(scores) > 0 and np.ptp(graded) > 0:
            per_group.append(spearman(scores, graded))
    pooled = pearson(np.concatenate(judge_ranks), np.concatenate(graded_ranks)) if judge_ranks else math.nan
    scored = [r[judge] for g in groups for r in g if r[judge] is not None and not math.isnan(r[judge])]
    return {"pooled": pooled, "completions": int(sum(len(r) for r in judge_ranks)),
            "completions_above_zero": int(sum(score > 0 for score in scored)),
            "per_group_mean": float(np.mean(per_group)) if per_group else math.nan,
            "groups_both_vary": len(per_group), "groups_judge_varies": judge_varies,
            "groups_graded_varies": graded_varies, "mean_score": float(np.mean(scored)) if scored else math.nan}


def analyse(records: Sequence[dict], judges: Sequence[str] = JUDGES) -> dict:
    """Phase 0's numbers from per-completion records with `group`, `category`, `exact`, `graded`,
    `with_think` and one score per judge (module docstring)."""
    groups = group_records(records)
    if not groups:
        raise ValueError("analyse needs at least one completion record")
    all_fail = [g for g in groups if all(r["exact"] == 0 for r in g)]
    categories: dict[str, dict] = {}
    for group in groups:
        entry = categories.setdefault(group[0]["category"], {"groups": 0, "all_fail": 0})
        entry["groups"] += 1
        entry["all_fail"] += all(r["exact"] == 0 for r in group)
    for entry in categories.values():
        entry["all_fail_share"] = entry["all_fail"] / entry["groups"]
    return {
        "groups": len(groups), "completions": len(records),
        "group_sizes": sorted({len(g) for g in groups}),
        "exact_mean": float(np.mean([r["exact"] for r in records])),
        "graded_mean": float(np.mean([r["graded"] for r in records])),
        "with_think": float(np.mean([bool(r["with_think"]) for r in records])),
        "all_fail_groups": len(all_fail), "all_fail_share": len(all_fail) / len(groups),
        "all_succeed_groups": sum(all(r["exact"] == 1 for r in g) for g in groups),
        "by_category": dict(sorted(categories.items())),
        "in_all_fail_groups": {
            "with_think": float(np.mean([bool(r["with_think"]) for g in all_fail for r in g])) if all_fail
            else math.nan,
            "graded_mean": float(np.mean([r["graded"] for g in all_fail for r in g])) if all_fail else math.nan,
            "groups_with_think": sum(any(r["with_think"] for r in g) for g in all_fail),
            "judges": {judge: within_group_correlation(all_fail, judge) for judge in judges}},
        "in_all_groups": {judge: within_group_correlation(groups, judge) for judge in judges},
    }


# ----------------------------------------------------------------------------------------------
# rollouts and scores
# ----------------------------------------------------------------------------------------------

def phase0_config(*, output_dir: str, categories: str, seed: int, threads: int, generations: int,
                  train_args: Sequence[str] = ()):
    """The config `python -m awpo.train` would run for the phase-1 arms' rollouts (binary outcome,
    worked examples, no held-out evaluation), with `train_args` on top."""
    from .grid import train_config

    return train_config(["--dataset", "builtin", "--categories", categories, "--graded_outcome", "false",
                         "--worked_examples", "true", "--eval_dataset", "none", "--num_generations", str(generations),
                         *train_args, "--seed", str(seed), "--cpu_threads", str(threads), "--output_dir", output_dir])


def sample(config, prompts: int, on_batch=None) -> list:
    """`prompts` of the run's first training prompts x `num_generations` episodes of the base model,
    in the trainer's batches (`prompts_per_step` prompts, the rollout seed of each training step)."""
    import torch

    from ..cpu import set_cpu_threads
    from ..data.stream import DataStream, load_train_tasks
    from ..models import load_policy, resolve_model_path
    from ..rollout import make_engine, vllm_available
    from ..rollout.multiturn import RolloutOptions, run_episodes
    from ..rollout.precision import choose_rollout_dtype

    set_cpu_threads(config.cpu_threads)
    path = resolve_model_path(config.model)
    model, tokenizer = load_policy(path, dtype=getattr(torch, config.dtype), device="cpu")
    if config.rollout == "vllm" and vllm_available():
        dtype, _ = choose_rollout_dtype(config.rollout_dtype, config.dtype)  # the trainer's rollouts' dtype
        engine = make_engine("vllm", path, seed=config.seed, dtype=dtype, max_model_len=config.max_model_len,
                             kv_cache_gb=config.vllm_kv_cache_gb,
                             gpu_memory_utilization=config.vllm_gpu_memory_utilization)
        del model
    else:
        engine = make_engine("hf", path, seed=config.seed, model=model, tokenizer=tokenizer)
    set_cpu_threads(config.cpu_threads)  # vLLM's start-up may have changed it
    data = DataStream(load_train_tasks(config), config.seed)
    episodes, step = [], 0
    while len(episodes) < prompts * config.num_generations:
        step += 1
        batch = data.next_batch(min(config.prompts_per_step, prompts - len(episodes) // config.num_generations))
        options = RolloutOptions(num_generations=config.num_generations, temperature=config.temperature,
                                 top_p=config.top_p, max_completion_length=config.max_completion_length,
                                 max_tool_rounds=config.max_tool_rounds, seed=config.seed * 1_000_003 + step)
        episodes += run_episodes(engine, tokenizer, batch, options)
        if on_batch is not None:
            on_batch(len(batch))
    return episodes


def score(episodes: list, config) -> list[dict]:
    """One record per episode: its task, text, both outcomes and both judges' scores."""
    from ..judges import ReferenceJudge, RuleJudge
    from ..scoring import score_episodes

    outcomes = score_episodes(episodes, graded=True)
    by_judge = {"rule": RuleJudge(missing_reasoning_score=config.missing_reasoning_score),
                "reference": ReferenceJudge(missing_reasoning_score=config.missing_reasoning_score)}
    judged = {name: score_episodes(episodes, graded=False, judge=judge).reasoning for name, judge in by_judge.items()}
    groups: dict[int, int] = {}
    records = []
    for index, episode in enumerate(episodes):
        group = index // config.num_generations
        groups[group] = groups.get(group, 0) + 1
        records.append({"group": group, "sample": groups[group] - 1, "task_id": episode.task.id,
                        "category": episode.task.category, "request": getattr(episode.task, "user_prompt", None),
                        "completion": episode.completion_text,
                        "with_think": bool(episode.reasoning and episode.reasoning.strip()),
                        "tool_calls": len(episode.calls), "truncated": bool(episode.truncated),
                        "format_error": next((p.error for p in episode.parsed_turns if p.error), None),
                        "exact": outcomes.exact[index], "graded": outcomes.outcome[index],
                        **{name: judged[name][index] for name in JUDGES}})
    return records


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------

def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _r(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+.3f}"


def markdown(result: dict, meta: dict) -> str:
    inside = result["in_all_fail_groups"]
    lines = ["# Phase 0: signal check (no training)", "",
             f"- date: {meta['date']}; machine: {meta['machine']}; torch threads: {meta['threads']}; "
             f"load (uptime) at the start: {meta['load_start']}, at the end: {meta['load_end']}; "
             f"took {meta['seconds']:.0f} s",
             f"- command: `{meta['command']}`",
             f"- model {meta['model']}; categories {meta['categories']}; seed {meta['seed']}; "
             f"{result['groups']} prompts x {', '.join(map(str, result['group_sizes']))} completions, temperature "
             f"{meta['temperature']}, max {meta['max_completion_length']} tokens, worked examples, binary outcome", "",
             f"**Groups whose binary outcomes all fail: {result['all_fail_groups']}/{result['groups']} = "
             f"{_pct(result['all_fail_share'])}** (target >= {_pct(TARGET_ALL_FAIL_SHARE)}); all succeed: "
             f"{result['all_succeed_groups']}. Exact {_pct(result['exact_mean'])}, graded "
             f"{_pct(result['graded_mean'])}, completions with `<think>` {_pct(result['with_think'])} "
             f"({_pct(inside['with_think'])} inside the all-fail groups, {inside['groups_with_think']} of which hold "
             f"at least one; their graded outcome averages {_pct(inside['graded_mean'])}).", "",
             "| category | groups | all fail | share |", "|---|---|---|---|"]
    for category, entry in result["by_category"].items():
        lines.append(f"| {category} | {entry['groups']} | {entry['all_fail']} | {_pct(entry['all_fail_share'])} |")
    lines += ["", "Spearman correlation of each judge's score with the graded outcome, ranked within each group:", "",
              "| judge | groups | pooled rho (completions) | mean per-group rho (groups where both vary) | "
              "groups where the judge varies | where the graded outcome varies | mean judge score | "
              "completions it scores > 0 |",
              "|---|---|---|---|---|---|---|---|"]
    for where, entries, count in (("all-fail groups", inside["judges"], result["all_fail_groups"]),
                                  ("all groups", result["in_all_groups"], result["groups"])):
        for judge, c in entries.items():
            lines.append(f"| {judge} ({where}) | {count} | {_r(c['pooled'])} ({c['completions']}) | "
                         f"{_r(c['per_group_mean'])} ({c['groups_both_vary']}) | {c['groups_judge_varies']} | "
                         f"{c['groups_graded_varies']} | {c['mean_score']:.3f} | {c['completions_above_zero']} |")
    lines.append("")
    return "\n".join(lines)


def _uptime_load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m awpo.ablation.signal", allow_abbrev=False,
                                     description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--output_dir", required=True, help="where phase0.json, phase0.md, completions.jsonl go")
    parser.add_argument("--prompts", type=int, default=64, help="training prompts (groups) (default: 64)")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt (default: 8)")
    parser.add_argument("--categories", default=DEFAULT_CATEGORIES,
                        help=f"the task category mix (default: {DEFAULT_CATEGORIES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task stream and the sampling (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--rejudge", action="store_true",
                        help="score --output_dir's saved completions again with the current judges, then "
                             "recompute phase0.json and phase0.md; sample nothing")
    parser.add_argument("--analyse_only", action="store_true",
                        help="recompute phase0.json and phase0.md from --output_dir's completions.jsonl (the "
                             "run's own date, command and load kept), sample nothing")
    return parser


def rejudge(output_dir: Path) -> None:
    """Score the saved completions again with the current judges (after a change to a judge), then
    reanalyse. The tasks are rebuilt from the run's seed and categories; the completions are not
    sampled again."""
    from ..data.builtin import builtin_tasks
    from ..judges import JudgeRequest, ReferenceJudge, RuleJudge
    from ..toolcall import parse_completion

    path = output_dir / "completions.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    meta = json.loads((output_dir / "phase0.json").read_text())["meta"]
    size = 1 + max(int(r["task_id"].split("-")[2]) for r in records)
    tasks = {t.id: t for t in builtin_tasks("train", n=size, seed=meta["seed"],
                                            categories=meta["categories"].split(","))}
    judges = {"rule": RuleJudge(), "reference": ReferenceJudge()}
    for record in records:
        task = tasks[record["task_id"]]
        parsed = parse_completion(record["completion"])
        request = JudgeRequest.of_completion(task.user_prompt, parsed, task.tools, task.ground_truth)
        record.update({name: judge.score_many([request])[0] for name, judge in judges.items()})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    meta["rejudged"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write_results(output_dir, analyse(records), meta)


def reanalyse(output_dir: Path) -> None:
    """phase0.json / phase0.md again from the saved completions (after a change to the statistics)."""
    records = [json.loads(line) for line in (output_dir / "completions.jsonl").read_text().splitlines() if line]
    meta = json.loads((output_dir / "phase0.json").read_text())["meta"]
    write_results(output_dir, analyse(records), meta)


def write_results(output_dir: Path, result: dict, meta: dict) -> None:
    (output_dir / "phase0.json").write_text(json.dumps({"meta": meta, **result}, indent=1))
    (output_dir / "phase0.md").write_text(markdown(result, meta))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    from ..train import _quiet_third_party_logs
    from .report import machine_description

    _quiet_third_party_logs()
    output_dir = Path(args.output_dir)
    if args.rejudge or args.analyse_only:
        rejudge(output_dir) if args.rejudge else reanalyse(output_dir)
        print((output_dir / "phase0.md").read_text())
        return 0
    try:
        if args.prompts < 1 or args.generations < 2 or args.threads < 1:
            raise ConfigError("--prompts >= 1, --generations >= 2 and --threads >= 1, please")
        config = phase0_config(output_dir=str(output_dir / "run"), categories=args.categories, seed=args.seed,
                               threads=args.threads, generations=args.generations, train_args=argv[split + 1:])
    except ConfigError as err:
        print(f"python -m awpo.ablation.signal: error: {err}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    output_dir.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine_description(), "threads": args.threads,
            "load_start": _uptime_load(), "seed": args.seed, "categories": args.categories,
            "model": config.model or "SmolLM2-135M-Instruct", "temperature": config.temperature,
            "max_completion_length": config.max_completion_length, "rollout_dtype": config.rollout_dtype,
            "command": "python -m awpo.ablation.signal " + " ".join(shlex.quote(a) for a in argv)}
    started = time.time()
    with tqdm(total=args.prompts, desc="phase 0", unit="prompt", dynamic_ncols=True) as bar:
        episodes = sample(config, args.prompts, on_batch=bar.update)
    records = score(episodes, config)
    meta |= {"seconds": time.time() - started, "load_end": _uptime_load()}
    result = analyse(records)
    with open(output_dir / "completions.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    write_results(output_dir, result, meta)
    print((output_dir / "phase0.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
