"""Outcome reward: do the parsed tool calls match a BFCL "possible answer"? (docs/SPEC.md section 4)

A ground truth is a list of expected calls, ``[{function_name: {param: [acceptable values]}}]``.
``""`` among a parameter's acceptable values means it may be omitted; ``[]`` (no calls) means no tool
fits ("irrelevance") and only a completion without any call matches it.

The per-call check follows BFCL's ``ast_checker`` for Python: exact function name; every required
parameter (of the schema, and every ground-truth parameter without ``""``) present; no parameter the
ground truth (or the schema) does not list; exact Python types (``bool`` is not ``int``) except that
an ``int`` is accepted for a ``float``; strings compared after BFCL's normalisation; lists element-wise;
dict values against possible-answer dicts; a value of another type than the schema's but of the
ground truth's own type is compared as is (BFCL's "variable" rule). Without ``tools`` the expected
type of a parameter is the type of its first non-``""`` acceptable value.

``tests/awpo/test_outcome_vs_bfcl.py`` checks that this verdict equals BFCL's own (Qwen-FC decoding +
``ast_checker`` / irrelevance check, run in BFCL's venv) on a seeded sample of real BFCL entries, each
answered correctly and in deliberately wrong ways. Deliberate differences from BFCL, all rare in
practice (``parallel_178`` is a real entry where the first one shows):

- parallel calls are matched by a true bijection (augmenting paths); BFCL matches greedily in
  ground-truth order and can reject an output for which a valid assignment exists;
- dict values are matched recursively (BFCL's dict checker is one level deep);
- output that BFCL's Qwen-FC decoder partly accepts scores 0 here: a completion with any malformed
  ``<tool_call>`` block (BFCL drops that block and scores the others), a call object with extra
  keys such as ``"id"`` (BFCL ignores them), or an unclosed ``<think>`` (BFCL then reads calls
  inside it); on irrelevance tasks a broken call scores 0 (BFCL counts it as "no call"):
  rewarding broken output would teach a policy to emit it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..toolcall import ParsedCompletion, ToolCall, normalize_tools, parse_completion

# Python types for the type names of BFCL function docs and of JSON schema.
SCHEMA_TYPES = {
    "string": str, "any": str,
    "integer": int,
    "float": float, "number": float,
    "boolean": bool,
    "array": list, "tuple": list,
    "dict": dict, "object": dict,
}
_STRING_NOISE = re.compile(r"[ ,./\-_*^]")


def outcome_reward(
    completion: str | ParsedCompletion,
    ground_truth: list[dict],
    *,
    graded: bool = False,
    tools: list[dict] | None = None,
) -> float:
    """1.0 / 0.0 (exact) or partial credit in [0, 1] (graded) for one completion.

    ``tools`` (the task's function docs) is optional: with it, types and required parameters come
    from the schema, as in BFCL's checker; without it, they are inferred from the ground truth.

    Graded mode, for a completion that parses and a non-empty ground truth::

        pair(call, entry) = 0                                     if the names differ
                          = (1 + names + values) / 3               otherwise
            names  = |R & P| / (|R| + |extra|)    R: required params, P: provided, extra: P - allowed
            values = |present params with an acceptable value| / (|P & allowed| + |R - P|)
            (a part whose denominator is 0 is 1)
        graded = max over one-to-one assignments of sum(pair) / max(#calls, #entries)

    so graded == 1 exactly when the exact reward is 1, extra or missing calls cost their share, and
    output that does not parse scores 0. Irrelevance (``[]``) scores the same in both modes.
    """
    validate_ground_truth(ground_truth)
    parsed = completion if isinstance(completion, ParsedCompletion) else parse_completion(completion)
    if parsed.error is not None:
        return 0.0
    if not ground_truth:
        return 1.0 if not parsed.calls else 0.0
    if not parsed.calls:
        return 0.0
    schemas = _schemas_by_name(tools)
    entries = [_entry_parts(entry) for entry in ground_truth]
    checks = [[check_call(call, name, params, schemas.get(name)) for name, params in entries] for call in parsed.calls]
    if graded:
        scores = [[check.score for check in row] for row in checks]
        return best_assignment_total(scores) / max(len(parsed.calls), len(entries))
    if len(parsed.calls) != len(entries):
        return 0.0
    exact = [[check.exact for check in row] for row in checks]
    return 1.0 if has_perfect_matching(exact) else 0.0


def validate_ground_truth(ground_truth) -> None:
    """Raise ValueError naming the bad entry unless ``ground_truth`` is in possible-answer form."""
    if not isinstance(ground_truth, list):
        raise ValueError("ground_truth must be a list of {function_name: {param: [values]}}, "
                         f"got {type(ground_truth).__name__}")
    for index, entry in enumerate(ground_truth):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"ground_truth[{index}] must be a dict with exactly one function name, got {entry!r}")
        (name, params), = entry.items()
        if not isinstance(name, str) or not isinstance(params, dict):
            raise ValueError(f"ground_truth[{index}] must map a function name to a dict of parameters, got {entry!r}")
        for param, acceptable in params.items():
            if not isinstance(acceptable, list):
                raise ValueError(f"ground_truth[{index}][{name!r}][{param!r}] must be a list of acceptable values, "
                                 f"got {acceptable!r}")


def normalize_string(text: str) -> str:
    """BFCL's string normalisation: drop spaces and ``,./-_*^``, lower-case, ``'`` -> ``"``."""
    return _STRING_NOISE.sub("", text).lower().replace("'", '"')


def _literal(value):
    """A possible-answer value (dicts map keys to acceptable lists) -> one concrete value."""
    if isinstance(value, dict) and _is_answer_dict(value):
        concrete = {}
        for key, options in value.items():
            chosen = [option for option in options if option != ""]
            if chosen:
                concrete[key] = _literal(chosen[0])
        return concrete
    if isinstance(value, list):
        return [_literal(item) for item in value]
    return value


# ----------------------------------------------------------------------------------------------
# one call against one ground-truth entry
# ----------------------------------------------------------------------------------------------


@dataclass
class CallCheck:
    name_match: bool
    required: int = 0  # |R|
    required_present: int = 0  # |R & P|
    extra: int = 0  # |P - allowed|
    present: int = 0  # |P & allowed|
    missing: int = 0  # |R - P|
    values_ok: int = 0  # present params with an acceptable value

    @property
    def exact(self) -> bool:
        return self.name_match and self.extra == 0 and self.missing == 0 and self.values_ok == self.present

    @property
    def score(self) -> float:
        if not self.name_match:
            return 0.0
        names = _ratio(self.required_present, self.required + self.extra)
        values = _ratio(self.values_ok, self.present + self.missing)
        return (1.0 + names + values) / 3.0


def _ratio(numerator: int, denominator: int) -> float:
    return 1.0 if denominator == 0 else numerator / denominator


def check_call(call: ToolCall, name: str, expected: dict, schema: dict | None) -> CallCheck:
    if call.name != name:
        return CallCheck(name_match=False)
    properties = (schema or {}).get("parameters", {}).get("properties", {})
    schema_required = set((schema or {}).get("parameters", {}).get("required", []))
    allowed = {p for p in expected if schema is None or p in properties}
    required = schema_required | {p for p, acceptable in expected.items() if "" not in acceptable}
    provided = set(call.arguments)
    present = provided & allowed
    values_ok = sum(
        value_matches(call.arguments[p], expected[p], properties.get(p) if schema is not None else None)
        for p in present
    )
    return CallCheck(
        name_match=True,
        required=len(required),
        required_present=len(required & provided),
        extra=len(provided - allowed),
        present=len(present),
        missing=len(required - provided),
        values_ok=values_ok,
    )


def _schemas_by_name(tools: list[dict] | None) -> dict[str, dict]:
    if not tools:
        return {}
    return {tool["name"]: tool for tool in normalize_tools(tools)}


def _entry_parts(entry: dict) -> tuple[str, dict]:
    (name, params), = entry.items()
    return name, params


# ----------------------------------------------------------------------------------------------
# one value against its acceptable values
# ----------------------------------------------------------------------------------------------


def value_matches(value, acceptable: list, param_schema: dict | None) -> bool:
    """BFCL's type check, then the comparison for that type."""
    gt_type = _answer_type(acceptable)
    expected = _schema_type(param_schema) or gt_type
    if expected is None:  # neither the schema nor the answers say: compare as is
        return value in acceptable
    if expected is float and type(value) is int:
        value = as_float(value)  # Python's int -> float promotion, as BFCL allows
        if value is None:
            return False  # too large for a float: it cannot equal any acceptable value
    item_type = _schema_type((param_schema or {}).get("items")) if expected is list else None
    if type(value) is expected and _items_have_type(value, acceptable, item_type):
        is_variable = gt_type is not None and gt_type is not expected
    elif gt_type is not None and type(value) is gt_type and type(value) is not expected:
        is_variable = True  # e.g. a variable name given for an integer parameter
    else:
        return False
    if is_variable:
        return value in acceptable
    if expected is dict:
        return _dict_matches(value, acceptable)
    holds_dicts = item_type is dict if item_type is not None else _answers_are_dict_lists(acceptable)
    if expected is list and holds_dicts:
        return _dict_list_matches(value, acceptable)
    if expected is str:
        return normalize_string(value) in {normalize_string(a) for a in acceptable if type(a) is str}
    if expected is list:
        return _normalize_list(value) in [_normalize_list(a) for a in _list_answers(acceptable)]
    return value in acceptable


def as_float(number) -> float | None:
    """``float(number)``, or None when it does not fit a float (a huge int) or is not finite."""
    try:
        value = float(number)
    except (OverflowError, ValueError, TypeError):
        return None
    return value if math.isfinite(value) else None


def _schema_type(schema: dict | None):
    if not isinstance(schema, dict):
        return None
    type_name = schema.get("type")
    return SCHEMA_TYPES.get(type_name) if isinstance(type_name, str) else None


def _answer_type(acceptable: list):
    for answer in acceptable:
        if answer != "":
            return type(answer)
    return None


def _items_have_type(value, acceptable: list, item_type) -> bool:
    """BFCL's one-level check of list items: each item has the schema's item type or the type of
    the acceptable list's own items. A ``""`` (or any non-list) answer lets any list through.
    As in BFCL, there is no int -> float promotion inside lists."""
    if item_type is None:
        return True
    for answer in acceptable:
        if not isinstance(answer, list):
            return True
        answer_item_type = _answer_type(answer)
        if all(type(v) is item_type or type(v) is answer_item_type for v in value):
            return True
    return False


def _normalize_list(items: list) -> list:
    return [normalize_string(v) if type(v) is str else v for v in items]


def _list_answers(acceptable: list) -> list[list]:
    # BFCL normalises "" to the empty list, so [] matches an optional list parameter.
    return [a if isinstance(a, list) else [] for a in acceptable if isinstance(a, list) or a == ""]


def _answers_are_dict_lists(acceptable: list) -> bool:
    lists = [a for a in acceptable if isinstance(a, list) and a]
    return bool(lists) and all(isinstance(item, dict) for item in lists[0])


def _dict_matches(value: dict, acceptable: list) -> bool:
    return any(_dict_matches_one(value, answer) for answer in acceptable if isinstance(answer, dict))


def _dict_matches_one(value: dict, answer: dict) -> bool:
    """``answer`` maps each key to its acceptable values (a list; a bare value means [value])."""
    for key, item in value.items():
        if key not in answer or not _option_matches(item, _as_options(answer[key])):
            return False
    return all(key in value or "" in _as_options(options) for key, options in answer.items())


def _as_options(options) -> list:
    return options if isinstance(options, list) else [options]


def _option_matches(item, options: list) -> bool:
    for option in options:
        if type(item) is str and type(option) is str:
            if normalize_string(item) == normalize_string(option):
                return True
        elif isinstance(item, dict) and isinstance(option, dict) and _is_answer_dict(option):
            if _dict_matches_one(item, option):
                return True
        elif type(item) is not str and item == option:  # plain equality, as BFCL's dict checker
            return True
    return False


def _is_answer_dict(option: dict) -> bool:
    return all(isinstance(v, list) for v in option.values())


def _dict_list_matches(value: list, acceptable: list) -> bool:
    for answer in acceptable:
        answer = [] if answer == "" else answer
        if not isinstance(answer, list) or len(answer) != len(value):
            continue
        if all(isinstance(v, dict) and isinstance(a, dict) and _dict_matches_one(v, a) for v, a in zip(value, answer)):
            return True
    return False


# ----------------------------------------------------------------------------------------------
# assignments between calls and ground-truth entries
# ----------------------------------------------------------------------------------------------


def has_perfect_matching(match: list[list[bool]]) -> bool:
    """Whether a square boolean matrix has a one-to-one assignment (Kuhn's augmenting paths)."""
    size = len(match)
    owner: list[int | None] = [None] * size  # column -> row

    def augment(row: int, seen: list[bool]) -> bool:
        for col in range(size):
            if match[row][col] and not seen[col]:
                seen[col] = True
                if owner[col] is None or augment(owner[col], seen):
                    owner[col] = row
                    return True
        return False

    return all(augment(row, [False] * size) for row in range(size))


def best_assignment_total(scores: list[list[float]]) -> float:
    """Largest total of a one-to-one partial assignment of rows to columns (scores >= 0).

    With non-negative scores a best partial assignment can be taken to cover the smaller side, so
    this is the Hungarian algorithm (O(n^2 m), exact at any size) on the negated scores.
    """
    if not scores or not scores[0]:
        return 0.0
    if len(scores) > len(scores[0]):
        scores = [list(column) for column in zip(*scores)]
    owner = _hungarian_min([[-score for score in row] for row in scores])
    return sum(scores[row][col] for col, row in enumerate(owner) if row is not None)


def _hungarian_min(cost: list[list[float]]) -> list[int | None]:
    """Minimum-cost assignment of every row of ``cost`` (rows <= columns) to its own column
    (shortest augmenting paths with potentials) -> the row given to each column, or None."""
    cols = len(cost[0])
    row_pot, col_pot = [0.0] * len(cost), [0.0] * (cols + 1)
    owner: list[int | None] = [None] * (cols + 1)  # column -> row; column ``cols`` is the virtual start
    for row in range(len(cost)):
        owner[cols] = row
        _augment(cost, row_pot, col_pot, owner)
    return owner[:cols]


def _augment(cost, row_pot, col_pot, owner) -> None:
    """Add row ``owner[-1]`` to the assignment along a shortest augmenting path (Dijkstra-like)."""
    cols = len(cost[0])
    dist, came_from, done = [math.inf] * (cols + 1), [cols] * (cols + 1), [False] * (cols + 1)
    col = cols
    while owner[col] is not None:
        done[col] = True
        row, delta, nxt = owner[col], math.inf, cols
        for j in range(cols):
            if not done[j]:
                reduced = cost[row][j] - row_pot[row] - col_pot[j]
                if reduced < dist[j]:
                    dist[j], came_from[j] = reduced, col
                if dist[j] < delta:
                    delta, nxt = dist[j], j
        for j in range(cols + 1):
            if done[j]:
                row_pot[owner[j]] += delta
                col_pot[j] -= delta
            else:
                dist[j] -= delta
        col = nxt
    while col != cols:  # flip the path back to the start
        prev = came_from[col]
        owner[col] = owner[prev]
        col = prev
