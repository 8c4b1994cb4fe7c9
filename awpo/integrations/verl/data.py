"""The built-in tool-use tasks as verl's parquet data (``data.train_files`` / ``data.val_files``).

    python -m awpo.integrations.verl.data --output DIR     # DIR/train.parquet, DIR/test.parquet

One row per task, in the columns verl's ``RLHFDataset`` and reward managers read:

- ``data_source``: ``"awpo/builtin"``;
- ``prompt``: the conversation ``[{"role", "content"}, ...]`` that verl renders with the model's chat
  template: the tools listed Hermes-style in the system message, worked examples as ``<tool_call>``
  blocks (the same text as ``awpo.data.builtin_dataset``, see ``awpo.data.hf_dataset``);
- ``ability``: ``"tool_use"``;
- ``reward_model``: ``{"style": "rule", "ground_truth": <BFCL possible-answer list as JSON text>}``
  (JSON because the answers are ragged nested data that parquet's typed columns would not keep);
- ``extra_info``: ``{"split", "index", "id", "category", "tools" (JSON text), "request"}`` (the
  user's message, which an LLM judge is shown).

``awpo.integrations.verl.reward.compute_score`` scores responses against these rows. Single-turn
categories only (multi-turn episodes need awpo's own rollout loop). Needs pyarrow only.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from awpo.data import builtin_tasks
from awpo.data.hf_dataset import task_record
from awpo.data.task import SINGLE_TURN_CATEGORIES, Task

DATA_SOURCE = "awpo/builtin"
ABILITY = "tool_use"
COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
FILES = {"train": "train.parquet", "heldout": "test.parquet"}


def task_row(task: Task, *, split: str, index: int) -> dict:
    """One single-turn task as a row of verl's layout."""
    record = task_record(task)  # ValueError for a multi-turn task
    return {
        "data_source": DATA_SOURCE,
        "prompt": record["prompt"],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": record["ground_truth"]},
        "extra_info": {"split": split, "index": index, "id": task.id, "category": task.category,
                       "tools": record["tools"], "request": task.user_prompt},
    }


def tasks_table(tasks: Sequence[Task], *, split: str):
    """A pyarrow Table of the tasks in verl's layout (what pandas and verl's RLHFDataset read back)."""
    import pyarrow as pa

    rows = [task_row(task, split=split, index=i) for i, task in enumerate(tasks)]
    return pa.Table.from_pylist(rows).select(list(COLUMNS)) if rows else pa.table({c: [] for c in COLUMNS})


def export(output: str | Path, *, train_size: int | None = None, test_size: int | None = None, seed: int = 0,
           categories: Sequence[str] = SINGLE_TURN_CATEGORIES, worked_examples: bool = True) -> dict[str, Path]:
    """Write the train and held-out splits of the built-in tasks to ``output`` as parquet; their paths."""
    unknown = [c for c in categories if c not in SINGLE_TURN_CATEGORIES]
    if unknown or not categories:
        raise ValueError(f"categories must be a non-empty subset of {SINGLE_TURN_CATEGORIES} (multi-turn episodes need "
                         f"awpo's rollout loop); got {list(categories)}")
    import pyarrow.parquet as pq

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    sizes = {"train": train_size, "heldout": test_size}
    paths = {}
    for split, filename in FILES.items():
        tasks = builtin_tasks(split, sizes[split], seed, categories=tuple(categories), worked_examples=worked_examples)
        paths[split] = output / filename
        pq.write_table(tasks_table(tasks, split=split), paths[split])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m awpo.integrations.verl.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="directory for train.parquet and test.parquet")
    parser.add_argument("--train-size", type=int, default=None, help="train tasks (default 512)")
    parser.add_argument("--test-size", type=int, default=None, help="held-out tasks (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", nargs="+", default=list(SINGLE_TURN_CATEGORIES),
                        help=f"subset of {' '.join(SINGLE_TURN_CATEGORIES)}")
    parser.add_argument("--no-worked-examples", action="store_true",
                        help="the system prompt and the request only (no worked example exchanges)")
    args = parser.parse_args(argv)
    try:
        paths = export(args.output, train_size=args.train_size, test_size=args.test_size, seed=args.seed,
                       categories=args.categories, worked_examples=not args.no_worked_examples)
    except ValueError as exc:
        parser.error(str(exc))
    for split, path in paths.items():
        print(json.dumps({"split": split, "path": str(path), "rows": _row_count(path)}))
    return 0


def _row_count(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


if __name__ == "__main__":
    sys.exit(main())
