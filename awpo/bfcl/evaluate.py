"""Evaluate a generate function on BFCL categories: generate, then score with BFCL's own checkers.

Single-turn categories: every entry's conversation is rendered and generated in batches, then all
completions are scored in one call. Multi-turn categories: BFCL's loop plays each entry against the
model (``BfclChecker.run_multi_turn``), then the episodes are scored. An entry whose generation
failed counts as wrong and keeps the reason; the run goes on.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

from .checker import BfclChecker
from .data import is_multi_turn, resolve_categories
from .generate import GenerateFn, GenerationRequest, generate_all

logger = logging.getLogger(__name__)

GENERATION_ERROR = "generation_error"


def evaluate_generate_fn(generate_fn: GenerateFn, categories=None, *, limit: int | None = None,
                         checker: BfclChecker | None = None, batch_size: int = 32,
                         max_concurrency: int = 8, progress: bool = False) -> dict:
    """``{"categories", "limit", "bfcl_eval", "results": {category: summary}, "overall", "entries"}``.

    A category summary is ``{"accuracy", "correct", "total", "generation_errors"}``; ``entries`` has
    one record per entry: ``{"id", "valid", "error_type", "error"}``.
    """
    categories = resolve_categories(categories)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results, entries = {}, {}
    with nullcontext(checker) if checker is not None else BfclChecker() as bfcl:
        version = bfcl.info()["bfcl_eval"]
        for category in categories:
            if is_multi_turn(category):
                records = _run_multi_turn(bfcl, generate_fn, category, limit, max_concurrency, progress)
            else:
                records = _run_single_turn(bfcl, generate_fn, category, limit, batch_size, progress)
            entries[category] = records
            results[category] = summarize(records)
            logger.info("BFCL %s: %.1f%% (%d/%d)", category, 100 * results[category]["accuracy"],
                        results[category]["correct"], results[category]["total"])
    return {"categories": categories, "limit": limit, "bfcl_eval": version, "results": results,
            "overall": overall(results), "entries": entries}


def summarize(records: list[dict]) -> dict:
    correct = sum(1 for r in records if r["valid"])
    return {"accuracy": correct / len(records) if records else 0.0, "correct": correct, "total": len(records),
            "generation_errors": sum(1 for r in records if r["error_type"] == GENERATION_ERROR)}


def overall(results: dict) -> dict:
    """Unweighted mean of the category accuracies (BFCL's own summary is an unweighted mean too)."""
    accuracies = [summary["accuracy"] for summary in results.values()]
    return {"accuracy": sum(accuracies) / len(accuracies) if accuracies else 0.0,
            "correct": sum(s["correct"] for s in results.values()),
            "total": sum(s["total"] for s in results.values())}


def _progress_bar(progress: bool, total: int, category: str):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"BFCL {category}", unit="entry", dynamic_ncols=True)


def _run_single_turn(bfcl, generate_fn, category, limit, batch_size, progress) -> list[dict]:
    entries = bfcl.load_entries(category, limit=limit)
    bar = _progress_bar(progress, len(entries), category)
    records: dict[str, dict] = {}
    scored_items = []
    for start in range(0, len(entries), batch_size):
        batch = entries[start:start + batch_size]
        requests = [GenerationRequest(entry_id=e["id"], category=category, messages=e["question"][0],
                                      tools=e["function"]) for e in batch]
        for entry, outcome in zip(batch, generate_all(generate_fn, requests)):
            if outcome.error is not None:
                records[entry["id"]] = _generation_failure(entry["id"], outcome.error)
            else:
                scored_items.append({"id": entry["id"], "result": outcome.text})
        if bar is not None:
            bar.update(len(batch))
    _add_verdicts(records, bfcl.score(category, scored_items), scored_items)
    if bar is not None:
        bar.close()
    return [records[entry["id"]] for entry in entries]


def _run_multi_turn(bfcl, generate_fn, category, limit, max_concurrency, progress) -> list[dict]:
    bar = _progress_bar(progress, limit, category)

    def on_episode(update: dict) -> None:
        if bar is not None:
            bar.total = update["total"]  # known for sure once the worker has selected the entries
            bar.update(1)
    episodes = bfcl.run_multi_turn(category, generate_fn, limit=limit, max_concurrency=max_concurrency,
                                   on_episode=on_episode)
    if bar is not None:
        bar.close()
    records = {e["id"]: _generation_failure(e["id"], e["error"], e.get("error_type", GENERATION_ERROR))
               for e in episodes if e["error"] is not None}
    items = [{"id": e["id"], "result": e["result"]} for e in episodes if e["error"] is None]
    _add_verdicts(records, bfcl.score(category, items), items)
    return [records[e["id"]] for e in episodes]


def _generation_failure(entry_id: str, reason: str, error_type: str = GENERATION_ERROR) -> dict:
    """An entry that produced no scoreable output (generation failed, or its episode timed out)."""
    return {"id": entry_id, "valid": False, "error_type": error_type, "error": [reason], "output": None}


def _add_verdicts(records: dict, verdicts: list[dict], items: list[dict]) -> None:
    outputs = {item["id"]: item["result"] for item in items}
    for verdict in verdicts:
        records[verdict["id"]] = _record(verdict, outputs[verdict["id"]])


def _record(verdict: dict, output) -> dict:
    """BFCL's verdict and what the model wrote (text; per turn and step lists for multi-turn)."""
    return {"id": verdict["id"], "valid": bool(verdict["valid"]), "error_type": verdict.get("error_type"),
            "error": verdict.get("error"), "output": output}
