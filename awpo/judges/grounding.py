"""Text evidence the grounded rule judge reads: words, stems, the offered tools' vocabularies, values.

Everything here is derived from the request and the offered tools only (never from the task's
answer). Words are lower-cased and reduced by a small suffix-stripping stemmer, so "flights" meets
"flight" and "translation" meets "translate". A tool's vocabulary is the words of its name,
description, parameter names, parameter descriptions and enum values, widened by ``RELATED_WORDS``:
a few everyday words per common tool domain ("cold" for a weather tool, "times" for a calculator),
added only to a tool whose own words contain one of the domain's trigger words.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..rewards.outcome import as_float, normalize_string
from ..toolcall import normalize_tools

_WORD = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
_SPLIT_NAME = re.compile(r"[_.\-\s]+|(?<=[a-z])(?=[A-Z])")
_SUFFIXES = (("ations", ""), ("ation", ""), ("ions", ""), ("ion", ""), ("ings", ""), ("ing", ""), ("ies", "y"),
             ("ied", "y"), ("ers", ""), ("er", ""), ("es", ""), ("ed", ""), ("ly", ""), ("s", ""), ("e", ""))


_UNSTEMMED = frozenset({"times"})  # "times" (x) is not "time"


def stem(word: str) -> str:
    """``word`` without its first matching inflection suffix, keeping at least 3 letters (4 before -er)."""
    if word in _UNSTEMMED:
        return word
    for suffix, replacement in _SUFFIXES:
        keep = 4 if suffix.startswith("er") else 3
        if word.endswith(suffix) and len(word) - len(suffix) >= keep and not word.endswith("ss"):
            return word[: len(word) - len(suffix)] + replacement
    return word


def words(text: str) -> list[str]:
    """Lower-case words (``snake_case`` names stay one word)."""
    return _WORD.findall(text.lower().replace("'", "").replace("\u2019", ""))


def stems(text: str) -> set[str]:
    return {stem(w) for w in words(text)}


def _stem_set(text: str) -> frozenset[str]:
    return frozenset(stem(w) for w in text.split())


# Words that say nothing about which tool a request needs: function words and generic request verbs.
FUNCTION_WORDS = frozenset("""
a an the this that these those it its it's is are was were be been being am do does did done doing have has had
having i me my mine you your yours he him his she her we us our they them their there here what which who whom
whose when where why how if then than so because since as of in on at to for from by with without about into
onto over under between through during before after above below up down out off again further once and or but
nor not no yes all any both each few more most other some such only own same too very can could will would
shall should may might must just also now please im ill ive dont doesnt didnt isnt arent cant wont whats
thats theres cannot let lets one
""".split())
GENERIC_REQUEST_WORDS = _stem_set("""
get set find show tell give check make create need want like help know see look use using run do put go
want would love wonder right now today currently current me something thing things please thanks kindly
quick quickly latest new good best two three four five
""")
REASONING_WORDS = _stem_set("""
user users ask asks asked asking request requests requested want wants wanted need needs needed tool tools
function functions call calls called calling use uses used using fit fits fitting match matches matching
parameter parameters argument arguments value values required optional default provide provided given
mention mentions mentioned specify specified offer offered available none nothing relevant irrelevant
appropriate correct right wrong best should so therefore thus because since which answer respond reply
help task query information result results return returns name named field string number numbers first
second third then next finally also both each two three so step think plan it this that with without
know find get set check look give gives tell here there only just can cannot could would will
""")

# domain -> (trigger words in a tool's own text, the everyday words added to its vocabulary)
RELATED_WORDS = {
    "weather": ("weather forecast temperature",
                "weather forecast temperature cold warm hot rain raining sunny snow wind windy humid humidity "
                "condition conditions degrees celsius fahrenheit climate outside"),
    "stock": ("stock stocks share shares ticker",
              "stock share shares price trading trade traded ticker quote market nasdaq nyse invest investor"),
    "currency": ("currency currencies money",
                 "currency money exchange dollar dollars euro euros rate worth pay paid cost usd eur gbp jpy cad "
                 "aud chf inr cny"),
    "units": ("unit units",
              "unit convert conversion km kilometer kilometers mile miles kg kilogram kilograms pound pounds meter "
              "meters feet foot liter liters gallon gallons distance weight length volume mi ft lb lbs gal m l"),
    "math": ("calculate calculator arithmetic operation",
             "calculate calculator compute math maths arithmetic plus sum subtract minus difference multiply "
             "times product divide divided quotient result equals total"),
    "calendar": ("calendar event events meeting",
                 "calendar event meeting appointment schedule block entry"),
    "reminder": ("reminder remind",
                 "remind reminder nudge ping forget alert"),
    "timer": ("timer countdown alarm",
              "timer countdown count alarm alert seconds minutes"),
    "email": ("email mail",
              "email mail message send write compose subject body inbox"),
    "search": ("search web internet",
               "search web google online internet lookup"),
    "file": ("file files path",
             "file read open contents content contain contains print lines document path txt csv md yaml yml "
             "log docx doc pdf json"),
    "translate": ("translate translation language",
                  "translate translation language phrase english spanish french german italian japanese "
                  "portuguese dutch chinese"),
    "restaurant": ("restaurant restaurants cuisine",
                   "restaurant eat food cuisine dine hungry places spots"),
    "flight": ("flight flights airline",
               "flight fly airline seats travel trip airport"),
    "shopping": ("shopping groceries",
                 "shopping list buy groceries items"),
}
_RELATED = [(_stem_set(trigger), _stem_set(related)) for trigger, related in RELATED_WORDS.values()]


@dataclass(frozen=True)
class ToolVocabulary:
    name: str
    weights: dict             # stem -> evidence weight (NAME_WEIGHT, RELATED_WEIGHT or PARAMETER_WEIGHT)
    required: tuple[str, ...]
    properties: dict

    @property
    def stems(self) -> set[str]:
        return set(self.weights)


NAME_WEIGHT = 1.0       # a word of the tool's name or description
RELATED_WEIGHT = 0.6    # an everyday word of one of its domains (RELATED_WORDS)
PARAMETER_WEIGHT = 0.4  # a word of a parameter's name, description or enum values only
FITS = 0.6              # a tool whose fit reaches this is one the request is about


def tool_vocabularies(tools: list[dict]) -> list[ToolVocabulary]:
    """One vocabulary per offered tool (tools that do not parse are skipped: they cannot be called)."""
    try:
        docs = normalize_tools(tools or [])
    except ValueError:
        docs = []
    return [_vocabulary(doc) for doc in docs]


def _vocabulary(doc: dict) -> ToolVocabulary:
    properties = doc["parameters"].get("properties") or {}
    ignored = GENERIC_REQUEST_WORDS | FUNCTION_WORDS
    own = stems(" ".join([_SPLIT_NAME.sub(" ", doc["name"]), doc["description"]])) - ignored
    parameters = stems(" ".join([_SPLIT_NAME.sub(" ", name) for name in properties]
                                + [_property_text(spec) for spec in properties.values()])) - ignored
    weights = dict.fromkeys(parameters, PARAMETER_WEIGHT)
    for trigger, extra in _RELATED:
        if (own | parameters) & trigger:
            weights.update({s: max(weights.get(s, 0.0), RELATED_WEIGHT) for s in extra - ignored})
    weights.update(dict.fromkeys(own, NAME_WEIGHT))
    required = tuple(r for r in doc["parameters"].get("required") or [] if isinstance(r, str))
    return ToolVocabulary(doc["name"], weights, required, properties)


def _property_text(spec) -> str:
    if not isinstance(spec, dict):
        return ""
    parts = [str(spec.get("description", ""))]
    if isinstance(spec.get("enum"), list):
        parts += [str(v) for v in spec["enum"]]
    return " ".join(parts)


_EMAIL_ADDRESS = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")


def content_stems(text: str) -> set[str]:
    """The stems of a request that can point at a tool (an e-mail address counts as the word "email",
    two or more numbers as the word "numbers")."""
    found = {s for s in stems(_EMAIL_ADDRESS.sub(" email ", text))}
    if len(numbers_in(text)) >= 2:
        found.add(stem("numbers"))
    return {s for s in found if s not in FUNCTION_WORDS and s not in GENERIC_REQUEST_WORDS and not s.isdigit()}


def tool_fit(request: str, vocabularies: list[ToolVocabulary]) -> dict[str, float]:
    """How well each offered tool fits the request, in [0, 1]: the sum over the request's content
    words of the tool's evidence weight for the word, divided by the number of offered tools that
    hold the word (a word every tool shares tells them apart less), capped at 1. A tool fits the
    request when this reaches ``FITS``; none fits when no tool reaches it."""
    request_stems = content_stems(request)
    holders: dict[str, int] = {}
    for vocabulary in vocabularies:
        for s in request_stems & vocabulary.stems:
            holders[s] = holders.get(s, 0) + 1
    return {v.name: min(1.0, sum(v.weights[s] / holders[s] for s in request_stems & v.stems)) for v in vocabularies}


# ----------------------------------------------------------------------------------------------
# values
# ----------------------------------------------------------------------------------------------

_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}:\d{2}\b")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")
_QUOTED = re.compile(r"\"([^\"\n]{1,200})\"|(?<!\w)'([^'\n]{1,200})'(?!\w)")
_ASSIGNED = re.compile(r"\b([a-z_][a-z0-9_]*)\s*[=:]\s*(\"[^\"\n]{0,200}\"|'[^'\n]{0,200}'|[^\s,;)\]}\[{\"']+)")
SMALL_COUNTS = {0.0, 1.0, 2.0, 3.0}  # "2 calls", "1 tool": counts in reasoning, not values


@dataclass(frozen=True)
class Evidence:
    """Where a value may come from: the request, and the offered tools' own text (defaults, enums,
    descriptions such as "celsius or fahrenheit")."""

    request: str
    request_squashed: str
    request_numbers: frozenset[float]
    tools_squashed: str
    tools_numbers: frozenset[float]

    @classmethod
    def of(cls, request: str, tools: list[dict]) -> Evidence:
        tools_text = json.dumps(tools or [], ensure_ascii=False, default=str)
        return cls(request, normalize_string(request), frozenset(numbers_in(request)),
                   normalize_string(tools_text), frozenset(numbers_in(tools_text)))

    def grounds(self, value) -> bool:
        if isinstance(value, bool) or value is None:
            return True  # a flag or a null says nothing the request could contradict
        if isinstance(value, (int, float)):
            number = as_float(value)
            return number is not None and (number in self.request_numbers or number in self.tools_numbers)
        if not isinstance(value, str):
            return False
        squashed = normalize_string(value)
        if not squashed:
            return False
        number = as_float(value) if _NUMBER.fullmatch(value.strip()) else None
        if number is not None:
            return number in self.request_numbers or number in self.tools_numbers
        return squashed in self.request_squashed or squashed in self.tools_squashed


def numbers_in(text: str) -> list[float]:
    without_dates = _DATE.sub(" ", text.replace(",", ""))
    found = [as_float(n) for n in _NUMBER.findall(without_dates)]
    return [n for n in found if n is not None]


def scalar_values(value) -> list:
    """The leaf values of a call's arguments (booleans and nulls left out)."""
    if isinstance(value, dict):
        return [v for item in value.values() for v in scalar_values(item)]
    if isinstance(value, list):
        return [v for item in value for v in scalar_values(item)]
    if isinstance(value, bool) or value is None:
        return []
    return [value]


_SENTENCE_BREAK = re.compile(r"[.!?:;\n]+")
_CAPITALISED = re.compile(r"\b[A-Z][A-Za-z]+\b")


def proper_names(text: str) -> list[str]:
    """Capitalised words that do not open a sentence (names such as "Paris"; "I" left out)."""
    names = []
    for sentence in _SENTENCE_BREAK.split(text):
        found = _CAPITALISED.findall(sentence)
        first = sentence.split()[0] if sentence.split() else ""
        names += [word for word in found if not first.startswith(word) or found.index(word) > 0]
    return names


def stated_values(reasoning: str) -> list[str | float]:
    """The values a reasoning states: quoted strings, dates and times, ``name=value`` right-hand sides,
    numbers (small counts left out) and proper names."""
    values: list[str | float] = [value for _, value in assignments(reasoning)]
    rest = _ASSIGNED.sub(" ", reasoning)
    for match in _QUOTED.finditer(rest):
        values.append(match.group(1) if match.group(1) is not None else match.group(2))
    rest = _QUOTED.sub(" ", rest)
    values += _DATE.findall(rest)
    values += [n for n in numbers_in(_DATE.sub(" ", rest)) if n not in SMALL_COUNTS]
    values += proper_names(rest)
    return [v for v in values if v != ""]


def assignments(reasoning: str) -> list[tuple[str, str]]:
    """``(name, value)`` for each ``name=value`` / ``name: value`` the reasoning writes."""
    return [(m.group(1), _bare(m.group(2))) for m in _ASSIGNED.finditer(reasoning)]


def _bare(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value.rstrip(".!?")
