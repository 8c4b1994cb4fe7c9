"""The evidence round's report (`python -m awpo.ablation --report --output_dir DIR`): finds the arms'
finished runs under DIR (`DIR/<arm>/seed-<s>/result.json`, as the grid writes them), checks that they
ran one regime on one held-out set, and writes `evidence.json` (every number), `evidence.md` and
`evidence.png` (held-out accuracy per seed and arm, GRPO and AWPO of one seed joined by a line). The
decision itself is `evidence.py`.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

from . import evidence, grid
from .report import load_run, machine_description

ARM_NAMES = {evidence.GRPO: "GRPO", evidence.AWPO: "AWPO (rule judge)",
             evidence.CONTROL: "control: AWPO (reference judge)"}
# differences between the arms' runs that the design allows (everything else must be equal)
ARM_OPTIONS = ("seed", "estimator", "judge")


def arm_directory(output_dir: Path, arm: str) -> Path:
    return Path(output_dir) / grid.parse_variant(arm).dirname


def load_arms(output_dir: Path) -> tuple[dict[str, dict[int, dict]], dict | None]:
    """The finished runs of every arm `{arm: {seed: load_run(...)}}` and the base evaluation (or None).
    ValueError when a run ran another arm's settings, another regime or other held-out tasks."""
    output_dir = Path(output_dir)
    arms: dict[str, dict[int, dict]] = {}
    for arm in evidence.ARMS:
        directory = arm_directory(output_dir, arm)
        seeds = sorted(int(m.group(1)) for p in directory.glob("seed-*")
                       if (m := re.fullmatch(r"seed-(\d+)", p.name)) and (p / grid.RESULT_FILE).is_file())
        if seeds:
            arms[arm] = {seed: load_run(directory / f"seed-{seed}") for seed in seeds}
    if not arms:
        raise ValueError(f"{output_dir}: no finished run of {', '.join(evidence.ARMS)} "
                         f"(expected {output_dir}/<arm>/seed-<s>/result.json)")
    base_dir = output_dir / grid.BASE
    base = load_run(base_dir) if (base_dir / grid.RESULT_FILE).is_file() else None
    check_design(arms)
    return arms, base


def check_design(arms: dict[str, dict[int, dict]]) -> None:
    """Every run ran its arm's estimator and judge, all runs the same options otherwise, on the same
    held-out tasks: a comparison of anything else is not the pre-registered one."""
    reference, reference_name, task_ids = None, "", None
    for arm, by_seed in arms.items():
        estimator, judge = evidence.ARM_SETTINGS[arm]
        for seed, loaded in by_seed.items():
            name = f"{arm}/seed-{seed}"
            config = loaded["result"].get("config", {})
            if config.get("estimator") != estimator or (judge is not None and config.get("judge") != judge):
                raise ValueError(f"{name} ran estimator {config.get('estimator')!r} with judge "
                                 f"{config.get('judge')!r}; the arm {arm!r} is estimator {estimator!r}"
                                 + (f" with judge {judge!r}" if judge else ""))
            if config.get("seed") != seed:
                raise ValueError(f"{name} ran seed {config.get('seed')!r}")
            regime = {k: v for k, v in grid.identity(config).items() if k not in ARM_OPTIONS}
            if reference is None:
                reference, reference_name = regime, name
            elif regime != reference:
                differences = sorted(k for k in set(regime) | set(reference) if regime.get(k) != reference.get(k))
                raise ValueError(f"{name} and {reference_name} ran different options ({', '.join(differences[:6])}): "
                                 "the arms must differ only in estimator, judge and seed")
            after = loaded["result"].get("eval_after") or {}
            ids = sorted(t["id"] for t in after.get("tasks", []))
            if task_ids is None:
                task_ids = ids
            elif ids != task_ids:
                raise ValueError(f"{name} was evaluated on other held-out tasks than {reference_name}")


def metadata(arms: dict[str, dict[int, dict]], command: str) -> dict:
    first = next(iter(next(iter(arms.values())).values()))["result"]
    config = first["config"]
    threads = sorted({r["result"].get("cpu_threads") for by_seed in arms.values() for r in by_seed.values()} - {None})
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine_description(),
            "threads": ",".join(map(str, threads)) or "?", "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "command": command,
            "regime": f"{config.get('max_steps')} steps x {config.get('prompts_per_step')} prompts x "
                      f"{config.get('num_generations')} completions, max {config.get('max_completion_length')} "
                      f"tokens, model {config.get('model') or 'SmolLM2-135M-Instruct'}, categories "
                      f"{config.get('categories') or 'all single-turn'}, graded outcome "
                      f"{config.get('graded_outcome')}, worked examples {config.get('worked_examples')}",
            "held_out": f"{first['eval_after']['num_tasks']} tasks, eval seed {config.get('eval_seed')}, greedy"}


# ----------------------------------------------------------------------------------------------
# markdown
# ----------------------------------------------------------------------------------------------

def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _pts(value) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:+.2f}"


def _decision_lines(decision: dict) -> list[str]:
    lines = [f"**Decision: {decision['decision']}** ({decision['pairs']} pair(s) of GRPO and AWPO so far"
             + (f", seeds {_seed_list(decision['seeds'])}" if decision["seeds"] else "") + ").", ""]
    look = decision["futility_look"]
    if look is None:
        lines.append(f"- Futility look: not yet (it reads the first {decision['futility_pairs']} pairs by seed order).")
    else:
        lines.append(f"- Futility look, first {decision['futility_pairs']} pairs (seeds {_seed_list(look['seeds'])}): "
                     f"mean AWPO - GRPO {_pts(look['mean'])} points (SD {100 * look['sd']:.2f}): "
                     + ("<= 0, **the grid stops**; no efficacy test." if look["stop"] else "> 0, the grid goes on.")
                     + " The look tests nothing.")
    test = decision["test"]
    if test is None:
        why = ("the grid stopped for futility" if look and look["stop"]
               else f"efficacy is tested only at {decision['efficacy_pairs']} pairs")
        lines.append(f"- Test: not run ({why}).")
    else:
        lines.append(f"- Test, one-sided paired t over the first {decision['efficacy_pairs']} pairs (seeds "
                     f"{_seed_list(test['seeds'])}), H1: mean AWPO - GRPO > 0, alpha {decision['alpha']}: "
                     f"mean {_pts(test['mean'])} points, SD {100 * test['sd']:.2f}, t = {test['t']:.3f}, "
                     f"df = {test['df']}, one-sided p = {test['p_value']:.4f}, one-sided "
                     f"{100 * test['confidence']:.0f}% lower bound {_pts(test['lower_bound'])} points.")
    return lines


def _seed_list(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def markdown(summary: dict, meta: dict) -> str:
    arms = summary["arms"]
    lines = ["# Evidence round 2: does AWPO beat GRPO? (pre-registered in docs/EVIDENCE.md)", "",
             f"- date: {meta.get('date', '?')}; machine: {meta.get('machine', '?')}; threads per run: "
             f"{meta.get('threads', '?')}; load average now: {meta.get('load', '?')}",
             f"- command: `{meta.get('command', '?')}`",
             f"- regime: {meta.get('regime', '?')}",
             f"- held-out: {meta.get('held_out', '?')}; accuracy in %, differences in points", ""]
    lines += _decision_lines(summary["decision"])
    control = summary["control"]
    lines += ["", "## Positive control (no test)", ""]
    if control is None:
        lines.append("No finished control run paired with a GRPO run yet.")
    else:
        interval = ("[n/a with one seed]" if math.isnan(control["low"])
                    else f"[{_pts(control['low'])}, {_pts(control['high'])}]")
        lines.append(f"AWPO with the reference judge - GRPO, paired over {control['n']} seed(s) "
                     f"({_seed_list(control['seeds'])}): mean {_pts(control['mean'])} points, two-sided 95% "
                     f"t-interval {interval}. The reference judge reads the answer: a control, not a judge.")
    lines += ["", "## Per seed (held-out exact %)", "",
              "| seed | GRPO | AWPO | AWPO - GRPO | control | control - GRPO |", "|---|---|---|---|---|---|"]
    seeds = sorted({s for entry in arms.values() for s in entry["seeds"]})
    for seed in seeds:
        value = {arm: arms[arm]["runs"][seed]["exact"] if seed in arms.get(arm, {}).get("runs", {}) else None
                 for arm in evidence.ARMS}
        grpo = value[evidence.GRPO]
        cells = [str(seed), _pct(grpo)]
        for arm in (evidence.AWPO, evidence.CONTROL):
            cells += [_pct(value[arm]), "-" if value[arm] is None or grpo is None else _pts(value[arm] - grpo)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Secondary metrics (reported, not tested)", "",
              "| arm | runs | exact (mean over its seeds) | graded | graded - GRPO (paired) | well-formed "
              "| completions with `<think>` (all steps) | runs that stopped writing `<think>` (seed: from step) |",
              "|---|---|---|---|---|---|---|---|"]
    base = summary.get("base")
    if base:
        lines.append(f"| base model | - | {_pct(base['exact'])} | {_pct(base['graded'])} | | "
                     f"{_pct(base['well_formed'])} | | |")
    for arm, entry in arms.items():
        stopped = ", ".join(f"{s}: {step}" for s, step in entry["stopped_thinking"].items()) or "none"
        graded_diff = entry.get("minus_grpo", {}).get("graded")
        lines.append(f"| {ARM_NAMES[arm]} | {len(entry['seeds'])} | {_pct(entry['exact'])} | {_pct(entry['graded'])} | "
                     f"{_pts(graded_diff) if graded_diff is not None else '-'} | {_pct(entry['well_formed'])} | "
                     f"{_pct(entry['think'])} | {stopped} |")
    steps = sorted({step for entry in arms.values() for step in entry["think_per_step"]})
    if steps:
        lines += ["", "Completions with `<think>` per training step (%, mean over the arm's seeds):", "",
                  "| arm | " + " | ".join(str(s) for s in steps) + " |",
                  "|" + "|".join(["---"] * (len(steps) + 1)) + "|"]
        for arm, entry in arms.items():
            lines.append(f"| {ARM_NAMES[arm]} | "
                         + " | ".join(_pct(entry["think_per_step"].get(s)) for s in steps) + " |")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# plot
# ----------------------------------------------------------------------------------------------

def plot(summary: dict, png_path: Path) -> Path | None:
    """Held-out exact accuracy per seed, one column per arm; GRPO and AWPO of one seed joined by a line
    (the control's seeds by a dashed one), the arm means as bars and the base model as a line."""
    # GRPO in the middle: the lines to AWPO go right, those to the control left, and never cross a column
    arms = [arm for arm in (evidence.CONTROL, evidence.GRPO, evidence.AWPO) if arm in summary["arms"]]
    if not arms:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = {arm: i for i, arm in enumerate(arms)}
    runs = {arm: summary["arms"][arm]["runs"] for arm in arms}
    figure, axis = plt.subplots(figsize=(2.2 + 1.8 * len(arms), 4.2))
    if evidence.GRPO in runs:
        for other, style in ((evidence.AWPO, "-"), (evidence.CONTROL, "--")):
            for seed in sorted(set(runs[evidence.GRPO]) & set(runs.get(other, {}))):
                a, b = runs[evidence.GRPO][seed]["exact"], runs[other][seed]["exact"]
                axis.plot([x[evidence.GRPO], x[other]], [100 * a, 100 * b], style, linewidth=0.9, alpha=0.55,
                          color="tab:green" if b > a else ("tab:red" if b < a else "tab:gray"))
    for arm in arms:
        values = [100 * r["exact"] for r in runs[arm].values()]
        axis.scatter([x[arm]] * len(values), values, s=18, zorder=3, color="black")
        axis.hlines(100 * summary["arms"][arm]["exact"], x[arm] - 0.18, x[arm] + 0.18, color="tab:blue",
                    linewidth=2.2, zorder=4)
    if summary.get("base"):
        axis.axhline(100 * summary["base"]["exact"], color="tab:gray", linestyle=":", linewidth=1,
                     label="base model")
        axis.legend(fontsize=7, loc="best")
    axis.set_xticks(range(len(arms)), [ARM_NAMES[a].replace(": ", ":\n") for a in arms], fontsize=8)
    axis.set_xlim(-0.5, len(arms) - 0.5)
    axis.set_ylabel("held-out exact accuracy (%)", fontsize=8)
    axis.set_title(f"per seed (dots), arm mean (bar); lines join one seed\n{summary['decision']['decision']}",
                   fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    png_path = Path(png_path)
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return png_path


def write_evidence(output_dir: Path, command: str = "") -> dict[str, Path]:
    """`evidence.json`, `evidence.md` and `evidence.png` in `output_dir` from its finished runs."""
    output_dir = Path(output_dir)
    arms, base = load_arms(output_dir)
    summary = evidence.summarise(arms, base)
    meta = metadata(arms, command)
    paths = {"json": output_dir / "evidence.json", "md": output_dir / "evidence.md"}
    paths["json"].write_text(json.dumps({"meta": meta, **summary}, indent=1))
    paths["md"].write_text(markdown(summary, meta))
    png = plot(summary, output_dir / "evidence.png")
    if png:
        paths["png"] = png
    return paths
