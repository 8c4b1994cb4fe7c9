"""LM head -> per-token log-probs (+ entropy) without materialising the [N, V] logits.

Public op: `linear_logprobs`. Forward: one chunked pass (2NHV FLOPs) that keeps only the per-token
log-sum-exp (4 bytes a token). Backward: the upstream gradients of logp and entropy are the
coefficients c, e of the chunk epilogue, so it recomputes each chunk's logits from the saved lse
(no reductions) and writes d(logits) in place: 8NHV in all, workspace one chunk. (Storing d(logits)
instead would cost O(N x V) memory, and the gradient is not known before the caller's loss is.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import reference
from ._chunk_types import ChunkPlan
from ._chunked import fast_path, lm_head_gemm_dtypes, run_chunks
from ._constants import IGNORE_INDEX
from ._runtime import check_chunk_size, check_positive, check_token_ids, resolve_backend
from .outputs import LogprobsOutput


def check_lm_head(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight must be the LM head [V, H]; got shape {tuple(weight.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden's last dim ({hidden.shape[-1]}) must equal weight's H ({weight.shape[1]})")
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise ValueError("hidden and weight must be floating-point tensors")
    if hidden.device != weight.device or targets.device != hidden.device:
        raise ValueError(f"hidden, weight and targets must be on one device; got {hidden.device}, "
                         f"{weight.device}, {targets.device}")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"targets must have hidden's leading shape {tuple(hidden.shape[:-1])}; "
                         f"got {tuple(targets.shape)}")
    check_token_ids("targets", targets, weight.shape[0])


@dataclass(frozen=True)
class _Config:
    backend: str
    compute_dtype: torch.dtype
    gemm_dtypes: tuple           # fixed at the forward (the caller's autocast), reused by the backward
    inv_temperature: float
    return_entropy: bool
    chunk_size: int | None


def _flat(hidden, targets):
    return hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).contiguous()


class _LinearLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, config: _Config):
        flat_hidden, flat_targets = _flat(hidden, targets)
        plan = ChunkPlan(flat_targets, config.inv_temperature, need_entropy=config.return_entropy, save_lse=True)
        res = run_chunks(flat_hidden, weight, plan, backend=config.backend, compute_dtype=config.compute_dtype,
                         gemm_dtypes=config.gemm_dtypes, chunk_size=config.chunk_size)
        ctx.config = config
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: skip its term
        ctx.save_for_backward(hidden, weight, targets, res.lse, res.entropy)
        logp = res.logprobs.reshape(targets.shape)
        if config.return_entropy:
            return logp, res.entropy.reshape(targets.shape)
        return logp

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy=None):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        config = ctx.config
        flat_hidden, flat_targets = _flat(hidden, targets)
        valid = flat_targets != IGNORE_INDEX
        zero = torch.zeros((), dtype=lse.dtype, device=lse.device)

        def coefficient(grad):  # logp and entropy are constant 0 on ignored tokens
            return torch.where(valid, grad.reshape(-1).to(lse.dtype), zero).contiguous()

        coef = torch.zeros_like(lse) if grad_logp is None else coefficient(grad_logp)
        entropy_grad = None if grad_entropy is None else coefficient(grad_entropy)
        plan = ChunkPlan(flat_targets, config.inv_temperature, need_entropy=entropy_grad is not None, coef=coef,
                         entropy_grad=entropy_grad, lse=lse, entropy=entropy)
        res = run_chunks(flat_hidden, weight, plan, backend=config.backend, compute_dtype=config.compute_dtype,
                         gemm_dtypes=config.gemm_dtypes, chunk_size=config.chunk_size,
                         grad_hidden=ctx.needs_input_grad[0],
                         grad_weight=ctx.needs_input_grad[1])
        grad_hidden = None if res.grad_hidden is None else res.grad_hidden.reshape(hidden.shape)
        return grad_hidden, res.grad_weight, None, None


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                    return_entropy: bool = False, chunk_size: int | None = None,
                    backend: str | None = None) -> LogprobsOutput:
    """log_softmax(hidden @ weight.T / temperature)[targets] in fp32; 0 where targets == -100.

    hidden [..., H], weight [V, H], targets [...] -> LogprobsOutput(logprobs [...], entropy [...] or None),
    differentiable w.r.t. hidden and weight. `chunk_size` = token rows per chunk at most (default: a chunk
    of fp32 logits stays within 128 MiB on CPU, 1 GiB on GPU; chunks are balanced). `backend`: see
    `_runtime.resolve_backend`. On CUDA the GEMMs read bf16 operands under bf16 autocast or when either
    input is bf16 (logits always fp32): see `_matmul`.
    """
    check_lm_head(hidden, weight, targets)
    check_positive("temperature", temperature)
    check_chunk_size(chunk_size)
    backend = resolve_backend(backend, hidden.device)
    if backend == "reference":
        return reference.linear_logprobs(hidden, weight, targets, temperature=temperature,
                                         return_entropy=return_entropy)
    backend, dtype = fast_path(backend, hidden, weight)
    config = _Config(backend, dtype, lm_head_gemm_dtypes(hidden, weight, dtype), 1.0 / temperature,
                     bool(return_entropy), chunk_size)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        out = _LinearLogprobsFunction.apply(hidden, weight, targets, config)
        logp, entropy = out if return_entropy else (out, None)
        return LogprobsOutput(logprobs=logp, entropy=entropy)
    flat_hidden, flat_targets = _flat(hidden, targets)
    res = run_chunks(flat_hidden, weight, ChunkPlan(flat_targets, config.inv_temperature, need_entropy=return_entropy),
                     backend=backend, compute_dtype=dtype, gemm_dtypes=config.gemm_dtypes, chunk_size=chunk_size)
    entropy = None if res.entropy is None else res.entropy.reshape(targets.shape)
    return LogprobsOutput(logprobs=res.logprobs.reshape(targets.shape), entropy=entropy)
