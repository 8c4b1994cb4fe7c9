"""The rollout dtype (`rollout_dtype`, auto: bf16 where the hardware has bf16 units) and the importance-sampling
correction that follows from it (`vllm_importance_sampling_correction`, auto: on when the rollout's dtype is not
the learner's): the choice from CPU flags, the explicit values, the resume of a checkpoint from before the
option, and one real training step with bf16 vLLM rollouts and an fp32 learner."""
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from awpo import checkpoint as ckpt
from awpo.config import Config, ConfigError, build_parser, parse_args
from awpo.cpu import BF16_CPU_FLAGS, cpu_bf16_unit, cpu_flags
from awpo.rollout import make_engine
from awpo.rollout.precision import choose_is_correction, choose_rollout_dtype
from awpo.train import progress_fields
from awpo.trainer import Trainer, update_options

CPUINFO_ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""
CPUINFO_SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
CPUINFO_SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni\n"
CPUINFO_ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes bf16\n"


# ----------------------------------------------------------------------------------------------
# the CPU's bf16 units, from /proc/cpuinfo
# ----------------------------------------------------------------------------------------------

def test_cpu_flags_are_the_first_flags_line_of_cpuinfo():
    assert cpu_flags(CPUINFO_ZEN4) >= {"avx512_bf16", "avx2", "avx512f"}
    assert "sysret_ss_attrs" not in cpu_flags(CPUINFO_ZEN4)   # the bugs line is not the flags line
    assert cpu_flags(CPUINFO_ARM) is None                     # no x86 flags line
    assert cpu_flags("") is None


@pytest.mark.parametrize("cpuinfo, unit", [
    (CPUINFO_ZEN4, "avx512_bf16"),
    (CPUINFO_SAPPHIRE_RAPIDS, "amx_bf16"),   # AMX named first where both are there
    (CPUINFO_SKYLAKE, None),                  # AVX-512 without BF16: no bf16 unit
])
def test_the_bf16_unit_comes_from_the_flags(cpuinfo, unit):
    assert cpu_bf16_unit(cpu_flags(cpuinfo)) == unit


def test_this_machines_bf16_unit_is_what_its_cpuinfo_lists():
    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags line on this machine (not Linux x86)")
    listed = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    assert cpu_bf16_unit() == (listed[0] if listed else None)


# ----------------------------------------------------------------------------------------------
# choose_rollout_dtype / choose_is_correction
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cpuinfo, dtype, reason", [
    (CPUINFO_ZEN4, "bfloat16", "CPU has avx512_bf16"),
    (CPUINFO_SAPPHIRE_RAPIDS, "bfloat16", "CPU has amx_bf16"),
    (CPUINFO_SKYLAKE, "float32", "CPU has no bf16 units (neither amx_bf16 nor avx512_bf16)"),
    ("processor\t: 0\nflags\t\t: fpu sse sse2\n", "float32", "CPU has no bf16 units"),
])
def test_auto_picks_bf16_only_on_a_cpu_with_bf16_units(cpuinfo, dtype, reason):
    chosen, why = choose_rollout_dtype("auto", "float32", device="cpu", cpu_flags=cpu_flags(cpuinfo))
    assert chosen == dtype and why.startswith(reason)


def test_auto_on_cuda_follows_the_gpus_bf16_support():
    assert choose_rollout_dtype("auto", "float32", device="cuda", cuda=(True, "H100 (sm_90)")) == (
        "bfloat16", "GPU H100 (sm_90) has bf16 units")
    assert choose_rollout_dtype("auto", "float32", device="cuda", cuda=(False, "T4 (sm_75)")) == (
        "float32", "GPU T4 (sm_75) has no bf16 units")


def test_auto_keeps_a_bf16_learners_rollout_in_bf16_even_without_bf16_units():
    """`dtype bfloat16` meant bf16 rollouts before rollout_dtype existed, and still does."""
    assert choose_rollout_dtype("auto", "bfloat16", device="cpu", cpu_flags=cpu_flags(CPUINFO_SKYLAKE)) == (
        "bfloat16", "the learner's dtype is bfloat16")


@pytest.mark.parametrize("cpuinfo", [CPUINFO_ZEN4, CPUINFO_SKYLAKE])
def test_explicit_values_are_obeyed_whatever_the_cpu(cpuinfo):
    flags = cpu_flags(cpuinfo)
    assert choose_rollout_dtype("float32", "float32", device="cpu", cpu_flags=flags) == (
        "float32", "set by rollout_dtype")
    chosen, why = choose_rollout_dtype("bfloat16", "float32", device="cpu", cpu_flags=flags)
    assert chosen == "bfloat16" and why.startswith("set by rollout_dtype")
    assert ("emulated" in why) == (cpu_bf16_unit(flags) is None)   # a warning where bf16 is emulated
    assert choose_rollout_dtype("float32", "bfloat16", device="cpu", cpu_flags=flags)[0] == "float32"


def test_the_hf_rollout_samples_in_the_learners_dtype():
    flags = cpu_flags(CPUINFO_ZEN4)
    assert choose_rollout_dtype("auto", "float32", engine="hf", cpu_flags=flags)[0] == "float32"
    assert choose_rollout_dtype("auto", "bfloat16", engine="hf", cpu_flags=flags)[0] == "bfloat16"
    with pytest.raises(ValueError, match="rollout_dtype must be"):
        choose_rollout_dtype("float16", "float32")


@pytest.mark.parametrize("requested, rollout, learner, autocast, engine, on", [
    (None, "bfloat16", "float32", False, "vllm", True),     # auto: the rollout computes in bf16
    (None, "bfloat16", "float32", True, "vllm", True),      # the default on a CPU with bf16 units
    (None, "float32", "float32", True, "vllm", True),       # fp32 rollout, learner under bf16 autocast: ~8e-3 apart
    (None, "bfloat16", "bfloat16", False, "vllm", True),    # both bf16, different kernels: ~2e-2 apart
    (None, "float32", "float32", False, "vllm", False),     # auto: both compute in fp32 (~1e-6 apart)
    (False, "bfloat16", "float32", True, "vllm", False),    # explicit values win
    (True, "float32", "float32", False, "vllm", True),
    (True, "float32", "float32", False, "hf", False),       # TRL semantics: a vLLM correction only
    (None, "bfloat16", "float32", True, "hf", False),
])
def test_the_importance_sampling_default(requested, rollout, learner, autocast, engine, on):
    chosen, reason = choose_is_correction(requested, rollout_dtype=rollout, learner_dtype=learner,
                                          bf16_autocast=autocast, engine=engine)
    assert chosen is on and reason


def test_update_options_apply_the_choice():
    """`update_options(config)` alone reads this machine for rollout_dtype auto; explicit values do not."""
    assert update_options(Config(rollout_dtype="float32", bf16_autocast=False)).is_correction is False
    assert update_options(Config(rollout_dtype="float32")).is_correction is True    # the learner's bf16 autocast
    assert update_options(Config(rollout_dtype="bfloat16")).is_correction is True
    assert update_options(Config(rollout_dtype="bfloat16", vllm_importance_sampling_correction=False)).is_correction \
        is False
    assert update_options(Config(rollout="hf", vllm_importance_sampling_correction=True)).is_correction is False
    assert update_options(Config(), is_correction=True).is_correction is True   # the trainer's choice wins
    assert update_options(Config()).is_correction is True   # bf16 autocast by default, whatever the rollout


# ----------------------------------------------------------------------------------------------
# the options
# ----------------------------------------------------------------------------------------------

def test_the_options_parse_from_the_command_line_and_yaml(tmp_path):
    assert (Config().rollout_dtype, Config().vllm_importance_sampling_correction) == ("auto", None)
    config = parse_args(["--rollout_dtype", "bfloat16", "--vllm_importance_sampling_correction", "false"])
    assert (config.rollout_dtype, config.vllm_importance_sampling_correction) == ("bfloat16", False)
    assert parse_args(["--vllm-importance-sampling-correction", "auto"]).vllm_importance_sampling_correction is None
    assert parse_args(["--vllm_importance_sampling_correction", "true"]).vllm_importance_sampling_correction is True
    path = tmp_path / "run.yaml"
    path.write_text("rollout_dtype: float32\nvllm_importance_sampling_correction: auto\n")
    config = parse_args(["--config", str(path)])
    assert (config.rollout_dtype, config.vllm_importance_sampling_correction) == ("float32", None)
    help_text = " ".join(build_parser().format_help().split())
    assert "--rollout_dtype auto|float32|bfloat16" in help_text
    assert "--vllm_importance_sampling_correction true|false|auto" in help_text and "(default: auto)" in help_text


@pytest.mark.parametrize("argv, message", [
    (["--rollout_dtype", "float16"], "rollout_dtype='float16': must be one of 'auto', 'float32', 'bfloat16'"),
    (["--vllm_importance_sampling_correction", "maybe"],
     "vllm_importance_sampling_correction='maybe': expected true, false or auto"),
    (["--rollout", "hf", "--rollout_dtype", "bfloat16"], "rollout_dtype='bfloat16': the hf rollout samples"),
    (["--epsilon_high", "auto"], "epsilon_high='auto': expected a number"),   # only the auto options take auto
])
def test_bad_values_fail_at_start_up(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_hf_rollout_takes_its_learners_dtype_or_auto():
    Config(rollout="hf", rollout_dtype="auto", dtype="bfloat16").validate()
    Config(rollout="hf", rollout_dtype="bfloat16", dtype="bfloat16").validate()
    with pytest.raises(ConfigError, match="rollout_dtype='float32'"):
        Config(rollout="hf", rollout_dtype="float32", dtype="bfloat16").validate()


def test_the_progress_bar_shows_the_logprob_gap_when_it_is_measured():
    metrics = {"reward/outcome_mean": 0.5, "accuracy": 0.25, "loss": 0.01, "time/step_s": 3.0}
    assert "lp_gap" not in progress_fields(metrics)
    assert progress_fields({**metrics, "is_logratio_abs": 0.00123})["lp_gap"] == "1.2e-03"


# ----------------------------------------------------------------------------------------------
# resume: the checkpoint's rollout dtype, or dtype for a checkpoint from before the option
# ----------------------------------------------------------------------------------------------

def test_resumed_rollout_dtype_of_old_and_new_checkpoints():
    old = {"step": 3, "extra": {"cpu_threads": 2}}   # what checkpoints held before rollout_dtype
    assert ckpt.resumed_rollout_dtype(old, "float32")[0] == "float32"
    assert ckpt.resumed_rollout_dtype(old, "bfloat16")[0] == "bfloat16"   # vLLM ran in dtype then
    assert ckpt.resumed_rollout_dtype({"step": 3}, "float32")[0] == "float32"
    assert ckpt.resumed_rollout_dtype({"extra": {"rollout_dtype": "bfloat16"}}, "float32") == (
        "bfloat16", "resumed: the checkpoint's rollout dtype")


def _checkpoint(model_dir: str, output_dir: Path, extra: dict) -> Path:
    """A real checkpoint at step 1 of the tiny model, with `extra` as its trainer state's extra."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return ckpt.save_checkpoint(output_dir, 1, model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir),
                                optimizer=optimizer, scheduler=scheduler, data_position=2, extra=extra)


@pytest.mark.parametrize("stored, requested, asked", [
    (None, "auto", "float32"),              # a checkpoint from before rollout_dtype: what vLLM ran in then
    ("bfloat16", "auto", "bfloat16"),       # the run's own choice, whatever this machine has
    ("bfloat16", "float32", "float32"),     # an explicit value wins, as --cpu_threads does
])
def test_resume_asks_vllm_for_the_checkpoints_rollout_dtype_engine_start_mocked(
        stored, requested, asked, tiny_model_dir, tmp_path, monkeypatch, caplog):
    """Mocked: the engine start (it records the dtype vLLM would be started with and returns the real hf engine
    on the trainer's model) and `vllm_available` (the vllm path without starting vLLM); everything else is the
    trainer's resume of a real checkpoint."""
    from test_trainer import config_for, even_token_reward, short_tasks

    extra = {"cpu_threads": torch.get_num_threads(), **({} if stored is None else {"rollout_dtype": stored})}
    _checkpoint(tiny_model_dir, tmp_path, extra)
    started = []

    def recording_engine_start(self, model_path):
        started.append(self.rollout_dtype)
        return make_engine("hf", model_path, seed=0, model=self.model, tokenizer=self.tokenizer)

    monkeypatch.setattr(Trainer, "_make_engine", recording_engine_start)
    monkeypatch.setattr("awpo.trainer.vllm_available", lambda: True)   # the vllm path even without vLLM
    config = config_for(tmp_path, model=tiny_model_dir, resume="latest", rollout_dtype=requested,
                        vllm_importance_sampling_correction=None)
    with caplog.at_level(logging.INFO, logger="awpo.trainer"):
        trainer = Trainer(config, train_tasks=short_tasks(), eval_tasks=[], score_fn=even_token_reward)
    assert trainer.step == 1 and started == [asked]
    if stored is None:
        # an old run resumes as it ran: fp32 rollouts, no importance-sampling correction
        assert trainer.rollout_dtype == "float32" and "predates rollout_dtype" in trainer.rollout_dtype_reason
        assert trainer.update_options.is_correction is False
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Rollout dtype")]
    assert len(lines) == 1, lines   # logged once


# ----------------------------------------------------------------------------------------------
# a real training step: bf16 vLLM rollouts, fp32 learner
# ----------------------------------------------------------------------------------------------

@pytest.mark.vllm
def test_bf16_rollouts_with_an_fp32_learner_train_with_the_importance_weights(tiny_model_dir, tmp_path, caplog):
    """The trainer starts its own vLLM engine in bf16 (the production path of `--rollout_dtype bfloat16`), the
    learner is fp32 without autocast, the correction is left at auto. Measured on the tiny model (AMD EPYC with
    avx512_bf16, 2026-12-06): mean |log pi_learner - log pi_rollout| 1.0e-3 to 1.2e-3 per step, max 3.5e-3 to
    5.8e-3, importance weights within [0.997, 1.006]; with fp32 rollouts the same steps give 1.6e-7 (max 4.8e-7)."""
    import gc

    from test_trainer import config_for, even_token_reward, read_steps, short_tasks

    config = config_for(tmp_path, model=tiny_model_dir, rollout_dtype="bfloat16",
                        vllm_importance_sampling_correction=None, max_steps=2, save_steps=2, vllm_kv_cache_gb=0.25)
    with caplog.at_level(logging.INFO, logger="awpo.trainer"):
        trainer = Trainer(config, train_tasks=short_tasks(), eval_tasks=[], score_fn=even_token_reward)
    try:
        assert trainer.engine.dtype == "bfloat16" and next(trainer.model.parameters()).dtype == torch.float32
        assert trainer.is_correction and trainer.update_options.is_correction   # auto: the dtypes differ
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Rollout dtype")]
        assert len(lines) == 1 and lines[0].startswith("Rollout dtype bfloat16 (set by rollout_dtype")
        assert "learner dtype float32; importance-sampling correction on (auto:" in lines[0]
        result = trainer.train()
    finally:
        trainer.engine.llm.llm_engine.engine_core.shutdown()   # free it; the shared engine rebuilds its groups
        engine, trainer.engine = trainer.engine, None
        del engine
        gc.collect()

    steps = read_steps(tmp_path)
    assert sorted(steps) == [1, 2]
    for record in steps.values():
        assert record["update/trained_tokens"] > 0
        gap, low, high = record["is_logratio_abs"], record["is_weight_min"], record["is_weight_max"]
        assert all(math.isfinite(v) for v in (gap, low, high, record["is_weight"], record["is_logratio_abs_max"]))
        # bf16 rounding is visible (fp32 rollouts: ~1.6e-7) and small (measured ~1e-3)
        assert 1e-5 < gap < 1e-2 and record["is_logratio_abs_max"] < 5e-2
        assert 0.95 < low <= record["is_weight"] <= high < 1.05 and low < 1.0 < high   # weights applied, not 1
        assert "lp_gap" in progress_fields(record)
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored["config"]["rollout_dtype"] == "bfloat16"
    assert stored["precision"] == {**stored["precision"], "learner_dtype": "float32", "rollout_dtype": "bfloat16",
                                   "importance_sampling_correction": True}
    assert ckpt.load_trainer_state(result.last_checkpoint)["extra"]["rollout_dtype"] == "bfloat16"
    summary = json.loads((Path(result.last_checkpoint) / ckpt.STATE_JSON).read_text())
    assert summary["run"]["precision"]["rollout_dtype"] == "bfloat16"
