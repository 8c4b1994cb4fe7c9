"""Result types of the public ops (plain dataclasses of tensors)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LogprobsOutput:
    """Result of `linear_logprobs`: per-token log-probs (fp32) and, when asked, entropies."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None


@dataclass
class GroupAdvantages:
    """Result of `group_advantages` (docs/SPEC.md section 2).

    Per sequence `[B]`: `advantages`, `epsilon_low`, `epsilon_high` (the dynamic PPO clip bounds).
    Per group `[P]`: `gate`, `weight`, `outcome_std`, `reasoning_std`. `clipped_fraction` is a 0-dim
    tensor: the share of the B reasoning terms that the tailored clip changed.
    """

    advantages: torch.Tensor
    epsilon_low: torch.Tensor
    epsilon_high: torch.Tensor
    gate: torch.Tensor
    weight: torch.Tensor
    outcome_std: torch.Tensor
    reasoning_std: torch.Tensor
    clipped_fraction: torch.Tensor


@dataclass
class PolicyLossOutput:
    """Result of `policy_loss` / `fused_linear_policy_loss` (docs/SPEC.md section 3).

    `loss` is a differentiable scalar, `logprobs` the detached per-token log-probs (shape of the
    targets / mask, 0 where masked), `metrics` a dict of detached 0-dim tensors.
    """

    loss: torch.Tensor
    logprobs: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
