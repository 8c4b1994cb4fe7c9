"""Reasoning reward: how good is the ``<think>`` text that led to the calls? (docs/SPEC.md section 1)

A judge scores one completion in [0, 1], or NaN for "no score" because the judge failed (error,
timeout, unreadable reply): docs/SPEC.md excludes NaN members from the reasoning statistics. A completion
that writes no reasoning (no ``<think>`` block, or an empty one) scores ``missing_reasoning_score``
(default 0.0, the worst score; SPEC section 1): were it NaN, dropping ``<think>`` would escape every
below-average reasoning score, and a policy learns to do exactly that. Pass ``None`` for prompts
that do not ask for reasoning (then missing reasoning is "no score"). Two judges:

- ``RuleJudge``: deterministic and instant, for CPU runs and tests.
- ``LLMJudge``: a rubric prompt answered by any text generator (the policy's own rollout engine by
  default, a second engine for a fixed judge model, or an OpenAI-compatible server: the backends
  live in ``awpo.judges``); the score is parsed robustly from the reply.

``prompt`` is the user's request as text (e.g. the last user message), not the rendered template.
"""

from __future__ import annotations

import json
import logging
import math
import re
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..judges.health import FailureWatch, JudgeStats
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
RUBRIC_FIELDS = ("prompt", "tools", "reasoning", "calls")


def check_rubric(text) -> str:
    """``text`` if it is a usable rubric template, else ValueError saying why.

    A rubric is a ``str.format`` template: it may show ``{prompt}`` (the user's request),
    ``{tools}`` (one line per tool), ``{reasoning}`` (required) and ``{calls}`` (one JSON call per
    line); literal braces are written ``{{`` and ``}}``. The reply should end with a score the
    parser reads (``Score: N/D``; a bare number is read on the 0-10 scale).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the rubric is empty")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as err:
        raise ValueError(f"the rubric is not a valid template ({err}); write literal braces as {{{{ and }}}}") from None
    unknown = sorted(fields - set(RUBRIC_FIELDS))
    if unknown:
        shown = ", ".join("{" + name + "}" for name in unknown)
        raise ValueError(f"the rubric uses unknown field(s) {shown}; it may use "
                         f"{', '.join('{' + f + '}' for f in RUBRIC_FIELDS)} (literal braces: {{{{ and }}}})")
    if "reasoning" not in fields:
        raise ValueError("the rubric never shows the reasoning: put {reasoning} in it")
    return text


def load_rubric(path: str) -> str:
    """A rubric template from a text file (see ``check_rubric``); ValueError naming the file."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read the rubric file {path}: {err}") from None
    try:
        return check_rubric(text)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


@dataclass
class Verdict:
    """One completion's judgement: the score, and how it came about.

    ``status``: "scored" (the judge replied with a score), "cached" (scored earlier this step),
    "missing_reasoning" (not sent: no reasoning), "failed" (no reply: error, timeout, malformed
    response) or "unreadable" (a reply without a readable score). ``reply`` is the judge's text when
    it was asked in this call.
    """

    score: float
    status: str
    reply: str | None = None


class LLMJudge:
    """Scores reasoning by asking a language model with a rubric.

    ``generate`` maps a list of prompts to a list of replies (same length); a ``None`` reply means
    that request failed. Scores are cached per (prompt, completion) until ``new_step()`` /
    ``clear_cache()``; failed or unparseable replies give NaN (and are not cached), never an
    exception. A completion without reasoning is not sent to the model: it scores
    ``missing_reasoning_score`` (0.0 by default; None: NaN).

    ``stats`` counts this step's requests, failures and waiting time; ``finish_step()`` returns them
    as metrics and raises ``JudgeUnavailableError`` once ``max_failed_steps`` steps in a row asked
    the judge and got no score at all (0: never). ``name`` says which model judges, in messages.
    """

    def __init__(
        self,
        generate: Callable[[list[str]], list[str | None]],
        *,
        rubric: str = RUBRIC,
        scale: float = 10.0,
        max_field_chars: int = 2000,
        missing_reasoning_score: float | None = MISSING_REASONING_SCORE,
        max_failed_steps: int = 0,
        name: str = "LLM judge",
    ):
        if not callable(generate):
            raise ValueError("generate must be a callable: list of prompts -> list of texts")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.generate = generate
        self.rubric = check_rubric(rubric)
        self.scale = scale
        self.max_field_chars = max_field_chars
        self.missing_reasoning_score = check_missing_reasoning_score(missing_reasoning_score)
        self.name = name
        self.stats = JudgeStats()
        self.watch = FailureWatch(max_failed_steps)
        self._cache: dict[tuple, float] = {}

    @classmethod
    def from_engine(cls, engine, *, tokenizer=None, temperature: float = 0.0, max_tokens: int = 96,
                    max_model_len: int | None = None, **kwargs) -> LLMJudge:
        """A judge backed by a rollout engine (``awpo.rollout``'s ``generate(prompts, n=...)``).

        With ``tokenizer``, the rubric is wrapped in the model's chat template as a user turn; with
        ``max_model_len``, a rubric prompt too long for the engine gets no reply (NaN).
        """
        from ..judges.engine import EngineBackend

        backend = EngineBackend(engine, tokenizer, max_tokens=max_tokens, max_model_len=max_model_len,
                                temperature=temperature)
        return cls(backend, **kwargs)

    def score(self, prompt: str, reasoning: str | None, calls: list[ToolCall], tools: list[dict]) -> float:
        return self.score_many([JudgeRequest(prompt, reasoning, calls, tools)])[0]

    def score_many(self, requests: Sequence[JudgeRequest]) -> list[float]:
        return [verdict.score for verdict in self.verdicts(requests)]

    def verdicts(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        """``score_many`` with each score's status and the judge's reply (for ``python -m awpo.judge``)."""
        verdicts: list[Verdict | None] = [None] * len(requests)
        todo: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            if not has_reasoning(request.reasoning):  # nothing to judge (SPEC section 1)
                verdicts[index] = Verdict(self.missing_reasoning_score, "missing_reasoning")
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
                for index in indices:
                    verdicts[index] = verdict
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
        calls = "\n".join(json.dumps(c.to_dict(), ensure_ascii=False) for c in request.calls) or "(no tool call)"
        return self.rubric.format(
            prompt=_clip(request.prompt, self.max_field_chars),
            tools=_clip(_tool_summary(request.tools), self.max_field_chars),
            reasoning=_clip(request.reasoning or "", self.max_field_chars),
            calls=_clip(calls, self.max_field_chars),
        )

    def _ask(self, requests: list[JudgeRequest]) -> list[Verdict]:
        started = time.perf_counter()
        replies, error = self._replies([self.rubric_prompt(r) for r in requests])
        verdicts = [_verdict(reply, self.scale) for reply in replies]
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


def _verdict(reply, scale: float) -> Verdict:
    if not isinstance(reply, str):
        return Verdict(NAN, "failed")
    score = parse_judge_score(reply, scale=scale)
    return Verdict(score, "unreadable" if math.isnan(score) else "scored", reply)


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
