"""The executable spec: plain PyTorch, line by line with `docs/SPEC.md`.

Every fast path (chunked torch, Triton on CUDA, Triton under `TRITON_INTERPRET=1`) is tested against
these functions. They favour clarity over speed and memory: the full `[N, V]` logits exist here.
They compute in float32, or in float64 when given float64 inputs (the tests' ground truth).
They do not validate their inputs; the public ops do that before dispatching (see `_runtime.py`).
Where docs/SPEC.md is silent they follow TRL's `GRPOTrainer`, as the comments say.
They take the options as plain keywords; the defaults and the allowed values are those of
`options.LossOptions` / `options.AdvantageOptions` (read from there, not repeated).
"""
from __future__ import annotations

import torch

from ._constants import IGNORE_INDEX
from .options import AdvantageOptions, LossOptions, check_choice
from .outputs import GroupAdvantages, LogprobsOutput, PolicyLossOutput

_A, _L = AdvantageOptions, LossOptions  # their class attributes are the defaults


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when any input is float64 (never below float32: SPEC's fp32 softmax)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# --------------------------------------------------------------------------------------------
# LM head -> log-probs (+ entropy)
# --------------------------------------------------------------------------------------------

def linear_logprobs(hidden, weight, targets, *, temperature=1.0, return_entropy=False) -> LogprobsOutput:
    """logp_t = log_softmax(h_t @ W^T / temperature)[y_t]; 0 where y_t == -100 (also the entropy)."""
    dtype = compute_dtype(hidden, weight)
    logits = (hidden.to(dtype) @ weight.to(dtype).T) / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    valid = targets != IGNORE_INDEX
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    logp = log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    entropy = None
    if return_entropy:
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        entropy = torch.where(valid, entropy, torch.zeros_like(entropy))
    return LogprobsOutput(logprobs=logp, entropy=entropy)


# --------------------------------------------------------------------------------------------
# Group advantages (SPEC section 2)
# --------------------------------------------------------------------------------------------

def _std(x: torch.Tensor, unbiased: bool) -> torch.Tensor:
    return x.std(dim=1, correction=1 if unbiased else 0, keepdim=True)


def _from_first(x: torch.Tensor) -> torch.Tensor:
    """x minus each group's first member. Statistics are computed on this shifted copy so that a group
    of equal values has exactly zero spread: the floating-point mean of 0.1, 0.1, 0.1 is not exactly 0.1,
    and the ~1e-17 spread it would leave turns "all outcomes equal" (hard gate 1, clip by clip_max) off."""
    return x - x[:, :1]


def _group_normalised(x: torch.Tensor, scale: str, unbiased: bool, eps: float):
    """(x - mean_q(x)) / (std_q(x) + eps) per group (x - mean_q(x) with scale="none"), and std_q(x).
    The statistics are taken on _from_first(x), so a group of equal values gets exactly 0."""
    mu = x[:, :1] + _from_first(x).mean(dim=1, keepdim=True)
    sd = _std(_from_first(x), unbiased)
    return ((x - mu) / (sd + eps) if scale == "group" else x - mu), sd


def _whiten_batch(z: torch.Tensor, unbiased: bool, eps: float) -> torch.Tensor:
    """(z - mean(z)) / (std(z) + eps) over every element of z (the whole batch, across groups), with the
    same std correction as the group statistics. Centred on z's first element like _from_first, so a
    batch of equal values gives exactly 0 (not rounding noise divided by eps)."""
    if z.numel() == 0:
        return z
    flat = z.reshape(1, -1)
    shifted = _from_first(flat)
    dev = shifted - shifted.mean(dim=1, keepdim=True)
    return (dev / (_std(shifted, unbiased) + eps)).reshape(z.shape)


def _reasoning_stats(s: torch.Tensor, unbiased: bool, eps: float):
    """Mean/std of s over the valid (non-NaN) members of each group; A^s (0 for NaN members and for
    groups with fewer than 2 valid members)."""
    valid = ~torch.isnan(s)
    count = valid.sum(dim=1, keepdim=True)
    enough = count >= 2
    s = s - torch.where(valid, s, -torch.inf).amax(dim=1, keepdim=True)  # shift by a valid member (see _from_first)
    s_valid = torch.where(valid, s, torch.zeros_like(s))
    mean = s_valid.sum(dim=1, keepdim=True) / count.clamp(min=1)
    dev = torch.where(valid, s - mean, torch.zeros_like(s))
    dof = (count - 1) if unbiased else count
    var = (dev * dev).sum(dim=1, keepdim=True) / dof.clamp(min=1)
    std = torch.where(enough, var.sqrt(), torch.zeros_like(var))
    adv = torch.where(valid & enough, dev / (std + eps), torch.zeros_like(s))
    return std, adv


def _gate(kind, o, sd_o, sd_s, half_range, gate_threshold, eps):
    if kind == "soft":
        v = (_std(_from_first(o), unbiased=False) / half_range).clamp(0.0, 1.0)
        return 1.0 - v
    if kind == "hard":
        return (_from_first(o).var(dim=1, correction=0, keepdim=True) <= gate_threshold).to(o.dtype)
    if kind == "ratio":
        return sd_s / (sd_o + sd_s + eps)
    if kind == "none":  # ablation of the gate: the reasoning term always passes
        return torch.ones_like(sd_o)
    check_choice("gate", kind, AdvantageOptions.GATES)


def _difficulty_weight(kind, pass_rate):
    if kind == "linear":
        return 1.0 - pass_rate
    if kind == "bernoulli":
        return 4.0 * pass_rate * (1.0 - pass_rate)
    if kind == "none":
        return torch.ones_like(pass_rate)
    check_choice("weight", kind, AdvantageOptions.WEIGHTS)


def group_advantages(
    outcome: torch.Tensor, reasoning: torch.Tensor | None = None, *, group_size: int, estimator: str = _A.estimator,
    scale: str = _A.scale, unbiased: bool = _A.unbiased, eps: float = _A.eps, outcome_range=_A.outcome_range,
    gate: str = _A.gate, gate_threshold: float = _A.gate_threshold, weight: str = _A.weight,
    reasoning_coef: float = _A.reasoning_coef, clip: str = _A.clip, clip_ratio: float = _A.clip_ratio,
    clip_max: float = _A.clip_max, clip_shrink: float = _A.clip_shrink, epsilon_low: float = _A.epsilon_low,
    epsilon_high: float = _A.epsilon_high,
) -> GroupAdvantages:
    """SPEC section 2 on B = P * group_size completions (group-contiguous); see `AdvantageOptions`."""
    dtype = compute_dtype(outcome, reasoning)
    o = outcome.to(dtype).reshape(-1, group_size)
    if reasoning is None:
        s = torch.full_like(o, float("nan"))
    else:
        s = reasoning.to(dtype).reshape(-1, group_size)
    o_min, o_max = float(outcome_range[0]), float(outcome_range[1])
    half_range = (o_max - o_min) / 2.0

    mu_o = o[:, :1] + _from_first(o).mean(dim=1, keepdim=True)
    adv_o, sd_o = _group_normalised(o, scale, unbiased, eps)
    sd_s, adv_s = _reasoning_stats(s, unbiased, eps)

    g = _gate(gate, o, sd_o, sd_s, half_range, gate_threshold, eps)
    pass_rate = ((mu_o - o_min) / (o_max - o_min)).clamp(0.0, 1.0)
    w = _difficulty_weight(weight, pass_rate)
    clipped = torch.zeros_like(o, dtype=torch.bool)

    if estimator == "grpo":
        adv = adv_o
    elif estimator == "awpo":
        r = reasoning_coef * g * w * adv_s
        if clip == "sign":
            bound = torch.where(sd_o > 0, clip_ratio * adv_o.abs(), torch.full_like(adv_o, clip_max))
            r_clipped = torch.maximum(torch.minimum(r, bound), -bound)
            clipped = r_clipped != r
            r = r_clipped
        else:
            check_choice("clip", clip, AdvantageOptions.CLIPS)
        adv = adv_o + r
    elif estimator == "awpo_mixed":
        # Mixing at the reward level (ablation). A missing reasoning score falls back to the outcome.
        # `scale="none"` skips the std division here too, as it does for GRPO.
        m = (1.0 - g) * o + g * torch.where(torch.isnan(s), o, s)
        centred = _from_first(m) - _from_first(m).mean(dim=1, keepdim=True)
        adv = w * (centred / (_std(_from_first(m), unbiased) + eps) if scale == "group" else centred)
    elif estimator == "reward_sum":
        # Baseline: GRPO on the summed reward x = o + reasoning_coef * s, a missing score counting as 0
        # (so all-NaN or absent reasoning gives exactly GRPO). `scale="none"` gives x - mean(x).
        # Gate and weight are only diagnostics here (and drive the epsilon shrink); nothing is clipped.
        x = o + reasoning_coef * torch.where(torch.isnan(s), torch.zeros_like(s), s)
        adv, _ = _group_normalised(x, scale, unbiased, eps)
    elif estimator == "gdpo":
        # Baseline (GDPO): each reward normalised in its group first (A^o with `scale`, A^s exactly as for
        # awpo: 0 for NaN members and for groups with fewer than 2 valid scores), summed, then whitened
        # over the whole batch this call receives (all B completions, across groups). The whitening uses
        # the same `unbiased` choice and `eps` and ignores `scale`; a batch of equal z gives exactly 0.
        # Without reasoning this is GRPO whitened over the batch. Gate/weight: diagnostics and shrink only.
        adv = _whiten_batch(adv_o + reasoning_coef * adv_s, unbiased, eps)
    else:
        check_choice("estimator", estimator, AdvantageOptions.ESTIMATORS)

    # The dynamic clip (SPEC "clip_shrink") applies to every estimator but GRPO, the baselines included,
    # with the gate and weight computed as for AWPO.
    if estimator == "grpo":
        shrink = torch.ones_like(g)
    else:
        shrink = 1.0 / (1.0 + clip_shrink * g * w)
    ones = torch.ones_like(o)
    return GroupAdvantages(
        advantages=adv.reshape(-1),
        epsilon_low=(epsilon_low * shrink * ones).reshape(-1),
        epsilon_high=(epsilon_high * shrink * ones).reshape(-1),
        gate=g.reshape(-1),
        weight=w.reshape(-1),
        outcome_std=sd_o.reshape(-1),
        reasoning_std=sd_s.reshape(-1),
        clipped_fraction=clipped.to(dtype).mean(),
    )


# --------------------------------------------------------------------------------------------
# Policy loss (SPEC section 3), on the flat token layout: tokens [N] with seq_ids [N] in [0, S)
# --------------------------------------------------------------------------------------------

def _per_token(value, seq_ids):
    """A float or a per-sequence tensor [S], gathered to the tokens (a CPU scalar tensor as a float)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value[seq_ids]
    if isinstance(value, torch.Tensor) and value.device.type == "cpu":
        return float(value)
    return value


def _count(value, dtype):
    """A batch count (num_items_in_batch / num_seqs_in_batch): a number as it is, a 0-dim tensor in the compute
    dtype (an integer or float64 count must not change the loss's dtype)."""
    return value.to(dtype) if isinstance(value, torch.Tensor) else value


def per_sequence_sum(x: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """sum_t x_t per sequence: [N] -> [S] (also the fast paths' helper)."""
    return torch.zeros(num_seqs, dtype=x.dtype, device=x.device).index_add(0, seq_ids, x)


def _clamp(x, low, high):
    """torch.clamp with bounds that are each a float or a tensor like x. clamp takes two numbers or two
    tensors; a float bound becomes a filled tensor (never a host-to-device copy: no synchronisation)."""
    if isinstance(low, torch.Tensor) != isinstance(high, torch.Tensor):
        low, high = (b if isinstance(b, torch.Tensor) else torch.full_like(x, b) for b in (low, high))
    return torch.clamp(x, low, high)


def _kl(kind, logp, ref_logp):
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if kind == "k3":
        return torch.exp(ref_logp - logp) - (ref_logp - logp) - 1.0
    check_choice("kl_type", kind, LossOptions.KL_TYPES)


def policy_loss_flat(
    logp: torch.Tensor, seq_ids: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, *, num_seqs: int,
    entropy: torch.Tensor | None = None, old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None, importance_weights: torch.Tensor | None = None,
    num_items_in_batch=None, num_seqs_in_batch=None, epsilon_low=_L.epsilon_low, epsilon_high=_L.epsilon_high,
    delta: float | None = _L.delta, beta: float = _L.beta, kl_type: str = _L.kl_type,
    entropy_coef: float = _L.entropy_coef, loss_type: str = _L.loss_type,
    importance_sampling_level: str = _L.importance_sampling_level,
    max_completion_length: int | None = _L.max_completion_length,
) -> PolicyLossOutput:
    """The clipped surrogate loss of SPEC section 3 on tokens `logp [N]` of `num_seqs` sequences.

    `num_items_in_batch` (dapo) and `num_seqs_in_batch` (grpo, dr_grpo) replace this call's token / sequence
    count in the denominator (None: this call's); the public ops refuse a count the loss type does not use."""
    dtype = logp.dtype
    maskf = mask.to(dtype)
    zero = torch.zeros_like(logp)
    adv = advantages.to(dtype)[seq_ids]
    old = logp.detach() if old_logprobs is None else old_logprobs.to(dtype)
    log_ratio = torch.where(mask, logp - old, zero)
    lengths = per_sequence_sum(maskf, seq_ids, num_seqs).clamp(min=1.0)

    if importance_sampling_level == "token":
        ratio = torch.exp(log_ratio)
    elif importance_sampling_level == "sequence":  # GSPO: one ratio per sequence
        seq_log_ratio = per_sequence_sum(log_ratio, seq_ids, num_seqs) / lengths
        ratio = torch.exp(seq_log_ratio)[seq_ids]
    else:
        check_choice("importance_sampling_level", importance_sampling_level, LossOptions.IMPORTANCE_SAMPLING_LEVELS)

    eps_lo = _per_token(epsilon_low, seq_ids)
    eps_hi = _per_token(epsilon_high, seq_ids)
    ratio1 = ratio if delta is None else torch.clamp(ratio, max=delta)
    ratio2 = _clamp(ratio, 1.0 - eps_lo, 1.0 + eps_hi)
    per_token = -torch.minimum(ratio1 * adv, ratio2 * adv)
    if importance_weights is not None:
        per_token = per_token * importance_weights.to(dtype).detach()

    metrics = {}
    num_tokens = maskf.sum().clamp(min=1.0)

    def masked_mean(x):
        return (torch.where(mask, x, zero)).sum() / num_tokens

    if beta != 0.0:
        kl = _kl(kl_type, logp, ref_logprobs.to(dtype))
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl.detach())
    if entropy is not None:
        if entropy_coef != 0.0:
            per_token = per_token - entropy_coef * entropy
        metrics["entropy"] = masked_mean(entropy.detach())
    per_token = torch.where(mask, per_token, zero)

    sequences = num_seqs if num_seqs_in_batch is None else _count(num_seqs_in_batch, dtype)
    if loss_type == "grpo":
        loss = (per_sequence_sum(per_token, seq_ids, num_seqs) / lengths).sum() / sequences
    elif loss_type == "bnpo":
        loss = per_token.sum() / num_tokens
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / (sequences * max_completion_length)
    elif loss_type == "dapo":
        denominator = num_tokens if num_items_in_batch is None else _count(num_items_in_batch, dtype)
        loss = per_token.sum() / denominator
    else:
        check_choice("loss_type", loss_type, LossOptions.LOSS_TYPES)

    r = ratio.detach()
    metrics["clip_ratio/low_mean"] = masked_mean(((r < 1.0 - eps_lo) & (adv < 0)).to(dtype))
    metrics["clip_ratio/high_mean"] = masked_mean(((r > 1.0 + eps_hi) & (adv > 0)).to(dtype))
    return PolicyLossOutput(loss=loss, logprobs=torch.where(mask, logp, zero).detach(), metrics=metrics)


def fused_linear_policy_loss_flat(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                  seq_ids: torch.Tensor, advantages: torch.Tensor, *, num_seqs: int,
                                  temperature: float = _L.temperature, entropy_coef: float = _L.entropy_coef,
                                  return_entropy: bool = False, **loss_options) -> PolicyLossOutput:
    """LM head -> log-probs -> policy loss, on flat tokens: hidden [N, H], targets [N], seq_ids [N]."""
    want_entropy = return_entropy or entropy_coef != 0.0
    out = linear_logprobs(hidden, weight, targets, temperature=temperature, return_entropy=want_entropy)
    return policy_loss_flat(out.logprobs, seq_ids, targets != IGNORE_INDEX, advantages, num_seqs=num_seqs,
                            entropy=out.entropy, entropy_coef=entropy_coef, **loss_options)
