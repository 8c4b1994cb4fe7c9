"""Scored rollouts -> AWPO advantages and the per-group diagnostics worth logging.

A thin layer over ``awpo_kernels.group_advantages`` (docs/SPEC.md section 2): the options are
``awpo_kernels.AdvantageOptions`` (allowed values, defaults and checks live there), extended here by
the one trainer-side choice, ``graded_outcome``; the result carries plain-float metrics.
(Not to be confused with ``awpo_kernels/advantages.py``, the op itself.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

import awpo_kernels
from awpo_kernels import group_advantages
from awpo_kernels.options import check_number


@dataclass(frozen=True)
class AdvantageOptions(awpo_kernels.AdvantageOptions):
    """``awpo_kernels.AdvantageOptions`` plus which outcome reward feeds them (``graded_outcome``).

    Stricter than the op for training: the PPO clip epsilons and the clip bounds must be > 0.
    """

    graded_outcome: bool = False  # score outcomes with partial credit (outcome_reward(graded=True))

    def __post_init__(self) -> None:
        for name in ("clip_ratio", "clip_max", "epsilon_low", "epsilon_high"):
            check_number(name, getattr(self, name), low_open=True)
        super().__post_init__()

    def kernel_options(self) -> awpo_kernels.AdvantageOptions:
        """The op's options alone (without graded_outcome)."""
        return awpo_kernels.AdvantageOptions(**self.kernel_kwargs())

    def kernel_kwargs(self) -> dict:
        """The op's options as keyword arguments of ``awpo_kernels.group_advantages``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(awpo_kernels.AdvantageOptions)}


@dataclass
class AdvantageBatch:
    advantages: torch.Tensor  # [B]
    epsilon_low: torch.Tensor  # [B], the per-sequence PPO clip bounds (dynamic when clip_shrink > 0)
    epsilon_high: torch.Tensor  # [B]
    metrics: dict[str, float]


def compute_advantages(
    outcome: Sequence[float] | torch.Tensor,
    reasoning: Sequence[float] | torch.Tensor | None,
    *,
    group_size: int,
    options: AdvantageOptions | None = None,
) -> AdvantageBatch:
    """Advantages for ``B = P * group_size`` rollouts laid out group by group.

    ``reasoning`` holds judge scores in [0, 1] with NaN for "no score"; None (or the GRPO estimator)
    means outcome only.
    """
    options = options or AdvantageOptions()
    outcome_t = _as_tensor(outcome, "outcome")
    reasoning_t = None if reasoning is None or options.estimator == "grpo" else _as_tensor(reasoning, "reasoning")
    if reasoning_t is not None and reasoning_t.shape != outcome_t.shape:
        raise ValueError(f"reasoning has {reasoning_t.numel()} scores but outcome has {outcome_t.numel()}")
    if not isinstance(group_size, int) or group_size < 2 or outcome_t.numel() % group_size:
        raise ValueError(f"group_size must be an int >= 2 dividing the batch size {outcome_t.numel()}, "
                         f"got {group_size!r}")
    kernel_options = options.kernel_options()
    result = group_advantages(outcome_t, reasoning_t, group_size=group_size, options=kernel_options)
    metrics = group_metrics(outcome_t, reasoning_t, result, group_size)
    if options.estimator == "grpo":
        metrics["adv/reasoning_share"] = 0.0
    else:
        grpo = group_advantages(outcome_t, None, group_size=group_size, estimator="grpo",
                                options=kernel_options).advantages
        metrics["adv/reasoning_share"] = reasoning_share(result.advantages, grpo)
    return AdvantageBatch(result.advantages, result.epsilon_low, result.epsilon_high, metrics)


def _as_tensor(values: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    tensor = values.detach() if isinstance(values, torch.Tensor) else torch.tensor(list(values), dtype=torch.float32)
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be one score per rollout (1-D), got shape {tuple(tensor.shape)}")
    return tensor.to(torch.float32) if not tensor.is_floating_point() else tensor


def reasoning_share(advantages: torch.Tensor, grpo_advantages: torch.Tensor) -> float:
    """How much of the advantage mass did not come from the outcome alone:
    sum|A - A_grpo| / (sum|A - A_grpo| + sum|A_grpo|), in [0, 1] (0: the GRPO advantages; 1: all of it
    came from the reasoning reward, e.g. every group's outcomes equal). For AWPO, A - A_grpo is the
    gated, weighted, clipped reasoning term; for reward_sum and gdpo it also holds the rescaling that
    mixing the rewards causes."""
    extra = (advantages.double() - grpo_advantages.double()).abs().sum()
    total = extra + grpo_advantages.double().abs().sum()
    return float(extra / total) if total > 0 else 0.0


def group_metrics(outcome: torch.Tensor, reasoning: torch.Tensor | None, result: awpo_kernels.GroupAdvantages,
                  group_size: int) -> dict[str, float]:
    """Plain floats for the metrics log (one value per batch, averaged over groups)."""
    groups = outcome.reshape(-1, group_size)
    flat_outcome = groups.max(dim=1).values == groups.min(dim=1).values
    advantages = result.advantages.reshape(-1, group_size)
    rescued = (advantages.abs().amax(dim=1) > 0) & flat_outcome
    metrics = {
        "reward/outcome_mean": outcome.float().mean().item(),
        "adv/mean_abs": result.advantages.abs().mean().item(),
        "adv/gate_mean": result.gate.float().mean().item(),
        "adv/weight_mean": result.weight.float().mean().item(),
        "adv/outcome_std_mean": result.outcome_std.float().mean().item(),
        "adv/reasoning_std_mean": result.reasoning_std.float().mean().item(),
        "adv/clipped_fraction": float(result.clipped_fraction),
        "adv/zero_outcome_variance_groups": flat_outcome.float().mean().item(),
        # groups that plain GRPO would skip (all outcomes equal) but AWPO still learns from
        "adv/rescued_groups": rescued.float().mean().item(),
    }
    if reasoning is not None:
        valid = ~torch.isnan(reasoning)
        metrics["reward/reasoning_valid_fraction"] = valid.float().mean().item()
        metrics["reward/reasoning_mean"] = reasoning[valid].float().mean().item() if valid.any() else float("nan")
    else:
        metrics["reward/reasoning_valid_fraction"] = 0.0
        metrics["reward/reasoning_mean"] = float("nan")
    return metrics
