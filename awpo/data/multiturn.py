"""Built-in multi-turn tasks: a few user turns of file-system chores, each needing tool calls.

Each turn is an action picked among those that apply to the current (simulated) state; the
simulation executes the action's ground-truth calls, so every task is solvable and its final state
is known. Train and held-out splits phrase the actions with disjoint templates.

No task may end where it starts (a no-op would then score full marks): only the delete action removes
anything, and it deletes only a file that is still as it was in the initial state, which no later
action can recreate (every created or renamed file takes a name from ``NEW_FILES``, disjoint from
``FILES``). The generator checks this on every task.

The tools offered are exactly the environment's: the worked example (``DICE_EXAMPLE``) calls a tool
outside the environment, which is not offered, so that every offered tool can be executed.
"""

from __future__ import annotations

import random

from ..envs import FileSystemEnv
from .prompts import DICE_EXAMPLE, MULTI_TURN_NOTE, SYSTEM_PROMPT
from .task import Task

FOLDERS = ["documents", "projects", "photos", "archive", "music", "recipes"]
FILES = ["notes.txt", "report.pdf", "budget.csv", "todo.md", "photo.jpg", "letter.docx", "data.json"]
NEW_FILES = ["summary.txt", "ideas.md", "plan.txt", "readme.md", "log.txt", "draft.txt", "list.txt"]
NEW_FOLDERS = ["backup", "old", "work", "temp", "reports", "misc"]
TEXTS = ["meeting at 10", "call the bank", "version 2 is ready", "pick up the keys", "server restarted"]

PHRASES = {
    "organize": {"train": ["Create a folder called {d} and move {f} into it.",
                           "Make a new folder {d} and put {f} in there."],
                 "heldout": ["I want {f} tucked away in a fresh folder named {d}."]},
    "write_new": {"train": ["Make a new file named {g} that says '{t}'.",
                            "Write '{t}' into a new file called {g}."],
                  "heldout": ["Save the text '{t}' as {g}."]},
    "enter_and_touch": {"train": ["Go into {d} and create an empty file called {g}.",
                                  "Open the {d} folder and add a blank file {g}."],
                        "heldout": ["Inside {d}, I need an empty file named {g}."]},
    "rename": {"train": ["Rename {f} to {g}.", "Change the name of {f} to {g}."],
               "heldout": ["{f} should be called {g} from now on."]},
    "delete": {"train": ["Delete {f}.", "Remove the file {f}, I don't need it."],
               "heldout": ["Get rid of {f}."]},
    "copy_text": {"train": ["Copy the text of {f} into a new file {g}.",
                            "Make {g}, a new file with the same content as {f}."],
                  "heldout": ["Duplicate what {f} says into a file named {g}."]},
    "move_up": {"train": ["Move {f} up to the parent folder.", "Put {f} one folder up."],
                "heldout": ["{f} belongs in the folder above this one; move it there."]},
}


def multi_turn_task(rng: random.Random, split: str, task_id: str) -> Task:
    initial = _initial_state(rng)
    sim = FileSystemEnv(initial)
    texts, turns, templates = [], [], []
    for _ in range(rng.choice([2, 2, 3])):
        options = [name for name in ACTIONS if ACTIONS[name](rng, sim, initial, dry=True)]
        action = rng.choice(options)
        slots, calls = ACTIONS[action](rng, sim, initial, dry=False)
        template = rng.choice(PHRASES[action][split])
        for call in calls:
            result = sim.execute(call)
            if result.startswith("Error:"):  # a bug in an action, not in the data
                raise RuntimeError(f"built-in multi-turn action {action} produced a failing call {call}: {result}")
        texts.append(_capitalise(template.format(**slots)))
        turns.append(calls)
        templates.append(template)
    if sim.outcome_state() == FileSystemEnv(initial).outcome_state():  # a bug in the actions, not in the data
        raise RuntimeError(f"built-in multi-turn task {task_id} ends in its initial state: a no-op would pass")
    messages = [{"role": "system", "content": SYSTEM_PROMPT + MULTI_TURN_NOTE}, *DICE_EXAMPLE,
                {"role": "user", "content": texts[0]}]
    return Task(task_id, "multi_turn", messages, FileSystemEnv().tools(), turns, env=FileSystemEnv.name,
                env_state=initial, user_turns=texts[1:], meta={"templates": templates, "split": split})


def _initial_state(rng: random.Random) -> dict:
    root = {}
    for folder in rng.sample(FOLDERS, rng.choice([2, 3])):
        root[folder] = {name: rng.choice(TEXTS) for name in rng.sample(FILES, rng.choice([1, 2, 3]))}
    for name in rng.sample(FILES, rng.choice([1, 2])):
        root[name] = rng.choice(TEXTS)
    return {"cwd": "/", "root": root}


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _call(tool: str, **arguments) -> dict:
    return {"name": tool, "arguments": arguments}


# Each action: (rng, sim, initial, dry) -> truthy when it applies (dry) / (slots, calls) (not dry);
# ``initial`` is the task's initial state (the simulation ``sim`` holds the current one).

def _here(sim: FileSystemEnv, up: int = 0) -> dict | None:
    """A copy of the current folder (``up=1``: of its parent; None above the top)."""
    state = sim.state()
    parts = [p for p in state["cwd"].split("/") if p]
    if up > len(parts):
        return None
    node = state["root"]
    for part in parts[: len(parts) - up]:
        node = node[part]
    return node


def _files(folder: dict) -> list[str]:
    return sorted(n for n, v in folder.items() if isinstance(v, str))


def _folders(folder: dict) -> list[str]:
    return sorted(n for n, v in folder.items() if isinstance(v, dict))


def _untouched_files(sim: FileSystemEnv, initial: dict) -> list[str]:
    """The files of the current folder that were there, with the same content, in the initial state."""
    start = initial["root"]
    for part in [p for p in sim.state()["cwd"].split("/") if p]:
        start = start.get(part) if isinstance(start, dict) else None
    if not isinstance(start, dict):
        return []
    here = _here(sim)
    return [f for f in _files(here) if start.get(f) == here[f]]


def _fresh(rng, names: list[str], taken: dict) -> str | None:
    free = [n for n in names if n not in taken]
    return rng.choice(free) if free else None


def _organize(rng, sim, initial, dry):
    here = _here(sim)
    if dry:
        return bool(_files(here)) and any(n not in here for n in NEW_FOLDERS)
    f, d = rng.choice(_files(here)), _fresh(rng, NEW_FOLDERS, here)
    return {"f": f, "d": d}, [_call("mkdir", dir_name=d), _call("mv", source=f, destination=d)]


def _write_new(rng, sim, initial, dry):
    here = _here(sim)
    if dry:
        return any(n not in here for n in NEW_FILES)
    g, t = _fresh(rng, NEW_FILES, here), rng.choice(TEXTS)
    return {"g": g, "t": t}, [_call("write_file", file_name=g, content=t)]


def _enter_and_touch(rng, sim, initial, dry):
    here = _here(sim)
    if dry:
        return any(any(n not in here[d] for n in NEW_FILES) for d in _folders(here))
    d = rng.choice([d for d in _folders(here) if any(n not in here[d] for n in NEW_FILES)])
    g = _fresh(rng, NEW_FILES, here[d])
    return {"d": d, "g": g}, [_call("cd", folder=d), _call("touch", file_name=g)]


def _rename(rng, sim, initial, dry):
    here = _here(sim)
    if dry:
        return bool(_files(here)) and any(n not in here for n in NEW_FILES)
    f, g = rng.choice(_files(here)), _fresh(rng, NEW_FILES, here)
    return {"f": f, "g": g}, [_call("mv", source=f, destination=g)]


def _delete(rng, sim, initial, dry):
    untouched = _untouched_files(sim, initial)
    if dry:
        return bool(untouched)
    f = rng.choice(untouched)
    return {"f": f}, [_call("rm", name=f)]


def _copy_text(rng, sim, initial, dry):
    here = _here(sim)
    if dry:
        return bool(_files(here)) and any(n not in here for n in NEW_FILES)
    f, g = rng.choice(_files(here)), _fresh(rng, NEW_FILES, here)
    return {"f": f, "g": g}, [_call("cat", file_name=f), _call("write_file", file_name=g, content=here[f])]


def _move_up(rng, sim, initial, dry):
    here = _here(sim)
    parent = _here(sim, up=1)
    movable = [f for f in _files(here) if parent is not None and f not in parent]
    if dry:
        return bool(movable)
    f = rng.choice(movable)
    return {"f": f}, [_call("mv", source=f, destination="..")]


ACTIONS = {"organize": _organize, "write_new": _write_new, "enter_and_touch": _enter_and_touch,
           "rename": _rename, "delete": _delete, "copy_text": _copy_text, "move_up": _move_up}
