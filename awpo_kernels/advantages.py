"""Group-relative advantages with AWPO's variance-aware gate, difficulty weight and tailored clip.

docs/SPEC.md section 2. Public op: `group_advantages`; its options are an `AdvantageOptions` (options.py).
Backends: `triton` (CUDA default; on CPU only under TRITON_INTERPRET=1) runs one program per group
(`_advantages_triton.py`); `torch` (CPU default, and the path of float64 inputs on every backend:
compiled Triton rounds Python-float hyper-parameters to fp32) and `reference` both run the spec,
`reference.group_advantages`, vectorised over groups [P, G] at the inputs' dtype (float32, or float64).
Neither fast path synchronises with the host; the value checks do (finite values, outcomes within
outcome_range), see `_runtime.values_checked`.

Both paths centre each group on one of its members before averaging, so a group of equal values
has exactly zero deviations (a plain floating-point mean of 0.1, 0.1, 0.1 is not exactly 0.1, which
would leave a 1e-17 spread that switches off "all outcomes equal": hard gate 1, clip by clip_max).
"""
from __future__ import annotations

from typing import Unpack

import torch

from . import reference
from ._runtime import check_finite, resolve_backend, values_checked
from .options import AdvantageKeywords, AdvantageOptions, document, resolve_options
from .outputs import GroupAdvantages

# Aliases of AdvantageOptions' allowed values, still read from here by awpo.integrations.verl.estimators,
# tests/awpo/test_trl.py and tests/verl_plugin: new code reads AdvantageOptions.ESTIMATORS / .GATES.
ESTIMATORS = AdvantageOptions.ESTIMATORS
GATES = AdvantageOptions.GATES


@document({"options": AdvantageOptions.describe(indent=" " * 12)})
def group_advantages(
    outcome: torch.Tensor, reasoning: torch.Tensor | None = None, *, group_size: int,
    backend: str | None = None, options: AdvantageOptions | None = None, **overrides: Unpack[AdvantageKeywords],
) -> GroupAdvantages:
    """Advantages for B = P * group_size completions laid out group-contiguous.

    `outcome [B]` must be finite; `reasoning [B]` may hold NaN (= no score). See docs/SPEC.md section 2.
    Outputs are float32, or float64 when an input is float64.

    Estimators: "awpo" (default: A^o + gated, weighted, sign-clipped reasoning term), "grpo" (A^o only);
    ablations "awpo_mixed" (mixing at the reward level), "reward_sum" (GRPO on o + reasoning_coef * s,
    a NaN score counting as 0; scale="none": x - mean) and "gdpo" (z = A^o + reasoning_coef * A^s, each
    normalised in its group as for awpo, then (z - mean(z)) / (std(z) + eps) over all B completions of
    this call, with the same `unbiased`, regardless of `scale`; all-equal z gives exactly 0). Without
    reasoning, reward_sum is grpo and gdpo is grpo whitened over the batch. Gates: "soft", "hard",
    "ratio", "none" (g = 1, an ablation). Every estimator but grpo shrinks the PPO clip epsilons by
    1 / (1 + clip_shrink * g * w) and reports gate and weight; only awpo clips (clipped_fraction is 0
    for the others).

    Args:
        outcome: [B] outcome rewards, floating point, within options.outcome_range.
        reasoning: [B] reasoning scores (NaN: no score), or None (outcome only).
        group_size: G >= 2, completions per prompt; B must be a multiple of it.
        backend: 'auto' (default: Triton on CUDA, torch on CPU), 'torch', 'triton' or 'reference'.
        options: an `AdvantageOptions`; the keyword options below override its fields (None: the defaults).
        **overrides: any `AdvantageOptions` field as a keyword:
{options}
    """
    _check_tensors(outcome, reasoning, group_size)
    options = resolve_options(AdvantageOptions, options, overrides)
    _check_outcome_range(outcome, options.outcome_range)
    chosen = resolve_backend(backend, outcome.device)
    dtype = reference.compute_dtype(outcome, reasoning)
    # Compiled Triton passes Python floats as fp32 scalars, so float64 hyper-parameters would be rounded:
    # float64 inputs (tests, debugging) run the torch path on every backend, as the LM-head ops do.
    if chosen == "triton" and outcome.numel() > 0 and dtype != torch.float64:  # an empty grid is not a launch
        from ._advantages_triton import group_advantages_triton  # imported late: TRITON_INTERPRET is read then
        return group_advantages_triton(outcome, reasoning, group_size=group_size, options=options, dtype=dtype)
    # "torch" and "reference": the spec itself, at the inputs' dtype.
    return reference.group_advantages(outcome, reasoning, group_size=group_size, **options.as_kwargs())


# ----------------------------------------------------------------------------- checks

def _check_tensors(outcome, reasoning, group_size) -> None:
    if not isinstance(outcome, torch.Tensor) or outcome.dim() != 1 or not outcome.is_floating_point():
        raise ValueError("outcome must be a 1-D floating-point tensor [B]")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2; got {group_size!r}")
    if outcome.shape[0] % group_size != 0:
        raise ValueError(f"outcome has B={outcome.shape[0]} rewards, not a multiple of group_size={group_size}")
    if reasoning is not None:
        if not isinstance(reasoning, torch.Tensor) or tuple(reasoning.shape) != tuple(outcome.shape):
            shape = tuple(reasoning.shape) if isinstance(reasoning, torch.Tensor) else type(reasoning).__name__
            raise ValueError(f"reasoning must be a tensor of outcome's shape {tuple(outcome.shape)}; got {shape}")
        if not reasoning.is_floating_point():
            raise ValueError("reasoning must be a floating-point tensor (NaN = no score)")
        if reasoning.device != outcome.device:
            raise ValueError(f"reasoning is on {reasoning.device} but outcome is on {outcome.device}")
        check_finite("reasoning", reasoning, allow_nan=True)
    check_finite("outcome", outcome)


def _check_outcome_range(outcome: torch.Tensor, outcome_range) -> None:
    """Rewards outside outcome_range would be clamped in the pass rate, silently skewing gate and weight."""
    if not values_checked() or outcome.numel() == 0:
        return
    low, high = torch.aminmax(outcome.detach())
    low, high = float(low), float(high)  # the value checks sync by design
    if low < outcome_range[0] or high > outcome_range[1]:
        raise ValueError(f"outcome values span [{low:g}, {high:g}], outside outcome_range={tuple(outcome_range)}; "
                         "pass the range your rewards live in")
