"""`python -m benchmarks.profile`: where the time of one fused-loss call goes, and which settings are fastest.

For one call of `fused_linear_policy_loss` (forward + backward) at a benchmark shape (default: the
Qwen3-4B vocabulary, N=16384, H=2560, V=151936, bf16 on CUDA) it prints:

1. the mixed-precision GEMM probes (bf16 / fp16 operands with fp32 output and accumulation), checked
   against exact products; on CUDA a failed probe ends the run with exit status 3 (the loss would run
   fp32 GEMMs, ~10x slower), after the rest of the report;
2. the wall time of the call against the bare LM-head GEMMs (the floor: three GEMMs, no softmax);
3. a per-phase breakdown from torch.profiler (forward GEMM, epilogue, grad-hidden GEMM, weight-gradient
   GEMM, and the rest: fills, casts, the upstream-gradient scaling, the loss value and metrics), the
   same for the floor's three GEMMs, and the kernels that took the time;
4. the epilogue's achieved bandwidth (bytes it must move per call / its kernel time);
5. with `--sweep`: every variant of the tuning switches (chunk sizes, the two-stream overlap, the
   epilogue's block sizes and warps), each timed in this process against the floor.

The report goes to stdout, and with `--output` to a markdown file, `--json` to a JSON file. On CPU
(the CI smoke run) the same report is made from CPU times.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

import awpo_kernels
from awpo_kernels import _chunked, _matmul

from .cases import make_lm_head_inputs
from .shapes import LMHeadShape, shape_by_name

OTHER = "rest (fills, casts, grad scaling, loss value, metrics)"
PHASE_LABELS = dict(zip(_chunked.PHASES, ("forward GEMM (logits)", "epilogue", "grad-hidden GEMM",
                                          "weight-gradient GEMM")))
FLOOR_PHASES = ("floor::logits_gemm", "floor::grad_hidden_gemm", "floor::grad_weight_gemm")
# Launch configurations of the epilogue tried by --sweep: (BLOCK_ROWS, BLOCK_V, num_warps). Every one is
# compiled for Hopper in tests/kernels/test_compile_for_hopper.py.
EPILOGUE_SWEEP = [(1, 2048, 4), (1, 4096, 8), (1, 8192, 8), (1, 8192, 16), (2, 2048, 8), (4, 1024, 8)]


@dataclass
class Report:
    device: str
    shape: str
    lines: list = field(default_factory=list)
    data: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def table(self, header, rows) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        for row in rows:
            self.add("| " + " | ".join(str(cell) for cell in row) + " |")
        self.add("")


# ----------------------------------------------------------------------------- timing

def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device, calls: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` (synchronised), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(calls):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def fused_step(inputs, **options):
    """One forward + backward of the fused loss; gradients dropped before the next call."""
    def step():
        inputs.hidden.grad = inputs.weight.grad = None
        out = awpo_kernels.fused_linear_policy_loss(inputs.hidden, inputs.weight, inputs.targets, inputs.advantages,
                                                    loss_type="grpo", **options)
        out.loss.backward()
    return step


def floor_step(inputs):
    """The bare LM-head GEMMs (as benchmarks.baselines.lm_head_gemms), each in a profiler range."""
    hidden = inputs.hidden.detach().reshape(-1, inputs.hidden.shape[-1])
    weight = inputs.weight.detach()

    def step():
        with torch.profiler.record_function(FLOOR_PHASES[0]):
            logits = hidden @ weight.T
        with torch.profiler.record_function(FLOOR_PHASES[1]):
            grad_hidden = logits @ weight
        with torch.profiler.record_function(FLOOR_PHASES[2]):
            grad_weight = logits.T @ hidden
        return grad_hidden, grad_weight
    return step


@contextlib.contextmanager
def environment(**variables):
    """Set (value) or unset (None) environment variables for the block, then restore them."""
    saved = {name: os.environ.get(name) for name in variables}
    try:
        for name, value in variables.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, str(value))
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


# ----------------------------------------------------------------------------- profiler parsing

def _subtree_kernel_us(event) -> float:
    """Device time (us) of the kernels launched inside a CPU event and its children."""
    own = sum(kernel.duration for kernel in event.kernels)
    return own + sum(_subtree_kernel_us(child) for child in event.cpu_children)


def _is_device_kernel(event) -> bool:
    return event.device_type != torch.autograd.DeviceType.CPU and not getattr(event, "is_user_annotation", False) \
        and not event.name.startswith(("awpo::", "floor::"))


def profile_calls(step, device, calls: int, ranges) -> dict:
    """Run `step` `calls` times under torch.profiler -> per-call microseconds by range name, 'total', and
    'kernels' {name: us per call} (device kernels on CUDA, self CPU time of ops on CPU)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    synchronize(device)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            step()
        synchronize(device)
    events = prof.events()
    on_cuda = device.type == "cuda"
    result = {name: 0.0 for name in ranges}
    for event in events:
        if event.name in result and event.device_type == torch.autograd.DeviceType.CPU:
            result[event.name] += _subtree_kernel_us(event) if on_cuda else event.cpu_time_total
    kernels = {}
    for event in events:
        if on_cuda and _is_device_kernel(event):
            kernels[event.name] = kernels.get(event.name, 0.0) + event.time_range.elapsed_us()
        elif not on_cuda and event.device_type == torch.autograd.DeviceType.CPU and event.name.startswith("aten::"):
            kernels[event.name] = kernels.get(event.name, 0.0) + event.self_cpu_time_total
    per_call = {name: value / calls for name, value in result.items()}
    per_call["kernels"] = {name: value / calls for name, value in kernels.items()}
    per_call["total"] = sum(per_call["kernels"].values()) if on_cuda else sum(per_call[name] for name in ranges)
    return per_call


# ----------------------------------------------------------------------------- sections

def probe_section(report: Report, device) -> None:
    report.add("## Mixed-precision GEMM probes", "")
    rows, ok = [], True
    for dtype in (torch.bfloat16, torch.float16):
        _matmul._mixed_gemms_available.cache_clear()
        mm_ok, addmm_ok = _matmul.mixed_gemms_available(device, dtype, verify_values=True)
        rows.append((str(dtype).replace("torch.", ""), "ok" if mm_ok else "FAILED", "ok" if addmm_ok else "FAILED"))
        ok = ok and mm_ok and addmm_ok
    report.table(("operands", "mm -> fp32", "addmm into fp32"), rows)
    report.data["probes"] = rows
    if device.type == "cuda" and not ok:
        report.failed.append("mixed-precision GEMM probe")
        report.add("**PROBE FAILED: the LM-head GEMMs would run in fp32 (about 10x slower). Check torch >= 2.8.**", "")


def timing_section(report: Report, inputs, device, calls: int) -> tuple[float, float]:
    fused = median_seconds(fused_step(inputs), device, calls, warmup=2)
    floor = median_seconds(floor_step(inputs), device, calls, warmup=2)
    report.add("## Wall time of one call (median)", "")
    report.table(("what", "ms", "/ floor"), [("fused_linear_policy_loss, forward + backward", f"{fused * 1e3:.2f}",
                                              f"{fused / floor:.3f}x"),
                                             ("bare LM-head GEMMs (floor)", f"{floor * 1e3:.2f}", "1.000x")])
    report.data.update(fused_ms=fused * 1e3, floor_ms=floor * 1e3, ratio=fused / floor)
    return fused, floor


def epilogue_bytes(inputs, dz_bytes: int) -> int:
    """What the Triton epilogue must move per call: the fp32 logits of rows in the loss read twice (two
    passes), d(logits) written for every row (zeros for ignored rows, which are never read)."""
    vocab = inputs.weight.shape[0]
    valid = int((inputs.targets != -100).sum())
    return valid * vocab * 4 * 2 + inputs.targets.numel() * vocab * dz_bytes


def breakdown_section(report: Report, inputs, device, calls: int) -> None:
    _chunked.annotate_phases = True
    try:
        ours = profile_calls(fused_step(inputs), device, calls, _chunked.PHASES)
    finally:
        _chunked.annotate_phases = False
    floor = profile_calls(floor_step(inputs), device, calls, FLOOR_PHASES)
    epilogue = _chunked.PHASES[1]
    if device.type == "cuda" and ours[epilogue] == 0:  # the Triton launch was not linked to its range
        ours[epilogue] = sum(us for name, us in ours["kernels"].items() if "epilogue_kernel" in name)
    unit = "device" if device.type == "cuda" else "CPU"
    rest = max(0.0, ours["total"] - sum(ours[name] for name in _chunked.PHASES))
    rows = [(PHASE_LABELS[name], f"{ours[name] / 1e3:.2f}", f"{ours[name] / max(ours['total'], 1e-9):.1%}")
            for name in _chunked.PHASES] + [(OTHER, f"{rest / 1e3:.2f}", f"{rest / max(ours['total'], 1e-9):.1%}"),
                                            ("total", f"{ours['total'] / 1e3:.2f}", "100%")]
    report.add(f"## Per-phase {unit} time of one call (torch.profiler, mean of {calls} calls)", "")
    report.table(("phase", "ms", "share"), rows)
    floor_rows = [(name.split("::")[1], f"{floor[name] / 1e3:.2f}") for name in FLOOR_PHASES]
    report.table(("floor GEMM", "ms"), floor_rows + [("total", f"{floor['total'] / 1e3:.2f}")])
    top = sorted(ours["kernels"].items(), key=lambda item: -item[1])[:12]
    report.add(f"Top {'kernels' if device.type == 'cuda' else 'ops'} of the fused call:", "")
    report.table(("kernel", "ms per call"), [(name[:90].replace("|", "/"), f"{us / 1e3:.3f}") for name, us in top])
    report.data["phases_ms"] = {PHASE_LABELS[n]: ours[n] / 1e3 for n in _chunked.PHASES} | {OTHER: rest / 1e3}
    report.data["floor_phases_ms"] = {n: floor[n] / 1e3 for n in FLOOR_PHASES}
    bandwidth_section(report, inputs, device, ours[_chunked.PHASES[1]])


def bandwidth_section(report: Report, inputs, device, epilogue_us: float) -> None:
    if device.type != "cuda" or epilogue_us <= 0:
        return
    moved = epilogue_bytes(inputs, dz_bytes=2 if inputs.weight.dtype in _matmul.LOW_PRECISION else 4)
    logits = inputs.targets.numel() * inputs.weight.shape[0]
    gbps = moved / (epilogue_us * 1e-6) / 1e9
    report.add(f"Epilogue: {moved / 1e9:.1f} GB moved per call ({moved / logits:.1f} bytes per logit), "
               f"{epilogue_us / 1e3:.2f} ms -> **{gbps:.0f} GB/s** achieved", "")
    report.data["epilogue_gbps"] = gbps


def sweep_variants(chunk_sizes) -> list[tuple[str, dict, dict]]:
    """(label, op options, environment) of every variant of the tuning switches."""
    off = dict(AWPO_KERNELS_OVERLAP=None, AWPO_KERNELS_EPILOGUE_BLOCK_ROWS=None, AWPO_KERNELS_EPILOGUE_BLOCK_V=None,
               AWPO_KERNELS_EPILOGUE_NUM_WARPS=None)
    variants = [("default", {}, off), ("overlap", {}, dict(off, AWPO_KERNELS_OVERLAP=1))]
    for rows in chunk_sizes:
        variants.append((f"chunk {rows}", dict(chunk_size=rows), off))
        variants.append((f"chunk {rows} + overlap", dict(chunk_size=rows), dict(off, AWPO_KERNELS_OVERLAP=1)))
    for block_rows, block_v, warps in EPILOGUE_SWEEP:
        variants.append((f"epilogue rows={block_rows} block_v={block_v} warps={warps}", {},
                         dict(off, AWPO_KERNELS_EPILOGUE_BLOCK_ROWS=block_rows, AWPO_KERNELS_EPILOGUE_BLOCK_V=block_v,
                              AWPO_KERNELS_EPILOGUE_NUM_WARPS=warps)))
    return variants


def sweep_section(report: Report, inputs, device, calls: int, chunk_sizes, floor: float) -> None:
    report.add("## Sweep of the tuning switches (each against the floor, this process)", "")
    rows, results = [], {}
    for label, options, variables in sweep_variants(chunk_sizes):
        if device.type != "cuda" and ("overlap" in label or "epilogue" in label):
            continue  # CUDA-only switches: on CPU they change nothing
        try:
            with environment(**variables):
                seconds = median_seconds(fused_step(inputs, **options), device, calls, warmup=1)
        except Exception as exc:  # one variant failing must not lose the others
            rows.append((label, f"failed: {type(exc).__name__}: {str(exc)[:80]}", "–"))
            continue
        results[label] = seconds * 1e3
        rows.append((label, f"{seconds * 1e3:.2f}", f"{seconds / floor:.3f}x"))
    report.table(("variant", "ms", "/ floor"), rows)
    if results:
        best = min(results, key=results.get)
        report.add(f"Fastest: **{best}** ({results[best]:.2f} ms, {results[best] / (floor * 1e3):.3f}x the floor)", "")
    report.data["sweep_ms"] = results


# ----------------------------------------------------------------------------- main

def guarded(report: Report, name: str, section, *args) -> None:
    """Run one section; a failure is reported (and fails the run) without losing the sections after it."""
    try:
        section(*args)
    except Exception as exc:
        traceback.print_exc()
        report.failed.append(name)
        report.add(f"**{name} FAILED: {type(exc).__name__}: {exc}**", "")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default=None, help="benchmark shape name (default: qwen3-4b on CUDA, "
                        "qwen3-4b-vocab-cpu on CPU; 'smoke' for a tiny one)")
    parser.add_argument("--calls", type=int, default=5, help="timed / profiled calls per measurement")
    parser.add_argument("--sweep", action="store_true", help="also time every variant of the tuning switches")
    parser.add_argument("--chunk-sizes", default="1024,1664,2048,3456", help="chunk sizes of the sweep")
    parser.add_argument("--output", type=Path, help="write the report as markdown here")
    parser.add_argument("--json", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    args.shape = args.shape or ("qwen3-4b" if args.device.startswith("cuda") else "qwen3-4b-vocab-cpu")
    try:
        args.chunk_sizes = [int(rows) for rows in args.chunk_sizes.split(",") if rows.strip()]
    except ValueError:
        parser.error(f"--chunk-sizes must be comma-separated integers; got {args.chunk_sizes!r}")
    if args.calls < 1 or any(rows < 1 for rows in args.chunk_sizes):
        parser.error("--calls and --chunk-sizes must be >= 1")
    return args


def write_outputs(report: Report, args) -> None:
    if args.output:
        args.output.write_text("\n".join(report.lines) + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(dict(report.data, device=report.device, shape=report.shape,
                                             failed=report.failed), indent=1), encoding="utf-8")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    shape = shape_by_name(args.shape)
    if not isinstance(shape, LMHeadShape):
        raise SystemExit(f"--shape {args.shape!r} is not an LM-head shape")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report = Report(name, shape.name)
    report.add(f"# Profile of fused_linear_policy_loss on {name}", "",
               f"{shape.describe()}; torch {torch.__version__}, awpo_kernels {awpo_kernels.__version__}", "")
    probe_section(report, device)
    inputs = make_lm_head_inputs(shape, device, requires_grad=True)
    try:
        _, floor = timing_section(report, inputs, device, args.calls)
        guarded(report, "breakdown", breakdown_section, report, inputs, device, args.calls)
        if args.sweep:
            guarded(report, "sweep", sweep_section, report, inputs, device, args.calls, args.chunk_sizes, floor)
    finally:
        write_outputs(report, args)
    if report.failed:
        print(f"python -m benchmarks.profile: FAILED: {', '.join(report.failed)}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
