"""The checks of the world a run needs, before any model loads: seconds, each failure naming the option.

``Config.validate()`` checks the options themselves (types, values, rules between options); this
module checks what they point at, in the order a person would want to hear about it:

- ``output_dir``: not a file, and creatable;
- ``device``: CUDA is there when asked for;
- ``dataset`` / ``eval_dataset``: the files exist and every record parses (the tasks are loaded here
  once and handed to the trainer, so a malformed line stops the run before the model loads);
- the reasoning judge: its rubric file, its model directory, its API key variable, and a judge server
  that answers, serves the model and takes the key (``awpo.judges.check_judge``);
- ``model``: a local directory with a ``config.json``, a hub id, or the default model (prepared on
  first use, which is the one slow step here).

Every failure is a ``ConfigError`` whose message starts with the option.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Config, ConfigError


@dataclass
class Prepared:
    """What the preflight found, for the trainer to use instead of finding it again."""

    train_tasks: list
    eval_tasks: list
    judge_server: object | None
    model_path: str


def preflight(config: Config, *, train_tasks: list | None = None, eval_tasks: list | None = None,
              judge: bool = True) -> Prepared:
    """Check the world for ``config`` (module docstring). Tasks passed in are used as they are;
    ``judge=False`` skips the judge (an injected one)."""
    check_output_dir(config.output_dir)
    check_device(config.device)
    if train_tasks is None:
        train_tasks = _tasks(config, "dataset")
    if eval_tasks is None:
        eval_tasks = _tasks(config, "eval_dataset")
    server = check_judge(config) if judge else None
    return Prepared(train_tasks, eval_tasks, server, model_path(config.model))


def check_output_dir(output_dir: str) -> None:
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir={output_dir!r}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output_dir={output_dir!r}: cannot create it ({err.strerror or err})") from None


def check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' but no CUDA device is available (use --device cpu or auto)")


def _tasks(config: Config, option: str) -> list:
    from .data.stream import load_eval_tasks, load_train_tasks

    source = getattr(config, option)
    if source not in ("builtin", "none") and not Path(source).expanduser().is_file():
        raise ConfigError(f"{option}={source!r}: no such file (use 'builtin' or a task file)")
    try:
        return load_train_tasks(config) if option == "dataset" else load_eval_tasks(config)
    except ValueError as err:
        raise ConfigError(f"{option}={source!r}: {err}") from None


def check_judge(config: Config):
    """The judge's world (awpo.judges.check_judge); the connected judge server, if any."""
    if config.estimator == "grpo":
        return None
    from .judges import check_judge as check

    try:
        return check(config.judge_options())
    except ValueError as err:
        raise ConfigError(str(err)) from None


def model_path(model: str) -> str:
    from .models import resolve_model_path

    try:
        return resolve_model_path(model)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
