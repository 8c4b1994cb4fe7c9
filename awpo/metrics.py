"""Training metrics: one JSON line per logged step in `output_dir/metrics.jsonl`, and a PNG plot.

The file is appended to and flushed after every line, so a crashed or resumed run keeps its
history; on resume, lines from steps after the checkpoint are dropped first (they are repeated).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The curves worth a panel each, in this order (the ones missing from a run are skipped).
PLOT_KEYS = [
    ("reward/outcome_mean", "outcome reward"),
    ("accuracy", "exact accuracy (train rollouts)"),
    ("reward/reasoning_mean", "reasoning score"),
    ("loss", "policy loss"),
    ("adv/mean_abs", "|advantage|"),
    ("adv/gate_mean", "gate"),
    ("adv/rescued_groups", "groups with zero outcome variance that still learn"),
    ("adv/reasoning_share", "share of |advantage| from the reasoning reward"),
    ("completion/with_reasoning_fraction", "completions with reasoning"),
    ("entropy", "entropy"),
    ("kl", "KL to reference"),
    ("clip_ratio/high_mean", "clipped (high)"),
    ("completion/mean_tokens", "sampled tokens per completion"),
    ("throughput/tokens_per_s", "tokens / s"),
]


class MetricsWriter:
    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Forget the records of steps > `step` (a resumed run writes them again)."""
        records = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
            handle.flush()


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if hasattr(value, "item"):
        return _plain(value.item())
    return value


def read_metrics(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # a crash in the middle of the last write: that record is lost
                logger.warning("%s: ignoring its unfinished last line", path)
                break
            raise ValueError(f"{path}: line {number} is not JSON ({err})") from err
    return records


def plot_metrics(metrics_path: str | os.PathLike, png_path: str | os.PathLike, *, title: str = "") -> Path | None:
    """A grid of the PLOT_KEYS curves against the step; None when there is nothing to plot."""
    records = [r for r in read_metrics(metrics_path) if "step" in r]
    panels = [(key, label) for key, label in PLOT_KEYS if any(r.get(key) is not None for r in records)]

    def draw(axis, key: str) -> None:
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=2.5, linewidth=1.2)

    return plot_panels(panels, draw, png_path, title=title, cell=(4.2, 2.8))


def plot_panels(panels: list[tuple[str, str]], draw: Callable[[Any, str], None], png_path: str | os.PathLike, *,
                title: str = "", cell: tuple[float, float] = (4.2, 2.8), legend: bool = False) -> Path | None:
    """A PNG of one panel per ``(key, title)`` against the step, three a row; ``draw(axis, key)`` fills a panel.
    None (and no file) when there are no panels."""
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(cell[0] * columns, cell[1] * rows), squeeze=False)
    for axis, (key, label) in zip(axes.flat, panels):
        draw(axis, key)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    if legend:
        axes.flat[0].legend(fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    png_path = Path(png_path)
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return png_path
