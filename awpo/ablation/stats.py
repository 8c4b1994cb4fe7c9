"""The statistics of the ablation reports: a t-interval over seeds, a paired bootstrap over tasks, the
one-sided paired t-test of the pre-registered evidence round, and Spearman's rank correlation.

Two sources of noise, two intervals. Seeds: training is stochastic, so a variant's accuracy is a
draw per seed; the t-interval over the per-seed accuracies covers that (wide with 3 seeds: the t
quantile is 4.30). Tasks: the held-out set is a sample of tasks; the bootstrap resamples tasks, the
same resample for every run, so differences between variants are paired task by task. The training
run is the unit of replication, so the test (`one_sided_t_test`) is over seeds.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np


def _t_cdf_above_zero(x: float, df: int, intervals: int = 4000) -> float:
    """P(0 <= T <= x) for x >= 0 (x may be inf), by Simpson's rule after substituting x = sqrt(df) tan(theta):
    the density becomes Gamma((df+1)/2) / (Gamma(df/2) sqrt(pi)) * cos(theta)^(df-1) on [0, atan(x/sqrt(df))],
    smooth and bounded however far out x lies (4000 intervals give ~1e-12)."""
    end = math.atan(x / math.sqrt(df)) if math.isfinite(x) else math.pi / 2
    theta = np.linspace(0.0, end, intervals + 1)
    values = np.cos(theta) ** (df - 1)
    weights = np.ones(intervals + 1)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(math.pi)
    return float(scale * (end / intervals) / 3 * (weights @ values))


def _check_df(df) -> None:
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be an int >= 1, got {df!r}")


def t_upper_tail(t: float, df: int) -> float:
    """P(T >= t) for Student's t with `df` degrees of freedom: the one-sided p-value of H1 "mean > 0"."""
    _check_df(df)
    if math.isnan(t):
        return math.nan
    above = _t_cdf_above_zero(abs(t), df)
    return max(0.0, 0.5 - above) if t >= 0 else min(1.0, 0.5 + above)


def t_quantile(probability: float, df: int) -> float:
    """The `probability` quantile of Student's t with `df` degrees of freedom (probability in (0.5, 1))."""
    if not 0.5 < probability < 1.0:
        raise ValueError(f"probability must be in (0.5, 1), got {probability!r}")
    _check_df(df)
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


@dataclass
class OneSidedTTest:
    """The one-sided paired t-test of H1 "mean > 0" over `n` paired differences."""

    mean: float
    sd: float            # of the differences (ddof 1)
    n: int
    t: float
    df: int
    p_value: float       # one-sided: P(T >= t)
    lower_bound: float   # the one-sided `confidence` lower bound of the mean
    confidence: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def one_sided_t_test(differences, confidence: float = 0.95) -> OneSidedTTest:
    """Student's one-sample t-test of H1 "the mean of `differences` is > 0" (paired differences, one per
    seed), with the one-sided lower confidence bound `mean - t_{confidence, n-1} * sd / sqrt(n)`.
    Identical differences (sd 0) give t = +-inf, or NaN when they are all 0."""
    values = np.asarray(differences, dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError("one_sided_t_test needs a 1-D sequence of at least 2 differences")
    if not np.isfinite(values).all():
        raise ValueError("one_sided_t_test: the differences must be finite numbers")
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence!r}")
    n, mean, sd = int(values.size), float(values.mean()), float(values.std(ddof=1))
    standard_error = sd / math.sqrt(n)
    if standard_error > 0:
        t = mean / standard_error
    else:
        t = math.nan if mean == 0 else math.copysign(math.inf, mean)
    df = n - 1
    lower = mean - t_quantile(confidence, df) * standard_error
    return OneSidedTTest(mean, sd, n, t, df, t_upper_tail(t, df), lower, confidence)


def ranks(values) -> np.ndarray:
    """1-based ranks of `values`, ties sharing their mean rank (what Spearman's correlation ranks)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError("ranks needs a 1-D sequence")
    order = np.argsort(values, kind="stable")
    result = np.empty(values.size, dtype=np.float64)
    start = 0
    while start < values.size:
        end = start
        while end + 1 < values.size and values[order[end + 1]] == values[order[start]]:
            end += 1
        result[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return result


def pearson(x, y) -> float:
    """Pearson's correlation; NaN when either sequence is constant (no correlation is defined)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"pearson needs two 1-D sequences of one length, got {x.shape} and {y.shape}")
    dx, dy = x - x.mean(), y - y.mean()
    norm = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / norm if norm > 0 else math.nan


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson's on the ranks, ties at their mean rank); NaN when either
    sequence is constant."""
    return pearson(ranks(x), ranks(y))
