"""The codes of the Triton kernels' choice constexprs: one named constant per choice, defined once.

A kernel compares a choice parameter (ESTIMATOR, GATE, WEIGHT, KL_TYPE, COEFFICIENTS) against these
names, never against bare integers, and its launcher turns an option's value into a code through the
explicit tables below (value -> named code), never through the position of the value in the option's
`Literal`: reordering or extending a `Literal` in options.py cannot make a kernel run another choice's
math. Each kernel's chain of branches names every code of its parameter and ends in a
`tl.static_assert`, so a code without a branch fails when the kernel is built.

Adding an option value means adding its code here, its table entry and its kernel branch;
tests/kernels/test_kernel_codes.py fails while one of the three is missing.

The constants are module-level `tl.constexpr`s: the only globals a `@triton.jit` function may read
(compiled, and under TRITON_INTERPRET=1 alike). Triton puts the values of the ones a kernel reads into
its cache key, so renumbering codes never reuses a stale compiled kernel (and compares them at each
launch: a few microseconds of host time). The tables hold the plain int values, the form a launch passes.
"""
from __future__ import annotations

import triton.language as tl


def _values(table: dict[str, tl.constexpr]) -> dict[str, int]:
    return {name: code.value for name, code in table.items()}


# ----------------------------------------------------------------------------- group_advantages

# ESTIMATOR: AdvantageOptions.estimator
ESTIMATOR_GRPO = tl.constexpr(0)
ESTIMATOR_AWPO = tl.constexpr(1)
ESTIMATOR_AWPO_MIXED = tl.constexpr(2)
ESTIMATOR_REWARD_SUM = tl.constexpr(3)
ESTIMATOR_GDPO = tl.constexpr(4)
ESTIMATOR_CODES = _values({"grpo": ESTIMATOR_GRPO, "awpo": ESTIMATOR_AWPO, "awpo_mixed": ESTIMATOR_AWPO_MIXED,
                           "reward_sum": ESTIMATOR_REWARD_SUM, "gdpo": ESTIMATOR_GDPO})

# GATE: AdvantageOptions.gate
GATE_SOFT = tl.constexpr(0)
GATE_HARD = tl.constexpr(1)
GATE_RATIO = tl.constexpr(2)
GATE_NONE = tl.constexpr(3)
GATE_CODES = _values({"soft": GATE_SOFT, "hard": GATE_HARD, "ratio": GATE_RATIO, "none": GATE_NONE})

# WEIGHT: AdvantageOptions.weight
WEIGHT_LINEAR = tl.constexpr(0)
WEIGHT_BERNOULLI = tl.constexpr(1)
WEIGHT_NONE = tl.constexpr(2)
WEIGHT_CODES = _values({"linear": WEIGHT_LINEAR, "bernoulli": WEIGHT_BERNOULLI, "none": WEIGHT_NONE})

# The two-valued choices set boolean flags of the kernel, looked up by value all the same (a third value
# has no entry: it fails the launch and the tests instead of silently taking the False branch).
SCALE_CODES = {"group": True, "none": False}  # AdvantageOptions.scale -> SCALE_BY_STD
CLIP_CODES = {"sign": True, "none": False}    # AdvantageOptions.clip -> CLIP_SIGN

# ----------------------------------------------------------------------------- policy-loss coefficients

# KL_TYPE: LossOptions.kl_type, or KL_NONE when beta == 0 (no KL term)
KL_NONE = tl.constexpr(0)
KL_K1 = tl.constexpr(1)
KL_K2 = tl.constexpr(2)
KL_K3 = tl.constexpr(3)
KL_TYPE_CODES = _values({"k1": KL_K1, "k2": KL_K2, "k3": KL_K3})

# COEFFICIENTS (the LM-head epilogue): where the per-token coefficients c = dL/dlogp, e = dL/dH come from
COEFFICIENTS_NONE = tl.constexpr(0)   # forward only: no d(logits)
COEFFICIENTS_GIVEN = tl.constexpr(1)  # read from coef_ptr / entropy_grad_ptr (the backward of linear_logprobs)
COEFFICIENTS_LOSS = tl.constexpr(2)   # the policy loss's, computed in the kernel from its options
