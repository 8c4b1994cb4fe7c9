"""The ablation report: `ablation.json` (every number), `ablation.md` (the tables) and `ablation.png`
(training curves, mean over seeds with a min-max band), from the runs' `result.json` and `metrics.jsonl`.

Per variant: held-out exact and graded accuracy (mean over seeds; 95% t-interval over seeds and
paired bootstrap over tasks), the difference to `grpo` with both intervals (paired by seed and by
task), per-category accuracy, and from training: the share of groups whose outcomes were all equal
(GRPO learns nothing from them), the share of the advantage mass that came from the reasoning reward,
and the share of completions that wrote reasoning.
"""
from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import numpy as np

from ..metrics import plot_panels, read_metrics
from .stats import paired_bootstrap, t_interval

BASELINE = "grpo"
CURVES = [
    ("reward/outcome_mean", "outcome reward (train)"),
    ("accuracy", "exact accuracy (train rollouts)"),
    ("reward/reasoning_mean", "reasoning score"),
    ("completion/with_reasoning_fraction", "completions with reasoning"),
    ("adv/zero_outcome_variance_groups", "groups with all outcomes equal"),
    ("adv/reasoning_share", "share of |advantage| from reasoning"),
]
TRAINING_MEANS = {"zero_variance_groups": "adv/zero_outcome_variance_groups",
                  "reasoning_share": "adv/reasoning_share",
                  "with_reasoning": "completion/with_reasoning_fraction",
                  "reasoning_valid": "reward/reasoning_valid_fraction"}


def load_run(directory: Path) -> dict:
    result = json.loads((directory / "result.json").read_text())
    steps = [r for r in read_metrics(directory / "metrics.jsonl") if "loss" in r] \
        if (directory / "metrics.jsonl").is_file() else []
    return {"result": result, "steps": steps}


def _task_matrix(runs: list[dict], task_ids: list[str], key: str) -> np.ndarray:
    rows = []
    for run in runs:
        scores = {t["id"]: t[key] for t in run["result"]["eval_after"]["tasks"]}
        if sorted(scores) != sorted(task_ids):
            raise ValueError("runs were evaluated on different held-out tasks: give every run the same "
                             "--eval_seed and --max_eval_tasks")
        rows.append([scores[i] for i in task_ids])
    return np.asarray(rows, dtype=np.float64)


def _mean_of(steps: list[dict], key: str) -> float:
    values = [s[key] for s in steps if s.get(key) is not None]
    return float(np.mean(values)) if values else math.nan


def summarise(base: dict | None, runs_by_variant: dict[str, dict[int, dict]], *, resamples: int = 10_000) -> dict:
    """Every number of the report. `runs_by_variant[label][seed]` = `load_run(...)` of a finished run."""
    first = next(iter(next(iter(runs_by_variant.values())).values()))
    task_ids = [t["id"] for t in first["result"]["eval_after"]["tasks"]]
    categories = {t["id"]: t["category"] for t in first["result"]["eval_after"]["tasks"]}
    baseline_runs = runs_by_variant.get(BASELINE)
    summary = {"num_tasks": len(task_ids), "baseline": BASELINE if baseline_runs else None, "variants": {}}
    if base is not None:
        before = base["result"]["eval_before"]
        summary["base"] = {"exact": before["accuracy"], "graded": before["graded"],
                           "by_category": before["by_category"], "format_ok": before["format_ok"]}
        if base["result"].get("bfcl_before"):
            summary["base"]["bfcl"] = base["result"]["bfcl_before"]["overall"]["accuracy"]
    for label, by_seed in runs_by_variant.items():
        seeds = sorted(by_seed)
        runs = [by_seed[s] for s in seeds]
        entry = {"seeds": seeds, "per_seed": {}, "by_category": {}, "training": {}}
        for key in ("exact", "graded"):
            matrix = _task_matrix(runs, task_ids, key)
            entry["per_seed"][key] = matrix.mean(axis=1).tolist()
            entry[key] = {"t": t_interval(matrix.mean(axis=1)).to_dict(),
                          "bootstrap": paired_bootstrap(matrix, resamples=resamples).to_dict()}
            if baseline_runs and label != BASELINE:
                shared = [s for s in seeds if s in baseline_runs]
                if shared:
                    mine = _task_matrix([by_seed[s] for s in shared], task_ids, key)
                    theirs = _task_matrix([baseline_runs[s] for s in shared], task_ids, key)
                    entry[f"{key}_minus_{BASELINE}"] = {
                        "seeds": shared,
                        "t": t_interval(mine.mean(axis=1) - theirs.mean(axis=1)).to_dict(),
                        "bootstrap": paired_bootstrap(mine, theirs, resamples=resamples).to_dict()}
        exact = _task_matrix(runs, task_ids, "exact")
        for category in sorted(set(categories.values())):
            columns = [i for i, task in enumerate(task_ids) if categories[task] == category]
            entry["by_category"][category] = {"mean": float(exact[:, columns].mean()), "tasks": len(columns)}
        bfcl = [run["result"].get("bfcl_after") for run in runs]
        if all(bfcl):
            overall = [b["overall"]["accuracy"] for b in bfcl]
            entry["bfcl"] = {"t": t_interval(overall).to_dict(), "per_seed": overall}
            if baseline_runs and label != BASELINE and all(baseline_runs.get(s, {}).get("result", {}).get("bfcl_after")
                                                           for s in seeds):
                theirs = [baseline_runs[s]["result"]["bfcl_after"]["overall"]["accuracy"] for s in seeds]
                entry["bfcl"]["minus_" + BASELINE] = t_interval(np.subtract(overall, theirs)).to_dict()
        all_steps = [step for run in runs for step in run["steps"]]
        last_steps = [step for run in runs for step in run["steps"][-5:]]
        for name, key in TRAINING_MEANS.items():
            entry["training"][name] = _mean_of(all_steps, key)
        entry["training"]["with_reasoning_last5"] = _mean_of(last_steps, "completion/with_reasoning_fraction")
        entry["training"]["step_s"] = _mean_of(all_steps, "time/step_s")
        summary["variants"][label] = entry
    return summary


# ----------------------------------------------------------------------------------------------
# markdown
# ----------------------------------------------------------------------------------------------

def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _ci(interval: dict) -> str:
    if math.isnan(interval["low"]):
        return "[n/a]"
    return f"[{_pct(interval['low'])}, {_pct(interval['high'])}]"


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}"


def _signed_ci(interval: dict) -> str:
    if math.isnan(interval["low"]):
        return "[n/a]"
    return f"[{_signed(interval['low'])}, {_signed(interval['high'])}]"


def markdown(summary: dict, meta: dict) -> str:
    lines = [f"# Ablation: {meta.get('title', 'advantage estimators')}", ""]
    lines += [f"- date: {meta.get('date', '?')}; machine: {meta.get('machine', '?')}; "
              f"threads per run: {meta.get('threads', '?')}; runs in parallel: {meta.get('parallel', '?')}; "
              f"load average at the end: {meta.get('load', '?')}",
              f"- command: `{meta.get('command', '?')}`",
              f"- budget per run: {meta.get('budget', '?')}",
              f"- held-out: {summary['num_tasks']} tasks, greedy, the same tasks for every run "
              f"(eval seed {meta.get('eval_seed', '?')}); accuracy in %",
              "- intervals: 95%; `t` over seeds (per-seed accuracies), `boot` a paired bootstrap over tasks "
              "(10,000 resamples); differences to grpo paired by seed and task. With 3 seeds the t quantile "
              "is 4.30: a t-interval that excludes 0 is strong evidence, one that includes it is not "
              "evidence of no effect.", ""]
    base = summary.get("base")
    header = "| variant | seeds | exact | t 95% | boot 95% | graded | t 95% | exact - grpo | t 95% | boot 95% " \
             "| graded - grpo | t 95% | boot 95% |"
    lines += [header, "|" + "|".join(["---"] * 13) + "|"]
    if base:
        lines.append(f"| base model (before training) | - | {_pct(base['exact'])} | | | {_pct(base['graded'])} "
                     "| | | | | | | |")
    for label, entry in summary["variants"].items():
        row = [f"**{label}**", str(len(entry["seeds"])), _pct(entry["exact"]["t"]["mean"]), _ci(entry["exact"]["t"]),
               _ci(entry["exact"]["bootstrap"]), _pct(entry["graded"]["t"]["mean"]), _ci(entry["graded"]["t"])]
        for key in ("exact", "graded"):
            diff = entry.get(f"{key}_minus_{BASELINE}")
            row += ([_signed(diff["t"]["mean"]), _signed_ci(diff["t"]), _signed_ci(diff["bootstrap"])] if diff
                    else ["-", "", ""])
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Per seed (exact %, in seed order):", ""]
    for label, entry in summary["variants"].items():
        values = ", ".join(f"seed {s}: {_pct(v)}" for s, v in zip(entry["seeds"], entry["per_seed"]["exact"]))
        lines.append(f"- {label}: {values}")
    categories = sorted({c for e in summary["variants"].values() for c in e["by_category"]})
    lines += ["", "Per category (exact %, mean over seeds):", "",
              "| variant | " + " | ".join(f"{c} ({next(iter(summary['variants'].values()))['by_category'][c]['tasks']})"
                                        for c in categories) + " |",
              "|" + "|".join(["---"] * (len(categories) + 1)) + "|"]
    if base:
        lines.append("| base model | " + " | ".join(_pct(base["by_category"].get(c, math.nan)) for c in categories)
                     + " |")
    for label, entry in summary["variants"].items():
        lines.append(f"| {label} | " + " | ".join(_pct(entry["by_category"][c]["mean"]) for c in categories) + " |")
    with_bfcl = {label: e["bfcl"] for label, e in summary["variants"].items() if "bfcl" in e}
    if with_bfcl:
        lines += ["", "BFCL after training (its own checker; overall %, t 95% over seeds):", "",
                  "| variant | BFCL | t 95% | - grpo | t 95% |", "|---|---|---|---|---|"]
        if base and "bfcl" in base:
            lines.append(f"| base model | {_pct(base['bfcl'])} | | | |")
        for label, b in with_bfcl.items():
            diff = b.get("minus_" + BASELINE)
            lines.append(f"| {label} | {_pct(b['t']['mean'])} | {_ci(b['t'])} | "
                         + (f"{_signed(diff['mean'])} | {_signed_ci(diff)} |" if diff else "- | |"))
    lines += ["", "Training (means over all steps and seeds):", "",
              "| variant | groups with all outcomes equal | share of advantage from reasoning | completions with "
              "reasoning (last 5 steps) | judge scored | s / step |", "|---|---|---|---|---|---|"]
    for label, entry in summary["variants"].items():
        t = entry["training"]
        lines.append(f"| {label} | {_pct(t['zero_variance_groups'])} | {_pct(t['reasoning_share'])} | "
                     f"{_pct(t['with_reasoning'])} ({_pct(t['with_reasoning_last5'])}) | "
                     f"{_pct(t['reasoning_valid'])} | "
                     f"{t['step_s']:.1f} |")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# plot
# ----------------------------------------------------------------------------------------------

def plot(runs_by_variant: dict[str, dict[int, dict]], png_path: Path, *, title: str = "") -> Path | None:
    """Training curves of every variant: the mean over seeds, with a min..max band."""
    panels = [(k, name) for k, name in CURVES
              if any(s.get(k) is not None for by_seed in runs_by_variant.values() for r in by_seed.values()
                     for s in r["steps"])]

    def draw(axis, key: str) -> None:
        for label, by_seed in runs_by_variant.items():
            curves = {}
            for run in by_seed.values():
                for step in run["steps"]:
                    if step.get(key) is not None:
                        curves.setdefault(step["step"], []).append(step[key])
            if not curves:
                continue
            xs = sorted(curves)
            mean = [np.mean(curves[x]) for x in xs]
            line, = axis.plot(xs, mean, linewidth=1.4, label=label)
            axis.fill_between(xs, [min(curves[x]) for x in xs], [max(curves[x]) for x in xs],
                              color=line.get_color(), alpha=0.15)

    return plot_panels(panels, draw, png_path, title=title or "training curves: mean over seeds, band = min..max",
                       cell=(4.6, 3.0), legend=True)


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_report(output_dir: Path, base: dict | None, runs_by_variant: dict[str, dict[int, dict]],
                 meta: dict) -> dict[str, Path]:
    summary = summarise(base, runs_by_variant)
    json_path = output_dir / "ablation.json"
    json_path.write_text(json.dumps({"meta": meta, **summary}, indent=1))
    md_path = output_dir / "ablation.md"
    md_path.write_text(markdown(summary, meta))
    paths = {"json": json_path, "md": md_path}
    png = plot(runs_by_variant, output_dir / "ablation.png", title=meta.get("title", ""))
    if png:
        paths["png"] = png
    return paths
