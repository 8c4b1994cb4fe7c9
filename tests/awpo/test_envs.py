"""awpo.envs: the file-system environment, safe dispatch of untrusted calls, multi-turn outcome."""

import copy
import json
import random

import pytest

from awpo.data import Task, builtin_tasks
from awpo.envs import FileSystemEnv, make_env, multi_turn_outcome, replay_ground_truth
from awpo.toolcall import ToolCall, format_tool_calls, parse_completion

START = {"cwd": "/", "root": {"docs": {"a.txt": "alpha", "b.txt": "beta"}, "empty": {}, "top.md": "# top"}}


def run(env, tool, **arguments):
    return env.execute(ToolCall(tool, arguments))


def test_file_system_operations_change_state():
    env = make_env("filesystem", START)
    assert run(env, "ls") == "docs/ empty/ top.md"
    assert run(env, "cd", folder="docs") == "Now in /docs"
    assert run(env, "cat", file_name="a.txt") == "alpha"
    run(env, "mkdir", dir_name="old")
    run(env, "mv", source="a.txt", destination="old")  # into a folder
    run(env, "mv", source="b.txt", destination="c.txt")  # rename
    run(env, "write_file", file_name="new.txt", content="hello")
    run(env, "touch", file_name="blank.txt")
    run(env, "mv", source="new.txt", destination="..")  # up one level
    assert run(env, "pwd") == "/docs"
    run(env, "cd", folder="/")
    run(env, "rm", name="empty")
    assert env.state() == {"cwd": "/", "root": {
        "docs": {"old": {"a.txt": "alpha"}, "c.txt": "beta", "blank.txt": ""}, "top.md": "# top", "new.txt": "hello"}}
    assert START["root"]["docs"] == {"a.txt": "alpha", "b.txt": "beta"}  # the initial state was copied


@pytest.mark.parametrize("name, arguments, expected", [
    ("cat", {"file_name": "nope.txt"}, "Error: no file named 'nope.txt' in /"),
    ("cat", {"file_name": "docs"}, "Error: 'docs' is a folder"),
    ("cd", {"folder": ".."}, "Error: already at the top folder"),
    ("cd", {"folder": "top.md"}, "Error: no folder named 'top.md' in /"),
    ("mkdir", {"dir_name": "docs"}, "Error: 'docs' already exists in /"),
    ("rm", {"name": "docs"}, "Error: folder 'docs' is not empty"),
    ("mv", {"source": "ghost", "destination": "docs"}, "Error: no file or folder named 'ghost' in /"),
    ("mv", {"source": "top.md", "destination": ".."}, "Error: already at the top folder"),
    ("touch", {"file_name": "../escape"}, "Error: invalid name '../escape'"),
    ("write_file", {"file_name": "a/b", "content": "x"}, "Error: invalid name 'a/b'"),
    ("mkdir", {"dir_name": ""}, "Error: invalid name ''"),
    ("mkdir", {"dir_name": 5}, "Error: argument 'dir_name' of mkdir must be of type string, got int"),
    ("mkdir", {"dir_name": True}, "Error: argument 'dir_name' of mkdir must be of type string, got bool"),
    ("mkdir", {}, "Error: mkdir is missing required arguments ['dir_name']"),
    ("mkdir", {"dir_name": "x", "mode": "777"}, "Error: mkdir got unexpected arguments ['mode']"),
    ("write_file", {"file_name": "x", "content": "y" * 10_001}, "Error: argument 'content' of write_file is longer"),
])
def test_bad_calls_return_error_text_and_leave_state_alone(name, arguments, expected):
    env = make_env("filesystem", START)
    before = env.state()
    assert env.execute(ToolCall(name, arguments)).startswith(expected)
    assert env.state() == before


@pytest.mark.parametrize("name", ["__init__", "state", "_here", "tool_ls", "execute", "__class__", "eval", ""])
def test_only_registered_tools_are_dispatched(name):
    env = make_env("filesystem", START)
    result = env.execute({"name": name, "arguments": {}})
    assert result.startswith("Error: unknown tool")
    assert env.state() == make_env("filesystem", START).state()


def test_execute_accepts_dicts_and_rejects_non_dict_arguments():
    env = make_env("filesystem", START)
    assert env.execute({"name": "ls"}) == "docs/ empty/ top.md"
    assert env.execute({"name": "cd", "arguments": ["docs"]}) == "Error: arguments of cd must be a JSON object"
    assert env.execute("ls").startswith("Error: unknown tool")


def test_random_calls_never_raise_and_state_stays_json():
    rng = random.Random(5)
    env = make_env("filesystem", START)
    names = [d["name"] for d in env.tools()] + ["rm_rf", "__dict__"]
    values = ["docs", "..", "/", "a.txt", "x", "", "a/b", ".", 3, None, True, ["docs"], {"x": 1}, "z" * 70]
    for _ in range(3000):
        name = rng.choice(names)
        arguments = {rng.choice(["folder", "dir_name", "file_name", "content", "source", "destination", "name", "bogus"]):
                     rng.choice(values) for _ in range(rng.randint(0, 3))}
        assert isinstance(env.execute(ToolCall(name, arguments)), str)
        json.dumps(env.state())
    FileSystemEnv(env.state())  # whatever happened is still a valid state


def test_tools_are_bfcl_docs_and_copies():
    env = make_env("filesystem")
    docs = env.tools()
    assert {d["name"] for d in docs} == {"pwd", "ls", "cd", "mkdir", "touch", "write_file", "cat", "mv", "rm"}
    assert all(d["parameters"]["type"] == "dict" for d in docs)
    docs[0]["name"] = "changed"
    assert env.tools()[0]["name"] != "changed"


@pytest.mark.parametrize("state, match", [
    ({"cwd": "/"}, "'root' folder dict"),
    ({"root": {"a": 1}}, "content must be a string"),
    ({"root": {"a/b": "x"}}, "invalid name"),
    ({"cwd": "/nowhere", "root": {}}, "not a folder"),
    ({"cwd": "docs", "root": {"docs": {}}}, "absolute path"),
])
def test_bad_initial_state_raises(state, match):
    with pytest.raises(ValueError, match=match):
        make_env("filesystem", state)


def test_unknown_environment():
    with pytest.raises(ValueError, match="unknown environment 'bank'.*filesystem"):
        make_env("bank")


def multi_turn(ground_truth):
    return Task("t", "multi_turn", [{"role": "user", "content": "go"}], FileSystemEnv.TOOL_DOCS, ground_truth,
                env="filesystem", env_state=START, user_turns=["next"] * (len(ground_truth) - 1))


GT = [[{"name": "cd", "arguments": {"folder": "docs"}}, {"name": "write_file", "arguments": {"file_name": "n.txt", "content": "hi"}}],
      [{"name": "rm", "arguments": {"name": "a.txt"}}]]


def test_multi_turn_outcome_compares_final_states():
    task = multi_turn(GT)
    env = replay_ground_truth(task)
    assert multi_turn_outcome(task, env) == 1.0
    # another way to the same state (touch, then write; ending in another folder) also passes
    other = make_env("filesystem", START)
    for name, args in [("cd", {"folder": "docs"}), ("touch", {"file_name": "n.txt"}), ("rm", {"name": "a.txt"}),
                       ("write_file", {"file_name": "n.txt", "content": "hi"}), ("cd", {"folder": "/"})]:
        assert not run(other, name, **args).startswith("Error")
    assert multi_turn_outcome(task, other) == 1.0
    # a dropped call fails; graded credit is partial
    partial = make_env("filesystem", START)
    run(partial, "cd", folder="docs")
    run(partial, "write_file", file_name="n.txt", content="hi")
    assert multi_turn_outcome(task, partial) == 0.0
    assert 0.0 < multi_turn_outcome(task, partial, graded=True) < 1.0
    assert multi_turn_outcome(task, make_env("filesystem", START), graded=True) < multi_turn_outcome(task, partial, graded=True)


def test_replay_of_a_broken_ground_truth_raises():
    with pytest.raises(ValueError, match="ground-truth call"):
        replay_ground_truth(multi_turn([[{"name": "rm", "arguments": {"name": "ghost"}}]]))


def test_builtin_multi_turn_episode_with_scripted_policy():
    """Play every built-in multi-turn task with a scripted policy that answers each turn with its
    ground-truth calls as text: parse -> execute -> final state must pass; dropping one call fails."""
    tasks = builtin_tasks("train", n=60, seed=1, categories=["multi_turn"])
    assert len(tasks) == 60 and all(t.category == "multi_turn" for t in tasks)
    for task in tasks:
        assert len(task.user_turns) == len(task.ground_truth) - 1 >= 1
        assert all(turn for turn in task.ground_truth)
        env = make_env(task.env, copy.deepcopy(task.env_state))
        for turn in task.ground_truth:
            parsed = parse_completion("<think>doing it</think>\n" + format_tool_calls(turn))
            assert parsed.error is None
            for call in parsed.calls:
                assert not env.execute(call).startswith("Error")
        assert multi_turn_outcome(task, env) == 1.0
        lazy = make_env(task.env, task.env_state)
        for call in [c for turn in task.ground_truth for c in turn][:-1]:
            lazy.execute(call)
        dropped_last = task.ground_truth[-1][-1]["name"]
        if dropped_last != "cat":  # reading does not change the state
            assert multi_turn_outcome(task, lazy) == 0.0


# ---------------------------------------------------------------------------- no free marks


def test_no_builtin_multi_turn_task_passes_with_no_calls():
    """The generator never lets a task end in its initial state (before: a delete of a file an earlier
    turn had created cancelled it, and 52 train / 54 held-out tasks of 2000 passed with no call)."""
    for split in ("train", "heldout"):
        tasks = builtin_tasks(split, n=2000, seed=0, categories=["multi_turn"])
        assert len(tasks) == 2000
        for task in tasks:
            start = make_env(task.env, task.env_state)
            assert replay_ground_truth(task).outcome_state() != start.outcome_state(), task.id
            assert multi_turn_outcome(task, start) == 0.0, task.id
            assert multi_turn_outcome(task, make_env(task.env, task.env_state), graded=True) == 0.0, task.id
    # the generator stays deterministic by seed
    assert [t.to_dict() for t in builtin_tasks("train", n=50, seed=3, categories=["multi_turn"])] == \
        [t.to_dict() for t in builtin_tasks("train", n=50, seed=3, categories=["multi_turn"])]


def test_builtin_multi_turn_delete_removes_only_initial_files():
    for task in builtin_tasks("heldout", n=300, seed=2, categories=["multi_turn"]):
        env = make_env(task.env, task.env_state)
        for turn in task.ground_truth:
            for call in turn:
                if call["name"] == "rm":
                    path = [p for p in env.state()["cwd"].split("/") if p] + [call["arguments"]["name"]]
                    node = task.env_state["root"]
                    for part in path:
                        node = node.get(part) if isinstance(node, dict) else None
                    assert isinstance(node, str), (task.id, path)
                assert not env.execute(call).startswith("Error")


def test_multi_turn_graded_credit_counts_only_the_paths_that_change():
    task = multi_turn(GT)   # adds docs/n.txt, removes docs/a.txt; docs/b.txt, empty/, top.md untouched
    assert multi_turn_outcome(task, make_env("filesystem", START), graded=True) == 0.0   # was 0.75
    half = make_env("filesystem", START)
    run(half, "cd", folder="docs")
    run(half, "write_file", file_name="n.txt", content="hi")
    assert multi_turn_outcome(task, half, graded=True) == 0.5      # 1 of the 2 changed paths
    run(half, "rm", name="b.txt")                                  # a change the task did not ask for
    assert multi_turn_outcome(task, half, graded=True) == pytest.approx(1 / 3)
    assert multi_turn_outcome(task, replay_ground_truth(task), graded=True) == 1.0


BROKEN = '<think>done</think>\n<tool_call>\n{"name":'


def test_malformed_turn_scores_zero_even_in_the_right_state():
    task = multi_turn(GT)
    right = replay_ground_truth(task)
    good = ["<think>ok</think>\n" + format_tool_calls(turn) for turn in GT] + ["All done."]
    assert multi_turn_outcome(task, right, turns=[parse_completion(t) for t in good]) == 1.0
    assert multi_turn_outcome(task, right, turns=[parse_completion(t) for t in good], graded=True) == 1.0
    for where in range(len(good) + 1):
        turns = good[:where] + [BROKEN] + good[where:]
        assert parse_completion(BROKEN).error is not None
        assert multi_turn_outcome(task, right, turns=[parse_completion(t) for t in turns]) == 0.0
        assert multi_turn_outcome(task, right, turns=[parse_completion(t) for t in turns], graded=True) == 0.0


def test_every_offered_multi_turn_tool_is_executable():
    for task in builtin_tasks("train", n=30, seed=0, categories=["multi_turn"]):
        env = make_env(task.env, task.env_state)
        for tool in task.tools:
            assert not env.execute({"name": tool["name"], "arguments": {}}).startswith("Error: unknown tool"), tool
