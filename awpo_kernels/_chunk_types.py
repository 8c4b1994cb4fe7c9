"""What the chunk loop (`_chunked.run_chunks`) and its epilogues exchange: the `ChunkPlan` (what to
compute), the `ChunkResults` (where the per-token outputs go) and the `Epilogue` contract.

In a module of their own so that the loop and both epilogues (`_epilogue_torch`, `_epilogue_triton`)
import them from here and not from one another: the loop picks an epilogue, an epilogue never needs
the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ._token_math import LossSpec


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


class Epilogue(Protocol):
    """The contract of a chunk epilogue, shared by `_epilogue_torch.TorchEpilogue` and
    `_epilogue_triton.TritonEpilogue`.

    Built once per `run_chunks` call from the `ChunkPlan` (what to compute) and the `ChunkResults`
    (where the per-token outputs go: `logprobs`, and `entropy` / `lse` when the plan asks for them).
    Called once per chunk with `buffers` [buffers, rows, V] (buffer 0 holds the chunk's raw fp32 logits
    z = hidden @ W^T, untempered) and `rows`, the chunk's slice of the N tokens. It writes the chunk's
    rows of the results and, when `write_grad`, returns d(loss)/d(z) [rows, V] written over buffer 0
    in place (possibly viewed in a narrower dtype); else None.
    """

    buffers: int  # [rows, V] workspaces it needs per chunk (the loop allocates them)

    def __call__(self, buffers: torch.Tensor, rows: slice) -> torch.Tensor | None: ...
