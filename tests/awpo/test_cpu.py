"""The CPU thread count: every core the process may use, unless the user sets a number."""
import os
import subprocess
import sys

import pytest

from awpo import cpu


def test_default_threads_are_the_usable_cores_whatever_the_load(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:  # a busy core at start-up no longer halves the run's thread count
        assert cpu.default_cpu_threads() == cpu.usable_cores() == len(os.sched_getaffinity(0))
    finally:
        spinner.kill()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores to restrict to one")
def test_usable_cores_follow_the_affinity_mask():
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from awpo import cpu; print(cpu.usable_cores())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_omp_num_threads_wins_when_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu.default_cpu_threads() == 3
    for junk in ("", "0", "two", "-1"):
        monkeypatch.setenv("OMP_NUM_THREADS", junk)
        assert cpu.default_cpu_threads() == cpu.usable_cores()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_cpu_threads_rejects_a_bad_count(bad):
    with pytest.raises(ValueError, match="cpu thread count"):
        cpu.set_cpu_threads(bad)
