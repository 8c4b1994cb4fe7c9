"""Exploratory (not pre-registered): what the round's rule judge gave each kind of held-out completion.

For every finished run under results/evidence-2, its held-out completions on the tasks where a tool
fits (simple, multiple) are sorted into right call / wrong call / no call / malformed (call markup
that does not parse), and the grounded rule judge *of the round* scores those with reasoning. Run it
with the round's pinned code on the path, so that the judge is the one the runs trained with:

    git worktree add --detach runs/evidence-code 71fe042     # if it is not there
    PYTHONPATH=runs/evidence-code python results/evidence-2/diagnostics/judge_by_kind.py

It writes judge_by_kind.md beside itself (docs/EVIDENCE.md reads it).
"""
from __future__ import annotations

import collections
import glob
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from awpo.config import Config
from awpo.data.stream import load_eval_tasks
from awpo.judges.base import JudgeRequest
from awpo.judges.rule import RuleJudge
from awpo.scoring import _request_text
from awpo.toolcall import parse_completion

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"grpo": "GRPO", "awpo": "AWPO (rule judge)", "awpo-judge_reference": "control: AWPO (reference judge)"}
KINDS = ("right call", "wrong call", "no call", "malformed")


def held_out_tasks(config: dict, cache: dict) -> dict:
    key = (config["categories"], config["max_eval_tasks"], config["eval_seed"], config["worked_examples"])
    if key not in cache:
        c = Config(eval_dataset=config["eval_dataset"], categories=config["categories"], seed=config["seed"],
                   max_eval_tasks=config["max_eval_tasks"], eval_seed=config["eval_seed"],
                   worked_examples=config["worked_examples"])
        cache[key] = {task.id: task for task in load_eval_tasks(c)}
    return cache[key]


def kind_of(parsed, exact: float) -> str:
    if not parsed.ok:
        return "malformed"
    if not parsed.calls:
        return "no call"
    return "right call" if exact == 1.0 else "wrong call"


def classify(result_path: str, judge: RuleJudge, cache: dict) -> dict[str, list]:
    """kind -> [(has reasoning, the judge's score or None)] over the run's final held-out completions."""
    result = json.loads(Path(result_path).read_text())
    tasks = held_out_tasks(result["config"], cache)
    kinds = collections.defaultdict(list)
    for scored in result["eval_after"]["tasks"]:
        if scored["category"] == "irrelevance":
            continue
        task = tasks[scored["id"]]
        for text in scored["completions"]:
            parsed = parse_completion(text)
            has = bool(parsed.reasoning and parsed.reasoning.strip())
            request = JudgeRequest(_request_text(task), parsed.reasoning, parsed.calls, task.tools,
                                   malformed=not parsed.ok)
            kinds[kind_of(parsed, scored["exact"])].append((has, judge.score_request(request) if has else None))
    return kinds


def table(rows: list[tuple[str, dict]]) -> list[str]:
    header = " | ".join(f"{kind}: share, with `<think>`, judge mean" for kind in KINDS)
    lines = [f"| arm | seeds | completions | {header} |",
             "|---|---|---|" + "---|" * len(KINDS)]
    for label, (seeds, kinds) in rows:
        total = sum(len(v) for v in kinds.values())
        cells = []
        for kind in KINDS:
            items = kinds.get(kind, [])
            scores = [s for has, s in items if has]
            mean = f"{statistics.mean(scores):.2f}" if scores else "-"
            cells.append(f"{len(items) / total:.1%}, {len(scores) / max(len(items), 1):.0%}, {mean}")
        lines.append(f"| {label} | {seeds} | {total} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    judge, cache, rows, per_seed = RuleJudge(), {}, [], []
    for arm, label in ARMS.items():
        paths = sorted(glob.glob(str(ROOT / arm / "seed-*" / "result.json")),
                       key=lambda p: int(Path(p).parent.name.split("-")[1]))
        pooled = collections.defaultdict(list)
        for path in paths:
            kinds = classify(path, judge, cache)
            for kind, items in kinds.items():
                pooled[kind].extend(items)
            total = sum(len(v) for v in kinds.values())
            malformed = len(kinds.get("malformed", [])) / total
            per_seed.append(f"{label} {Path(path).parent.name}: malformed {malformed:.1%}")
        seeds = ",".join(Path(p).parent.name.split("-")[1] for p in paths)
        rows.append((label, (seeds, pooled)))
    code = subprocess.run(["git", "-C", str(Path(judge_module_file()).parent), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "unknown"
    out = ["# What the round's rule judge gave each kind of held-out completion (exploratory)", "",
           f"- command: `PYTHONPATH=<the round's worktree> python results/evidence-2/diagnostics/judge_by_kind.py`; "
           f"judge code at {code} ({judge_module_file()})",
           "- completions: each finished run's greedy held-out completions after training, tasks where a tool "
           "fits (simple, multiple; irrelevance left out)", "",
           *table(rows), "", "Malformed share per run:", "", *[f"- {line}" for line in per_seed], ""]
    (Path(__file__).parent / "judge_by_kind.md").write_text("\n".join(out))
    print("\n".join(out))
    return 0


def judge_module_file() -> str:
    return os.path.relpath(sys.modules[RuleJudge.__module__].__file__)


if __name__ == "__main__":
    raise SystemExit(main())
