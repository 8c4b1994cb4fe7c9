"""Gradients computed during the forward pass, attached to the loss value (the Liger / CCE pattern).

The fused ops know d(loss)/d(inputs) as soon as the loss is known, so they compute it in the forward
and keep it; backward only scales it by the upstream gradient (in place: no second copy of a
[V, H] weight gradient). A second backward through the same graph (retain_graph=True) is refused,
since the stored gradients were consumed by the first.
"""
from __future__ import annotations

import torch


class _PrecomputedGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, grads, *inputs):
        ctx.grads = list(grads)
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.grads is None:
            raise RuntimeError("the fused awpo_kernels loss supports one backward pass per forward "
                               "(its gradients are precomputed and consumed); recompute the loss instead")
        grads, ctx.grads = ctx.grads, None
        scaled = [None if g is None else g.mul_(grad_output.to(g.dtype)) for g in grads]
        return (None, None, *scaled)


def attach_gradients(value: torch.Tensor, pairs) -> torch.Tensor:
    """`value` (no graph) as a differentiable tensor whose gradient w.r.t. each `input` is `grad`
    times the upstream gradient. `pairs` is a list of (input, grad or None)."""
    inputs = [t for t, _ in pairs]
    grads = [g for _, g in pairs]
    return _PrecomputedGradients.apply(value, grads, *inputs)
