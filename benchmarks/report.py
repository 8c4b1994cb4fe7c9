"""`python -m benchmarks.report`: time and peak memory of every implementation, as markdown tables.

One table per op and shape: the median time, the peak extra memory, both as ratios to the op's
baseline (the materialised-logits PyTorch version) and the time as a ratio to the bare LM-head
GEMMs; on CUDA also TFLOP/s counted as 6NHV (2NHV forward only) and as a fraction of a bf16 matmul
measured in the same run. Then the targets of docs/TARGETS.md, met or missed and by how much.

The tables go to stdout and into a section of `benchmarks/RESULTS.md` (or `--output FILE`) between
markers named after the device, so a CPU run and a GPU run each replace only their own section.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import baselines, memory
from .cases import BASELINE, FLOOR, OPS, CaseOptions, build_case, implementations, make_inputs, useful_flops
from .shapes import select_shapes
from .timing import Failure, Timing, describe_error, time_cases

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "RESULTS.md"
MIB = 2 ** 20
TITLES = {"fused_linear_policy_loss": "fused_linear_policy_loss, forward + backward",
          "linear_logprobs": "linear_logprobs, forward (no grad)",
          "group_advantages": "group_advantages (AWPO estimator, with reasoning scores)"}


@dataclass
class ShapeResult:
    op: str
    shape: object
    timings: dict   # impl -> Timing | Failure
    memories: dict  # impl -> MemoryResult | Failure (absent when memory was not measured)


def log(message: str) -> None:
    print(f"[benchmarks.report] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- measuring

def measure_shape(op, shape, device, args) -> ShapeResult:
    options = CaseOptions(compile_backend=args.compile_backend)
    inputs = make_inputs(op, shape, device, seed=options.seed)
    cases, timings = [], {}
    for impl in implementations(op, device.type, args.chunk_sizes):
        if args.impls and impl not in args.impls and not impl.startswith("awpo-chunk"):
            continue
        if impl in args.exclude_impls:
            continue
        try:
            cases.append(build_case(op, impl, shape, inputs, options))
        except Exception as exc:  # e.g. a baseline whose import fails on this machine
            timings[impl] = Failure(describe_error(exc))
    timings.update(time_cases(cases, rounds=args.rounds, warmup=args.warmup, progress=log))
    memories = {}
    if not args.no_memory:
        for case in cases:
            if isinstance(timings.get(case.impl), Failure):
                continue
            log(f"memory {op} / {case.impl} / {shape.name}")
            try:
                memories[case.impl] = memory.measure(case, compile_backend=args.compile_backend)
            except Exception as exc:
                memories[case.impl] = Failure(describe_error(exc))
    del cases, inputs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ShapeResult(op, shape, timings, memories)


def environment(device, matmul_tflops) -> list[str]:
    import awpo_kernels

    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        where = f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    lines = [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {where}",
        f"- python {platform.python_version()}, torch {torch.__version__}, triton {triton_version}, "
        f"awpo_kernels {awpo_kernels.__version__}, liger-kernel {baselines.liger_version() or 'not installed'}",
    ]
    if matmul_tflops is not None:
        lines.append(f"- bf16 matmul 8192^3 in this run: {matmul_tflops:.0f} TFLOP/s")
    if hasattr(os, "getloadavg"):  # on a shared machine, other work inflates and spreads the times
        lines.append(f"- load average at the end of the run (1/5/15 min): "
                     f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return lines


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ----------------------------------------------------------------------------- rendering

def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def _ratio(value, reference) -> str:
    return "–" if value is None or not reference else f"{value / reference:.2f}x"


def _agreement(summary, reference) -> str:
    """Largest relative difference of the case's scalars (loss, grad norms, ...) to the baseline's."""
    if summary is None or reference is None:
        return "–"
    worst = max(abs(summary[k] - reference[k]) / max(abs(reference[k]), 1e-6) for k in reference)
    return f"{worst:.1e}"


def _seconds(timing):
    return timing.seconds if isinstance(timing, Timing) else None


def _extra(mem):
    return mem.extra_bytes if isinstance(mem, memory.MemoryResult) else None


def render_table(result: ShapeResult, device, matmul_tflops) -> list[str]:
    op, shape = result.op, result.shape
    baseline = BASELINE[op]
    base_time = _seconds(result.timings.get(baseline))
    base_mem = _extra(result.memories.get(baseline))
    base_summary = getattr(result.timings.get(baseline), "summary", None)
    floor_time = _seconds(result.timings.get(FLOOR))
    lm_head = op != "group_advantages"
    on_cuda = device.type == "cuda"
    header = ["implementation", "time ms (median [min-max])", f"time / {baseline}"]
    if lm_head:
        header.append("time / LM-head GEMMs")
    header += ["peak extra MiB", f"memory / {baseline}", "max rel. diff"]
    if on_cuda and lm_head:
        header += [f"TFLOP/s ({6 if op == 'fused_linear_policy_loss' else 2}NHV)", "of bf16 matmul"]
    lines = [f"#### {TITLES[op]}: `{shape.name}`", "", shape.describe(), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for impl, timing in result.timings.items():
        if isinstance(timing, Failure):
            lines.append(f"| {impl} | failed: {timing.error} |" + " |" * (len(header) - 2))
            continue
        mem = result.memories.get(impl)
        mem_text = f"failed: {mem.error}" if isinstance(mem, Failure) else (
            "–" if mem is None else f"{mem.extra_bytes / MIB:.1f}")
        row = [impl, f"{_ms(timing.seconds)} [{_ms(timing.fastest)}-{_ms(timing.slowest)}]",
               _ratio(timing.seconds, base_time)]
        if lm_head:
            row.append(_ratio(timing.seconds, floor_time))
        row += [mem_text, _ratio(_extra(mem), base_mem), _agreement(timing.summary, base_summary)]
        if on_cuda and lm_head:
            tflops = useful_flops(op, shape) / timing.seconds / 1e12
            row += [f"{tflops:.0f}" if tflops else "–",
                    f"{tflops / matmul_tflops:.0%}" if tflops and matmul_tflops else "–"]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def _target_checks(result, device) -> list:
    """(label, value, reference, sense, target) of docs/TARGETS.md for one fused-loss table."""
    def time_of(impl):
        return _seconds(result.timings.get(impl))

    def memory_of(impl):
        return _extra(result.memories.get(impl))

    if device.type == "cuda":
        return [("time / LM-head GEMMs", time_of("awpo"), time_of(FLOOR), "<=", 1.2),
                (f"fastest awpo variant ({_fastest_awpo(result)}) / LM-head GEMMs",
                 time_of(_fastest_awpo(result)), time_of(FLOOR), "<=", 1.2),
                ("materialised time / fused time", time_of("materialised"), time_of("awpo"), ">=", 2.0),
                ("Liger time / fused time", time_of("liger"), time_of("awpo"), ">=", 2.0)]
    return [("peak extra memory / materialised", memory_of("awpo"), memory_of("materialised"), "<=", 0.1),
            ("time / materialised", time_of("awpo"), time_of("materialised"), "<=", 0.7)]


def _fastest_awpo(result) -> str:
    """The fastest measured row of the library (default, overlap, chunk-size variants; not the torch path)."""
    timed = {impl: t.seconds for impl, t in result.timings.items()
             if isinstance(t, Timing) and impl.startswith("awpo") and impl != "awpo-torch"}
    return min(timed, key=timed.get) if timed else "awpo"


def render_targets(results, device) -> list[str]:
    """The fused loss's targets: each measured ratio, met or missed and by how much."""
    lines = []
    for result in results:
        if result.op != "fused_linear_policy_loss":
            continue
        name = f"`{result.shape.name}`"
        if device.type == "cuda":
            lines.append(_workspace_verdict(name, result))
        for label, value, reference, sense, target in _target_checks(result, device):
            if value is None or not reference:
                lines.append(f"- {name} {label}: not measured")
                continue
            ratio = value / reference
            met = ratio <= target if sense == "<=" else ratio >= target
            miss = ratio / target if sense == "<=" else target / ratio
            verdict = "met" if met else f"MISSED by {miss:.2f}x"
            lines.append(f"- {name} {label} = {ratio:.3f} (target {sense} {target}): {verdict}")
    return lines


def _workspace_verdict(name, result) -> str:
    """GPU target: the fused op's memory beyond its gradients and its fp32 weight-gradient sum (kept in
    fp32 on purpose, for bf16 weights) stays within one logits chunk (1 GiB)."""
    label = "workspace (peak extra - gradients - fp32 weight-gradient sum)"
    fused_mem = _extra(result.memories.get("awpo"))
    if fused_mem is None:
        return f"- {name} {label}: not measured"
    shape = result.shape
    gradients = (shape.tokens + shape.vocab) * shape.hidden * shape.dtype.itemsize
    weight_sum = 0 if shape.dtype == torch.float32 else shape.vocab * shape.hidden * 4
    workspace = (fused_mem - gradients - weight_sum) / 2 ** 30
    verdict = "met" if workspace <= 1.0 else f"MISSED by {workspace:.2f}x"
    return f"- {name} {label} = {workspace:.2f} GiB (target <= 1 GiB): {verdict}"


def render(results, device, matmul_tflops, args) -> str:
    memory_text = "not measured" if args.no_memory else (
        (memory.CUDA_METHOD if device.type == "cuda" else memory.CPU_METHOD)
        + ", extra over inputs and parameters (gradients and outputs included)")
    lines = environment(device, matmul_tflops) + [
        f"- timing: median of {args.rounds} interleaved rounds after {args.warmup} warm-up call(s); "
        f"memory: {memory_text}",
        "- `awpo` = the library's default backend (Triton on CUDA, chunked torch on CPU); "
        "`max rel. diff` = loss / gradient-norm / output scalars against the baseline's", ""]
    for result in results:
        lines += render_table(result, device, matmul_tflops)
    targets = render_targets(results, device)
    if targets:
        lines += ["Targets (docs/TARGETS.md), fused_linear_policy_loss:", "", *targets, ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the results file

def write_section(path: Path, key: str, body: str) -> None:
    """Replace the text between this key's markers in `path` (append them when absent)."""
    begin, end = f"<!-- benchmarks.report:{key} begin -->", f"<!-- benchmarks.report:{key} end -->"
    section = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section + "\n"
    path.write_text(text, encoding="utf-8")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated ops (default: all)")
    parser.add_argument("--shapes", default="default", help="'default', 'smoke', 'all' or comma-separated names")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3 on CPU, 10 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 1 CPU, 3 CUDA)")
    parser.add_argument("--impls", default="", help="comma-separated implementations to run (default: all "
                        "available; keep the baseline, the ratios are taken against it)")
    parser.add_argument("--exclude-impls", default="", help="comma-separated implementations to leave out "
                        "(names that are not available here are ignored)")
    parser.add_argument("--section", default=None, help="name of the results-file section to replace (default: "
                        "the device, plus ':SHAPES' when --shapes is not 'default')")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--chunk-sizes", default="", help="comma-separated rows per chunk: adds awpo-chunkROWS rows "
                        "(the default backend with chunk_size=ROWS) to the LM-head tables, a chunk-size sweep")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the baselines")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file to write the section to")
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    args.rounds = args.rounds or (10 if on_cuda else 3)
    args.warmup = args.warmup or (3 if on_cuda else 1)
    if args.rounds < 1 or args.warmup < 1:
        parser.error("--rounds and --warmup must be >= 1")
    args.impls = [impl.strip() for impl in args.impls.split(",") if impl.strip()]
    args.exclude_impls = {impl.strip() for impl in args.exclude_impls.split(",") if impl.strip()}
    try:
        args.chunk_sizes = [int(rows) for rows in args.chunk_sizes.split(",") if rows.strip()]
    except ValueError:
        parser.error(f"--chunk-sizes must be comma-separated integers; got {args.chunk_sizes!r}")
    if any(rows < 1 for rows in args.chunk_sizes):
        parser.error("--chunk-sizes must be >= 1")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    for op in ops:
        if op not in OPS:
            raise SystemExit(f"--ops: unknown op {op!r}; known: {', '.join(OPS)}")
    known = {impl for op in ops for impl in implementations(op, args.device)}
    unknown = [impl for impl in args.impls if impl not in known]
    if unknown:
        raise SystemExit(f"--impls: {', '.join(unknown)} not available here; known: {', '.join(sorted(known))}")
    planned = [(op, shape) for op in ops
               for shape in select_shapes("groups" if op == "group_advantages" else "lm_head",
                                          args.device, args.shapes)]
    if not planned:
        raise SystemExit(f"--shapes {args.shapes!r} selects no shape for --ops {args.ops!r}")
    matmul = baselines.matmul_tflops(device) if device.type == "cuda" else None
    key = args.section
    if key is None:
        key = device.type if args.shapes == "default" else f"{device.type}:{args.shapes}"
    results = []
    for index, (op, shape) in enumerate(planned):
        log(f"{op} at {shape.name} ({index + 1}/{len(planned)})")
        results.append(measure_shape(op, shape, device, args))
        if index + 1 < len(planned):  # a run cut short (time limit) still leaves the shapes done so far
            partial = f"- PARTIAL: {index + 1} of {len(planned)} tables measured so far\n"
            write_section(args.output, key, partial + render(results, device, matmul, args))
    markdown = render(results, device, matmul, args)
    print(markdown)
    write_section(args.output, key, markdown)
    log(f"wrote the '{key}' section of {args.output}")
    return markdown


if __name__ == "__main__":
    main()
