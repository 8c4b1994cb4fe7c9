"""BFCL results as a markdown table and a JSON file, and two runs side by side."""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS_JSON = "bfcl_results.json"
RESULTS_MD = "bfcl_results.md"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def results_table(result: dict) -> str:
    """Markdown: a header naming the model, date and limit, then one row per category."""
    lines = [f"BFCL (bfcl-eval {result.get('bfcl_eval', '?')}) -- model `{result.get('model', '?')}`, "
             f"{result.get('date', '?')}, limit {result.get('limit') or 'none'} per category",
             "",
             "| category | accuracy (%) | correct | total | generation errors |",
             "|---|---:|---:|---:|---:|"]
    for category, summary in result["results"].items():
        lines.append(f"| {category} | {_percent(summary['accuracy'])} | {summary['correct']} | "
                     f"{summary['total']} | {summary['generation_errors']} |")
    total = result["overall"]
    lines.append(f"| **overall (mean of categories)** | {_percent(total['accuracy'])} | {total['correct']} | "
                 f"{total['total']} | |")
    return "\n".join(lines) + "\n"


def comparison_table(first: dict, second: dict) -> str:
    """Markdown: the categories of both runs, accuracy of each and the difference (second - first)."""
    name_a, name_b = _label(first), _label(second)
    categories = list(first["results"]) + [c for c in second["results"] if c not in first["results"]]
    lines = [f"A = {name_a} ({first.get('date', '?')}, limit {first.get('limit') or 'none'}); "
             f"B = {name_b} ({second.get('date', '?')}, limit {second.get('limit') or 'none'})",
             "",
             "| category | A (%) | B (%) | B - A |",
             "|---|---:|---:|---:|"]
    for category in categories:
        a, b = first["results"].get(category), second["results"].get(category)
        cell_a = f"{_percent(a['accuracy'])} ({a['correct']}/{a['total']})" if a else "-"
        cell_b = f"{_percent(b['accuracy'])} ({b['correct']}/{b['total']})" if b else "-"
        delta = f"{100 * (b['accuracy'] - a['accuracy']):+.1f}" if a and b else "-"
        lines.append(f"| {category} | {cell_a} | {cell_b} | {delta} |")
    a, b = first["overall"], second["overall"]
    lines.append(f"| **overall** | {_percent(a['accuracy'])} | {_percent(b['accuracy'])} | "
                 f"{100 * (b['accuracy'] - a['accuracy']):+.1f} |")
    return "\n".join(lines) + "\n"


def _label(result: dict) -> str:
    return f"`{os.path.basename(str(result.get('model', '?')).rstrip('/')) or result.get('model')}`"


def write_results(result: dict, output_dir: str | os.PathLike) -> dict:
    """Write ``bfcl_results.json`` (everything, per-entry verdicts included) and ``bfcl_results.md``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / RESULTS_JSON, output_dir / RESULTS_MD
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(results_table(result))
    return {"json": str(json_path), "markdown": str(md_path)}


def load_results(path: str | os.PathLike) -> dict:
    """A results JSON written by ``write_results`` (or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"compare: cannot read BFCL results from {str(path)!r}: {exc}") from exc
    if not isinstance(result, dict) or "results" not in result or "overall" not in result:
        raise ValueError(f"compare: {str(path)!r} is not a BFCL results file (no 'results'/'overall')")
    return result
