"""The LM-head GEMMs' weight-gradient accumulation (`_matmul.LmHeadGemms`).

The mixed-precision GEMMs (bf16 operands, fp32 output) exist only on CUDA; their CUDA tests are the
`triton_cuda` / `torch_cuda` runs of the op suites. Here, where CPU torch has no `out_dtype` GEMM,
`torch.mm` is replaced by a CPU stand-in with the same contract, to check the fallback that adds fp32
products a few vocabulary rows at a time.
"""
import torch

from awpo_kernels import _matmul


def test_weight_gradient_fallback_in_vocabulary_slices_with_mocked_mixed_mm(monkeypatch):
    g = torch.Generator().manual_seed(5)
    vocab, hidden, rows = 37, 6, 11
    weight = torch.randn(vocab, hidden, generator=g).bfloat16()
    hidden_chunk = torch.randn(rows, hidden, generator=g).bfloat16()
    dz = torch.randn(rows, vocab, generator=g).bfloat16()
    start = torch.randn(vocab, hidden, generator=g)

    def mm_with_fp32_output(a, b, out_dtype=None, out=None):  # the CUDA overload's contract, on CPU
        assert a.dtype == b.dtype == torch.bfloat16 and out_dtype == torch.float32 and out is None
        return a.float() @ b.float()

    monkeypatch.setattr(_matmul.torch, "mm", mm_with_fp32_output)
    monkeypatch.setattr(_matmul, "FALLBACK_PRODUCT_BYTES", 4 * hidden * 5)  # 5 rows per product: 8 slices
    gemms = _matmul.LmHeadGemms(weight, torch.bfloat16, torch.float32)
    gemms.weight, gemms.mixed, gemms.mixed_accumulate = weight, True, False  # as on a GPU without fp32 addmm
    acc = start.clone()
    gemms.accumulate_grad_weight(acc, dz, hidden_chunk)
    expected = start + dz.float().T @ hidden_chunk.float()
    torch.testing.assert_close(acc, expected, rtol=1e-6, atol=1e-6)
