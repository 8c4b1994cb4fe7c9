"""One default training step's policy update (benchmarks/train_step.py) with each shared-prompt attention mode:
"grouped" (the CPU default) and "dense" (the [T, T] mask before it), on SmolLM2-135M-Instruct at the default
batch shapes; with AWPO_BENCH_SHAPES=smoke on a tiny random Llama and a small batch."""
import math
import os

import pytest

from benchmarks import train_step

SMOKE = os.environ.get("AWPO_BENCH_SHAPES", "default") == "smoke"
ROUNDS = int(os.environ.get("AWPO_BENCH_ROUNDS", "3"))
ARGS = (["--model", "tiny", "--prompts", "2", "--group", "3", "--prompt-tokens", "24", "--response-tokens", "8"]
        if SMOKE else [])


@pytest.fixture(scope="module")
def step_setup():
    return train_step.build_setup(train_step.parse_args(ARGS))


@pytest.mark.parametrize("mode", train_step.MODES)
def test_train_step_policy_update(mode, step_setup, benchmark):
    case = train_step.UpdateCase(mode, step_setup)
    flops = train_step.count_flops(step_setup)
    benchmark.group = "train_step policy update"
    benchmark.extra_info.update(mode=mode, packed_tokens=flops.tokens, loss_tokens=flops.loss_tokens,
                                flops=flops.total, model=ARGS[1] if SMOKE else "default")
    benchmark.pedantic(case.run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    summary = case.summary()
    assert all(math.isfinite(value) for value in summary.values()), summary
    assert summary["grad_norm"] > 0, summary  # a zero gradient would mean the backward was skipped
