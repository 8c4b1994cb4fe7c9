"""Triton kernels: the LM-head chunk epilogue and the per-token policy-loss coefficients.

`_lm_head_epilogue_kernel` runs on one chunk of fp32 logits (written by a cuBLAS GEMM). Each program
owns BLOCK_ROWS rows and walks the vocabulary in BLOCK_V blocks, twice:

    pass 1  online max / sum-exp (running max starts at -inf) and sum p*(z - max) for the entropy,
            plus a direct load of the target logit -> lse, logp <= 0, entropy >= 0;
    coefficients  c = dL/dlogp, e = dL/dH from the loss options (gathered per sequence via seq_ids)
            or given (the backward of `linear_logprobs`);
    pass 2  dz = (c (onehot - p) - e p (log p + H)) / T written over the logits in place, in the
            dtype of the backward GEMMs (bf16 dz lands in the first half of each fp32 row's bytes, so
            a program only ever touches its own rows; a barrier per block orders its warps' loads
            before their stores).

Rows whose target is -100 are never read: they get logp = entropy = 0 and d(logits) = 0 (written).
Hyper-parameters (temperature, eps, delta, beta, entropy_coef) are runtime scalars; constexprs are
block sizes and flags that change the code (optional inputs, KL type, IS level); the KL type and the
source of the coefficients are compared against the named codes of `_kernel_codes`. The block sizes and
warps can be overridden by environment variables for a sweep (EPILOGUE_ENV). The kernels use only
pointer arithmetic and masks, so they run on triton 3.6 and 3.9 and under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._chunk_types import ChunkPlan, ChunkResults
from ._kernel_codes import (
    COEFFICIENTS_GIVEN,
    COEFFICIENTS_LOSS,
    COEFFICIENTS_NONE,
    KL_K1,
    KL_K2,
    KL_K3,
    KL_NONE,
    KL_TYPE_CODES,
)
from ._runtime import triton_interpreting
from ._token_math import LossSpec

# ----------------------------------------------------------------------------- shared math

@triton.jit
def _surrogate_slope(ratio, adv, eps_low, eps_high, delta, HAS_DELTA: tl.constexpr):
    """d/d ratio of -min(min(ratio, delta) A, clamp(ratio, 1-eps_lo, 1+eps_hi) A), torch autograd's rules
    (clamp passes the gradient on its closed interval; minimum splits it at ties), as _token_math."""
    low = 1.0 - eps_low
    high = 1.0 + eps_high
    ratio2 = tl.minimum(tl.maximum(ratio, low), high)
    d_ratio2 = tl.where((ratio >= low) & (ratio <= high), 1.0, 0.0)
    if HAS_DELTA:
        ratio1 = tl.minimum(ratio, delta)
        d_ratio1 = tl.where(ratio <= delta, 1.0, 0.0)
    else:
        ratio1 = ratio
        d_ratio1 = tl.zeros_like(ratio) + 1.0
    a = ratio1 * adv
    b = ratio2 * adv
    d_min = tl.where(a < b, adv * d_ratio1, tl.where(a > b, adv * d_ratio2, 0.5 * adv * (d_ratio1 + d_ratio2)))
    return -d_min


@triton.jit
def _loss_coefficients(rows, in_range, valid, logp, seq_ids_ptr, agg_ptr, adv_ptr, eps_low_ptr, eps_high_ptr,
                       seq_slope_ptr, old_ptr, ref_ptr, isw_ptr, delta, beta, entropy_coef,
                       SEQUENCE_LEVEL: tl.constexpr, HAS_OLD: tl.constexpr, HAS_DELTA: tl.constexpr,
                       KL_TYPE: tl.constexpr, HAS_IS_WEIGHTS: tl.constexpr):
    """(c, e) = (dL/dlogp, dL/dH) of the tokens `rows`; same formulas as _token_math.token_coefficients."""
    seq = tl.load(seq_ids_ptr + rows, mask=in_range, other=0)
    weight = tl.load(agg_ptr + rows, mask=in_range, other=0.0)
    if SEQUENCE_LEVEL:
        coef = tl.load(seq_slope_ptr + seq, mask=in_range, other=0.0)
    else:
        adv = tl.load(adv_ptr + seq, mask=in_range, other=0.0)
        eps_low = tl.load(eps_low_ptr + seq, mask=in_range, other=0.0)
        eps_high = tl.load(eps_high_ptr + seq, mask=in_range, other=0.0)
        if HAS_OLD:
            old = tl.load(old_ptr + rows, mask=in_range, other=0.0)
            ratio = tl.exp(tl.where(valid, logp - old, 0.0))
        else:  # old = logp.detach(): ratio 1 with slope 1
            ratio = tl.zeros_like(logp) + 1.0
        slope = _surrogate_slope(ratio, adv, eps_low, eps_high, delta, HAS_DELTA)
        if HAS_IS_WEIGHTS:
            slope = slope * tl.load(isw_ptr + rows, mask=in_range, other=0.0)
        coef = weight * slope * ratio
    if KL_TYPE != KL_NONE:
        ref = tl.load(ref_ptr + rows, mask=in_range, other=0.0)
        if KL_TYPE == KL_K1:
            d_kl = tl.zeros_like(logp) + 1.0
        elif KL_TYPE == KL_K2:
            d_kl = logp - ref
        elif KL_TYPE == KL_K3:
            d_kl = 1.0 - tl.exp(ref - logp)
        else:
            tl.static_assert(False, "KL_TYPE: not a _kernel_codes.KL_* code")
        coef = coef + weight * beta * d_kl
    coef = tl.where(valid, coef, 0.0)
    entropy_grad = tl.where(valid, -entropy_coef * weight, 0.0)
    return coef, entropy_grad


# ----------------------------------------------------------------------------- LM-head epilogue

@triton.jit
def _online_softmax_stats(z_rows, read_rows, vocab, inv_temperature, BLOCK_ROWS: tl.constexpr,
                          BLOCK_V: tl.constexpr, NEED_ENTROPY: tl.constexpr):
    """Per row: max, sum exp(z - max), sum exp(z - max) (z - max), in one pass over the vocabulary.
    Only the rows `read_rows` are loaded (the others give max -inf and sums 0)."""
    row_max = tl.full([BLOCK_ROWS], float("-inf"), tl.float32)
    sum_exp = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    sum_pz = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    for start in range(0, vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = read_rows[:, None] & (cols < vocab)[None, :]
        z = tl.load(z_rows[:, None] + cols[None, :], mask=mask, other=float("-inf")) * inv_temperature
        new_max = tl.maximum(row_max, tl.max(z, 1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows past the chunk end
        rescale = tl.exp(row_max - safe_max)  # 0 on the first block
        shifted = z - safe_max[:, None]
        p = tl.exp(shifted)
        if NEED_ENTROPY:
            # re-centre the running sum on the new max: sum p'(z - m') = rescale * (sum p (z - m) + (m - m') sum p)
            shift = tl.where(row_max == float("-inf"), 0.0, row_max - safe_max)
            sum_pz = rescale * (sum_pz + shift * sum_exp) + tl.sum(p * tl.where(mask, shifted, 0.0), 1)
        sum_exp = sum_exp * rescale + tl.sum(p, 1)
        row_max = new_max
    return row_max, sum_exp, sum_pz


@triton.jit
def _write_dlogits(z_rows, dz_rows, in_range, valid, safe_targets, lse, entropy, coef, entropy_grad, vocab,
                   inv_temperature, BLOCK_ROWS: tl.constexpr, BLOCK_V: tl.constexpr, ENTROPY_GRAD: tl.constexpr,
                   NARROW_DZ: tl.constexpr):
    """dz = (c (onehot - p) - e p (log p + H)) / T over the vocabulary, over the logits in place.

    NARROW_DZ (bf16/fp16 dz over fp32 z): dz column j lands in the bytes of z column j // 2, which another
    warp of this program may not have loaded yet, so every warp loads its block before any warp stores.
    Later blocks start past every byte stored so far: one barrier per block is enough.
    Rows whose target is ignored (not `valid`) are written as zeros without loading their logits.
    """
    c = coef * inv_temperature
    e = entropy_grad * inv_temperature
    for start in range(0, vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        in_vocab = (cols < vocab)[None, :]
        mask = valid[:, None] & in_vocab
        z = tl.load(z_rows[:, None] + cols[None, :], mask=mask, other=0.0) * inv_temperature
        if NARROW_DZ:
            tl.debug_barrier()
        log_p = tl.where(mask, z - lse[:, None], 0.0)  # finite off the row end (never stored)
        p = tl.exp(log_p)
        dz = -c[:, None] * p
        if ENTROPY_GRAD:
            dz = dz - e[:, None] * p * (log_p + entropy[:, None])
        dz = tl.where(cols[None, :] == safe_targets[:, None], dz + c[:, None], dz)
        dz = tl.where(valid[:, None], dz, 0.0)
        store_mask = in_range[:, None] & in_vocab
        tl.store(dz_rows[:, None] + cols[None, :], dz.to(dz_rows.dtype.element_ty), mask=store_mask)


@triton.jit(do_not_specialize=["row_start", "n_rows"])
def _lm_head_epilogue_kernel(
    z_ptr, z_stride, dz_ptr, dz_stride, targets_ptr, logp_ptr, entropy_ptr, lse_ptr, coef_ptr, entropy_grad_ptr,
    seq_ids_ptr, agg_ptr, adv_ptr, eps_low_ptr, eps_high_ptr, seq_slope_ptr, old_ptr, ref_ptr, isw_ptr,
    row_start, n_rows, vocab, inv_temperature, delta, beta, entropy_coef,
    BLOCK_ROWS: tl.constexpr, BLOCK_V: tl.constexpr, STATS_GIVEN: tl.constexpr, SAVE_LSE: tl.constexpr,
    NEED_ENTROPY: tl.constexpr, ENTROPY_GRAD: tl.constexpr, COEFFICIENTS: tl.constexpr,
    SEQUENCE_LEVEL: tl.constexpr, HAS_OLD: tl.constexpr, HAS_DELTA: tl.constexpr, KL_TYPE: tl.constexpr,
    HAS_IS_WEIGHTS: tl.constexpr, NARROW_DZ: tl.constexpr,
):
    """COEFFICIENTS: a `_kernel_codes.COEFFICIENTS_*` code (forward only, given, or the policy loss's)."""
    local = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    in_range = local < n_rows
    rows = row_start + local
    z_rows = z_ptr + local.to(tl.int64) * z_stride
    targets = tl.load(targets_ptr + rows, mask=in_range, other=-100)
    valid = in_range & (targets != -100)
    safe_targets = tl.where(valid, targets, 0)
    target_logit = tl.load(z_rows + safe_targets, mask=valid, other=0.0) * inv_temperature

    entropy = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    if STATS_GIVEN:
        lse = tl.load(lse_ptr + rows, mask=in_range, other=0.0)
        logp = tl.where(valid, target_logit - lse, 0.0)
        if NEED_ENTROPY:
            entropy = tl.load(entropy_ptr + rows, mask=in_range, other=0.0)
    else:
        # Rows whose target is ignored are never read: their logp and entropy are 0, their lse unused.
        row_max, sum_exp, sum_pz = _online_softmax_stats(z_rows, valid, vocab, inv_temperature, BLOCK_ROWS,
                                                          BLOCK_V, NEED_ENTROPY)
        sum_exp = tl.where(valid, sum_exp, 1.0)  # ignored rows, rows past the chunk end: keep them finite
        log_sum = tl.log(sum_exp)  # >= 0: the max itself contributes exp(0) = 1
        lse = tl.where(valid, row_max + log_sum, 0.0)
        logp = tl.where(valid, (target_logit - row_max) - log_sum, 0.0)  # <= 0 by construction
        tl.store(logp_ptr + rows, logp, mask=in_range)
        if SAVE_LSE:
            tl.store(lse_ptr + rows, lse, mask=in_range)
        if NEED_ENTROPY:
            entropy = tl.where(valid, log_sum - sum_pz / sum_exp, 0.0)
            tl.store(entropy_ptr + rows, entropy, mask=in_range)

    if COEFFICIENTS != COEFFICIENTS_NONE:
        if COEFFICIENTS == COEFFICIENTS_GIVEN:
            coef = tl.load(coef_ptr + rows, mask=valid, other=0.0)
            entropy_grad = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
            if ENTROPY_GRAD:
                entropy_grad = tl.load(entropy_grad_ptr + rows, mask=valid, other=0.0)
        elif COEFFICIENTS == COEFFICIENTS_LOSS:
            coef, entropy_grad = _loss_coefficients(
                rows, in_range, valid, logp, seq_ids_ptr, agg_ptr, adv_ptr, eps_low_ptr, eps_high_ptr,
                seq_slope_ptr, old_ptr, ref_ptr, isw_ptr, delta, beta, entropy_coef,
                SEQUENCE_LEVEL, HAS_OLD, HAS_DELTA, KL_TYPE, HAS_IS_WEIGHTS)
        else:
            tl.static_assert(False, "COEFFICIENTS: not a _kernel_codes.COEFFICIENTS_* code")
        dz_rows = dz_ptr + local.to(tl.int64) * dz_stride
        _write_dlogits(z_rows, dz_rows, in_range, valid, safe_targets, lse, entropy, coef, entropy_grad, vocab,
                       inv_temperature, BLOCK_ROWS, BLOCK_V, ENTROPY_GRAD, NARROW_DZ)


# ----------------------------------------------------------------------------- policy_loss coefficients

@triton.jit
def _policy_coefficients_kernel(
    logp_ptr, mask_ptr, coef_ptr, entropy_grad_ptr, seq_ids_ptr, agg_ptr, adv_ptr, eps_low_ptr, eps_high_ptr,
    seq_slope_ptr, old_ptr, ref_ptr, isw_ptr, n_tokens, delta, beta, entropy_coef,
    BLOCK: tl.constexpr, SEQUENCE_LEVEL: tl.constexpr, HAS_OLD: tl.constexpr, HAS_DELTA: tl.constexpr,
    KL_TYPE: tl.constexpr, HAS_IS_WEIGHTS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = rows < n_tokens
    valid = in_range & (tl.load(mask_ptr + rows, mask=in_range, other=0) != 0)
    logp = tl.load(logp_ptr + rows, mask=in_range, other=0.0)
    coef, entropy_grad = _loss_coefficients(
        rows, in_range, valid, logp, seq_ids_ptr, agg_ptr, adv_ptr, eps_low_ptr, eps_high_ptr, seq_slope_ptr,
        old_ptr, ref_ptr, isw_ptr, delta, beta, entropy_coef, SEQUENCE_LEVEL, HAS_OLD, HAS_DELTA, KL_TYPE,
        HAS_IS_WEIGHTS)
    tl.store(coef_ptr + rows, coef, mask=in_range)
    tl.store(entropy_grad_ptr + rows, entropy_grad, mask=in_range)


# ----------------------------------------------------------------------------- launchers

def _loss_arguments(spec: LossSpec | None, placeholder: torch.Tensor):
    """Pointer arguments, runtime scalars and flags of the loss options (placeholders where absent)."""
    def tensor(t):
        return placeholder if t is None else t

    if spec is None:
        pointers = [placeholder] * 9
        scalars = [0.0, 0.0, 0.0]
        flags = dict(SEQUENCE_LEVEL=False, HAS_OLD=False, HAS_DELTA=False, KL_TYPE=KL_NONE.value,
                     HAS_IS_WEIGHTS=False)
        return pointers, scalars, flags
    pointers = [spec.seq_ids, spec.agg_weight, spec.advantages, spec.epsilon_low, spec.epsilon_high,
                tensor(spec.sequence_slope), tensor(spec.old_logprobs), tensor(spec.ref_logprobs),
                tensor(spec.importance_weights)]
    scalars = [0.0 if spec.delta is None else float(spec.delta), spec.beta, spec.entropy_coef]
    flags = dict(SEQUENCE_LEVEL=spec.sequence_level, HAS_OLD=spec.old_logprobs is not None,
                 HAS_DELTA=spec.delta is not None,
                 KL_TYPE=KL_TYPE_CODES[spec.kl_type] if spec.beta != 0.0 else KL_NONE.value,
                 HAS_IS_WEIGHTS=spec.importance_weights is not None)
    return pointers, scalars, flags


# Environment overrides of the epilogue's launch configuration, for a sweep on a GPU (read at every launch;
# each new value compiles one more kernel variant, the numbers do not change).
EPILOGUE_ENV = {"BLOCK_ROWS": "AWPO_KERNELS_EPILOGUE_BLOCK_ROWS", "BLOCK_V": "AWPO_KERNELS_EPILOGUE_BLOCK_V",
                "num_warps": "AWPO_KERNELS_EPILOGUE_NUM_WARPS"}
_EPILOGUE_LIMITS = {"BLOCK_ROWS": (1, 64), "BLOCK_V": (16, 65536), "num_warps": (1, 32)}


def _override(name: str, default: int) -> int:
    variable = EPILOGUE_ENV[name]
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    low, high = _EPILOGUE_LIMITS[name]
    value = int(text) if text.isdigit() else 0
    if not (low <= value <= high and value & (value - 1) == 0):
        raise ValueError(f"{variable} must be a power of two in [{low}, {high}]; got {text!r}")
    return value


def _block_sizes(vocab: int):
    """(BLOCK_ROWS, BLOCK_V, num_warps). The interpreter pays per operation, so it gets big tiles.
    Each can be overridden through EPILOGUE_ENV."""
    block_v = min(4096, triton.next_power_of_2(vocab))
    rows, warps = (16, 1) if triton_interpreting() else (1, 8)
    return _override("BLOCK_ROWS", rows), _override("BLOCK_V", block_v), _override("num_warps", warps)


class TritonEpilogue:
    """Launches the epilogue kernel on one chunk: a `_chunk_types.Epilogue`, like the torch one
    (`_epilogue_torch.TorchEpilogue`)."""

    buffers = 1  # the entropy is accumulated online: no second buffer

    def __init__(self, plan: ChunkPlan, results: ChunkResults, *, write_grad: bool, dz_dtype: torch.dtype):
        self.plan, self.results, self.write_grad, self.dz_dtype = plan, results, write_grad, dz_dtype
        placeholder = results.logprobs
        own = write_grad and plan.spec is not None                      # the policy loss's coefficients
        given = write_grad and not own and plan.coef is not None        # coefficients given by the caller
        coefficients = COEFFICIENTS_LOSS if own else COEFFICIENTS_GIVEN if given else COEFFICIENTS_NONE
        entropy_grad = (plan.entropy_grad is not None) if given else (own and plan.spec.entropy_coef != 0.0)
        pointers, scalars, flags = _loss_arguments(plan.spec if own else None, placeholder)
        self.pointers = pointers
        self.scalars = scalars
        self.flags = dict(flags, STATS_GIVEN=plan.lse is not None, SAVE_LSE=plan.save_lse,
                          NEED_ENTROPY=plan.need_entropy or entropy_grad, ENTROPY_GRAD=entropy_grad,
                          COEFFICIENTS=coefficients.value)
        if entropy_grad and not plan.need_entropy:
            raise ValueError("an entropy gradient needs the entropy: set need_entropy in the plan")
        self.outputs = [placeholder if t is None else t for t in (
            results.logprobs, results.entropy, plan.lse if plan.lse is not None else results.lse,
            plan.coef, plan.entropy_grad)]

    def __call__(self, buffers: torch.Tensor, rows: slice) -> torch.Tensor | None:
        z = buffers[0]
        n_rows, vocab = z.shape
        dz = z if self.dz_dtype == z.dtype else z.view(self.dz_dtype)[:, :vocab]
        block_rows, block_v, num_warps = _block_sizes(vocab)
        grid = (triton.cdiv(n_rows, block_rows),)
        _lm_head_epilogue_kernel[grid](
            z, z.stride(0), dz, dz.stride(0), self.plan.targets, *self.outputs, *self.pointers,
            rows.start, n_rows, vocab, self.plan.inv_temperature, *self.scalars,
            BLOCK_ROWS=block_rows, BLOCK_V=block_v, num_warps=num_warps,
            NARROW_DZ=self.write_grad and dz.dtype != z.dtype, **self.flags)
        return dz if self.write_grad else None


def policy_coefficients(spec: LossSpec, logp: torch.Tensor):
    """(c, e) for every token, by the elementwise Triton kernel (the `policy_loss` op's triton backend)."""
    n_tokens = logp.shape[0]
    coef = torch.empty_like(logp)
    entropy_grad = torch.empty_like(logp)
    pointers, scalars, flags = _loss_arguments(spec, logp)
    block = 1024
    _policy_coefficients_kernel[(max(1, triton.cdiv(n_tokens, block)),)](
        logp, spec.mask.to(torch.int8), coef, entropy_grad, *pointers, n_tokens, *scalars, BLOCK=block, **flags)
    return coef, (entropy_grad if spec.entropy_coef != 0.0 else None)


__all__ = ["TritonEpilogue", "policy_coefficients"]
