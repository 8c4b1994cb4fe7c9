"""Stateful tool environments for multi-turn tasks, and their outcome check.

A multi-turn episode runs the policy's calls through ``env.execute(call)`` (the results go back to
the model as tool messages); at the end, ``multi_turn_outcome(task, env)`` replays the task's
ground-truth calls on a fresh environment and compares the two final states, as BFCL's multi-turn
checker does; an episode with a malformed tool call in any assistant turn scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import ToolEnv, ToolError, check_arguments
from .filesystem import FileSystemEnv

ENVIRONMENTS: dict[str, type[ToolEnv]] = {FileSystemEnv.name: FileSystemEnv}


def make_env(name: str, state: dict | None = None) -> ToolEnv:
    """A fresh environment ``name`` started from ``state`` (its default state when None)."""
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; registered: {sorted(ENVIRONMENTS)}")
    return ENVIRONMENTS[name](state)


def replay_ground_truth(task) -> ToolEnv:
    """A fresh environment of ``task`` after executing all its ground-truth calls, turn by turn.

    Raises ValueError when a ground-truth call fails: the task itself is broken.
    """
    if not task.env:
        raise ValueError(f"task {task.id!r} has no environment (env is None): not a multi-turn task")
    env = make_env(task.env, task.env_state)
    for turn_index, turn in enumerate(task.ground_truth):
        for call in turn:
            result = env.execute(call)
            if result.startswith("Error:"):
                raise ValueError(f"task {task.id!r}: ground-truth call {call!r} of turn {turn_index} failed: {result}")
    return env


def multi_turn_outcome(task, final_env: ToolEnv, *, graded: bool = False, turns: Sequence = ()) -> float:
    """1.0 when ``final_env`` ends in the state the ground truth produces, else 0.0.

    ``turns``: the episode's parsed assistant turns (``ParsedCompletion``s). When any of them
    holds a malformed tool call the episode scores 0.0, exact and graded, whatever the final state:
    as for the single-turn reward (docs/SPEC.md section 4, ``awpo/rewards/outcome.py``), rewarding broken
    output would teach a policy to emit it.

    Graded: partial credit over the paths (files and folders) that matter, those whose expected final
    state differs from the initial state plus those the episode changed: the share of them on which
    the two final states agree. It is 1 exactly when the states are equal and 0 for an episode that
    changes nothing (paths the task leaves alone, the top folder included, earn nothing).
    """
    if any(not turn.ok for turn in turns):
        return 0.0
    expected = replay_ground_truth(task).outcome_state()
    actual = final_env.outcome_state()
    if not graded or expected == actual:
        return 1.0 if expected == actual else 0.0
    start = _flatten(make_env(task.env, task.env_state).outcome_state())
    want, got = _flatten(expected), _flatten(actual)
    paths = {p for p in set(want) | set(start) if want.get(p) != start.get(p)}
    paths |= {p for p in set(got) | set(start) if got.get(p) != start.get(p)}
    # the states differ, so some path differs from the start in one of them: ``paths`` is not empty
    return sum(want.get(p) == got.get(p) for p in paths) / len(paths)


def _flatten(state, prefix: str = "") -> dict[str, object]:
    """Nested state -> {path: leaf}; every dict (folder) is also a path, so empty folders count."""
    flat: dict[str, object] = {}
    if isinstance(state, dict):
        if prefix:
            flat[prefix] = "{dict}"
        for key, value in state.items():
            flat.update(_flatten(value, f"{prefix}/{key}"))
    else:
        flat[prefix] = state
    return flat


__all__ = ["ENVIRONMENTS", "FileSystemEnv", "ToolEnv", "ToolError", "check_arguments", "make_env",
           "multi_turn_outcome", "replay_ground_truth"]
