"""The three LM-head GEMMs of one chunk of tokens, with the precision SPEC section 3 asks for.

- logits `z = h @ W^T` come out in fp32 (fp64 for fp64 inputs), never rounded to bf16 first;
- `d_hidden = dz @ W`;
- `d_weight += dz^T @ h` accumulates in fp32 across chunks (cast once at the end by the caller).

On CUDA with bf16/fp16 weights the GEMMs read the low-precision operands directly and write fp32
(`torch.mm(..., out_dtype=torch.float32)`, torch >= 2.8); d(logits) is then handed back in the weight's
dtype, as cuBLAS needs both operands in one dtype. Where that is missing (older torch, CPU), the weight
is upcast once to the compute dtype and every GEMM runs there: correct, slower, and one extra
`[V, H]` copy of the weight.
"""
from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger(__name__)

# Where torch.addmm cannot accumulate bf16 products into an fp32 tensor, the weight gradient adds fp32
# products of this many bytes at a time (a bounded temporary instead of a [V, H] fp32 one per chunk).
FALLBACK_PRODUCT_BYTES = 256 * 2**20


@functools.lru_cache(maxsize=None)
def _mixed_gemms_available(device: str, dtype: torch.dtype) -> tuple[bool, bool]:
    """(mm with fp32 output, addmm accumulating into an fp32 tensor) for `dtype` operands on `device`.

    Probed once per device and dtype on tiny matrices against an fp32 product: the overloads exist
    from torch 2.8 but their dtype rules changed between releases.
    """
    a = torch.randn(16, 8, device=device).to(dtype)
    b = torch.randn(8, 32, device=device).to(dtype)
    expected = a.float() @ b.float()
    try:
        out = torch.empty(16, 32, device=device, dtype=torch.float32)
        torch.mm(a, b, out_dtype=torch.float32, out=out)
        mm_ok = bool(torch.allclose(out, expected, rtol=1e-3, atol=1e-3))
    except (RuntimeError, TypeError, NotImplementedError):
        mm_ok = False
    try:
        acc = torch.ones(16, 32, device=device, dtype=torch.float32)
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        addmm_ok = bool(torch.allclose(acc, expected + 1.0, rtol=1e-3, atol=1e-3))
    except (RuntimeError, TypeError, NotImplementedError):
        addmm_ok = False
    return mm_ok, mm_ok and addmm_ok


class LmHeadGemms:
    """GEMMs for one call: holds the weight in the dtype the GEMMs read and knows dz's dtype."""

    def __init__(self, weight: torch.Tensor, hidden_dtype: torch.dtype, compute_dtype: torch.dtype):
        self.compute_dtype = compute_dtype
        self.mixed = False
        self.mixed_accumulate = False
        low_precision = weight.dtype in (torch.bfloat16, torch.float16) and hidden_dtype == weight.dtype
        if weight.is_cuda and low_precision and compute_dtype == torch.float32:
            self.mixed, self.mixed_accumulate = _mixed_gemms_available(str(weight.device), weight.dtype)
            if not self.mixed:
                logger.warning("torch.mm(out_dtype=float32) is unavailable: the LM-head GEMMs run in fp32 "
                               "on an upcast copy of the weight (slower; upgrade torch to >= 2.8)")
        self.weight = weight if self.mixed else weight.to(compute_dtype)
        # d(logits) is written in the dtype the backward GEMMs read.
        self.dz_dtype = self.weight.dtype

    def logits(self, hidden_chunk: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out[:rows] = hidden_chunk @ W^T in the compute dtype."""
        if self.mixed:
            return torch.mm(hidden_chunk.to(self.weight.dtype), self.weight.T, out_dtype=torch.float32, out=out)
        return torch.mm(hidden_chunk.to(self.compute_dtype), self.weight.T, out=out)

    def grad_hidden(self, dz: torch.Tensor) -> torch.Tensor:
        return torch.mm(dz, self.weight)

    def accumulate_grad_weight(self, grad_weight: torch.Tensor, dz: torch.Tensor, hidden_chunk: torch.Tensor) -> None:
        """grad_weight (fp32 / fp64) += dz^T @ hidden_chunk."""
        h = hidden_chunk.to(self.weight.dtype)
        if not self.mixed:
            grad_weight.addmm_(dz.T, h)
        elif self.mixed_accumulate:
            torch.addmm(grad_weight, dz.T, h, out_dtype=torch.float32, out=grad_weight)
        else:  # addmm cannot accumulate into fp32 here: fp32 products of a few vocabulary rows at a time
            rows = max(1, FALLBACK_PRODUCT_BYTES // (4 * grad_weight.shape[1]))
            for start in range(0, grad_weight.shape[0], rows):
                stop = start + rows
                grad_weight[start:stop].add_(torch.mm(dz.T[start:stop], h, out_dtype=torch.float32))
