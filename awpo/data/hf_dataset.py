"""Tool-use tasks as a Hugging Face `datasets.Dataset`, in the columns TRL's trainers and awpo's TRL rewards read.

Columns:
- ``prompt``: the conversation, ``[{"role", "content"}, ...]`` (TRL's conversational format; TRL applies the
  model's chat template). The tools are listed Hermes-style in the system message and the worked examples'
  calls are written as ``<tool_call>`` blocks (``awpo.toolcall.with_tool_system_prompt`` /
  ``hermes_conversation``): what ``python -m awpo.train`` renders for a template without native tools
  (SmolLM2's), and text that any chat template renders;
- ``ground_truth`` and ``tools``: JSON text (a task's answers and tools are ragged nested data, which Arrow
  columns cannot hold as they are); ``awpo.integrations.trl``'s rewards decode them;
- ``id`` and ``category``.

Single-turn tasks only: multi-turn episodes need a rollout loop that executes calls, which TRL's trainer does
not run for awpo's environments.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

from ..toolcall import hermes_conversation, with_tool_system_prompt
from .builtin import builtin_tasks
from .task import SINGLE_TURN_CATEGORIES, Task

COLUMNS = ("prompt", "ground_truth", "tools", "id", "category")


def task_record(task: Task) -> dict:
    """One task as a dataset row (see the module doc for the columns)."""
    if task.is_multi_turn:
        raise ValueError(f"task {task.id!r} is multi-turn: the datasets.Dataset form holds single-turn tasks only")
    messages = hermes_conversation(task.messages)
    if task.tools:
        messages = with_tool_system_prompt(messages, task.tools)
    prompt = [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in messages]
    return {"prompt": prompt, "ground_truth": json.dumps(task.ground_truth, ensure_ascii=False),
            "tools": json.dumps(task.tools, ensure_ascii=False), "id": task.id, "category": task.category}


def tasks_dataset(tasks: Sequence[Task]):
    """A `datasets.Dataset` of single-turn tasks (e.g. from `awpo.data.load_tasks`)."""
    from datasets import Dataset

    records = [task_record(task) for task in tasks]
    return Dataset.from_dict({column: [r[column] for r in records] for column in COLUMNS})


def builtin_dataset(split: str = "train", n: int | None = None, seed: int = 0, *,
                    categories: Sequence[str] = SINGLE_TURN_CATEGORIES, worked_examples: bool = True):
    """The built-in tasks (`builtin_tasks`, same arguments) as a `datasets.Dataset`."""
    if "multi_turn" in categories:
        raise ValueError("categories: 'multi_turn' tasks need awpo's own rollout loop (python -m awpo.train); "
                         f"the datasets.Dataset form takes {', '.join(SINGLE_TURN_CATEGORIES)}")
    return tasks_dataset(builtin_tasks(split, n, seed, categories=categories, worked_examples=worked_examples))
