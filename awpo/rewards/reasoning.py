"""Reasoning reward: how good is the ``<think>`` text that led to the calls? (SPEC.md section 1)

A judge scores one completion in [0, 1], or NaN for "no score" because the judge failed (error,
timeout, unreadable reply): SPEC.md excludes NaN members from the reasoning statistics. A completion
that writes no reasoning (no ``<think>`` block, or an empty one) scores ``missing_reasoning_score``
(default 0.0, the worst score; SPEC section 1): were it NaN, dropping ``<think>`` would escape every
below-average reasoning score, and a policy learns to do exactly that. Pass ``None`` for prompts
that do not ask for reasoning (then missing reasoning is "no score"). Two judges:

- ``RuleJudge``: deterministic and instant, for CPU runs and tests.
- ``LLMJudge``: a rubric prompt answered by any text generator (the policy's own rollout engine by
  default, or another local model); the score is parsed robustly from the reply.

``prompt`` is the user's request as text (e.g. the last user message), not the rendered template.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from ..toolcall import ToolCall, normalize_tools
from .outcome import as_float, normalize_string

logger = logging.getLogger(__name__)

NAN = float("nan")
MISSING_REASONING_SCORE = 0.0  # SPEC section 1: no reasoning where the prompt asks for it is the worst score


def check_missing_reasoning_score(value) -> float:
    """A float in [0, 1], or None (-> NaN: missing reasoning is "no score"); ValueError otherwise."""
    if value is None:
        return NAN
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"missing_reasoning_score must be a number in [0, 1] or None, got {value!r}")
    return float(value)


def has_reasoning(reasoning: str | None) -> bool:
    return reasoning is not None and bool(reasoning.strip())


class Judge(Protocol):
    def score(self, prompt: str, reasoning: str | None, calls: list[ToolCall], tools: list[dict]) -> float:
        """A score in [0, 1]; ``missing_reasoning_score`` without reasoning; NaN when the judge failed."""
        ...


@dataclass
class JudgeRequest:
    prompt: str
    reasoning: str | None
    calls: list[ToolCall]
    tools: list[dict]


def judge_many(judge: Judge, requests: Sequence[JudgeRequest]) -> list[float]:
    """Score a batch with ``judge.score_many`` when the judge has it (one generation call)."""
    if hasattr(judge, "score_many"):
        return list(judge.score_many(requests))
    return [judge.score(r.prompt, r.reasoning, r.calls, r.tools) for r in requests]


# ----------------------------------------------------------------------------------------------
# RuleJudge
# ----------------------------------------------------------------------------------------------

_NO_TOOL_FITS = re.compile(
    r"\b(no|none of the|not any|without a)\b[\w\s'-]{0,30}\b(tools?|functions?)\b"
    r"|\b(can ?not|can't|unable to|doesn't|does not|don't|do not|isn't|is not|aren't|are not)\b"
    r"[\w\s'-]{0,40}\b(tools?|functions?|fit|fits|match|matches|support|supports|available|relevant|cover|covers)\b"
    r"|\bnot (available|supported|possible|relevant)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class RuleJudge:
    """Deterministic reasoning score: a weighted mean of four parts, each in [0, 1].

    - tool: every called tool is one of ``tools`` and is named in the reasoning; with no call, the
      reasoning says that no tool fits;
    - arguments: share of the calls' scalar argument values that the reasoning mentions (dropped,
      with its weight, when there is no call);
    - repetition: distinct word 3-grams / all 3-grams, mapped from [0.3, 0.8] onto [0, 1];
    - length: 1 inside ``[min_words, max_words]``, falling off proportionally outside.

    No reasoning (no ``<think>`` block, or an empty one) scores ``missing_reasoning_score``
    (0.0 by default, the worst score, as ``LLMJudge`` gives; None: NaN, "no score"; SPEC section 1).
    """

    min_words: int = 5
    max_words: int = 200
    missing_reasoning_score: float | None = MISSING_REASONING_SCORE
    weights: dict[str, float] = field(
        default_factory=lambda: {"tool": 0.35, "arguments": 0.35, "repetition": 0.15, "length": 0.15}
    )

    def __post_init__(self):
        check_missing_reasoning_score(self.missing_reasoning_score)

    def score(self, prompt: str, reasoning: str | None, calls: list[ToolCall], tools: list[dict]) -> float:
        if not has_reasoning(reasoning):
            return check_missing_reasoning_score(self.missing_reasoning_score)
        parts = self.parts(reasoning, calls, tools)
        total_weight = sum(self.weights[name] for name in parts)
        return sum(self.weights[name] * value for name, value in parts.items()) / total_weight

    def score_many(self, requests: Sequence[JudgeRequest]) -> list[float]:
        return [self.score(r.prompt, r.reasoning, r.calls, r.tools) for r in requests]

    def clear_cache(self) -> None:
        """Nothing is cached: the rules are cheap and deterministic."""

    def parts(self, reasoning: str, calls: list[ToolCall], tools: list[dict]) -> dict[str, float]:
        words = _WORD.findall(reasoning.lower())
        parts = {"tool": _tool_part(reasoning, calls, tools)}
        if calls:
            parts["arguments"] = _arguments_part(reasoning, calls)
        parts["repetition"] = _repetition_part(words)
        parts["length"] = _length_part(len(words), self.min_words, self.max_words)
        return parts


def _tool_part(reasoning: str, calls: list[ToolCall], tools: list[dict]) -> float:
    if not calls:
        return 1.0 if _NO_TOOL_FITS.search(reasoning) else 0.0
    known = {tool["name"] for tool in normalize_tools(tools or [])}
    names = {call.name for call in calls}
    mentioned = [name in known and _mentions_name(reasoning, name) for name in names]
    return sum(mentioned) / len(names)


def _mentions_name(reasoning: str, name: str) -> bool:
    text = reasoning.lower()
    spaced = re.sub(r"[_.]+", " ", name.lower())
    return name.lower() in text or spaced in text


def _arguments_part(reasoning: str, calls: list[ToolCall]) -> float:
    values = [v for call in calls for v in _scalar_values(call.arguments)]
    if not values:
        return 1.0
    text = reasoning.lower()
    squashed = normalize_string(reasoning)
    numbers = {float(n) for n in _NUMBER.findall(reasoning.replace(",", ""))}
    return sum(_mentions_value(v, text, squashed, numbers) for v in values) / len(values)


def _scalar_values(value) -> list:
    if isinstance(value, dict):
        return [v for item in value.values() for v in _scalar_values(item)]
    if isinstance(value, list):
        return [v for item in value for v in _scalar_values(item)]
    if isinstance(value, bool) or value is None:
        return []  # true/false are rarely spelled out; not worth a penalty
    return [value]


def _mentions_value(value, text: str, squashed: str, numbers: set[float]) -> bool:
    if isinstance(value, str):
        return bool(value.strip()) and (value.lower() in text or normalize_string(value) in squashed)
    return as_float(value) in numbers  # a value too large for a float (None) mentions nothing


def _repetition_part(words: list[str]) -> float:
    if len(words) < 8:
        return 1.0
    grams = list(zip(words, words[1:], words[2:]))
    distinct = len(set(grams)) / len(grams)
    return min(1.0, max(0.0, (distinct - 0.3) / 0.5))


def _length_part(count: int, low: int, high: int) -> float:
    if count < low:
        return count / low
    if count > high:
        return high / count
    return 1.0


# ----------------------------------------------------------------------------------------------
# LLMJudge
# ----------------------------------------------------------------------------------------------

RUBRIC = """You grade the reasoning of an assistant that may call tools.

User request:
{prompt}

Available tools:
{tools}

Assistant reasoning:
{reasoning}

Tool calls the assistant made:
{calls}

Grade the reasoning from 0 to 10. Give points when it:
- identifies what the user wants;
- picks the right tool, or says that no tool fits when none does;
- checks that every required parameter has a value from the request;
- agrees with the tool calls actually made;
- invents no facts, tools or parameter values;
- stays concise.
Reply with one short sentence, then a last line of the form "Score: N/10"."""


class LLMJudge:
    """Scores reasoning by asking a language model with a rubric.

    ``generate`` maps a list of prompts to a list of reply texts (same length). Scores are cached
    per (prompt, completion) until ``clear_cache()`` / ``new_step()``; failed or unparseable replies
    give NaN (and are not cached), never an exception. A completion without reasoning is not sent to
    the model: it scores ``missing_reasoning_score`` (0.0 by default; None: NaN).
    """

    def __init__(
        self,
        generate: Callable[[list[str]], list[str]],
        *,
        rubric: str = RUBRIC,
        scale: float = 10.0,
        max_field_chars: int = 2000,
        missing_reasoning_score: float | None = MISSING_REASONING_SCORE,
    ):
        if not callable(generate):
            raise ValueError("generate must be a callable: list of prompts -> list of texts")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.generate = generate
        self.rubric = rubric
        self.scale = scale
        self.max_field_chars = max_field_chars
        self.missing_reasoning_score = check_missing_reasoning_score(missing_reasoning_score)
        self._cache: dict[tuple, float] = {}

    @classmethod
    def from_engine(cls, engine, *, tokenizer=None, temperature: float = 0.0, max_tokens: int = 96, **kwargs) -> "LLMJudge":
        """A judge backed by a rollout engine (``awpo.rollout``'s ``generate(prompts, n=...)``).

        With ``tokenizer``, the rubric is wrapped in the model's chat template as a user turn.
        """

        def generate(prompts: list[str]) -> list[str]:
            if tokenizer is not None:
                prompts = [
                    tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                    for p in prompts
                ]
            groups = engine.generate(prompts, n=1, temperature=temperature, max_tokens=max_tokens)
            return [group[0].text for group in groups]

        return cls(generate, **kwargs)

    def score(self, prompt: str, reasoning: str | None, calls: list[ToolCall], tools: list[dict]) -> float:
        return self.score_many([JudgeRequest(prompt, reasoning, calls, tools)])[0]

    def score_many(self, requests: Sequence[JudgeRequest]) -> list[float]:
        scores = [NAN] * len(requests)
        todo: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            if not has_reasoning(request.reasoning):
                scores[index] = self.missing_reasoning_score  # nothing to judge (SPEC section 1)
                continue
            key = _cache_key(request)
            if key in self._cache:
                scores[index] = self._cache[key]
            else:
                todo.setdefault(key, []).append(index)
        if todo:
            first = [requests[indices[0]] for indices in todo.values()]
            for (key, indices), value in zip(todo.items(), self._generate_scores(first)):
                if not math.isnan(value):
                    self._cache[key] = value
                for index in indices:
                    scores[index] = value
        return scores

    def clear_cache(self) -> None:
        self._cache.clear()

    new_step = clear_cache

    def rubric_prompt(self, request: JudgeRequest) -> str:
        calls = "\n".join(json.dumps(c.to_dict(), ensure_ascii=False) for c in request.calls) or "(no tool call)"
        return self.rubric.format(
            prompt=_clip(request.prompt, self.max_field_chars),
            tools=_clip(_tool_summary(request.tools), self.max_field_chars),
            reasoning=_clip(request.reasoning or "", self.max_field_chars),
            calls=_clip(calls, self.max_field_chars),
        )

    def _generate_scores(self, requests: list[JudgeRequest]) -> list[float]:
        try:
            replies = self.generate([self.rubric_prompt(r) for r in requests])
        except Exception as exc:  # a judge failure must not stop training: NaN = no score
            logger.warning("LLM judge generation failed: %s", exc)
            return [NAN] * len(requests)
        if not isinstance(replies, list) or len(replies) != len(requests):
            logger.warning("LLM judge returned %r replies for %d prompts", type(replies).__name__, len(requests))
            return [NAN] * len(requests)
        return [parse_judge_score(reply, scale=self.scale) for reply in replies]


def _cache_key(request: JudgeRequest) -> tuple:
    calls = json.dumps([c.to_dict() for c in request.calls], sort_keys=True, default=str)
    tools = json.dumps(request.tools, sort_keys=True, default=str)
    return (request.prompt, request.reasoning, calls, tools)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tool_summary(tools: list[dict]) -> str:
    lines = []
    for tool in normalize_tools(tools or []):
        required = tool["parameters"].get("required", [])
        lines.append(f"- {tool['name']}({', '.join(tool['parameters'].get('properties', {}))}): "
                     f"{tool['description']} Required: {', '.join(required) or 'none'}.")
    return "\n".join(lines) or "(none)"


# ----------------------------------------------------------------------------------------------
# score parsing
# ----------------------------------------------------------------------------------------------

_NUM = r"(-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"  # any decimal notation, read whole
_SCORE_LINE = re.compile(
    rf"\b(?:score|rating|grade)\b[\s:=*]{{0,6}}(?:is\s+)?{_NUM}\s*(?:(/|out of)\s*{_NUM}|(%))?", re.IGNORECASE
)
_FRACTION = re.compile(rf"{_NUM}\s*(?:/|out of)\s*{_NUM}", re.IGNORECASE)
_BARE = re.compile(rf"^\s*{_NUM}\s*(%)?\s*\.?\s*$")
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")


def parse_judge_score(text, *, scale: float = 10.0) -> float:
    """A judge reply -> score in [0, 1], or NaN when no score can be read. Never raises.

    Reads the first of: a JSON object with a ``"score"`` key (the last one); the last
    "Score: N[/D | %]"; the last bare fraction "N/D"; a reply that is only a number. The number is
    read as the judge was asked (RUBRIC: "from 0 to 10", "Score: N/10"): "N/D" and "N out of D" are
    N/D, "N%" is N/100, and a plain N is on the rubric's ``scale`` whatever its notation (``1``,
    ``1.0`` and ``1e0`` all give 0.1 on the 10-point scale). A value outside [0, 1] (e.g. 11/10,
    -2, 1e3) gives NaN, never a clipped score.
    """
    if not isinstance(text, str):
        return NAN
    text = text[-4000:]  # the verdict is at the end; bounds the regex work on huge replies
    for candidate in (_from_json(text), _from_score_line(text), _from_fraction(text), _from_bare(text)):
        if candidate is not None:
            return _in_unit_range(_to_unit(*candidate, scale=scale))
    return NAN


def _from_json(text: str):
    for match in reversed(_JSON_OBJECT.findall(text)):
        try:
            obj = json.loads(match)
        except ValueError:
            continue
        value = obj.get("score") if isinstance(obj, dict) else None
        if isinstance(value, str) and _BARE.match(value):
            return _from_bare(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value), None, False
    return None


def _from_score_line(text: str):
    matches = _SCORE_LINE.findall(text)
    if not matches:
        return None
    number, slash, denominator, percent = matches[-1]
    return number, denominator or None, bool(percent)


def _from_fraction(text: str):
    matches = _FRACTION.findall(text)
    return (matches[-1][0], matches[-1][1], False) if matches else None


def _from_bare(text: str):
    match = _BARE.match(text)
    return (match.group(1), None, bool(match.group(2))) if match else None


def _to_unit(number: str, denominator: str | None, percent: bool, *, scale: float) -> float:
    value = float(number)
    if percent:
        return value / 100.0
    if denominator is not None:
        denom = float(denominator)
        return value / denom if denom > 0 else NAN
    return value / scale


def _in_unit_range(value: float) -> float:
    return value if 0.0 <= value <= 1.0 else NAN
