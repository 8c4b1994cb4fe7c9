"""Load tool-use tasks from user files: JSONL / JSON / parquet records, or BFCL's own files.

A record is ``{"messages" | "question", "tools" | "function", "ground_truth"}`` plus optional
``id``, ``category``, ``env``, ``env_state``, ``user_turns``:

- ``messages``: chat messages up to the first model turn; ``question``: a string, a list of
  messages, or BFCL's list of turns (each a list of messages);
- ``tools``: BFCL function docs or OpenAI ``{"type": "function", "function": ...}`` tools;
- ``ground_truth``: BFCL's possible-answer list (``[]`` = no tool fits), or for multi-turn records
  (``env`` set) one list of ``{"name", "arguments"}`` calls per user turn.

BFCL's files (question file + separate ``possible_answer/<same name>`` file keyed by ``id``) load
as they are: ``load_tasks("data/BFCL_v4_simple_python.json")`` finds the answers beside it.
Nested fields may also be JSON strings (the safe way to store them in parquet, whose struct columns
merge keys across rows). Every bad record raises ``ValueError`` naming the file and line.
"""

from __future__ import annotations

import json
import os
import re

from ..envs import ENVIRONMENTS
from ..rewards.outcome import validate_ground_truth
from ..toolcall import normalize_tools
from .task import CATEGORIES, Task

JSON_FIELDS = ("messages", "question", "tools", "function", "ground_truth", "env_state", "user_turns")
_BFCL_CATEGORY = re.compile(
    r"^(?:live_)?(parallel_multiple|parallel|multiple|simple|irrelevance)(?:_[a-z]+)?_\d+(?:-\d+)*$")


def load_tasks(path: str, *, possible_answer_path: str | None = None, system_prompt: str | None = None) -> list[Task]:
    """Tasks from ``path`` (``.jsonl``, ``.json`` lines or array, ``.parquet``).

    ``possible_answer_path``: BFCL's answer file for a BFCL question file (default: the file of the
    same name in a ``possible_answer`` folder beside it, when there is one). ``system_prompt``: put
    in front of every task that has no system message (e.g. ``awpo.data.SYSTEM_PROMPT``).
    """
    if not os.path.isfile(path):
        raise ValueError(f"dataset file not found: {path}")
    records = read_records(path)
    answers = _possible_answers(path, possible_answer_path)
    tasks, seen = [], set()
    for where, record in records:
        task = record_to_task(record, where, answers, system_prompt)
        if task.id in seen:
            raise ValueError(f"{where}: duplicate task id {task.id!r}")
        seen.add(task.id)
        tasks.append(task)
    return tasks


def save_tasks(path: str, tasks: list[Task]) -> None:
    """Write tasks as JSONL that ``load_tasks`` reads back unchanged."""
    with open(path, "w", encoding="utf-8") as handle:
        for task in tasks:
            handle.write(json.dumps(task.to_dict(), ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------
# reading records
# ----------------------------------------------------------------------------------------------


def read_records(path: str) -> list[tuple[str, dict]]:
    """-> [(location such as 'file.jsonl:3', record dict)]."""
    if path.endswith(".parquet"):
        return [(f"{path}:row {i + 1}", _as_record(row, f"{path}:row {i + 1}"))
                for i, row in enumerate(_parquet_rows(path))]
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path}: invalid JSON array ({exc})") from None
        return [(f"{path}:item {i + 1}", _as_record(item, f"{path}:item {i + 1}")) for i, item in enumerate(items)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            records.append((where, _as_record(json.loads(line), where)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: invalid JSON ({exc})") from None
    return records


def _as_record(item, where: str) -> dict:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: a record must be a JSON object, got {type(item).__name__}")
    return item


def _parquet_rows(path: str) -> list[dict]:
    try:
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    except ImportError:
        pass
    try:
        import pandas
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow or pandas: pip install pyarrow") from None
    return [_plain(row) for row in pandas.read_parquet(path).to_dict("records")]


def _plain(value):
    """numpy arrays / scalars from pandas -> lists and Python scalars."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _possible_answers(path: str, explicit: str | None) -> dict[str, list]:
    if explicit is None:
        candidate = os.path.join(os.path.dirname(path), "possible_answer", os.path.basename(path))
        if not os.path.isfile(candidate):
            return {}
        explicit = candidate
    elif not os.path.isfile(explicit):
        raise ValueError(f"possible-answer file not found: {explicit}")
    answers = {}
    for where, record in read_records(explicit):
        if "id" not in record or "ground_truth" not in record:
            raise ValueError(f"{where}: a possible-answer record needs 'id' and 'ground_truth'")
        answers[record["id"]] = record["ground_truth"]
    return answers


# ----------------------------------------------------------------------------------------------
# record -> Task
# ----------------------------------------------------------------------------------------------


def record_to_task(record: dict, where: str, answers: dict | None = None, system_prompt: str | None = None) -> Task:
    if "initial_config" in record or "involved_classes" in record:
        raise ValueError(f"{where}: BFCL multi-turn entries run on BFCL's own backends; "
                         "evaluate them with awpo.eval, they cannot be loaded as training tasks")
    record = {k: _decode_json_field(k, v, where) for k, v in record.items()}
    task_id = str(record.get("id") or _fallback_id(where))
    messages, later_turns = _messages(record, where)
    env = record.get("env")
    tools = _tools(record, where, required=env is None)
    if env is not None:
        return _multi_turn_task(record, where, task_id, messages, tools, later_turns, system_prompt)
    ground_truth = _ground_truth(record, where, task_id, answers or {})
    category = _category(record, where, task_id, tools, ground_truth)
    return Task(task_id, category, _with_system(messages, system_prompt), tools, ground_truth, meta={"source": where})


def _decode_json_field(key: str, value, where: str):
    if key in JSON_FIELDS and isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{where}: field {key!r} is a string but not valid JSON ({exc})") from None
    return value


def _fallback_id(where: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", os.path.basename(where)).strip("-")


def _messages(record: dict, where: str) -> tuple[list[dict], list[str]]:
    if "messages" in record:
        return _check_messages(record["messages"], where, "messages"), []
    question = record.get("question")
    if isinstance(question, str):
        return [{"role": "user", "content": question}], []
    if isinstance(question, list) and question and all(isinstance(turn, list) for turn in question):
        first = _check_messages(question[0], where, "question[0]")
        later = []
        for i, turn in enumerate(question[1:], start=1):
            users = [m["content"] for m in _check_messages(turn, where, f"question[{i}]") if m["role"] == "user"]
            later.append("\n".join(users))
        return first, later
    if isinstance(question, list):
        return _check_messages(question, where, "question"), []
    raise ValueError(f"{where}: a record needs 'messages' (a list of chat messages) or 'question'")


def _check_messages(messages, where: str, field: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: {field!r} must be a non-empty list of chat messages")
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ValueError(f"{where}: {field}[{i}] must be {{'role': str, 'content': str}}, got {message!r}")
    return messages


def _tools(record: dict, where: str, *, required: bool) -> list[dict]:
    tools = record.get("tools", record.get("function"))
    if tools is None and not required:
        return []
    if tools is None:
        raise ValueError(f"{where}: a record needs 'tools' (or BFCL's 'function')")
    if isinstance(tools, dict):
        tools = [tools]
    try:
        normalize_tools(tools)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return [t["function"] if t.get("type") == "function" and isinstance(t.get("function"), dict) else t for t in tools]


def _ground_truth(record: dict, where: str, task_id: str, answers: dict) -> list:
    if "ground_truth" in record:
        ground_truth = record["ground_truth"]
    elif task_id in answers:
        ground_truth = answers[task_id]
    elif _BFCL_CATEGORY.match(task_id) and _BFCL_CATEGORY.match(task_id).group(1) == "irrelevance":
        ground_truth = []  # BFCL ships no answers for irrelevance: the answer is "no call"
    else:
        raise ValueError(f"{where}: no ground_truth for id {task_id!r} (add it, or give BFCL's possible-answer file)")
    try:
        validate_ground_truth(ground_truth)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return ground_truth


def _category(record: dict, where: str, task_id: str, tools: list, ground_truth: list) -> str:
    category = record.get("category")
    if category is not None:
        if category not in CATEGORIES:
            raise ValueError(f"{where}: category must be one of {CATEGORIES}, got {category!r}")
        return category
    match = _BFCL_CATEGORY.match(task_id)
    if match:
        return match.group(1)
    if not ground_truth:
        return "irrelevance"
    names = [next(iter(entry)) for entry in ground_truth]
    if len(names) == 1:
        return "simple" if len(tools) == 1 else "multiple"
    return "parallel" if len(set(names)) == 1 else "parallel_multiple"


def _multi_turn_task(record, where, task_id, messages, tools, later_turns, system_prompt) -> Task:
    env = record["env"]
    if env not in ENVIRONMENTS:
        raise ValueError(f"{where}: unknown environment {env!r}; registered: {sorted(ENVIRONMENTS)}")
    env_state = record.get("env_state")
    if env_state is not None and not isinstance(env_state, dict):
        raise ValueError(f"{where}: 'env_state' must be a dict")
    user_turns = record.get("user_turns", later_turns)
    if not isinstance(user_turns, list) or not all(isinstance(t, str) for t in user_turns):
        raise ValueError(f"{where}: 'user_turns' must be a list of strings")
    ground_truth = record.get("ground_truth")
    if not isinstance(ground_truth, list) or len(ground_truth) != len(user_turns) + 1:
        raise ValueError(f"{where}: a multi-turn 'ground_truth' needs one list of calls per user turn "
                         f"({len(user_turns) + 1}), got {ground_truth!r:.200}")
    for t, turn in enumerate(ground_truth):
        if not isinstance(turn, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                 and isinstance(c.get("arguments", {}), dict) for c in turn):
            raise ValueError(f"{where}: ground_truth[{t}] must be a list of {{'name', 'arguments'}} calls")
    return Task(task_id, "multi_turn", _with_system(messages, system_prompt), tools or ENVIRONMENTS[env]().tools(),
                ground_truth, env=env, env_state=env_state, user_turns=user_turns, meta={"source": where})


def _with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt is None or messages[0].get("role") == "system":
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]
