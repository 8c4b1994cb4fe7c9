"""awpo.integrations.verl from the main environment: build .venv-verl (first use) and run tests/verl_plugin there.

verl 0.9.1 cannot share this environment (its transformers pin does not overlap ours), so the plugin's
tests live in ``tests/verl_plugin`` (skipped here by ``tests/conftest.py``) and run in the venv that
``python -m awpo.integrations.verl.venv --ensure`` builds (``make test`` does it first).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # builds .venv-verl on first use, then runs the verl suite
def test_verl_plugin_suite_passes_in_its_venv():
    from awpo.integrations.verl.venv import ensure_venv

    python = ensure_venv()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # only what .venv-verl holds (awpo editable, verl 0.9.1)
    result = subprocess.run([str(python), "-m", "pytest", "tests/verl_plugin", "-q", "-p", "no:cacheprovider", "-W", "ignore"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"tests/verl_plugin failed in {python}:\n{output[-12000:]}"
    assert " passed" in output and " failed" not in output


def test_without_verl_the_package_imports_and_registers_nothing():
    import awpo.integrations.verl as plugin

    if plugin.verl_installed():
        pytest.skip("verl is installed here")

    assert plugin.ESTIMATOR_NAMES == ("awpo", "awpo_mixed", "awpo_reward_sum", "awpo_gdpo")
    with pytest.raises(ImportError, match="needs verl"):
        plugin.register()


def test_venv_stamp_covers_requirements_and_pyproject(tmp_path, monkeypatch):
    from awpo.integrations.verl import venv

    assert venv.REQUIREMENTS_FILE.exists() and "verl==0.9.1" in venv.REQUIREMENTS_FILE.read_text().splitlines()
    assert REPO / "pyproject.toml" in venv.RECIPE.hashed_files
    monkeypatch.setenv(venv.VENV_ENV_VAR, str(tmp_path / "elsewhere"))
    assert venv.default_venv_dir() == (tmp_path / "elsewhere").resolve()
    assert not venv.is_ready(tmp_path / "elsewhere")
