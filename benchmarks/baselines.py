"""What the fused ops are measured against, written independently of awpo_kernels.

- "materialised": the straightforward PyTorch way, as TRL's GRPOTrainer does it: the full [N, V]
  logits, an fp32 `log_softmax`, a gather, the clipped surrogate loss, autograd for the backward.
- `compile_baseline`: `torch.compile` of it (Inductor fuses the softmax chain; the logits stay).
- Liger-Kernel's `LigerFusedLinearGRPOLoss` (chunked torch + torch.compile), when it imports.
- the bare LM-head GEMMs: `hidden @ W.T` and its two backward GEMMs with no epilogue, the floor that
  a fused op cannot beat (6NHV FLOPs forward + backward, 2NHV forward only).
- plain GRPO group normalisation (mean / std per group), the floor of the advantage op.
"""
from __future__ import annotations

import importlib.util

import torch

IGNORE_INDEX = -100


def materialised_logprobs(hidden, weight, targets, temperature=1.0):
    """Per-token log-probs from full logits: [B, T, H] x [V, H] -> [B, T] fp32, 0 where ignored."""
    logits = (hidden @ weight.T).float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    valid = targets != IGNORE_INDEX
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, picked, torch.zeros_like(picked))


def materialised_policy_loss(hidden, weight, targets, advantages, epsilon_low=0.2, epsilon_high=0.2,
                             temperature=1.0):
    """TRL's GRPO loss (`loss_type="grpo"`, beta=0, old log-probs = the current ones, detached).

    Mean over sequences of the masked per-sequence mean of -min(r A, clip(r, 1-eps_lo, 1+eps_hi) A).
    """
    logp = materialised_logprobs(hidden, weight, targets, temperature)
    mask = (targets != IGNORE_INDEX).float()
    ratio = torch.exp(logp - logp.detach())
    adv = advantages.float().unsqueeze(1)
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high) * adv)
    per_sequence = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return per_sequence.mean()


def compile_baseline(fn, backend: str = "inductor"):
    """`torch.compile` with static shapes: each benchmark shape gets its own specialised graph.

    backend="eager" only traces (the CI smoke test uses it: it checks the code path in a second).
    """
    return torch.compile(fn, backend=backend, dynamic=False)


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def liger_grpo_loss(temperature=1.0, epsilon_low=0.2, epsilon_high=0.2, compiled=True):
    """Liger's fused linear GRPO loss on the configuration both libraries support (beta=0, "grpo").

    Returns fn(hidden [B,T,H], weight, targets [B,T] with -100, advantages [B]) -> scalar loss.
    """
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    module = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, loss_type="grpo", compiled=compiled,
                                      epsilon_low=epsilon_low, epsilon_high=epsilon_high,
                                      temperature=temperature)

    def loss(hidden, weight, targets, advantages):
        # Liger takes an attention mask and gathers the ids directly: ignored positions need a valid id.
        mask = (targets != IGNORE_INDEX).to(torch.int64)
        result = module(hidden, weight, targets.clamp(min=0), mask, advantages)
        return result[0] if isinstance(result, tuple) else result

    return loss


def liger_version() -> str | None:
    if not liger_available():
        return None
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("liger-kernel")
    except PackageNotFoundError:
        return "unknown"


def lm_head_gemms(hidden2d, weight):
    """The three GEMMs of an LM head forward + backward with no softmax: the floor (6NHV FLOPs).

    The logits stand in for d(logits): same shape and dtype, so the two backward GEMMs cost what
    they cost in training. Returns (grad_hidden, grad_weight) so the caller can keep them alive.
    """
    logits = hidden2d @ weight.T
    grad_hidden = logits @ weight
    grad_weight = logits.T @ hidden2d
    return grad_hidden, grad_weight


def lm_head_forward_gemm(hidden2d, weight):
    """The forward GEMM alone (2NHV FLOPs): the floor of the log-prob op."""
    return hidden2d @ weight.T


def grpo_group_advantages(outcome, group_size, eps=1e-6):
    """Plain GRPO: (r - mean) / (std + eps) per group (unbiased std, as TRL)."""
    grouped = outcome.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).reshape(-1)


def matmul_tflops(device, size: int = 8192, repeats: int = 20) -> float:
    """Achieved TFLOP/s of a square bf16 matmul on `device` (the yardstick of the GPU table)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1e3 / repeats
    return 2 * size ** 3 / seconds / 1e12
