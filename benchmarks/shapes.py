"""Named benchmark shapes.

LM-head shapes carry the vocabulary and hidden size of a real model, because V is what makes logits
expensive. CPU shapes keep the real V but shrink the token count N and the hidden size H so that the
materialised baseline fits in a few GiB and runs in seconds on two cores. Shapes are looked up by name
(`shape_by_name`) so that a fresh subprocess can rebuild exactly the same case.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

QWEN3_4B = dict(model="Qwen3-4B", vocab=151936, hidden=2560)
LLAMA3_8B = dict(model="Llama-3-8B", vocab=128256, hidden=4096)


@dataclass(frozen=True)
class LMHeadShape:
    """`sequences` x `seq_len` response tokens through an LM head [vocab, hidden] (padded layout)."""

    name: str
    model: str
    sequences: int
    seq_len: int
    hidden: int
    vocab: int
    dtype: torch.dtype

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return (f"{self.model} vocab: N={self.tokens} ({self.sequences}x{self.seq_len}), H={self.hidden}, "
                f"V={self.vocab}, {dtype}")


@dataclass(frozen=True)
class GroupShape:
    """`prompts` groups of `group_size` completions each (B = prompts * group_size rewards)."""

    name: str
    prompts: int
    group_size: int

    @property
    def completions(self) -> int:
        return self.prompts * self.group_size

    def describe(self) -> str:
        return f"P={self.prompts} prompts x G={self.group_size} completions (B={self.completions})"


# Main CPU target of docs/TARGETS.md: V=151936, N=2048, H=256, fp32 (1.2 GB of fp32 logits).
CPU_LM_HEAD = [
    LMHeadShape("qwen3-4b-vocab-cpu", QWEN3_4B["model"], 8, 256, 256, QWEN3_4B["vocab"], torch.float32),
    LMHeadShape("llama-3-8b-vocab-cpu", LLAMA3_8B["model"], 4, 256, 256, LLAMA3_8B["vocab"], torch.float32),
]
# Real hidden and vocab, 16k response tokens, bf16 (the example of docs/TARGETS.md).
GPU_LM_HEAD = [
    LMHeadShape("qwen3-4b", QWEN3_4B["model"], 32, 512, QWEN3_4B["hidden"], QWEN3_4B["vocab"], torch.bfloat16),
    LMHeadShape("llama-3-8b", LLAMA3_8B["model"], 32, 512, LLAMA3_8B["hidden"], LLAMA3_8B["vocab"], torch.bfloat16),
]
# Odd, tiny sizes: the CI smoke test runs every case once at these.
SMOKE_LM_HEAD = [LMHeadShape("smoke", "tiny", 3, 17, 32, 1001, torch.float32)]

CPU_GROUPS = [GroupShape("groups-512x8", 512, 8), GroupShape("groups-4096x16", 4096, 16)]
GPU_GROUPS = [GroupShape("groups-512x8", 512, 8), GroupShape("groups-16384x16", 16384, 16)]
SMOKE_GROUPS = [GroupShape("groups-smoke", 5, 4)]

ALL_SHAPES = {s.name: s for s in [*CPU_LM_HEAD, *GPU_LM_HEAD, *SMOKE_LM_HEAD, *CPU_GROUPS, *GPU_GROUPS,
                                  *SMOKE_GROUPS]}


def shape_by_name(name: str):
    if name not in ALL_SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(sorted(ALL_SHAPES))}")
    return ALL_SHAPES[name]


def select_shapes(kind: str, device: str, selection: str = "default") -> list:
    """Shapes of one kind ('lm_head' or 'groups') for a device.

    `selection`: 'default' (the device's usual list: on CPU only the main target), 'all' (every shape
    of the device), 'smoke' (tiny), or comma-separated names (names of the other kind are skipped).
    """
    if kind not in ("lm_head", "groups"):
        raise ValueError(f"kind must be 'lm_head' or 'groups'; got {kind!r}")
    lm_head = kind == "lm_head"
    on_gpu = device.startswith("cuda")
    if selection == "smoke":
        return list(SMOKE_LM_HEAD if lm_head else SMOKE_GROUPS)
    if selection in ("default", "all"):
        if not lm_head:
            return list(GPU_GROUPS if on_gpu else CPU_GROUPS)
        if on_gpu:
            return list(GPU_LM_HEAD)
        # Two cores run the materialised baseline for ~8 s a call: by default only the main CPU target.
        return list(CPU_LM_HEAD if selection == "all" else CPU_LM_HEAD[:1])
    wanted = [shape_by_name(name.strip()) for name in selection.split(",") if name.strip()]
    shape_type = LMHeadShape if lm_head else GroupShape
    return [s for s in wanted if isinstance(s, shape_type)]
