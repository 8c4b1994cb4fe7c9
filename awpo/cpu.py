"""How many CPU threads torch uses.

The trainer uses every core this process may use (its affinity mask), unless the user sets a
number (`--cpu_threads N`, or `OMP_NUM_THREADS`). It does not guess from the load: a transient load
at start-up (a pip install finishing, an editor) once halved the speed of a whole 15-minute run.
"""
from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_cpu_threads() -> int:
    """OMP_NUM_THREADS when it is set to a positive integer, else every usable core."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return usable_cores()


def set_cpu_threads(count: int) -> None:
    """torch's intra-op threads. vLLM's CPU worker replaces `torch.set_num_threads` with a no-op
    once it has bound its threads; the underlying setter still works, and the trainer owns the
    process, so it uses that. OMP_NUM_THREADS tells a vLLM started later to keep this count."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"cpu thread count must be an int >= 1, got {count!r}")
    os.environ["OMP_NUM_THREADS"] = str(count)
    torch._C.set_num_threads(count)
