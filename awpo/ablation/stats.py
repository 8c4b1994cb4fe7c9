"""The statistics of the ablation report: a t-interval over seeds and a paired bootstrap over tasks.

Two sources of noise, two intervals. Seeds: training is stochastic, so a variant's accuracy is a
draw per seed; the t-interval over the per-seed accuracies covers that (wide with 3 seeds: the t
quantile is 4.30). Tasks: the held-out set is a sample of tasks; the bootstrap resamples tasks, the
same resample for every run, so differences between variants are paired task by task.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _t_pdf(x: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf_above_zero(x: float, df: int, intervals: int = 4000) -> float:
    """P(0 <= T <= x) for x >= 0, by Simpson's rule (the density is smooth; 4000 intervals give ~1e-10)."""
    h = x / intervals
    total = _t_pdf(0.0, df) + _t_pdf(x, df)
    total += 4 * sum(_t_pdf((2 * i - 1) * h, df) for i in range(1, intervals // 2 + 1))
    total += 2 * sum(_t_pdf(2 * i * h, df) for i in range(1, intervals // 2))
    return total * h / 3


def t_quantile(probability: float, df: int) -> float:
    """The `probability` quantile of Student's t with `df` degrees of freedom (probability in (0.5, 1))."""
    if not 0.5 < probability < 1.0:
        raise ValueError(f"probability must be in (0.5, 1), got {probability!r}")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be an int >= 1, got {df!r}")
    target = probability - 0.5
    low, high = 0.0, 1.0
    while _t_cdf_above_zero(high, df) < target:  # heavy tails at df=1: grow the bracket
        high *= 2.0
    for _ in range(60):
        middle = (low + high) / 2
        if _t_cdf_above_zero(middle, df) < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


@dataclass
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean of `values` with its `confidence` t-interval; a single value has an interval of NaN."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("t_interval needs a non-empty 1-D sequence of values")
    mean = float(values.mean())
    if values.size < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = t_quantile(0.5 + confidence / 2, values.size - 1) * float(values.std(ddof=1)) / math.sqrt(values.size)
    return Interval(mean, mean - half, mean + half, int(values.size))


def paired_bootstrap(scores, baseline=None, *, confidence: float = 0.95, resamples: int = 10_000,
                     seed: int = 0) -> Interval:
    """Percentile bootstrap over tasks of the seed-averaged accuracy (or of its difference to a baseline).

    `scores [seeds, tasks]`: one row of per-task scores per run; `baseline` the same shape (paired by
    seed and by task), or None. Each resample draws tasks with replacement, the same draw for every
    row and for the baseline, and averages over tasks then seeds.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError("scores must be [seeds, tasks] with at least one task")
    if baseline is not None:
        baseline = np.asarray(baseline, dtype=np.float64)
        if baseline.shape != scores.shape:
            raise ValueError(f"baseline has shape {baseline.shape}, scores {scores.shape}: they must pair up")
        scores = scores - baseline
    per_task = scores.mean(axis=0)  # averaging over seeds first: the statistic is linear, so this is exact
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, per_task.size, size=(resamples, per_task.size))
    means = per_task[draws].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(per_task.mean()), float(low), float(high), int(per_task.size))
