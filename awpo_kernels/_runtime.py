"""Backend choice, input checks and layout handling shared by the public ops.

Checks raise `ValueError` (or `IndexError` for token ids) naming the bad argument. The token-id, seq_ids,
finiteness and batch-count checks read tensor values, which costs one host synchronisation on CUDA; set
`AWPO_KERNELS_CHECK_INPUTS=0` to skip them in a trusted hot loop (shape, device and option checks stay):
then the ops make no host synchronisation at all (the CUDA tests run them under
`torch.cuda.set_sync_debug_mode("error")`).

Tuning switches for a GPU sweep, read at every call (no effect on the numbers):
  AWPO_KERNELS_OVERLAP=1    two CUDA streams: the epilogue of chunk i+1 runs while chunk i's backward GEMMs
                            do (two logits workspaces instead of one).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch

from ._constants import IGNORE_INDEX
from .options import LossOptions, check_choice

BACKENDS = ("auto", "torch", "triton", "reference")


# ----------------------------------------------------------------------------- backend choice

def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """'auto' (default) picks Triton on CUDA and chunked torch on CPU.

    `backend` (or `AWPO_KERNELS_BACKEND`) may force 'triton' (on CPU only under TRITON_INTERPRET=1),
    'torch' or 'reference' (the plain spec, full logits).
    """
    choice = backend or os.environ.get("AWPO_KERNELS_BACKEND") or "auto"
    check_choice("backend", choice, BACKENDS)
    if choice == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if choice == "triton" and device.type != "cuda" and not triton_interpreting():
        raise ValueError(
            "backend='triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before importing triton, or use backend='torch'"
        )
    return choice


# ----------------------------------------------------------------------------- checks

def values_checked() -> bool:
    return os.environ.get("AWPO_KERNELS_CHECK_INPUTS", "1") != "0"


def overlap_enabled() -> bool:
    return os.environ.get("AWPO_KERNELS_OVERLAP", "0") == "1"


def check_device(name: str, tensor: torch.Tensor | None, device: torch.device) -> None:
    """A per-token or per-sequence tensor must live with the inputs (a 0-dim CPU tensor is a scalar)."""
    if tensor is None or tensor.device == device or (tensor.dim() == 0 and tensor.device.type == "cpu"):
        return
    raise ValueError(f"{name} must be on the inputs' device ({device}); got {tensor.device}")


def check_positive(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and value == value and value != float("inf")):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")


def check_shape(name: str, tensor: torch.Tensor | None, shape, what: str) -> None:
    if tensor is not None and tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}); got {tuple(tensor.shape)}")


def check_floating(name: str, tensor: torch.Tensor | None) -> None:
    if tensor is not None and not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got {tensor.dtype}")


def check_token_ids(name: str, targets: torch.Tensor, vocab_size: int) -> None:
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be an int64 (or int32) tensor of token ids; got {targets.dtype}")
    if not values_checked() or targets.numel() == 0:
        return
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= vocab_size))
    if bool(bad.any()):
        first = targets[bad][0].item()
        raise IndexError(f"{name} holds token id {first} outside [0, {vocab_size}) (only {IGNORE_INDEX} "
                         f"may mark ignored positions)")


def check_finite(name: str, tensor: torch.Tensor | None, allow_nan: bool = False) -> None:
    if tensor is None or not values_checked() or tensor.numel() == 0:
        return
    bad = torch.isinf(tensor) if allow_nan else ~torch.isfinite(tensor)
    if bool(bad.any()):
        kind = "inf" if allow_nan else "NaN or inf"
        raise ValueError(f"{name} contains {kind} values")


def check_epsilon(name: str, value, num_seqs: int) -> None:
    """A tensor epsilon is 0-dim or one per sequence, and finite (floats were checked by LossOptions)."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            check_shape(name, value, (num_seqs,), "one value per sequence")
        check_finite(name, value)


# ----------------------------------------------------------------------------- layouts

@dataclass
class FlatLayout:
    """Tokens flattened to [N]: `seq_ids[n]` is the sequence of token n, `num_seqs` = S."""

    hidden: torch.Tensor | None  # [N, H]
    targets: torch.Tensor        # [N]
    seq_ids: torch.Tensor        # [N] int64
    num_seqs: int
    shape: tuple                 # shape of the caller's targets, to reshape per-token outputs
    padded_length: int | None    # T of the padded layout (dr_grpo's default max_completion_length)

    def flatten(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.reshape(-1)


def flat_layout(targets: torch.Tensor, advantages: torch.Tensor, seq_ids: torch.Tensor | None,
                hidden: torch.Tensor | None = None, targets_name: str = "targets") -> FlatLayout:
    """Padded layout: targets [B, T], advantages [B]. Packed: targets [N], seq_ids [N], advantages [S]."""
    if advantages.dim() != 1:
        raise ValueError(f"advantages must be 1-D (one value per sequence); got shape {tuple(advantages.shape)}")
    num_seqs = advantages.shape[0]
    check_device("advantages", advantages, targets.device)
    if seq_ids is None:
        if targets.dim() != 2:
            raise ValueError(f"{targets_name} must be [B, T] in the padded layout (or pass seq_ids for the packed "
                             f"layout); got shape {tuple(targets.shape)}")
        B, T = targets.shape
        check_shape("advantages", advantages, (B,), f"one per row of {targets_name}")
        ids = torch.arange(B * T, device=targets.device) // max(T, 1)
        padded_length = T
    else:
        if targets.dim() != 1:
            raise ValueError(f"{targets_name} must be 1-D [N] in the packed layout; got shape {tuple(targets.shape)}")
        check_shape("seq_ids", seq_ids, targets.shape, f"one per token of {targets_name}")
        if seq_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"seq_ids must be an integer tensor; got {seq_ids.dtype}")
        check_device("seq_ids", seq_ids, targets.device)
        if values_checked() and seq_ids.numel() and bool(((seq_ids < 0) | (seq_ids >= num_seqs)).any()):
            raise IndexError(f"seq_ids must lie in [0, {num_seqs}) (len(advantages)); got values outside it")
        ids = seq_ids.long()
        padded_length = None
    flat_hidden = None
    if hidden is not None:
        check_shape("hidden", hidden, (*targets.shape, hidden.shape[-1]), f"{targets_name}'s shape + [H]")
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    return FlatLayout(flat_hidden, targets.reshape(-1), ids, num_seqs, tuple(targets.shape), padded_length)


# The batch counts of the policy loss and the loss types whose denominator each one is (SPEC section 3).
BATCH_COUNTS = {"num_items_in_batch": ("dapo",), "num_seqs_in_batch": ("grpo", "dr_grpo")}
_COUNT_HINTS = {
    ("num_items_in_batch", "grpo"): "; grpo / dr_grpo take their sequence count as num_seqs_in_batch",
    ("num_items_in_batch", "dr_grpo"): "; grpo / dr_grpo take their sequence count as num_seqs_in_batch",
    ("num_seqs_in_batch", "dapo"): "; dapo takes its token count as num_items_in_batch",
}
_BNPO_HINT = "; bnpo is the token mean of this call: for a token mean over a larger batch use loss_type='dapo' " \
             "with num_items_in_batch"


def check_count(name: str, value, loss_type: str) -> None:
    """A batch count (`BATCH_COUNTS`): None, or a finite number > 0 (a 0-dim tensor: its value is checked unless
    AWPO_KERNELS_CHECK_INPUTS=0), given only for a loss type whose denominator it is."""
    if value is None:
        return
    users = BATCH_COUNTS[name]
    if loss_type not in users:
        hint = _BNPO_HINT if loss_type == "bnpo" else _COUNT_HINTS.get((name, loss_type), "")
        raise ValueError(f"{name} is a count of loss_type {' / '.join(map(repr, users))} only; "
                         f"loss_type={loss_type!r} does not use it (pass None){hint}")
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
            raise ValueError(f"{name} must be a number or a 0-dim real tensor; got a {value.dtype} tensor of shape "
                             f"{tuple(value.shape)}")
        if not values_checked():
            return
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (or a 0-dim tensor holding one); got {value!r}")


def check_loss_inputs(layout: FlatLayout, options: LossOptions, *, old_logprobs: torch.Tensor | None,
                      ref_logprobs: torch.Tensor | None, importance_weights: torch.Tensor | None,
                      num_items_in_batch, num_seqs_in_batch=None) -> LossOptions:
    """The per-call checks of the policy loss (the options validated themselves when built): devices and
    shapes of the tensors, ref_logprobs when beta > 0, dr_grpo's length, the batch counts. Returns the options
    with max_completion_length resolved (dr_grpo in the padded layout defaults to T)."""
    device = layout.seq_ids.device
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs),
                    ("importance_weights", importance_weights), ("epsilon_low", options.epsilon_low),
                    ("epsilon_high", options.epsilon_high), ("num_items_in_batch", num_items_in_batch),
                    ("num_seqs_in_batch", num_seqs_in_batch)):
        if isinstance(t, torch.Tensor):
            check_device(name, t, device)
    check_epsilon("epsilon_low", options.epsilon_low, layout.num_seqs)
    check_epsilon("epsilon_high", options.epsilon_high, layout.num_seqs)
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs),
                    ("importance_weights", importance_weights)):
        check_shape(name, t, layout.shape, "the shape of the targets")
        check_floating(name, t)
    if options.beta > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs is required when beta > 0")
    if options.loss_type == "dr_grpo" and not options.max_completion_length:
        if layout.padded_length is None:
            raise ValueError("max_completion_length is required for loss_type='dr_grpo' in the packed layout")
        options = replace(options, max_completion_length=layout.padded_length)
    check_count("num_items_in_batch", num_items_in_batch, options.loss_type)
    check_count("num_seqs_in_batch", num_seqs_in_batch, options.loss_type)
    return options


# ----------------------------------------------------------------------------- chunk sizing

# Workspace budget of one chunk of fp32 logits (all of its [rows, V] buffers together). On CPU 128 MiB
# (~208 rows at V=151936): the benchmark sweep (N=2048, H=256) measured 0.06-0.08x the materialised
# baseline's peak extra memory at 128-208 rows against 0.11x at 432, with GEMM throughput unchanged
# between 128 and 864 rows; on a GPU 1 GiB keeps cuBLAS tiles full.
CPU_CHUNK_BYTES = 128 * 2**20
GPU_CHUNK_BYTES = 2**30


def check_chunk_size(chunk_size) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")


# Chunk rows are balanced in multiples of this many rows (cuBLAS tiles on a GPU; on CPU, 16 as before).
GPU_CHUNK_ALIGN = 128
CPU_CHUNK_ALIGN = 16


def chunk_bounds(num_rows: int, max_rows: int, align: int) -> list[tuple[int, int]]:
    """(start, stop) of the fewest chunks of at most `max_rows` rows covering `num_rows`, balanced.

    Chunk sizes are multiples of `align` (when max_rows >= align) that differ by at most one `align`
    block, instead of full chunks and a ragged tail: 16384 rows at most 1760 a chunk give 2 x 1536 +
    8 x 1664, not 9 x 1760 + 544. Only the last chunk can end off a block (where num_rows does), and it
    is one of the larger ones, so that ending early keeps it within a block of the others.
    """
    if num_rows <= 0:
        return []
    align = align if max_rows >= align else 1
    blocks = -(-num_rows // align)
    per_chunk = max(1, max_rows // align)
    chunks = -(-blocks // per_chunk)
    base, extra = divmod(blocks, chunks)
    bounds, start = [], 0
    for index in range(chunks):
        stop = min(num_rows, start + (base + (index >= chunks - extra)) * align)
        bounds.append((start, stop))
        start = stop
    return bounds


def default_chunk_size(vocab_size: int, device: torch.device, bytes_per_row: int | None = None) -> int:
    """Rows per chunk so that a chunk's workspace stays within the device budget.

    `bytes_per_row` is the workspace of one row (default: one fp32 logits row, 4 * vocab_size).
    Multiples of 16 rows when possible (GEMM tile friendly).
    """
    budget = GPU_CHUNK_BYTES if device.type == "cuda" else CPU_CHUNK_BYTES
    per_row = bytes_per_row if bytes_per_row is not None else 4 * vocab_size
    rows = max(1, budget // max(per_row, 1))
    return rows - rows % 16 if rows >= 16 else rows
