"""Group-relative advantages with AWPO's variance-aware gate, difficulty weight and tailored clip.

SPEC.md section 2. Public op: `group_advantages`.
"""
from __future__ import annotations

import torch

from . import reference
from ._runtime import check_choice, check_finite, resolve_backend
from .outputs import GroupAdvantages

ESTIMATORS = ("grpo", "awpo", "awpo_mixed")


def group_advantages(
    outcome: torch.Tensor, reasoning: torch.Tensor | None = None, *, group_size: int, estimator: str = "awpo",
    scale: str = "group", unbiased: bool = True, eps: float = 1e-6, outcome_range=(0.0, 1.0), gate: str = "soft",
    gate_threshold: float = 0.0, weight: str = "linear", reasoning_coef: float = 1.0, clip: str = "sign",
    clip_ratio: float = 0.5, clip_max: float = 1.0, clip_shrink: float = 0.0, epsilon_low: float = 0.2,
    epsilon_high: float = 0.2, backend: str | None = None,
) -> GroupAdvantages:
    """Advantages for B = P * group_size completions laid out group-contiguous.

    `outcome [B]` must be finite; `reasoning [B]` may hold NaN (= no score). See SPEC.md section 2.
    """
    options = dict(group_size=group_size, estimator=estimator, scale=scale, unbiased=unbiased, eps=eps,
                   outcome_range=outcome_range, gate=gate, gate_threshold=gate_threshold, weight=weight,
                   reasoning_coef=reasoning_coef, clip=clip, clip_ratio=clip_ratio, clip_max=clip_max,
                   clip_shrink=clip_shrink, epsilon_low=epsilon_low, epsilon_high=epsilon_high)
    _check_inputs(outcome, reasoning, **options)
    resolve_backend(backend, outcome.device)
    return reference.group_advantages(outcome, reasoning, **options)


def _check_inputs(outcome, reasoning, *, group_size, estimator, scale, eps, outcome_range, gate, weight, clip,
                  clip_ratio, clip_max, clip_shrink, epsilon_low, epsilon_high, **_):
    if not isinstance(outcome, torch.Tensor) or outcome.dim() != 1 or not outcome.is_floating_point():
        raise ValueError("outcome must be a 1-D floating-point tensor [B]")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2; got {group_size!r}")
    if outcome.shape[0] % group_size != 0:
        raise ValueError(f"outcome has B={outcome.shape[0]} rewards, not a multiple of group_size={group_size}")
    if reasoning is not None:
        if not isinstance(reasoning, torch.Tensor) or tuple(reasoning.shape) != tuple(outcome.shape):
            raise ValueError(f"reasoning must be a tensor of outcome's shape {tuple(outcome.shape)}")
        if not reasoning.is_floating_point():
            raise ValueError("reasoning must be a floating-point tensor (NaN = no score)")
        check_finite("reasoning", reasoning, allow_nan=True)
    check_finite("outcome", outcome)
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("scale", scale, ("group", "none"))
    check_choice("gate", gate, ("soft", "hard", "ratio"))
    check_choice("weight", weight, ("linear", "bernoulli", "none"))
    check_choice("clip", clip, ("sign", "none"))
    lo, hi = outcome_range
    if not hi > lo:
        raise ValueError(f"outcome_range must be (min, max) with max > min; got {outcome_range!r}")
    for name, value in (("eps", eps), ("clip_ratio", clip_ratio), ("clip_max", clip_max),
                        ("clip_shrink", clip_shrink), ("epsilon_low", epsilon_low), ("epsilon_high", epsilon_high)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a float >= 0; got {value!r}")
