"""Per-token gradient coefficients of the policy loss (SPEC section 3), in torch.

The loss depends on the LM head only through each token's log-prob `logp_t` and entropy `H_t`, so
its gradient is fixed by two numbers per token, known as soon as `logp_t` is:

    c_t = dL/dlogp_t        e_t = dL/dH_t

This file computes them in closed form, matching torch autograd of `reference.policy_loss_flat`
exactly, including its two non-smooth rules: `torch.clamp` passes the gradient at its bounds
(inclusive), and `torch.minimum` splits it half/half between equal arguments. Every torch path uses
it (the chunked LM-head loop, `policy_loss`, the sequence-level pre-pass of the Triton path); the
Triton kernels carry the same formulas in `_epilogue_triton._loss_coefficients`.

Loss *values* and metrics are not recomputed here: the public ops take them from
`reference.policy_loss_flat` on the detached per-token log-probs (O(tokens), no logits).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .options import LossOptions
from .reference import per_sequence_sum as _per_sequence_sum


@dataclass
class LossSpec:
    """Everything the coefficients need, flat over N tokens of S sequences, in the compute dtype."""

    seq_ids: torch.Tensor                 # [N] int64
    mask: torch.Tensor                    # [N] bool: the token is in the loss
    num_seqs: int
    agg_weight: torch.Tensor              # [N] d loss / d per_token_t (0 where masked)
    advantages: torch.Tensor              # [S]
    epsilon_low: torch.Tensor             # [S]
    epsilon_high: torch.Tensor            # [S]
    old_logprobs: torch.Tensor | None     # [N]
    ref_logprobs: torch.Tensor | None     # [N], set when beta > 0
    importance_weights: torch.Tensor | None  # [N]
    delta: float | None
    beta: float
    kl_type: str
    entropy_coef: float
    sequence_level: bool
    # sequence-level IS only: dL/dlogp_t of the surrogate term is mask_t * sequence_slope[seq_t]
    sequence_slope: torch.Tensor | None = None

    @property
    def needs_logprobs_first(self) -> bool:
        """GSPO with rollout log-probs: a token's coefficient depends on its whole sequence's log-probs."""
        return self.sequence_level and self.old_logprobs is not None


def _per_sequence(value, num_seqs: int, dtype, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor) and not (value.dim() == 0 and value.device.type == "cpu"):
        return value.to(device=device, dtype=dtype).expand(num_seqs).contiguous()
    # a float, or a CPU scalar tensor: a fill, never a host-to-device copy (no synchronisation)
    return torch.full((num_seqs,), float(value), dtype=dtype, device=device)


def _count(value, default: int, dtype):
    """A batch count as a divisor: `default` (this call's count) for None, a number as a float, a 0-dim tensor in
    `dtype` (a CPU scalar divides on the host's value: no copy)."""
    if value is None:
        return default
    return value.to(dtype=dtype) if isinstance(value, torch.Tensor) else float(value)


def aggregation_weights(mask, seq_ids, num_seqs, loss_type, max_completion_length, num_items_in_batch, dtype,
                        num_seqs_in_batch=None):
    """d loss / d per_token_t for each aggregation of SPEC section 3 (0 on masked tokens).

    `num_seqs_in_batch` (grpo, dr_grpo) and `num_items_in_batch` (dapo) replace this call's sequence / token
    count (None: this call's)."""
    maskf = mask.to(dtype)
    if loss_type == "grpo":
        lengths = _per_sequence_sum(maskf, seq_ids, num_seqs).clamp(min=1.0)
        return maskf / (lengths[seq_ids] * _count(num_seqs_in_batch, num_seqs, dtype))
    if loss_type == "bnpo":
        return maskf / maskf.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return maskf / (_count(num_seqs_in_batch, num_seqs, dtype) * max_completion_length)
    if num_items_in_batch is None:  # dapo
        return maskf / maskf.sum().clamp(min=1.0)
    return maskf / _count(num_items_in_batch, 0, dtype)


def build_loss_spec(seq_ids: torch.Tensor, mask: torch.Tensor, num_seqs: int, advantages: torch.Tensor, *,
                    dtype: torch.dtype, options: LossOptions | None = None, old_logprobs: torch.Tensor | None = None,
                    ref_logprobs: torch.Tensor | None = None, importance_weights: torch.Tensor | None = None,
                    num_items_in_batch=None, num_seqs_in_batch=None) -> LossSpec:
    """Flat inputs (as the reference takes them) -> LossSpec; per-sequence epsilons become [S] tensors.
    `options.max_completion_length` must be resolved already (`_runtime.check_loss_inputs`)."""
    options = options or LossOptions()
    device = seq_ids.device
    seq_ids = seq_ids.contiguous()  # the Triton kernels index these flat

    def cast(t):
        return None if t is None else t.detach().to(dtype=dtype).reshape(-1).contiguous()

    spec = LossSpec(
        seq_ids=seq_ids, mask=mask, num_seqs=num_seqs,
        agg_weight=aggregation_weights(mask, seq_ids, num_seqs, options.loss_type, options.max_completion_length,
                                       num_items_in_batch, dtype, num_seqs_in_batch).contiguous(),
        advantages=advantages.detach().to(dtype=dtype).contiguous(),
        epsilon_low=_per_sequence(options.epsilon_low, num_seqs, dtype, device),
        epsilon_high=_per_sequence(options.epsilon_high, num_seqs, dtype, device),
        old_logprobs=cast(old_logprobs), ref_logprobs=cast(ref_logprobs) if options.beta != 0.0 else None,
        importance_weights=cast(importance_weights), delta=options.delta, beta=float(options.beta),
        kl_type=options.kl_type, entropy_coef=float(options.entropy_coef),
        sequence_level=options.importance_sampling_level == "sequence",
    )
    if spec.sequence_level and spec.old_logprobs is None:
        # Without rollout log-probs every ratio is exactly 1: the slopes are known before any logits.
        spec.sequence_slope = sequence_slopes(spec, None)
    return spec


def surrogate_slope(ratio, adv, eps_low, eps_high, delta):
    """d/d ratio of  -min(ratio1 * A, ratio2 * A),
    ratio1 = min(ratio, delta), ratio2 = clamp(ratio, 1-eps_lo, 1+eps_hi).

    Autograd's rules, as the reference gets them: clamp's gradient is 1 on the closed interval,
    minimum gives each argument half the gradient when they are equal.
    """
    low, high = 1.0 - eps_low, 1.0 + eps_high
    ratio2 = torch.clamp(ratio, low, high)
    d_ratio2 = ((ratio >= low) & (ratio <= high)).to(ratio.dtype)
    if delta is None:
        ratio1, d_ratio1 = ratio, torch.ones_like(ratio)
    else:
        ratio1, d_ratio1 = torch.clamp(ratio, max=delta), (ratio <= delta).to(ratio.dtype)
    a, b = ratio1 * adv, ratio2 * adv
    d_min = torch.where(a < b, adv * d_ratio1, torch.where(a > b, adv * d_ratio2, 0.5 * adv * (d_ratio1 + d_ratio2)))
    return -d_min


def kl_slope(kl_type, logp, ref_logp):
    """d kl_t / d logp_t for k1, k2, k3."""
    if kl_type == "k1":
        return torch.ones_like(logp)
    if kl_type == "k2":
        return logp - ref_logp
    return 1.0 - torch.exp(ref_logp - logp)


def sequence_slopes(spec: LossSpec, logp: torch.Tensor | None) -> torch.Tensor:
    """Sequence-level IS (GSPO): per-sequence factor f_b with dL_pg/dlogp_t = mask_t * f_b.

    ratio_b = exp(sum_t mask*(logp - old) / len_b), so d ratio_b / d logp_t = mask_t * ratio_b / len_b and
    f_b = ratio_b / len_b * sum_{t in b} dL/dratio_t. `logp` may be None when old_logprobs is (ratio 1).
    """
    maskf = spec.mask.to(spec.agg_weight.dtype)
    lengths = _per_sequence_sum(maskf, spec.seq_ids, spec.num_seqs).clamp(min=1.0)
    if spec.old_logprobs is None:
        seq_ratio = torch.ones_like(lengths)
    else:
        log_ratio = torch.where(spec.mask, logp - spec.old_logprobs, torch.zeros_like(logp))
        seq_ratio = torch.exp(_per_sequence_sum(log_ratio, spec.seq_ids, spec.num_seqs) / lengths)
    ids = spec.seq_ids
    d_ratio = surrogate_slope(seq_ratio[ids], spec.advantages[ids], spec.epsilon_low[ids], spec.epsilon_high[ids],
                              spec.delta)
    if spec.importance_weights is not None:
        d_ratio = d_ratio * spec.importance_weights
    d_ratio = torch.where(spec.mask, d_ratio * spec.agg_weight, torch.zeros_like(d_ratio))
    return seq_ratio / lengths * _per_sequence_sum(d_ratio, ids, spec.num_seqs)


def token_coefficients(spec: LossSpec, logp: torch.Tensor, rows: slice = slice(None)):
    """(c, e) for the tokens `rows` whose log-probs are `logp`; e is None when entropy_coef == 0."""
    mask, weight, ids = spec.mask[rows], spec.agg_weight[rows], spec.seq_ids[rows]
    zero = torch.zeros_like(logp)
    if spec.sequence_level:
        coef = spec.sequence_slope[ids]
    else:
        ratio = torch.ones_like(logp)
        if spec.old_logprobs is not None:  # else old = logp.detach(): ratio 1, slope 1
            ratio = torch.exp(torch.where(mask, logp - spec.old_logprobs[rows], zero))
        slope = surrogate_slope(ratio, spec.advantages[ids], spec.epsilon_low[ids], spec.epsilon_high[ids],
                                spec.delta)
        if spec.importance_weights is not None:
            slope = slope * spec.importance_weights[rows]
        coef = weight * slope * ratio
    if spec.beta != 0.0:
        coef = coef + weight * spec.beta * kl_slope(spec.kl_type, logp, spec.ref_logprobs[rows])
    coef = torch.where(mask, coef, zero)
    entropy_coef = None
    if spec.entropy_coef != 0.0:
        entropy_coef = torch.where(mask, -spec.entropy_coef * weight, zero)
    return coef, entropy_coef
