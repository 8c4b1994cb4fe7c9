"""`python -m awpo.ablation`: variants and seeds, the run plan, the statistics, the report, and one tiny
grid end to end (tiny model, transformers rollouts, real training runs in subprocesses) that is
interrupted and resumed."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from awpo.ablation import grid
from awpo.ablation.__main__ import main, parse
from awpo.ablation.report import markdown, summarise
from awpo.ablation.stats import paired_bootstrap, t_interval, t_quantile
from awpo.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# variants, seeds, plan
# ----------------------------------------------------------------------------------------------

def test_variants_parse_with_component_options():
    variants = grid.parse_variants("grpo, awpo, awpo:gate=none, awpo:weight=none+clip=none")
    assert [v.estimator for v in variants] == ["grpo", "awpo", "awpo", "awpo"]
    assert variants[3].options == (("weight", "none"), ("clip", "none"))
    assert variants[3].args() == ["--estimator", "awpo", "--weight", "none", "--clip", "none"]
    assert len({v.dirname for v in variants}) == 4 and all("/" not in v.dirname for v in variants)


@pytest.mark.parametrize("text, message", [
    ("", "at least one"), ("grpo,grpo", "each variant once"), ("awpo:gate", "option=value"),
    ("awpo:seed=3", "set by the harness"), (":gate=none", "empty variant")])
def test_bad_variants_are_named(text, message):
    with pytest.raises(ConfigError, match=message):
        grid.parse_variants(text)


def test_seeds_parse_and_reject_junk():
    assert grid.parse_seeds("0, 1,2") == [0, 1, 2]
    assert grid.parse_seeds("0-3,7") == [0, 1, 2, 3, 7] and grid.parse_seeds("5-5") == [5]
    for bad in ("", "0,0", "a,b", "3-1", "0-2,1", "1-x"):
        with pytest.raises(ConfigError, match="--seeds"):
            grid.parse_seeds(bad)


def test_a_variant_may_run_a_subset_of_the_seeds(tmp_path):
    variants = grid.parse_variants("grpo,awpo:judge=reference@0-1+3")
    control = variants[1]
    assert control.label == "awpo:judge=reference" and control.seeds == (0, 1, 3) and variants[0].seeds is None
    assert control.args() == ["--estimator", "awpo", "--judge", "reference"] and "@" not in control.dirname
    runs = grid.plan(variants, [0, 1, 2, 3], [], tmp_path, eval_seed=0, eval_tasks=8, threads=1)
    assert [(r.variant, r.seed) for r in runs[1:]] == [
        ("grpo", 0), ("awpo:judge=reference", 0), ("grpo", 1), ("awpo:judge=reference", 1), ("grpo", 2),
        ("grpo", 3), ("awpo:judge=reference", 3)]
    assert runs[2].config.judge == "reference"
    with pytest.raises(ConfigError, match="seed.s. 4 are not in --seeds"):
        grid.plan(grid.parse_variants("awpo@3-4"), [0, 1, 2, 3], [], tmp_path, eval_seed=0, eval_tasks=8, threads=1)
    with pytest.raises(ConfigError, match="expected seeds after '@'"):
        grid.parse_variants("awpo@x")


PHASE1 = ["--variants", "grpo,awpo,awpo:judge=reference@0-7", "--seeds", "0-15", "--parallel", "2", "--threads", "1",
          "--eval_tasks", "512", "--", "--graded_outcome", "false", "--worked_examples", "true",
          "--categories", "simple,multiple,irrelevance"]


def test_the_evidence_round_phase1_command_plans_its_runs(tmp_path, capsys):
    """docs/EVIDENCE.md's phase-1 grid: GRPO and AWPO over seeds 0-15, the control on seeds 0-7."""
    code = main([*PHASE1[:10], "--output_dir", str(tmp_path / "grid"), "--dry_run", *PHASE1[10:]])
    out = capsys.readouterr().out
    assert code == 0 and "40 training runs (40 to do)" in out and "2 at a time with 1 thread(s) each" in out
    commands = [line for line in out.splitlines() if line.startswith("[new]")]
    assert len(commands) == 1 + 16 * 2 + 8
    assert all("--max_eval_tasks 512" in c and "--graded_outcome false" in c and "--cpu_threads 1" in c
               and "--categories simple,multiple,irrelevance" in c and "--eval_seed 0" in c for c in commands)
    assert sum("--estimator grpo" in c for c in commands) == 16
    assert sum("--estimator awpo" in c and "--judge reference" not in c for c in commands) == 16
    control = [c for c in commands if "--judge reference" in c]
    assert [int(c.split("--seed ")[1].split()[0]) for c in control] == list(range(8))


def test_plan_gives_every_run_the_same_options_but_variant_and_seed(tmp_path):
    runs = grid.plan(grid.parse_variants("grpo,awpo:gate=hard"), [0, 5], ["--max_steps", "3"], tmp_path,
                     eval_seed=11, eval_tasks=32, threads=1)
    base, *training = runs
    assert base.variant == grid.BASE and base.config.eval_only and base.config.eval_seed == 11
    assert [(r.variant, r.seed) for r in training] == [("grpo", 0), ("awpo:gate=hard", 0), ("grpo", 5),
                                                      ("awpo:gate=hard", 5)]
    for run in training:
        c = run.config
        assert (c.max_steps, c.max_eval_tasks, c.eval_seed, c.eval_before, c.cpu_threads) == (3, 32, 11, False, 1)
        assert c.output_dir == str(run.directory) and c.seed == run.seed
    assert training[1].config.gate == "hard" and training[0].config.gate == "soft"
    identities = [grid.identity(r.config) for r in training]
    for ident in identities:
        ident.pop("seed"), ident.pop("estimator"), ident.pop("gate")
    assert all(i == identities[0] for i in identities)


def test_plan_rejects_reserved_and_bad_training_options(tmp_path):
    with pytest.raises(ConfigError, match="--output_dir is set by the harness"):
        grid.plan(grid.parse_variants("grpo"), [0], ["--output-dir", "x"], tmp_path, eval_seed=0, eval_tasks=8, threads=1)
    with pytest.raises(ConfigError, match="unrecognized arguments: --max_stepz"):
        grid.plan(grid.parse_variants("grpo"), [0], ["--max_stepz", "3"], tmp_path, eval_seed=0, eval_tasks=8, threads=1)
    with pytest.raises(ConfigError, match="variant 'awpo:gate=wide'.*gate='wide'"):
        grid.plan(grid.parse_variants("awpo:gate=wide"), [0], [], tmp_path, eval_seed=0, eval_tasks=8, threads=1)


def test_a_finished_run_with_other_options_is_not_reused(tmp_path):
    runs = grid.plan(grid.parse_variants("grpo"), [0], ["--max_steps", "3"], tmp_path, eval_seed=0, eval_tasks=8,
                     threads=1)
    finished = runs[1]
    finished.directory.mkdir(parents=True)
    stored = grid.identity(finished.config) | {"max_steps": 4}
    finished.result_path.write_text(json.dumps({"config": stored}))
    with pytest.raises(ConfigError, match="other options.*max_steps: 4 there, 3 planned"):
        grid.plan(grid.parse_variants("grpo"), [0], ["--max_steps", "3"], tmp_path, eval_seed=0, eval_tasks=8,
                  threads=1)


def test_a_finished_run_is_compared_on_the_precision_it_resolved(tmp_path):
    """Runs stored before rollout_dtype existed sampled in `dtype` with the correction as configured (off by
    default then): an 'auto' plan is compared with what auto resolves to here, not with the word 'auto'."""
    def finish(name, stored, precision=None):
        output_dir = tmp_path / name
        runs = grid.plan(grid.parse_variants("grpo"), [0], [], output_dir, eval_seed=0, eval_tasks=8, threads=1)
        runs[1].directory.mkdir(parents=True)
        result = {"config": stored} | ({"precision": precision} if precision else {})
        runs[1].result_path.write_text(json.dumps(result))
        return lambda *args: grid.plan(grid.parse_variants("grpo"), [0], list(args), output_dir, eval_seed=0,
                                       eval_tasks=8, threads=1)

    base = grid.identity(grid.plan(grid.parse_variants("grpo"), [0], [], tmp_path / "x", eval_seed=0, eval_tasks=8,
                                   threads=1)[1].config)
    old = {k: v for k, v in base.items() if k not in grid.PRECISION_OPTIONS} | {
        "vllm_importance_sampling_correction": False}
    replan = finish("old", old)  # an old run: fp32 vLLM, no correction
    replan("--rollout_dtype", "float32", "--vllm_importance_sampling_correction", "false")  # the same: reused
    with pytest.raises(ConfigError, match="importance_sampling_correction: False there, True planned"):
        replan("--rollout_dtype", "float32")  # auto turns the correction on under bf16 autocast
    replan = finish("new", base, {"rollout_dtype": "bfloat16", "importance_sampling_correction": True})
    with pytest.raises(ConfigError, match="rollout_dtype: 'bfloat16' there, 'float32' planned"):
        replan("--rollout_dtype", "float32")


def test_config_file_and_command_line_combine(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("variants: [grpo, awpo]\nseeds: [3, 4]\nparallel: 2\ntrain:\n  max_steps: 7\n"
                    "  graded_outcome: false\n  model: /somewhere\n")
    settings, train_args = parse(["--config", str(path), "--seeds", "9", "--", "--max_steps", "8"])
    assert settings["variants"] == "grpo,awpo" and settings["seeds"] == "9" and settings["parallel"] == 2
    assert train_args == ["--max_steps", "7", "--graded_outcome", "false", "--model", "/somewhere",
                          "--max_steps", "8"]  # later wins: the command line
    path.write_text("variants: grpo\nepochs: 3\n")
    with pytest.raises(ConfigError, match="unknown key.*epochs"):
        parse(["--config", str(path)])


def test_the_gpu_recipe_parses_and_builds_its_runs(tmp_path, capsys):
    recipe = REPO / "awpo" / "configs" / "ablation_qwen3_4b.yaml"
    code = main(["--config", str(recipe), "--output_dir", str(tmp_path / "grid"), "--dry_run"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("[new]") == 1 + 4 * 3  # the base evaluation + 4 variants x 3 seeds
    assert out.count("--model Qwen/Qwen3-4B") == 13 and out.count("--eval_bfcl non_live,multi_turn_base") == 13
    assert out.count("--max_steps 200") == 13 and out.count("--max_eval_tasks 512") == 13


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (29, 2.0452)])
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_interval_by_hand():
    interval = t_interval([0.2, 0.3, 0.4])
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert interval.mean == pytest.approx(0.3)
    assert (interval.low, interval.high) == pytest.approx((0.3 - half, 0.3 + half), abs=1e-6)
    single = t_interval([0.5])
    assert single.mean == 0.5 and math.isnan(single.low)


def test_paired_bootstrap_pairs_tasks_and_covers_the_mean():
    rng = np.random.default_rng(1)
    base = rng.random((3, 200)) < 0.3
    better = base | (rng.random((3, 200)) < 0.2)   # the same tasks, plus some more solved
    diff = paired_bootstrap(better.astype(float), base.astype(float), resamples=2000)
    assert 0 < diff.low < diff.mean < diff.high
    own = paired_bootstrap(base.astype(float), resamples=2000)
    assert own.low < base.mean() < own.high
    same = paired_bootstrap(base.astype(float), base.astype(float), resamples=500)
    assert same.low == same.high == same.mean == 0.0   # identical runs differ by exactly nothing
    with pytest.raises(ValueError, match="pair up"):
        paired_bootstrap(base[:, :5], base[:, :6])


# ----------------------------------------------------------------------------------------------
# report on synthetic runs
# ----------------------------------------------------------------------------------------------

def fake_run(exact, category_of, steps=()):
    tasks = [{"id": f"t{i}", "category": category_of(i), "exact": float(e), "graded": 0.5 + 0.5 * float(e)}
             for i, e in enumerate(exact)]
    return {"result": {"eval_after": {"tasks": tasks}}, "steps": list(steps)}


def test_summary_numbers_by_hand():
    category = lambda i: "simple" if i < 2 else "irrelevance"  # noqa: E731
    step = {"step": 1, "loss": 0.1, "adv/zero_outcome_variance_groups": 0.25, "adv/reasoning_share": 0.1,
            "completion/with_reasoning_fraction": 1.0, "reward/reasoning_valid_fraction": 1.0, "time/step_s": 3.0}
    runs = {"grpo": {0: fake_run([1, 0, 0, 0], category, [step]), 1: fake_run([1, 1, 0, 0], category, [step])},
            "awpo": {0: fake_run([1, 1, 0, 1], category, [step]), 1: fake_run([1, 1, 1, 0], category, [step])}}
    base = {"result": {"eval_before": {"accuracy": 0.25, "graded": 0.5, "by_category": {"simple": 0.5},
                                       "format_ok": 1.0}}}
    summary = summarise(base, runs, resamples=500)
    grpo, awpo = summary["variants"]["grpo"], summary["variants"]["awpo"]
    assert grpo["per_seed"]["exact"] == [0.25, 0.5] and awpo["per_seed"]["exact"] == [0.75, 0.75]
    diff = awpo["exact_minus_grpo"]
    assert diff["t"]["mean"] == pytest.approx(0.375)
    half = 12.7062 * np.std([0.5, 0.25], ddof=1) / math.sqrt(2)
    assert diff["t"]["low"] == pytest.approx(0.375 - half, abs=1e-3)
    assert awpo["by_category"]["simple"] == {"mean": 1.0, "tasks": 2}
    assert awpo["training"]["zero_variance_groups"] == 0.25
    text = markdown(summary, {"date": "today"})
    assert "| **awpo** | 2 | 75.0 |" in text and "+37.5" in text and "seed 1: 50.0" in text


def test_bfcl_after_training_is_summarised_when_the_runs_have_it():
    def with_bfcl(run, accuracy):
        run["result"]["bfcl_after"] = {"overall": {"accuracy": accuracy}}
        return run

    runs = {"grpo": {s: with_bfcl(fake_run([1, 0], lambda i: "simple"), a) for s, a in ((0, 0.2), (1, 0.3))},
            "awpo": {s: with_bfcl(fake_run([1, 1], lambda i: "simple"), a) for s, a in ((0, 0.4), (1, 0.4))}}
    summary = summarise(None, runs, resamples=10)
    assert summary["variants"]["awpo"]["bfcl"]["per_seed"] == [0.4, 0.4]
    assert summary["variants"]["awpo"]["bfcl"]["minus_grpo"]["mean"] == pytest.approx(0.15)
    assert "| awpo | 40.0 |" in markdown(summary, {})


def test_runs_on_different_tasks_are_refused():
    runs = {"grpo": {0: fake_run([1, 0], lambda i: "simple")},
            "awpo": {0: fake_run([1, 0, 1], lambda i: "simple")}}
    with pytest.raises(ValueError, match="different held-out tasks"):
        summarise(None, runs, resamples=10)


# ----------------------------------------------------------------------------------------------
# a tiny grid end to end, interrupted and resumed
# ----------------------------------------------------------------------------------------------

def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return env


@pytest.mark.slow  # trains a tiny grid of runs (about 230 s)
def test_tiny_grid_end_to_end_resumes_an_interrupted_run(tiny_model_dir, tmp_path):
    out = tmp_path / "grid"
    common = ["--model", tiny_model_dir, "--rollout", "hf", "--max_steps", "3", "--prompts_per_step", "2",
              "--num_generations", "2", "--max_completion_length", "6", "--save_steps", "1", "--plot", "false"]
    harness = [sys.executable, "-m", "awpo.ablation", "--variants", "grpo,awpo", "--seeds", "0,1",
               "--output_dir", str(out), "--eval_tasks", "3", "--threads", "1", "--", *common]

    # Interrupt one run after its first checkpoint, as a crash or a stop would, with the harness's own command.
    runs = grid.plan(grid.parse_variants("grpo,awpo"), [0, 1], common, out, eval_seed=0, eval_tasks=3, threads=1)
    victim = runs[2]   # awpo, seed 0
    process = subprocess.Popen(grid.command(victim), env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (victim.directory / "checkpoint-1").is_dir():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not victim.done and not (victim.directory / "checkpoint-3").exists()

    done = subprocess.run(harness, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (victim.directory / "train.log").read_text()
    assert "--resume latest" in log
    steps = [json.loads(line)["step"] for line in (victim.directory / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3]   # the killed steps are not counted twice
    report = json.loads((out / "ablation.json").read_text())
    assert set(report["variants"]) == {"grpo", "awpo"} and report["num_tasks"] == 3
    assert report["variants"]["awpo"]["seeds"] == [0, 1] and "exact_minus_grpo" in report["variants"]["awpo"]
    assert (out / "ablation.md").read_text().startswith("# Ablation") and (out / "ablation.png").stat().st_size > 0
    base = json.loads((out / "base" / "result.json").read_text())
    assert base["eval_before"]["num_tasks"] == 3 and base["eval_after"] is None

    # Everything finished: a second call starts nothing and writes the same tables.
    again = subprocess.run(harness, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("reused") == 5 and "started" not in again.stdout
