"""pytest-benchmark wiring: every (shape, implementation) of a file's `OP` becomes one benchmark.

Run `pytest benchmarks/ --benchmark-only` (add `--benchmark-group-by=group` to compare implementations
per shape). Environment variables choose what runs:
  AWPO_BENCH_DEVICE           cpu | cuda (default: cuda when available)
  AWPO_BENCH_SHAPES           default | smoke | all | comma-separated names (benchmarks/shapes.py)
  AWPO_BENCH_ROUNDS           timed rounds per LM-head case (default 3; the advantage op gets >= 100)
  AWPO_BENCH_COMPILE_BACKEND  torch.compile backend of the compiled baselines (default inductor)
  AWPO_BENCH_MEMORY=1         also record each case's peak extra memory in the benchmark's extra_info
"""
from __future__ import annotations

import os

import pytest
import torch

from .cases import CaseOptions, build_case, implementations, make_inputs
from .shapes import select_shapes

DEVICE = os.environ.get("AWPO_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
SHAPES = os.environ.get("AWPO_BENCH_SHAPES", "default")
ROUNDS = int(os.environ.get("AWPO_BENCH_ROUNDS", "3"))
OPTIONS = CaseOptions(compile_backend=os.environ.get("AWPO_BENCH_COMPILE_BACKEND", "inductor"))
RECORD_MEMORY = os.environ.get("AWPO_BENCH_MEMORY", "0") == "1"


def pytest_generate_tests(metafunc):
    if "bench_params" not in metafunc.fixturenames:
        return
    op = metafunc.module.OP
    kind = "groups" if op == "group_advantages" else "lm_head"
    params = [(op, shape, impl) for shape in select_shapes(kind, DEVICE, SHAPES)
              for impl in implementations(op, DEVICE)]
    metafunc.parametrize("bench_params", params, ids=[f"{shape.name}-{impl}" for _, shape, impl in params])


class _InputsCache:
    """Inputs of the last (op, shape) only: tests run shape by shape, and a GPU shape's weight is ~1 GB."""

    def __init__(self):
        self.key, self.inputs = None, None

    def get(self, op, shape):
        if self.key != (op, shape.name):
            self.key, self.inputs = None, None  # free the old inputs before building the new ones
            self.key, self.inputs = (op, shape.name), make_inputs(op, shape, torch.device(DEVICE), OPTIONS.seed)
        return self.inputs


@pytest.fixture(scope="session")
def inputs_cache():
    return _InputsCache()


@pytest.fixture
def bench_case(bench_params, inputs_cache):
    op, shape, impl = bench_params
    case = build_case(op, impl, shape, inputs_cache.get(op, shape), OPTIONS)
    yield case
    case.reset()


@pytest.fixture
def run_benchmark(benchmark):
    """Time a case with pytest-benchmark (one call per round, `reset` untimed) and return its summary."""

    def run(case):
        benchmark.group = f"{case.op} {case.shape.name}"
        benchmark.extra_info.update(shape=case.shape.describe(), useful_flops=case.flops, device=DEVICE)
        # The advantage op takes microseconds: many more rounds cost nothing and steady the median.
        rounds = ROUNDS if case.flops else max(ROUNDS, 100)
        benchmark.pedantic(case.run, setup=case.reset, rounds=rounds, warmup_rounds=1, iterations=1)
        if case.kept is None:  # pedantic keeps the last round's outputs; this is only a safety net
            case.run()
        summary = case.summary()
        if RECORD_MEMORY:
            from .memory import measure
            benchmark.extra_info["peak_extra_mib"] = measure(case, OPTIONS.compile_backend).extra_bytes / 2 ** 20
        return summary

    return run
