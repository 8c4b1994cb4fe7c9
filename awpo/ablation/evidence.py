"""The pre-registered decision of the second evidence round (docs/EVIDENCE.md, "The plan"), from the
per-seed held-out exact accuracies of the finished runs.

- The only test: the one-sided paired t-test over seeds of AWPO - GRPO (H1: mean > 0, alpha 0.05),
  with its one-sided 95% lower confidence bound, on the first `EFFICACY_PAIRS` pairs by seed order,
  and only once that many pairs exist.
- The futility look: on the first `FUTILITY_PAIRS` pairs by seed order, the grid stops when their mean
  difference is <= 0. The look tests nothing; a stop is final (pairs run after it change nothing).
- The positive control (AWPO with the reference judge): its difference to GRPO, paired by seed, with
  a two-sided 95% t-interval and no test.
- Secondary metrics, reported without tests: graded accuracy, well-formed output, the share of
  completions with `<think>` (per step and per run) and the step from which a run wrote none.

A pair is a seed with both arms finished. `summarise` takes already-loaded runs
(`report.load_run`); `evidence_report.py` finds them on disk and writes the report.
"""
from __future__ import annotations

import math

import numpy as np

from .stats import one_sided_t_test, t_interval

GRPO, AWPO, CONTROL = "grpo", "awpo", "awpo:judge=reference"
ARMS = (GRPO, AWPO, CONTROL)
# what each arm's runs must have run with (estimator, judge; GRPO builds no judge)
ARM_SETTINGS = {GRPO: ("grpo", None), AWPO: ("awpo", "rule"), CONTROL: ("awpo", "reference")}
FUTILITY_PAIRS = 8
EFFICACY_PAIRS = 16
ALPHA = 0.05
CONFIDENCE = 0.95
THINK_KEY = "completion/with_reasoning_fraction"

# decisions
PENDING = "waiting for the futility look"
FUTILE = "stopped for futility"
CONTINUE = "passed the futility look: continue to the test"
SHOWN = "AWPO > GRPO (the pre-registered test rejects H0)"
NOT_SHOWN = "not shown: the pre-registered test does not reject H0"


def pairs(grpo: dict[int, float], awpo: dict[int, float]) -> list[tuple[int, float]]:
    """(seed, AWPO - GRPO) for every seed with both arms, in seed order."""
    return [(seed, awpo[seed] - grpo[seed]) for seed in sorted(set(grpo) & set(awpo))]


def decide(grpo: dict[int, float], awpo: dict[int, float], *, futility_pairs: int = FUTILITY_PAIRS,
           efficacy_pairs: int = EFFICACY_PAIRS, alpha: float = ALPHA) -> dict:
    """The pre-registered decision from per-seed accuracies `{seed: accuracy}` of the two arms."""
    if not 1 < futility_pairs < efficacy_pairs:
        raise ValueError(f"need 1 < futility_pairs < efficacy_pairs, got {futility_pairs}, {efficacy_pairs}")
    paired = pairs(grpo, awpo)
    result = {"pairs": len(paired), "seeds": [s for s, _ in paired], "differences": [d for _, d in paired],
              "futility_pairs": futility_pairs, "efficacy_pairs": efficacy_pairs, "alpha": alpha,
              "futility_look": None, "test": None}
    if len(paired) < futility_pairs:
        result["decision"] = PENDING
        return result
    look = [d for _, d in paired[:futility_pairs]]
    futile = float(np.mean(look)) <= 0
    result["futility_look"] = {"seeds": [s for s, _ in paired[:futility_pairs]], "mean": float(np.mean(look)),
                               "sd": float(np.std(look, ddof=1)), "stop": futile}
    if futile:
        result["decision"] = FUTILE
    elif len(paired) < efficacy_pairs:
        result["decision"] = CONTINUE
    else:
        test = one_sided_t_test([d for _, d in paired[:efficacy_pairs]], confidence=1 - alpha)
        result["test"] = {"seeds": [s for s, _ in paired[:efficacy_pairs]], **test.to_dict()}
        result["decision"] = SHOWN if test.p_value < alpha else NOT_SHOWN
    return result


def control_difference(grpo: dict[int, float], control: dict[int, float]) -> dict | None:
    """The control's difference to GRPO paired by seed: mean with a two-sided 95% t-interval; no test."""
    paired = pairs(grpo, control)
    if not paired:
        return None
    return {"seeds": [s for s, _ in paired], "differences": [d for _, d in paired],
            **t_interval([d for _, d in paired], CONFIDENCE).to_dict()}


def think_mode(steps: list[dict]) -> dict:
    """A run's `<think>` writing from its metrics: the share of completions with reasoning per step,
    its mean over the run and over the last 5 steps, and `stopped_at`, the first step from which no
    completion had reasoning up to the run's last step (None: it still wrote some at the end)."""
    per_step = [(int(s["step"]), float(s[THINK_KEY])) for s in steps if s.get(THINK_KEY) is not None]
    if not per_step:
        return {"per_step": {}, "mean": math.nan, "last5": math.nan, "stopped_at": None}
    stopped_at = None
    for step, share in reversed(per_step):
        if share > 0:
            break
        stopped_at = step
    shares = [share for _, share in per_step]
    return {"per_step": {step: share for step, share in per_step}, "mean": float(np.mean(shares)),
            "last5": float(np.mean(shares[-5:])), "stopped_at": stopped_at}


def run_summary(loaded: dict) -> dict:
    """One finished run's numbers: held-out exact and graded accuracy, well-formed share, think mode."""
    after = loaded["result"]["eval_after"]
    if not after:
        raise ValueError("a run without a held-out evaluation after training (eval_dataset 'none'?)")
    return {"exact": float(after["accuracy"]), "graded": float(after["graded"]),
            "well_formed": float(after["format_ok"]), "think": think_mode(loaded["steps"])}


def _mean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def summarise(runs_by_arm: dict[str, dict[int, dict]], base: dict | None = None) -> dict:
    """Every number of the evidence report. `runs_by_arm[arm][seed]` = `report.load_run(...)`, arms
    among `ARMS`; `base` the base model's evaluation run, if any."""
    unknown = sorted(set(runs_by_arm) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; the round's arms are {list(ARMS)}")
    runs = {arm: {seed: run_summary(loaded) for seed, loaded in sorted(by_seed.items())}
            for arm, by_seed in runs_by_arm.items()}
    exact = {arm: {seed: r["exact"] for seed, r in by_seed.items()} for arm, by_seed in runs.items()}
    summary = {"decision": decide(exact.get(GRPO, {}), exact.get(AWPO, {})),
               "control": control_difference(exact.get(GRPO, {}), exact.get(CONTROL, {})),
               "arms": {}}
    if base is not None and base["result"].get("eval_before"):
        before = base["result"]["eval_before"]
        summary["base"] = {"exact": before["accuracy"], "graded": before["graded"], "well_formed": before["format_ok"]}
    for arm in ARMS:
        by_seed = runs.get(arm)
        if not by_seed:
            continue
        steps = sorted({step for r in by_seed.values() for step in r["think"]["per_step"]})
        summary["arms"][arm] = {
            "seeds": list(by_seed),
            "runs": by_seed,
            "exact": _mean(r["exact"] for r in by_seed.values()),
            "graded": _mean(r["graded"] for r in by_seed.values()),
            "well_formed": _mean(r["well_formed"] for r in by_seed.values()),
            "think": _mean(r["think"]["mean"] for r in by_seed.values()),
            "think_per_step": {step: _mean(r["think"]["per_step"].get(step) for r in by_seed.values())
                               for step in steps},
            "stopped_thinking": {seed: r["think"]["stopped_at"] for seed, r in by_seed.items()
                                 if r["think"]["stopped_at"] is not None}}
        if arm != GRPO and runs.get(GRPO):
            shared = [seed for seed in by_seed if seed in runs[GRPO]]
            summary["arms"][arm]["minus_grpo"] = {
                key: _mean(by_seed[s][key] - runs[GRPO][s][key] for s in shared)
                for key in ("exact", "graded", "well_formed")} | {"seeds": shared}
    return summary
