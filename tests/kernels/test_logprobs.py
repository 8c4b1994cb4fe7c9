"""`linear_logprobs` on every backend against `reference.linear_logprobs` in float64: values and the
gradients of hidden and weight (through both outputs), odd shapes, dtypes, temperatures, edge logits,
ignored rows, chunking."""
import math

import pytest
import torch

import awpo_kernels as ak

PARAMETRIZE_LM_BACKENDS = True  # conftest: the backend / grid_backend / triton_backend parameters
f64 = torch.float64


def run_logprobs(backend, hidden, weight, targets, upstream, *, reference=False, **options):
    """linear_logprobs, then backward of sum(g1 * logp + g2 * entropy) -> CPU tensors."""
    name, device = ("reference", "cpu") if reference else backend
    h = hidden.to(device=device, dtype=f64 if reference else hidden.dtype).detach().clone().requires_grad_()
    w = weight.to(device=device, dtype=f64 if reference else weight.dtype).detach().clone().requires_grad_()
    out = ak.linear_logprobs(h, w, targets.to(device), backend=name, **options)
    g_logp, g_entropy = (u.to(device=device, dtype=out.logprobs.dtype) for u in upstream)
    total = (out.logprobs * g_logp).sum()
    if out.entropy is not None:
        total = total + (out.entropy * g_entropy).sum()
    total.backward()
    entropy = None if out.entropy is None else out.entropy.detach().cpu()
    return out.logprobs.detach().cpu(), entropy, h.grad.cpu(), w.grad.cpu()


def upstream_grads(shape, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=f64), torch.randn(shape, generator=g, dtype=f64)


def check_against_reference(kt, backend, case, entropy_atol=0.0, tol=None, **options):
    up = upstream_grads(case.targets.shape)
    got = run_logprobs(backend, case.hidden, case.weight, case.targets, up, **options)
    expected = run_logprobs(backend, case.hidden, case.weight, case.targets, up, reference=True, **options)
    names = ("logprobs", "entropy", "grad_hidden", "grad_weight")
    for name, a, b in zip(names, got, expected):
        if b is None:
            assert a is None, name
            continue
        kt.assert_matches(a, b, case.dtype, name, atol=entropy_atol if name == "entropy" else 0.0, tol=tol)
    assert expected[2].abs().sum() > 0 and expected[3].abs().sum() > 0
    assert (got[0] <= 0).all()
    return got, expected


SHAPES = [  # (B, T, H, V): odd sizes, vocabularies not a multiple of any block
    (3, 7, 19, 1001),
    (2, 9, 33, 5003),
    (1, 5, 7, 3),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("temperature,return_entropy", [(1.0, True), (0.7, True), (1.3, False)])
def test_matches_reference(kt, backend, shape, dtype, temperature, return_entropy):
    if backend[0] == "triton" and dtype == f64:
        dtype = torch.float32  # fp64 runs the torch loop on every backend; test the kernel instead
    case = kt.make_case(*shape, dtype=dtype, seed=sum(shape))
    check_against_reference(kt, backend, case, temperature=temperature, return_entropy=return_entropy)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 10, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_chunk_size_smaller_than_and_not_dividing_n_gives_the_same_results(kt, backend, chunk_size, dtype):
    # the same numbers up to the GEMM's rounding (fp32: other GEMM shapes round differently)
    case = kt.make_case(3, 7, 19, 1001, seed=3, dtype=dtype)  # N = 21
    up = upstream_grads(case.targets.shape)
    whole = run_logprobs(backend, case.hidden, case.weight, case.targets, up, return_entropy=True,
                         temperature=0.8, chunk_size=21)
    chunked = run_logprobs(backend, case.hidden, case.weight, case.targets, up, return_entropy=True,
                           temperature=0.8, chunk_size=chunk_size)
    for a, b in zip(chunked, whole):
        kt.assert_matches(a, b, dtype, f"chunk_size={chunk_size}")


def test_ignored_rows_give_zero_logprob_entropy_and_gradient(kt, backend):
    case = kt.make_case(4, 6, 11, 1001, seed=4, empty_rows=(0, 2))
    got, _ = check_against_reference(kt, backend, case, return_entropy=True)
    logp, entropy, grad_hidden, _ = got
    ignored = case.targets == -100
    assert (logp[ignored] == 0).all() and (entropy[ignored] == 0).all()
    assert (grad_hidden[ignored] == 0).all()
    assert (grad_hidden[~ignored].abs().sum(-1) > 0).all()


def test_every_target_ignored(kt, backend):
    case = kt.make_case(2, 5, 11, 1001, seed=6, empty_rows=(0, 1))
    up = upstream_grads(case.targets.shape)
    logp, entropy, grad_hidden, grad_weight = run_logprobs(backend, case.hidden, case.weight, case.targets, up,
                                                           return_entropy=True)
    assert (logp == 0).all() and (entropy == 0).all()
    assert (grad_hidden == 0).all() and (grad_weight == 0).all()


@pytest.mark.parametrize("logit_scale", [60.0, 400.0])
def test_large_logit_spreads_are_exact_and_logp_stays_nonpositive(kt, backend, logit_scale):
    # logits spread over hundreds of nats: most targets have log-probs far below -100
    case = kt.make_case(3, 7, 19, 1001, seed=7, logit_scale=logit_scale)
    # fp32 logits of size L carry absolute rounding ~1e-7 L, which bounds the entropy's absolute error
    got, expected = check_against_reference(kt, backend, case, return_entropy=True, entropy_atol=1e-8 * logit_scale)
    assert expected[0].min() < -100
    assert (got[0] <= 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_very_negative_logits(kt, backend, dtype):
    # every logit near -5000 (a large negative offset along one hidden direction). In fp32 the logits
    # themselves are only stored to ~5000 * 6e-8 = 3e-4 nats, which bounds what any fp32 path (the
    # reference's included) can get right: fp32 is held to that, fp64 to 1e-9.
    case = kt.make_case(2, 7, 9, 1001, seed=8, dtype=dtype)
    case.weight[:, 0] = 1.0 + 0.01 * case.weight[:, 0]
    case.hidden[..., 0] = -5000.0
    fp32 = dtype == torch.float32
    got, expected = check_against_reference(kt, backend, case, return_entropy=True, tol=1e-3 if fp32 else None,
                                            entropy_atol=3e-4 if fp32 else 0.0)
    assert torch.isfinite(got[0]).all() and (got[0] <= 0).all()


def test_all_equal_logits_give_minus_log_v_exactly(kt, backend):
    case = kt.make_case(2, 6, 9, 1001, seed=9)
    case.weight = case.weight[:1].expand(1001, -1).contiguous()  # every vocabulary row identical
    up = upstream_grads(case.targets.shape)
    logp, entropy, grad_hidden, grad_weight = run_logprobs(backend, case.hidden, case.weight, case.targets, up,
                                                           return_entropy=True)
    expected = run_logprobs(backend, case.hidden, case.weight, case.targets, up, reference=True, return_entropy=True)
    valid = case.mask
    torch.testing.assert_close(logp[valid], torch.full_like(logp[valid], -math.log(1001)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy[valid], torch.full_like(entropy[valid], math.log(1001)), rtol=1e-6, atol=1e-6)
    kt.assert_matches(grad_weight, expected[3], case.dtype, "grad_weight")
    # d hidden = W_0 * sum_j dz_j = 0 exactly in exact arithmetic; fp32 leaves only rounding
    assert expected[2].abs().max() < 1e-12 and grad_hidden.abs().max() < 1e-4


@pytest.mark.parametrize("used", ["logprobs", "entropy"])
def test_gradient_through_one_output_only(kt, backend, used):
    case = kt.make_case(3, 7, 19, 1001, seed=10)
    g = torch.Generator().manual_seed(11)
    up = torch.randn(case.targets.shape, generator=g, dtype=f64)
    zero = torch.zeros_like(up)
    upstream = (up, zero) if used == "logprobs" else (zero, up)
    results = []
    for reference in (False, True):
        name, device = ("reference", "cpu") if reference else backend
        dtype = f64 if reference else case.dtype
        h = case.hidden.to(device=device, dtype=dtype).detach().clone().requires_grad_()
        w = case.weight.to(device=device, dtype=dtype).detach().clone().requires_grad_()
        out = ak.linear_logprobs(h, w, case.targets.to(device), return_entropy=True, backend=name)
        value = getattr(out, used)
        (value * upstream[0 if used == "logprobs" else 1].to(device, value.dtype)).sum().backward()
        results.append((h.grad.cpu(), w.grad.cpu()))
    for a, b in zip(*results):
        kt.assert_matches(a, b, case.dtype, used)


def test_no_grad_path_gives_the_same_values(kt, backend):
    case = kt.make_case(3, 7, 19, 1001, seed=12)
    name, device = backend
    h, w, y = case.hidden.to(device), case.weight.to(device), case.targets.to(device)
    with torch.no_grad():
        plain = ak.linear_logprobs(h, w, y, return_entropy=True, backend=name, temperature=0.9)
    tracked = ak.linear_logprobs(h.clone().detach().clone().requires_grad_(), w, y, return_entropy=True, backend=name,
                                 temperature=0.9)
    torch.testing.assert_close(plain.logprobs, tracked.logprobs.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(plain.entropy, tracked.entropy.detach(), rtol=1e-6, atol=1e-7)
    assert plain.logprobs.dtype == torch.float32 and plain.logprobs.shape == y.shape


@pytest.mark.parametrize("trainable", ["hidden", "weight"])
def test_only_one_input_requires_grad(kt, backend, trainable):
    case = kt.make_case(3, 7, 19, 1001, seed=13)
    name, device = backend
    h = case.hidden.to(device).detach().clone().requires_grad_(trainable == "hidden")
    w = case.weight.to(device).detach().clone().requires_grad_(trainable == "weight")
    out = ak.linear_logprobs(h, w, case.targets.to(device), backend=name)
    out.logprobs.sum().backward()
    h64 = case.hidden.to(f64).detach().clone().requires_grad_(trainable == "hidden")
    w64 = case.weight.to(f64).detach().clone().requires_grad_(trainable == "weight")
    ak.linear_logprobs(h64, w64, case.targets, backend="reference").logprobs.sum().backward()
    got, expected = (h.grad, h64.grad) if trainable == "hidden" else (w.grad, w64.grad)
    kt.assert_matches(got, expected, case.dtype, trainable)
    assert (h.grad if trainable == "weight" else w.grad) is None


def test_bf16_weight_gradient_accumulates_in_fp32_across_many_chunks(kt, grid_backend):
    # 256 one-row chunks: a bf16 running sum of the weight gradient drifts well past one bf16 rounding
    case = kt.make_case(8, 32, 16, 257, dtype=torch.bfloat16, seed=14, empty_rows=(), prompt_tokens=0)
    up = upstream_grads(case.targets.shape)
    got = run_logprobs(grid_backend, case.hidden, case.weight, case.targets, up, chunk_size=1)
    expected = run_logprobs(grid_backend, case.hidden, case.weight, case.targets, up, reference=True)
    kt.assert_matches(got[3], expected[3], torch.bfloat16, "grad_weight")
    assert got[3].dtype == torch.bfloat16 and got[2].dtype == torch.bfloat16
    # fp32 accumulation leaves one final bf16 rounding (~0.2% norm-wise); a bf16 running sum gave ~1%
    relative = (got[3].to(f64) - expected[3]).norm() / expected[3].norm()
    assert relative < 0.004, relative


def test_packed_one_dimensional_hidden(kt, backend):
    case = kt.make_case(1, 23, 13, 1001, seed=15)
    flat = kt.make_case(1, 23, 13, 1001, seed=15)
    flat.hidden, flat.targets = case.hidden[0], case.targets[0]
    up = upstream_grads(flat.targets.shape)
    got = run_logprobs(backend, flat.hidden, flat.weight, flat.targets, up, return_entropy=True)
    expected = run_logprobs(backend, flat.hidden, flat.weight, flat.targets, up, reference=True, return_entropy=True)
    for a, b in zip(got, expected):
        kt.assert_matches(a, b, case.dtype)


def test_mixed_precision_inputs_fp32_hidden_bf16_weight(kt, backend):
    case = kt.make_case(3, 7, 19, 1001, seed=16)
    case.weight = case.weight.to(torch.bfloat16)
    up = upstream_grads(case.targets.shape)
    got = run_logprobs(backend, case.hidden, case.weight, case.targets, up, return_entropy=True)
    expected = run_logprobs(backend, case.hidden, case.weight, case.targets, up, reference=True, return_entropy=True)
    # CPU computes in fp32 (the fp32 hidden is never rounded); CUDA runs bf16 GEMMs on a bf16 input (fp32 logits)
    values_dtype = torch.float32 if backend[1] == "cpu" else torch.bfloat16
    for name, a, b in zip(("logprobs", "entropy", "grad_hidden"), got, expected):
        kt.assert_matches(a, b, values_dtype, name)
    kt.assert_matches(got[3], expected[3], torch.bfloat16, "grad_weight")
    assert got[2].dtype == torch.float32 and got[3].dtype == torch.bfloat16


def test_bf16_inputs_give_fp32_accurate_logprobs(kt, backend):
    """The logits are fp32 before the softmax, never rounded to bf16 (which costs ~1e-2 nats here): on
    bf16 inputs the log-probs match the float64 reference of the same bf16 values to fp32 accuracy."""
    case = kt.make_case(3, 7, 19, 1001, dtype=torch.bfloat16, seed=17, logit_scale=4.0)
    up = upstream_grads(case.targets.shape)
    got = run_logprobs(backend, case.hidden, case.weight, case.targets, up, return_entropy=True)
    expected = run_logprobs(backend, case.hidden, case.weight, case.targets, up, reference=True, return_entropy=True)
    kt.assert_matches(got[0], expected[0], torch.float32, "logprobs")
    kt.assert_matches(got[1], expected[1], torch.float32, "entropy")
    rounded = torch.log_softmax((case.hidden.double() @ case.weight.double().T).bfloat16().double(), -1)
    picked = rounded.gather(-1, case.targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert (picked - expected[0].double())[case.mask].abs().max() > 1e-3  # bf16 logits would fail the check above


def test_cpu_autocast_leaves_the_torch_path_in_fp32(kt):
    """The caller's autocast never reaches inside the op on CPU (no bf16 GEMM sneaks in), here with a
    bf16 hidden state, whose gradient GEMM autocast would otherwise round to bf16 twice."""
    case = kt.make_case(3, 7, 19, 1001, seed=18)
    case.hidden = case.hidden.bfloat16()
    up = upstream_grads(case.targets.shape)
    plain = run_logprobs(("torch", "cpu"), case.hidden, case.weight, case.targets, up, return_entropy=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = run_logprobs(("torch", "cpu"), case.hidden, case.weight, case.targets, up, return_entropy=True)
    for a, b in zip(autocast, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
