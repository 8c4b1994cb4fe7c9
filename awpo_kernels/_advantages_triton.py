"""Triton kernel for `group_advantages` (SPEC.md section 2): one program per group.

Each program loads its group's G outcome and reasoning rewards into one masked block
(`BLOCK_G` = next power of two >= G), computes the group statistics, gate, difficulty weight,
tailored clip and the dynamic PPO clip bounds in registers, and writes the per-sequence outputs
and the per-group diagnostics. Nothing leaves the device: the clipped fraction is reduced from
the per-group counts in torch.

The option choices (estimator, gate, ...) are constexprs because they change the code path; every
numeric hyper-parameter is a runtime argument, so changing it never recompiles. The kernel computes
in the output dtype (float32, or float64 for float64 inputs) and uses only plain pointer arithmetic
and masks, so it runs on triton 3.6 and 3.9, on CUDA and under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .outputs import GroupAdvantages

ESTIMATOR_CODES = {"grpo": 0, "awpo": 1, "awpo_mixed": 2}
GATE_CODES = {"soft": 0, "hard": 1, "ratio": 2}
WEIGHT_CODES = {"linear": 0, "bernoulli": 1, "none": 2}


@triton.jit
def _centre(x, valid):
    """Deviations from the mean over the valid members, their count and sum of squares.

    The values are first shifted by one valid member (the largest), so a group of equal values has
    exactly zero deviations: a plain mean of seven 0.3's is not exactly 0.3 in floating point, and
    the tiny spread that leaves would turn "all outcomes equal" (gate 1, clip by clip_max) off.
    Returns (shift, mean - shift, deviations, count, sum of squared deviations).
    """
    count = tl.sum(valid.to(tl.int32), axis=0)
    shift = tl.max(tl.where(valid, x, float("-inf")), axis=0)
    shifted = tl.where(valid, x - shift, 0.0)
    offset = tl.sum(shifted, axis=0) / tl.maximum(count, 1).to(x.dtype)
    dev = tl.where(valid, shifted - offset, 0.0)
    return shift, offset, dev, count, tl.sum(dev * dev, axis=0)


@triton.jit
def _clamp01(x):
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def _group_advantages_kernel(
    outcome_ptr, reasoning_ptr,                       # [B] inputs (any float dtype)
    adv_ptr, eps_low_ptr, eps_high_ptr,               # [B] outputs
    gate_ptr, weight_ptr, outcome_std_ptr, reasoning_std_ptr, clipped_ptr,  # [P] outputs
    group_size, correction, eps, o_min, o_span, gate_threshold, reasoning_coef,
    clip_ratio, clip_max, clip_shrink, epsilon_low, epsilon_high,
    HAS_REASONING: tl.constexpr, ESTIMATOR: tl.constexpr, SCALE_BY_STD: tl.constexpr, GATE: tl.constexpr,
    WEIGHT: tl.constexpr, CLIP_SIGN: tl.constexpr, BLOCK_G: tl.constexpr,
):
    group = tl.program_id(0)
    member = tl.arange(0, BLOCK_G)
    in_group = member < group_size
    offsets = tl.cast(group, tl.int64) * group_size + member
    dtype = adv_ptr.dtype.element_ty
    o = tl.load(outcome_ptr + offsets, mask=in_group, other=0.0).to(dtype)
    if HAS_REASONING:
        s = tl.load(reasoning_ptr + offsets, mask=in_group, other=float("nan")).to(dtype)
        s_valid = in_group & (s == s)  # NaN = no score
    else:
        s = tl.zeros([BLOCK_G], dtype)
        s_valid = in_group & (member < 0)

    # Outcome statistics; A^o.
    o_shift, o_offset, o_dev, n, o_sumsq = _centre(o, in_group)
    sd_o = tl.sqrt(o_sumsq / (n - correction).to(dtype))
    if SCALE_BY_STD:
        adv_o = o_dev / (sd_o + eps)
    else:
        adv_o = o_dev

    # Reasoning statistics over the valid members; A^s = 0 unless at least 2 are valid.
    _, _, s_dev, n_s, s_sumsq = _centre(s, s_valid)
    enough = n_s >= 2
    sd_s = tl.where(enough, tl.sqrt(s_sumsq / tl.maximum(n_s - correction, 1).to(dtype)), 0.0)
    adv_s = tl.where(s_valid & enough, s_dev / (sd_s + eps), 0.0)

    # Variance-aware gate g and difficulty weight w.
    if GATE == 0:
        g = 1.0 - _clamp01(tl.sqrt(o_sumsq / n.to(dtype)) / (o_span * 0.5))
    elif GATE == 1:
        g = tl.where(o_sumsq / n.to(dtype) <= gate_threshold, 1.0, 0.0)
    else:
        g = sd_s / (sd_o + sd_s + eps)
    pass_rate = _clamp01((o_shift + o_offset - o_min) / o_span)
    if WEIGHT == 0:
        w = 1.0 - pass_rate
    elif WEIGHT == 1:
        w = 4.0 * pass_rate * (1.0 - pass_rate)
    else:
        w = pass_rate * 0.0 + 1.0
    g = g.to(dtype)
    w = w.to(dtype)

    clipped = in_group & (member < 0)
    if ESTIMATOR == 0:  # GRPO
        adv = adv_o
    elif ESTIMATOR == 1:  # AWPO: outcome advantage + gated, weighted, clipped reasoning term
        r = reasoning_coef * g * w * adv_s
        if CLIP_SIGN:
            bound = tl.where(sd_o > 0, clip_ratio * tl.abs(adv_o), clip_max)
            r_clipped = tl.maximum(tl.minimum(r, bound), -bound)
            clipped = in_group & (r_clipped != r)
            r = r_clipped
        adv = adv_o + r
    else:  # AWPO mixed at the reward level; a missing reasoning score falls back to the outcome
        m = (1.0 - g) * o + g * tl.where(s_valid, s, o)
        _, _, m_dev, _, m_sumsq = _centre(m, in_group)
        if SCALE_BY_STD:
            sd_m = tl.sqrt(m_sumsq / (n - correction).to(dtype))
            adv = w * (m_dev / (sd_m + eps))
        else:
            adv = w * m_dev

    if ESTIMATOR == 0:
        shrink = w * 0.0 + 1.0
    else:
        shrink = 1.0 / (1.0 + clip_shrink * g * w)
    tl.store(adv_ptr + offsets, adv.to(dtype), mask=in_group)
    tl.store(eps_low_ptr + offsets, (tl.zeros([BLOCK_G], dtype) + epsilon_low * shrink).to(dtype), mask=in_group)
    tl.store(eps_high_ptr + offsets, (tl.zeros([BLOCK_G], dtype) + epsilon_high * shrink).to(dtype), mask=in_group)
    tl.store(gate_ptr + group, g)
    tl.store(weight_ptr + group, w)
    tl.store(outcome_std_ptr + group, sd_o.to(dtype))
    tl.store(reasoning_std_ptr + group, sd_s.to(dtype))
    tl.store(clipped_ptr + group, tl.sum(clipped.to(tl.int32), axis=0))


def group_advantages_triton(
    outcome, reasoning, *, group_size, estimator, scale, unbiased, eps, outcome_range, gate, gate_threshold,
    weight, reasoning_coef, clip, clip_ratio, clip_max, clip_shrink, epsilon_low, epsilon_high, dtype,
) -> GroupAdvantages:
    """Launch one program per group. Inputs are validated by the caller; `dtype` is the output dtype."""
    outcome = outcome.contiguous()
    num_seqs = outcome.shape[0]
    num_groups = num_seqs // group_size
    device = outcome.device

    def per_seq():
        return torch.empty(num_seqs, dtype=dtype, device=device)

    def per_group():
        return torch.empty(num_groups, dtype=dtype, device=device)

    adv, eps_low, eps_high = per_seq(), per_seq(), per_seq()
    gate_out, weight_out, outcome_std, reasoning_std = per_group(), per_group(), per_group(), per_group()
    clipped = torch.empty(num_groups, dtype=torch.int32, device=device)
    o_min, o_max = float(outcome_range[0]), float(outcome_range[1])
    block = triton.next_power_of_2(group_size)
    _group_advantages_kernel[(num_groups,)](
        outcome, outcome if reasoning is None else reasoning.contiguous(),
        adv, eps_low, eps_high, gate_out, weight_out, outcome_std, reasoning_std, clipped,
        # Every number is a Python float: an int argument equal to 1 would be specialised (recompile).
        group_size, 1 if unbiased else 0, float(eps), o_min, o_max - o_min, float(gate_threshold),
        float(reasoning_coef), float(clip_ratio), float(clip_max), float(clip_shrink),
        float(epsilon_low), float(epsilon_high),
        HAS_REASONING=reasoning is not None, ESTIMATOR=ESTIMATOR_CODES[estimator], SCALE_BY_STD=scale == "group",
        GATE=GATE_CODES[gate], WEIGHT=WEIGHT_CODES[weight], CLIP_SIGN=clip == "sign", BLOCK_G=block,
        num_warps=1 if block <= 256 else 4,
    )
    return GroupAdvantages(
        advantages=adv, epsilon_low=eps_low, epsilon_high=eps_high, gate=gate_out, weight=weight_out,
        outcome_std=outcome_std, reasoning_std=reasoning_std,
        clipped_fraction=clipped.sum().to(dtype) / num_seqs,
    )
