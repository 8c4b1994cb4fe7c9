"""Triton kernel for `group_advantages` (docs/SPEC.md section 2): one program per group.

Each program loads its group's G outcome and reasoning rewards into one masked block
(`BLOCK_G` = next power of two >= G), computes the group statistics, gate, difficulty weight,
tailored clip and the dynamic PPO clip bounds in registers, and writes the per-sequence outputs
and the per-group diagnostics. Nothing leaves the device: the clipped fraction is reduced from
the per-group counts in torch. The "gdpo" estimator is the one that looks across groups: the kernel
writes each completion's z = A^o + reasoning_coef * A^s and the launcher whitens z over the whole
batch with a few torch reductions on the device (`reference._whiten_batch`; no host sync).

The option choices (estimator, gate, ...) are constexprs because they change the code path: the
kernel compares them against the named codes of `_kernel_codes` (one branch per code, an unknown code
fails at build time) and the launcher looks each option's value up in its explicit table there. Every
numeric hyper-parameter is a runtime argument, so changing it never recompiles. Compiled Triton passes
Python floats as fp32 scalars, so `group_advantages` sends float64 inputs to the torch path and this
kernel computes in float32 (the output dtype). It uses only plain pointer arithmetic and masks, so it
runs on triton 3.6 and 3.9, on CUDA and under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._kernel_codes import (
    CLIP_CODES,
    ESTIMATOR_AWPO,
    ESTIMATOR_AWPO_MIXED,
    ESTIMATOR_CODES,
    ESTIMATOR_GDPO,
    ESTIMATOR_GRPO,
    ESTIMATOR_REWARD_SUM,
    GATE_CODES,
    GATE_HARD,
    GATE_NONE,
    GATE_RATIO,
    GATE_SOFT,
    SCALE_CODES,
    WEIGHT_BERNOULLI,
    WEIGHT_CODES,
    WEIGHT_LINEAR,
    WEIGHT_NONE,
)
from .options import AdvantageOptions
from .outputs import GroupAdvantages
from .reference import _whiten_batch


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
    # Every group statistic centres on one member's value before averaging, so a group of equal
    # values has exactly zero deviations: a plain mean of seven 0.3's is not exactly 0.3 in floating
    # point, and the tiny spread it leaves would switch "all outcomes equal" (hard gate 1, clip by
    # clip_max) off. The helpers are written inline: each nested call and reduction is costly under
    # the interpreter, so the kernel keeps to the few reductions it needs.
    group = tl.program_id(0)
    member = tl.arange(0, BLOCK_G)
    in_group = member < group_size
    first = tl.cast(group, tl.int64) * group_size
    offsets = first + member
    dtype = adv_ptr.dtype.element_ty
    n = tl.cast(group_size, dtype)
    o = tl.load(outcome_ptr + offsets, mask=in_group, other=0.0).to(dtype)

    # Outcome statistics (centred on the first member); A^o.
    o_first = tl.load(outcome_ptr + first).to(dtype)
    o_shifted = tl.where(in_group, o - o_first, 0.0)
    o_mean_offset = tl.sum(o_shifted, axis=0) / n
    o_dev = tl.where(in_group, o_shifted - o_mean_offset, 0.0)
    o_sumsq = tl.sum(o_dev * o_dev, axis=0)
    sd_o = tl.sqrt(o_sumsq / (n - correction))
    if SCALE_BY_STD:
        adv_o = o_dev / (sd_o + eps)
    else:
        adv_o = o_dev

    # Reasoning statistics over the valid (non-NaN) members, centred on the largest valid score;
    # A^s = 0 unless at least 2 members are valid.
    if HAS_REASONING:
        s = tl.load(reasoning_ptr + offsets, mask=in_group, other=float("nan")).to(dtype)
        s_valid = in_group & (s == s)
        n_s = tl.sum(s_valid.to(tl.int32), axis=0)
        s_shift = tl.max(tl.where(s_valid, s, float("-inf")), axis=0)
        s_shifted = tl.where(s_valid, s - s_shift, 0.0)
        s_dev = tl.where(s_valid, s_shifted - tl.sum(s_shifted, axis=0) / tl.maximum(n_s, 1).to(dtype), 0.0)
        enough = n_s >= 2
        s_var = tl.sum(s_dev * s_dev, axis=0) / tl.maximum(n_s - correction, 1).to(dtype)
        sd_s = tl.where(enough, tl.sqrt(s_var), 0.0)
        adv_s = tl.where(s_valid & enough, s_dev / (sd_s + eps), 0.0)
    else:
        s = o
        s_valid = member < 0
        sd_s = o_first * 0.0
        adv_s = o * 0.0

    # Variance-aware gate g and difficulty weight w.
    pass_rate = tl.minimum(tl.maximum((o_first + o_mean_offset - o_min) / o_span, 0.0), 1.0)
    if GATE == GATE_SOFT:
        spread = tl.sqrt(o_sumsq / n) / (o_span * 0.5)
        g = 1.0 - tl.minimum(tl.maximum(spread, 0.0), 1.0)
    elif GATE == GATE_HARD:
        g = tl.where(o_sumsq / n <= gate_threshold, 1.0, 0.0)
    elif GATE == GATE_RATIO:
        g = sd_s / (sd_o + sd_s + eps)
    elif GATE == GATE_NONE:  # the gate ablated, g = 1
        g = pass_rate * 0.0 + 1.0
    else:
        tl.static_assert(False, "GATE: not a _kernel_codes.GATE_* code")
    if WEIGHT == WEIGHT_LINEAR:
        w = 1.0 - pass_rate
    elif WEIGHT == WEIGHT_BERNOULLI:
        w = 4.0 * pass_rate * (1.0 - pass_rate)
    elif WEIGHT == WEIGHT_NONE:
        w = pass_rate * 0.0 + 1.0
    else:
        tl.static_assert(False, "WEIGHT: not a _kernel_codes.WEIGHT_* code")
    g = g.to(dtype)
    w = w.to(dtype)

    clipped_count = 0
    if ESTIMATOR == ESTIMATOR_GRPO:
        adv = adv_o
    elif ESTIMATOR == ESTIMATOR_AWPO:  # AWPO: outcome advantage + gated, weighted, clipped reasoning term
        r = reasoning_coef * g * w * adv_s
        if CLIP_SIGN:
            bound = tl.where(sd_o > 0, clip_ratio * tl.abs(adv_o), clip_max)
            r_clipped = tl.maximum(tl.minimum(r, bound), -bound)
            clipped_count = tl.sum((in_group & (r_clipped != r)).to(tl.int32), axis=0)
            r = r_clipped
        adv = adv_o + r
    elif ESTIMATOR == ESTIMATOR_AWPO_MIXED:
        # AWPO mixed at the reward level; a missing reasoning score falls back to the outcome
        m = (1.0 - g) * o + g * tl.where(s_valid, s, o)
        m_shifted = tl.where(in_group, m - tl.max(tl.where(in_group, m, float("-inf")), axis=0), 0.0)
        m_dev = tl.where(in_group, m_shifted - tl.sum(m_shifted, axis=0) / n, 0.0)
        if SCALE_BY_STD:
            sd_m = tl.sqrt(tl.sum(m_dev * m_dev, axis=0) / (n - correction))
            adv = w * (m_dev / (sd_m + eps))
        else:
            adv = w * m_dev
    elif ESTIMATOR == ESTIMATOR_REWARD_SUM:  # GRPO on x = o + reasoning_coef * s, a missing score counting as 0
        if HAS_REASONING:
            # Centred on member 0 like the outcome. Its x is picked out of the block (a sum of one value
            # and zeros: exact), not recomputed, so equal x give exactly zero deviations however the
            # compiler contracts o + coef * s; with no valid score x == o and this is GRPO's arithmetic.
            x = o + reasoning_coef * tl.where(s_valid, s, 0.0)
            x_shifted = tl.where(in_group, x - tl.sum(tl.where(member == 0, x, 0.0), axis=0), 0.0)
            x_dev = tl.where(in_group, x_shifted - tl.sum(x_shifted, axis=0) / n, 0.0)
            if SCALE_BY_STD:
                sd_x = tl.sqrt(tl.sum(x_dev * x_dev, axis=0) / (n - correction))
                adv = x_dev / (sd_x + eps)
            else:
                adv = x_dev
        else:  # x = o: exactly GRPO
            adv = adv_o
    elif ESTIMATOR == ESTIMATOR_GDPO:  # z = A^o + reasoning_coef * A^s; the launcher whitens z over the batch
        adv = adv_o + reasoning_coef * adv_s
    else:
        tl.static_assert(False, "ESTIMATOR: not a _kernel_codes.ESTIMATOR_* code")

    if ESTIMATOR == ESTIMATOR_GRPO:
        shrink = w * 0.0 + 1.0
    else:
        shrink = 1.0 / (1.0 + clip_shrink * g * w)
    per_member = tl.zeros([BLOCK_G], dtype)
    tl.store(adv_ptr + offsets, adv.to(dtype), mask=in_group)
    tl.store(eps_low_ptr + offsets, (per_member + epsilon_low * shrink).to(dtype), mask=in_group)
    tl.store(eps_high_ptr + offsets, (per_member + epsilon_high * shrink).to(dtype), mask=in_group)
    tl.store(gate_ptr + group, g)
    tl.store(weight_ptr + group, w)
    tl.store(outcome_std_ptr + group, sd_o.to(dtype))
    tl.store(reasoning_std_ptr + group, sd_s.to(dtype))
    tl.store(clipped_ptr + group, clipped_count)


def group_advantages_triton(outcome: torch.Tensor, reasoning: torch.Tensor | None, *, group_size: int,
                            options: AdvantageOptions, dtype: torch.dtype) -> GroupAdvantages:
    """Launch one program per group. Inputs are validated by the caller; `dtype` is the output dtype.
    For "gdpo" the kernel writes z per completion and the batch whitening follows here, on the device."""
    opt = options
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
    o_min, o_max = opt.outcome_range
    block = triton.next_power_of_2(group_size)
    _group_advantages_kernel[(num_groups,)](
        outcome, outcome if reasoning is None else reasoning.contiguous(),
        adv, eps_low, eps_high, gate_out, weight_out, outcome_std, reasoning_std, clipped,
        # Every number is a Python float: an int argument equal to 1 would be specialised (recompile).
        group_size, 1 if opt.unbiased else 0, float(opt.eps), o_min, o_max - o_min, float(opt.gate_threshold),
        float(opt.reasoning_coef), float(opt.clip_ratio), float(opt.clip_max), float(opt.clip_shrink),
        float(opt.epsilon_low), float(opt.epsilon_high),
        HAS_REASONING=reasoning is not None, ESTIMATOR=ESTIMATOR_CODES[opt.estimator],
        SCALE_BY_STD=SCALE_CODES[opt.scale], GATE=GATE_CODES[opt.gate], WEIGHT=WEIGHT_CODES[opt.weight],
        CLIP_SIGN=CLIP_CODES[opt.clip], BLOCK_G=block,
        num_warps=1 if block <= 256 else 4,
    )
    if opt.estimator == "gdpo":  # torch reductions on the device: no host sync
        adv = _whiten_batch(adv, opt.unbiased, float(opt.eps))
    return GroupAdvantages(
        advantages=adv, epsilon_low=eps_low, epsilon_high=eps_high, gate=gate_out, weight=weight_out,
        outcome_std=outcome_std, reasoning_std=reasoning_std,
        clipped_fraction=clipped.sum().to(dtype) / num_seqs,
    )
