"""Shared pieces of the LM-head op tests (`linear_logprobs`, `fused_linear_policy_loss`, `policy_loss`).

Backends: `torch` always; `triton_interp` (Triton on CPU) only when TRITON_INTERPRET=1 was set before
triton was imported, which `test_triton_interpreted.py` does in a subprocess; `triton_cuda` (and
`torch_cuda`) when a GPU is present, skipped by their marker otherwise.

Tests name the backends they run on by fixture (see BACKEND_PARAMS). Every comparison is against `reference.py` run in float64 on the same input values, on odd shapes of
random, non-zero data. Helpers are handed to tests through the `kt` fixture.
"""
from __future__ import annotations

import os
import tempfile
from types import SimpleNamespace

import pytest
import torch

import awpo_kernels as ak

os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(tempfile.gettempdir(), "awpo-test-cache", "triton"))

f64 = torch.float64
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_CUDA = torch.cuda.is_available()
_NO_GPU = pytest.mark.skipif(not HAS_CUDA or INTERPRETING, reason="needs a CUDA GPU (and no interpreter)")

TORCH = pytest.param(("torch", "cpu"), id="torch")
TRITON_INTERP = pytest.param(("triton", "cpu"), id="triton_interp")
TRITON_CUDA = pytest.param(("triton", "cuda"), id="triton_cuda", marks=_NO_GPU)
TORCH_CUDA = pytest.param(("torch", "cuda"), id="torch_cuda", marks=_NO_GPU)
# CUDA variants exist only where they can run: on a CPU machine they are not generated at all
# (rather than collected and skipped by the hundred).
GPU = HAS_CUDA and not INTERPRETING
ON_GPU = [TRITON_CUDA, TORCH_CUDA] if GPU else []


# A test of a module that sets PARAMETRIZE_LM_BACKENDS = True asks for one of these names and gets one
# run per backend:
#   backend          every backend;
#   grid_backend     every backend but the interpreter (big option grids: the interpreter is ~100x slower);
#   triton_backend   the Triton kernels only.
BACKEND_PARAMS = {
    "backend": [TORCH] + ([TRITON_INTERP] if INTERPRETING else []) + ON_GPU,
    "grid_backend": [TORCH] + ON_GPU,
    "triton_backend": ([TRITON_INTERP] if INTERPRETING else []) + ([TRITON_CUDA] if GPU else []),
}


def needs_cuda(item) -> bool:
    """The test skips without a GPU: one of its skipif marks names CUDA as the reason."""
    return any("cuda" in str(mark.kwargs.get("reason", "")).lower() for mark in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items):
    """benchmarks/gpu_suite.sh selects the CUDA tests with `-k cuda`: a test that skips without CUDA must
    carry "cuda" in its name (or its parameter id), or the GPU run would silently leave it out."""
    hidden = [item.nodeid for item in items if needs_cuda(item) and "cuda" not in item.nodeid.lower()]
    if hidden:
        raise pytest.UsageError("CUDA tests that `pytest -k cuda` (benchmarks/gpu_suite.sh) would not select; put "
                                "'cuda' in their names: " + ", ".join(hidden))


def pytest_generate_tests(metafunc):
    if not getattr(metafunc.module, "PARAMETRIZE_LM_BACKENDS", False):  # opt-in: other modules keep their names
        return
    for name, params in BACKEND_PARAMS.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, params)


# Tolerance on values and gradients against the float64 reference, by input dtype. fp64 inputs run the
# chunked torch path in fp64; bf16 results (gradients in bf16) carry bf16 rounding.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 3e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}


def assert_matches(got, expected, dtype, what="", atol=0.0, tol=None):
    """|got - expected| <= tol * (|expected| + max|expected|) + atol elementwise, tol from the input dtype."""
    assert got is not None and expected is not None, what
    got, expected = got.detach().cpu().to(f64), expected.detach().cpu().to(f64)
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    tol = TOLERANCE[dtype] if tol is None else tol
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (got - expected).abs()
    bound = tol * (expected.abs() + scale) + atol + 1e-30
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"{what}: max error {err.max().item():.3e} exceeds tol {tol} (scale {scale:.3e})"


def make_case(batch=3, length=7, hidden_size=19, vocab=1001, *, dtype=torch.float32, seed=0, logit_scale=1.0,
              empty_rows=(1,), prompt_tokens=2):
    """Random padded-layout inputs on the CPU: hidden [B, T, H], weight [V, H], targets [B, T] with -100
    on the first `prompt_tokens` positions of every row and on whole `empty_rows` (sequences with no
    loss tokens), advantages [B] (non-zero, both signs)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, hidden_size, generator=g, dtype=f64)
    weight = torch.randn(vocab, hidden_size, generator=g, dtype=f64) * (logit_scale / hidden_size ** 0.5)
    targets = torch.randint(0, vocab, (batch, length), generator=g)
    targets[:, :prompt_tokens] = -100
    for row in empty_rows:
        if row < batch:
            targets[row] = -100
    advantages = torch.randn(batch, generator=g, dtype=f64)
    advantages = advantages + 0.1 * torch.sign(advantages)  # never exactly 0
    case = SimpleNamespace(hidden=hidden.to(dtype), weight=weight.to(dtype), targets=targets,
                           advantages=advantages.to(torch.float32), dtype=dtype, generator=g)
    case.mask = targets != -100
    return case


def rollout_logprobs(case, temperature=1.0, noise=0.3, seed=1):
    """Per-token log-probs near the current policy's (ratios on both sides of the clip range), 0 where masked."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logp = ak.linear_logprobs(case.hidden.to(f64), case.weight.to(f64), case.targets, temperature=temperature,
                                  backend="reference").logprobs
    noisy = logp + noise * torch.randn(logp.shape, generator=g, dtype=f64)
    return torch.where(case.mask, noisy, torch.zeros_like(noisy)).to(torch.float32)


def to_device(value, device, dtype=None):
    if isinstance(value, torch.Tensor):
        value = value.to(device)
        return value.to(dtype) if dtype is not None and value.is_floating_point() else value
    return value


def run_fused(backend, case, *, reference=False, **options):
    """fused_linear_policy_loss + backward -> dict of CPU tensors (loss, logprobs, metrics, grads).

    `reference=True` runs reference.py on float64 copies of the same inputs (the ground truth).
    """
    name, device = ("reference", "cpu") if reference else backend
    dtype = f64 if reference else None
    hidden = case.hidden.to(device=device, dtype=dtype or case.hidden.dtype).detach().clone().requires_grad_()
    weight = case.weight.to(device=device, dtype=dtype or case.weight.dtype).detach().clone().requires_grad_()
    option_dtype = f64 if reference or case.dtype == f64 else None  # fp64 runs get fp64 options throughout
    opts = {k: to_device(v, device, option_dtype) for k, v in options.items()}
    out = ak.fused_linear_policy_loss(hidden, weight, case.targets.to(device), case.advantages.to(device, option_dtype),
                                      backend=name, **opts)
    out.loss.backward()
    result = {"loss": out.loss, "logprobs": out.logprobs, "grad_hidden": hidden.grad, "grad_weight": weight.grad}
    result.update({f"metric:{k}": v for k, v in out.metrics.items()})
    return {k: v.detach().cpu() for k, v in result.items()}


def assert_same_results(got, expected, dtype, what=""):
    assert set(got) == set(expected), f"{what}: keys {sorted(got)} != {sorted(expected)}"
    assert expected["grad_hidden"].abs().sum() > 0, "degenerate case: zero gradient"
    for key in expected:
        assert_matches(got[key], expected[key], dtype, f"{what} {key}")


def run_epilogue(device, logits, targets, spec, dz_dtype, temperature=0.9):
    """One TritonEpilogue call on a copy of `logits` -> (dz as fp32 on the CPU, the results)."""
    from awpo_kernels._chunk_types import ChunkPlan, ChunkResults
    from awpo_kernels._epilogue_triton import TritonEpilogue

    rows = logits.shape[0]
    plan = ChunkPlan(targets, 1 / temperature, need_entropy=True, spec=spec, save_lse=True)
    out = ChunkResults(logprobs=torch.zeros(rows, device=device), entropy=torch.zeros(rows, device=device),
                       lse=torch.zeros(rows, device=device))
    workspace = logits.clone().unsqueeze(0)
    dz = TritonEpilogue(plan, out, write_grad=True, dz_dtype=dz_dtype)(workspace, slice(0, rows))
    assert dz.dtype == dz_dtype and dz.data_ptr() == workspace.data_ptr()
    return dz.float().cpu(), out


def epilogue_inputs(device, rows, vocab, seed=33):
    from awpo_kernels._token_math import build_loss_spec

    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, vocab, generator=g)).to(device)
    targets = torch.randint(0, vocab, (rows,), generator=g).to(device)
    targets[4] = -100
    seq_ids = (torch.arange(rows) // 5).to(device)
    spec = build_loss_spec(seq_ids, targets != -100, 3, torch.randn(3, generator=g).to(device),
                           dtype=torch.float32, options=ak.LossOptions(entropy_coef=0.1, beta=0.0))
    return logits, targets, spec


@pytest.fixture
def kt():
    """The helpers above, for the test modules of this folder."""
    return SimpleNamespace(make_case=make_case, rollout_logprobs=rollout_logprobs, run_fused=run_fused,
                           assert_matches=assert_matches, assert_same_results=assert_same_results,
                           to_device=to_device, TOLERANCE=TOLERANCE, run_epilogue=run_epilogue,
                           epilogue_inputs=epilogue_inputs)
