"""Wall-clock timing of several cases in one process, rounds interleaved.

The CPU machines are shared: load drifts during a run. Timing implementation A for all its rounds and
then B would fold that drift into the A/B ratio; interleaving (A B C, A B C, ...) spreads it evenly.
`Case.run` synchronises CUDA, so a wall clock is exact on both devices.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass


@dataclass
class Timing:
    seconds: float             # median over rounds of the per-call time
    fastest: float
    slowest: float
    rounds: int
    calls_per_round: int
    summary: dict | None       # the case's scalars after its first call (to check impls agree)


@dataclass
class Failure:
    error: str                 # "TypeName: message", shown in the table instead of numbers


def describe_error(exc: BaseException) -> str:
    """One line for a markdown table cell: the type and the first line of the message."""
    first_line = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}".replace("|", "/")


def _per_call_seconds(case, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        case.run()
    elapsed = (time.perf_counter() - start) / calls
    case.reset()
    return elapsed


def _warm_up(case, warmup: int):
    """Untimed calls (compile, autotune, first-touch); returns (seconds of the last one, summary of the first)."""
    seconds, summary = 0.0, None
    for index in range(max(warmup, 1)):
        start = time.perf_counter()
        case.run()
        seconds = time.perf_counter() - start
        if index == 0:
            summary = case.summary()
    case.reset()
    return seconds, summary


def time_cases(cases, rounds: int = 3, warmup: int = 1, min_round_seconds: float = 0.02,
               progress=None) -> dict:
    """{impl: Timing or Failure}. A case that raises is reported as a Failure, the others go on.

    Each case first runs `warmup` (>= 1) times untimed: the first call gives its summary, the last one
    sizes `calls_per_round` so that a round of a fast op lasts at least `min_round_seconds`.
    """
    results, live = {}, []
    for case in cases:
        if progress:
            progress(f"warm-up {case.op} / {case.impl}")
        try:
            last, summary = _warm_up(case, warmup)
        except Exception as exc:  # a baseline that cannot run here (compile failure, OOM) is a result too
            case.reset()
            results[case.impl] = Failure(describe_error(exc))
            continue
        calls = max(1, math.ceil(min_round_seconds / last)) if last > 0 else 1
        live.append((case, calls, summary, []))
        gc.collect()
    for round_index in range(rounds):
        if progress:
            progress(f"round {round_index + 1}/{rounds}")
        for case, calls, _, samples in live:
            samples.append(_per_call_seconds(case, calls))
    for case, calls, summary, samples in live:
        results[case.impl] = Timing(statistics.median(samples), min(samples), max(samples), len(samples), calls,
                                    summary)
    return results
