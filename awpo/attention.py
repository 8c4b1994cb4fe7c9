"""Shared-prompt attention: a group's prompt is forwarded once for its G responses, attending to the allowed pairs only.

A packed micro-batch (`policy_update.pack`) is one row of T tokens in segments: a prompt, then each of
its responses, then the next prompt... `segment[t]` is the segment of token t and `parent[t]` the one it
also sees: a response's prompt (a prompt token's own segment). Token q attends to key k iff

    k <= q   and   (segment[k] == segment[q]  or  segment[k] == parent[q])

Three ways to give that to the model (`attention_mode`):
- "grouped" (the CPU default): `grouped_attention`, an attention function registered in transformers'
  `AttentionInterface`, computes only the blocks that hold allowed pairs (`grouped_plan`, once per
  micro-batch): every prompt attends causally to itself, every response to [its prompt's keys ; its own
  keys, causally]. Prompts are batched together, responses in buckets of similar lengths (padding traded
  against calls, and each call small enough for its scores to stay in cache), each padded to its longest
  member under a small additive mask. The row's tokens are gathered into their block slots and back with
  gathers both ways (a scatter-add backward is slow on CPU), and a response's copy of its prompt's keys and
  values sums back into them in backward. A call runs as explicit matmuls and a softmax in the autocast
  dtype (eager attention; the query heads that share a key-value head share one matmul), which on CPU beats
  SDPA's flash kernel, whose backward is slow; a block whose scores would exceed `_MATH_SCORE_BYTES` goes
  through SDPA instead (O(T) memory, slower). Memory: the probabilities are kept for backward, 2 bytes x
  heads x the pairs computed (`GroupedPlan.computed_pairs`) per layer in bf16, ~28 MB per layer at the
  shape below.
  Measured (one layer forward + backward, 9 query / 3 key-value heads of 64, bf16, 2 threads, interleaved in
  one process, AMD EPYC with avx512_bf16, a shared machine in a quiet minute): 4 groups of a 340-token
  prompt and 8 80-token responses (T = 3920, the issue's shape): dense mask 805 ms, "grouped" 75 ms (10.7x);
  2 groups, prompts 340 +-10% and responses 80 +-50% (T = 2080, the default micro-batch): dense 231 ms,
  "grouped" 51 ms (4.5x). Its matmuls run at ~280 GFLOP/s there, near the machine's bf16 bmm rate. Earlier
  variants at T = 3920: the same blocks through SDPA's flash kernel 135 ms, plain causal SDPA over the row
  410 ms; FlexAttention has no CPU backward. The whole default update (`python -m benchmarks.train_step`):
  dense 27.8 s, "grouped" 16.0 s (1.75x; the linear layers' GEMMs and the fp32 LM head are most of the rest).
- "dense": a [1, 1, T, T] boolean mask through the model's own attention (SDPA), which computes every
  pair of the row (15.7% of the causal pairs are allowed at the shape above);
- "flex" (the CUDA default): a FlexAttention `BlockMask` built from the segments (`block_mask`: per 128 x
  128 tile, empty / partial / full, computed from the segments' intervals without any T x T tensor), run
  by `shared_prompt_attention`. FlexAttention is compiled on CUDA (fused kernels, block-sparse, no score
  matrix); on CPU it runs eagerly, forward only (torch 2.13 has no FlexAttention backward on CPU, compiled
  or not), which is what the CPU tests check it with.

`use_shared_attention(model)` / `use_grouped_attention(model)` switch the model to the registered function
for one forward and back (generation keeps the model's own attention, flash-attention included).
`AWPO_SHARED_ATTENTION=grouped|dense|flex` overrides the automatic choice.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass, field

import torch

ATTENTION_NAME = "awpo_shared_prompt"
GROUPED_ATTENTION_NAME = "awpo_grouped_prompt"
GROUPED_PLAN_KWARG = "awpo_grouped_plan"  # the model's forward hands its extra kwargs down to the attention function
RANGE = "awpo::attention"  # the profiler range around the registered attention functions' forward
BLOCK_SIZE = 128
MODES = ("auto", "grouped", "dense", "flex")
# a "grouped" block whose bf16 scores would take more than this goes through SDPA (O(T) memory) instead of matmuls
_MATH_SCORE_BYTES = 512 * 2 ** 20
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
    """'flex' on CUDA (when FlexAttention exists), else 'grouped'; AWPO_SHARED_ATTENTION overrides it."""
    choice = os.environ.get("AWPO_SHARED_ATTENTION", "auto") or "auto"
    if choice not in MODES:
        raise ValueError(f"AWPO_SHARED_ATTENTION must be one of {', '.join(MODES)}; got {choice!r}")
    if choice != "auto":
        return choice
    return "flex" if torch.device(device).type == "cuda" and flex_available() else "grouped"


def dense_mask(layout: SegmentLayout) -> torch.Tensor:
    """[1, 1, T, T] bool: causal, and a token sees its own segment plus, for a response, its prompt."""
    segment, parent = layout.segment, layout.parent
    position = torch.arange(layout.length, device=segment.device)
    causal = position[None, :] <= position[:, None]
    allowed = (segment[None, :] == segment[:, None]) | (segment[None, :] == parent[:, None])
    return (causal & allowed)[None, None]


# ----------------------------------------------------------------------------- the grouped plan

@dataclass
class BlockBatch:
    """One batched call of `grouped_attention`: `count` blocks of `width` query slots each (the prompt batch, or a
    bucket of responses of similar lengths), at slots [start, start + count * width) of the row's slot layout."""

    start: int
    count: int
    width: int
    prompt_width: int                 # responses: their prompts' key slots come first (0 for the prompt batch)
    owner: torch.Tensor | None        # responses: [count] each one's prompt (its block in the prompt batch)
    mask: torch.Tensor                # [count or 1, width, prompt_width + width] bool: the keys each query sees
    keys: torch.Tensor                # [count, prompt_width + width] the token behind each key slot
    owner_runs: list = field(default_factory=list)  # (prompt, first, end): members [first, end) share a prompt
    _bias: dict = field(default_factory=dict, repr=False)  # dtype -> additive mask, made once per row

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask (0 / -inf), [count or 1, 1, 1, width, keys], in `dtype`: every layer shares it."""
        if dtype not in self._bias:
            zero = torch.zeros((), dtype=dtype, device=self.mask.device)
            self._bias[dtype] = torch.where(self.mask, zero, float("-inf"))[:, None, None]
        return self._bias[dtype]

    @property
    def computed_pairs(self) -> int:
        return self.count * self.width * self.keys.shape[1]


@dataclass
class GroupedPlan:
    """How `grouped_attention` lays a packed row of `length` tokens out in blocks: every token gets one slot,
    `source[t]`; padding slots (to the longest member of a batch) repeat a token of their segment, so that every
    index is in bounds, and are masked out as keys and dropped as queries, so their gradients are exactly zero."""

    length: int
    slot_rows: torch.Tensor           # [S] the token each slot reads
    slot_real: torch.Tensor           # [S] bool: the slot is its token's own (not padding)
    source: torch.Tensor              # [T] each token's slot
    prompts: BlockBatch               # every prompt, causal over itself
    responses: list[BlockBatch]       # every response over [its prompt ; itself causally], in length buckets
    prompt_calls: list[int]           # prompts per call of the prompt batch (within _MAX_PAIRS_PER_CALL)

    @property
    def computed_pairs(self) -> int:
        """(query, key) pairs one layer computes, padding and masked pairs included."""
        return self.prompts.computed_pairs + sum(block.computed_pairs for block in self.responses)


# a batched block call costs about as much as this many (query, key) pairs beyond its pairs (launch, gathers,
# Python): the length buckets of the responses trade padding against calls with it
_PAIRS_PER_CALL = 16384
# and a call of more pairs than this runs slower per pair (its scores leave the caches: measured at 9 heads, bf16,
# 2 threads, a bucket of 4 x 80-token responses of 340-token prompts ran 25% faster than one of 32)
_MAX_PAIRS_PER_CALL = 160_000


def _segment_spans(layout: SegmentLayout):
    """(first token, end) of every segment id, checking that each segment is one run of tokens with one parent."""
    segment, parent = layout.segment.tolist(), layout.parent.tolist()
    spans, parents = {}, {}
    for t, (seg, par) in enumerate(zip(segment, parent)):
        first, end = spans.get(seg, (t, t))
        if end != t:
            raise ValueError(f"layout: segment {seg} is not contiguous (token {t} after a gap): 'grouped' attention "
                             "needs each prompt and response as one run of tokens, as pack() lays them out")
        if parents.setdefault(seg, par) != par:
            raise ValueError(f"layout: segment {seg} has tokens with different parents ({parents[seg]}, {par})")
        spans[seg] = (first, t + 1)
    return spans, parents


def _padded_rows(spans: list[tuple[int, int]], width: int) -> torch.Tensor:
    """[len(spans), width] positions of each span, its last token repeated as padding."""
    offsets = torch.arange(width)
    return torch.stack([torch.clamp(offsets, max=end - first - 1) + first for first, end in spans])


def _length_buckets(lengths: list[int], prompt_lengths: list[int]) -> list[tuple[int, int]]:
    """Split responses sorted by decreasing length (`lengths`, and their prompts' `prompt_lengths`) into runs
    [i, j) minimising the pairs computed (each run padded to its longest response and prompt) plus
    `_PAIRS_PER_CALL` per run, each run within `_MAX_PAIRS_PER_CALL` unless it has one member (dynamic
    programming over the runs; a run's pairs only grow as it reaches back to longer responses)."""
    count = len(lengths)
    best, cut = [0.0] + [math.inf] * count, [0] * (count + 1)
    for j in range(1, count + 1):
        longest_prompt = 0
        for i in range(j - 1, -1, -1):
            longest_prompt = max(longest_prompt, prompt_lengths[i])
            pairs = (j - i) * lengths[i] * (longest_prompt + lengths[i])
            if pairs > _MAX_PAIRS_PER_CALL and j - i > 1:
                break
            if best[i] + pairs + _PAIRS_PER_CALL < best[j]:
                best[j], cut[j] = best[i] + pairs + _PAIRS_PER_CALL, i
    runs, j = [], count
    while j:
        runs.append((cut[j], j))
        j = cut[j]
    return runs[::-1]


def grouped_plan(layout: SegmentLayout) -> GroupedPlan:
    """The blocks of a packed row: each prompt (a segment that is its own parent), and each response with its
    prompt, which must come before it; responses batched in buckets of similar lengths. Raises ValueError for a
    layout that is not prompts and their responses, each one contiguous run of tokens."""
    device, length = layout.segment.device, layout.length
    if length == 0:
        raise ValueError("layout: an empty row has no attention to compute")
    spans, parents = _segment_spans(layout)
    prompts = [seg for seg in spans if parents[seg] == seg]
    responses = [seg for seg in spans if parents[seg] != seg]
    for seg in responses:
        prompt = parents[seg]
        if prompt not in spans or parents[prompt] != prompt:
            raise ValueError(f"layout: response segment {seg}'s parent {prompt} is not a prompt segment of the row")
        if spans[prompt][1] > spans[seg][0]:
            raise ValueError(f"layout: response segment {seg} starts before its prompt {prompt} ends")
    size = {seg: end - first for seg, (first, end) in spans.items()}
    prompt_width = max(size[seg] for seg in prompts)
    prompt_rows = _padded_rows([spans[seg] for seg in prompts], prompt_width)
    causal = torch.arange(prompt_width)[None, :] <= torch.arange(prompt_width)[:, None]
    blocks = [BlockBatch(0, len(prompts), prompt_width, 0, None, causal[None], prompt_rows)]
    rows = [prompt_rows.reshape(-1)]
    start = prompt_rows.numel()
    prompt_index = {seg: i for i, seg in enumerate(prompts)}
    ordered = sorted(responses, key=lambda seg: (-size[seg], spans[seg][0]))
    lengths, prompt_lengths = [size[seg] for seg in ordered], [size[parents[seg]] for seg in ordered]
    for i, j in _length_buckets(lengths, prompt_lengths):
        width, keys_width = lengths[i], max(prompt_lengths[i:j])
        members = sorted(ordered[i:j], key=lambda seg: (prompt_index[parents[seg]], spans[seg][0]))
        owners = [prompt_index[parents[seg]] for seg in members]
        runs = [(g, owners.index(g), len(owners) - owners[::-1].index(g)) for g in dict.fromkeys(owners)]
        owner = torch.tensor(owners)
        own = _padded_rows([spans[seg] for seg in members], width)
        member_prompts = torch.tensor([size[parents[seg]] for seg in members])
        sees_prompt = (torch.arange(keys_width)[None, :] < member_prompts[:, None])[:, None, :].expand(-1, width, -1)
        sees_own = torch.arange(width)[None, :] <= torch.arange(width)[:, None]
        mask = torch.cat([sees_prompt, sees_own[None].expand(len(members), -1, -1)], dim=2)
        keys = torch.cat([prompt_rows[owner, :keys_width], own], dim=1)
        blocks.append(BlockBatch(start, len(members), width, keys_width, owner, mask, keys, runs))
        rows.append(own.reshape(-1))
        start += own.numel()
    slot_rows = torch.cat(rows)
    source = torch.full((length,), -1, dtype=torch.long)
    slot_real = torch.zeros(slot_rows.numel(), dtype=torch.bool)
    for block in blocks:  # a token's own slot: its offset in its segment, within its block's row
        block_rows = slot_rows[block.start:block.start + block.count * block.width].view(block.count, block.width)
        offsets = torch.arange(block.width)
        firsts = block_rows[:, 0]
        real = offsets[None, :] < (block_rows[:, -1] - firsts + 1)[:, None]
        slots = block.start + torch.arange(block.count * block.width).view(block.count, block.width)
        source[block_rows[real]] = slots[real]
        slot_real[slots[real]] = True
    for block in blocks:
        block.mask, block.keys = block.mask.to(device), block.keys.to(device)
        block.owner = None if block.owner is None else block.owner.to(device)
    per_call = max(1, _MAX_PAIRS_PER_CALL // prompt_width ** 2)
    prompt_calls = [min(per_call, len(prompts) - first) for first in range(0, len(prompts), per_call)]
    return GroupedPlan(length, slot_rows.to(device), slot_real.to(device), source.to(device), blocks[0], blocks[1:],
                       prompt_calls)


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
    _check_call(ATTENTION_NAME, dropout, kwargs)
    device = query.device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else query.dtype
    query, key, value = (t.to(dtype) for t in (query, key, value))  # autocast does not reach FlexAttention
    with torch.profiler.record_function(RANGE):
        out = _flex_attention(device)(query, key, value, block_mask=attention_mask, scale=scaling,
                                      enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _check_call(name: str, dropout: float, kwargs: dict) -> None:
    if dropout:
        raise ValueError(f"{name} attention has no dropout; set the model's attention_dropout to 0")
    unsupported = [key for key in ("sliding_window", "softcap", "s_aux") if kwargs.get(key) is not None]
    if unsupported:
        raise NotImplementedError(f"{name} attention does not support {', '.join(unsupported)}")


class _RowGather(torch.autograd.Function):
    """`x.index_select(0, index)` whose backward is a gather too, not a scatter-add (slow on CPU): the gradient of
    row t is the output gradient at `back[t]`, its one slot; every other slot of t must have a zero gradient
    (padding), or be zeroed by `back_valid` (False: the output slot's gradient is dropped)."""

    @staticmethod
    def forward(ctx, x, index, back, back_valid):
        ctx.save_for_backward(back, back_valid)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        back, back_valid = ctx.saved_tensors
        grad = grad.index_select(0, back)
        if back_valid is not None:
            grad = grad.masked_fill(~back_valid.view(-1, *[1] * (grad.dim() - 1)), 0)
        return grad, None, None, None


class _RepeatRows(torch.autograd.Function):
    """`x.index_select(0, owner)` for `owner` in runs of equal values (`runs`: (row, first, end)): the backward
    sums each run's gradients (a sum per run, where index_select's backward would scatter-add row by row)."""

    @staticmethod
    def forward(ctx, x, owner, runs):
        ctx.runs, ctx.rows = runs, x.shape[0]
        return x.index_select(0, owner)

    @staticmethod
    def backward(ctx, grad):
        out = grad.new_zeros(ctx.rows, *grad.shape[1:])
        for row, first, end in ctx.runs:
            out[row] = grad[first:end].sum(0)
        return out, None, None


def _block_attention(query, key, value, bias, mask, scaling: float, causal: bool):
    """One batch of blocks: query [N, L, Hq, D], key / value [N, Lk, Hkv, D], bias [N or 1, 1, 1, L, Lk]
    additive and mask its bool form for SDPA (`causal`: the plain causal mask, which SDPA takes without one)
    -> [N * L, Hq, D]."""
    count, width, heads, dim = query.shape
    kv_heads = key.shape[2]
    group = heads // kv_heads
    # [N, Hkv, group * L, D]: the query heads that share a key-value head stacked, so one matmul serves them
    q = query.view(count, width, kv_heads, group, dim).permute(0, 2, 3, 1, 4).reshape(count, kv_heads, -1, dim)
    k, v = key.transpose(1, 2), value.transpose(1, 2)
    if q.numel() // dim * k.shape[2] * q.element_size() <= _MATH_SCORE_BYTES:
        scores = torch.matmul(q * scaling, k.transpose(-1, -2)).view(count, kv_heads, group, width, -1)
        probs = torch.softmax(scores + bias, dim=-1).view(count, kv_heads, group * width, -1)
        out = torch.matmul(probs, v)
    else:  # flash attention: no score matrix kept for backward
        out = torch.nn.functional.scaled_dot_product_attention(
            q.view(count, heads, width, dim), k, v, attn_mask=None if causal else mask[:, None], is_causal=causal,
            scale=scaling, enable_gqa=group > 1)
    return out.view(count, kv_heads, group, width, dim).permute(0, 3, 1, 2, 4).reshape(count * width, heads, dim)


def grouped_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query [1, Hq, T, D], key/value [1, Hkv, T, D] of a packed row and its
    `GroupedPlan` (the `awpo_grouped_plan` keyword argument of the model's forward) -> ([1, T, Hq, D], None).

    It computes the prompt blocks and the response blocks of the plan (module docstring), under the caller's
    autocast dtype (bf16 matmuls, a bf16 softmax that accumulates in fp32), and puts their rows back in order."""
    plan = kwargs.get(GROUPED_PLAN_KWARG)
    if not isinstance(plan, GroupedPlan):
        raise ValueError(f"{GROUPED_ATTENTION_NAME} attention needs the row's GroupedPlan (from "
                         f"awpo.attention.grouped_plan) as the model's {GROUPED_PLAN_KWARG}= argument; got "
                         f"{type(plan).__name__}")
    _check_call(GROUPED_ATTENTION_NAME, dropout, kwargs)
    if query.shape[0] != 1 or query.shape[2] != plan.length or key.shape[2] != plan.length:
        raise ValueError(f"{GROUPED_ATTENTION_NAME} attention takes one packed row of {plan.length} tokens; got "
                         f"query {tuple(query.shape)}, key {tuple(key.shape)}")
    device = query.device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else query.dtype
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    # the dtypes here are chosen, not autocast's
    with torch.autocast(device.type, enabled=False), torch.profiler.record_function(RANGE):
        # every token to its slot, [S, H, D], then split by block batch (one split: its backward is one cat)
        sizes = [plan.prompts.count * plan.prompts.width] + [b.count * b.width for b in plan.responses]
        q, k, v = (torch.split(_RowGather.apply(x[0].transpose(0, 1).to(dtype), plan.slot_rows, plan.source, None),
                               sizes) for x in (query, key, value))
        prompts = plan.prompts
        prompt_q, prompt_k, prompt_v = (x[0].view(prompts.count, prompts.width, *x[0].shape[1:]) for x in (q, k, v))
        outputs = [_block_attention(*chunks, prompts.bias(dtype), prompts.mask, scaling, causal=True)
                   for chunks in zip(*(x.split(plan.prompt_calls) for x in (prompt_q, prompt_k, prompt_v)))]
        for index, block in enumerate(plan.responses, start=1):
            own_q, own_k, own_v = (x[index].view(block.count, block.width, *x[index].shape[1:]) for x in (q, k, v))
            # each response's copy of its prompt's keys and values
            keys, values = (torch.cat([_RepeatRows.apply(p[:, :block.prompt_width], block.owner, block.owner_runs), o],
                                      dim=1) for p, o in ((prompt_k, own_k), (prompt_v, own_v)))
            outputs.append(_block_attention(own_q, keys, values, block.bias(dtype), block.mask, scaling,
                                            causal=False))
        out = _RowGather.apply(torch.cat(outputs), plan.source, plan.slot_rows, plan.slot_real)
    return out[None], None


@functools.cache
def register() -> str:
    """Register `shared_prompt_attention` in transformers' AttentionInterface (once); its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, shared_prompt_attention)
    return ATTENTION_NAME


@functools.cache
def register_grouped() -> str:
    """Register `grouped_attention` in transformers' AttentionInterface (once); its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(GROUPED_ATTENTION_NAME, grouped_attention)
    return GROUPED_ATTENTION_NAME


@contextlib.contextmanager
def _use_attention(model, name: str):
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


def use_shared_attention(model):
    """The model runs `shared_prompt_attention` inside the block, its own attention again after it."""
    return _use_attention(model, register())


def use_grouped_attention(model):
    """The model runs `grouped_attention` inside the block (pass the plan as `awpo_grouped_plan=`), its own
    attention again after it."""
    return _use_attention(model, register_grouped())
