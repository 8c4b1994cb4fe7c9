"""Peak memory of one call of a case, over what the inputs and parameters already hold.

- CUDA: `torch.cuda.max_memory_allocated` around one call, in this process.
- CPU: peak resident set size of the case run in a fresh subprocess. glibc's malloc would keep freed
  blocks below its (growing) mmap threshold and reuse them unseen; the subprocess fixes that threshold
  at 64 KiB (`MALLOC_MMAP_THRESHOLD_`), so every tensor above it is its own mapping and its pages come
  and go with it. The peak counter is reset (`/proc/self/clear_refs`) after a warm-up call, so
  compilation and one-time process state are not counted.

The number includes what a call returns and keeps (gradients, per-token outputs): for the fused loss
the floor is the weight gradient itself plus one logits chunk.

Subprocess entry point: `python -m benchmarks.memory --op OP --impl IMPL --shape NAME` prints one JSON line.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU_METHOD = "peak RSS, fresh subprocess"
CUDA_METHOD = "torch.cuda.max_memory_allocated"


@dataclass
class MemoryResult:
    extra_bytes: int  # peak during one call minus the memory held before it (inputs + parameters)
    base_bytes: int   # memory held before the call
    method: str


# ----------------------------------------------------------------------------- CUDA, in process

def measure_cuda(case) -> MemoryResult:
    """Call the (already warmed-up) case once and read the allocator's peak."""
    case.reset()
    gc.collect()
    torch.cuda.synchronize(case.device)
    base = torch.cuda.memory_allocated(case.device)
    torch.cuda.reset_peak_memory_stats(case.device)
    case.run()
    peak = torch.cuda.max_memory_allocated(case.device)
    case.reset()
    return MemoryResult(peak - base, base, CUDA_METHOD)


# ----------------------------------------------------------------------------- CPU, resident set size

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line")
    return int(match.group(1))


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # "5" resets the VmHWM high-water mark to the current RSS


def measure_rss_here(case) -> MemoryResult:
    """Peak RSS of one call over the RSS before it, in the current process (Linux only).

    Meant for a fresh process started by `measure_cpu_subprocess`. The case is called once first:
    compilation and one-time process state (thread pools, library caches) are not the op's memory.
    """
    case.run()
    case.reset()
    gc.collect()
    _reset_peak_rss()
    base = _status_kib("VmRSS")
    case.run()
    peak = _status_kib("VmHWM")
    case.reset()
    return MemoryResult((peak - base) * 1024, base * 1024, CPU_METHOD)


def measure_cpu_subprocess(op: str, impl: str, shape_name: str, compile_backend: str = "inductor",
                           seed: int = 0, timeout: float = 900.0) -> MemoryResult:
    """Build and run the case in a fresh Python; raises RuntimeError with its stderr if it fails."""
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "benchmarks.memory", "--op", op, "--impl", impl, "--shape", shape_name,
               "--compile-backend", compile_backend, "--seed", str(seed)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last_lines = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"memory subprocess for {op}/{impl}/{shape_name} failed: {last_lines}")
    return MemoryResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def measure(case, compile_backend: str = "inductor", seed: int = 0) -> MemoryResult:
    """Peak extra memory of `case` by the method of its device (see the module docstring)."""
    if case.device.type == "cuda":
        return measure_cuda(case)
    if not sys.platform.startswith("linux"):
        raise RuntimeError("CPU peak memory is read from /proc: Linux only")
    return measure_cpu_subprocess(case.op, case.impl, case.shape.name, compile_backend, seed)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="peak extra RSS of one benchmark case (CPU), as JSON")
    parser.add_argument("--op", required=True)
    parser.add_argument("--impl", required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from .cases import CaseOptions, build_case_by_name

    case = build_case_by_name(args.op, args.impl, args.shape, "cpu",
                              CaseOptions(compile_backend=args.compile_backend, seed=args.seed))
    print(json.dumps(asdict(measure_rss_here(case))))


if __name__ == "__main__":
    main()
