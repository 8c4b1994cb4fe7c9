"""Shared-prompt attention: a group's prompt is forwarded once for its G responses, at O(T) memory on CUDA.

A packed micro-batch (`policy_update.pack`) is one row of T tokens in segments: a prompt, then each of
its responses, then the next prompt... `segment[t]` is the segment of token t and `parent[t]` the one it
also sees: a response's prompt (a prompt token's own segment). Token q attends to key k iff

    k <= q   and   (segment[k] == segment[q]  or  segment[k] == parent[q])

Two ways to give that to the model:
- "dense" (CPU, where T is small): a [1, 1, T, T] boolean mask through the model's own attention (SDPA);
- "flex" (CUDA): a FlexAttention `BlockMask` built from the segments (`block_mask`: per 128 x 128 tile,
  empty / partial / full, computed from the segments' intervals without any T x T tensor), run by
  `shared_prompt_attention`, an attention function registered in transformers' `AttentionInterface`.
  `use_shared_attention(model)` switches the model to it for one forward and back (generation keeps
  the model's own attention, flash-attention included). FlexAttention is compiled on CUDA (fused
  kernels, block-sparse, no score matrix); on CPU it runs eagerly, forward only (torch has no
  FlexAttention backward on CPU), which is what the CPU tests check it with.

`AWPO_SHARED_ATTENTION=dense|flex` overrides the automatic choice (`attention_mode`).
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

ATTENTION_NAME = "awpo_shared_prompt"
BLOCK_SIZE = 128
MODES = ("auto", "dense", "flex")
_QUERY_ROWS_AT_ONCE = 4096  # block-mask construction works on [rows, T / BLOCK_SIZE] at a time


@dataclass
class SegmentLayout:
    """Per token of a packed row: its segment, and the segment it also attends to (its prompt)."""

    segment: torch.Tensor  # [T] int64
    parent: torch.Tensor   # [T] int64

    @property
    def length(self) -> int:
        return int(self.segment.shape[0])


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def attention_mode(device) -> str:
    """'flex' on CUDA (when FlexAttention exists), else 'dense'; AWPO_SHARED_ATTENTION overrides it."""
    choice = os.environ.get("AWPO_SHARED_ATTENTION", "auto") or "auto"
    if choice not in MODES:
        raise ValueError(f"AWPO_SHARED_ATTENTION must be one of {', '.join(MODES)}; got {choice!r}")
    if choice != "auto":
        return choice
    return "flex" if torch.device(device).type == "cuda" and flex_available() else "dense"


def dense_mask(layout: SegmentLayout) -> torch.Tensor:
    """[1, 1, T, T] bool: causal, and a token sees its own segment plus, for a response, its prompt."""
    segment, parent = layout.segment, layout.parent
    position = torch.arange(layout.length, device=segment.device)
    causal = position[None, :] <= position[:, None]
    allowed = (segment[None, :] == segment[:, None]) | (segment[None, :] == parent[:, None])
    return (causal & allowed)[None, None]


# ----------------------------------------------------------------------------- the block mask

def _intervals(layout: SegmentLayout):
    """Per token: start of its own segment, and [start, end) of its parent segment (empty for prompts)."""
    segment, parent = layout.segment, layout.parent
    count = int(segment.max()) + 1 if layout.length else 0
    positions = torch.arange(layout.length, device=segment.device)
    starts = torch.full((count,), layout.length, device=segment.device).scatter_reduce(0, segment, positions, "amin")
    ends = torch.zeros(count, dtype=torch.long, device=segment.device).scatter_reduce(0, segment, positions + 1,
                                                                                      "amax")
    has_parent = parent != segment
    parent_start = torch.where(has_parent, starts[parent], 0)
    parent_end = torch.where(has_parent, ends[parent], 0)
    return starts[segment], parent_start, parent_end


def _block_classes(layout: SegmentLayout, block: int):
    """[nQ, nK] bools (partial, full): a tile with some allowed pairs, a tile whose pairs are all allowed.

    Token t allows the keys [own_start, t] and [parent_start, parent_end), two disjoint intervals, so the
    allowed keys of t in kv tile j are counted from interval overlaps, [rows, nK] at a time.
    """
    length, device = layout.length, layout.segment.device
    own_start, parent_start, parent_end = _intervals(layout)
    tiles = -(-length // block)
    tile_start = torch.arange(tiles, device=device) * block
    tile_end = (tile_start + block).clamp(max=length)

    def overlap(start, end):  # [rows] intervals [start, end) -> [rows, nK] keys they hold in each kv tile
        low = torch.maximum(start[:, None], tile_start[None, :])
        return (torch.minimum(end[:, None], tile_end[None, :]) - low).clamp(min=0)

    any_rows, all_rows = [], []
    for first in range(0, length, _QUERY_ROWS_AT_ONCE):
        rows = torch.arange(first, min(length, first + _QUERY_ROWS_AT_ONCE), device=device)
        allowed = overlap(own_start[rows], rows + 1) + overlap(parent_start[rows], parent_end[rows])
        any_rows.append(allowed > 0)
        all_rows.append(allowed == (tile_end - tile_start)[None, :])
    padding = tiles * block - length  # rows past T: allow nothing, block nothing
    any_allowed = torch.cat(any_rows + [torch.zeros(padding, tiles, dtype=torch.bool, device=device)])
    all_allowed = torch.cat(all_rows + [torch.ones(padding, tiles, dtype=torch.bool, device=device)])
    any_tile = any_allowed.view(tiles, block, tiles).any(1)
    full_tile = all_allowed.view(tiles, block, tiles).all(1) & ((tile_end - tile_start) == block)[None, :]
    return any_tile & ~full_tile, full_tile & any_tile


def _sparse(tiles: torch.Tensor):
    """[nQ, nK] bools -> (counts [1, 1, nQ], indices [1, 1, nQ, nK]) with each row's tiles first."""
    counts = tiles.sum(-1, dtype=torch.int32)
    order = torch.argsort((~tiles).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts[None, None], order[None, None]


def _mask_mod(segment: torch.Tensor, parent: torch.Tensor):
    def mask_mod(batch, head, q, kv):
        return (kv <= q) & ((segment[kv] == segment[q]) | (segment[kv] == parent[q]))
    return mask_mod


def block_mask(layout: SegmentLayout, block: int = BLOCK_SIZE):
    """The FlexAttention BlockMask of the layout: O(T) memory in tokens (the tile tables are (T/block)^2)."""
    from torch.nn.attention.flex_attention import BlockMask

    tiles = -(-layout.length // block)
    padded = tiles * block
    # the mask_mod may be evaluated on the padded tail of the last tile: it must index in bounds and match nothing
    segment = torch.full((padded,), -1, dtype=torch.long, device=layout.segment.device)
    parent = torch.full((padded,), -2, dtype=torch.long, device=layout.segment.device)
    segment[: layout.length], parent[: layout.length] = layout.segment, layout.parent
    partial, full = _block_classes(layout, block)
    counts, indices = _sparse(partial)
    full_counts, full_indices = _sparse(full)
    return BlockMask.from_kv_blocks(counts, indices, full_counts, full_indices, BLOCK_SIZE=block,
                                    mask_mod=_mask_mod(segment, parent), seq_lengths=(layout.length, layout.length))


# ----------------------------------------------------------------------------- the attention function

@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention)


def _flex_attention(device: torch.device):
    if device.type == "cuda":
        return _compiled_flex_attention()
    from torch.nn.attention.flex_attention import flex_attention
    return flex_attention  # eager (a dense reference implementation): CPU tests, forward only


def shared_prompt_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [B, Hq, T, D], key/value [B, Hkv, T, D], a BlockMask ->
    ([B, T, Hq, D], None)."""
    from torch.nn.attention.flex_attention import BlockMask

    if not isinstance(attention_mask, BlockMask):
        raise ValueError(f"{ATTENTION_NAME} attention needs a FlexAttention BlockMask from awpo.attention.block_mask; "
                         f"got {type(attention_mask).__name__}")
    if dropout:
        raise ValueError(f"{ATTENTION_NAME} attention has no dropout; set the model's attention_dropout to 0")
    unsupported = [name for name in ("sliding_window", "softcap", "s_aux") if kwargs.get(name) is not None]
    if unsupported:
        raise NotImplementedError(f"{ATTENTION_NAME} attention does not support {', '.join(unsupported)}")
    device = query.device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else query.dtype
    query, key, value = (t.to(dtype) for t in (query, key, value))  # autocast does not reach FlexAttention
    out = _flex_attention(device)(query, key, value, block_mask=attention_mask, scale=scaling,
                                  enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def register() -> str:
    """Register `shared_prompt_attention` in transformers' AttentionInterface (once); its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, shared_prompt_attention)
    return ATTENTION_NAME


@contextlib.contextmanager
def use_shared_attention(model):
    """The model runs `shared_prompt_attention` inside the block, its own attention again after it."""
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = register()
    try:
        yield
    finally:
        config._attn_implementation = previous
