"""Whether AWPO's registration reaches every verl process, checked at start-up.

verl runs the advantage estimator in its TaskRunner and the policy loss in its actor workers: Ray actors, other
processes than the one that launched training. Each registers AWPO only if it imports this package, and only
three things make it do so:

1. the ``verl.plugins`` entry point, which verl loads on ``import verl`` in every process whose environment has
   awpo *pip-installed* (the entry point is package metadata: a checkout on ``PYTHONPATH`` or in a Ray
   ``working_dir`` has none);
2. ``VERL_USE_EXTERNAL_MODULES=awpo.integrations.verl`` in every process's environment (verl imports the listed
   modules on ``import verl``): for Ray workers, in ``ray_kwargs.ray_init.runtime_env.env_vars``;
3. ``actor_rollout_ref.model.external_lib=awpo.integrations.verl``: verl imports it wherever it builds the model
   config, i.e. in the TaskRunner at trainer start-up and in every actor / rollout worker at ``init_model``.

Importing the package in the launching process reaches none of them. Without a route, training used to fail only
after the first rollout (verl: "Unknown advantage estimator simply: awpo"). The checks here run where this package
gets imported without one: verl's ``validate_config`` in the launching process (patched by the shim) and verl's
loading of awpo's reward function (``pkg://awpo.integrations.verl.reward``) in the reward workers at start-up both
raise ``PluginSetupError`` naming the fixes; any other import without a route logs a warning.
"""
from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import entry_points

MODULE = "awpo.integrations.verl"
ENTRY_POINT_GROUP = "verl.plugins"
# verl 0.9.1 functions that import this package (awpo's reward function, by path) with the training config in their
# frame (`config`)
_CONFIG_FRAMES = {("verl.trainer.ppo.reward", "get_custom_reward_fn"),
                  ("verl.trainer.ppo.reward", "load_reward_manager")}
# verl's own importer of VERL_USE_EXTERNAL_MODULES and external_lib: imported through it, a route is in use
_VERL_IMPORTER = ("verl.utils.import_utils", "import_external_libs")

logger = logging.getLogger(MODULE)

FIXES = (
    "Register it in every verl process with one of: "
    "(1) pip install awpo into the environment of every node (e.g. `pip install --no-deps -e <checkout>`): verl "
    "loads its verl.plugins entry point on `import verl`; "
    f"(2) +ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES={MODULE} (examples/verl/"
    "awpo_tool_use.yaml sets it): verl imports it in every Ray worker, where awpo must be importable (installed, "
    "PYTHONPATH in the same env_vars, or runtime_env working_dir / py_modules); "
    f"(3) actor_rollout_ref.model.external_lib={MODULE}: verl imports it in the TaskRunner and in every actor and "
    "rollout worker at start-up. Importing awpo.integrations.verl in the launching process reaches none of verl's "
    "Ray actors.")


class PluginSetupError(RuntimeError):
    """AWPO is configured but its registration would not reach verl's Ray workers."""


def entry_point_names() -> list[str]:
    """Names of the ``verl.plugins`` entry points, visible in this environment, that load this package."""
    return [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.split(":")[0].strip() == MODULE]


def entry_point_loads() -> bool:
    """True when ``import verl`` in this environment loads the package (as verl 0.9.1 reads
    ``VERL_USE_EXTERNAL_PLUGINS``: ``auto``, ``none`` or a comma-separated list of entry-point names)."""
    names = entry_point_names()
    policy = os.environ.get("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    if not names or policy == "none":
        return False
    return policy == "auto" or bool(set(names) & {name.strip() for name in policy.split(",")})


def _lists_module(value) -> bool:
    if value is None:
        return False
    items = value.split(",") if isinstance(value, str) else list(value)
    return MODULE in {str(item).strip() for item in items}


def _select(config, dotted: str):
    node = config
    for key in dotted.split("."):
        getter = getattr(node, "get", None)
        if not callable(getter):
            return None
        node = getter(key, None)
        if node is None:
            return None
    return node


def routes(config=None) -> list[str]:
    """The routes by which verl's processes import the package (empty: only a process that imports it)."""
    found = []
    if entry_point_loads():
        found.append(f"the {ENTRY_POINT_GROUP} entry point of the installed awpo")
    if _lists_module(os.environ.get("VERL_USE_EXTERNAL_MODULES")):
        found.append("VERL_USE_EXTERNAL_MODULES in this process's environment")
    if config is not None:
        env_vars = _select(config, "ray_kwargs.ray_init.runtime_env.env_vars")
        if env_vars is not None and _lists_module(env_vars.get("VERL_USE_EXTERNAL_MODULES", None)):
            found.append("VERL_USE_EXTERNAL_MODULES in ray_kwargs.ray_init.runtime_env.env_vars")
        if _lists_module(_select(config, "actor_rollout_ref.model.external_lib")):
            found.append("actor_rollout_ref.model.external_lib")
    return found


def uses_awpo(config) -> bool:
    """Whether a verl training config names one of AWPO's estimators or its policy loss."""
    from .estimators import ESTIMATOR_NAMES
    from .loss import LOSS_NAME

    estimator = _select(config, "algorithm.adv_estimator")
    estimator = getattr(estimator, "value", estimator)  # verl's names may be enums
    return estimator in ESTIMATOR_NAMES or _select(config, "actor_rollout_ref.actor.policy_loss.loss_mode") == LOSS_NAME


def missing_route_message(config=None) -> str:
    what = "this config uses AWPO (algorithm.adv_estimator / policy_loss.loss_mode), but " if config is not None else ""
    return (f"{what}awpo.integrations.verl is registered only in a process that imports it: awpo is not pip-installed "
            f"here (no {ENTRY_POINT_GROUP} entry point), and neither VERL_USE_EXTERNAL_MODULES nor "
            "actor_rollout_ref.model.external_lib names it. verl's TaskRunner (the advantage estimator) and actor "
            "workers (the policy loss) are Ray actors: there AWPO would be unknown, and training would fail after the "
            f"first rollout ('Unknown advantage estimator'). {FIXES}")


def check(config) -> None:
    """Raise ``PluginSetupError`` when ``config`` uses AWPO and no route registers it in verl's workers."""
    if uses_awpo(config) and not routes(config):
        raise PluginSetupError(missing_route_message(config))


def _importing_frames():
    frame = sys._getframe(1)
    while frame is not None:
        yield frame.f_globals.get("__name__", ""), frame.f_code.co_name, frame
        frame = frame.f_back


def check_at_import() -> None:
    """The start-up check of an import of the package: none when verl's own importer (a route) does it; with the
    training config of the verl function importing it (reward loading, ``validate_config``), ``check``; else a
    warning when this environment has no route."""
    config = None
    for module, function, frame in _importing_frames():
        if (module, function) == _VERL_IMPORTER:
            return
        if config is None and (module, function) in _CONFIG_FRAMES:
            config = frame.f_locals.get("config")
    if config is not None:
        check(config)
    elif not routes():
        logger.warning(missing_route_message())
