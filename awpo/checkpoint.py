"""Checkpoints: atomic, self-contained, loadable by plain transformers, resumable exactly.

A checkpoint is `output_dir/checkpoint-<step>/`:

- the model and tokenizer as `save_pretrained` writes them (so `AutoModelForCausalLM.from_pretrained`
  and vLLM load the directory as is);
- `trainer_state.pt`: optimizer, scheduler, the python / numpy / torch RNG states, the step and the
  data position: everything the next step depends on, so a resumed run repeats it bit for bit;
- `trainer_state.json`: the same step / position and the config, for humans, and what the run chose at
  start where the config says 'auto' (`run`: the rollout dtype and the importance-sampling correction).

A resumed run keeps the choices its checkpoint recorded in `extra` (the CPU thread count, the rollout
dtype: `resumed_rollout_dtype`), so it repeats the original run's next steps; a checkpoint from before the
rollout dtype was recorded ran vLLM in the learner's `dtype`, and resumes so.

Atomicity: everything is written into a hidden temporary directory next to the target, fsynced,
then renamed into place. A crash at any moment leaves either the previous checkpoints untouched or
the new one complete; `checkpoint-<step>` never exists half-written. Leftover temporary directories
from a crash are removed at the next save.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
_TMP_PREFIX = ".tmp-checkpoint-"
STATE_FILE = "trainer_state.pt"
STATE_JSON = "trainer_state.json"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# ----------------------------------------------------------------------------------------------
# RNG states
# ----------------------------------------------------------------------------------------------

def capture_rng_state() -> dict:
    """python, numpy and torch (CPU, and CUDA when present) generator states, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate needs tuples; serialisation may have turned them into lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


# ----------------------------------------------------------------------------------------------
# save
# ----------------------------------------------------------------------------------------------

def save_checkpoint(output_dir: str | os.PathLike, step: int, *, model, tokenizer, optimizer, scheduler,
                    data_position: int, config: dict | None = None, extra: dict | None = None,
                    save_total_limit: int = 0, run: dict | None = None) -> Path:
    """Write `output_dir/checkpoint-<step>` atomically; keep the newest `save_total_limit` (0: all).
    `extra` goes into trainer_state.pt (what a resumed run reads), `config` and `run` (plain facts such as
    the chosen rollout dtype) into trainer_state.json."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_dirs(output_dir)
    target = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{step}-", dir=output_dir))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        state = {
            "step": step,
            "data_position": data_position,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": capture_rng_state(),
            "extra": extra or {},
        }
        torch.save(state, tmp / STATE_FILE)
        summary = {"step": step, "data_position": data_position, "config": config or {}}
        if run:
            summary["run"] = run
        (tmp / STATE_JSON).write_text(json.dumps(summary, indent=2, default=str))
        _fsync_tree(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Saved checkpoint %s", target)
    if save_total_limit:
        prune_checkpoints(output_dir, save_total_limit)
    return target


def save_final_model(output_dir: str | os.PathLike, *, model, tokenizer, name: str = "final") -> Path:
    """The trained model alone (`save_pretrained` + tokenizer) at `output_dir/final`, atomically: a
    stable path for evaluation (`python -m awpo.eval --model runs/awpo/final`) and for vLLM."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-", dir=output_dir))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _fsync_tree(tmp)
        _replace_dir(tmp, output_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Saved the final model to %s", output_dir / name)
    return output_dir / name


def _replace_dir(src: Path, target: Path) -> None:
    """Rename `src` to `target`; an existing `target` (a re-run of that step) is swapped out first."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}old-", dir=target.parent))
        os.rename(target, trash / target.name)
        os.rename(src, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(src, target)
    _fsync_dir(target.parent)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        _fsync_dir(path)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_tmp_dirs(output_dir: Path) -> None:
    for path in output_dir.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# find, prune, load
# ----------------------------------------------------------------------------------------------

def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step of a checkpoint directory named `checkpoint-<step>` (as `save_checkpoint` names them)."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not named {CHECKPOINT_PREFIX}<step>")
    return int(match.group(1))


def checkpoints_after(output_dir: str | os.PathLike, step: int | None) -> list[Path]:
    """The checkpoints in `output_dir` newer than `step` (all of them when `step` is None)."""
    return [path for path in list_checkpoints(output_dir) if step is None or checkpoint_step(path) > step]


def remove_checkpoints(paths) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("Removed checkpoint %s", path)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    checkpoints = list_checkpoints(output_dir)
    remove_checkpoints(checkpoints[:-keep] if keep > 0 else [])


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `--resume` names: '' -> None, 'latest' -> newest in output_dir, or a directory."""
    if not resume:
        return None
    if resume == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            raise FileNotFoundError(f"--resume latest: no checkpoint in {output_dir}")
        return path
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume!r}: not a checkpoint directory (no {STATE_FILE})")
    return path


def load_trainer_state(path: str | os.PathLike) -> dict:
    """The `trainer_state.pt` of a checkpoint (plain tensors and numbers: loaded with weights_only).
    An unreadable file (disk corruption, a foreign file) raises ValueError naming the checkpoint."""
    try:
        return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); resume from "
                         f"an earlier checkpoint with --resume DIR") from err


def resumed_rollout_dtype(state: dict, learner_dtype: str) -> tuple[str, str]:
    """(dtype, reason): the rollout dtype of the run a `load_trainer_state` state comes from. A checkpoint
    written before the trainer recorded it (no `extra['rollout_dtype']`) sampled with vLLM in the learner's
    `dtype` (float32 by default)."""
    stored = (state.get("extra") or {}).get("rollout_dtype")
    if stored is None:
        return learner_dtype, "resumed from a checkpoint that predates rollout_dtype: vLLM ran in dtype"
    return str(stored), "resumed: the checkpoint's rollout dtype"


def restore_training_state(state: dict, *, optimizer, scheduler) -> None:
    """Optimizer and scheduler states from `load_trainer_state` (the model loads from the dir). The RNG
    states are restored separately (`restore_rng_state(state["rng"])`), after anything that reseeds the
    generators, such as starting vLLM."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
