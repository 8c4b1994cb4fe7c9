"""compute_score: BFCL-semantics outcome, reasoning from a judge (rule by default, an LLM judge via a callable)."""
from __future__ import annotations

import json
import math
import sys
import types

import pytest

from awpo.bfcl.scripted import first_acceptable_calls
from awpo.data import builtin_tasks
from awpo.integrations.verl.data import task_row
from awpo.integrations.verl.reward import compute_score
from awpo.rewards import outcome_reward
from awpo.toolcall import format_tool_calls


@pytest.fixture
def row():
    task = next(t for t in builtin_tasks("train", n=20) if t.category == "simple")
    return task, task_row(task, split="train", index=0)


def score(row, text, **options):
    _, record = row
    return compute_score(record["data_source"], text, record["reward_model"]["ground_truth"], record["extra_info"],
                         **options)


def test_outcome_and_default_rule_judge(row):
    task, _ = row
    call = format_tool_calls(first_acceptable_calls(task.ground_truth))
    name = first_acceptable_calls(task.ground_truth)[0]["name"]
    good = score(row, f"<think>The user asks for {name}; I call it with the values given.</think>\n{call}")
    assert good["score"] == good["outcome"] == 1.0 and 0.3 < good["reasoning"] <= 1.0
    silent = score(row, call)  # no <think>: missing reasoning scores 0.0 (SPEC section 1)
    assert silent == {"score": 1.0, "outcome": 1.0, "reasoning": 0.0}
    assert math.isnan(score(row, call, missing_reasoning_score=None)["reasoning"])
    assert score(row, call, missing_reasoning_score=0.25)["reasoning"] == 0.25
    broken = score(row, "<think>call it</think>\n<tool_call>\n{oops\n</tool_call>")
    assert broken["outcome"] == 0.0


def test_graded_outcome_and_response_prefix(row):
    task, _ = row
    call = first_acceptable_calls(task.ground_truth)[0]
    wrong = format_tool_calls([{"name": call["name"], "arguments": {k: "nope" for k in call["arguments"]}}])
    graded = score(row, wrong, graded=True)["outcome"]
    assert graded == outcome_reward(wrong, task.ground_truth, graded=True, tools=task.tools) and 0 < graded < 1
    prefixed = score(row, "I call the tool.</think>\n" + format_tool_calls([call]), response_prefix="<think>")
    assert prefixed["outcome"] == 1.0 and prefixed["reasoning"] > 0.0


def test_llm_judge_through_a_callable_and_a_dotted_path(row, monkeypatch):
    task, _ = row
    seen = []

    def generate(prompts):
        seen.extend(prompts)
        return ["Score: 7/10"] * len(prompts)

    text = "<think>Looks like a job for the tool.</think>\n" + format_tool_calls(first_acceptable_calls(task.ground_truth))
    assert score(row, text, judge=generate)["reasoning"] == pytest.approx(0.7)
    assert task.user_prompt in seen[0]  # the judge sees the request from extra_info
    assert score(row, format_tool_calls(first_acceptable_calls(task.ground_truth)), judge=generate)["reasoning"] == 0.0
    assert math.isnan(score(row, text, judge=lambda prompts: [None] * len(prompts))["reasoning"])  # judge failed

    module = types.ModuleType("my_judges")
    module.generate = lambda prompts: ["Score: 9/10"] * len(prompts)
    monkeypatch.setitem(sys.modules, "my_judges", module)
    assert score(row, text, judge="my_judges:generate")["reasoning"] == pytest.approx(0.9)


def test_bad_inputs_are_named(row):
    _, record = row
    with pytest.raises(ValueError, match="ground_truth is not valid JSON"):
        compute_score("awpo/builtin", "x", "[{oops", record["extra_info"])
    with pytest.raises(ValueError, match="judge 'no_such_module:judge': cannot import"):
        score(row, "x", judge="no_such_module:judge")
    with pytest.raises(ValueError, match="judge must be"):
        score(row, "x", judge=42)
    with pytest.raises(ValueError, match="missing_reasoning_score"):
        score(row, "x", missing_reasoning_score=2.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'gradded'"):
        score(row, "x", gradded=True)
    extra = dict(record["extra_info"], tools="{not json")
    with pytest.raises(ValueError, match=r"extra_info\['tools'\] is not valid JSON"):
        compute_score("awpo/builtin", "x", record["reward_model"]["ground_truth"], extra)
    assert json.loads(record["reward_model"]["ground_truth"])  # the row itself is fine
