"""Reasoning judges: every judge of the ``<think>`` text and its parts (docs/JUDGES.md, SPEC section 1).

- ``base``: ``JudgeRequest``, ``Verdict``, the missing-reasoning rule, ``judge_many``;
- ``rule`` (+ ``grounding``): the grounded rule judge, deterministic, the default;
- ``reference``: the reference judge, a labelled CONTROL that reads the task's answer;
- ``llm`` (+ ``rubric``, ``verdict``): a model answers a rubric whose data blocks the graded text
  cannot break out of, and only a strict verdict form is read;
- ``engine``, ``http``: the LLM judge's backends (a rollout engine; an OpenAI-compatible server with
  a total deadline and a reply-size cap per request), both with structured verdicts where possible;
- ``health``: per-step counts and the stop after several steps in which every request failed;
- ``factory``: ``JudgeOptions``, the preflight ``check_judge`` and ``build_judge``;
- ``cli``: ``python -m awpo.judge``.
"""
from .base import (
    MISSING_REASONING_SCORE,
    Judge,
    JudgeRequest,
    Verdict,
    check_missing_reasoning_score,
    has_reasoning,
    judge_many,
    verdicts_of,
)
from .engine import EngineBackend, open_judge_engine
from .factory import KINDS, JudgeOptions, build_judge, check_judge, check_judge_options
from .health import FailureWatch, JudgeStats, JudgeUnavailableError
from .http import OpenAIChatBackend
from .llm import LLMJudge
from .reference import ReferenceJudge
from .rubric import RUBRIC, check_rubric, load_rubric
from .rule import RuleJudge
from .verdict import VERDICT_SCHEMA, parse_judge_score

__all__ = [
    "KINDS", "MISSING_REASONING_SCORE", "RUBRIC", "VERDICT_SCHEMA", "EngineBackend", "FailureWatch", "Judge",
    "JudgeOptions", "JudgeRequest", "JudgeStats", "JudgeUnavailableError", "LLMJudge", "OpenAIChatBackend",
    "ReferenceJudge", "RuleJudge", "Verdict", "build_judge", "check_judge", "check_judge_options",
    "check_missing_reasoning_score",
    "check_rubric", "has_reasoning", "judge_many", "load_rubric", "open_judge_engine", "parse_judge_score",
    "verdicts_of",
]
