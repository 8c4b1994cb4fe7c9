"""AWPO as a verl plugin: advantage estimators, a policy loss and a reward function for verl 0.9.1.

Importing this package registers what follows in *that process*. verl's TaskRunner and workers are Ray
actors, so every one of them must import it: verl does so through the ``verl.plugins`` entry point where
awpo is pip-installed, through ``VERL_USE_EXTERNAL_MODULES=awpo.integrations.verl``, or through
``actor_rollout_ref.model.external_lib=awpo.integrations.verl`` (``registration``, which also checks this at
start-up). It registers:

- advantage estimators ``awpo``, ``awpo_mixed``, ``awpo_reward_sum``, ``awpo_gdpo``
  (``algorithm.adv_estimator=awpo``; ``estimators``), which read each sample's ``outcome`` and
  ``reasoning`` scores from ``non_tensor_batch``;
- the shim that makes verl hand ``non_tensor_batch`` to them (``shim``; legacy and v1 trainers);
- policy loss ``awpo`` (``actor_rollout_ref.actor.policy_loss.loss_mode=awpo``; ``loss``).

``reward.compute_score`` is the matching reward function, ``data`` exports the built-in tasks as
verl's parquet, and ``venv`` builds ``.venv-verl``. verl is imported only when it is installed:
without it, importing this package registers nothing (and ``register()`` raises ImportError), so
``python -m awpo.integrations.verl.data`` and ``.venv`` run anywhere.
"""
from __future__ import annotations

import importlib.util
import logging

_logger = logging.getLogger(__name__)


def _log_load_error(exc: BaseException) -> None:
    """verl 0.9.1 catches a plugin's import error and logs it at DEBUG only: say it where it is seen."""
    _logger.warning("awpo.integrations.verl did not load, so AWPO's estimators and loss are not registered in this "
                    "process: %s: %s", type(exc).__name__, exc, exc_info=exc)


try:
    from .estimators import ESTIMATOR_NAMES, VERL_NAMES
    from .loss import LOSS_NAME
except Exception as _exc:
    _log_load_error(_exc)
    raise

__all__ = ["ESTIMATOR_NAMES", "LOSS_NAME", "VERL_NAMES", "register"]

_MARK = "__awpo_estimator__"


def register() -> None:
    """Register the estimators and the loss with verl and apply the shim (idempotent).

    ImportError without verl; ``shim.UnsupportedVerlVersion`` for a verl the shim does not know
    (the estimators and the loss are registered first, and say so if they are used).
    """
    try:
        from verl.trainer.ppo import core_algos
    except ImportError as exc:
        raise ImportError(f"awpo.integrations.verl needs verl (pip install 'verl==0.9.1', or the .venv-verl that "
                          f"`python -m awpo.integrations.verl.venv --ensure` builds): {exc}") from exc
    from . import estimators, loss, shim

    for name in ESTIMATOR_NAMES:
        present = core_algos.ADV_ESTIMATOR_REGISTRY.get(name)
        if present is not None and getattr(present, _MARK, None) != name:
            raise ValueError(f"verl already has an advantage estimator named {name!r} ({present!r}), not awpo's")
        if present is None:
            core_algos.register_adv_est(name)(estimators.make_estimator(name))
    present = core_algos.POLICY_LOSS_REGISTRY.get(LOSS_NAME)
    if present is not None and getattr(present, "__module__", None) != loss.__name__:
        raise ValueError(f"verl already has a policy loss named {LOSS_NAME!r} ({present!r}), not awpo's")
    core_algos.register_policy_loss(LOSS_NAME)(loss.awpo_policy_loss)
    shim.install(ESTIMATOR_NAMES, estimators.score_keys)


def verl_installed() -> bool:
    """True when a verl package is importable (a directory named verl without __init__.py is not one)."""
    spec = importlib.util.find_spec("verl")
    return spec is not None and spec.origin is not None


if verl_installed():
    try:
        from . import registration

        registration.check_at_import()  # PluginSetupError before verl's state changes
        register()
    except Exception as _exc:
        _log_load_error(_exc)
        raise
