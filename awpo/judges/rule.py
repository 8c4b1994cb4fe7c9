"""The grounded rule judge: deterministic reasoning scores from the request and the offered tools.

It reads what a careful reader of the reasoning has (the request, the offered tools, the reasoning,
the calls), never the task's answer, and scores four things (docs/SPEC.md section 1):

- **fit**: which offered tools the request is about (``grounding.tool_fit``). A call scores its
  tool's fit (an unknown or unrelated tool 0); a refusal scores 1 only when no offered tool fits and
  the reasoning says so, 0.5 when none fits but the reasoning does not say so, and 0 when one fits;
- **values**: the share of the calls' argument values and of the values the reasoning states that
  come from the request or from the tools' own text (defaults, enums, descriptions), compared with
  the outcome reward's normalisation; a missing required parameter counts as an invented value;
- **consistency**: reasoning that says no tool fits (or not to call a tool) and then calls one scores
  0; reasoning that names only other offered tools than the one called scores 0.3; a ``name=value``
  in the reasoning that the call contradicts costs its share;
- **coherence**: the share of the reasoning's words grounded in the request, the tools or a small
  reasoning vocabulary, the share of function words (sentences, not a list of keywords), repetition
  and length.

score = fit * values * consistency * (0.25 + 0.75 * coherence): a failure of fit, values or
consistency alone takes the score to (near) 0, however fluent the text; a fluent reasoning with the
right tool and the request's values scores near 1. What the rules cannot see: whether a value that
appears in the request was put in the right parameter, whether a fitting tool is the best of several,
and paraphrased reasoning with few shared words (its coherence falls). docs/JUDGES.md has examples.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..rewards.outcome import normalize_string
from ..toolcall import ToolCall
from . import grounding
from .base import MISSING_REASONING_SCORE, InstantJudge, JudgeRequest, check_missing_reasoning_score
from .grounding import Evidence, ToolVocabulary

NO_TOOL_FITS = re.compile(
    r"\b(no|none of the|not any|without a)\b[\w\s'-]{0,30}\b(tools?|functions?)\b"
    r"|\b(can ?not|can't|unable to|doesn't|does not|don't|do not|isn't|is not|aren't|are not)\b"
    r"[\w\s'-]{0,40}\b(tools?|functions?)\b[\w\s'-]{0,20}\b(fit|fits|match|matches|help|helps|apply|applies|"
    r"support|supports|available|relevant|cover|covers|suitable)\b"
    r"|\b(call|calling|use|using) (nothing|no tool|none)\b|\bno (tool|function) (call )?(is )?needed\b",
    re.IGNORECASE,
)
_DO_NOT_CALL = re.compile(r"\b(?:do not|don't|not|never|shouldn't|should not|won't|will not|must not)\s+"
                          r"(?:call|use|invoke|need)\s+(?:the\s+)?([A-Za-z_][\w.]*)", re.IGNORECASE)
_WILL_CALL = re.compile(r"\b(?:call|use|invoke|calling|using)\s+(?:the\s+)?([A-Za-z_][\w.]*)", re.IGNORECASE)
NAMES_OTHER_TOOL = 0.3
REFUSAL_UNEXPLAINED = 0.5


@dataclass
class RuleJudge(InstantJudge):
    """Deterministic, grounded reasoning score in [0, 1] (module docstring). No reasoning (no
    ``<think>`` block, or an empty one) scores ``missing_reasoning_score`` (0.0 by default; None: NaN)."""

    min_words: int = 3
    max_words: int = 200
    missing_reasoning_score: float | None = MISSING_REASONING_SCORE
    name: str = "grounded rule judge"

    def __post_init__(self):
        check_missing_reasoning_score(self.missing_reasoning_score)

    def judge(self, request: JudgeRequest) -> float:
        parts = self.parts(request.prompt, request.reasoning or "", request.calls, request.tools)
        return parts["fit"] * parts["values"] * parts["consistency"] * (0.25 + 0.75 * parts["coherence"])

    def parts(self, prompt: str, reasoning: str, calls: list[ToolCall], tools: list[dict]) -> dict[str, float]:
        """The four parts of the score, each in [0, 1] (for reading a score: ``python -m awpo.judge``).
        A completion whose calls do not parse is not judged (``base.unjudged_verdict``)."""
        vocabularies = grounding.tool_vocabularies(tools)
        evidence = Evidence.of(prompt, tools)
        return {
            "fit": fit_part(prompt, reasoning, calls, vocabularies),
            "values": values_part(reasoning, calls, vocabularies, evidence),
            "consistency": consistency_part(reasoning, calls, vocabularies),
            "coherence": coherence_part(prompt, reasoning, vocabularies, self.min_words, self.max_words),
        }


def says_no_tool_fits(reasoning: str) -> bool:
    return bool(NO_TOOL_FITS.search(reasoning))


def fit_part(prompt: str, reasoning: str, calls: list[ToolCall], vocabularies: list[ToolVocabulary]) -> float:
    fit = grounding.tool_fit(prompt, vocabularies)
    if calls:  # a tool that fits scores 1, one with weaker evidence in proportion
        return sum(min(1.0, fit.get(call.name, 0.0) / grounding.FITS) for call in calls) / len(calls)
    if any(value >= grounding.FITS for value in fit.values()):
        return 0.0  # a refusal although an offered tool fits
    return 1.0 if says_no_tool_fits(reasoning) else REFUSAL_UNEXPLAINED


def values_part(reasoning: str, calls: list[ToolCall], vocabularies: list[ToolVocabulary],
                evidence: Evidence) -> float:
    by_name = {v.name: v for v in vocabularies}
    grounded = total = 0
    for call in calls:
        for value in grounding.scalar_values(call.arguments):
            total += 1
            grounded += evidence.grounds(value)
        known = by_name.get(call.name)
        if known is not None:
            total += sum(1 for name in known.required if name not in call.arguments)  # a missing value is invented
    for value in grounding.stated_values(reasoning):
        total += 1
        grounded += evidence.grounds(value)
    return grounded / total if total else (0.0 if calls and _needs_arguments(calls, by_name) else 1.0)


def _needs_arguments(calls: list[ToolCall], by_name: dict[str, ToolVocabulary]) -> bool:
    return any(by_name[c.name].required for c in calls if c.name in by_name)


def consistency_part(reasoning: str, calls: list[ToolCall], vocabularies: list[ToolVocabulary]) -> float:
    offered = {v.name for v in vocabularies}
    called = {call.name for call in calls}
    mentioned = {name for name in offered if mentions_name(reasoning, name)}
    if not calls:
        meant = {m.group(1) for m in _WILL_CALL.finditer(reasoning)} & offered
        refused = {m.group(1) for m in _DO_NOT_CALL.finditer(reasoning)}
        return NAMES_OTHER_TOOL if meant - refused else 1.0  # "I will call X", then no call
    if says_no_tool_fits(reasoning):
        return 0.0
    if called & {m.group(1) for m in _DO_NOT_CALL.finditer(reasoning)}:
        return 0.0
    score = NAMES_OTHER_TOOL if mentioned and not (mentioned & called) else 1.0
    return score * (1.0 - _contradicted_share(reasoning, calls))


def _contradicted_share(reasoning: str, calls: list[ToolCall]) -> float:
    """The share of the reasoning's ``parameter=value`` statements that the calls contradict: the
    parameter is in a call, and no call gives it that value."""
    given: dict[str, set[str]] = {}
    for call in calls:
        for name, value in call.arguments.items():
            given.setdefault(name, set()).add(normalize_string(str(value)))
    stated = [(name, value) for name, value in grounding.assignments(reasoning) if name in given]
    if not stated:
        return 0.0
    return sum(normalize_string(value) not in given[name] for name, value in stated) / len(stated)


def mentions_name(reasoning: str, name: str) -> bool:
    text = reasoning.lower()
    spaced = re.sub(r"[_.]+", " ", name.lower())
    return name.lower() in text or spaced in text


def coherence_part(prompt: str, reasoning: str, vocabularies: list[ToolVocabulary], min_words: int,
                   max_words: int) -> float:
    names = set()
    for vocabulary in vocabularies:
        names |= {vocabulary.name.lower()} | {p.lower() for p in vocabulary.properties}
    words = [w for w in grounding.words(reasoning) if not w.replace("_", "").isdigit()]  # numbers: values_part
    if not words:
        return 0.0
    known = grounding.stems(prompt) | grounding.FUNCTION_WORDS | grounding.REASONING_WORDS | names
    for vocabulary in vocabularies:
        known |= vocabulary.stems
    grounded_share = sum(w in known or grounding.stem(w) in known for w in words) / len(words)
    prose = [w for w in words if w not in names] or words  # tool and parameter names are not sentences
    function_share = sum(w in grounding.FUNCTION_WORDS for w in prose) / len(prose)
    grounded = _ramp(grounded_share, 0.4, 0.8)
    sentences = _ramp(function_share, 0.0, 0.15) if len(prose) >= 4 else 1.0  # too short to tell
    return grounded * sentences * _repetition(words) * _length(len(words), min_words, max_words)


def _ramp(value: float, low: float, high: float) -> float:
    return min(1.0, max(0.0, (value - low) / (high - low)))


def _repetition(words: list[str]) -> float:
    """Distinct word 3-grams over all 3-grams, mapped from [0.3, 0.8] onto [0, 1] (loops score 0)."""
    if len(words) < 8:
        return 1.0
    grams = list(zip(words, words[1:], words[2:]))
    return _ramp(len(set(grams)) / len(grams), 0.3, 0.8)


def _length(count: int, low: int, high: int) -> float:
    if count < low:
        return count / low
    return high / count if count > high else 1.0
