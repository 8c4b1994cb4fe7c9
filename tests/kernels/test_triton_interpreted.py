"""The LM-head Triton kernels on CPU, under the Triton interpreter.

TRITON_INTERPRET=1 must be set before triton is imported, so this runs the `triton_interp` cases of
`test_logprobs.py` and `test_policy_loss.py` (float64-reference comparisons of values and gradients,
every loss option, edge logits, packed == padded, chunking, the bf16 in-place d(logits) layout) in a
fresh Python process with the variable set. Small odd shapes and big tiles keep it fast.
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every kernel under TRITON_INTERPRET, in a subprocess

REPO = Path(__file__).resolve().parents[2]
TEST_FILES = [Path(__file__).with_name(name) for name in ("test_logprobs.py", "test_policy_loss.py")]


def test_lm_head_triton_kernels_under_interpreter_pass_the_op_suites():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.setdefault("TRITON_CACHE_DIR", os.path.join(tempfile.gettempdir(), "awpo-test-cache", "triton"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", *map(str, TEST_FILES), "-q", "-x", "-p", "no:cacheprovider",
               "-k", "triton_interp", "-W", "error::RuntimeWarning"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 130, report  # the cases really ran under the interpreter
    assert "skipped" not in proc.stdout and "failed" not in proc.stdout, report
