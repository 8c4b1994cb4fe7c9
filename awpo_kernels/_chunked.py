"""The chunk loop shared by every fast path: LM-head GEMM -> one epilogue -> backward GEMMs, per chunk.

For each chunk of token rows:

    z  = hidden[rows] @ W^T                       fp32 [rows, V] workspace (fp64 for fp64 inputs)
    dz = epilogue(z)                              log-sum-exp, logp, entropy, and, when a gradient is
                                                  wanted, d(logits) written over z in place
    grad_hidden[rows]  = dz @ W
    grad_weight       += dz^T @ hidden[rows]      fp32 accumulator, cast once at the end

The full [N, V] logits never exist: the workspace is one chunk. The epilogue is the backend's
(`_torch_epilogue.TorchEpilogue` or `triton_kernels.TritonEpilogue`); what it computes is described
by a `ChunkPlan`: either the policy loss's own coefficients (one pass, 6NHV FLOPs, the gradient is
ready when the forward ends), or coefficients given from outside (the backward of `linear_logprobs`,
which recomputes the logits: 8NHV), or none (forward only, 2NHV).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._matmul import LmHeadGemms
from ._runtime import default_chunk_size
from ._token_math import LossSpec
from .reference import compute_dtype as promoted_dtype


@dataclass
class ChunkPlan:
    """What the loop computes, flat over N tokens (all per-token tensors [N])."""

    targets: torch.Tensor
    inv_temperature: float
    need_entropy: bool = False                   # compute the entropy (and use it in the gradient)
    save_lse: bool = False                       # keep the per-token log-sum-exp (for a later gradient pass)
    spec: LossSpec | None = None                 # the policy loss: coefficients computed per chunk
    coef: torch.Tensor | None = None             # given dL/dlogp_t
    entropy_grad: torch.Tensor | None = None     # given dL/dH_t
    lse: torch.Tensor | None = None              # given log-sum-exp: skip the reductions
    entropy: torch.Tensor | None = None          # given entropy (with lse)

    @property
    def has_coefficients(self) -> bool:
        return self.spec is not None or self.coef is not None


@dataclass
class ChunkResults:
    logprobs: torch.Tensor                       # [N], 0 where targets == -100
    entropy: torch.Tensor | None = None          # [N], 0 where targets == -100
    lse: torch.Tensor | None = None              # [N]
    grad_hidden: torch.Tensor | None = None      # [N, H], hidden's dtype
    grad_weight: torch.Tensor | None = None      # [V, H], weight's dtype


def _make_epilogue(backend: str, plan: ChunkPlan, gemms: LmHeadGemms, results: ChunkResults, write_grad: bool):
    if backend == "triton":
        from .triton_kernels import TritonEpilogue  # imported lazily: triton is not needed on the torch path
        return TritonEpilogue(plan, results, write_grad=write_grad, dz_dtype=gemms.dz_dtype)
    from ._torch_epilogue import TorchEpilogue
    return TorchEpilogue(plan, results, write_grad=write_grad)


def run_chunks(hidden: torch.Tensor, weight: torch.Tensor, plan: ChunkPlan, *, backend: str, compute_dtype,
               chunk_size: int | None = None, grad_hidden: bool = False, grad_weight: bool = False) -> ChunkResults:
    """hidden [N, H], weight [V, H] -> ChunkResults. Gradients only when the plan has coefficients."""
    num_tokens, vocab = hidden.shape[0], weight.shape[0]
    device = hidden.device
    write_grad = plan.has_coefficients and (grad_hidden or grad_weight)
    results = ChunkResults(logprobs=torch.zeros(num_tokens, dtype=compute_dtype, device=device))
    if plan.need_entropy:
        results.entropy = plan.entropy if plan.entropy is not None else torch.zeros_like(results.logprobs)
    if plan.save_lse:
        results.lse = torch.empty_like(results.logprobs)
    gemms = LmHeadGemms(weight, hidden.dtype, compute_dtype)
    epilogue = _make_epilogue(backend, plan, gemms, results, write_grad)

    itemsize = torch.finfo(compute_dtype).bits // 8
    rows = chunk_size or default_chunk_size(vocab, device, epilogue.buffers * itemsize * vocab)
    rows = max(1, min(rows, num_tokens))
    workspace = torch.empty(epilogue.buffers, rows, vocab, dtype=compute_dtype, device=device)
    if write_grad and grad_hidden:
        results.grad_hidden = torch.empty_like(hidden)
    weight_acc = None
    if write_grad and grad_weight:
        acc_dtype = torch.float64 if compute_dtype == torch.float64 else torch.float32
        weight_acc = torch.zeros(weight.shape, dtype=acc_dtype, device=device)

    for start in range(0, num_tokens, rows):
        stop = min(num_tokens, start + rows)
        hidden_chunk = hidden[start:stop]
        buffers = workspace[:, : stop - start]
        gemms.logits(hidden_chunk, out=buffers[0])
        dz = epilogue(buffers, slice(start, stop))
        if dz is None:
            continue
        if dz.dtype != gemms.dz_dtype:  # torch epilogue on CUDA with bf16 weights
            dz = dz.to(gemms.dz_dtype)
        if results.grad_hidden is not None:
            results.grad_hidden[start:stop] = gemms.grad_hidden(dz)
        if weight_acc is not None:
            gemms.accumulate_grad_weight(weight_acc, dz, hidden_chunk)
    if weight_acc is not None:
        workspace = buffers = dz = None  # free the logits chunk before the cast allocates the output
        results.grad_weight = weight_acc.to(weight.dtype)  # the one cast (none for fp32 weights)
    return results


def fast_path(backend: str, *tensors) -> tuple[str, torch.dtype]:
    """(backend, compute dtype) of a fast path: fp32, or fp64 for fp64 inputs.

    The Triton epilogue computes in fp32, so fp64 inputs (tests, debugging) run the torch chunk loop
    on either backend.
    """
    dtype = promoted_dtype(*tensors)
    if backend == "triton" and dtype == torch.float64:
        return "torch", dtype
    return backend, dtype
