"""Exploratory (not pre-registered): held-out exact accuracy per category, per seed and arm.

The primary metric pools 512 tasks of three categories. On irrelevance the right answer is no call, so
a run that ends up always calling scores ~0% there and one that ends up refusing scores ~95%; this
table separates that from the tasks where a tool fits (simple, multiple). Any awpo checkout works
(it reads result.json files only):

    python results/evidence-2/diagnostics/by_category.py

It writes by_category.md beside itself (docs/EVIDENCE.md reads it).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"grpo": "GRPO", "awpo": "AWPO", "awpo-judge_reference": "control"}
FITTING = ("simple", "multiple")


def accuracies(result_path: Path) -> dict[str, float]:
    """Exact accuracy in % on the tasks where a tool fits, on irrelevance, and on all (the primary)."""
    tasks = json.loads(result_path.read_text())["eval_after"]["tasks"]
    fitting = [t["exact"] for t in tasks if t["category"] in FITTING]
    irrelevance = [t["exact"] for t in tasks if t["category"] == "irrelevance"]
    return {"fitting": 100 * statistics.mean(fitting), "irrelevance": 100 * statistics.mean(irrelevance),
            "all": 100 * statistics.mean(t["exact"] for t in tasks), "tasks": (len(fitting), len(irrelevance))}


def main() -> int:
    runs = {arm: {int(p.parent.name.split("-")[1]): accuracies(p) for p in (ROOT / arm).glob("seed-*/result.json")}
            for arm in ARMS}
    seeds = sorted(set(runs["grpo"]) & set(runs["awpo"]))
    counts = runs["grpo"][seeds[0]]["tasks"]
    out = ["# Held-out exact accuracy by category (exploratory)", "",
           "- command: `python results/evidence-2/diagnostics/by_category.py`",
           f"- tasks where a tool fits (simple, multiple): {counts[0]}; irrelevance (no call is right): {counts[1]}",
           "", "| seed | arm | tool fits | irrelevance | all (primary) |", "|---|---|---|---|---|"]
    diffs = {"fitting": [], "irrelevance": [], "all": []}
    for seed in seeds:
        for arm, label in ARMS.items():
            if seed in runs[arm]:
                a = runs[arm][seed]
                out.append(f"| {seed} | {label} | {a['fitting']:.1f} | {a['irrelevance']:.1f} | {a['all']:.1f} |")
        for key in diffs:
            diffs[key].append(runs["awpo"][seed][key] - runs["grpo"][seed][key])
        out.append(f"| {seed} | AWPO - GRPO | {diffs['fitting'][-1]:+.1f} | {diffs['irrelevance'][-1]:+.1f} | "
                   f"{diffs['all'][-1]:+.1f} |")
    out += ["", f"AWPO - GRPO over seeds {seeds[0]}-{seeds[-1]} (mean, sd; points):", ""]
    for key, label in (("fitting", "tool fits"), ("irrelevance", "irrelevance"), ("all", "all (primary)")):
        out.append(f"- {label}: {statistics.mean(diffs[key]):+.2f}, sd {statistics.stdev(diffs[key]):.2f}")
    out.append("")
    (Path(__file__).parent / "by_category.md").write_text("\n".join(out))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
