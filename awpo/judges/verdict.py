"""Reading a judge's reply: the verdict format and its strict parser.

A reply is read in exactly one of two forms, and anything else is unreadable (NaN, counted as such):

- **structured**: the whole reply is one JSON object ``{"reason": "...", "score": N}`` with an
  integer ``N`` in ``0..10`` (``VERDICT_SCHEMA``). Backends that can constrain decoding (vLLM's
  structured outputs in the engine judge, ``response_format`` on an OpenAI-compatible server) make
  every reply take this form;
- **plain**: the reply's final non-empty line is ``Score: N/10`` (nothing else on that line but
  optional Markdown emphasis and a full stop).

Nothing is searched for inside the reply: a judge that quotes the policy's ``{"score": 10}`` or
mentions "the maximum score is 10/10" after its verdict gives an unreadable reply, never the quoted
number. The graded text can therefore not pick the number the parser reads; it can only try to
persuade the judge model, which the rubric's data blocks are there to resist (``rubric.py``).
"""
from __future__ import annotations

import json
import math
import re

NAN = float("nan")
SCALE = 10  # the rubric asks for a score from 0 to SCALE
MAX_REASON_CHARS = 120

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
        "score": {"type": "integer", "minimum": 0, "maximum": SCALE},
    },
    "required": ["reason", "score"],
    "additionalProperties": False,
}

# The most tokens a VERDICT_SCHEMA reply can take: the compact object (no whitespace between its parts)
# around the longest reason, each of whose characters is at most 6 bytes (a "\u001f" escape; a raw
# character is 1 to 4), every token carrying at least one byte. A structured request asks for at
# least this many tokens, so no verdict is cut by its budget (a real judge writes far fewer).
VERDICT_MAX_TOKENS = len(f'{{"reason":"","score":{SCALE}}}') + 6 * MAX_REASON_CHARS

PLAIN_REPLY_FORMAT = f'Reply with one short sentence, then a last line of the form "Score: N/{SCALE}".'
JSON_REPLY_FORMAT = (f'Reply with one JSON object only: {{"reason": "<one short sentence>", "score": N}}, '
                     f"N an integer from 0 to {SCALE}.")

_SCORE_LINE = re.compile(rf"^[*_\s]*score[*_\s]*[:=][*_\s]*(\d{{1,2}})\s*/\s*{SCALE}[*_\s]*\.?[*_\s]*$",
                         re.IGNORECASE)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
MAX_REPLY_CHARS = 16_000  # a verdict is short; a longer reply is read no further than this from its end


def parse_judge_score(text) -> float:
    """A judge reply -> score in [0, 1], or NaN when the reply is in neither verdict form. Never raises."""
    if not isinstance(text, str):
        return NAN
    text = text.strip()
    if len(text) > MAX_REPLY_CHARS:
        text = text[-MAX_REPLY_CHARS:]
    structured = _structured_score(text)
    if structured is not None:
        return structured
    lines = [line for line in text.splitlines() if line.strip()]
    match = _SCORE_LINE.match(lines[-1]) if lines else None
    return _unit(int(match.group(1))) if match else NAN


def _structured_score(text: str) -> float | None:
    """The score of a reply that is one JSON verdict object (optionally in a ```json fence); None
    when the reply is not JSON at all, NaN when it is JSON but not a valid verdict."""
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text
    if not body.startswith("{"):
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return NAN
    if not isinstance(obj, dict) or set(obj) - {"reason", "score"} or "score" not in obj:
        return NAN
    score = obj["score"]
    if isinstance(score, bool) or not isinstance(score, int):
        return NAN
    return _unit(score)


def _unit(score: int) -> float:
    return score / SCALE if 0 <= score <= SCALE else NAN


def is_readable(text) -> bool:
    return not math.isnan(parse_judge_score(text))
