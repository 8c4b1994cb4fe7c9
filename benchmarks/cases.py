"""Benchmark cases: one op, one implementation, one shape, on inputs shared by every implementation.

A `Case` runs its op once per `run()` (forward, plus backward for the loss) and keeps what a training
step would keep (the gradients, the per-token outputs) until `reset()`, so that peak-memory numbers
count the outputs a caller receives but not the inputs and parameters.
Implementations are registered by name, so a fresh subprocess can rebuild any case from three strings.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import awpo_kernels

from . import baselines, trl_baselines
from .shapes import GroupShape, LMHeadShape, shape_by_name

OPS = ("fused_linear_policy_loss", "linear_logprobs", "group_advantages")
# The implementation each op's ratios are taken against, and the GEMM floor of the LM-head ops.
BASELINE = {"fused_linear_policy_loss": "materialised", "linear_logprobs": "materialised",
            "group_advantages": "awpo-reference"}
FLOOR = "lm-head-gemms"


@dataclass
class CaseOptions:
    """How a case is built. `compile_backend="eager"` traces torch.compile cases without codegen (smoke)."""

    compile_backend: str = "inductor"
    seed: int = 0


# ----------------------------------------------------------------------------- inputs

@dataclass
class LMHeadInputs:
    hidden: torch.Tensor      # [B, T, H]
    weight: torch.Tensor      # [V, H]
    targets: torch.Tensor     # [B, T], -100 on the padded tail of each sequence
    advantages: torch.Tensor  # [B]

    def grad_tensors(self) -> tuple:
        return tuple(t for t in (self.hidden, self.weight) if t.requires_grad)


@dataclass
class GroupInputs:
    outcome: torch.Tensor     # [B] in {0, 1}, a pass rate per group
    reasoning: torch.Tensor   # [B] in [0, 1], about 10% NaN (no judge score)
    group_size: int

    def grad_tensors(self) -> tuple:
        return ()


def make_lm_head_inputs(shape: LMHeadShape, device, requires_grad: bool, seed: int = 0) -> LMHeadInputs:
    """Random inputs with logits of unit scale and ~12% ignored tokens (ragged sequence ends)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    B, T, H, V = shape.sequences, shape.seq_len, shape.hidden, shape.vocab
    hidden = torch.randn(B, T, H, generator=gen, device=device).to(shape.dtype)
    weight = (torch.randn(V, H, generator=gen, device=device) / H ** 0.5).to(shape.dtype)
    targets = torch.randint(0, V, (B, T), generator=gen, device=device)
    padding = torch.randint(0, max(T // 4, 1), (B, 1), generator=gen, device=device)
    targets[torch.arange(T, device=device) >= T - padding] = baselines.IGNORE_INDEX
    advantages = torch.randn(B, generator=gen, device=device)
    hidden.requires_grad_(requires_grad)
    weight.requires_grad_(requires_grad)
    return LMHeadInputs(hidden, weight, targets, advantages)


def make_group_inputs(shape: GroupShape, device, seed: int = 0) -> GroupInputs:
    gen = torch.Generator(device=device).manual_seed(seed)
    pass_rate = torch.rand(shape.prompts, 1, generator=gen, device=device)
    outcome = (torch.rand(shape.prompts, shape.group_size, generator=gen, device=device) < pass_rate).float()
    reasoning = torch.rand(shape.completions, generator=gen, device=device)
    missing = torch.rand(shape.completions, generator=gen, device=device) < 0.1
    reasoning[missing] = float("nan")
    return GroupInputs(outcome.reshape(-1), reasoning, shape.group_size)


def make_inputs(op: str, shape, device, seed: int = 0):
    if op == "group_advantages":
        return make_group_inputs(shape, device, seed)
    return make_lm_head_inputs(shape, device, requires_grad=(op == "fused_linear_policy_loss"), seed=seed)


# ----------------------------------------------------------------------------- the case

@dataclass
class Case:
    op: str
    impl: str
    shape: object
    inputs: object
    step: Callable[[], object]   # one call of the op; returns what the caller would keep
    summarise: Callable[[object, object], dict] | None  # (kept, inputs) -> scalars to compare impls
    flops: float                 # useful FLOPs of one call (6NHV / 2NHV), 0 when not an LM-head op
    kept: object = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        first = self.inputs.hidden if isinstance(self.inputs, LMHeadInputs) else self.inputs.outcome
        return first.device

    def reset(self) -> None:
        """Drop outputs and gradients: what is left is the inputs and parameters."""
        self.kept = None
        for tensor in self.inputs.grad_tensors():
            tensor.grad = None

    def run(self) -> None:
        self.reset()
        self.kept = self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def summary(self) -> dict | None:
        """Scalars of the last run (loss, gradient norms, ...) to check that implementations agree."""
        if self.summarise is None or self.kept is None:
            return None
        return {k: float(v) for k, v in self.summarise(self.kept, self.inputs).items()}


# ----------------------------------------------------------------------------- implementations

def _policy_loss_step(loss_fn, inputs: LMHeadInputs):
    def step():
        loss = loss_fn(inputs.hidden, inputs.weight, inputs.targets, inputs.advantages)
        loss.backward()
        return loss.detach()
    return step


def _awpo_policy_loss(backend, chunk_size=None, overlap=False):
    def loss_fn(hidden, weight, targets, advantages):
        with _overlap(overlap):
            return awpo_kernels.fused_linear_policy_loss(hidden, weight, targets, advantages, loss_type="grpo",
                                                         beta=0.0, backend=backend, chunk_size=chunk_size).loss
    return loss_fn


@contextlib.contextmanager
def _overlap(enabled: bool):
    """AWPO_KERNELS_OVERLAP=1 for the block when `enabled` (the two-stream chunk loop), else untouched."""
    if not enabled:
        yield
        return
    saved = os.environ.get("AWPO_KERNELS_OVERLAP")
    os.environ["AWPO_KERNELS_OVERLAP"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AWPO_KERNELS_OVERLAP")
        else:
            os.environ["AWPO_KERNELS_OVERLAP"] = saved


def _policy_loss_summary(loss, inputs: LMHeadInputs) -> dict:
    return {"loss": loss, "|grad hidden|": inputs.hidden.grad.float().norm(),
            "|grad weight|": inputs.weight.grad.float().norm()}


def _logprobs_step(logprobs_fn, inputs: LMHeadInputs):
    def step():
        with torch.no_grad():
            return logprobs_fn(inputs.hidden, inputs.weight, inputs.targets)
    return step


def _awpo_logprobs(backend, chunk_size=None):
    return lambda h, w, y: awpo_kernels.linear_logprobs(h, w, y, backend=backend, chunk_size=chunk_size).logprobs


def _logprobs_summary(logprobs, inputs) -> dict:
    return {"sum logp": logprobs.double().sum(), "|logp|": logprobs.double().norm()}


def _gemm_step(gemm_fn, inputs: LMHeadInputs):
    hidden2d = inputs.hidden.detach().reshape(-1, inputs.hidden.shape[-1])
    weight = inputs.weight.detach()
    return lambda: gemm_fn(hidden2d, weight)


def _advantages_step(backend, inputs: GroupInputs):
    return lambda: awpo_kernels.group_advantages(inputs.outcome, inputs.reasoning, group_size=inputs.group_size,
                                                 estimator="awpo", backend=backend).advantages


def _advantages_summary(advantages, inputs) -> dict:
    return {"sum A": advantages.double().sum(), "|A|": advantages.double().norm()}


def _policy_loss_impls(options: CaseOptions) -> dict:
    compiled = functools.partial(baselines.compile_baseline, backend=options.compile_backend)
    return {
        "awpo": lambda x: _policy_loss_step(_awpo_policy_loss(None), x),
        "awpo-torch": lambda x: _policy_loss_step(_awpo_policy_loss("torch"), x),
        "awpo-overlap": lambda x: _policy_loss_step(_awpo_policy_loss(None, overlap=True), x),
        "materialised": lambda x: _policy_loss_step(baselines.materialised_policy_loss, x),
        "materialised-compiled": lambda x: _policy_loss_step(compiled(baselines.materialised_policy_loss), x),
        # Liger's own torch.compile is Inductor-only: the smoke run (eager backend) runs it uncompiled.
        "liger": lambda x: _policy_loss_step(
            baselines.liger_grpo_loss(compiled=options.compile_backend == "inductor"), x),
        # TRL 1.16's GRPOTrainer: its chunked fused LM head, then its GRPO loss (benchmarks/trl_baselines.py)
        "trl": lambda x: _policy_loss_step(trl_baselines.trl_grpo_loss, x),
        FLOOR: lambda x: _gemm_step(baselines.lm_head_gemms, x),
    }


def _logprobs_impls(options: CaseOptions) -> dict:
    compiled = functools.partial(baselines.compile_baseline, backend=options.compile_backend)

    return {
        "awpo": lambda x: _logprobs_step(_awpo_logprobs(None), x),
        "awpo-torch": lambda x: _logprobs_step(_awpo_logprobs("torch"), x),
        "materialised": lambda x: _logprobs_step(baselines.materialised_logprobs, x),
        "materialised-compiled": lambda x: _logprobs_step(compiled(baselines.materialised_logprobs), x),
        FLOOR: lambda x: _gemm_step(baselines.lm_head_forward_gemm, x),
    }


def _advantages_impls(options: CaseOptions) -> dict:
    return {
        "awpo": lambda x: _advantages_step(None, x),
        "awpo-torch": lambda x: _advantages_step("torch", x),
        "awpo-reference": lambda x: _advantages_step("reference", x),
        "grpo-plain": lambda x: (lambda: baselines.grpo_group_advantages(x.outcome, x.group_size)),
    }


CHUNK_VARIANT = re.compile(r"^awpo-chunk(\d+)$")


def chunk_variant(rows: int) -> str:
    """The name of the default backend run with `chunk_size=rows` (a chunk-size sweep)."""
    return f"awpo-chunk{rows}"


def _chunk_variant_step(op: str, impl: str):
    """Step factory of an 'awpo-chunkROWS' name, or None when `impl` is not one (or `op` has no chunks)."""
    match = CHUNK_VARIANT.match(impl)
    if match is None or op == "group_advantages" or int(match.group(1)) < 1:
        return None
    rows = int(match.group(1))
    if op == "fused_linear_policy_loss":
        return lambda x: _policy_loss_step(_awpo_policy_loss(None, rows), x)
    return lambda x: _logprobs_step(_awpo_logprobs(None, rows), x)


_IMPLS = {"fused_linear_policy_loss": _policy_loss_impls, "linear_logprobs": _logprobs_impls,
          "group_advantages": _advantages_impls}
_SUMMARIES = {"fused_linear_policy_loss": _policy_loss_summary, "linear_logprobs": _logprobs_summary,
              "group_advantages": _advantages_summary}
_NOT_COMPARABLE = {FLOOR, "grpo-plain"}  # different math: a floor, not an implementation of the op
CUDA_ONLY = {"awpo-torch", "awpo-overlap"}


def implementations(op: str, device: str, chunk_sizes=()) -> list[str]:
    """Implementations of `op` that can run on `device` here, the library's default path first.

    'awpo-torch' and 'awpo-overlap' (the two-stream chunk loop, AWPO_KERNELS_OVERLAP=1) are listed on
    CUDA only (on CPU the default backend already is the torch one, and there are no streams); Liger
    only when `liger_kernel` imports. `chunk_sizes` adds 'awpo-chunkROWS' variants to the LM-head ops.
    """
    check_op(op)
    names = list(_IMPLS[op](CaseOptions()))
    on_cuda = str(device).startswith("cuda")
    names = [n for n in names if (n not in CUDA_ONLY or on_cuda) and (n != "liger" or baselines.liger_available())
             and (n != "trl" or trl_baselines.trl_available())]
    if op != "group_advantages":
        names[1:1] = [chunk_variant(rows) for rows in chunk_sizes]
    return names


def check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}; got {op!r}")


def useful_flops(op: str, shape) -> float:
    """The LM-head GEMM FLOPs of one call: 6NHV forward + backward, 2NHV forward only, 0 otherwise."""
    if not isinstance(shape, LMHeadShape):
        return 0.0
    gemms = 6 if op == "fused_linear_policy_loss" else 2
    return float(gemms) * shape.tokens * shape.hidden * shape.vocab


def build_case(op: str, impl: str, shape, inputs, options: CaseOptions | None = None) -> Case:
    """A runnable case on prepared `inputs` (see `make_inputs`); raises ValueError for an unknown impl."""
    check_op(op)
    impls = _IMPLS[op](options or CaseOptions())
    make_step = impls.get(impl) or _chunk_variant_step(op, impl)
    if make_step is None:
        variants = "" if op == "group_advantages" else " or awpo-chunkROWS"
        raise ValueError(f"impl must be one of {', '.join(impls)}{variants} for {op}; got {impl!r}")
    wanted_shape = GroupShape if op == "group_advantages" else LMHeadShape
    if not isinstance(shape, wanted_shape):
        raise ValueError(f"shape for {op} must be a {wanted_shape.__name__}; got {shape!r}")
    summarise = None if impl in _NOT_COMPARABLE else _SUMMARIES[op]
    return Case(op, impl, shape, inputs, make_step(inputs), summarise, useful_flops(op, shape))


def build_case_by_name(op: str, impl: str, shape_name: str, device: str, options: CaseOptions | None = None) -> Case:
    """Everything from names (the memory subprocess uses this)."""
    options = options or CaseOptions()
    shape = shape_by_name(shape_name)
    inputs = make_inputs(op, shape, torch.device(device), seed=options.seed)
    return build_case(op, impl, shape, inputs, options)
