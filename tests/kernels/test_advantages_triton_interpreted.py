"""The Triton `group_advantages` kernel on CPU, under the Triton interpreter.

TRITON_INTERPRET=1 must be set before triton is imported, so this runs the `triton_interp` cases of
`test_advantages.py` (reference comparisons, the four AWPO properties, the properties of the ablation
baselines reward_sum / gdpo / gate "none", hand-computed examples) in a fresh Python process with the
variable set.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the kernel under TRITON_INTERPRET, in a subprocess

REPO = Path(__file__).resolve().parents[2]
TEST_FILE = Path(__file__).with_name("test_advantages.py")


def test_triton_kernel_under_interpreter_passes_the_advantage_suite():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", str(TEST_FILE), "-q", "-x", "-p", "no:cacheprovider",
               "-k", "triton_interp"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 200, report  # the cases really ran under the interpreter
    assert "skipped" not in proc.stdout and "failed" not in proc.stdout, report
