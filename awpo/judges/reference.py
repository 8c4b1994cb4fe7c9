"""The reference judge: a CONTROL that scores reasoning against the task's answer. Never the default.

It reads the task's ground truth, which no judge of a real run may see: an oracle, for experiments
that need a reasoning signal known to carry information where the outcome is silent (the positive
control of docs/EVIDENCE.md: does the estimator use a reasoning signal that is informative?). A
result obtained with it says nothing about what a real judge would give.

Score, for a completion with reasoning:

- a task whose answer is "no call" (``ground_truth == []``): 1 when the reasoning says that no
  offered tool fits and names none of the tools as the one to call, else 0;
- otherwise the mean of two shares: the answer's tools that the reasoning names, and the answer's
  required values (every parameter the answer does not allow to omit) that the reasoning states,
  each compared with the outcome reward's normalisation (any acceptable alternative counts).

Ground truth comes in BFCL's single-turn form (``[{name: {param: [acceptable values]}}]``) or the
multi-turn form (one list of ``{"name", "arguments"}`` calls per user turn).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..rewards.outcome import as_float, normalize_string
from . import grounding
from .base import MISSING_REASONING_SCORE, InstantJudge, JudgeRequest, check_missing_reasoning_score
from .rule import mentions_name, says_no_tool_fits


@dataclass
class ReferenceJudge(InstantJudge):
    """Reasoning scored against the task's ground truth (module docstring): a labelled control."""

    missing_reasoning_score: float | None = MISSING_REASONING_SCORE
    name: str = "reference judge (control: reads the task's answer)"

    def __post_init__(self):
        check_missing_reasoning_score(self.missing_reasoning_score)

    def judge(self, request: JudgeRequest) -> float:
        if request.ground_truth is None:
            raise ValueError("the reference judge needs each request's ground_truth (the task's answer); "
                             "it is a control for experiments on tasks with known answers")
        reasoning = request.reasoning or ""
        expected = expected_calls(request.ground_truth)
        if not expected:
            return 1.0 if says_no_tool_fits(reasoning) else 0.0
        names = {name for name, _ in expected}
        named = sum(mentions_name(reasoning, name) for name in names) / len(names)
        values = [options for _, params in expected for options in params]
        if not values:
            return named
        stated = _stated(reasoning)
        found = sum(any(_stated_value(option, stated) for option in options) for options in values)
        return 0.5 * named + 0.5 * found / len(values)


def expected_calls(ground_truth) -> list[tuple[str, list[list]]]:
    """(tool name, [acceptable values of each required parameter]) per expected call."""
    calls = []
    for entry in ground_truth or []:
        if isinstance(entry, list):  # multi-turn: one list of calls per user turn
            calls += expected_calls(entry)
        elif isinstance(entry, dict) and "name" in entry and isinstance(entry.get("arguments"), dict):
            values = [[v] for value in entry["arguments"].values() for v in grounding.scalar_values(value)]
            calls.append((str(entry["name"]), values))
        elif isinstance(entry, dict) and len(entry) == 1:
            (name, params), = entry.items()
            required = [[v for v in options if v != ""] for options in (params or {}).values()
                        if isinstance(options, list) and "" not in options]
            calls.append((str(name), [_leaves(options) for options in required if options]))
    return calls


def _leaves(options: list) -> list:
    return [leaf for option in options for leaf in (grounding.scalar_values(option) or [option])]


def _stated(reasoning: str) -> tuple[str, set[float]]:
    return normalize_string(reasoning), set(grounding.numbers_in(reasoning))


def _stated_value(value, stated: tuple[str, set[float]]) -> bool:
    text, numbers = stated
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return as_float(value) in numbers
    squashed = normalize_string(str(value))
    return bool(squashed) and squashed in text
