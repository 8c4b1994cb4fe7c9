"""The pre-registered evidence round (docs/EVIDENCE.md): the one-sided paired t-test against values
computed here by other means, the futility look, no efficacy test before 16 pairs, the control, the
secondary metrics and `python -m awpo.ablation --report` on synthetic finished runs written in the
trainer's format; and phase 0's statistics (ranks, Spearman, the all-fail share) on fixed records."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from awpo.ablation import evidence, grid
from awpo.ablation.__main__ import main
from awpo.ablation.evidence_report import load_arms, write_evidence
from awpo.ablation.signal import analyse, phase0_config, within_group_correlation
from awpo.ablation.stats import one_sided_t_test, pearson, ranks, spearman, t_quantile, t_upper_tail
from awpo.config import Config

# ----------------------------------------------------------------------------------------------
# the one-sided t-test
# ----------------------------------------------------------------------------------------------


def upper_tail_odd_df(t: float, df: int) -> float:
    """P(T >= t) in closed form for odd df (Student's series in cos(theta), theta = atan(t / sqrt(df)))."""
    theta = math.atan(t / math.sqrt(df))
    series, term = 0.0, math.cos(theta)
    for k in range(1, (df - 1) // 2 + 1):
        series += term
        term *= math.cos(theta) ** 2 * (2 * k) / (2 * k + 1)
    inside = 2 / math.pi * (theta + math.sin(theta) * series)   # P(|T| <= t)
    return (1 - inside) / 2


@pytest.mark.parametrize("t, df", [(2.0, 7), (0.7, 1), (1.3, 3), (2.9, 15), (-1.1, 5), (4.5, 9)])
def test_upper_tail_matches_the_closed_form(t, df):
    assert t_upper_tail(t, df) == pytest.approx(upper_tail_odd_df(t, df), abs=1e-10)


def test_upper_tail_known_values():
    # t = 2.0, df = 7: 0.042810 (regularised incomplete beta I_{7/11}(3.5, 0.5) / 2 = 0.0428096643)
    assert t_upper_tail(2.0, 7) == pytest.approx(0.0428097, abs=1e-6)
    assert round(t_upper_tail(2.0, 7), 4) == 0.0428
    assert t_upper_tail(0.0, 4) == pytest.approx(0.5)
    assert t_upper_tail(t_quantile(0.95, 15), 15) == pytest.approx(0.05, abs=1e-9)
    assert t_upper_tail(1e12, 1) == pytest.approx(0.0, abs=1e-11) and t_upper_tail(-math.inf, 3) == 1.0


def test_one_sided_t_test_by_hand():
    differences = np.array([0.012, -0.004, 0.020, 0.008, -0.010, 0.015, 0.006, 0.011])
    test = one_sided_t_test(differences)
    n = differences.size
    mean = differences.sum() / n
    sd = math.sqrt(((differences - mean) ** 2).sum() / (n - 1))
    t = mean / (sd / math.sqrt(n))
    assert (test.n, test.df) == (8, 7)
    assert test.mean == pytest.approx(mean) and test.sd == pytest.approx(sd) and test.t == pytest.approx(t)
    assert test.p_value == pytest.approx(upper_tail_odd_df(t, 7), abs=1e-10)
    assert test.lower_bound == pytest.approx(mean - 1.894579 * sd / math.sqrt(n), abs=1e-7)  # t_0.95,7 from tables
    assert test.confidence == 0.95
    with pytest.raises(ValueError, match="at least 2"):
        one_sided_t_test([0.01])


# ----------------------------------------------------------------------------------------------
# the decision on per-seed accuracies
# ----------------------------------------------------------------------------------------------

DIFFERENCES = [0.012, -0.004, 0.020, 0.008, -0.010, 0.015, 0.006, 0.011,
               0.003, 0.018, -0.006, 0.009, 0.014, 0.001, 0.007, 0.010]
GRPO_ACCURACY = [0.15 + 0.0071 * s for s in range(17)]


def accuracies(differences, seeds=None):
    seeds = list(range(len(differences))) if seeds is None else seeds
    grpo = {s: GRPO_ACCURACY[i] for i, s in enumerate(seeds)}
    awpo = {s: GRPO_ACCURACY[i] + d for i, (s, d) in enumerate(zip(seeds, differences))}
    return grpo, awpo


def test_before_8_pairs_there_is_neither_look_nor_test():
    decision = evidence.decide(*accuracies(DIFFERENCES[:7]))
    assert decision["decision"] == evidence.PENDING and decision["pairs"] == 7
    assert decision["futility_look"] is None and decision["test"] is None


def test_futility_at_8_pairs_with_a_mean_at_or_below_zero():
    negative = [-0.012, 0.004, -0.020, -0.008, 0.010, -0.015, -0.006, 0.011]
    decision = evidence.decide(*accuracies(negative))
    assert decision["decision"] == evidence.FUTILE == "stopped for futility"
    assert decision["futility_look"]["mean"] == pytest.approx(np.mean(negative)) and decision["futility_look"]["stop"]
    assert decision["test"] is None
    # the stop is final: pairs run after it test nothing, however good they look
    later = negative + [0.05] * 8
    decision = evidence.decide(*accuracies(later))
    assert decision["decision"] == evidence.FUTILE and decision["test"] is None and decision["pairs"] == 16
    # a mean of exactly 0 stops too (<= 0)
    zero_mean = [0.01, -0.01, 0.02, -0.02, 0.005, -0.005, 0.03, -0.03]
    assert evidence.decide(*accuracies(zero_mean))["decision"] == evidence.FUTILE


def test_efficacy_is_not_tested_before_16_pairs():
    for n in (8, 12, 15):
        decision = evidence.decide(*accuracies(DIFFERENCES[:n]))
        assert decision["decision"] == evidence.CONTINUE and decision["test"] is None
        assert not decision["futility_look"]["stop"]


def test_the_test_at_16_pairs_reads_the_first_16_by_seed_order():
    seeds = [3, 0, 1, 2, 7, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16]   # out of order, one seed too many
    diffs = [DIFFERENCES[s] if s < 16 else -1.0 for s in seeds]
    grpo, awpo = accuracies(diffs, seeds)
    decision = evidence.decide(grpo, awpo)
    assert decision["seeds"] == list(range(17)) and decision["futility_look"]["seeds"] == list(range(8))
    test = decision["test"]
    assert test["seeds"] == list(range(16))
    d = np.array([awpo[s] - grpo[s] for s in range(16)])
    mean, sd = d.mean(), d.std(ddof=1)
    t = mean / (sd / 4)
    assert test["mean"] == pytest.approx(mean) and test["sd"] == pytest.approx(sd) and test["t"] == pytest.approx(t)
    assert test["df"] == 15 and test["p_value"] == pytest.approx(upper_tail_odd_df(t, 15), abs=1e-10)
    assert test["lower_bound"] == pytest.approx(mean - 1.753050 * sd / 4, abs=1e-7)   # t_0.95,15 from tables
    assert test["p_value"] < 0.05 and decision["decision"] == evidence.SHOWN

    weak = [0.012, -0.004, 0.020, 0.008, -0.010, 0.015, 0.006, 0.011] + [-0.009, -0.012, 0.001, -0.011,
                                                                         -0.008, -0.004, -0.010, -0.007]
    decision = evidence.decide(*accuracies(weak))
    assert decision["test"]["p_value"] > 0.05 and decision["decision"] == evidence.NOT_SHOWN


def test_control_difference_is_a_two_sided_interval_without_a_test():
    grpo, _ = accuracies(DIFFERENCES)
    shift = [0.03, 0.01, 0.045, 0.02, -0.005, 0.025, 0.04, 0.015]
    control = {s: grpo[s] + shift[s] for s in range(8)}
    result = evidence.control_difference(grpo, control)
    d = np.array([control[s] - grpo[s] for s in range(8)])
    half = 2.364624 * d.std(ddof=1) / math.sqrt(8)   # t_0.975,7 from tables
    assert result["seeds"] == list(range(8)) and result["n"] == 8
    assert (result["mean"], result["low"], result["high"]) == pytest.approx((d.mean(), d.mean() - half,
                                                                            d.mean() + half), abs=1e-7)
    assert "p_value" not in result and evidence.control_difference(grpo, {}) is None


def test_think_mode_finds_the_step_from_which_a_run_wrote_no_think():
    steps = [{"step": i + 1, evidence.THINK_KEY: f} for i, f in enumerate([0.5, 0.25, 0.0, 0.125, 0.0, 0.0])]
    mode = evidence.think_mode(steps)
    assert mode["stopped_at"] == 5 and mode["mean"] == pytest.approx(0.875 / 6)
    assert mode["last5"] == pytest.approx(0.375 / 5)
    assert evidence.think_mode(steps[:4])["stopped_at"] is None
    assert evidence.think_mode([])["stopped_at"] is None


# ----------------------------------------------------------------------------------------------
# the report from runs on disk
# ----------------------------------------------------------------------------------------------

TASKS = 4


def write_run(directory: Path, *, estimator: str, judge: str, seed: int, exact: float, graded: float = 0.4,
              format_ok: float = 0.9, think=(0.5, 0.25, 0.125), **changes) -> None:
    """A finished run as the trainer leaves it: result.json and metrics.jsonl."""
    directory.mkdir(parents=True)
    config = Config().to_dict() | {"estimator": estimator, "judge": judge, "seed": seed, "output_dir": str(directory),
                                   "eval_seed": 0, "max_eval_tasks": TASKS, "graded_outcome": False,
                                   "categories": "simple,multiple,irrelevance", "eval_before": False} | changes
    tasks = [{"id": f"builtin-heldout-{i:05d}-simple", "category": "simple", "exact": float(i < exact * TASKS),
              "graded": graded} for i in range(TASKS)]
    after = {"accuracy": exact, "graded": graded, "num_tasks": TASKS, "samples_per_task": 1,
             "by_category": {"simple": exact}, "format_ok": format_ok, "time_s": 1.5, "tasks": tasks}
    result = {"config": config, "steps": len(think), "eval_before": None, "eval_after": after,
              "final_model": str(directory / "final"), "bfcl_before": None, "bfcl_after": None, "cpu_threads": 1}
    (directory / "result.json").write_text(json.dumps(result, indent=1))
    lines = [{"step": i + 1, "loss": 0.01 * (i + 1), "accuracy": 0.1, evidence.THINK_KEY: share}
             for i, share in enumerate(think)]
    lines.append({"step": len(think), "eval/accuracy_after": exact})
    (directory / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def write_grid(root: Path, differences, *, control_seeds=range(8)) -> None:
    for seed, diff in enumerate(differences):
        write_run(root / "grpo" / f"seed-{seed}", estimator="grpo", judge="rule", seed=seed,
                  exact=GRPO_ACCURACY[seed], graded=0.40 + 0.01 * seed)
        write_run(root / "awpo" / f"seed-{seed}", estimator="awpo", judge="rule", seed=seed,
                  exact=GRPO_ACCURACY[seed] + diff, graded=0.42 + 0.01 * seed,
                  think=(0.5, 0.0, 0.0) if seed == 2 else (0.5, 0.25, 0.125))
    for seed in control_seeds:
        write_run(root / grid.parse_variant(evidence.CONTROL).dirname / f"seed-{seed}", estimator="awpo",
                  judge="reference", seed=seed, exact=GRPO_ACCURACY[seed] + 0.02, graded=0.5)


def test_report_on_runs_on_disk(tmp_path, capsys):
    write_grid(tmp_path, DIFFERENCES)
    write_run(tmp_path / "base", estimator="awpo", judge="rule", seed=0, exact=0.1)   # only its eval_before is read
    base = json.loads((tmp_path / "base" / "result.json").read_text())
    base["eval_before"] = base["eval_after"]
    (tmp_path / "base" / "result.json").write_text(json.dumps(base))

    assert main(["--report", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "evidence.json").read_text())
    decision = report["decision"]
    d = np.array([GRPO_ACCURACY[s] + DIFFERENCES[s] - GRPO_ACCURACY[s] for s in range(16)])
    assert decision["decision"] == evidence.SHOWN and decision["test"]["mean"] == pytest.approx(d.mean())
    assert decision["test"]["t"] == pytest.approx(d.mean() / (d.std(ddof=1) / 4))
    assert report["control"]["n"] == 8 and report["control"]["mean"] == pytest.approx(0.02)
    awpo = report["arms"]["awpo"]
    assert awpo["graded"] == pytest.approx(0.42 + 0.075) and awpo["minus_grpo"]["graded"] == pytest.approx(0.02)
    assert awpo["well_formed"] == pytest.approx(0.9) and awpo["stopped_thinking"] == {"2": 2}
    assert report["arms"]["grpo"]["think_per_step"]["3"] == pytest.approx(0.125)
    assert report["base"]["exact"] == pytest.approx(0.1)
    text = (tmp_path / "evidence.md").read_text()
    assert text.strip() in out and "evidence.png" in out
    assert "**Decision: AWPO > GRPO" in text and "one-sided p = " in text and "df = 15" in text
    assert "| 2 | " in text and "2: 2" in text and "two-sided 95% t-interval" in text
    assert (tmp_path / "evidence.png").stat().st_size > 0


def test_report_after_a_futile_look(tmp_path):
    write_grid(tmp_path, [-0.012, 0.004, -0.020, -0.008, 0.010, -0.015, -0.006, 0.011])
    write_evidence(tmp_path)
    text = (tmp_path / "evidence.md").read_text()
    assert "**Decision: stopped for futility**" in text and "the grid stops" in text
    assert "Test: not run (the grid stopped for futility)" in text and "one-sided p" not in text


def test_report_before_16_pairs_runs_no_test(tmp_path):
    write_grid(tmp_path, DIFFERENCES[:10])
    write_evidence(tmp_path)
    report = json.loads((tmp_path / "evidence.json").read_text())
    assert report["decision"]["decision"] == evidence.CONTINUE and report["decision"]["test"] is None
    assert "efficacy is tested only at 16 pairs" in (tmp_path / "evidence.md").read_text()


def test_report_refuses_runs_that_are_not_the_design(tmp_path, capsys):
    write_grid(tmp_path, DIFFERENCES[:3], control_seeds=())
    write_run(tmp_path / "awpo" / "seed-3", estimator="awpo", judge="rule", seed=3, exact=0.2, max_steps=40)
    write_run(tmp_path / "grpo" / "seed-3", estimator="grpo", judge="rule", seed=3, exact=0.2)
    with pytest.raises(ValueError, match="different options.*max_steps"):
        load_arms(tmp_path)
    assert main(["--report", "--output_dir", str(tmp_path)]) == 2
    assert "max_steps" in capsys.readouterr().err

    other = tmp_path / "wrong-judge"
    write_run(other / "awpo" / "seed-0", estimator="awpo", judge="reference", seed=0, exact=0.2)
    with pytest.raises(ValueError, match="awpo/seed-0 ran estimator 'awpo' with judge 'reference'"):
        load_arms(other)
    with pytest.raises(ValueError, match="no finished run"):
        load_arms(tmp_path / "empty")


# ----------------------------------------------------------------------------------------------
# phase 0's statistics
# ----------------------------------------------------------------------------------------------

def test_ranks_share_ties_and_spearman_matches_the_formula():
    assert ranks([0.5, 0.2, 0.5, 0.9, 0.2]).tolist() == [3.5, 1.5, 3.5, 5.0, 1.5]
    x, y = [0.1, 0.7, 0.3, 0.9, 0.5, 0.2], [2.0, 5.0, 1.0, 6.0, 3.0, 4.0]   # no ties
    rank_x, rank_y = np.array([1, 5, 3, 6, 4, 2]), np.array([2, 5, 1, 6, 3, 4])
    n = 6
    assert spearman(x, y) == pytest.approx(1 - 6 * ((rank_x - rank_y) ** 2).sum() / (n * (n * n - 1)))
    tied_x, tied_y = [0.0, 0.0, 0.4, 1.0], [0.3, 0.1, 0.3, 0.9]
    assert spearman(tied_x, tied_y) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [2.5, 1, 2.5, 4])[0, 1])
    assert math.isnan(spearman([0.2, 0.2, 0.2], [0.1, 0.5, 0.3])) and math.isnan(pearson([1, 1], [0, 1]))


def record(group, exact, graded, rule, reference, think=True, category="simple"):
    return {"group": group, "category": category, "exact": exact, "graded": graded, "rule": rule,
            "reference": reference, "with_think": think}


PHASE0_RECORDS = [
    # group 0: every outcome fails; the rule judge orders the completions as the graded outcome does
    record(0, 0, 0.0, 0.1, 0.5), record(0, 0, 0.5, 0.4, 0.0), record(0, 0, 0.25, 0.3, 0.5, think=False),
    record(0, 0, 0.75, 0.9, 0.25),
    # group 1: every outcome fails; the rule judge orders them backwards, with a tie
    record(1, 0, 0.6, 0.2, 0.3, category="multiple"), record(1, 0, 0.2, 0.8, 0.3, category="multiple"),
    record(1, 0, 0.4, 0.2, 0.7, category="multiple"), record(1, 0, 0.1, 0.6, 0.1, category="multiple"),
    # group 2: one success: not an all-fail group
    record(2, 1, 1.0, 0.9, 1.0), record(2, 0, 0.5, 0.2, 0.5), record(2, 0, 0.2, 0.6, 0.0),
    record(2, 0, 0.3, 0.1, 0.5),
    # group 3: every outcome fails, the graded outcome is constant; the rule judge varies, the reference does not
    record(3, 0, 0.0, 0.3, 0.0, think=False, category="irrelevance"),
    record(3, 0, 0.0, 0.7, 0.0, category="irrelevance"),
    record(3, 0, 0.0, 0.1, 0.0, think=False, category="irrelevance"),
    record(3, 0, 0.0, 0.5, 0.0, category="irrelevance"),
]


def test_phase0_all_fail_share_and_within_group_spearman():
    result = analyse(PHASE0_RECORDS)
    assert result["groups"] == 4 and result["all_fail_groups"] == 3 and result["all_fail_share"] == 0.75
    assert result["all_succeed_groups"] == 0 and result["with_think"] == pytest.approx(13 / 16)
    assert result["by_category"]["simple"] == {"groups": 2, "all_fail": 1, "all_fail_share": 0.5}
    inside = result["in_all_fail_groups"]
    assert inside["with_think"] == pytest.approx(9 / 12)

    # ranks within each all-fail group, written out by hand
    rule_ranks = [1, 3, 2, 4] + [1.5, 4, 1.5, 3] + [2, 4, 1, 3]
    reference_ranks = [3.5, 1, 3.5, 2] + [2.5, 2.5, 4, 1] + [2.5, 2.5, 2.5, 2.5]
    graded_ranks = [1, 3, 2, 4] + [4, 2, 3, 1] + [2.5, 2.5, 2.5, 2.5]
    rule = inside["judges"]["rule"]
    assert rule["pooled"] == pytest.approx(np.corrcoef(rule_ranks, graded_ranks)[0, 1])
    group1 = np.corrcoef([1.5, 4, 1.5, 3], [4, 2, 3, 1])[0, 1]
    assert rule["per_group_mean"] == pytest.approx((1.0 + group1) / 2) and rule["groups_both_vary"] == 2
    assert (rule["groups_judge_varies"], rule["groups_graded_varies"], rule["completions"]) == (3, 2, 12)
    reference = inside["judges"]["reference"]
    assert reference["pooled"] == pytest.approx(np.corrcoef(reference_ranks, graded_ranks)[0, 1])
    assert reference["groups_judge_varies"] == 2 and reference["mean_score"] == pytest.approx((1.25 + 1.4) / 12)
    assert result["in_all_groups"]["rule"]["completions"] == 16
    assert inside["groups_with_think"] == 3
    assert (rule["completions_above_zero"], reference["completions_above_zero"]) == (12, 7)


def test_phase0_report_is_rewritten_from_the_saved_completions(tmp_path, capsys):
    from awpo.ablation.signal import main as signal_main

    (tmp_path / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PHASE0_RECORDS))
    meta = {"date": "2026-12-06", "machine": "test", "threads": 1, "load_start": "1.00", "load_end": "1.00",
            "seconds": 3.0, "command": "python -m awpo.ablation.signal ...", "model": "m", "categories": "simple",
            "seed": 0, "temperature": 0.7, "max_completion_length": 128}
    (tmp_path / "phase0.json").write_text(json.dumps({"meta": meta}))
    assert signal_main(["--output_dir", str(tmp_path), "--analyse_only"]) == 0
    saved = json.loads((tmp_path / "phase0.json").read_text())
    assert saved["meta"] == meta and saved["all_fail_share"] == 0.75
    text = (tmp_path / "phase0.md").read_text()
    assert "all fail: 3/4 = 75.0%" in text and "| rule (all-fail groups) | 3 |" in text and text.strip() in capsys.readouterr().out


def test_phase0_leaves_out_missing_judge_scores():
    group = [record(0, 0, 0.1, 0.2, 0.0), record(0, 0, 0.3, math.nan, 0.0), record(0, 0, 0.5, 0.6, 0.0)]
    result = within_group_correlation([group], "rule")
    assert result["completions"] == 2 and result["pooled"] == pytest.approx(1.0)


def test_phase0_config_is_the_trainers_with_the_binary_outcome():
    config = phase0_config(output_dir="/tmp/x", categories="simple,multiple", seed=3, threads=1, generations=8,
                           train_args=["--temperature", "0.9"])
    assert (config.graded_outcome, config.worked_examples, config.eval_dataset, config.dataset) == (
        False, True, "none", "builtin")
    assert (config.categories, config.seed, config.cpu_threads, config.temperature) == ("simple,multiple", 3, 1, 0.9)
    assert config.max_completion_length == 128 and config.prompts_per_step == 4   # the defaults
