"""What only a GPU can check: host synchronisation, int64 offsets past 2^31 logits, the in-place bf16
d(logits) at a real vocabulary, the dtypes the CUDA GEMMs run in, the two-stream overlap, the
epilogue's launch overrides. Every test here skips without CUDA and carries "cuda" in its name
(benchmarks/gpu_suite.sh selects them with `-k cuda`).
"""
from __future__ import annotations

import gc

import pytest
import torch

import awpo_kernels as ak
from awpo_kernels import _matmul

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def checks_off(monkeypatch):
    monkeypatch.setenv("AWPO_KERNELS_CHECK_INPUTS", "0")


def random_inputs(tokens, hidden, vocab, *, dtype=torch.bfloat16, sequences=4, seed=0, scale=1.0):
    """Packed CUDA inputs: hidden [N, H], weight [V, H], targets [N] (~10% ignored), seq_ids, advantages."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=g, device="cuda").to(dtype)
    w = (scale * torch.randn(vocab, hidden, generator=g, device="cuda") / hidden ** 0.5).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=g, device="cuda")
    targets[torch.rand(tokens, generator=g, device="cuda") < 0.1] = -100
    seq_ids = torch.arange(tokens, device="cuda") * sequences // tokens
    advantages = torch.randn(sequences, generator=g, device="cuda")
    return h, w, targets, seq_ids, advantages


def fused_and_grads(backend, h, w, targets, seq_ids, advantages, **options):
    hidden = h.detach().clone().requires_grad_()
    weight = w.detach().clone().requires_grad_()
    out = ak.fused_linear_policy_loss(hidden, weight, targets, advantages, seq_ids=seq_ids, backend=backend, **options)
    out.loss.backward()
    return dict(loss=out.loss.detach(), logprobs=out.logprobs, grad_hidden=hidden.grad, grad_weight=weight.grad)


def assert_close_to(got: dict, expected: dict, tolerances: dict):
    for key, tol in tolerances.items():
        a, b = got[key].double(), expected[key].double()
        scale = b.abs().max()
        assert scale > 0, key
        error = ((a - b).abs() / (b.abs() + scale)).max().item()
        assert error <= tol, f"{key}: relative error {error:.2e} > {tol}"


# ----------------------------------------------------------------------------- host synchronisation

def sync_free(fn):
    """Run fn once to warm up (compiles, the GEMM probe), then again with every host sync an error."""
    fn()
    torch.cuda.synchronize()
    _matmul._mixed_gemms_available.cache_clear()  # the probe too must not sync with the checks off
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("options", [
    dict(),
    dict(old_logprobs=True, beta=0.1, entropy_coef=0.01, delta=1.5, loss_type="grpo"),
    dict(old_logprobs=True, importance_sampling_level="sequence", epsilon_tensors=True),  # GSPO: two passes
    dict(num_items_in_batch=True, importance_weights=True, kl_type="k2", beta=0.05),
], ids=["plain", "kl-entropy-delta", "gspo", "num-items"])
def test_cuda_fused_loss_makes_no_host_sync_with_checks_off(checks_off, backend, options):
    h, w, targets, seq_ids, advantages = random_inputs(300, 64, 5003, seed=1)
    kwargs = dict(options)
    n = targets.shape[0]
    if kwargs.pop("old_logprobs", False):
        kwargs["old_logprobs"] = -torch.rand(n, device="cuda") * 5
    if kwargs.get("beta"):
        kwargs["ref_logprobs"] = -torch.rand(n, device="cuda") * 5
    if kwargs.pop("epsilon_tensors", False):
        kwargs["epsilon_low"] = torch.full((4,), 0.2, device="cuda")
        kwargs["epsilon_high"] = torch.tensor(0.28)  # a CPU scalar tensor: no copy either
    if kwargs.pop("num_items_in_batch", False):
        kwargs["num_items_in_batch"] = torch.tensor(1000.0, device="cuda")
    if kwargs.pop("importance_weights", False):
        kwargs["importance_weights"] = torch.rand(n, device="cuda") + 0.5
    sync_free(lambda: fused_and_grads(backend, h, w, targets, seq_ids, advantages, chunk_size=128, **kwargs))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("entropy", [False, True])
def test_cuda_linear_logprobs_makes_no_host_sync_with_checks_off(checks_off, backend, entropy):
    h, w, targets, _, _ = random_inputs(300, 64, 5003, seed=2)

    def step():
        hidden = h.detach().clone().requires_grad_()
        weight = w.detach().clone().requires_grad_()
        out = ak.linear_logprobs(hidden, weight, targets, return_entropy=entropy, backend=backend, chunk_size=100)
        total = out.logprobs.sum() + (out.entropy.sum() if entropy else 0)
        total.backward()
        with torch.no_grad():
            ak.linear_logprobs(h, w, targets, backend=backend)

    sync_free(step)


# ----------------------------------------------------------------------------- sizes

def test_cuda_one_chunk_of_more_than_2_31_logits_matches_the_torch_path():
    """One chunk of 14,200 x 151,936 = 2.16e9 logits (> 2^31): every offset in the kernel must be int64."""
    tokens, vocab = 14_200, 151_936
    assert tokens * vocab > 2 ** 31
    inputs = random_inputs(tokens, 64, vocab, seed=3, sequences=16)
    options = dict(chunk_size=tokens, entropy_coef=0.01, loss_type="grpo")
    results = {}
    for backend in ("triton", "torch"):
        results[backend] = {k: v.cpu() for k, v in fused_and_grads(backend, *inputs, **options).items()}
        gc.collect()
        torch.cuda.empty_cache()
    assert_close_to(results["triton"], results["torch"],
                    dict(loss=1e-5, logprobs=1e-5, grad_hidden=1e-2, grad_weight=1e-2))
    ignored = inputs[2].cpu() == -100
    assert (results["triton"]["grad_hidden"][ignored] == 0).all()
    assert (results["triton"]["grad_hidden"][~ignored].float().abs().sum(-1) > 0).all()


def test_cuda_bf16_dlogits_in_place_at_the_full_vocabulary_run_twice(kt):
    """bf16 d(logits) written over the fp32 logits at V=151936 (37 vocabulary blocks a row): within one
    bf16 rounding of the fp32 d(logits), and bitwise the same on a second run (a race between the warps
    loading and storing the same bytes would not be)."""
    logits, targets, spec = kt.epilogue_inputs("cuda", 64, 151_936)
    wide, _ = kt.run_epilogue("cuda", logits, targets, spec, torch.float32)
    first, _ = kt.run_epilogue("cuda", logits, targets, spec, torch.bfloat16)
    second, _ = kt.run_epilogue("cuda", logits, targets, spec, torch.bfloat16)
    assert torch.equal(first, second)
    assert ((first - wide).abs() <= 2 ** -8 * wide.abs()).all()  # round to nearest: half a bf16 unit
    assert wide.abs().sum() > 0 and (wide[4] == 0).all()


# ----------------------------------------------------------------------------- GEMM dtypes

def reference_of(h, w, targets, seq_ids, advantages, **options):
    """The float64 spec on the same input values."""
    return fused_and_grads("reference", h.double(), w.double(), targets, seq_ids, advantages.double(), **options)


def test_cuda_fp16_inputs_keep_dlogits_out_of_fp16():
    """At 4096 tokens and V=32000 most d(logits) are ~1e-8, under fp16's smallest subnormal (6e-8): in fp16
    they would vanish, and with them the whole gradient of every vocabulary row no token targets."""
    h, w, targets, seq_ids, advantages = random_inputs(4096, 64, 32_000, dtype=torch.float32, seed=4)
    h, w = (16 * h).half(), (w / 16).half()  # logits of unit scale, weight gradients well inside fp16's range
    got = fused_and_grads("triton", h, w, targets, seq_ids, advantages, entropy_coef=0.01)
    expected = reference_of(h, w, targets, seq_ids, advantages, entropy_coef=0.01)
    assert got["grad_weight"].dtype == torch.float16
    assert_close_to(got, expected, dict(loss=1e-3, logprobs=1e-3, grad_hidden=2e-2))
    untargeted = torch.ones(w.shape[0], dtype=torch.bool, device="cuda")
    untargeted[targets[targets != -100]] = False
    a, b = got["grad_weight"][untargeted].double(), expected["grad_weight"][untargeted].double()
    assert b.norm() > 0 and (a - b).norm() / b.norm() < 0.05, (a - b).norm() / b.norm()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_fp32_master_weights_under_bf16_autocast_run_bf16_gemms_with_fp32_logits(backend):
    h, w, targets, seq_ids, advantages = random_inputs(1000, 128, 20_011, dtype=torch.float32, seed=5, scale=4.0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = fused_and_grads(backend, h, w, targets, seq_ids, advantages, chunk_size=256)
    assert got["grad_weight"].dtype == torch.float32 and got["grad_hidden"].dtype == torch.float32
    # the GEMMs read bf16 operands: compare with the spec on the bf16-rounded inputs; the log-probs to fp32
    # accuracy (the logits were never rounded), the gradients to bf16 accuracy (d(logits) are bf16)
    expected = reference_of(h.bfloat16(), w.bfloat16(), targets, seq_ids, advantages)
    assert_close_to(got, expected, dict(loss=1e-4, logprobs=3e-5, grad_hidden=2e-2, grad_weight=2e-2))
    fp32 = reference_of(h, w, targets, seq_ids, advantages)
    assert (got["logprobs"] - fp32["logprobs"]).abs().max() > 1e-4  # not fp32 GEMMs (the 10x slower path)


def test_cuda_mixed_bf16_hidden_and_fp32_weight_outside_autocast_run_bf16_gemms():
    h, w, targets, seq_ids, advantages = random_inputs(700, 96, 9001, dtype=torch.float32, seed=6, scale=4.0)
    got = fused_and_grads("triton", h.bfloat16(), w, targets, seq_ids, advantages)
    expected = reference_of(h.bfloat16(), w.bfloat16(), targets, seq_ids, advantages)
    assert got["grad_weight"].dtype == torch.float32 and got["grad_hidden"].dtype == torch.bfloat16
    assert_close_to(got, expected, dict(loss=1e-4, logprobs=3e-5, grad_hidden=2e-2, grad_weight=2e-2))


# ----------------------------------------------------------------------------- speed switches

@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_cuda_two_stream_overlap_matches_the_serial_path(monkeypatch, backend, dtype):
    inputs = random_inputs(1500, 96, 9001, dtype=dtype, seed=7)
    options = dict(chunk_size=256, entropy_coef=0.02, loss_type="dapo")
    serial = fused_and_grads(backend, *inputs, **options)
    monkeypatch.setenv("AWPO_KERNELS_OVERLAP", "1")
    overlapped = fused_and_grads(backend, *inputs, **options)
    torch.cuda.synchronize()
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert_close_to(overlapped, serial, dict(loss=1e-6, logprobs=1e-6, grad_hidden=tol, grad_weight=tol))


@pytest.mark.parametrize("rows, block_v, warps", [("2", "2048", "4"), ("1", "8192", "16"), ("4", "1024", "8")])
def test_cuda_epilogue_launch_overrides_give_the_same_numbers(monkeypatch, rows, block_v, warps):
    inputs = random_inputs(600, 64, 20_011, seed=8)
    options = dict(chunk_size=256, entropy_coef=0.02)
    default = fused_and_grads("triton", *inputs, **options)
    monkeypatch.setenv("AWPO_KERNELS_EPILOGUE_BLOCK_ROWS", rows)
    monkeypatch.setenv("AWPO_KERNELS_EPILOGUE_BLOCK_V", block_v)
    monkeypatch.setenv("AWPO_KERNELS_EPILOGUE_NUM_WARPS", warps)
    swept = fused_and_grads("triton", *inputs, **options)
    assert_close_to(swept, default, dict(loss=1e-6, logprobs=1e-6, grad_hidden=1e-2, grad_weight=1e-2))
