"""Group-relative advantages with AWPO's variance-aware gate, difficulty weight and tailored clip.

SPEC.md section 2. Public op: `group_advantages`. Backends: `triton` (CUDA default; on CPU only under
TRITON_INTERPRET=1) runs one program per group (`_advantages_triton.py`); `torch` (CPU default) is the
same algorithm vectorised over groups [P, G] (and the path of float64 inputs on every backend: compiled
Triton rounds Python-float hyper-parameters to fp32); `reference` runs `reference.py`. Neither fast path
synchronises with the host; the value checks do (finite values, outcomes within outcome_range), see
`_runtime.values_checked`.

Both fast paths centre each group on one of its members before averaging, so a group of equal values
has exactly zero deviations (a plain floating-point mean of 0.1, 0.1, 0.1 is not exactly 0.1, which
would leave a 1e-17 spread that switches off "all outcomes equal": hard gate 1, clip by clip_max).
The gdpo estimator's whitening over the batch centres on a member the same way (`_whiten_batch`).
"""
from __future__ import annotations

import math

import torch

from . import reference
from ._runtime import check_choice, check_finite, resolve_backend, values_checked
from .outputs import GroupAdvantages

ESTIMATORS = ("grpo", "awpo", "awpo_mixed", "reward_sum", "gdpo")
SCALES = ("group", "none")
GATES = ("soft", "hard", "ratio", "none")
WEIGHTS = ("linear", "bernoulli", "none")
CLIPS = ("sign", "none")


def group_advantages(
    outcome: torch.Tensor, reasoning: torch.Tensor | None = None, *, group_size: int, estimator: str = "awpo",
    scale: str = "group", unbiased: bool = True, eps: float = 1e-6, outcome_range=(0.0, 1.0), gate: str = "soft",
    gate_threshold: float = 0.0, weight: str = "linear", reasoning_coef: float = 1.0, clip: str = "sign",
    clip_ratio: float = 0.5, clip_max: float = 1.0, clip_shrink: float = 0.0, epsilon_low: float = 0.2,
    epsilon_high: float = 0.2, backend: str | None = None,
) -> GroupAdvantages:
    """Advantages for B = P * group_size completions laid out group-contiguous.

    `outcome [B]` must be finite; `reasoning [B]` may hold NaN (= no score). See SPEC.md section 2.
    Outputs are float32, or float64 when an input is float64.

    Estimators: "awpo" (default: A^o + gated, weighted, sign-clipped reasoning term), "grpo" (A^o only);
    ablations "awpo_mixed" (mixing at the reward level), "reward_sum" (GRPO on o + reasoning_coef * s,
    a NaN score counting as 0; scale="none": x - mean) and "gdpo" (z = A^o + reasoning_coef * A^s, each
    normalised in its group as for awpo, then (z - mean(z)) / (std(z) + eps) over all B completions of
    this call, with the same `unbiased`, regardless of `scale`; all-equal z gives exactly 0). Without
    reasoning, reward_sum is grpo and gdpo is grpo whitened over the batch. Gates: "soft", "hard",
    "ratio", "none" (g = 1, an ablation). Every estimator but grpo shrinks the PPO clip epsilons by
    1 / (1 + clip_shrink * g * w) and reports gate and weight; only awpo clips (clipped_fraction is 0
    for the others).
    """
    options = dict(group_size=group_size, estimator=estimator, scale=scale, unbiased=unbiased, eps=eps,
                   outcome_range=outcome_range, gate=gate, gate_threshold=gate_threshold, weight=weight,
                   reasoning_coef=reasoning_coef, clip=clip, clip_ratio=clip_ratio, clip_max=clip_max,
                   clip_shrink=clip_shrink, epsilon_low=epsilon_low, epsilon_high=epsilon_high)
    _check_inputs(outcome, reasoning, **options)
    chosen = resolve_backend(backend, outcome.device)
    if chosen == "reference":
        return reference.group_advantages(outcome, reasoning, **options)
    dtype = reference.compute_dtype(outcome, reasoning)
    # Compiled Triton passes Python floats as fp32 scalars, so float64 hyper-parameters would be rounded:
    # float64 inputs (tests, debugging) run the torch path on every backend, as the LM-head ops do.
    if chosen == "triton" and outcome.numel() > 0 and dtype != torch.float64:  # an empty grid is not a launch
        from ._advantages_triton import group_advantages_triton  # imported late: TRITON_INTERPRET is read then
        return group_advantages_triton(outcome, reasoning, dtype=dtype, **options)
    return _group_advantages_torch(outcome, reasoning, dtype=dtype, **options)


# ----------------------------------------------------------------------------- torch path

def _centre(x: torch.Tensor, valid: torch.Tensor):
    """Per row [P, G]: (mean, deviations from it (0 where not valid), count of valid members).

    Shifted by the largest valid member first, so equal members give exactly zero deviations.
    A row without valid members has mean -inf and zero deviations.
    """
    count = valid.sum(dim=1, keepdim=True)
    shift = torch.where(valid, x, -math.inf).amax(dim=1, keepdim=True)
    shifted = torch.where(valid, x - shift, 0.0)
    offset = shifted.sum(dim=1, keepdim=True) / count.clamp(min=1)
    return shift + offset, torch.where(valid, shifted - offset, 0.0), count


def _std(dev: torch.Tensor, count: torch.Tensor, correction: int) -> torch.Tensor:
    return ((dev * dev).sum(dim=1, keepdim=True) / (count - correction).clamp(min=1)).sqrt()


def _whiten_batch(z: torch.Tensor, correction: int, eps: float) -> torch.Tensor:
    """(z - mean(z)) / (std(z) + eps) over all elements of z (gdpo's whitening across groups), on the
    device without a host sync; centred on a member (`_centre`), so equal values give exactly 0. Also
    used by the Triton path on the kernel's z."""
    if z.numel() == 0:  # a shape test, not a sync
        return z
    flat = z.reshape(1, -1)
    everyone = torch.ones_like(flat, dtype=torch.bool)
    _, dev, count = _centre(flat, everyone)
    return (dev / (_std(dev, count, correction) + eps)).reshape(z.shape)


def _group_advantages_torch(
    outcome, reasoning, *, group_size, estimator, scale, unbiased, eps, outcome_range, gate, gate_threshold, weight,
    reasoning_coef, clip, clip_ratio, clip_max, clip_shrink, epsilon_low, epsilon_high, dtype,
) -> GroupAdvantages:
    o = outcome.to(dtype).reshape(-1, group_size)
    everyone = torch.ones_like(o, dtype=torch.bool)
    s = None if reasoning is None else reasoning.to(dtype).reshape(-1, group_size)
    s_valid = ~everyone if s is None else ~torch.isnan(s)
    correction = 1 if unbiased else 0
    o_min, o_max = float(outcome_range[0]), float(outcome_range[1])

    mu_o, o_dev, n = _centre(o, everyone)
    sd_o = _std(o_dev, n, correction)
    adv_o = o_dev / (sd_o + eps) if scale == "group" else o_dev

    adv_s = torch.zeros_like(o)
    sd_s = torch.zeros_like(sd_o)
    if s is not None:
        _, s_dev, n_s = _centre(s, s_valid)
        enough = n_s >= 2
        sd_s = torch.where(enough, _std(s_dev, n_s, correction), 0.0)
        adv_s = torch.where(s_valid & enough, s_dev / (sd_s + eps), 0.0)

    if gate == "soft":
        g = 1.0 - (_std(o_dev, n, 0) / ((o_max - o_min) / 2.0)).clamp(0.0, 1.0)
    elif gate == "hard":
        g = ((o_dev * o_dev).sum(dim=1, keepdim=True) / n <= gate_threshold).to(dtype)
    elif gate == "ratio":
        g = sd_s / (sd_o + sd_s + eps)
    else:  # "none": the gate ablated
        g = torch.ones_like(sd_o)
    pass_rate = ((mu_o - o_min) / (o_max - o_min)).clamp(0.0, 1.0)
    if weight == "linear":
        w = 1.0 - pass_rate
    elif weight == "bernoulli":
        w = 4.0 * pass_rate * (1.0 - pass_rate)
    else:
        w = torch.ones_like(pass_rate)

    clipped = torch.zeros_like(s_valid)
    if estimator == "grpo":
        adv = adv_o
    elif estimator == "awpo":
        r = reasoning_coef * g * w * adv_s
        if clip == "sign":
            bound = torch.where(sd_o > 0, clip_ratio * adv_o.abs(), clip_max)
            r_clipped = torch.maximum(torch.minimum(r, bound), -bound)
            clipped = r_clipped != r
            r = r_clipped
        adv = adv_o + r
    elif estimator == "awpo_mixed":  # mixing at the reward level; a missing reasoning score falls back to o
        m = (1.0 - g) * o + g * (o if s is None else torch.where(s_valid, s, o))
        _, m_dev, _ = _centre(m, everyone)
        adv = w * (m_dev / (_std(m_dev, n, correction) + eps) if scale == "group" else m_dev)
    elif estimator == "reward_sum":  # GRPO on x = o + coef * s (NaN s counts as 0); no reasoning: x = o
        if s is None:
            adv = adv_o
        else:
            _, x_dev, _ = _centre(o + reasoning_coef * torch.where(s_valid, s, 0.0), everyone)
            adv = x_dev / (_std(x_dev, n, correction) + eps) if scale == "group" else x_dev
    else:  # gdpo: both rewards normalised in their groups, summed, whitened over the whole batch
        adv = _whiten_batch(adv_o + reasoning_coef * adv_s, correction, eps)

    shrink = torch.ones_like(g) if estimator == "grpo" else 1.0 / (1.0 + clip_shrink * g * w)
    per_seq_shrink = shrink.expand_as(o).reshape(-1)
    return GroupAdvantages(
        advantages=adv.reshape(-1),
        epsilon_low=epsilon_low * per_seq_shrink,
        epsilon_high=epsilon_high * per_seq_shrink,
        gate=g.reshape(-1),
        weight=w.reshape(-1),
        outcome_std=sd_o.reshape(-1),
        reasoning_std=sd_s.reshape(-1),
        clipped_fraction=clipped.to(dtype).mean(),
    )


# ----------------------------------------------------------------------------- checks

def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_inputs(outcome, reasoning, *, group_size, estimator, scale, unbiased, eps, outcome_range, gate,
                  gate_threshold, weight, reasoning_coef, clip, clip_ratio, clip_max, clip_shrink, epsilon_low,
                  epsilon_high):
    if not isinstance(outcome, torch.Tensor) or outcome.dim() != 1 or not outcome.is_floating_point():
        raise ValueError("outcome must be a 1-D floating-point tensor [B]")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2; got {group_size!r}")
    if outcome.shape[0] % group_size != 0:
        raise ValueError(f"outcome has B={outcome.shape[0]} rewards, not a multiple of group_size={group_size}")
    if reasoning is not None:
        if not isinstance(reasoning, torch.Tensor) or tuple(reasoning.shape) != tuple(outcome.shape):
            shape = tuple(reasoning.shape) if isinstance(reasoning, torch.Tensor) else type(reasoning).__name__
            raise ValueError(f"reasoning must be a tensor of outcome's shape {tuple(outcome.shape)}; got {shape}")
        if not reasoning.is_floating_point():
            raise ValueError("reasoning must be a floating-point tensor (NaN = no score)")
        if reasoning.device != outcome.device:
            raise ValueError(f"reasoning is on {reasoning.device} but outcome is on {outcome.device}")
        check_finite("reasoning", reasoning, allow_nan=True)
    check_finite("outcome", outcome)
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("scale", scale, SCALES)
    check_choice("gate", gate, GATES)
    check_choice("weight", weight, WEIGHTS)
    check_choice("clip", clip, CLIPS)
    if not isinstance(unbiased, bool):
        raise ValueError(f"unbiased must be a bool; got {unbiased!r}")
    if (not isinstance(outcome_range, (tuple, list)) or len(outcome_range) != 2
            or not all(_is_number(v) for v in outcome_range) or not outcome_range[1] > outcome_range[0]):
        raise ValueError(f"outcome_range must be (min, max), finite numbers with max > min; got {outcome_range!r}")
    # eps > 0: with eps = 0 a group of equal outcomes would divide 0 by 0.
    if not _is_number(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite float > 0; got {eps!r}")
    for name, value in (("gate_threshold", gate_threshold), ("reasoning_coef", reasoning_coef),
                        ("clip_ratio", clip_ratio), ("clip_max", clip_max), ("clip_shrink", clip_shrink),
                        ("epsilon_low", epsilon_low), ("epsilon_high", epsilon_high)):
        if not _is_number(value) or value < 0:
            raise ValueError(f"{name} must be a finite float >= 0; got {value!r}")
    _check_outcome_range(outcome, outcome_range)


def _check_outcome_range(outcome: torch.Tensor, outcome_range) -> None:
    """Rewards outside outcome_range would be clamped in the pass rate, silently skewing gate and weight."""
    if not values_checked() or outcome.numel() == 0:
        return
    low, high = torch.aminmax(outcome.detach())
    low, high = float(low), float(high)  # the value checks sync by design
    if low < outcome_range[0] or high > outcome_range[1]:
        raise ValueError(f"outcome values span [{low:g}, {high:g}], outside outcome_range={tuple(outcome_range)}; "
                         "pass the range your rewards live in")
