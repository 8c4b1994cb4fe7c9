"""A judge's account of one training step, and the rule that stops a run whose judge is gone.

A judge request that fails (server down, timeout, an unreadable reply) gives NaN, "no score", and
training goes on: AWPO drops NaN members from the reasoning statistics (docs/SPEC.md section 1). But a
judge that answers nothing for several steps in a row is a broken set-up, not bad luck, and AWPO
would silently train as GRPO; so after ``max_failed_steps`` such steps the run stops, naming the
judge and its last error.
"""
from __future__ import annotations

from dataclasses import dataclass


class JudgeUnavailableError(RuntimeError):
    """Every request to the reasoning judge failed in several consecutive training steps."""


@dataclass
class JudgeStats:
    """Counts since the last ``LLMJudge.new_step()``. A request is one distinct completion sent to
    the judge model; cached scores and completions without reasoning are not requests."""

    requests: int = 0
    failed: int = 0        # no reply: error, timeout, refused connection, malformed response
    unreadable: int = 0    # a reply, but no score in it (parse_judge_score gave NaN)
    cached: int = 0
    latency_s: float = 0.0  # wall-clock seconds spent waiting for the judge
    last_error: str | None = None

    @property
    def scored(self) -> int:
        return self.requests - self.failed - self.unreadable

    def metrics(self) -> dict[str, float]:
        return {"judge/requests": float(self.requests), "judge/failed_requests": float(self.failed),
                "judge/unreadable_replies": float(self.unreadable), "judge/cached": float(self.cached),
                "judge/latency_s": self.latency_s}


class FailureWatch:
    """Counts the consecutive steps in which the judge was asked and no request got a score.

    A step that asks nothing (every completion cached or without reasoning) neither counts nor
    resets the count. ``max_failed_steps`` 0 never stops.
    """

    def __init__(self, max_failed_steps: int = 0):
        if isinstance(max_failed_steps, bool) or not isinstance(max_failed_steps, int) or max_failed_steps < 0:
            raise ValueError(f"max_failed_steps must be an int >= 0, got {max_failed_steps!r}")
        self.max_failed_steps = max_failed_steps
        self.failed_steps = 0
        self.failed_requests = 0

    def observe(self, stats: JudgeStats, judge_name: str) -> None:
        """Record one finished step; JudgeUnavailableError when the limit is reached."""
        if stats.requests == 0:
            return
        if stats.scored > 0:
            self.failed_steps = self.failed_requests = 0
            return
        self.failed_steps += 1
        self.failed_requests += stats.requests
        if self.max_failed_steps and self.failed_steps >= self.max_failed_steps:
            raise JudgeUnavailableError(self.message(stats, judge_name))

    def message(self, stats: JudgeStats, judge_name: str) -> str:
        what = ("its replies held no score" if stats.failed == 0
                else f"last error: {stats.last_error or 'unknown'}")
        return (f"the reasoning judge ({judge_name}) gave no score to any of the {self.failed_requests} "
                f"requests of the last {self.failed_steps} training steps ({what}). Check the judge "
                f"(python -m awpo.judge scores a file of completions with it), or set "
                f"--judge_max_failed_steps 0 to train on without reasoning scores.")
