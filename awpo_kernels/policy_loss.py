"""Fused linear policy loss: LM head -> log-probs -> clipped surrogate (+KL, +entropy), SPEC section 3.

Public ops: `fused_linear_policy_loss`, `policy_loss`.

How the fast backends split the work:
- the gradient: per-token coefficients c_t = dL/dlogp_t, e_t = dL/dH_t (`_token_math`, or the same
  formulas inside the Triton kernels) drive the chunk epilogue, which writes d(logits) in the forward
  pass; the gradients w.r.t. hidden and weight are ready when the forward ends (6NHV FLOPs) and
  backward only scales them. Sequence-level IS with rollout log-probs needs every log-prob of a
  sequence first: then a forward-only pass runs before the gradient pass (8NHV).
- the loss value and metrics: `reference.policy_loss_flat` on the detached per-token log-probs and
  entropies (O(tokens), no logits), so the numbers users log are the spec's by construction.
`policy_loss` (caller has log-probs) attaches the coefficients as the gradient of its inputs; on the
triton backend they come from an elementwise Triton kernel sharing the epilogue's coefficient code.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from . import reference
from ._autograd import attach_gradients
from ._chunked import ChunkPlan, fast_path, lm_head_gemm_dtypes, run_chunks
from ._runtime import (IGNORE_INDEX, check_chunk_size, check_loss_options, check_shape, flat_layout,
                       resolve_backend)
from ._token_math import build_loss_spec, sequence_slopes, token_coefficients
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
    check_chunk_size(chunk_size)
    backend = resolve_backend(backend, hidden.device)
    flat_options = _flat_options(layout, options)
    if backend == "reference":
        out = reference.fused_linear_policy_loss_flat(
            layout.hidden, weight, layout.targets, layout.seq_ids, advantages, num_seqs=layout.num_seqs,
            temperature=temperature, entropy_coef=entropy_coef, **flat_options)
    else:
        out = _fused_fast(layout, weight, advantages, backend, temperature, entropy_coef, chunk_size, flat_options)
    return _reshape(out, layout.shape)


def _fused_fast(layout, weight, advantages, backend, temperature, entropy_coef, chunk_size, flat_options):
    hidden = layout.hidden
    backend, dtype = fast_path(backend, hidden, weight)
    mask = layout.targets != IGNORE_INDEX
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    plan = ChunkPlan(layout.targets.contiguous(), 1.0 / temperature, need_entropy=entropy_coef != 0.0)

    gemm_dtypes = lm_head_gemm_dtypes(hidden, weight, dtype)

    def run(plan, **grads):
        return run_chunks(hidden.detach(), weight.detach(), plan, backend=backend, compute_dtype=dtype,
                          gemm_dtypes=gemm_dtypes, chunk_size=chunk_size, **grads)

    if not want_grad:
        res = first = run(plan)
    else:
        spec = build_loss_spec(layout.seq_ids, mask, layout.num_seqs, advantages, dtype=dtype,
                               entropy_coef=entropy_coef, **flat_options)
        grads = dict(grad_hidden=hidden.requires_grad, grad_weight=weight.requires_grad)
        if spec.needs_logprobs_first:  # GSPO with rollout log-probs: all log-probs, then the gradient pass
            first = run(replace(plan, save_lse=True))
            spec.sequence_slope = sequence_slopes(spec, first.logprobs)
            res = run(replace(plan, spec=spec, lse=first.lse, entropy=first.entropy), **grads)
        else:
            res = first = run(replace(plan, spec=spec), **grads)
    with torch.no_grad():
        out = reference.policy_loss_flat(first.logprobs, layout.seq_ids, mask, advantages, num_seqs=layout.num_seqs,
                                         entropy=first.entropy, entropy_coef=entropy_coef, **flat_options)
    if want_grad:
        out.loss = attach_gradients(out.loss, [(hidden, res.grad_hidden), (weight, res.grad_weight)])
    return out


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
    backend = resolve_backend(backend, logprobs.device)
    flat_options = _flat_options(layout, options)
    mask_flat = layout.targets.bool()
    if backend == "reference":
        dtype = reference.compute_dtype(logprobs)
        out = reference.policy_loss_flat(
            logprobs.reshape(-1).to(dtype), layout.seq_ids, mask_flat, advantages, num_seqs=layout.num_seqs,
            entropy=layout.flatten(entropy), entropy_coef=entropy_coef, **flat_options)
        return _reshape(out, layout.shape)
    backend, dtype = fast_path(backend, logprobs)
    logp = logprobs.detach().reshape(-1).to(dtype).contiguous()
    flat_entropy = None if entropy is None else entropy.detach().reshape(-1).to(dtype)
    with torch.no_grad():
        out = reference.policy_loss_flat(logp, layout.seq_ids, mask_flat, advantages, num_seqs=layout.num_seqs,
                                         entropy=flat_entropy, entropy_coef=entropy_coef, **flat_options)
    inputs = [t for t in (logprobs, entropy) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        coef, entropy_grad = _policy_coefficients(backend, logp, layout, mask_flat, advantages, dtype, entropy_coef,
                                                  flat_options)
        pairs = [(logprobs, coef.reshape(logprobs.shape).to(logprobs.dtype))]
        if entropy is not None:
            pairs.append((entropy, None if entropy_grad is None else entropy_grad.reshape(entropy.shape).to(entropy.dtype)))
        out.loss = attach_gradients(out.loss, pairs)
    return _reshape(out, layout.shape)


def _policy_coefficients(backend, logp, layout, mask, advantages, dtype, entropy_coef, flat_options):
    """(dL/dlogp, dL/dentropy) per token: torch math, or the elementwise Triton kernel."""
    spec = build_loss_spec(layout.seq_ids, mask, layout.num_seqs, advantages, dtype=dtype, entropy_coef=entropy_coef,
                           **flat_options)
    if spec.needs_logprobs_first:
        spec.sequence_slope = sequence_slopes(spec, logp)
    if backend == "triton":
        from .triton_kernels import policy_coefficients
        return policy_coefficients(spec, logp)
    return token_coefficients(spec, logp)


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
