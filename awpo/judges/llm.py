"""The LLM judge: a model answers the rubric (rubric.py) and its verdict is read strictly (verdict.py).

``generate`` maps a list of prompts to a list of replies (same length; ``None`` = that request
failed): a backend of this package (``EngineBackend``: a rollout engine, the policy's or a second
one; ``OpenAIChatBackend``: an OpenAI-compatible server) or any callable. A backend whose
``structured`` attribute is true constrains every reply to the JSON verdict, and the rubric asks for
that form; otherwise it asks for a last line ``Score: N/10``.

Scores are cached per (prompt, completion) until ``new_step()`` / ``clear_cache()``; a failed or
unreadable reply gives NaN (not cached), never an exception. A completion without reasoning, or
whose calls do not parse, is not sent: it scores ``missing_reasoning_score`` or 0
(``base.unjudged_verdict``). ``stats`` counts this step's requests, failures,
unreadable replies and waiting time; ``finish_step()`` returns them as metrics and raises
``JudgeUnavailableError`` once ``max_failed_steps`` steps in a row got no score at all (0: never).

A policy should never judge itself for any claim: it learns to write what its own rubric answer
rewards, and nothing outside it checks that the reward still means anything (docs/JUDGES.md).
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence

from ..toolcall import ToolCall
from .base import MISSING_REASONING_SCORE, JudgeRequest, Verdict, check_missing_reasoning_score, unjudged_verdict
from .health import FailureWatch, JudgeStats
from .rubric import RUBRIC, build_prompt, check_rubric
from .verdict import NAN, parse_judge_score

logger = logging.getLogger(__name__)


class LLMJudge:
    """Scores reasoning by asking a language model with a rubric (module docstring)."""

    def __init__(
        self,
        generate: Callable[[list[str]], list[str | None]],
        *,
        rubric: str = RUBRIC,
        max_field_chars: int = 2000,
        missing_reasoning_score: float | None = MISSING_REASONING_SCORE,
        max_failed_steps: int = 0,
        name: str = "LLM judge",
    ):
        if not callable(generate):
            raise ValueError("generate must be a callable: list of prompts -> list of texts")
        self.generate = generate
        self.rubric = check_rubric(rubric)
        self.max_field_chars = max_field_chars
        self.missing_reasoning_score = check_missing_reasoning_score(missing_reasoning_score)
        self.name = name
        self.stats = JudgeStats()
        self.watch = FailureWatch(max_failed_steps)
        self._cache: dict[tuple, float] = {}

    @property
    def structured(self) -> bool:
        """Whether the backend constrains replies to the JSON verdict."""
        return bool(getattr(self.generate, "structured", False))

    def score(self, prompt: str, reasoning: str | None, calls: list[ToolCall], tools: list[dict]) -> float:
        return self.score_many([JudgeRequest(prompt, reasoning, calls, tools)])[0]

    def score_many(self, requests: Sequence[JudgeRequest]) -> list[float]:
        return [verdict.score for verdict in self.verdicts(requests)]

    def verdicts(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        """``score_many`` with each score's status and the judge's reply (for ``python -m awpo.judge``)."""
        verdicts: list[Verdict | None] = [None] * len(requests)
        todo: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            unjudged = unjudged_verdict(request, self.missing_reasoning_score)
            if unjudged is not None:  # nothing to judge (SPEC section 1)
                verdicts[index] = unjudged
                continue
            key = _cache_key(request)
            if key in self._cache:
                verdicts[index] = Verdict(self._cache[key], "cached")
                self.stats.cached += 1
            else:
                todo.setdefault(key, []).append(index)
        if todo:
            first = [requests[indices[0]] for indices in todo.values()]
            for (key, indices), verdict in zip(todo.items(), self._ask(first)):
                if verdict.status == "scored":
                    self._cache[key] = verdict.score
                for position, index in enumerate(indices):
                    verdicts[index] = verdict if position == 0 else Verdict(verdict.score, "cached", verdict.reply)
                self.stats.cached += len(indices) - 1
        return verdicts

    def clear_cache(self) -> None:
        self._cache.clear()

    def new_step(self) -> None:
        """Forget the cached scores (the policy changed) and start this step's counts."""
        self.clear_cache()
        self.stats = JudgeStats()

    def finish_step(self) -> dict[str, float]:
        """This step's judge metrics; JudgeUnavailableError after ``max_failed_steps`` steps in a row
        in which every request failed."""
        metrics = self.stats.metrics()
        self.watch.observe(self.stats, self.name)
        return metrics

    def rubric_prompt(self, request: JudgeRequest) -> str:
        return build_prompt(self.rubric, request, structured=self.structured, max_chars=self.max_field_chars)

    def _ask(self, requests: list[JudgeRequest]) -> list[Verdict]:
        started = time.perf_counter()
        replies, error = self._replies([self.rubric_prompt(r) for r in requests])
        verdicts = [_verdict(reply) for reply in replies]
        stats = self.stats
        stats.latency_s += time.perf_counter() - started
        stats.requests += len(verdicts)
        failed = sum(v.status == "failed" for v in verdicts)
        stats.failed += failed
        stats.unreadable += sum(v.status == "unreadable" for v in verdicts)
        if failed:
            stats.last_error = error or getattr(self.generate, "last_error", None) or "no reply"
            logger.warning("LLM judge (%s): %d of %d requests failed: %s", self.name, failed, len(verdicts),
                           stats.last_error)
        return verdicts

    def _replies(self, prompts: list[str]) -> tuple[list, str | None]:
        """The generator's replies, or all None and the reason when the call itself failed."""
        try:
            replies = self.generate(prompts)
        except Exception as exc:  # a judge failure must not stop training: NaN = no score
            return [None] * len(prompts), f"generation failed: {exc}"
        if not isinstance(replies, list) or len(replies) != len(prompts):
            count = len(replies) if isinstance(replies, list) else type(replies).__name__
            return [None] * len(prompts), f"the judge returned {count} replies for {len(prompts)} prompts"
        return replies, None


def _verdict(reply) -> Verdict:
    if not isinstance(reply, str):
        return Verdict(NAN, "failed")
    score = parse_judge_score(reply)
    return Verdict(score, "unreadable" if math.isnan(score) else "scored", reply)


def _cache_key(request: JudgeRequest) -> tuple:
    calls = json.dumps([c.to_dict() for c in request.calls], sort_keys=True, default=str)
    tools = json.dumps(request.tools, sort_keys=True, default=str)
    return (request.prompt, request.reasoning, calls, tools)
