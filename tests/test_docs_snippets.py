"""Every Python snippet of the README and docs/ runs: each file's ```python blocks, in order, in one
fresh interpreter (a block may use what an earlier block of the same file defined).

The few blocks that cannot run here are listed in NOT_RUN with the reason; a listed block that no
longer exists fails the test, so the list cannot go stale."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
# (page, the block's first line) -> why it does not run in CI
NOT_RUN = {
    ("docs/TRAINING.md", 'args = AWPOConfig(output_dir="runs/trl", num_generations=8, estimator="awpo", gate="soft")'):
        "downloads a model by name and trains it (the TRL path is tested in tests/awpo/test_trl*.py)",
    ("docs/TRL.md", "from awpo.data import builtin_dataset"):
        "downloads a model by name and trains it (the TRL path is tested in tests/awpo/test_trl*.py)",
}


def blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def runnable(page: Path) -> list[str]:
    name = page.relative_to(ROOT).as_posix()
    return [b for b in blocks(page) if (name, b.splitlines()[0]) not in NOT_RUN]


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_snippets_run(page, tmp_path):
    code = "\n\n".join(runnable(page))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{page.name}: a snippet failed\n{result.stderr[-3000:]}"


def test_every_not_run_entry_names_an_existing_block():
    present = {(p.relative_to(ROOT).as_posix(), b.splitlines()[0]) for p in PAGES for b in blocks(p)}
    assert set(NOT_RUN) <= present, sorted(set(NOT_RUN) - present)
    assert len(present) >= 6  # the pages do hold snippets: the test cannot pass on an empty collection
