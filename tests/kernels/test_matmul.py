"""The LM-head GEMMs (`_matmul`): which dtypes they read, the probe of the mixed-precision overloads,
the weight-gradient accumulation (first chunk written with beta=0, later chunks added), `out=` rows.

The mixed-precision GEMMs (bf16 operands, fp32 output) exist only on CUDA; their CUDA tests are the
`cuda` tests here and the `triton_cuda` / `torch_cuda` runs of the op suites. Where CPU torch has no
`out_dtype` GEMM, `torch.mm` is replaced by a CPU stand-in with the same contract ("mocked").
"""
import pytest
import torch

from awpo_kernels import _chunked, _matmul

bf16, fp16, fp32, fp64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("hidden, weight, autocast, expected", [
    (fp32, fp32, None, (fp32, fp32)),      # fp32 asked for: fp32 (logged once)
    (bf16, bf16, None, (bf16, bf16)),
    (fp32, bf16, None, (bf16, bf16)),      # mixed: the low precision the caller brought, not 10x slower fp32
    (bf16, fp32, None, (bf16, bf16)),      # fp32 master weights, bf16 activations
    (fp32, fp32, bf16, (bf16, bf16)),      # autocast says bf16
    (fp16, fp16, None, (fp16, bf16)),      # fp16 operands forward, d(logits) never fp16
    (fp32, fp32, fp16, (fp16, bf16)),
    (fp16, bf16, None, (bf16, bf16)),
])
def test_gpu_gemm_dtypes_follow_the_callers_precision_and_keep_dlogits_out_of_fp16(hidden, weight, autocast,
                                                                                       expected):
    assert _matmul.gemm_dtypes("cuda", hidden, weight, fp32, autocast) == expected


@pytest.mark.parametrize("hidden, weight, autocast", [(bf16, bf16, None), (fp32, bf16, bf16), (fp16, fp32, fp16)])
def test_cpu_and_fp64_gemms_run_in_the_compute_dtype(hidden, weight, autocast):
    assert _matmul.gemm_dtypes("cpu", hidden, weight, fp32, autocast) == (fp32, fp32)
    assert _matmul.gemm_dtypes("cuda", fp64, weight, fp64, autocast) == (fp64, fp64)


def test_fp16_dlogits_would_underflow_at_real_sizes():
    """Why d(logits) are bf16: coefficient 1/16384 tokens times a probability ~1/151936 is below fp16's
    smallest subnormal, so fp16 flushes it to zero while bf16 keeps it."""
    dz = torch.tensor(1.0 / 16384 / 151936, dtype=fp32)
    assert dz.to(fp16).item() == 0.0 and dz.to(bf16).item() > 0.0


@pytest.mark.parametrize("verify", [True, False])
def test_probe_leaves_the_callers_random_generator_alone(verify):
    _matmul._mixed_gemms_available.cache_clear()
    state = torch.get_rng_state()
    _matmul.mixed_gemms_available("cpu", bf16, verify_values=verify)
    assert torch.equal(torch.get_rng_state(), state)


def test_probe_operands_are_exact_small_integers():
    a, b, expected = _matmul._probe_operands("cpu", bf16)
    assert a.dtype == b.dtype == bf16 and expected.dtype == fp32
    assert torch.equal(a.float() @ b.float(), expected) and expected.abs().max() > 0
    assert torch.equal(a.float(), a.float().round())


def test_first_chunk_overwrites_the_uninitialised_accumulator_then_chunks_add():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(29, 6, generator=g)
    gemms = _matmul.LmHeadGemms(weight, fp32, fp32, fp32)
    chunks = [(torch.randn(n, 29, generator=g), torch.randn(n, 6, generator=g)) for n in (5, 3)]
    acc = torch.full((29, 6), float("nan"))
    for index, (dz, h) in enumerate(chunks):
        gemms.grad_weight(acc, dz, gemms.operand(h), first=index == 0)
    expected = sum(dz.T @ h for dz, h in chunks)
    torch.testing.assert_close(acc, expected, rtol=1e-5, atol=1e-6)


def test_no_chunk_leaves_a_zero_weight_gradient():
    acc = torch.full((7, 3), float("nan"))
    backward = _chunked._Backward(_matmul.LmHeadGemms(torch.ones(7, 3), fp32, fp32, fp32), None, acc)
    backward.finish()
    assert torch.equal(acc, torch.zeros(7, 3))


@pytest.mark.parametrize("hidden_dtype", [fp32, bf16])
def test_grad_hidden_writes_the_callers_rows_in_place(hidden_dtype):
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(13, 5, generator=g)
    dz = torch.randn(4, 13, generator=g)
    grad = torch.zeros(10, 5, dtype=hidden_dtype)
    _matmul.LmHeadGemms(weight, fp32, fp32, fp32).grad_hidden(dz, out=grad[3:7])
    torch.testing.assert_close(grad[3:7], (dz @ weight).to(hidden_dtype))
    assert (grad[:3] == 0).all() and (grad[7:] == 0).all()


def mocked_mixed_gemms(monkeypatch, weight):
    """LmHeadGemms as on a GPU whose addmm cannot accumulate into fp32 (mocked mixed torch.mm on CPU)."""
    def mm_with_fp32_output(a, b, out_dtype=None, out=None):  # the CUDA overload's contract, on CPU
        assert a.dtype == b.dtype == bf16 and out_dtype == fp32
        product = a.float() @ b.float()
        return product if out is None else out.copy_(product)

    monkeypatch.setattr(_matmul, "mixed_gemms_available", lambda device, dtype: (True, False))
    monkeypatch.setattr(_matmul.torch, "mm", mm_with_fp32_output)
    gemms = _matmul.LmHeadGemms(weight, fp32, bf16, bf16)
    assert gemms.mixed and not gemms.mixed_accumulate and gemms.dz_dtype == bf16
    return gemms


def test_weight_gradient_fallback_in_vocabulary_slices_with_mocked_mixed_mm(monkeypatch):
    g = torch.Generator().manual_seed(5)
    vocab, hidden, rows = 37, 6, 11
    weight = torch.randn(vocab, hidden, generator=g).bfloat16()
    hidden_chunk = torch.randn(rows, hidden, generator=g).bfloat16()
    dz = torch.randn(rows, vocab, generator=g).bfloat16()
    start = torch.randn(vocab, hidden, generator=g)
    monkeypatch.setattr(_matmul, "FALLBACK_PRODUCT_BYTES", 4 * hidden * 5)  # 5 rows per product: 8 slices
    gemms = mocked_mixed_gemms(monkeypatch, weight)
    acc = start.clone()
    gemms.grad_weight(acc, dz, gemms.operand(hidden_chunk), first=False)
    expected = start + dz.float().T @ hidden_chunk.float()
    torch.testing.assert_close(acc, expected, rtol=1e-6, atol=1e-6)
    first = torch.full_like(start, float("nan"))
    gemms.grad_weight(first, dz, gemms.operand(hidden_chunk), first=True)
    torch.testing.assert_close(first, dz.float().T @ hidden_chunk.float(), rtol=1e-6, atol=1e-6)


def test_fp16_weights_run_the_backward_on_a_bf16_copy_with_mocked_mixed_mm(monkeypatch):
    g = torch.Generator().manual_seed(6)
    weight = torch.randn(9, 4, generator=g).half()
    monkeypatch.setattr(_matmul, "mixed_gemms_available", lambda device, dtype: (True, True))
    gemms = _matmul.LmHeadGemms(weight, fp32, fp16, bf16)
    assert gemms.forward_weight.dtype == fp16 and gemms.backward_weight.dtype == bf16 and gemms.dz_dtype == bf16
    assert gemms.operand(torch.randn(3, 4, generator=g)).dtype == bf16


# ----------------------------------------------------------------------------- CUDA

@NO_CUDA
@pytest.mark.parametrize("dtype", [bf16, fp16])
def test_cuda_mixed_precision_gemms_are_available_and_exact(dtype):
    _matmul._mixed_gemms_available.cache_clear()
    assert _matmul.mixed_gemms_available("cuda", dtype, verify_values=True) == (True, True), (
        "torch.mm/addmm(out_dtype=float32) failed: the LM-head GEMMs would fall back to fp32")


@NO_CUDA
def test_cuda_probe_makes_no_host_sync_and_leaves_the_cuda_generator_alone():
    _matmul._mixed_gemms_available.cache_clear()
    state = torch.cuda.get_rng_state()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = _matmul.mixed_gemms_available("cuda", bf16, verify_values=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert result == (True, True)
    assert torch.equal(torch.cuda.get_rng_state(), state)


@pytest.mark.parametrize("hidden_dtype, forward", [(bf16, bf16), (fp32, bf16), (fp16, fp16)])
def test_mixed_gemm_calls_are_well_formed_on_meta_tensors_with_mocked_probe(monkeypatch, hidden_dtype, forward):
    """The CUDA-only overloads (`mm`/`addmm` with `out_dtype`, `out=` rows of the caller's gradient, a
    transposed d(logits)) dispatch with these shapes and dtypes: checked on the meta device, whose
    dtype rules are the CUDA kernels', since CPU torch has none of them."""
    monkeypatch.setattr(_matmul, "mixed_gemms_available", lambda device, dtype: (True, True))
    meta = torch.device("meta")
    weight = torch.empty(33, 6, device=meta, dtype=forward)
    gemms = _matmul.LmHeadGemms(weight, fp32, forward, bf16)
    hidden = torch.empty(20, 6, device=meta, dtype=hidden_dtype)
    logits = torch.empty(10, 33, device=meta)
    assert gemms.logits(hidden[3:13], out=logits).dtype == fp32
    dz = torch.empty(10, 33, device=meta, dtype=gemms.dz_dtype)
    grad_hidden = torch.empty_like(hidden)
    gemms.grad_hidden(dz, out=grad_hidden[3:13])
    acc = torch.empty(33, 6, device=meta)
    for first in (True, False):
        gemms.grad_weight(acc, dz, gemms.operand(hidden[3:13]), first=first)
    assert acc.dtype == fp32 and grad_hidden.dtype == hidden_dtype
