"""Exploratory, after the round (not pre-registered, one draw per seed): AWPO seeds 3 and 5 re-run with
the corrected judges (a completion whose calls do not parse scores 0), against the round's runs.

The re-runs (2026-12-07 02:40-03:06 UTC, AMD EPYC, two side by side with 1 thread each), from main at
aac683c, the round's options plus `--rollout_dtype float32` (the round's rollouts were fp32; main's
default is bf16 on this CPU), each with

    python -m awpo.train --max_eval_tasks 512 --graded_outcome false --worked_examples true \\
        --categories simple,multiple,irrelevance --eval_seed 0 --cpu_threads 1 --estimator awpo \\
        --seed <s> --eval_before false --rollout_dtype float32 --output_dir <dir>

Main differs from the round's pinned code in more than the judge (32-token KV blocks, the importance
correction on because the learner computes in bf16 autocast), so a re-run is a new draw of the seed,
not its replay. Writes judge_fix_check.md beside itself:

    python results/evidence-2/diagnostics/judge_fix_check.py
"""
from __future__ import annotations

import json
from pathlib import Path

from by_category import FITTING, accuracies  # beside this script

from awpo.toolcall import parse_completion

HERE = Path(__file__).resolve().parent
ROUND = HERE.parent
RUNS = [("AWPO, corrected judge (re-run)", HERE / "judge-fix-check" / "awpo"),
        ("AWPO, the round's judge", ROUND / "awpo"), ("GRPO (the round)", ROUND / "grpo")]


def row(result_path: Path) -> dict:
    """by_category's accuracies, plus the malformed share on the tool-fitting tasks and the think rate."""
    tasks = json.loads(result_path.read_text())["eval_after"]["tasks"]
    texts = [c for t in tasks if t["category"] in FITTING for c in t["completions"]]
    every = [c for t in tasks for c in t["completions"]]
    return {**accuracies(result_path),
            "malformed": 100 * sum(not parse_completion(c).ok for c in texts) / len(texts),
            "think": 100 * sum(parse_completion(c).reasoning is not None for c in every) / len(every)}


def main() -> int:
    out = ["# AWPO with the corrected judge: two re-runs (exploratory, one draw each)", "",
           "- command: `python results/evidence-2/diagnostics/judge_fix_check.py` (the module docstring has the runs')",
           "- held-out: the round's 512 tasks, greedy; malformed = share of completions on the 402 tool-fitting tasks",
           "", "| seed | run | exact (primary) | tool fits | irrelevance | malformed | with `<think>` |",
           "|---|---|---|---|---|---|---|"]
    for seed in (3, 5):
        for label, root in RUNS:
            r = row(root / f"seed-{seed}" / "result.json")
            out.append(f"| {seed} | {label} | {r['all']:.1f} | {r['fitting']:.1f} | {r['irrelevance']:.1f} | "
                       f"{r['malformed']:.1f}% | {r['think']:.1f}% |")
    out.append("")
    (HERE / "judge_fix_check.md").write_text("\n".join(out))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
