"""Untrusted tool calls in BFCL's multi-turn evaluation, through the real BFCL worker.

BFCL ``eval()``s each decoded multi-turn call inside its ``multi_turn_utils`` module (where ``re``,
``importlib``, ``json``, ``copy`` and the builtins are in scope). The worker only lets through calls
of the entry's own backend methods with plain-data arguments; and the parent kills and restarts a
worker that stays silent past its request timeout. No mocks: slow paths are real BFCL backend calls
(``MathAPI.power`` with a huge integer exponent runs for minutes).
"""

from __future__ import annotations

import json
import time

import pytest

from awpo.bfcl import BfclChecker
from awpo.bfcl.checker import TIMEOUT_ERROR_TYPE
from awpo.bfcl.scripted import NO_CALL_REPLY, answer_with

pytestmark = pytest.mark.bfcl  # runs BFCL's worker in .venv-bfcl

CATEGORY = "multi_turn_base"
SLOW_CALL = {"name": "power", "arguments": {"base": 10, "exponent": 10 ** 8}}  # minutes of big-int work
REFUSED_TURN = "multi_turn:empty_turn_model_response"  # BFCL's verdict when no call of the turn decodes


def _calls_text(calls: list[dict]) -> str:
    """Hermes tool-call blocks, written here so that any payload reaches the worker verbatim."""
    return "\n".join(f"<tool_call>\n{json.dumps(call)}\n</tool_call>" for call in calls)


@pytest.fixture(scope="module")
def bfcl():
    # a short request timeout: if a refused call ever ran (and hung), the test fails instead of hanging
    with BfclChecker(request_timeout_s=30) as checker:
        yield checker


@pytest.fixture(scope="module")
def ground_truth(bfcl):
    """{id: turns of calls} for the first entries, and the ids of those that involve MathAPI."""
    entries = bfcl.load_entries(CATEGORY, limit=40)
    calls = {item["id"]: item["turns"] for item in bfcl.ground_truth_calls(CATEGORY, limit=40)}
    with_math = [e["id"] for e in entries if "MathAPI" in e["involved_classes"]]
    classes = {e["id"]: e["involved_classes"] for e in entries}
    return {"turns": calls, "with_math": with_math, "classes": classes}


def _oracle_result(turns: list[list[dict]]) -> list[list[str]]:
    """What BFCL's loop records for a model that replays the ground truth: per turn, the calls, then a reply."""
    return [[_calls_text(calls), NO_CALL_REPLY] if calls else [NO_CALL_REPLY] for calls in turns]


def _worker_log(bfcl) -> str:
    bfcl._log.flush()
    return (bfcl._project_root / "worker.log").read_text()


def test_oracle_replay_still_scores_valid(bfcl, ground_truth):
    entry_id = next(iter(ground_truth["turns"]))
    verdict, = bfcl.score(CATEGORY, [{"id": entry_id, "result": _oracle_result(ground_truth["turns"][entry_id])}])
    assert verdict["valid"], verdict


def test_calls_outside_the_entry_are_refused_and_never_run(bfcl, ground_truth, tmp_path):
    entry_id = next(i for i, classes in ground_truth["classes"].items() if "TradingBot" not in classes)
    turns = ground_truth["turns"][entry_id]
    assert turns[0], "the first turn must expect calls"
    pwned = tmp_path / "pwned"
    attacks = {
        # catastrophic backtracking: hours if BFCL evaluated it in multi_turn_utils, where `re` is in scope
        "dotted re.match": {"name": "re.match", "arguments": {"pattern": "(a+)+$", "string": "a" * 40 + "!"}},
        "dotted importlib": {"name": "importlib.import_module", "arguments": {"name": "this"}},
        "builtin open": {"name": "open", "arguments": {"file": str(pwned), "mode": "w"}},
        "another backend's method": {"name": "get_stock_info", "arguments": {"symbol": "AAPL"}},
        "injected name": {"name": f"ls(a=True) or open({str(pwned)!r}, 'w').close", "arguments": {}},
        "keyword argument name": {"name": turns[0][0]["name"], "arguments": {"class": 1}},
        "injected argument name": {"name": turns[0][0]["name"],
                                   "arguments": {f"a=open({str(pwned)!r}, 'w'),b": 1}},
        "non-finite float": {"name": turns[0][0]["name"], "arguments": {"x": float("inf")}},
        "deep nesting": {"name": turns[0][0]["name"], "arguments": {"x": json.loads("[" * 60 + "]" * 60)}},
    }
    oracle = _oracle_result(turns)
    items = []
    for attack in attacks.values():
        # the attack alone in turn 0: refused, so the turn has no call and the entry fails
        items.append({"id": entry_id, "result": [[_calls_text([attack]), NO_CALL_REPLY]] + oracle[1:]})
        # the attack mixed with the right calls in one step: the whole step is refused
        mixed = [_calls_text([attack] + turns[0]), NO_CALL_REPLY]
        items.append({"id": entry_id, "result": [mixed] + oracle[1:]})
        # the attack as an extra step before the right calls: dropped, the rest scores as without it
        items.append({"id": entry_id, "result": [[_calls_text([attack])] + oracle[0]] + oracle[1:]})
    started = time.monotonic()
    verdicts = bfcl.score(CATEGORY, items)
    assert time.monotonic() - started < 25  # nothing hung (the regex alone would take hours)
    for index, label in enumerate(attacks):
        alone, mixed, extra_step = verdicts[3 * index: 3 * index + 3]
        assert not alone["valid"] and alone["error_type"] == REFUSED_TURN, (label, alone)
        assert not mixed["valid"] and mixed["error_type"] == REFUSED_TURN, (label, mixed)
        assert extra_step["valid"], (label, extra_step)
    assert not pwned.exists()
    assert "Beautiful is better than ugly" not in _worker_log(bfcl)  # `import this` never ran


def test_refused_calls_do_not_run_while_playing_episodes(bfcl, ground_truth, tmp_path):
    entry_id = next(iter(ground_truth["turns"]))
    turns = ground_truth["turns"][entry_id]
    pwned = tmp_path / "pwned"
    attack = [{"name": "re.match", "arguments": {"pattern": "(a+)+$", "string": "a" * 40 + "!"}},
              {"name": "importlib.import_module", "arguments": {"name": "this"}},
              {"name": "open", "arguments": {"file": str(pwned), "mode": "w"}}]
    tool_messages = []

    def answer(request):
        tool_messages.extend(m for m in request.messages if m.get("role") == "tool")
        if request.turn == 0 and request.step == 0:
            return _calls_text(attack)
        calls = turns[request.turn]
        return _calls_text(calls) if request.step == 0 and calls else NO_CALL_REPLY

    started = time.monotonic()
    episode, = bfcl.run_multi_turn(CATEGORY, answer_with(answer), ids=[entry_id])
    assert time.monotonic() - started < 25
    assert episode["error"] is None, episode
    assert len(episode["result"]) == len(turns)
    # the refused step ends turn 0 without any tool result (BFCL: undecodable output ends the turn)
    assert episode["result"][0] == [_calls_text(attack)]
    assert not any("import_module" in str(m.get("content")) or "re.Match" in str(m.get("content"))
                   for m in tool_messages)
    assert not pwned.exists()
    assert "Beautiful is better than ugly" not in _worker_log(bfcl)
    verdict, = bfcl.score(CATEGORY, [{"id": entry_id, "result": episode["result"]}])
    assert not verdict["valid"] and verdict["error_type"] == REFUSED_TURN, verdict


def test_scoring_timeout_fails_that_item_and_a_new_worker_scores_the_rest(bfcl, ground_truth):
    entry_id = ground_truth["with_math"][0]
    oracle = _oracle_result(ground_truth["turns"][entry_id])
    slow = [[_calls_text([SLOW_CALL])] + oracle[0]] + oracle[1:]  # an allowed call, but minutes of work
    first_worker = bfcl._process.pid
    started = time.monotonic()
    verdicts = bfcl.score(CATEGORY, [{"id": entry_id, "result": oracle}, {"id": entry_id, "result": slow},
                                     {"id": entry_id, "result": oracle}], timeout_s=5)
    assert time.monotonic() - started < 60
    assert [v["valid"] for v in verdicts] == [True, False, True], verdicts
    assert verdicts[1]["id"] == entry_id and verdicts[1]["error_type"] == TIMEOUT_ERROR_TYPE
    assert "timed out" in verdicts[1]["error"][0]
    assert bfcl._process.pid != first_worker  # killed and restarted
    assert bfcl.info()["bfcl_eval"]  # and the checker goes on serving


def test_episode_timeout_stops_only_the_hung_episode(bfcl, ground_truth):
    math_id = ground_truth["with_math"][0]
    others = [i for i in ground_truth["turns"] if i != math_id][:2]
    ids = [others[0], math_id, others[1]]
    progress = []

    def answer(request):
        calls = ground_truth["turns"][request.entry_id][request.turn]
        if request.entry_id == math_id and request.turn == 0 and request.step == 0:
            return _calls_text([SLOW_CALL])
        return _calls_text(calls) if request.step == 0 and calls else NO_CALL_REPLY

    episodes = bfcl.run_multi_turn(CATEGORY, answer_with(answer), ids=ids, max_concurrency=3, timeout_s=5,
                                   on_episode=progress.append)
    assert [e["id"] for e in episodes] == ids
    by_id = {e["id"]: e for e in episodes}
    assert by_id[math_id]["result"] is None and "timed out" in by_id[math_id]["error"]
    assert by_id[math_id]["error_type"] == TIMEOUT_ERROR_TYPE  # not counted as a generation error
    assert sorted(p["id"] for p in progress) == sorted(ids)
    assert [p["finished"] for p in progress] == [1, 2, 3] and all(p["total"] == 3 for p in progress)
    replayed = [{"id": i, "result": by_id[i]["result"]} for i in others]
    assert all(by_id[i]["error"] is None for i in others)
    assert all(v["valid"] for v in bfcl.score(CATEGORY, replayed))
