"""The chunk loop shared by every fast path: LM-head GEMM -> one epilogue -> backward GEMMs, per chunk.

For each chunk of token rows:

    z  = hidden[rows] @ W^T                       fp32 [rows, V] workspace (fp64 for fp64 inputs)
    dz = epilogue(z)                              log-sum-exp, logp, entropy, and, when a gradient is
                                                  wanted, d(logits) written over z in place
    grad_hidden[rows]  = dz @ W                   written in place (out=)
    grad_weight       += dz^T @ hidden[rows]      fp32 accumulator (the first chunk writes it: beta=0),
                                                  cast once at the end

Chunks are balanced (`_runtime.chunk_bounds`: multiples of 128 rows on CUDA, no ragged tail).
`AWPO_KERNELS_OVERLAP=1` runs the backward GEMMs of chunk i on a second CUDA stream while chunk i+1's
logits and epilogue run (two workspaces).

The full [N, V] logits never exist: the workspace is one chunk. The epilogue is the backend's
(`_epilogue_torch.TorchEpilogue` or `_epilogue_triton.TritonEpilogue`, both `Epilogue`s: the contract
in `_chunk_types`, with the `ChunkPlan` and `ChunkResults` they exchange with this loop); what it
computes is described by a `ChunkPlan`: either the policy loss's own coefficients (one pass, 6NHV
FLOPs, the gradient is ready when the forward ends), or coefficients given from outside (the backward
of `linear_logprobs`, which recomputes the logits: 8NHV), or none (forward only, 2NHV).
"""
from __future__ import annotations

import contextlib

import torch

from . import _matmul
from ._chunk_types import ChunkPlan, ChunkResults, Epilogue
from ._matmul import LmHeadGemms
from ._runtime import CPU_CHUNK_ALIGN, GPU_CHUNK_ALIGN, chunk_bounds, default_chunk_size, overlap_enabled
from .reference import compute_dtype as promoted_dtype


def _make_epilogue(backend: str, plan: ChunkPlan, gemms: LmHeadGemms, results: ChunkResults,
                   write_grad: bool) -> Epilogue:
    if backend == "triton":
        from ._epilogue_triton import TritonEpilogue  # imported lazily: triton is not needed on the torch path
        return TritonEpilogue(plan, results, write_grad=write_grad, dz_dtype=gemms.dz_dtype)
    from ._epilogue_torch import TorchEpilogue
    return TorchEpilogue(plan, results, write_grad=write_grad)


# torch.profiler ranges around each phase of the loop, for `python -m benchmarks.profile` (off: no cost).
PHASES = ("awpo::logits_gemm", "awpo::epilogue", "awpo::grad_hidden_gemm", "awpo::grad_weight_gemm")
annotate_phases = False


def _phase(name: str):
    return torch.profiler.record_function(name) if annotate_phases else contextlib.nullcontext()


class _Backward:
    """The two backward GEMMs of a chunk: grad_hidden rows written in place, grad_weight accumulated
    (the first chunk's product written over the uninitialised accumulator, beta=0: no zero fill)."""

    def __init__(self, gemms: LmHeadGemms, grad_hidden: torch.Tensor | None, weight_acc: torch.Tensor | None):
        self.gemms, self.grad_hidden, self.weight_acc = gemms, grad_hidden, weight_acc
        self.first = True

    def __call__(self, dz: torch.Tensor, hidden_chunk: torch.Tensor, start: int, stop: int) -> None:
        gemms = self.gemms
        if dz.dtype != gemms.dz_dtype:  # torch epilogue on CUDA with bf16 GEMMs
            dz = dz.to(gemms.dz_dtype)
        if self.grad_hidden is not None:
            with _phase(PHASES[2]):
                gemms.grad_hidden(dz, out=self.grad_hidden[start:stop])
        if self.weight_acc is not None:
            with _phase(PHASES[3]):
                gemms.grad_weight(self.weight_acc, dz, gemms.operand(hidden_chunk), first=self.first)
            self.first = False

    def finish(self) -> None:
        if self.weight_acc is not None and self.first:  # no chunk at all (no tokens)
            self.weight_acc.zero_()


def _forward(gemms, epilogue, hidden_chunk, buffers, start, stop):
    with _phase(PHASES[0]):
        gemms.logits(hidden_chunk, out=buffers[0])
    with _phase(PHASES[1]):
        return epilogue(buffers, slice(start, stop))


def _serial_loop(hidden, bounds, workspace, gemms, epilogue, backward) -> None:
    for start, stop in bounds:
        hidden_chunk = hidden[start:stop]
        dz = _forward(gemms, epilogue, hidden_chunk, workspace[:, : stop - start], start, stop)
        if dz is not None:
            backward(dz, hidden_chunk, start, stop)


def _overlapped_loop(hidden, bounds, workspaces, gemms, epilogue, backward) -> None:
    """Two CUDA streams: chunk i's backward GEMMs on a side stream while the current stream computes
    chunk i+1's logits and epilogue into the other workspace. Everything the side stream allocates it
    also frees; the current stream waits for it before returning, so the caller sees finished outputs."""
    main = torch.cuda.current_stream(hidden.device)
    side = torch.cuda.Stream(hidden.device)
    side.wait_stream(main)
    released = [None, None]  # per workspace: the side stream is done reading it
    for index, (start, stop) in enumerate(bounds):
        slot = index % 2
        if released[slot] is not None:
            main.wait_event(released[slot])
        hidden_chunk = hidden[start:stop]
        dz = _forward(gemms, epilogue, hidden_chunk, workspaces[slot][:, : stop - start], start, stop)
        if dz is None:
            continue
        ready = torch.cuda.Event()
        ready.record(main)
        with torch.cuda.stream(side):
            side.wait_event(ready)
            backward(dz, hidden_chunk, start, stop)
            released[slot] = torch.cuda.Event()
            released[slot].record(side)
    main.wait_stream(side)


def _overlap_chunks(device: torch.device, write_grad: bool, bounds) -> bool:
    """The two-stream loop: asked for (AWPO_KERNELS_OVERLAP=1), on CUDA, with backward GEMMs to overlap."""
    return device.type == "cuda" and write_grad and overlap_enabled() and len(bounds) > 1


def run_chunks(hidden: torch.Tensor, weight: torch.Tensor, plan: ChunkPlan, *, backend: str, compute_dtype,
               gemm_dtypes: tuple | None = None, chunk_size: int | None = None, grad_hidden: bool = False,
               grad_weight: bool = False) -> ChunkResults:
    """hidden [N, H], weight [V, H] -> ChunkResults. Gradients only when the plan has coefficients.

    `gemm_dtypes`: (forward GEMM dtype, d(logits) dtype) from `_matmul.gemm_dtypes` (default: from the
    inputs' dtypes, no autocast). The caller's autocast does not reach inside: every dtype is explicit.
    """
    device = hidden.device
    if gemm_dtypes is None:
        gemm_dtypes = _matmul.gemm_dtypes(device.type, hidden.dtype, weight.dtype, compute_dtype, None)
    with torch.autocast(device.type, enabled=False):
        return _run_chunks(hidden, weight, plan, backend, compute_dtype, gemm_dtypes, chunk_size,
                           grad_hidden, grad_weight)


def _run_chunks(hidden, weight, plan, backend, compute_dtype, gemm_dtypes, chunk_size, grad_hidden, grad_weight):
    num_tokens, vocab = hidden.shape[0], weight.shape[0]
    device = hidden.device
    write_grad = plan.has_coefficients and (grad_hidden or grad_weight)
    results = ChunkResults(logprobs=torch.zeros(num_tokens, dtype=compute_dtype, device=device))
    if plan.need_entropy:
        results.entropy = plan.entropy if plan.entropy is not None else torch.zeros_like(results.logprobs)
    if plan.save_lse:
        results.lse = torch.empty_like(results.logprobs)
    gemms = LmHeadGemms(weight, compute_dtype, *gemm_dtypes)
    epilogue = _make_epilogue(backend, plan, gemms, results, write_grad)

    itemsize = torch.finfo(compute_dtype).bits // 8
    rows = chunk_size or default_chunk_size(vocab, device, epilogue.buffers * itemsize * vocab)
    on_cuda = device.type == "cuda"
    bounds = chunk_bounds(num_tokens, max(1, min(rows, num_tokens)), GPU_CHUNK_ALIGN if on_cuda else CPU_CHUNK_ALIGN)
    overlap = _overlap_chunks(device, write_grad, bounds)
    largest = max((stop - start for start, stop in bounds), default=1)
    workspace = torch.empty(2 if overlap else 1, epilogue.buffers, largest, vocab, dtype=compute_dtype, device=device)
    if write_grad and grad_hidden:
        results.grad_hidden = torch.empty_like(hidden)
    weight_acc = None
    if write_grad and grad_weight:
        acc_dtype = torch.float64 if compute_dtype == torch.float64 else torch.float32
        weight_acc = torch.empty(weight.shape, dtype=acc_dtype, device=device)
    backward = _Backward(gemms, results.grad_hidden, weight_acc)
    if overlap:
        _overlapped_loop(hidden, bounds, workspace, gemms, epilogue, backward)
    else:
        _serial_loop(hidden, bounds, workspace[0], gemms, epilogue, backward)
    backward.finish()
    if weight_acc is not None:
        workspace = backward = gemms = None  # free the logits chunk before the cast allocates the output
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


def lm_head_gemm_dtypes(hidden: torch.Tensor, weight: torch.Tensor, compute_dtype) -> tuple:
    """The GEMM dtypes of a call (`_matmul.gemm_dtypes`), read with the caller's autocast state."""
    autocast = _matmul.caller_autocast_dtype(hidden.device)
    return _matmul.gemm_dtypes(hidden.device.type, hidden.dtype, weight.dtype, compute_dtype, autocast)

