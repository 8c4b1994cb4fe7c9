"""The BFCL scoring pipeline on real BFCL entries, with scripted models (no real model here).

BFCL's official checkers run in the BFCL venv (created on first use, about a minute) as a
subprocess; one worker serves the whole module.
"""

from __future__ import annotations

import copy
import json

import pytest

from awpo.bfcl import BfclChecker, evaluate_generate_fn
from awpo.bfcl.generate import GenerationRequest, generate_all, hermes_messages
from awpo.bfcl.scripted import NO_CALL_REPLY, answer_with, first_acceptable_calls, oracle_model, silent_model
from awpo.toolcall import format_tool_calls

pytestmark = pytest.mark.bfcl  # scores with BFCL's checker in .venv-bfcl

SINGLE_TURN = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
               "live_simple", "live_multiple"]
LIMIT = 5  # entries per single-turn category
MULTI_TURN_LIMIT = LIMIT


@pytest.fixture(scope="module")
def bfcl():
    with BfclChecker() as checker:
        yield checker


@pytest.fixture(scope="module")
def entries(bfcl):
    return {category: bfcl.load_entries(category, limit=LIMIT) for category in SINGLE_TURN}


@pytest.fixture(scope="module")
def multi_turn_calls(bfcl):
    return bfcl.ground_truth_calls("multi_turn_base", limit=MULTI_TURN_LIMIT)


def _oracle(entries, multi_turn_calls):
    return oracle_model([e for category in SINGLE_TURN for e in entries[category]], multi_turn_calls)


def test_entries_come_with_docs_and_possible_answers(entries):
    for category, loaded in entries.items():
        assert len(loaded) == LIMIT
        for entry in loaded:
            assert entry["id"].startswith(category) and entry["function"], entry["id"]
            assert isinstance(entry["ground_truth"], list)
            assert (entry["ground_truth"] == []) == (category == "irrelevance"), entry["id"]
            # generation-time docs carry BFCL's language hint, as in BFCL's own generation
            assert "Python 3 syntax" in entry["function"][0]["description"]


def test_scripted_oracle_scores_100_percent_on_every_category(bfcl, entries, multi_turn_calls):
    result = evaluate_generate_fn(_oracle(entries, multi_turn_calls), SINGLE_TURN + ["multi_turn_base"],
                                  limit=LIMIT, checker=bfcl, batch_size=3)
    for category in SINGLE_TURN:
        assert result["results"][category] == {"accuracy": 1.0, "correct": LIMIT, "total": LIMIT,
                                               "generation_errors": 0}, result["entries"][category]
    assert result["results"]["multi_turn_base"]["correct"] == LIMIT, result["entries"]["multi_turn_base"]
    assert result["overall"]["accuracy"] == 1.0
    assert result["bfcl_eval"] == "2026.3.23"


def test_scripted_silent_model_scores_zero_except_irrelevance(bfcl):
    result = evaluate_generate_fn(silent_model(), SINGLE_TURN + ["multi_turn_base"], limit=3, checker=bfcl)
    for category, summary in result["results"].items():
        expected = 3 if category == "irrelevance" else 0
        assert summary["correct"] == expected and summary["total"] == 3, (category, result["entries"][category])
    missing_call = result["entries"]["simple_python"][0]
    assert missing_call["error_type"] == "simple_function_checker:wrong_count"
    assert result["entries"]["multi_turn_base"][0]["error_type"] == "multi_turn:empty_turn_model_response"


def _corrupt_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1237
    if isinstance(value, str):
        return value + " zzq"
    if isinstance(value, list):
        return value + value[:1] if value else ["zzq"]
    return "zzq"


def test_scripted_wrong_argument_value_fails_only_that_entry(bfcl, entries):
    category_entries = entries["simple_python"]
    texts = {}
    for entry in category_entries:
        calls = first_acceptable_calls(entry["ground_truth"], entry["function"])
        texts[entry["id"]] = format_tool_calls(calls)
    victim = category_entries[2]
    calls = first_acceptable_calls(victim["ground_truth"], victim["function"])
    key = next(iter(calls[0]["arguments"]))
    calls[0]["arguments"][key] = _corrupt_value(calls[0]["arguments"][key])
    texts[victim["id"]] = format_tool_calls(calls)

    verdicts = bfcl.score("simple_python", [{"id": i, "result": t} for i, t in texts.items()])
    by_id = {v["id"]: v for v in verdicts}
    assert not by_id[victim["id"]]["valid"]
    assert by_id[victim["id"]]["error_type"].startswith(("value_error", "type_error"))
    assert key in " ".join(map(str, by_id[victim["id"]]["error"]))
    assert all(v["valid"] for i, v in by_id.items() if i != victim["id"])


def test_scripted_calls_inside_think_block_are_not_calls(bfcl, entries):
    entry = entries["simple_python"][0]
    call_text = format_tool_calls(first_acceptable_calls(entry["ground_truth"], entry["function"]))
    inside = f"<think>\n{call_text}\n</think>\nI will not call anything."
    after = f"<think>\nThe user wants this tool.\n</think>\n{call_text}"
    verdicts = bfcl.score("simple_python", [{"id": entry["id"], "result": inside},
                                            {"id": entry["id"], "result": after}])
    assert [v["valid"] for v in verdicts] == [False, True]


def test_scripted_multi_turn_replay_passes_and_dropped_call_fails(bfcl, multi_turn_calls):
    turns = {item["id"]: item["turns"] for item in multi_turn_calls}
    victim = multi_turn_calls[1]["id"]
    dropped_turn = next(i for i, calls in enumerate(turns[victim]) if calls)
    seen = []

    def answer(request: GenerationRequest) -> str:
        seen.append((request.entry_id, request.turn, request.step))
        calls = turns[request.entry_id][request.turn]
        if request.step > 0 or not calls:
            return NO_CALL_REPLY
        if request.entry_id == victim and request.turn == dropped_turn:
            calls = calls[:-1]  # the model forgets the turn's last call
        return format_tool_calls(calls) if calls else NO_CALL_REPLY

    episodes = bfcl.run_multi_turn("multi_turn_base", answer_with(answer), limit=MULTI_TURN_LIMIT)
    assert [e["id"] for e in episodes] == list(turns) and all(e["error"] is None for e in episodes)
    for episode in episodes:  # BFCL's loop: per turn, one step with calls and one that ends the turn
        expected_turns = turns[episode["id"]]
        assert len(episode["result"]) == len(expected_turns)
    verdicts = {v["id"]: v for v in bfcl.score("multi_turn_base", [{"id": e["id"], "result": e["result"]}
                                                                    for e in episodes])}
    assert not verdicts[victim]["valid"], verdicts[victim]
    assert verdicts[victim]["error_type"].startswith("multi_turn:")
    assert all(v["valid"] for i, v in verdicts.items() if i != victim), verdicts
    # every turn started at step 0 and the model was asked again after its calls ran
    assert (victim, 0, 0) in seen and any(step == 1 for _, _, step in seen)


def test_scripted_multi_turn_sees_tool_results_in_the_conversation(bfcl, multi_turn_calls):
    first = multi_turn_calls[0]
    conversations = []

    def answer(request: GenerationRequest) -> str:
        conversations.append(request.messages)
        calls = first["turns"][request.turn]
        return format_tool_calls(calls) if request.step == 0 and calls else NO_CALL_REPLY

    bfcl.run_multi_turn("multi_turn_base", answer_with(answer), ids=[first["id"]])
    after_calls = conversations[1]  # turn 0, step 1: after the first calls were executed
    assert [m["role"] for m in after_calls].count("tool") == len(first["turns"][0])
    plain = hermes_messages(after_calls)
    assert plain[-1]["role"] == "user" and plain[-1]["content"].count("<tool_response>") == len(first["turns"][0])
    assert "<tool_call>" in plain[-2]["content"] and plain[-2]["role"] == "assistant"


def test_scripted_generation_failure_is_recorded_and_the_run_goes_on(bfcl, entries, multi_turn_calls):
    oracle = _oracle(entries, multi_turn_calls)
    broken = {entries["multiple"][1]["id"], multi_turn_calls[2]["id"]}

    def flaky(requests):
        if any(r.entry_id in broken for r in requests):
            raise RuntimeError("engine exploded")
        return oracle(requests)

    result = evaluate_generate_fn(flaky, ["multiple", "multi_turn_base"], limit=3, checker=bfcl)
    for category in ("multiple", "multi_turn_base"):
        records = result["entries"][category]
        failed = [r for r in records if r["error_type"] == "generation_error"]
        assert len(failed) == 1 and failed[0]["id"] in broken and "engine exploded" in failed[0]["error"][0]
        assert result["results"][category] == {"accuracy": 2 / 3, "correct": 2, "total": 3, "generation_errors": 1}


def test_generate_all_isolates_bad_outputs():
    requests = [GenerationRequest(entry_id=str(i), category="simple_python", messages=[], tools=[]) for i in range(3)]
    results = generate_all(lambda rs: ["ok", ValueError("too long"), 7][: len(rs)], requests)
    assert [r.text for r in results] == ["ok", None, None]
    assert "too long" in results[1].error and "int" in results[2].error
    # a batch answer of the wrong length: retried one by one, each single call then succeeds
    assert [r.text for r in generate_all(lambda rs: ["only one"], requests)] == ["only one"] * 3
    always = generate_all(lambda rs: (_ for _ in ()).throw(RuntimeError("down")), requests)
    assert [r.error for r in always] == ["RuntimeError: down"] * 3


def test_scripted_malicious_call_name_is_not_executed(bfcl, multi_turn_calls, tmp_path):
    target = tmp_path / "pwned"
    payload = {"name": f"ls(a=True) or __import__('pathlib').Path({str(target)!r}).touch", "arguments": {}}
    bad_key = {"name": "ls", "arguments": {f"a=__import__('pathlib').Path({str(target)!r}).touch(),b": 1}}

    def answer(request):
        if request.step > 0:
            return NO_CALL_REPLY
        return format_tool_calls([payload]) if request.turn == 0 else format_tool_calls([bad_key])

    first = multi_turn_calls[0]["id"]
    episodes = bfcl.run_multi_turn("multi_turn_base", answer_with(answer), ids=[first])
    verdicts = bfcl.score("multi_turn_base", [{"id": first, "result": episodes[0]["result"]}])
    assert not target.exists()
    assert not verdicts[0]["valid"]


def test_inline_entries_are_scored_by_the_official_checker(bfcl):
    function = {"name": "convert_temperature", "description": "Convert a temperature.",
                "parameters": {"type": "dict", "required": ["value", "unit"],
                               "properties": {"value": {"type": "float", "description": "degrees"},
                                              "unit": {"type": "string", "enum": ["C", "F"], "description": "unit"},
                                              "round": {"type": "boolean", "description": "round it"}}}}
    ground_truth = [{"convert_temperature": {"value": [21.5], "unit": ["C"], "round": ["", False]}}]
    good = format_tool_calls([{"name": "convert_temperature", "arguments": {"value": 21.5, "unit": "C"}}])
    as_int = format_tool_calls([{"name": "convert_temperature", "arguments": {"value": 21, "unit": "C"}}])
    items = [{"id": f"custom_{i}", "result": text, "function": [function], "ground_truth": ground_truth}
             for i, text in enumerate([good, as_int, "no call"])]
    assert [v["valid"] for v in bfcl.score("simple_python", copy.deepcopy(items))] == [True, False, False]


def test_bad_requests_fail_with_clear_errors(bfcl):
    with pytest.raises(ValueError, match="category"):
        bfcl.load_entries("simple_cobol")
    with pytest.raises(ValueError, match="limit"):
        bfcl.load_entries("simple_python", limit=-2)
    with pytest.raises(ValueError, match="multi-turn"):
        bfcl.run_multi_turn("simple_python", silent_model())
    verdicts = bfcl.score("simple_python", [{"id": "no_such_entry", "result": "x"}])
    assert not verdicts[0]["valid"] and "no_such_entry" in verdicts[0]["error"][0]
    # the worker survives and still answers
    assert bfcl.info()["bfcl_eval"] == "2026.3.23"
    json.dumps(verdicts)


def test_venv_is_reused_without_running_pip_again(bfcl, monkeypatch, tmp_path):
    import subprocess
    import sys

    from awpo.bfcl import venv

    ready_python = venv.ensure_venv()  # the fixture's checker made sure it exists
    assert venv.is_ready(ready_python.parent.parent)

    def no_subprocess(*args, **kwargs):
        raise AssertionError("a ready venv must not be rebuilt")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert venv.ensure_venv() == ready_python
    monkeypatch.undo()

    monkeypatch.setenv(venv.VENV_ENV_VAR, str(tmp_path / "elsewhere"))
    assert venv.default_venv_dir() == (tmp_path / "elsewhere").resolve()
    assert not venv.is_ready(tmp_path / "elsewhere")
    with pytest.raises(RuntimeError, match=r"step 'demo step' \(exit 3\)"):
        venv._run([sys.executable, "-c", "raise SystemExit(3)"], "demo step")
