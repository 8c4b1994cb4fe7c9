"""BFCL before and after a training run: `python -m awpo.train --eval-bfcl CATEGORIES`.

The policy is scored through the trainer's own rollout engine (weights already synced), with the same
generation and BFCL checker as `python -m awpo.eval`. Each evaluation writes its
`bfcl_results.{json,md}` under `output_dir/bfcl-before` and `output_dir/bfcl-after`; the side-by-side
table goes to `output_dir/bfcl_comparison.md`.
"""

from __future__ import annotations

from pathlib import Path

SUMMARY_KEYS = ("model", "date", "engine", "categories", "limit", "max_tokens", "results", "overall")


def bfcl_summary(config, engine, tokenizer, model_path: str, output_dir: Path, label: str) -> dict:
    """Evaluate the current policy on `config.eval_bfcl`; the results without per-entry detail
    (small enough for a checkpoint, enough for `comparison_table`)."""
    from awpo.eval import evaluate

    result = evaluate(model_path, config.eval_bfcl, config.eval_bfcl_limit or None,
                      output_dir=str(output_dir / f"bfcl-{label}"), rollout_engine=engine, tokenizer=tokenizer,
                      max_tokens=config.eval_bfcl_max_tokens, max_model_len=config.max_model_len, progress=True)
    return {key: result[key] for key in SUMMARY_KEYS if key in result}


def write_comparison(before: dict, after: dict, output_dir: Path) -> Path:
    from awpo.bfcl.report import comparison_table

    path = output_dir / "bfcl_comparison.md"
    path.write_text("# BFCL before (A) and after (B) AWPO training\n\n" + comparison_table(before, after))
    return path
