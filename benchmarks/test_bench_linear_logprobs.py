"""linear_logprobs forward (no grad) against materialised logits + log_softmax + gather, and one GEMM."""
import torch

from benchmarks.baselines import IGNORE_INDEX

OP = "linear_logprobs"


def test_linear_logprobs(bench_case, run_benchmark):
    summary = run_benchmark(bench_case)
    if summary is None:  # the bare GEMM floor computes no log-probs
        return
    logprobs, targets = bench_case.kept, bench_case.inputs.targets
    assert logprobs.shape == targets.shape and logprobs.dtype == torch.float32
    assert torch.isfinite(logprobs).all() and (logprobs <= 0).all()
    assert (logprobs[targets == IGNORE_INDEX] == 0).all()
    assert (logprobs[targets != IGNORE_INDEX] < 0).any()
