"""The PNG plots of a training run (``awpo.metrics.plot_metrics``) and of an ablation (``awpo.ablation.report.plot``),
both drawn by ``awpo.metrics.plot_panels``."""
import json

from awpo.ablation.report import plot
from awpo.metrics import plot_metrics

PNG_MAGIC = b"\x89PNG"


def test_run_metrics_plot_one_panel_per_logged_curve(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    records = [{"step": s, "reward/outcome_mean": 0.1 * s, "accuracy": 0.05 * s} for s in (1, 2, 3)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"eval": 1}\n')
    png = plot_metrics(metrics, tmp_path / "metrics.png", title="run")
    assert png == tmp_path / "metrics.png" and png.read_bytes()[:4] == PNG_MAGIC
    assert plot_metrics(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_ablation_plot_draws_every_variant(tmp_path):
    def run(offset):
        return {"steps": [{"step": s, "reward/outcome_mean": offset + 0.1 * s} for s in (1, 2, 3)]}

    runs = {"grpo": {0: run(0.0), 1: run(0.1)}, "awpo": {0: run(0.2)}}
    png = plot(runs, tmp_path / "curves.png")
    assert png == tmp_path / "curves.png" and png.read_bytes()[:4] == PNG_MAGIC
    assert plot({"grpo": {0: {"steps": [{"step": 1}]}}}, tmp_path / "empty.png") is None
