"""awpo.config: defaults < YAML < command line; every option documented; bad values fail clearly."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from awpo import config as cfg
from awpo.config import Config, ConfigError, parse_args


def test_defaults_are_valid_and_trl_names_exist():
    config = Config().validate()
    trl_names = ["num_generations", "beta", "epsilon", "epsilon_high", "loss_type", "scale_rewards",
                 "importance_sampling_level", "mask_truncated_completions", "temperature",
                 "max_completion_length", "learning_rate", "gradient_accumulation_steps", "num_iterations",
                 "max_steps", "save_steps", "logging_steps", "seed", "output_dir", "save_total_limit",
                 "per_device_train_batch_size", "vllm_importance_sampling_correction",
                 "vllm_importance_sampling_cap"]
    awpo_names = ["estimator", "gate", "weight", "clip", "clip_ratio", "clip_max", "clip_shrink",
                  "reasoning_coef", "judge", "graded_outcome"]
    for name in trl_names + awpo_names:
        assert hasattr(config, name), name
    assert config.effective_epsilon_high == config.epsilon


def test_yaml_then_command_line_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("beta: 0.04\nnum_generations: 6\nepsilon_high: 0.28\ngate: hard\nscale_rewards: false\n")
    config = parse_args(["--config", str(path), "--num_generations", "5", "--epsilon_high", "none"])
    assert config.beta == 0.04 and config.gate == "hard"
    assert config.num_generations == 5          # the command line wins over the file
    assert config.epsilon_high is None and config.effective_epsilon_high == config.epsilon
    assert config.scale_rewards == "none"       # TRL's boolean form is accepted


@pytest.mark.parametrize("argv, message", [
    (["--beta", "-0.5"], "beta=-0.5: must be >= 0.0"),
    (["--num_generations", "1"], "num_generations=1: must be >= 2"),
    (["--num_generations", "2.5"], "num_generations='2.5': expected an integer"),
    (["--learning_rate", "0"], "learning_rate=0.0: must be > 0.0"),
    (["--learning_rate", "fast"], "learning_rate='fast': expected a number"),
    (["--temperature", "nan"], "temperature=nan: expected a finite number"),
    (["--gate", "bogus"], "gate='bogus': must be one of 'soft', 'hard', 'ratio'"),
    (["--loss_type", "ppo"], "loss_type='ppo': must be one of"),
    (["--mask_truncated_completions", "maybe"], "mask_truncated_completions='maybe': expected true or false"),
    (["--top_p", "1.5"], "top_p=1.5: must be <= 1.0"),
    (["--prompts_per_step", "3", "--num_generations", "5", "--per_device_train_batch_size", "4",
      "--gradient_accumulation_steps", "2"], "must be a multiple of"),
    (["--max_completion_length", "4096", "--max_model_len", "2048"], "must be smaller than max_model_len"),
    (["--no_such_option", "1"], "unrecognized arguments"),
    (["--categories", "simple,bogus"], "categories='simple,bogus': unknown ['bogus']"),
    (["--epsilon", "0"], "epsilon=0.0: must be > 0.0"),          # a zero clip would fail only after loading
    (["--epsilon_high", "0"], "epsilon_high=0.0: must be > 0.0"),
    (["--clip_ratio", "0"], "clip_ratio=0.0: must be > 0.0"),
    (["--clip_max", "0"], "clip_max=0.0: must be > 0.0"),
    (["--learning", "3e-5"], "unrecognized arguments: --learning"),  # no abbreviations of option names
])
def test_bad_values_fail_at_start_up_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "/no/such/tasks.jsonl"], "dataset='/no/such/tasks.jsonl': no such file"),
    (["--eval_dataset", "missing.parquet"], "eval_dataset='missing.parquet': no such file"),
    (["--model", "/no/such/model"], "--model '/no/such/model': no such model directory"),
    (["--judge", "llm", "--judge_model", "/no/such/model"], "judge_model='/no/such/model': no such model directory"),
    (["--judge", "llm", "--judge_rubric", "/no/rubric.txt"], "judge_rubric='/no/rubric.txt': cannot read"),
    (["--judge", "llm", "--judge_url", "http://h:1", "--judge_api_key_env", "AWPO_NO_SUCH_VAR"],
     "judge_api_key_env='AWPO_NO_SUCH_VAR': no such environment variable"),
])
def test_the_preflight_checks_what_options_point_at_naming_the_option(argv, message, tmp_path):
    from awpo.preflight import preflight

    config = parse_args(argv + ["--output_dir", str(tmp_path / "run")])  # the options themselves are fine
    with pytest.raises(ConfigError) as err:
        preflight(config)
    assert message in str(err.value)


def test_the_preflight_reports_a_malformed_dataset_and_an_output_dir_that_is_a_file(tmp_path):
    from awpo.preflight import preflight

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": "a", "question": "hi", "tools": [], "ground_truth": []}\n{not json\n')
    with pytest.raises(ConfigError, match=r"dataset='.*tasks.jsonl': .*tasks.jsonl:2"):
        preflight(Config(dataset=str(tasks), output_dir=str(tmp_path / "run")).validate())
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(ConfigError, match="output_dir=.*: is a file, not a directory"):
        preflight(Config(output_dir=str(taken)).validate())


def test_train_reports_preflight_failures_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import awpo.trainer as trainer_module
    from awpo.train import main

    def no_model(*args, **kwargs):
        raise AssertionError("the policy was loaded before the preflight")

    monkeypatch.setattr(trainer_module, "load_policy", no_model)
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert main(["--output_dir", str(taken)]) == 2
    assert "error: output_dir=" in capsys.readouterr().err


def test_bad_yaml_files_fail_clearly(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="unknown option.*learning_rat"):
        cfg.from_dict(cfg.load_yaml(str(unknown)))
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        cfg.load_yaml(str(not_mapping))
    with pytest.raises(ConfigError, match="no such file"):
        cfg.load_yaml(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="beta='x'"):
        cfg.from_dict({"beta": "x"})


def test_help_documents_every_option():
    text = cfg.build_parser().format_help()
    for f in dataclasses.fields(Config):
        assert f"--{f.name}" in text, f.name
        assert f.metadata["help"], f.name
    result = subprocess.run([sys.executable, "-m", "awpo.train", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--num_generations" in result.stdout and "--reasoning_coef" in result.stdout


def test_the_command_line_without_options_is_the_dataclass_defaults():
    """`Config()` (the Python API) and `python -m awpo.train` run the same defaults, written once."""
    import awpo

    assert parse_args([]) == Config()
    assert not (Path(awpo.__file__).parent / "configs" / "default.yaml").exists()  # no second copy


def test_derived_batch_sizes():
    config = Config(prompts_per_step=4, num_generations=6, per_device_train_batch_size=8).validate()
    assert config.micro_batches_per_optimizer_step == 3 and config.optimizer_steps_per_iteration == 1
    config = Config(prompts_per_step=4, num_generations=6, per_device_train_batch_size=4,
                    gradient_accumulation_steps=3).validate()
    assert config.micro_batches_per_optimizer_step == 3 and config.optimizer_steps_per_iteration == 2


@pytest.mark.slow  # a subprocess that imports it all
def test_cli_reports_a_missing_model_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "awpo.train", "--model", str(tmp_path / "nope"),
                             "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "error: --model" in result.stderr and "no such model directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_options_may_be_spelled_with_dashes():
    config = parse_args(["--eval-bfcl", "non_live", "--eval-bfcl-limit=5", "--max-steps", "3"])
    assert (config.eval_bfcl, config.eval_bfcl_limit, config.max_steps) == ("non_live", 5, 3)


def test_unknown_bfcl_category_fails_at_start_up(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--eval_bfcl", "simple_python,nonsense"])
    assert "eval_bfcl='simple_python,nonsense'" in capsys.readouterr().err


def test_a_yaml_list_is_the_comma_separated_form_of_a_text_option(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("categories: [simple, multiple]\neval_bfcl:\n  - simple_python\n  - irrelevance\n")
    config = parse_args(["--config", str(path)])
    assert config.categories == "simple,multiple" and config.eval_bfcl == "simple_python,irrelevance"
    with pytest.raises(ConfigError, match="expected a string"):
        cfg.from_dict({"categories": {"simple": 1}})


def test_options_objects_come_from_the_config():
    import awpo_kernels as ak

    config = Config(epsilon=0.1, epsilon_high=0.3, scale_rewards="none", beta=0.04, loss_type="grpo", gate="hard")
    loss = config.loss_options()
    assert isinstance(loss, ak.LossOptions)
    assert (loss.epsilon_low, loss.epsilon_high, loss.beta, loss.loss_type) == (0.1, 0.3, 0.04, "grpo")
    assert (loss.temperature, loss.max_completion_length) == (config.temperature, config.max_completion_length)
    adv = config.advantage_options()
    assert isinstance(adv, ak.AdvantageOptions)
    assert (adv.scale, adv.gate, adv.epsilon_low, adv.epsilon_high) == ("none", "hard", 0.1, 0.3)
    assert adv.graded_outcome == config.graded_outcome
    fields = {f.name: f for f in dataclasses.fields(Config)}
    assert fields["estimator"].metadata["choices"] == ak.AdvantageOptions.ESTIMATORS
    assert fields["loss_type"].metadata["choices"] == ak.LossOptions.LOSS_TYPES
