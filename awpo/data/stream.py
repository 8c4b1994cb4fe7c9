"""The trainer's task sources: which tasks a run trains and evaluates on, and the endless,
resumable stream of training batches."""
from __future__ import annotations

import random

from .builtin import builtin_tasks
from .loaders import load_tasks


class DataStream:
    """An endless stream of tasks: epoch e is a permutation of the tasks drawn from (seed, e).
    `position` (tasks handed out so far) is all a checkpoint needs to continue it exactly."""

    def __init__(self, tasks: list, seed: int, position: int = 0):
        if not tasks:
            raise ValueError("the training data set is empty")
        self.tasks, self.seed, self.position = list(tasks), seed, position
        self._cached: tuple[int | None, list[int]] = (None, [])

    def _order(self, epoch: int) -> list[int]:
        """The permutation of `epoch` (the last one is kept: batches draw from it many times)."""
        if self._cached[0] != epoch:
            order = list(range(len(self.tasks)))
            random.Random(f"awpo-data:{self.seed}:{epoch}").shuffle(order)
            self._cached = (epoch, order)
        return self._cached[1]

    def next_batch(self, size: int) -> list:
        batch = []
        for _ in range(size):
            epoch, offset = divmod(self.position, len(self.tasks))
            batch.append(self.tasks[self._order(epoch)[offset]])
            self.position += 1
        return batch


def load_task_set(source: str, split: str, limit: int, categories: list[str], seed: int, *,
                  worked_examples: bool = True) -> list:
    """'builtin' -> builtin_tasks(split), else a task file; filtered, then cut to `limit`.
    `worked_examples` applies to the built-in tasks only (a task file's messages are used as written)."""
    if source == "none":
        return []
    if source == "builtin":
        options = {"categories": categories} if categories else {}
        return builtin_tasks(split, n=limit or None, seed=seed, worked_examples=worked_examples, **options)
    tasks = load_tasks(source)
    if categories:
        tasks = [t for t in tasks if t.category in categories]
    if not tasks:
        raise ValueError(f"{source}: no tasks" + (f" in categories {categories}" if categories else ""))
    return tasks[:limit] if limit else tasks


def load_train_tasks(config) -> list:
    return load_task_set(config.dataset, "train", config.max_train_tasks, config.category_list, config.seed,
                         worked_examples=config.worked_examples)


def load_eval_tasks(config) -> list:
    """The held-out tasks; `eval_seed` (default: `seed`) fixes them across runs of different seeds."""
    seed = config.seed if config.eval_seed is None else config.eval_seed
    return load_task_set(config.eval_dataset, "heldout", config.max_eval_tasks, config.category_list, seed,
                         worked_examples=config.worked_examples)
