"""AWPO's group estimators as verl advantage estimators (``algorithm.adv_estimator=awpo``).

Each reads every sample's outcome and reasoning score from ``non_tensor_batch`` (where verl puts the
keys of a reward function's dict; ``awpo.integrations.verl.reward.compute_score`` returns
``outcome`` and ``reasoning``), groups the rows by ``uid`` in whatever order they come, calls
``awpo_kernels.group_advantages`` and returns verl's ``(advantages, returns)``: the sequence's
advantage on each of its response tokens, ``[B, T]``, both the same (outcome-only, as verl's grpo).

Names: one estimator per ``awpo_kernels.advantages.ESTIMATORS`` entry but ``grpo`` (verl has its own),
all in one namespace: ``awpo`` and ``awpo_mixed`` as they are, the baselines prefixed,
``awpo_reward_sum`` and ``awpo_gdpo``. verl ships a ``gdpo`` of its own (per-key group normalisation,
then whitening over tokens), which is not SPEC's (whitening over completions); the prefix keeps the two
apart, and any estimator awpo_kernels adds later is registered the same way.

Options (``algorithm.awpo.<key>=...``; a leading ``+`` only for a key the config does not declare yet;
defaults as ``group_advantages``): ``outcome_key``
(``outcome``), ``reasoning_key`` (``reasoning``; null: no reasoning scores), ``scale`` (``group``, or
``none`` when ``algorithm.norm_adv_by_std_in_grpo=false``), ``unbiased``, ``eps``, ``outcome_range``,
``gate``, ``gate_threshold``, ``weight``, ``reasoning_coef``, ``clip``, ``clip_ratio``, ``clip_max``: every
``awpo_kernels.AdvantageOptions`` option (``KERNEL_OPTIONS``, derived from the registry) but those refused
(``NOT_FROM_VERL_CONFIG``): ``clip_shrink`` has no channel to verl's loss (its clip ratios come from the
actor config), ``epsilon_low`` / ``epsilon_high`` are those clip ratios and ``estimator`` is the
``adv_estimator`` name. Groups may differ in size (rows are grouped per size), except for ``awpo_gdpo``, whose
whitening spans the whole batch; a group of one completion is an error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from awpo_kernels import AdvantageOptions, group_advantages
from awpo_kernels.advantages import ESTIMATORS

from . import registration, shim

# The `AdvantageOptions` that ``algorithm.awpo`` does not take, and why; every other one it passes to
# `group_advantages` as it is (KERNEL_OPTIONS: an option awpo_kernels adds is taken without a change here).
NOT_FROM_VERL_CONFIG = {
    "estimator": "the estimator is the one algorithm.adv_estimator names (awpo, awpo_mixed, ...)",
    "clip_shrink": "the per-sequence clip bounds would have to reach verl's policy loss, whose clip ratios come from "
                   "the actor config",
    "epsilon_low": "the PPO clip is verl's actor_rollout_ref.actor.clip_ratio_low",
    "epsilon_high": "the PPO clip is verl's actor_rollout_ref.actor.clip_ratio_high",
}
KERNEL_OPTIONS = tuple(name for name in AdvantageOptions.names() if name not in NOT_FROM_VERL_CONFIG)
KEY_OPTIONS = ("outcome_key", "reasoning_key")


def verl_name(estimator: str) -> str:
    """The verl name of an awpo_kernels estimator: ``awpo*`` as is, the others with an ``awpo_`` prefix."""
    return estimator if estimator.startswith("awpo") else f"awpo_{estimator}"


VERL_NAMES = {verl_name(name): name for name in ESTIMATORS if name != "grpo"}  # verl name -> awpo_kernels name
ESTIMATOR_NAMES = tuple(VERL_NAMES)


@dataclass
class EstimatorOptions:
    """What an AWPO estimator reads from verl's ``algorithm`` config."""

    outcome_key: str = "outcome"
    reasoning_key: str | None = "reasoning"
    kernel: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config) -> EstimatorOptions:
        """From ``algorithm.awpo`` (a dict-like, optional) and ``algorithm.norm_adv_by_std_in_grpo``."""
        raw = _plain(_get(config, "awpo")) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"algorithm.awpo must be a mapping of options; got {type(raw).__name__}")
        for key, reason in NOT_FROM_VERL_CONFIG.items():
            if key in raw:
                raise ValueError(f"algorithm.awpo.{key} is not supported under verl: {reason}")
        unknown = sorted(set(raw) - set(KERNEL_OPTIONS) - set(KEY_OPTIONS))
        if unknown:
            raise ValueError(f"algorithm.awpo: unknown option(s) {unknown}; "
                             f"known: {list(KEY_OPTIONS + KERNEL_OPTIONS)}")
        kernel = {key: raw[key] for key in KERNEL_OPTIONS if key in raw}
        if "outcome_range" in kernel:
            kernel["outcome_range"] = tuple(kernel["outcome_range"])
        if "scale" not in kernel and _get(config, "norm_adv_by_std_in_grpo") is False:
            kernel["scale"] = "none"
        options = cls(outcome_key=raw.get("outcome_key", "outcome"),
                      reasoning_key=raw.get("reasoning_key", "reasoning"), kernel=kernel)
        for name in KEY_OPTIONS:
            value = getattr(options, name)
            if not (isinstance(value, str) and value) and not (name == "reasoning_key" and value is None):
                raise ValueError(f"algorithm.awpo.{name} must be a non-empty string; got {value!r}")
        return options

    def score_keys(self) -> tuple[str, ...]:
        return (self.outcome_key,) + ((self.reasoning_key,) if self.reasoning_key else ())


def score_keys(config) -> tuple[str, ...]:
    """The non_tensor_batch keys the estimators read under this ``algorithm`` config."""
    return EstimatorOptions.from_config(config).score_keys()


def _get(config, key):
    if config is None:
        return None
    if isinstance(config, dict):
        return config.get(key)
    getter = getattr(config, "get", None)
    return getter(key, None) if callable(getter) else getattr(config, key, None)


def _plain(value):
    """An OmegaConf node as plain Python containers (other values as they are)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # verl always has omegaconf; plain dicts need nothing
        return value
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


# ----------------------------------------------------------------------------- the estimator

def make_estimator(verl_estimator: str):
    """The verl advantage-estimator function for one of ``ESTIMATOR_NAMES``."""
    estimator = VERL_NAMES[verl_estimator]

    def estimate(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, config=None, index=None,
                 non_tensor_batch=None, **unused):
        return compute_advantages(estimator, token_level_rewards, response_mask, config=config, index=index,
                                  non_tensor_batch=non_tensor_batch, verl_estimator=verl_estimator)

    estimate.__name__ = estimate.__qualname__ = f"awpo_estimator_{estimator}"
    estimate.__doc__ = (f"AWPO's '{estimator}' group advantages (awpo_kernels.group_advantages), "
                        f"as verl's '{verl_estimator}'.")
    estimate.__awpo_estimator__ = verl_estimator
    return estimate


def compute_advantages(estimator: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, *, config=None,
                       index=None, non_tensor_batch=None, verl_estimator: str | None = None):
    """verl's ``(advantages, returns)``, each ``[B, T]``: the row's group advantage on its response tokens."""
    name = verl_estimator or verl_name(estimator)
    if non_tensor_batch is None:
        non_tensor_batch = shim.current_non_tensor_batch()
    rows = token_level_rewards.shape[0]
    if non_tensor_batch is None:
        raise RuntimeError(_no_data_message(name))
    options = EstimatorOptions.from_config(config)
    device = token_level_rewards.device
    outcome = score_column(non_tensor_batch, options.outcome_key, rows, allow_nan=False).to(device)
    reasoning = None
    if options.reasoning_key:
        reasoning = score_column(non_tensor_batch, options.reasoning_key, rows, allow_nan=True).to(device)
    uids = index if index is not None else non_tensor_batch.get("uid")
    if uids is None:
        raise ValueError(f"adv_estimator={name}: the batch has no 'uid' (verl's prompt id), so no groups")
    advantages = grouped_advantages(outcome, reasoning, uids, estimator=estimator, **options.kernel)
    scores = advantages.to(token_level_rewards.dtype).unsqueeze(-1) * response_mask.to(token_level_rewards.dtype)
    return scores, scores


def grouped_advantages(outcome: torch.Tensor, reasoning: torch.Tensor | None, uids, *, estimator: str,
                       **kernel_options) -> torch.Tensor:
    """``group_advantages`` for rows grouped by ``uids`` in any order; the result is in row order."""
    groups = group_rows(uids)
    by_size: dict[int, list[np.ndarray]] = {}
    for members in groups:
        by_size.setdefault(len(members), []).append(members)
    if estimator == "gdpo" and len(by_size) > 1:
        raise ValueError(f"adv_estimator={verl_name(estimator)} whitens over the whole batch and needs groups of one "
                         f"size; this batch has groups of sizes {sorted(by_size)}")
    result = torch.empty_like(outcome)
    for size, members in by_size.items():
        order = torch.as_tensor(np.concatenate(members), device=outcome.device)
        picked = None if reasoning is None else reasoning[order]
        result[order] = group_advantages(outcome[order], picked, group_size=size, estimator=estimator,
                                         **kernel_options).advantages.to(result.dtype)
    return result


def group_rows(uids) -> list[np.ndarray]:
    """Row indices of each group, groups in order of first appearance, rows in batch order."""
    uids = list(np.asarray(uids, dtype=object).reshape(-1))
    groups: dict[Any, list[int]] = {}
    for row, uid in enumerate(uids):
        groups.setdefault(uid, []).append(row)
    lonely = [uid for uid, rows in groups.items() if len(rows) < 2]
    if lonely:
        raise ValueError(f"uid {lonely[0]!r} has a single completion ({len(lonely)} such group(s)); group advantages "
                         "need >= 2 per prompt (actor_rollout_ref.rollout.n >= 2)")
    return [np.asarray(rows, dtype=np.int64) for rows in groups.values()]


def score_column(non_tensor_batch, key: str, rows: int, *, allow_nan: bool) -> torch.Tensor:
    """One score per row from ``non_tensor_batch[key]`` as float32 (None -> NaN where allowed)."""
    if key not in non_tensor_batch:
        raise KeyError(f"non_tensor_batch has no '{key}' scores (keys: {sorted(non_tensor_batch)}); "
                       f"the reward function must return a dict with '{key}' "
                       "(awpo.integrations.verl.reward.compute_score does), or set "
                       "algorithm.awpo.outcome_key / reasoning_key to the keys it returns")
    values = list(np.asarray(non_tensor_batch[key], dtype=object).reshape(-1))
    if len(values) != rows:
        raise ValueError(f"non_tensor_batch['{key}'] has {len(values)} values for {rows} rows")
    return torch.tensor([_score(value, key, row, allow_nan) for row, value in enumerate(values)], dtype=torch.float32)


def _score(value, key: str, row: int, allow_nan: bool) -> float:
    if value is None and allow_nan:
        return math.nan
    if not isinstance(value, (int, float, np.integer, np.floating, np.bool_)):  # bool is an int
        raise ValueError(f"non_tensor_batch['{key}'][{row}] must be a number; got {value!r}")
    number = float(value)
    if math.isnan(number) and allow_nan:
        return number
    if not math.isfinite(number):
        raise ValueError(f"non_tensor_batch['{key}'][{row}] must be finite; got {value!r}")
    return number


def _no_data_message(name: str) -> str:
    message = (f"adv_estimator={name} got no non_tensor_batch (the per-sample outcome and reasoning scores): verl "
               "passes it only to its own 'gdpo' estimator, and awpo's shim, which hands it over, is not active in "
               "this process: verl's compute_advantage was not patched, or was called outside it. The shim is "
               "installed by importing awpo.integrations.verl, which must happen in every verl process. "
               f"{registration.FIXES}")
    try:
        shim.needs_shim(shim.installed_version())
    except Exception as exc:  # an unknown verl version is the likely reason: say so
        message += f" {exc}"
    return message
