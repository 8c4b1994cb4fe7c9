"""LM head -> per-token log-probs (+ entropy) without materialising the [N, V] logits.

Public op: `linear_logprobs`. (Fast backends: to be filled in; today every backend runs the reference.)
"""
from __future__ import annotations

import torch

from . import reference
from ._runtime import check_positive, check_token_ids, resolve_backend
from .outputs import LogprobsOutput


def check_lm_head(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight must be the LM head [V, H]; got shape {tuple(weight.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden's last dim ({hidden.shape[-1]}) must equal weight's H ({weight.shape[1]})")
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise ValueError("hidden and weight must be floating-point tensors")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"targets must have hidden's leading shape {tuple(hidden.shape[:-1])}; "
                         f"got {tuple(targets.shape)}")
    check_token_ids("targets", targets, weight.shape[0])


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                    return_entropy: bool = False, chunk_size: int | None = None,
                    backend: str | None = None) -> LogprobsOutput:
    """log_softmax(hidden @ weight.T / temperature)[targets] in fp32; 0 where targets == -100."""
    check_lm_head(hidden, weight, targets)
    check_positive("temperature", temperature)
    resolve_backend(backend, hidden.device)
    out = reference.linear_logprobs(hidden, weight, targets, temperature=temperature, return_entropy=return_entropy)
    return out
