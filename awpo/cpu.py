"""How many CPU threads torch uses, and whether the CPU has bf16 units.

The trainer uses every core this process may use (its affinity mask), unless the user sets a
number (`--cpu_threads N`, or `OMP_NUM_THREADS`). It does not guess from the load: a transient load
at start-up (a pip install finishing, an editor) once halved the speed of a whole 15-minute run.

bf16 units (`cpu_bf16_unit`): the x86 feature flags `amx_bf16` (AMX tiles, Sapphire Rapids and later) and
`avx512_bf16` (AVX-512 BF16 dot products, Cooper Lake, Zen 4 and later), as the kernel lists them in
/proc/cpuinfo (a feature the kernel has not enabled is not listed). Without those flags a bf16 matmul is
emulated, slower than fp32; `rollout_dtype auto` therefore picks bf16 rollouts only where one is listed.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import torch

# x86 feature flags of bf16 arithmetic units, in /proc/cpuinfo's spelling; the first one present names the unit
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = "/proc/cpuinfo"


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


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's feature flags: the first `flags` line of /proc/cpuinfo (or of the text `cpuinfo`), as a set;
    None where there is no such line (no /proc, or a CPU whose kernel lists no x86 flags)."""
    if cpuinfo is None:
        try:
            with open(CPUINFO, encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return None


def cpu_bf16_unit(flags: Iterable[str] | None = None) -> str | None:
    """The CPU's bf16 unit as its feature flag ('amx_bf16' or 'avx512_bf16'), or None without one.

    `flags`: the feature flags to read (tests pass made-up sets); default: this machine's, from
    /proc/cpuinfo, or where that lists none (no /proc), torch's own probe of the CPU (which reads CPUID)."""
    if flags is None:
        flags = cpu_flags()
        if flags is None:
            return _torch_bf16_probe()
    flags = set(flags)
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def _torch_bf16_probe() -> str | None:
    """torch's CPUID probe (private API, used by torch's inductor and by vLLM's CPU platform): only where
    /proc/cpuinfo is missing, since it cannot tell whether the OS enabled the feature."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        return "avx512_bf16" if probe is not None and probe() else None
    except RuntimeError:
        return None
