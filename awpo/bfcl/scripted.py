"""Scripted "models" with the generate-function signature: the pipeline's own sanity checks.

- ``oracle_model``: answers every entry with its ground truth (single-turn: the first acceptable
  value of each parameter; multi-turn: all of a turn's ground-truth calls at the turn's first step,
  then a plain-text reply that ends the turn). BFCL's checker must give it 100%.
- ``silent_model``: never calls a tool. BFCL must give it 0%, except 100% on irrelevance.

Tests derive further scripted models from these (a wrong value, a dropped call) with ``answer_with``.
"""

from __future__ import annotations

from typing import Callable

from awpo.toolcall import format_tool_calls

from .generate import GenerateFn, GenerationRequest

NO_CALL_REPLY = "I have done what was asked."


def first_acceptable_calls(ground_truth: list[dict]) -> list[dict]:
    """One correct answer from BFCL's possible-answer form ``[{name: {param: [acceptable, ...]}}]``:
    the first acceptable value of each parameter, leaving out those whose first option is ``""``
    (BFCL's mark of an optional parameter)."""
    calls = []
    for option in ground_truth:
        (name, params), = option.items()
        calls.append({"name": name, "arguments": _first_acceptable(params)})
    return calls


def _first_acceptable(options):
    # Possible answers nest: a dict maps each key to its list of acceptable values, recursively.
    if isinstance(options, dict):
        return {key: _first_acceptable(values[0]) if isinstance(values, list) else values
                for key, values in options.items() if not (isinstance(values, list) and (not values or values[0] == ""))}
    if isinstance(options, list):
        return [_first_acceptable(item) if isinstance(item, dict) else item for item in options]
    return options


def answer_with(answer: Callable[[GenerationRequest], str]) -> GenerateFn:
    """A generate function from a per-request answer function."""
    def generate(requests: list[GenerationRequest]) -> list[str]:
        return [answer(request) for request in requests]
    return generate


def oracle_model(entries: list[dict], multi_turn_calls: list[dict] | None = None) -> GenerateFn:
    """Answers with the ground truth. ``entries``: from ``BfclChecker.load_entries``;
    ``multi_turn_calls``: from ``BfclChecker.ground_truth_calls`` (needed for multi-turn entries)."""
    single = {entry["id"]: format_tool_calls(first_acceptable_calls(entry["ground_truth"]))
              for entry in entries if "involved_classes" not in entry}
    turns = {item["id"]: item["turns"] for item in multi_turn_calls or []}

    def answer(request: GenerationRequest) -> str:
        if request.entry_id in turns:
            calls = turns[request.entry_id][request.turn]
            return format_tool_calls(calls) if request.step == 0 and calls else NO_CALL_REPLY
        if request.entry_id not in single:
            raise KeyError(f"oracle has no answer for entry {request.entry_id!r}")
        return single[request.entry_id] or NO_CALL_REPLY  # irrelevance: no call is the right answer

    return answer_with(answer)


def silent_model() -> GenerateFn:
    return answer_with(lambda request: NO_CALL_REPLY)
