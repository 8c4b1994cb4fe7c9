"""`python -m awpo.ablation`: run a grid of training runs that differ only in the advantage estimator
(or one AWPO component), over seeds, then write `ablation.md`, `ablation.json` and `ablation.png`.

    python -m awpo.ablation --variants grpo,reward_sum,gdpo,awpo --seeds 0,1,2 \\
        --output_dir runs/ablation -- --max_steps 20

Options after `--` go to every `python -m awpo.train` run (on top of its defaults). `--config
FILE` reads the same settings from YAML (`variants`, `seeds`, `output_dir`, `parallel`, `eval_seed`,
`eval_tasks`, `title`, and `train:` a mapping of training options); command-line options win.
Stopping is safe: run it again with the same options and finished runs are reused, interrupted ones
resume from their last checkpoint.

    python -m awpo.ablation --report --output_dir results/evidence-2

writes the pre-registered evidence report of docs/EVIDENCE.md (`evidence.md`, `evidence.json`,
`evidence.png`: the futility look, the one-sided paired t-test, the control, the secondary metrics)
from the finished runs of the arms grpo, awpo and awpo:judge=reference in that directory.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..config import ConfigError
from ..cpu import usable_cores
from . import grid
from .report import load_run, machine_description, write_report

DEFAULTS = {"variants": "grpo,reward_sum,gdpo,awpo", "seeds": "0,1,2", "output_dir": "runs/ablation",
            "parallel": 1, "threads": 0, "eval_seed": 0, "eval_tasks": 256, "title": "advantage estimators"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m awpo.ablation", allow_abbrev=False,
        usage="%(prog)s [--variants V,...] [--seeds S,...] [--output_dir DIR] [--parallel K] [--config FILE] "
              "[--dry_run] [--report_only] [--report] [-- TRAIN OPTIONS]",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--config", metavar="FILE", help="YAML with the options below and train: {option: value}")
    parser.add_argument("--variants", help="comma-separated estimator[:option=value[+option=value]][@seeds], e.g. "
                        "grpo,reward_sum,gdpo,awpo,awpo:gate=none,awpo:weight=none,awpo:clip=none; "
                        "awpo:judge=reference@0-7 runs only seeds 0-7 of --seeds "
                        f"(default: {DEFAULTS['variants']})")
    parser.add_argument("--seeds", help=f"comma-separated seeds or ranges, e.g. 0,1,2 or 0-15 "
                        f"(default: {DEFAULTS['seeds']})")
    parser.add_argument("--output_dir", help=f"the grid's directory (default: {DEFAULTS['output_dir']})")
    parser.add_argument("--parallel", type=int, help="runs at once; the usable cores are divided among them "
                        "(default: 1, one after another with every core)")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: the usable cores divided by "
                        "--parallel; set it when two grids share a machine)")
    parser.add_argument("--eval_seed", type=int, help="seed of the held-out tasks, the same for every run (default: 0)")
    parser.add_argument("--eval_tasks", type=int, help="held-out tasks per evaluation (default: 256; greedy)")
    parser.add_argument("--title", help="title of the report")
    parser.add_argument("--keep_checkpoints", action="store_true", help="keep a finished run's checkpoints "
                        "(default: delete them once its result.json is written; final/ stays)")
    parser.add_argument("--dry_run", action="store_true", help="validate every run's options, print the commands, stop")
    parser.add_argument("--report_only", action="store_true",
                        help="write the report from the finished runs, start none")
    parser.add_argument("--report", action="store_true",
                        help="write the pre-registered evidence report (docs/EVIDENCE.md) of --output_dir's "
                             "finished grpo, awpo and awpo:judge=reference runs: evidence.md, .json, .png; "
                             "start none")
    return parser


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    if "--" in argv:
        split = argv.index("--")
        own, train_args = argv[:split], argv[split + 1:]
    else:
        own, train_args = argv, []
    args = vars(build_parser().parse_args(grid.underscored(own)))
    settings = dict(DEFAULTS)
    if args.get("config"):
        settings.update(read_config_file(args["config"]))
    file_train = settings.pop("train_args", [])
    settings.update({k: v for k, v in args.items() if v is not None and k != "config"})
    return settings, [*file_train, *train_args]


def read_config_file(path: str) -> dict:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path!r}: no such file")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path!r}: expected a mapping")
    unknown = sorted(set(data) - set(DEFAULTS) - {"train"})
    if unknown:
        raise ConfigError(f"--config {path!r}: unknown key(s) {', '.join(unknown)}")
    settings = {k: v for k, v in data.items() if k != "train"}
    for key in ("variants", "seeds"):
        if isinstance(settings.get(key), list):
            settings[key] = ",".join(str(v) for v in settings[key])
    train = data.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"--config {path!r}: train must be a mapping of training options")
    settings["train_args"] = [item for name, value in train.items()
                              for item in (f"--{name}", _yaml_value(value))]
    return settings


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run_grid(runs: list[grid.Run], parallel: int, *, keep_checkpoints: bool = False) -> list[grid.Run]:
    """Run every unfinished run, `parallel` at a time; returns the runs that failed."""
    from tqdm import tqdm

    todo = [r for r in runs if not r.done]
    for run in runs:
        if run.done:
            print(f"reused   {run.variant:<22} seed {run.seed}: {run.result_path}", flush=True)
    # the base evaluation first: it is short and its result is wanted by every report
    total_steps = sum(max(r.steps, 1) for r in todo)
    bar = tqdm(total=total_steps, desc="ablation", unit="step", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 60.0)
    running: dict[subprocess.Popen, grid.Run] = {}
    failed, durations = [], []
    grid_started = time.time()

    def progress() -> int:
        return sum(grid.steps_done(r) if r.steps else int(r.done) for r in todo)

    def stop_children(*_):
        for process in running:
            process.send_signal(signal.SIGINT)
        for process in running:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop_children)
    try:
        queue = list(todo)
        while queue or running:
            while queue and len(running) < parallel:
                run = queue.pop(0)
                running[grid.start(run)] = run
                bar.write(f"started  {run.variant:<22} seed {run.seed}: log {run.log}")
            time.sleep(2.0)
            for process in [p for p in running if p.poll() is not None]:
                run = running.pop(process)
                run.finished, run.returncode = time.time(), process.returncode
                took = run.finished - run.started
                if run.returncode == 0 and run.done:
                    durations.append(took)
                    if not keep_checkpoints:
                        grid.remove_checkpoints(run)
                    status = f"finished {run.variant:<22} seed {run.seed} in {_duration(took)}"
                else:
                    failed.append(run)
                    status = f"FAILED   {run.variant:<22} seed {run.seed} (exit {run.returncode}): see {run.log}"
                left = len(queue) + len(running)
                eta = (sum(durations) / len(durations)) * left / parallel if durations else None
                bar.write(f"{status}; {len(todo) - left}/{len(todo)} done"
                          + (f", about {_duration(eta)} left" if eta is not None else ""))
            names = ", ".join(f"{r.variant}/s{r.seed} {grid.steps_done(r)}/{r.steps}" for r in running.values())
            bar.set_postfix_str(names[:80], refresh=False)
            bar.update(progress() - bar.n)  # redraws at most every mininterval (a minute in a log file)
    except KeyboardInterrupt:
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        print("\nstopped: run the same command again to continue (finished runs are kept, the others resume)",
              file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
    print(f"grid time {_duration(time.time() - grid_started)}", flush=True)
    return failed


def threads_used(loaded: list[dict], planned: int) -> str:
    """The torch threads the loaded runs recorded in result.json (they may predate this command)."""
    used = {run["result"].get("cpu_threads") for run in loaded} - {None}
    return ",".join(str(t) for t in sorted(used)) if used else str(planned)


def report(settings: dict, runs: list[grid.Run], argv: list[str], threads: int) -> dict:
    import os

    base = next((load_run(r.directory) for r in runs if r.variant == grid.BASE and r.done), None)
    by_variant: dict[str, dict[int, dict]] = {}
    for run in runs:
        if run.variant != grid.BASE and run.done:
            by_variant.setdefault(run.variant, {})[run.seed] = load_run(run.directory)
    if not by_variant:
        raise ConfigError("no finished training run to report on yet")
    first = next(r for r in runs if r.variant != grid.BASE).config
    trained = [loaded for seeds in by_variant.values() for loaded in seeds.values()]
    meta = {"title": settings["title"], "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": machine_description(), "threads": threads_used(trained, threads),
            "parallel": "not recorded (--report_only)" if settings.get("report_only") else settings["parallel"],
            "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "command": "python -m awpo.ablation " + " ".join(shlex.quote(a) for a in argv),
            "budget": f"{first.max_steps} steps x {first.prompts_per_step} prompts x {first.num_generations} "
                      f"completions, max {first.max_completion_length} tokens, model "
                      f"{first.model or 'SmolLM2-135M-Instruct'}, graded outcome {first.graded_outcome}, "
                      f"worked examples {first.worked_examples}, judge {first.judge}",
            "eval_seed": settings["eval_seed"],
            "missing_runs": [f"{r.variant}/seed-{r.seed}" for r in runs if not r.done]}
    return write_report(Path(settings["output_dir"]), base, by_variant, meta)


def evidence_report(settings: dict, argv: list[str]) -> int:
    from .evidence_report import write_evidence

    try:
        paths = write_evidence(Path(settings["output_dir"]),
                               command="python -m awpo.ablation " + " ".join(shlex.quote(a) for a in argv))
    except ValueError as err:
        print(f"python -m awpo.ablation --report: error: {err}", file=sys.stderr)
        return 2
    print(Path(paths["md"]).read_text())
    print("report: " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ..train import _quiet_third_party_logs

    _quiet_third_party_logs()
    try:
        settings, train_args = parse(argv)
        if settings.get("report"):
            return evidence_report(settings, argv)
        parallel = int(settings["parallel"])
        if parallel < 1:
            raise ConfigError(f"--parallel {parallel}: must be >= 1")
        threads = int(settings.get("threads") or max(1, usable_cores() // parallel))
        if threads < 1:
            raise ConfigError(f"--threads {threads}: must be >= 1")
        runs = grid.plan(grid.parse_variants(str(settings["variants"])), grid.parse_seeds(settings["seeds"]),
                         train_args, Path(settings["output_dir"]), eval_seed=int(settings["eval_seed"]),
                         eval_tasks=int(settings["eval_tasks"]), threads=threads)
    except ConfigError as err:
        print(f"python -m awpo.ablation: error: {err}", file=sys.stderr)
        return 2
    training = [r for r in runs if r.variant != grid.BASE]
    print(f"{len(training)} training runs ({len(training) - sum(r.done for r in training)} to do) + the base "
          f"evaluation, {parallel} at a time with {threads} thread(s) each, in {settings['output_dir']}", flush=True)
    if settings.get("dry_run"):
        for run in runs:
            state = "done" if run.done else ("resume" if grid.list_checkpoints(run.directory) else "new")
            print(f"[{state}] {' '.join(shlex.quote(a) for a in grid.command(run))}")
        return 0
    failed = [] if settings.get("report_only") else run_grid(runs, parallel,
                                                              keep_checkpoints=bool(settings.get("keep_checkpoints")))
    try:
        paths = report(settings, runs, argv, threads)
    except (ConfigError, ValueError) as err:
        print(f"python -m awpo.ablation: error: {err}", file=sys.stderr)
        return 2
    print(Path(paths["md"]).read_text())
    print("report: " + ", ".join(str(p) for p in paths.values()))
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(f"{r.variant}/seed-{r.seed} ({r.log})" for r in failed),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
