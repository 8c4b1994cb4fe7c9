"""The ablation grid: which runs, with which options, and running them so that a stop loses nothing.

Every run is an ordinary `python -m awpo.train` in its own directory `OUTPUT/<variant>/seed-<s>`,
with the same options except the variant's and the seed; one more, `OUTPUT/base`, scores the
starting model once (`--eval_only`) on the same held-out tasks (`--eval_seed`), so the runs skip
their own "before" evaluation. A run is finished when its `result.json` exists (the trainer writes
it last, atomically): it is reused. A run with checkpoints continues with `--resume latest`; one
that stopped before its first checkpoint starts again.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import list_checkpoints
from ..config import Config, ConfigError, build_parser, config_from_options, underscored
from ..rollout.precision import config_precision

RESULT_FILE = "result.json"
BASE = "base"
# set per run by the harness: a user's value for them would be silently replaced
RESERVED = ("seed", "output_dir", "resume", "estimator", "eval_only", "eval_before", "eval_seed", "cpu_threads",
            "overwrite_output_dir")
# options that may differ between a finished run and the plan without making it another run
NOT_IDENTITY = ("output_dir", "resume", "cpu_threads", "overwrite_output_dir", "plot", "logging_steps",
                "save_steps", "save_total_limit")


@dataclass(frozen=True)
class Variant:
    """`estimator[:option=value[+option=value...]][@seeds]`, e.g. `awpo:gate=none`,
    `awpo:weight=none+clip=none` or `awpo:judge=reference@0-7` (only seeds 0-7 of the grid's seeds:
    a control that needs fewer seeds than the arms it controls). The label leaves out `@seeds`."""

    label: str
    estimator: str
    options: tuple[tuple[str, str], ...] = ()
    seeds: tuple[int, ...] | None = None   # None: every seed of the grid

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label.replace("=", "_"))

    def args(self) -> list[str]:
        args = ["--estimator", self.estimator]
        for name, value in self.options:
            args += [f"--{name}", value]
        return args


def parse_variant(text: str) -> Variant:
    text, at, seeds_text = text.strip().partition("@")
    text = text.strip()
    estimator, _, rest = text.partition(":")
    if not estimator:
        raise ConfigError(f"--variants: empty variant in {text!r}")
    options = []
    for part in filter(None, rest.split("+")):
        name, sep, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name or not value.strip():
            raise ConfigError(f"--variants {text!r}: expected option=value after ':', got {part!r}")
        if name in RESERVED:
            raise ConfigError(f"--variants {text!r}: {name} is set by the harness per run")
        options.append((name, value.strip()))
    seeds = None
    if at:
        try:
            seeds = tuple(_seed_items(seeds_text, "+"))
        except ConfigError:
            raise ConfigError(f"--variants {text}@{seeds_text}: expected seeds after '@' like 0-7 or 0+2+5") from None
    return Variant(text, estimator.strip(), tuple(options), seeds)


def parse_variants(text: str) -> list[Variant]:
    variants = [parse_variant(part) for part in text.split(",") if part.strip()]
    if not variants:
        raise ConfigError("--variants: give at least one, e.g. grpo,awpo")
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels) or len({v.dirname for v in variants}) != len(variants):
        raise ConfigError(f"--variants: each variant once, got {labels}")
    return variants


def _seed_items(text: str, separator: str) -> list[int]:
    """Integers and inclusive ranges `a-b` joined by `separator`, in the order given; ConfigError when
    the text is not that, is empty or repeats a seed."""
    seeds = []
    try:
        for part in str(text).split(separator):
            part = part.strip()
            if not part:
                continue
            first, dash, last = part.partition("-")
            if dash and first.strip():
                low, high = int(first), int(last)
                if high < low:
                    raise ValueError(part)
                seeds += range(low, high + 1)
            else:
                seeds.append(int(part))
    except ValueError:
        raise ConfigError(str(text)) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(str(text))
    return seeds


def parse_seeds(text: str) -> list[int]:
    """Comma-separated seeds and inclusive ranges: `0,1,2`, `0-15`, `0-3,8`."""
    try:
        return _seed_items(text, ",")
    except ConfigError:
        raise ConfigError(f"--seeds {text!r}: expected distinct integers or ranges, e.g. 0,1,2 or 0-15") from None


def train_config(args: list[str]) -> Config:
    """The Config `python -m awpo.train ARGS` would run; ConfigError (not SystemExit) for a bad or
    unknown option."""
    parser = build_parser()

    def error(message: str):
        raise ConfigError(message)

    parser.error = error
    options = vars(parser.parse_args(underscored(list(args))))
    return config_from_options(options)


def check_common_args(args: list[str]) -> None:
    for arg in underscored(list(args)):
        name = arg[2:].partition("=")[0] if arg.startswith("--") else None
        if name in RESERVED:
            raise ConfigError(f"--{name} is set by the harness for each run; remove it from the options after --")


@dataclass
class Run:
    variant: str              # label, or "base"
    seed: int
    directory: Path
    args: list[str]           # python -m awpo.train ARGS (without resume/overwrite: added when it starts)
    config: Config
    started: float | None = None
    finished: float | None = None
    returncode: int | None = None
    log: Path | None = field(default=None)

    @property
    def result_path(self) -> Path:
        return self.directory / RESULT_FILE

    @property
    def done(self) -> bool:
        return self.result_path.is_file()

    @property
    def steps(self) -> int:
        return 0 if self.config.eval_only else self.config.max_steps


def plan(variants: list[Variant], seeds: list[int], common_args: list[str], output_dir: Path, *,
         eval_seed: int, eval_tasks: int, threads: int) -> list[Run]:
    """The base evaluation, then every (variant, seed) run, seed by seed; each run's config validated now."""
    check_common_args(common_args)
    shared = ["--max_eval_tasks", str(eval_tasks), *common_args, "--eval_seed", str(eval_seed),
              "--cpu_threads", str(threads)]
    base_dir = output_dir / BASE
    base_args = [*shared, "--seed", str(eval_seed), "--eval_only", "true", "--output_dir", str(base_dir)]
    runs = [Run(BASE, eval_seed, base_dir, base_args, train_config(base_args))]
    # seed-major: a grid stopped early still holds every variant for its first seeds
    for variant in variants:
        extra = sorted(set(variant.seeds or ()) - set(seeds))
        if extra:
            raise ConfigError(f"variant {variant.label!r}: seed(s) {', '.join(map(str, extra))} are not in --seeds")
    for seed in seeds:
        for variant in variants:
            if variant.seeds is not None and seed not in variant.seeds:
                continue
            directory = output_dir / variant.dirname / f"seed-{seed}"
            args = [*shared, *variant.args(), "--seed", str(seed), "--eval_before", "false",
                    "--output_dir", str(directory)]
            try:
                config = train_config(args)
            except ConfigError as err:
                raise ConfigError(f"variant {variant.label!r}: {err}") from None
            runs.append(Run(variant.label, seed, directory, args, config))
    for run in runs:
        check_finished_run_matches(run)
    return runs


def identity(config: Config | dict) -> dict:
    values = dataclasses.asdict(config) if isinstance(config, Config) else dict(config)
    return {k: v for k, v in values.items() if k not in NOT_IDENTITY}


PRECISION_OPTIONS = ("rollout_dtype", "vllm_importance_sampling_correction")  # compared as resolved, below


def check_finished_run_matches(run: Run) -> None:
    """A finished run is reused only if it ran the planned options: otherwise the grid would mix runs."""
    if not run.done:
        return
    result = json.loads(run.result_path.read_text())
    stored = result.get("config", {})
    planned = identity(run.config)
    defaults = dataclasses.asdict(Config())
    differences = {
        k: (stored.get(k), v)
        for k, v in planned.items()
        if k not in PRECISION_OPTIONS
        and json.dumps(stored[k] if k in stored else defaults.get(k)) != json.dumps(v)
    }  # an option added after the run was stored ran at its default
    ran, plan = stored_precision(result), planned_precision(run.config)
    differences.update({k: (ran[k], plan[k]) for k in plan if ran[k] != plan[k]})
    if differences:
        shown = ", ".join(f"{k}: {old!r} there, {new!r} planned" for k, (old, new) in sorted(differences.items())[:4])
        raise ConfigError(f"{run.directory} holds a finished run with other options ({shown}); "
                          "choose another --output_dir or delete that run")


def stored_precision(result: dict) -> dict:
    """The rollout dtype and correction a finished run ran with: its `precision` record, or for a run stored
    before that record existed, vLLM in `dtype` and the correction as its config said (off by default then)."""
    if "precision" in result:
        precision = result["precision"]
        return {"rollout_dtype": precision["rollout_dtype"],
                "importance_sampling_correction": precision["importance_sampling_correction"]}
    config = result.get("config", {})
    return {"rollout_dtype": config.get("dtype", "float32"),
            "importance_sampling_correction": bool(config.get("vllm_importance_sampling_correction") or False)}


def planned_precision(config: Config) -> dict:
    """What a run of `config` would resolve its precision options to on this machine."""
    rollout_dtype, correction = config_precision(config)
    return {"rollout_dtype": rollout_dtype, "importance_sampling_correction": correction}


def command(run: Run) -> list[str]:
    """The command that starts or continues `run`."""
    args = list(run.args)
    if list_checkpoints(run.directory):
        args += ["--resume", "latest"]
    elif run.directory.exists():
        args += ["--overwrite_output_dir", "true"]  # stopped before its first checkpoint: start again
    return [sys.executable, "-m", "awpo.train", *args]


def start(run: Run) -> subprocess.Popen:
    argv = command(run)  # before the directory exists: a new run needs no --overwrite_output_dir
    run.directory.mkdir(parents=True, exist_ok=True)
    run.log = run.directory / "train.log"
    handle = open(run.log, "a")
    handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
    handle.flush()
    env = dict(os.environ, OMP_NUM_THREADS=str(run.config.cpu_threads))
    run.started = time.time()
    process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)
    handle.close()
    return process


def remove_checkpoints(run: Run) -> None:
    """A finished run needs no checkpoint (its final/ model and result.json stay): ~1.6 GB each at 135M."""
    for path in list_checkpoints(run.directory):
        shutil.rmtree(path, ignore_errors=True)


def steps_done(run: Run) -> int:
    """Training steps `run` has logged so far (read from its metrics file; 0 when none)."""
    if run.done:
        return run.steps
    path = run.directory / "metrics.jsonl"
    if not path.is_file():
        return 0
    last = 0
    for line in path.read_text().splitlines():
        try:
            last = max(last, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue  # an unfinished last line
    return min(last, run.steps)
