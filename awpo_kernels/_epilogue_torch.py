"""The chunk epilogue in plain torch (the CPU path): in-place ops over one [rows, V] logits chunk.

With z the temperature-scaled logits, p = softmax(z), lp = log p, H = -sum p lp, the gradient of the
loss w.r.t. the raw logits of a row with coefficients c = dL/dlogp, e = dL/dH is

    dz = ( c * (onehot(y) - p) - e * p * (lp + H) ) / temperature

Passes over the chunk (fp32, one buffer): log_softmax in place, exp_ in place, one row-scaling, one
scatter: every row stays in cache inside each fused torch kernel, and no [rows, V] tensor is ever
allocated after the first chunk. The entropy needs a second buffer (p and lp at once).
"""
from __future__ import annotations

import torch

from ._chunk_types import ChunkPlan, ChunkResults
from ._constants import IGNORE_INDEX
from ._token_math import token_coefficients


class TorchEpilogue:
    """The torch chunk epilogue: a `_chunk_types.Epilogue`, like `_epilogue_triton.TritonEpilogue`."""

    def __init__(self, plan: ChunkPlan, results: ChunkResults, *, write_grad: bool):
        self.plan = plan
        self.results = results
        self.write_grad = write_grad
        self.buffers = 2 if plan.need_entropy else 1

    def _coefficients(self, logp: torch.Tensor, rows: slice):
        plan = self.plan
        if plan.spec is not None:
            return token_coefficients(plan.spec, logp, rows)
        entropy_grad = None if plan.entropy_grad is None else plan.entropy_grad[rows]
        return plan.coef[rows], entropy_grad

    def _log_probs(self, z: torch.Tensor, rows: slice) -> torch.Tensor:
        """z -> log_softmax(z) in place; records the log-sum-exp when the plan keeps it."""
        plan = self.plan
        if plan.lse is not None:
            return z.sub_(plan.lse[rows].unsqueeze(1))
        row_max = z.amax(dim=1) if plan.save_lse else None
        torch._log_softmax(z, 1, False, out=z)
        if plan.save_lse:
            # The largest log-prob of a row is -log(sum exp(z - max)), so lse = max - max(lp), both exact-ish.
            self.results.lse[rows] = row_max - z.amax(dim=1)
        return z

    def __call__(self, buffers: torch.Tensor, rows: slice) -> torch.Tensor | None:
        plan, results = self.plan, self.results
        z = buffers[0]
        if plan.inv_temperature != 1.0:
            z.mul_(plan.inv_temperature)
        targets = plan.targets[rows]
        valid = targets != IGNORE_INDEX
        safe_targets = torch.where(valid, targets, torch.zeros_like(targets)).long().unsqueeze(1)

        log_probs = self._log_probs(z, rows)
        logp = torch.where(valid, log_probs.gather(1, safe_targets).squeeze(1), z.new_zeros(()))
        results.logprobs[rows] = logp

        probs = None
        if plan.need_entropy:
            probs = torch.exp(log_probs, out=buffers[1])
            plogp = log_probs.mul_(probs)                      # buffer 0 now holds p * lp
            if plan.entropy is None:
                entropy = torch.where(valid, -plogp.sum(dim=1), z.new_zeros(()))
                results.entropy[rows] = entropy
            else:
                entropy = plan.entropy[rows]
        if not self.write_grad:
            return None

        coef, entropy_grad = self._coefficients(logp, rows)
        scale = plan.inv_temperature
        if probs is None:
            dz = log_probs.exp_().mul_((-coef * scale).unsqueeze(1))
        elif entropy_grad is None:
            dz = probs.mul_((-coef * scale).unsqueeze(1))
        else:  # -(c + e H) p - e p lp, with p lp already in buffer 0
            probs.mul_((-(coef + entropy_grad * entropy) * scale).unsqueeze(1))
            dz = plogp.mul_((-entropy_grad * scale).unsqueeze(1)).add_(probs)
        return dz.scatter_add_(1, safe_targets, (coef * scale).unsqueeze(1).to(dz.dtype))
