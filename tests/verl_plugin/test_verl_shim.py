"""The shim's version check and registration: installed awpo registers itself in any process that imports verl."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from awpo.integrations.verl import shim


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    """A fresh interpreter in a scratch directory: only the installed packages count."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    environment.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment, cwd=os.environ.get("TMPDIR", "/tmp"), timeout=600)


def test_unknown_verl_version_fails_with_a_clear_message():
    with pytest.raises(shim.UnsupportedVerlVersion) as error:
        shim.install(["awpo"], lambda config: ("outcome",), version="0.8.0")
    message = str(error.value)
    assert "does not know verl '0.8.0'" in message and "0.9.1" in message and "pip install 'verl==0.9.1'" in message
    assert shim.needs_shim("0.9.1") and shim.needs_shim("0.9.1+cu128")


def test_unknown_version_on_import_and_at_first_use():
    """A verl the shim does not know: importing the plugin raises the message; the estimators repeat it."""
    result = run_python("""
        import verl
        verl.__version__ = "0.10.0"  # as a newer verl would report itself
        try:
            import awpo.integrations.verl
        except Exception as exc:
            print(type(exc).__name__, exc)
        from verl.trainer.ppo import core_algos
        import torch
        try:
            core_algos.get_adv_estimator_fn("awpo")(token_level_rewards=torch.zeros(2, 3), response_mask=torch.ones(2, 3))
        except RuntimeError as exc:
            print("AT USE:", exc)
        """, VERL_USE_EXTERNAL_PLUGINS="none")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "UnsupportedVerlVersion awpo.integrations.verl does not know verl '0.10.0'" in result.stdout
    assert "AT USE: adv_estimator=awpo got no non_tensor_batch" in result.stdout
    assert "does not know verl '0.10.0'" in result.stdout.split("AT USE:")[1]


def test_importing_verl_loads_the_plugin_through_its_entry_point():
    result = run_python("""
        import sys
        import verl
        assert "awpo.integrations.verl" in sys.modules, "the verl.plugins entry point did not load"
        from verl.trainer.ppo import core_algos, ray_trainer
        from verl.trainer.ppo.v1 import trainer_base
        from awpo.integrations.verl import ESTIMATOR_NAMES, shim
        assert all(name in core_algos.ADV_ESTIMATOR_REGISTRY for name in ESTIMATOR_NAMES)
        core_algos.get_policy_loss_fn("awpo")
        assert shim.is_patched(ray_trainer.compute_advantage)
        assert shim.is_patched(trainer_base.PPOTrainer._compute_advantage)
        print("ok")
        """)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_register_is_idempotent_and_refuses_a_foreign_estimator(monkeypatch):
    from verl.trainer.ppo import core_algos, ray_trainer

    import awpo.integrations.verl as plugin

    before = dict(core_algos.ADV_ESTIMATOR_REGISTRY)
    wrapped = ray_trainer.compute_advantage
    plugin.register()
    assert core_algos.ADV_ESTIMATOR_REGISTRY == before and ray_trainer.compute_advantage is wrapped
    monkeypatch.setitem(core_algos.ADV_ESTIMATOR_REGISTRY, "awpo_mixed", lambda **kwargs: None)
    with pytest.raises(ValueError, match="already has an advantage estimator named 'awpo_mixed'"):
        plugin.register()
