"""Fused linear policy loss: LM head -> log-probs -> clipped surrogate (+KL, +entropy), SPEC section 3.

Public ops: `fused_linear_policy_loss`, `policy_loss`. (Fast backends: to be filled in; today every
backend runs the reference.)
"""
from __future__ import annotations

import torch

from . import reference
from ._runtime import IGNORE_INDEX, check_loss_options, check_shape, flat_layout, resolve_backend
from .logprobs import check_lm_head
from .outputs import PolicyLossOutput


def _flat_options(layout, options):
    flat = dict(options)
    for name in ("old_logprobs", "ref_logprobs", "importance_weights"):
        flat[name] = layout.flatten(flat[name])
    return flat


def _reshape(out: PolicyLossOutput, shape) -> PolicyLossOutput:
    out.logprobs = out.logprobs.reshape(shape)
    return out


def fused_linear_policy_loss(
    hidden, weight, targets, advantages, *, seq_ids=None, old_logprobs=None, ref_logprobs=None,
    importance_weights=None, temperature=1.0, epsilon_low=0.2, epsilon_high=0.2, delta=None, beta=0.0,
    kl_type="k3", entropy_coef=0.0, loss_type="dapo", importance_sampling_level="token",
    max_completion_length=None, num_items_in_batch=None, chunk_size=None, backend=None,
) -> PolicyLossOutput:
    """Policy loss straight from the last hidden state and the LM head weight.

    Padded layout: hidden [B, T, H], targets [B, T] (-100 = not in the loss), advantages [B].
    Packed layout: hidden [N, H], targets [N], seq_ids [N] in [0, S), advantages [S].
    """
    check_lm_head(hidden, weight, targets)
    layout = flat_layout(targets, advantages, seq_ids, hidden)
    options = dict(old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, importance_weights=importance_weights,
                   epsilon_low=epsilon_low, epsilon_high=epsilon_high, delta=delta, beta=beta, kl_type=kl_type,
                   loss_type=loss_type, importance_sampling_level=importance_sampling_level,
                   max_completion_length=max_completion_length, num_items_in_batch=num_items_in_batch)
    options["max_completion_length"] = check_loss_options(layout, temperature=temperature,
                                                          entropy_coef=entropy_coef, **options)
    resolve_backend(backend, hidden.device)
    out = reference.fused_linear_policy_loss_flat(
        layout.hidden, weight, layout.targets, layout.seq_ids, advantages, num_seqs=layout.num_seqs,
        temperature=temperature, entropy_coef=entropy_coef, **_flat_options(layout, options))
    return _reshape(out, layout.shape)


def policy_loss(
    logprobs, advantages, mask, *, seq_ids=None, entropy=None, old_logprobs=None, ref_logprobs=None,
    importance_weights=None, epsilon_low=0.2, epsilon_high=0.2, delta=None, beta=0.0, kl_type="k3",
    entropy_coef=0.0, loss_type="dapo", importance_sampling_level="token", max_completion_length=None,
    num_items_in_batch=None, backend=None,
) -> PolicyLossOutput:
    """The same loss when the caller already has per-token log-probs (padded [B, T] or packed [N])."""
    if not logprobs.is_floating_point():
        raise ValueError(f"logprobs must be a floating-point tensor; got {logprobs.dtype}")
    check_shape("mask", mask, logprobs.shape, "the shape of logprobs")
    check_shape("entropy", entropy, logprobs.shape, "the shape of logprobs")
    if entropy_coef != 0.0 and entropy is None:
        raise ValueError("entropy is required when entropy_coef != 0")
    layout = flat_layout(mask, advantages, seq_ids, targets_name="mask")
    options = dict(old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, importance_weights=importance_weights,
                   epsilon_low=epsilon_low, epsilon_high=epsilon_high, delta=delta, beta=beta, kl_type=kl_type,
                   loss_type=loss_type, importance_sampling_level=importance_sampling_level,
                   max_completion_length=max_completion_length, num_items_in_batch=num_items_in_batch)
    options["max_completion_length"] = check_loss_options(layout, temperature=1.0, entropy_coef=entropy_coef,
                                                          **options)
    resolve_backend(backend, logprobs.device)
    dtype = reference.compute_dtype(logprobs)
    out = reference.policy_loss_flat(
        logprobs.reshape(-1).to(dtype), layout.seq_ids, layout.targets.bool(), advantages,
        num_seqs=layout.num_seqs, entropy=layout.flatten(entropy), entropy_coef=entropy_coef,
        **_flat_options(layout, options))
    return _reshape(out, layout.shape)


class FusedLinearPolicyLoss(torch.nn.Module):
    """`fused_linear_policy_loss` with its options fixed at construction (like Liger's loss modules).

    forward(hidden, weight, targets, advantages, **per_call) where per_call holds per-batch tensors
    (seq_ids, old_logprobs, ref_logprobs, importance_weights, epsilons, num_items_in_batch).
    """

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, hidden, weight, targets, advantages, **per_call) -> PolicyLossOutput:
        return fused_linear_policy_loss(hidden, weight, targets, advantages, **{**self.options, **per_call})


__all__ = ["fused_linear_policy_loss", "policy_loss", "FusedLinearPolicyLoss", "IGNORE_INDEX"]
