"""Registration that reaches every verl process (issue #22, point 5), through verl 0.9.1's own loaders.

verl's TaskRunner and workers are Ray actors: each registers AWPO only if it imports awpo.integrations.verl, which
verl does through (1) the ``verl.plugins`` entry point of an installed awpo, (2) ``VERL_USE_EXTERNAL_MODULES``, or
(3) ``actor_rollout_ref.model.external_lib`` (``awpo.integrations.verl.registration``). Each test starts a fresh
interpreter, as a Ray worker starts one. "A checkout on PYTHONPATH" is built from this venv: its site-packages
without awpo's distribution (no entry point), ``python -S``, and the repository on ``PYTHONPATH``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from awpo.integrations.verl import registration, shim

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "verl"
FIX_WORDS = ("pip install awpo", "VERL_USE_EXTERNAL_MODULES=awpo.integrations.verl",
             "actor_rollout_ref.model.external_lib=awpo.integrations.verl")


@pytest.fixture(scope="module")
def checkout_only(tmp_path_factory) -> Path:
    """A site-packages view without the installed awpo (its dist-info, editable .pth and finder)."""
    site = Path(sysconfig.get_paths()["purelib"])
    view = tmp_path_factory.mktemp("site-without-awpo")
    for entry in site.iterdir():
        if entry.name.startswith(("awpo-", "__editable__.awpo", "__editable___awpo")):
            continue
        (view / entry.name).symlink_to(entry)
    return view


def run(code: str, *, site: Path | None = None, **env) -> subprocess.CompletedProcess:
    """A fresh interpreter in a scratch directory; with `site`, awpo only on PYTHONPATH (not installed)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("PYTHONPATH", "VERL_USE_EXTERNAL_MODULES", "VERL_USE_EXTERNAL_PLUGINS"):
        environment.pop(key, None)
    command = [sys.executable, "-W", "ignore"]
    if site is not None:
        command.append("-S")  # no site-packages but `site`: no awpo distribution, so no entry point
        environment["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    environment.update(env)
    prelude = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
    return subprocess.run(command + ["-c", prelude + code], capture_output=True, text=True,
                          env=environment, cwd=os.environ.get("TMPDIR", "/tmp"), timeout=600)


COMPOSE = textwrap.dedent(f"""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    def example(*overrides):
        with initialize_config_dir(config_dir={str(EXAMPLES)!r}, version_base=None):
            config = compose("awpo_tool_use", overrides=["data.train_files=/d/t.parquet", *overrides])
        OmegaConf.resolve(config)
        return config

    def without_routes(config):
        config = config.copy()
        with open_dict(config):
            del config.ray_kwargs.ray_init.runtime_env["env_vars"]
        return config
""")


def test_a_checkout_on_pythonpath_is_refused_at_start_up_and_each_route_registers(checkout_only):
    """awpo on PYTHONPATH only: `import verl` registers nothing (no entry point). Loading awpo's reward function,
    as verl's reward workers do at start-up, refuses a config without a route, naming the fixes; the example
    config's route passes; verl's external_lib import registers; verl's validate_config refuses a routeless config."""
    result = run(COMPOSE + textwrap.dedent("""
        import verl
        from verl.trainer.ppo import core_algos
        assert "awpo" not in core_algos.ADV_ESTIMATOR_REGISTRY and "awpo.integrations.verl" not in sys.modules
        from verl.trainer.ppo.reward import get_custom_reward_fn
        try:
            get_custom_reward_fn(without_routes(example()))
        except Exception as exc:
            print("REFUSED:", type(exc).__name__, exc)
        assert "awpo" not in core_algos.ADV_ESTIMATOR_REGISTRY  # refused before registering anything
        get_custom_reward_fn(example())  # the example's runtime_env route: accepted
        print("ACCEPTED")
        from verl.utils.import_utils import import_external_libs
        import_external_libs(example("actor_rollout_ref.model.external_lib=awpo.integrations.verl")
                             .actor_rollout_ref.model.external_lib)  # what HFModelConfig does in each worker
        assert "awpo" in core_algos.ADV_ESTIMATOR_REGISTRY
        from verl.trainer.ppo.utils import need_critic, need_reference_policy
        from verl.utils.config import validate_config
        bare = without_routes(example())
        try:
            validate_config(bare, use_reference_policy=need_reference_policy(bare), use_critic=need_critic(bare))
        except Exception as exc:
            print("VALIDATE:", type(exc).__name__, exc)
        for routed in (example(), example("actor_rollout_ref.model.external_lib=awpo.integrations.verl")):
            validate_config(routed, use_reference_policy=False, use_critic=False)
        print("VALID")
        """), site=checkout_only)
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    refused = out.split("REFUSED:")[1].split("ACCEPTED")[0]
    assert refused.startswith(" PluginSetupError this config uses AWPO")
    assert "'Unknown advantage estimator'" in refused and all(word in refused for word in FIX_WORDS)
    assert "ACCEPTED" in out and "VALID" in out.split("VALIDATE:")[1]
    assert out.split("VALIDATE:")[1].startswith(" PluginSetupError this config uses AWPO")
    # the refusal is also logged as a warning (verl logs a plugin's import errors at DEBUG only)
    assert "WARNING" in result.stderr and "awpo.integrations.verl did not load" in result.stderr


def test_verl_use_external_modules_registers_a_checkout_through_verls_own_import(checkout_only):
    result = run(textwrap.dedent("""
        import verl
        from verl.trainer.ppo import core_algos, ray_trainer
        from awpo.integrations.verl import ESTIMATOR_NAMES, shim
        assert all(name in core_algos.ADV_ESTIMATOR_REGISTRY for name in ESTIMATOR_NAMES)
        core_algos.get_policy_loss_fn("awpo")
        assert shim.is_patched(ray_trainer.compute_advantage)
        print("ok")
        """), site=checkout_only, VERL_USE_EXTERNAL_MODULES="awpo.integrations.verl")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    assert "did not load" not in result.stderr and "registered only" not in result.stderr


def test_importing_a_checkout_in_the_launching_process_warns_that_ray_actors_will_not_see_it(checkout_only):
    result = run(textwrap.dedent("""
        import awpo.integrations.verl  # what the old docs advised
        from verl.trainer.ppo import core_algos
        assert "awpo" in core_algos.ADV_ESTIMATOR_REGISTRY  # here only
        print("ok")
        """), site=checkout_only)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    # logged at WARNING (before verl configures logging, Python's last-resort handler prints the bare message)
    assert "awpo.integrations.verl is registered only in a process that imports it" in result.stderr
    assert all(word in result.stderr for word in FIX_WORDS)


def test_a_plugin_load_error_under_verls_entry_point_loading_is_a_warning(tmp_path):
    """Installed awpo, loaded by verl's entry-point loop, whose register() fails (a foreign 'awpo_mixed' estimator,
    registered first through VERL_USE_EXTERNAL_MODULES): verl swallows the error (DEBUG); awpo logs a WARNING."""
    (tmp_path / "foreign_estimators.py").write_text(
        "from verl.trainer.ppo import core_algos\n"
        "core_algos.register_adv_est('awpo_mixed')(lambda **kwargs: None)\n")
    result = run(textwrap.dedent("""
        import verl
        print("awpo.integrations.verl" in sys.modules)
        """), PYTHONPATH=str(tmp_path), VERL_USE_EXTERNAL_MODULES="foreign_estimators")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False"  # verl caught the failed import
    assert "WARNING" in result.stderr and "awpo.integrations.verl did not load" in result.stderr
    assert "ValueError: verl already has an advantage estimator named 'awpo_mixed'" in result.stderr


def test_routes_and_the_check_read_the_config_and_the_environment(monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.delenv("VERL_USE_EXTERNAL_MODULES", raising=False)
    monkeypatch.delenv("VERL_USE_EXTERNAL_PLUGINS", raising=False)
    assert registration.entry_point_names() == ["awpo"] and registration.entry_point_loads()  # installed here
    monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", "none")
    assert not registration.entry_point_loads() and registration.routes() == []
    monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", "other,awpo")
    assert registration.entry_point_loads()
    monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", "none")
    config = OmegaConf.create({"algorithm": {"adv_estimator": "awpo"},
                               "actor_rollout_ref": {"actor": {"policy_loss": {"loss_mode": "vanilla"}},
                                                     "model": {"external_lib": None}}})
    with pytest.raises(registration.PluginSetupError, match="this config uses AWPO"):
        registration.check(config)
    config.actor_rollout_ref.model.external_lib = "some.lib,awpo.integrations.verl"
    registration.check(config)
    config.actor_rollout_ref.model.external_lib = None
    monkeypatch.setenv("VERL_USE_EXTERNAL_MODULES", "awpo.integrations.verl")
    registration.check(config)
    monkeypatch.delenv("VERL_USE_EXTERNAL_MODULES")
    config.algorithm.adv_estimator = "grpo"
    registration.check(config)  # AWPO not used: nothing to register
    config.actor_rollout_ref.actor.policy_loss.loss_mode = "awpo"
    with pytest.raises(registration.PluginSetupError):
        registration.check(config)
    assert shim.is_patched(__import__("verl.utils.config", fromlist=["x"]).validate_config)
