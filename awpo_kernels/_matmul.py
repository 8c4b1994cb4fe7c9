"""The three LM-head GEMMs of one chunk of tokens, with the precision SPEC section 3 asks for.

- logits `z = h @ W^T` come out in fp32 (fp64 for fp64 inputs), never rounded to bf16 first;
- `d_hidden = dz @ W`, written straight into the caller's gradient rows (`out=`);
- `d_weight = dz^T @ h` for the first chunk (written over the uninitialised accumulator: no zero fill),
  `d_weight += dz^T @ h` for the others, accumulated in fp32 and cast once at the end by the caller.

Which dtype the GEMMs read (`gemm_dtypes`):
- CPU, or fp64: the compute dtype (fp32 / fp64), on upcast operands. CPU torch has no bf16 GEMM with an
  fp32 output, and bf16-rounded logits are the defect SPEC rules out.
- CUDA: bf16 (or fp16) operands with fp32 output (`torch.mm(..., out_dtype=torch.float32)`, torch >= 2.8)
  when the caller asked for low precision: under `torch.autocast("cuda")` (its dtype), or when either
  input is bf16 / fp16 (fp32 master weights with bf16 activations: the weight is cast to bf16 once per
  call, not run through fp32 GEMMs ten times slower). Only fp32 inputs outside autocast run fp32 GEMMs,
  and that is logged once.
- d(logits) are bf16 whenever the GEMMs are low precision, never fp16: a token's d(logits) are about
  coefficient x probability (~1e-10 at a 150k vocabulary and 16k tokens), far below fp16's smallest
  subnormal (6e-8), so fp16 would flush them to zero. fp16 inputs thus run the backward GEMMs on a bf16
  copy of the weight.

The mixed GEMMs are probed once per device and dtype (`_mixed_gemms_available`); where they are missing
(older torch) the GEMMs run in fp32 on an upcast weight, with a warning.
"""
from __future__ import annotations

import functools
import logging

import torch

from ._runtime import values_checked

logger = logging.getLogger(__name__)

LOW_PRECISION = (torch.bfloat16, torch.float16)

# Where torch.addmm cannot accumulate bf16 products into an fp32 tensor, the weight gradient adds fp32
# products of this many bytes at a time (a bounded temporary instead of a [V, H] fp32 one per chunk).
FALLBACK_PRODUCT_BYTES = 256 * 2**20


def gemm_dtypes(device_type: str, hidden_dtype: torch.dtype, weight_dtype: torch.dtype,
                compute_dtype: torch.dtype, autocast_dtype: torch.dtype | None) -> tuple[torch.dtype, torch.dtype]:
    """(dtype the forward GEMM reads, dtype of d(logits) and of the backward GEMMs' operands).

    `autocast_dtype`: the caller's CUDA autocast dtype, None outside autocast. See the module docstring.
    """
    if device_type != "cuda" or compute_dtype == torch.float64:
        return compute_dtype, compute_dtype
    if autocast_dtype in LOW_PRECISION:
        forward = autocast_dtype
    elif hidden_dtype in LOW_PRECISION or weight_dtype in LOW_PRECISION:
        low = {hidden_dtype, weight_dtype} & set(LOW_PRECISION)
        forward = low.pop() if len(low) == 1 else torch.bfloat16
    else:
        return compute_dtype, compute_dtype
    return forward, torch.bfloat16


def caller_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype the caller runs under on `device` (CUDA only), or None."""
    if device.type != "cuda" or not torch.is_autocast_enabled("cuda"):
        return None
    return torch.get_autocast_dtype("cuda")


def _probe_operands(device: str, dtype: torch.dtype):
    """Small integer matrices (exact in bf16 and fp16, exact products): no random numbers, so the
    caller's generators are untouched."""
    a = (torch.arange(16 * 8, device=device) % 7 - 3).reshape(16, 8)
    b = (torch.arange(8 * 32, device=device) % 5 - 2).reshape(8, 32)
    return a.to(dtype), b.to(dtype), (a.float() @ b.float())


@functools.cache
def _mixed_gemms_available(device: str, dtype: torch.dtype, verify_values: bool) -> tuple[bool, bool]:
    """(mm with fp32 output, addmm accumulating into an fp32 tensor) for `dtype` operands on `device`.

    Probed once per device, dtype and `verify_values`. The overloads exist from torch 2.8, but their
    dtype rules changed between releases: each must dispatch and give an fp32 result. With
    `verify_values` (the default input checks) the results are also compared with exact products, which
    reads them back (one host synchronisation, once); with AWPO_KERNELS_CHECK_INPUTS=0 nothing is read back.
    """
    a, b, expected = _probe_operands(device, dtype)

    def agrees(result, wanted):
        return result.dtype == torch.float32 and (not verify_values or bool(torch.equal(result, wanted)))

    try:
        out = torch.empty(16, 32, device=device, dtype=torch.float32)
        torch.mm(a, b, out_dtype=torch.float32, out=out)
        mm_ok = agrees(out, expected)
    except (RuntimeError, TypeError, NotImplementedError):
        mm_ok = False
    try:
        acc = torch.ones(16, 32, device=device, dtype=torch.float32)
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        addmm_ok = agrees(acc, expected + 1.0)
    except (RuntimeError, TypeError, NotImplementedError):
        addmm_ok = False
    return mm_ok, mm_ok and addmm_ok


def mixed_gemms_available(device, dtype: torch.dtype, verify_values: bool | None = None) -> tuple[bool, bool]:
    verify = values_checked() if verify_values is None else verify_values
    return _mixed_gemms_available(str(torch.device(device)), dtype, verify)


@functools.cache
def _warn_fp32_gemms_once() -> None:
    logger.warning("awpo_kernels: the LM-head GEMMs run in float32 on CUDA (float32 inputs outside autocast), "
                   "about 10x slower than bf16; pass bf16 tensors or call under "
                   "torch.autocast('cuda', dtype=torch.bfloat16) to run them in bf16 with fp32 logits")


class LmHeadGemms:
    """GEMMs for one call: holds the weight in the dtypes the GEMMs read and knows dz's dtype."""

    def __init__(self, weight: torch.Tensor, compute_dtype: torch.dtype, forward_dtype: torch.dtype,
                 dz_dtype: torch.dtype):
        self.compute_dtype = compute_dtype
        self.mixed = forward_dtype in LOW_PRECISION
        self.mixed_accumulate = False
        if self.mixed:
            forward_ok, _ = mixed_gemms_available(weight.device, forward_dtype)
            backward_ok, self.mixed_accumulate = mixed_gemms_available(weight.device, dz_dtype)
            self.mixed = forward_ok and backward_ok
            if not self.mixed:
                logger.warning("torch.mm(out_dtype=float32) is unavailable: the LM-head GEMMs run in fp32 "
                               "on an upcast copy of the weight (slower; upgrade torch to >= 2.8)")
        elif weight.is_cuda and compute_dtype == torch.float32:
            _warn_fp32_gemms_once()
        if self.mixed:
            self.forward_weight = weight.to(forward_dtype)
            self.backward_weight = self.forward_weight.to(dz_dtype)
            self.dz_dtype = dz_dtype
        else:
            self.forward_weight = self.backward_weight = weight.to(compute_dtype)
            self.dz_dtype = compute_dtype

    def operand(self, hidden_chunk: torch.Tensor) -> torch.Tensor:
        """The hidden rows as the backward GEMMs read them (cast once per chunk)."""
        return hidden_chunk.to(self.backward_weight.dtype)

    def logits(self, hidden_chunk: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out[:rows] = hidden_chunk @ W^T, in fp32 (fp64) whatever the operands."""
        if self.mixed:
            h = hidden_chunk.to(self.forward_weight.dtype)
            return torch.mm(h, self.forward_weight.T, out_dtype=torch.float32, out=out)
        return torch.mm(hidden_chunk.to(self.compute_dtype), self.forward_weight.T, out=out)

    def grad_hidden(self, dz: torch.Tensor, out: torch.Tensor) -> None:
        """out (the caller's gradient rows, hidden's dtype) = dz @ W."""
        weight = self.backward_weight
        if out.dtype == dz.dtype:
            torch.mm(dz, weight, out=out)
        elif self.mixed and out.dtype == torch.float32:
            torch.mm(dz, weight, out_dtype=torch.float32, out=out)
        elif self.mixed:  # fp16 hidden: fp32 product, one rounding
            out.copy_(torch.mm(dz, weight, out_dtype=torch.float32))
        else:
            out.copy_(torch.mm(dz, weight))

    def grad_weight(self, acc: torch.Tensor, dz: torch.Tensor, h: torch.Tensor, first: bool) -> None:
        """acc (fp32 / fp64) = dz^T @ h on the first chunk (no zero fill, beta=0), else acc += dz^T @ h.
        `h` is `operand(hidden_chunk)`."""
        if not self.mixed:
            if first:
                torch.mm(dz.T, h, out=acc)
            else:
                acc.addmm_(dz.T, h)
        elif first:
            torch.mm(dz.T, h, out_dtype=torch.float32, out=acc)
        elif self.mixed_accumulate:
            torch.addmm(acc, dz.T, h, out_dtype=torch.float32, out=acc)
        else:  # addmm cannot accumulate into fp32 here: fp32 products of a few vocabulary rows at a time
            rows = max(1, FALLBACK_PRODUCT_BYTES // (4 * acc.shape[1]))
            for start in range(0, acc.shape[0], rows):
                stop = start + rows
                acc[start:stop].add_(torch.mm(dz.T[start:stop], h, out_dtype=torch.float32))
