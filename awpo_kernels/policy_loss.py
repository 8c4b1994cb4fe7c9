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
from typing import Unpack

import torch

from . import reference
from ._autograd import attach_gradients
from ._chunk_types import ChunkPlan
from ._chunked import fast_path, lm_head_gemm_dtypes, run_chunks
from ._constants import IGNORE_INDEX
from ._runtime import (
    BACKENDS,
    FlatLayout,
    check_chunk_size,
    check_loss_inputs,
    check_shape,
    flat_layout,
    resolve_backend,
)
from ._token_math import build_loss_spec, sequence_slopes, token_coefficients
from .logprobs import check_lm_head
from .options import LossKeywords, LossOptions, check_choice, document, resolve_options
from .outputs import PolicyLossOutput

# Argument documentation shared by the ops (inserted into their docstrings, written once).
_PER_CALL_DOC = """seq_ids: packed layout only: [N] sequence index of each token, in [0, S) (None: padded layout).
        old_logprobs: rollout-time log-probs, the targets' shape (None: the current ones, detached: ratio 1).
        ref_logprobs: reference-model log-probs, the targets' shape (required when beta > 0).
        importance_weights: per-token weights of the surrogate term (e.g. truncated IS), the targets' shape.
        num_items_in_batch: dapo's denominator, the token count of the whole batch this call is a part of (a
            number or a 0-dim tensor; None: the loss tokens of this call); only with loss_type='dapo'.
        num_seqs_in_batch: the sequence count of grpo / dr_grpo (the sum of per-sequence terms is divided by it;
            a number or a 0-dim tensor; None: the S sequences of this call); only with those loss types.
        backend: 'auto' (default: Triton on CUDA, chunked torch on CPU), 'torch', 'triton' or 'reference'
            (the plain spec, full logits); AWPO_KERNELS_BACKEND sets the default.
        options: a `LossOptions`; the keyword options below override its fields (None: the defaults).
        **overrides: any `LossOptions` field as a keyword:
{options}"""
_DOCS = {"per_call": _PER_CALL_DOC.format(options=LossOptions.describe(indent=" " * 12))}


def _loss_tensors(layout: FlatLayout, old_logprobs, ref_logprobs, importance_weights, num_items_in_batch,
                  num_seqs_in_batch) -> dict:
    """The per-call tensors as the reference and `build_loss_spec` take them (per-token ones flattened)."""
    return dict(old_logprobs=layout.flatten(old_logprobs), ref_logprobs=layout.flatten(ref_logprobs),
                importance_weights=layout.flatten(importance_weights), num_items_in_batch=num_items_in_batch,
                num_seqs_in_batch=num_seqs_in_batch)


def _reshape(out: PolicyLossOutput, shape) -> PolicyLossOutput:
    out.logprobs = out.logprobs.reshape(shape)
    return out


@document(_DOCS)
def fused_linear_policy_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor, *,
    seq_ids: torch.Tensor | None = None, old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None, importance_weights: torch.Tensor | None = None,
    num_items_in_batch: float | torch.Tensor | None = None, num_seqs_in_batch: float | torch.Tensor | None = None,
    chunk_size: int | None = None, backend: str | None = None,
    options: LossOptions | None = None, **overrides: Unpack[LossKeywords],
) -> PolicyLossOutput:
    """Policy loss straight from the last hidden state and the LM head weight (docs/SPEC.md section 3).

    Padded layout: hidden [B, T, H], targets [B, T] (-100 = not in the loss), advantages [B].
    Packed layout: hidden [N, H], targets [N], seq_ids [N] in [0, S), advantages [S].
    The full [N, V] logits never exist: the LM head runs in chunks of `chunk_size` rows (None: sized
    to a workspace budget), and the gradients w.r.t. hidden and weight are computed in the forward.

    Args:
        hidden: last hidden states, floating point.
        weight: LM head weight [V, H].
        targets: token ids (int64 / int32); -100 marks positions outside the loss.
        advantages: one per sequence.
        {per_call}
        chunk_size: rows of logits per chunk (None: automatic).

    Returns: `PolicyLossOutput` (differentiable `loss`, detached per-token `logprobs`, `metrics`).
    """
    check_lm_head(hidden, weight, targets)
    layout = flat_layout(targets, advantages, seq_ids, hidden)
    options = resolve_options(LossOptions, options, overrides)
    options = check_loss_inputs(layout, options, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                                importance_weights=importance_weights, num_items_in_batch=num_items_in_batch,
                                num_seqs_in_batch=num_seqs_in_batch)
    check_chunk_size(chunk_size)
    backend = resolve_backend(backend, hidden.device)
    tensors = _loss_tensors(layout, old_logprobs, ref_logprobs, importance_weights, num_items_in_batch,
                            num_seqs_in_batch)
    if backend == "reference":
        out = reference.fused_linear_policy_loss_flat(
            layout.hidden, weight, layout.targets, layout.seq_ids, advantages, num_seqs=layout.num_seqs,
            **tensors, **options.as_kwargs())
    else:
        out = _fused_fast(layout, weight, advantages, backend, options, chunk_size, tensors)
    return _reshape(out, layout.shape)


def _fused_fast(layout: FlatLayout, weight: torch.Tensor, advantages: torch.Tensor, backend: str,
                options: LossOptions, chunk_size: int | None, tensors: dict) -> PolicyLossOutput:
    hidden = layout.hidden
    backend, dtype = fast_path(backend, hidden, weight)
    mask = layout.targets != IGNORE_INDEX
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    plan = ChunkPlan(layout.targets.contiguous(), 1.0 / options.temperature, need_entropy=options.entropy_coef != 0.0)

    gemm_dtypes = lm_head_gemm_dtypes(hidden, weight, dtype)

    def run(plan, **grads):
        return run_chunks(hidden.detach(), weight.detach(), plan, backend=backend, compute_dtype=dtype,
                          gemm_dtypes=gemm_dtypes, chunk_size=chunk_size, **grads)

    if not want_grad:
        res = first = run(plan)
    else:
        spec = build_loss_spec(layout.seq_ids, mask, layout.num_seqs, advantages, dtype=dtype, options=options,
                               **tensors)
        grads = dict(grad_hidden=hidden.requires_grad, grad_weight=weight.requires_grad)
        if spec.needs_logprobs_first:  # GSPO with rollout log-probs: all log-probs, then the gradient pass
            first = run(replace(plan, save_lse=True))
            spec.sequence_slope = sequence_slopes(spec, first.logprobs)
            res = run(replace(plan, spec=spec, lse=first.lse, entropy=first.entropy), **grads)
        else:
            res = first = run(replace(plan, spec=spec), **grads)
    with torch.no_grad():
        out = reference.policy_loss_flat(first.logprobs, layout.seq_ids, mask, advantages, num_seqs=layout.num_seqs,
                                         entropy=first.entropy, **tensors, **options.as_kwargs(("temperature",)))
    if want_grad:
        out.loss = attach_gradients(out.loss, [(hidden, res.grad_hidden), (weight, res.grad_weight)])
    return out


@document(_DOCS)
def policy_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *, seq_ids: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None, old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None, importance_weights: torch.Tensor | None = None,
    num_items_in_batch: float | torch.Tensor | None = None, num_seqs_in_batch: float | torch.Tensor | None = None,
    backend: str | None = None, options: LossOptions | None = None, **overrides: Unpack[LossKeywords],
) -> PolicyLossOutput:
    """The same loss when the caller already has per-token log-probs (padded [B, T] or packed [N]).

    Args:
        logprobs: per-token log-probs (floating point; the gradient flows to them).
        advantages: one per sequence.
        mask: the tokens in the loss, the shape of logprobs.
        entropy: per-token entropies, the shape of logprobs (required when entropy_coef != 0).
        {per_call}

    Returns: `PolicyLossOutput` (differentiable `loss`, detached per-token `logprobs`, `metrics`).
    """
    if not logprobs.is_floating_point():
        raise ValueError(f"logprobs must be a floating-point tensor; got {logprobs.dtype}")
    check_shape("mask", mask, logprobs.shape, "the shape of logprobs")
    check_shape("entropy", entropy, logprobs.shape, "the shape of logprobs")
    options = resolve_options(LossOptions, options, overrides)
    if options.entropy_coef != 0.0 and entropy is None:
        raise ValueError("entropy is required when entropy_coef != 0")
    layout = flat_layout(mask, advantages, seq_ids, targets_name="mask")
    options = check_loss_inputs(layout, options, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                                importance_weights=importance_weights, num_items_in_batch=num_items_in_batch,
                                num_seqs_in_batch=num_seqs_in_batch)
    options = replace(options, temperature=1.0)  # the log-probs are given: no temperature applies here
    backend = resolve_backend(backend, logprobs.device)
    tensors = _loss_tensors(layout, old_logprobs, ref_logprobs, importance_weights, num_items_in_batch,
                            num_seqs_in_batch)
    loss_kwargs = options.as_kwargs(("temperature",))
    mask_flat = layout.targets.bool()
    if backend == "reference":
        dtype = reference.compute_dtype(logprobs)
        out = reference.policy_loss_flat(
            logprobs.reshape(-1).to(dtype), layout.seq_ids, mask_flat, advantages, num_seqs=layout.num_seqs,
            entropy=layout.flatten(entropy), **tensors, **loss_kwargs)
        return _reshape(out, layout.shape)
    backend, dtype = fast_path(backend, logprobs)
    logp = logprobs.detach().reshape(-1).to(dtype).contiguous()
    flat_entropy = None if entropy is None else entropy.detach().reshape(-1).to(dtype)
    with torch.no_grad():
        out = reference.policy_loss_flat(logp, layout.seq_ids, mask_flat, advantages, num_seqs=layout.num_seqs,
                                         entropy=flat_entropy, **tensors, **loss_kwargs)
    inputs = [t for t in (logprobs, entropy) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        coef, entropy_grad = _policy_coefficients(backend, logp, layout, mask_flat, advantages, dtype, options,
                                                  tensors)
        pairs = [(logprobs, coef.reshape(logprobs.shape).to(logprobs.dtype))]
        if entropy is not None:
            grad = None if entropy_grad is None else entropy_grad.reshape(entropy.shape).to(entropy.dtype)
            pairs.append((entropy, grad))
        out.loss = attach_gradients(out.loss, pairs)
    return _reshape(out, layout.shape)


def _policy_coefficients(backend: str, logp: torch.Tensor, layout: FlatLayout, mask: torch.Tensor,
                         advantages: torch.Tensor, dtype: torch.dtype, options: LossOptions, tensors: dict):
    """(dL/dlogp, dL/dentropy) per token: torch math, or the elementwise Triton kernel."""
    spec = build_loss_spec(layout.seq_ids, mask, layout.num_seqs, advantages, dtype=dtype, options=options, **tensors)
    if spec.needs_logprobs_first:
        spec.sequence_slope = sequence_slopes(spec, logp)
    if backend == "triton":
        from ._epilogue_triton import policy_coefficients
        return policy_coefficients(spec, logp)
    return token_coefficients(spec, logp)


class FusedLinearPolicyLoss(torch.nn.Module):
    """`fused_linear_policy_loss` with its options fixed at construction (like Liger's loss modules).

    `FusedLinearPolicyLoss(options=None, *, chunk_size=None, backend=None, **overrides)` validates the
    options, chunk size and backend name here. forward(hidden, weight, targets, advantages, **per_call):
    per_call holds the per-batch arguments of `fused_linear_policy_loss` (seq_ids, old_logprobs,
    ref_logprobs, importance_weights, num_items_in_batch, num_seqs_in_batch) and may override options fields
    (e.g. per-sequence epsilon_low / epsilon_high tensors).
    """

    def __init__(self, options: LossOptions | None = None, *, chunk_size: int | None = None,
                 backend: str | None = None, **overrides: Unpack[LossKeywords]):
        super().__init__()
        self.loss_options = resolve_options(LossOptions, options, overrides)
        check_chunk_size(chunk_size)
        if backend is not None:
            check_choice("backend", backend, BACKENDS)
        self.chunk_size, self.backend = chunk_size, backend

    @property
    def options(self) -> dict:
        """The fixed arguments as keywords of `fused_linear_policy_loss` (options fields, chunk_size, backend)."""
        return {**self.loss_options.as_kwargs(), "chunk_size": self.chunk_size, "backend": self.backend}

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor,
                **per_call) -> PolicyLossOutput:
        per_call.setdefault("chunk_size", self.chunk_size)
        per_call.setdefault("backend", self.backend)
        return fused_linear_policy_loss(hidden, weight, targets, advantages, options=self.loss_options, **per_call)


__all__ = ["fused_linear_policy_loss", "policy_loss", "FusedLinearPolicyLoss"]
