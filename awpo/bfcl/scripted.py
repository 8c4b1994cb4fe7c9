"""Scripted "models" with the generate-function signature: the pipeline's own sanity checks.

- ``oracle_model``: answers every entry with its ground truth (single-turn: the first acceptable
  value of each parameter; multi-turn: all of a turn's ground-truth calls at the turn's first step,
  then a plain-text reply that ends the turn). BFCL's checker must give it 100%.
- ``silent_model``: never calls a tool. BFCL must give it 0%, except 100% on irrelevance.

Tests derive further scripted models from these (a wrong value, a dropped call) with ``answer_with``.
"""

from __future__ import annotations

from collections.abc import Callable

from awpo.toolcall import format_tool_calls

from .generate import GenerateFn, GenerationRequest

NO_CALL_REPLY = "I have done what was asked."


def first_acceptable_calls(ground_truth: list[dict], functions: list[dict] | None = None) -> list[dict]:
    """One correct answer from BFCL's possible-answer form ``[{name: {param: [acceptable, ...]}}]``.

    Each parameter takes its first acceptable value, except that ``""`` (BFCL's mark of "may be
    omitted") leaves an optional parameter out; with the function docs at hand, a required one
    takes its first real value instead, and a parameter the doc does not declare is left out when
    it may be.
    """
    docs = {doc["name"]: doc.get("parameters", {}) for doc in functions or []}
    calls = []
    for option in ground_truth:
        (name, params), = option.items()
        doc = docs.get(name)
        arguments = {}
        for key, values in params.items():
            value = _pick(values, required=doc is not None and key in doc.get("required", []),
                          declared=doc is None or key in doc.get("properties", {}))
            if value is not _OMIT:
                arguments[key] = value
        calls.append({"name": name, "arguments": arguments})
    return calls


_OMIT = object()


def _pick(values, *, required: bool, declared: bool):
    if not isinstance(values, list) or not values:
        return _OMIT
    optional = "" in values
    if optional and (not required or not declared):
        return _OMIT
    real = [value for value in values if value != ""]
    return _nested(real[0]) if real else _OMIT


def _nested(value):
    # Possible answers nest: a dict value maps each key to its own list of acceptable values.
    if isinstance(value, dict):
        picked = {key: _pick(values, required=False, declared=True) if isinstance(values, list) else values
                  for key, values in value.items()}
        return {key: v for key, v in picked.items() if v is not _OMIT}
    if isinstance(value, list):
        return [_nested(item) if isinstance(item, dict) else item for item in value]
    return value


def answer_with(answer: Callable[[GenerationRequest], str]) -> GenerateFn:
    """A generate function from a per-request answer function."""
    def generate(requests: list[GenerationRequest]) -> list[str]:
        return [answer(request) for request in requests]
    return generate


def oracle_model(entries: list[dict], multi_turn_calls: list[dict] | None = None) -> GenerateFn:
    """Answers with the ground truth. ``entries``: from ``BfclChecker.load_entries``;
    ``multi_turn_calls``: from ``BfclChecker.ground_truth_calls`` (needed for multi-turn entries)."""
    single = {entry["id"]: _oracle_text(entry) for entry in entries if "involved_classes" not in entry}
    turns = {item["id"]: item["turns"] for item in multi_turn_calls or []}

    def answer(request: GenerationRequest) -> str:
        if request.entry_id in turns:
            calls = turns[request.entry_id][request.turn]
            return format_tool_calls(calls) if request.step == 0 and calls else NO_CALL_REPLY
        if request.entry_id not in single:
            raise KeyError(f"oracle has no answer for entry {request.entry_id!r}")
        return single[request.entry_id] or NO_CALL_REPLY  # irrelevance: no call is the right answer

    return answer_with(answer)


def _oracle_text(entry: dict) -> str:
    if "relevance" in entry["id"] and "irrelevance" not in entry["id"]:
        # relevance entries have no possible answer: any decodable call is right
        return format_tool_calls([{"name": entry["function"][0]["name"], "arguments": {}}])
    return format_tool_calls(first_acceptable_calls(entry["ground_truth"], entry.get("function")))


def silent_model() -> GenerateFn:
    return answer_with(lambda request: NO_CALL_REPLY)
