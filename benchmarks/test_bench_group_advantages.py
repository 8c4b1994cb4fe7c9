"""group_advantages (AWPO estimator) against its plain-torch reference and plain GRPO normalisation."""
import torch

OP = "group_advantages"


def test_group_advantages(bench_case, run_benchmark):
    run_benchmark(bench_case)
    advantages, outcome = bench_case.kept, bench_case.inputs.outcome
    assert advantages.shape == outcome.shape
    assert torch.isfinite(advantages).all()
    # Each group's outcome term is centred: a non-degenerate batch has both signs.
    assert (advantages > 0).any() and (advantages < 0).any()
