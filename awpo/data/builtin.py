"""The embedded default data set: seeded tool-use tasks in BFCL's single-turn shapes (+ multi-turn).

``builtin_tasks("train")`` and ``builtin_tasks("heldout")`` draw from disjoint phrasing templates
(``phrasings.py``) over the same tool library (``tools.py``). Task ``i`` of a split depends only on
``(seed, split, i)``, so a larger ``n`` extends a smaller one.
"""

from __future__ import annotations

import dataclasses
import random
import string

from ..rewards.outcome import check_call
from ..toolcall import ToolCall
from .multiturn import multi_turn_task
from .phrasings import CLAUSES, FRAMES, NO_TOOL_REQUESTS, REQUESTS
from .prompts import NO_CALL_EXAMPLE, SYSTEM_PROMPT, worked_example
from .task import CATEGORIES, SINGLE_TURN_CATEGORIES, Task
from .tools import GENERAL_TOOLS, TOOLS, Sample, ToolSpec

SPLITS = ("train", "heldout")
DEFAULT_SIZES = {"train": 512, "heldout": 128}
# Share of each category (renormalised over the categories asked for).
CATEGORY_WEIGHTS = {"simple": 0.3, "multiple": 0.25, "parallel": 0.15, "parallel_multiple": 0.15,
                    "irrelevance": 0.15, "multi_turn": 0.2}


def builtin_tasks(split: str = "train", n: int | None = None, seed: int = 0, *,
                  categories: tuple[str, ...] | list[str] = SINGLE_TURN_CATEGORIES,
                  worked_examples: bool = True) -> list[Task]:
    """``n`` tasks (default 512 train / 128 held-out) mixing ``categories`` in fixed proportions.

    ``categories`` defaults to the five single-turn shapes; add ``"multi_turn"`` for the stateful
    file-system episodes (they need a rollout loop that executes calls, see ``awpo.envs``).
    ``worked_examples=False`` drops the worked example exchanges (``prompts.py``): each task is the
    system prompt and the request only, the same tasks otherwise (the sparse-reward regime, where a
    small model rarely writes a correct call at first).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n is None:
        n = DEFAULT_SIZES[split]
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    categories = tuple(categories)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        raise ValueError(f"categories must be a non-empty subset of {CATEGORIES}, got {list(categories)}")
    if not isinstance(worked_examples, bool):
        raise ValueError(f"worked_examples must be a bool, got {worked_examples!r}")
    schedule = _category_schedule(categories, n)
    tasks = [_make_task(category, split, seed, index) for index, category in enumerate(schedule)]
    return tasks if worked_examples else [_without_worked_examples(task) for task in tasks]


def _without_worked_examples(task: Task) -> Task:
    """The task with only its system message and its request (every built-in task ends with it)."""
    *before, request = task.messages
    messages = [m for m in before if m["role"] == "system"] + [request]
    return dataclasses.replace(task, messages=messages, meta={**task.meta, "worked_examples": False})


def _category_schedule(categories: tuple[str, ...], n: int) -> list[str]:
    """Smooth weighted round robin: every prefix holds each category in proportion to its weight."""
    weights = {c: CATEGORY_WEIGHTS[c] for c in dict.fromkeys(categories)}
    total = sum(weights.values())
    counts = dict.fromkeys(weights, 0)
    schedule = []
    for i in range(n):
        pick = max(weights, key=lambda c: weights[c] / total * (i + 1) - counts[c])
        counts[pick] += 1
        schedule.append(pick)
    return schedule


def _make_task(category: str, split: str, seed: int, index: int) -> Task:
    rng = random.Random(f"awpo-builtin:{seed}:{split}:{index}")
    task_id = f"builtin-{split}-{index:05d}-{category}"
    if category == "multi_turn":
        return multi_turn_task(rng, split, task_id)
    request, tools, ground_truth, templates = MAKERS[category](rng, split)
    example = _example_exchange(random.Random(f"awpo-builtin-example:{seed}:{split}:{index}"), split, tools,
                                ground_truth)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, *NO_CALL_EXAMPLE, *example,
                {"role": "user", "content": request}]
    return Task(task_id, category, messages, tools, ground_truth, meta={"templates": templates, "split": split})


# ----------------------------------------------------------------------------------------------
# one call: template + sampled arguments -> text and possible answer
# ----------------------------------------------------------------------------------------------


def mentioned_params(template: str) -> set[str]:
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    return {name.split("__")[0] for name in fields}


def possible_answer(spec: ToolSpec, sample: Sample, template: str) -> dict:
    """BFCL possible answer for one call: mentioned params must carry their value (or an alias);
    unmentioned optional params may be omitted or carry their default."""
    mentioned = mentioned_params(template)
    params = {}
    for param in spec.doc["parameters"]["properties"]:
        default = spec.default(param)
        if param in mentioned:
            acceptable = [sample.values[param], *sample.aliases.get(param, [])]
            if default is not None and sample.values[param] == default:
                acceptable.append("")
        elif param in spec.required:
            raise ValueError(f"template {template!r} of {spec.name} does not mention required parameter {param!r}")
        else:
            acceptable = ["", default] if default is not None else [""]
        params[param] = acceptable
    return {spec.name: params}


def _call(rng: random.Random, spec: ToolSpec, template: str) -> tuple[str, dict]:
    sample = spec.sample(rng)
    return template.format(**sample.text), possible_answer(spec, sample, template)


def _distinct_calls(rng, spec: ToolSpec, templates: list[str], count: int) -> tuple[list[str], list[dict], list[str]]:
    """``count`` calls of one tool whose answers differ (resampling a few times)."""
    texts, answers, used = [], [], []
    for _ in range(count * 8):
        template = rng.choice(templates)
        text, answer = _call(rng, spec, template)
        if answer not in answers:
            texts.append(text)
            answers.append(answer)
            used.append(template)
        if len(answers) == count:
            break
    return texts, answers, used


def _example_exchange(rng: random.Random, split: str, offered: list[dict], ground_truth: list[dict]) -> list[dict]:
    """One worked example: a request for one of the offered tools, with other values than any
    ground-truth call, and its answer (see ``prompts.py`` for why)."""
    spec = TOOLS[rng.choice(offered)["name"]]
    for _ in range(32):
        template = rng.choice(REQUESTS[spec.name][split])
        sample = spec.sample(rng)
        mentioned = mentioned_params(template)
        arguments = {p: sample.values[p] for p in spec.doc["parameters"]["properties"] if p in mentioned}
        call = ToolCall(spec.name, arguments)
        if not any(check_call(call, *next(iter(answer.items())), spec.doc).exact for answer in ground_truth):
            break  # never a task's own answer
    return worked_example(template.format(**sample.text), spec.name, arguments)


# ----------------------------------------------------------------------------------------------
# categories
# ----------------------------------------------------------------------------------------------


def _tool_pool(exclude: set[str]) -> list[ToolSpec]:
    """Tools that may be offered next to ``exclude``: no overlap with them, never a general tool."""
    blocked = set(exclude) | set(GENERAL_TOOLS)
    for name in exclude:
        blocked |= TOOLS[name].overlaps
    return [spec for spec in TOOLS.values() if spec.name not in blocked and not (spec.overlaps & set(exclude))]


def _simple(rng, split):
    spec = rng.choice(list(TOOLS.values()))
    template = rng.choice(REQUESTS[spec.name][split])
    text, answer = _call(rng, spec, template)
    return text, [spec.doc], [answer], [template]


def _multiple(rng, split):
    spec = rng.choice(list(TOOLS.values()))
    template = rng.choice(REQUESTS[spec.name][split])
    text, answer = _call(rng, spec, template)
    distractors = rng.sample(_tool_pool({spec.name}), rng.choice([1, 1, 2]))
    offered = [spec.doc] + [d.doc for d in distractors]
    rng.shuffle(offered)
    return text, offered, [answer], [template]


def _parallel(rng, split):
    spec = rng.choice(list(TOOLS.values()))
    count = rng.choice([2, 2, 3])
    texts, answers, templates = _distinct_calls(rng, spec, CLAUSES[spec.name][split], count)
    frame = rng.choice(FRAMES[split][len(texts)])
    return _fill_frame(frame, texts), [spec.doc], answers, [frame, *templates]


def _parallel_multiple(rng, split):
    first = rng.choice(list(TOOLS.values()))
    second = rng.choice(_tool_pool({first.name}))
    calls = [first, second] + ([rng.choice([first, second])] if rng.random() < 0.3 else [])
    rng.shuffle(calls)
    texts, answers, templates = [], [], []
    for spec in calls:
        template = rng.choice(CLAUSES[spec.name][split])
        text, answer = _call(rng, spec, template)
        texts.append(text)
        answers.append(answer)
        templates.append(template)
    offered = [first.doc, second.doc]
    if len(calls) == 2 and rng.random() < 0.5:
        offered.append(rng.choice(_tool_pool({first.name, second.name})).doc)
    rng.shuffle(offered)
    frame = rng.choice(FRAMES[split][len(texts)])
    return _fill_frame(frame, texts), offered, answers, [frame, *templates]


def _irrelevance(rng, split):
    if rng.random() < 0.4:
        template = rng.choice(NO_TOOL_REQUESTS[split])
        text, asked = template, set()
    else:  # a near miss: a request for a tool that is not offered
        spec = rng.choice(list(TOOLS.values()))
        template = rng.choice(REQUESTS[spec.name][split])
        text, _ = _call(rng, spec, template)
        asked = {spec.name}
    offered = rng.sample(_tool_pool(asked), rng.choice([1, 2]))
    return text, [s.doc for s in offered], [], [template]


def _fill_frame(frame: str, clauses: list[str]) -> str:
    return frame.format(**{f"c{i + 1}": clause for i, clause in enumerate(clauses)})


MAKERS = {"simple": _simple, "multiple": _multiple, "parallel": _parallel,
          "parallel_multiple": _parallel_multiple, "irrelevance": _irrelevance}
