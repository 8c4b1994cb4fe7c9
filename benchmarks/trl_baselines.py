"""TRL 1.16's own GRPO loss path, as a baseline of `fused_linear_policy_loss` (the "trl" row).

`GRPOTrainer._compute_loss` gets per-token log-probs from the fused LM head that `add_fused_lm_head` patches
into the model (`trl.kernels.ChunkedLogProbFunction`: tiles of `[4096 tokens, 32768 vocab]` logits, Triton
epilogue on CUDA, torch elsewhere; log-probs and entropy, since GRPO asks for both), then builds the clipped
surrogate in PyTorch. This module calls those pieces the way TRL 1.16 does (`trl/trainer/utils.py`
`add_fused_lm_head` and `trl/trainer/grpo_trainer.py` `_compute_loss`, `loss_type="grpo"`, beta=0, old
log-probs = the current ones detached), on the benchmark's aligned hidden states and targets. Written here
against TRL's public kernel; no TRL code is copied.
"""
from __future__ import annotations

import importlib.util

import torch

IGNORE_INDEX = -100
GRPO_OUTPUTS = ("log_probs", "entropy")  # what GRPOTrainer asks add_fused_lm_head for


def trl_available() -> bool:
    return importlib.util.find_spec("trl") is not None


def trl_fused_logprobs(hidden, weight, targets, temperature=1.0):
    """[B, T] log-probs (0 where ignored) from TRL's chunked fused LM head, as its patched forward calls it.

    On a Triton device only the scored positions go through the kernel; elsewhere every position does (TRL
    keeps the tile shapes fixed there), with ignored targets clamped to token 0 and masked afterwards.
    """
    from trl.kernels import ChunkedLogProbFunction
    from trl.kernels.chunked_logprob import _use_triton
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    mask = targets != IGNORE_INDEX
    compact = _use_triton(hidden.device)
    flat_hidden = hidden[mask] if compact else hidden.reshape(-1, hidden.size(-1))
    flat_targets = targets[mask] if compact else targets.clamp(min=0).reshape(-1)
    logprobs, *_ = ChunkedLogProbFunction.apply(flat_hidden, weight, None, flat_targets, temperature,
                                                _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, GRPO_OUTPUTS)
    if compact:
        return logprobs.new_zeros(mask.shape).masked_scatter(mask, logprobs)
    return logprobs.view(mask.shape).masked_fill(~mask, 0)


def trl_grpo_loss(hidden, weight, targets, advantages, epsilon_low=0.2, epsilon_high=0.2, temperature=1.0):
    """TRL's `loss_type="grpo"` loss on TRL's fused log-probs (the materialised baseline's math)."""
    logp = trl_fused_logprobs(hidden, weight, targets, temperature)
    mask = (targets != IGNORE_INDEX).to(logp.dtype)
    ratio = torch.exp(logp - logp.detach())
    adv = advantages.to(logp.dtype).unsqueeze(1)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
