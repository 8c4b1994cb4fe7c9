"""What every reasoning judge shares: the request it scores, the protocol, the missing-reasoning rule.

A judge scores one completion's reasoning in [0, 1], or NaN for "no score" because the judge failed
(error, timeout, unreadable reply): docs/SPEC.md section 1 leaves NaN members out of the reasoning
statistics. Two completions are scored without being judged (``unjudged_verdict``):

- one whose tool-call markup does not parse scores ``MALFORMED_OUTPUT_SCORE`` (0.0) whatever it
  reasons: judged on its reasoning alone, a broken call was the one place where the reasoning escaped
  every check against the calls, and a policy trained with AWPO learned to break its calls
  (docs/EVIDENCE.md, round 2);
- one without reasoning (no ``<think>`` block, or an empty one) scores ``missing_reasoning_score``
  (default 0.0, the worst score): were it NaN, dropping ``<think>`` would escape every below-average
  reasoning score, and a policy learns to do exactly that. ``None`` there (NaN) is for prompts that do
  not ask for reasoning.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..toolcall import ToolCall

NAN = float("nan")
MISSING_REASONING_SCORE = 0.0  # SPEC section 1: no reasoning where the prompt asks for it is the worst score
MALFORMED_OUTPUT_SCORE = 0.0   # SPEC section 1: output whose calls do not parse earns no reasoning credit


def check_missing_reasoning_score(value) -> float:
    """A float in [0, 1], or None (-> NaN: missing reasoning is "no score"); ValueError otherwise."""
    if value is None:
        return NAN
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"missing_reasoning_score must be a number in [0, 1] or None, got {value!r}")
    return float(value)


def has_reasoning(reasoning: str | None) -> bool:
    return reasoning is not None and bool(reasoning.strip())


@dataclass
class JudgeRequest:
    """One completion to judge. ``prompt`` is the user's request as text (the last user message, not
    the rendered template); ``ground_truth`` (the task's answer) is read only by the reference judge,
    the labelled control: the rule and LLM judges never see it. ``malformed``: the output held tool-call
    markup that did not parse (``calls`` is then empty; the outcome reward scores it 0, and every judge
    ``MALFORMED_OUTPUT_SCORE``)."""

    prompt: str
    reasoning: str | None
    calls: list[ToolCall]
    tools: list[dict]
    ground_truth: list | None = None
    malformed: bool = False  # the completion tried to call a tool, but its calls could not be parsed

    @classmethod
    def of_completion(cls, prompt: str, parsed, tools: list[dict], ground_truth: list | None = None) -> JudgeRequest:
        """The request for one parsed completion (``awpo.toolcall.parse_completion``'s result)."""
        return cls(prompt, parsed.reasoning, parsed.calls, tools, ground_truth, malformed=parsed.error is not None)


@dataclass
class Verdict:
    """One completion's judgement: the score, and how it came about.

    ``status``: "scored" (the judge gave a score), "cached" (scored earlier this step),
    "malformed_output" (not judged: its calls do not parse), "missing_reasoning" (not judged: no
    reasoning), "failed" (no reply: error, timeout, malformed
    response) or "unreadable" (a reply in neither verdict form). ``reply`` is the judge model's text
    when it was asked in this call.
    """

    score: float
    status: str
    reply: str | None = None


def unjudged_verdict(request: JudgeRequest, missing_reasoning_score: float) -> Verdict | None:
    """The verdict of a completion that is scored without being judged (module docstring), else None."""
    if request.malformed:
        return Verdict(MALFORMED_OUTPUT_SCORE, "malformed_output")
    if not has_reasoning(request.reasoning):
        return Verdict(missing_reasoning_score, "missing_reasoning")
    return None


class Judge(Protocol):
    def score(self, prompt: str, reasoning: str | None, calls: list[ToolCall], tools: list[dict]) -> float:
        """A score in [0, 1]; ``missing_reasoning_score`` without reasoning; NaN when the judge failed."""
        ...


def judge_many(judge, requests: Sequence[JudgeRequest]) -> list[float]:
    """Score a batch with ``judge.score_many`` when the judge has it (one generation call). A judge with
    only ``score`` is not asked about output whose calls do not parse: that scores
    ``MALFORMED_OUTPUT_SCORE`` whatever the judge (module docstring)."""
    if hasattr(judge, "score_many"):
        return list(judge.score_many(requests))
    return [MALFORMED_OUTPUT_SCORE if r.malformed else judge.score(r.prompt, r.reasoning, r.calls, r.tools)
            for r in requests]


def verdicts_of(judge, requests: Sequence[JudgeRequest]) -> list[Verdict]:
    """Each request's verdict: the LLM judge's own (with replies); for a judge that only scores, its
    scores with the status they imply."""
    if hasattr(judge, "verdicts"):
        return judge.verdicts(requests)
    verdicts = []
    for request, score in zip(requests, judge_many(judge, requests)):
        unjudged = unjudged_verdict(request, score)
        verdicts.append(unjudged or Verdict(score, "failed" if math.isnan(score) else "scored"))
    return verdicts


class InstantJudge:
    """Base of the judges that compute a score from the request alone (rule, reference): no model,
    no cache, no failures. Subclasses define ``judge(request) -> float`` for well-formed requests with
    reasoning."""

    missing_reasoning_score: float | None = MISSING_REASONING_SCORE

    def score(self, prompt: str, reasoning: str | None, calls: list[ToolCall], tools: list[dict],
              ground_truth: list | None = None) -> float:
        return self.score_request(JudgeRequest(prompt, reasoning, calls, tools, ground_truth))

    def score_request(self, request: JudgeRequest) -> float:
        unjudged = unjudged_verdict(request, check_missing_reasoning_score(self.missing_reasoning_score))
        return unjudged.score if unjudged is not None else self.judge(request)

    def score_many(self, requests: Sequence[JudgeRequest]) -> list[float]:
        return [self.score_request(r) for r in requests]

    def judge(self, request: JudgeRequest) -> float:
        raise NotImplementedError

    def clear_cache(self) -> None:
        """Nothing is cached: the score is a pure function of the request."""
