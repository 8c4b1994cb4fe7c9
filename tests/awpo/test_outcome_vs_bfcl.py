"""``awpo.rewards.outcome_reward`` (exact mode) agrees with BFCL's official ``ast_checker``.

Real BFCL entries (a seeded sample of simple_python, multiple, parallel, parallel_multiple and
irrelevance), each answered correctly and in deliberately wrong ways: a wrong value, a wrong
function, a missing required parameter, an unexpected parameter, a dropped call, a duplicated call,
no call at all, and for parallel answers the calls in reverse order (which both must accept). BFCL's
verdict comes from its own pipeline (Qwen-FC decoding + ``ast_checker`` / irrelevance check) in the
BFCL venv; ``outcome_reward`` gets the same completion text, the possible answer and the entry's
function docs (``tools=``), and must return 1.0 exactly when BFCL says valid.

Deliberate disagreements (documented in ``awpo/rewards/outcome.py``; the last test pins the first
two so the documentation stays true):

- a completion with a malformed ``<tool_call>`` block next to good ones: BFCL drops the bad block
  and scores the rest; the reward gives 0 (rewarding broken output would teach the policy to emit it);
- a call object with extra keys such as ``"id"``: BFCL ignores them, the reward gives 0 (same reason);
- parallel answers are matched by a true bijection in the reward, greedily in BFCL (BFCL can reject
  an output for which a valid assignment exists: ``parallel_178``); nested dict values are matched
  recursively in the reward, one level deep in BFCL. Neither occurs in the sample below.
"""

from __future__ import annotations

import copy
import random

import pytest

from awpo.bfcl import BfclChecker
from awpo.bfcl.scripted import first_acceptable_calls
from awpo.rewards import outcome_reward
from awpo.toolcall import format_tool_calls

pytestmark = pytest.mark.bfcl  # compares with BFCL's checker in .venv-bfcl

CATEGORIES = {"simple_python": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200, "irrelevance": 240}
SAMPLE = 13  # entries per category, seeded
SEED = 20260


@pytest.fixture(scope="module")
def bfcl():
    with BfclChecker() as checker:
        yield checker


@pytest.fixture(scope="module")
def sampled_entries(bfcl):
    rng = random.Random(SEED)
    sampled = {}
    for category, size in CATEGORIES.items():
        ids = [f"{category}_{index}" for index in sorted(rng.sample(range(size), SAMPLE))]
        sampled[category] = bfcl.load_entries(category, ids=ids)
    return sampled


def _corrupt(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 3 + 1237
    if isinstance(value, str):
        return value + " qqzx"
    if isinstance(value, list):
        return value + (value[:1] if value else ["qqzx"])
    return None  # nested dicts: no simple corruption


def variants(entry: dict) -> dict[str, list[dict] | str]:
    """name -> list of calls (or a plain-text completion)."""
    functions = entry["function"]
    if not entry["ground_truth"]:  # irrelevance: nothing fits, so any call is wrong
        first = functions[0]
        arguments = {name: _placeholder(spec) for name, spec in first["parameters"]["properties"].items()
                     if name in first["parameters"].get("required", [])}
        return {"no_call": "I cannot help with that using these tools.",
                "a_call_anyway": [{"name": first["name"], "arguments": arguments}],
                "a_call_without_args": [{"name": first["name"], "arguments": {}}]}

    correct = first_acceptable_calls(entry["ground_truth"], functions)
    out: dict = {"correct": correct, "no_call": "Sure, here is my answer without tools."}
    docs = {doc["name"]: doc for doc in functions}

    for key, value in correct[0]["arguments"].items():
        bad = _corrupt(value)
        if bad is not None:
            wrong = copy.deepcopy(correct)
            wrong[0]["arguments"][key] = bad
            out["wrong_value"] = wrong
            break

    expected_names = {call["name"] for call in correct}
    other = next((name for name in docs if name not in expected_names), correct[0]["name"] + "_v2")
    out["wrong_function"] = [dict(copy.deepcopy(correct[0]), name=other)] + copy.deepcopy(correct[1:])

    required = docs.get(correct[0]["name"], {}).get("parameters", {}).get("required", [])
    present = [key for key in required if key in correct[0]["arguments"]]
    if present:
        missing = copy.deepcopy(correct)
        del missing[0]["arguments"][present[-1]]
        out["missing_required"] = missing

    extra = copy.deepcopy(correct)
    extra[0]["arguments"]["zz_unexpected_flag"] = True
    out["extra_param"] = extra

    out["duplicated_call"] = copy.deepcopy(correct) + copy.deepcopy(correct[:1])
    if len(correct) > 1:
        out["swapped_order"] = list(reversed(copy.deepcopy(correct)))
        out["dropped_call"] = copy.deepcopy(correct[:-1])
    return out


def _placeholder(spec: dict):
    return {"integer": 3, "float": 2.5, "number": 2.5, "boolean": True, "array": [], "dict": {},
            "object": {}}.get(spec.get("type"), "something")


def _completion(variant) -> str:
    return variant if isinstance(variant, str) else format_tool_calls(variant)


def test_outcome_reward_agrees_with_bfcl_ast_checker(bfcl, sampled_entries):
    disagreements, counts = [], {"valid": 0, "invalid": 0}
    kinds_seen = set()
    for category, entries in sampled_entries.items():
        items, cases = [], []
        for entry in entries:
            for name, variant in variants(entry).items():
                text = _completion(variant)
                items.append({"id": entry["id"], "result": text})
                cases.append((entry, name, text))
                kinds_seen.add(name)
        verdicts = bfcl.score(category, items)
        for (entry, name, text), verdict in zip(cases, verdicts):
            assert verdict["id"] == entry["id"]
            assert verdict["error_type"] != "awpo:checker_exception", verdict
            reward = outcome_reward(text, entry["ground_truth"], tools=entry["function"])
            counts["valid" if verdict["valid"] else "invalid"] += 1
            if (reward == 1.0) != verdict["valid"]:
                disagreements.append((entry["id"], name, reward, verdict["error_type"], verdict["error"]))
    assert not disagreements, "\n".join(map(str, disagreements))
    # the sample really exercises both verdicts and every kind of variant
    assert counts["valid"] >= 5 * SAMPLE and counts["invalid"] >= 20 * SAMPLE, counts
    assert {"correct", "wrong_value", "wrong_function", "missing_required", "extra_param", "swapped_order",
            "dropped_call", "duplicated_call", "no_call", "a_call_anyway"} <= kinds_seen


def test_expected_verdicts_of_the_variants(bfcl, sampled_entries):
    """Spot-check BFCL's side so the agreement above cannot pass by both sides being lenient."""
    entry = sampled_entries["parallel"][0]
    cases = variants(entry)
    names = ["correct", "swapped_order", "wrong_value", "dropped_call", "extra_param", "no_call"]
    verdicts = bfcl.score("parallel", [{"id": entry["id"], "result": _completion(cases[n])} for n in names])
    assert [v["valid"] for v in verdicts] == [True, True, False, False, False, False], verdicts


def test_documented_deliberate_disagreements_still_hold(bfcl, sampled_entries):
    entry = sampled_entries["simple_python"][0]
    correct = format_tool_calls(first_acceptable_calls(entry["ground_truth"], entry["function"]))
    call = first_acceptable_calls(entry["ground_truth"], entry["function"])[0]
    with_id = format_tool_calls([call]).replace('{"name"', '{"id": "call_0", "name"', 1)
    with_broken_block = correct + "\n<tool_call>\n{not json}\n</tool_call>"
    verdicts = bfcl.score("simple_python", [{"id": entry["id"], "result": t} for t in (with_id, with_broken_block)])
    assert [v["valid"] for v in verdicts] == [True, True]  # BFCL accepts both ...
    for text in (with_id, with_broken_block):  # ... the reward deliberately does not
        assert outcome_reward(text, entry["ground_truth"], tools=entry["function"]) == 0.0
