"""AWPO's two rewards as TRL reward functions: ``reward(prompts, completions, **columns) -> list[float]``.

``outcome_reward`` scores the tool calls with the project's BFCL-semantics checker
(``awpo.rewards.outcome_reward``: 1/0, or partial credit when graded); ``reasoning_reward`` scores the
``<think>`` text with a judge (``RuleJudge`` by default; NaN = no score). Both read the dataset columns
``ground_truth`` and ``tools`` (JSON text or already decoded), as ``awpo.data.builtin_dataset`` writes them.
Neither ever returns None: a completion that does not parse scores 0 (outcome), and missing reasoning scores
``missing_reasoning_score`` (SPEC section 1).

Inside ``AWPOTrainer`` the options left unset here (``graded``, ``missing_reasoning_score``) come from the
``AWPOConfig`` (``graded_outcome``, ``missing_reasoning_score``); outside it they take the defaults of
``awpo.rewards``: exact outcome, missing reasoning scores 0.0.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from awpo.judges import MISSING_REASONING_SCORE, JudgeRequest, RuleJudge, check_missing_reasoning_score, judge_many
from awpo.rewards import outcome_reward as score_outcome
from awpo.toolcall import parse_completion

_UNSET = object()


def completion_text(completion) -> str:
    """TRL hands text completions as str and conversational ones as ``[{"role": "assistant", "content"}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion
                       if isinstance(m, dict) and m.get("role", "assistant") == "assistant")
    raise ValueError(f"a completion must be a str or a list of messages, got {type(completion).__name__}")


def request_text(prompt) -> str:
    """The user's request as a judge sees it: the last user message (conversational) or the whole prompt."""
    if isinstance(prompt, str):
        return prompt
    users = [str(m.get("content") or "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


def decode_column(value, name: str, index: int):
    """A JSON-text column value (how a datasets.Dataset stores ragged nested data) or the decoded value."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{name}[{index}] is not valid JSON: {exc}") from None
    return value


def _column(kwargs: dict, name: str, count: int) -> list:
    if name not in kwargs:
        raise ValueError(f"the dataset has no '{name}' column, which this reward reads (see awpo.data.builtin_dataset)")
    values = list(kwargs[name])
    if len(values) != count:
        raise ValueError(f"column '{name}' has {len(values)} values for {count} completions")
    return [decode_column(v, name, i) for i, v in enumerate(values)]


@dataclass(frozen=True)
class OutcomeReward:
    """Tool-call correctness with BFCL semantics, per completion. ``graded=None``: the trainer's choice."""

    graded: bool | None = None

    @property
    def __name__(self) -> str:  # TRL names a reward function's metrics after its __name__
        return "outcome_reward"

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs: Any) -> list[float]:
        truths = _column(kwargs, "ground_truth", len(completions))
        tools = _column(kwargs, "tools", len(completions)) if "tools" in kwargs else [None] * len(completions)
        graded = bool(self.graded)
        return [float(score_outcome(completion_text(c), truth, graded=graded, tools=tool))
                for c, truth, tool in zip(completions, truths, tools)]

    def bound(self, *, graded: bool) -> OutcomeReward:
        """This reward with the trainer's option filled in where it was left unset."""
        return self if self.graded is not None else replace(self, graded=graded)


@dataclass(frozen=True)
class ReasoningReward:
    """The judge's score of each completion's reasoning, in [0, 1], NaN = no score.

    ``judge``: any object with ``score(prompt, reasoning, calls, tools)`` (``score_many`` batches it), e.g.
    ``awpo.judges.LLMJudge``; None: ``RuleJudge(missing_reasoning_score=...)``. A judge you pass applies its own
    ``missing_reasoning_score``.
    """

    judge: Any = None
    missing_reasoning_score: Any = _UNSET  # float in [0, 1] or None; unset: the trainer's (default 0.0)

    def __post_init__(self):
        if self.missing_reasoning_score is not _UNSET:
            check_missing_reasoning_score(self.missing_reasoning_score)
        if self.judge is not None and not callable(getattr(self.judge, "score", None)):
            raise ValueError(f"judge must have score(prompt, reasoning, calls, tools), got {type(self.judge).__name__}")

    @property
    def __name__(self) -> str:
        return "reasoning_reward"

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs: Any) -> list[float]:
        tools = _column(kwargs, "tools", len(completions)) if "tools" in kwargs else [[]] * len(completions)
        truths = (_column(kwargs, "ground_truth", len(completions)) if "ground_truth" in kwargs
                  else [None] * len(completions))  # read only by the reference judge (a control)
        requests = []
        for prompt, completion, tool, truth in zip(prompts, completions, tools, truths):
            parsed = parse_completion(completion_text(completion))
            requests.append(JudgeRequest.of_completion(request_text(prompt), parsed, tool or [], truth))
        judge = self.resolved_judge()
        steps = callable(getattr(judge, "new_step", None)) and callable(getattr(judge, "finish_step", None))
        if steps:  # an LLM judge: fresh cache and counts for this generation batch (the policy changed)
            judge.new_step()
        scores = [float(s) for s in judge_many(judge, requests)]
        if steps:  # JudgeUnavailableError after judge_max_failed_steps batches without one score
            judge.finish_step()
        return [s if math.isnan(s) or 0.0 <= s <= 1.0 else float("nan") for s in scores]

    def resolved_judge(self):
        if self.judge is not None:
            return self.judge
        missing = MISSING_REASONING_SCORE if self.missing_reasoning_score is _UNSET else self.missing_reasoning_score
        return RuleJudge(missing_reasoning_score=missing)

    def bound(self, *, missing_reasoning_score) -> ReasoningReward:
        if self.judge is not None or self.missing_reasoning_score is not _UNSET:
            return self
        return replace(self, missing_reasoning_score=missing_reasoning_score)


outcome_reward = OutcomeReward()
reasoning_reward = ReasoningReward()


def bind_rewards(reward_funcs: list, *, graded_outcome: bool, missing_reasoning_score) -> list:
    """The trainer's reward functions with AWPOConfig's options filled into awpo's own (others untouched)."""
    bound = []
    for func in reward_funcs:
        if isinstance(func, OutcomeReward):
            func = func.bound(graded=graded_outcome)
        elif isinstance(func, ReasoningReward):
            func = func.bound(missing_reasoning_score=missing_reasoning_score)
        bound.append(func)
    return bound
