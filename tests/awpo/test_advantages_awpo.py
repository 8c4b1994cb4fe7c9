"""awpo.batch_advantages: options, agreement with the reference group op, diagnostics, and the path from
scored tool-use rollouts to advantages."""


import pytest
import torch

from awpo.batch_advantages import AdvantageOptions, compute_advantages
from awpo_kernels import reference

NAN = float("nan")


def random_batch(groups, size, seed, nan_share=0.2):
    g = torch.Generator().manual_seed(seed)
    outcome = (torch.rand(groups * size, generator=g) < 0.4).float()
    outcome[:size] = 0.0  # one group with no outcome variance
    reasoning = torch.rand(groups * size, generator=g)
    reasoning[torch.rand(groups * size, generator=g) < nan_share] = NAN
    return outcome, reasoning


@pytest.mark.parametrize("options", [
    AdvantageOptions(),
    AdvantageOptions(estimator="grpo"),
    AdvantageOptions(estimator="awpo_mixed", weight="bernoulli"),
    AdvantageOptions(gate="hard", gate_threshold=0.05, clip="none", reasoning_coef=0.7, clip_shrink=0.5),
    AdvantageOptions(gate="ratio", scale="none", unbiased=False, clip_ratio=0.3, clip_max=0.8),
])
def test_matches_the_reference_group_op(options):
    outcome, reasoning = random_batch(groups=3, size=5, seed=1)
    batch = compute_advantages(outcome.tolist(), reasoning.tolist(), group_size=5, options=options)
    kwargs = options.kernel_kwargs()
    expected = reference.group_advantages(outcome, None if options.estimator == "grpo" else reasoning, group_size=5, **kwargs)
    torch.testing.assert_close(batch.advantages, expected.advantages.float())
    torch.testing.assert_close(batch.epsilon_low, expected.epsilon_low.float())
    torch.testing.assert_close(batch.epsilon_high, expected.epsilon_high.float())
    assert batch.advantages.shape == (15,)


def test_without_reasoning_it_is_grpo():
    outcome, reasoning = random_batch(groups=4, size=3, seed=2)
    awpo_no_reasoning = compute_advantages(outcome, None, group_size=3)
    grpo = compute_advantages(outcome, reasoning, group_size=3, options=AdvantageOptions(estimator="grpo"))
    torch.testing.assert_close(awpo_no_reasoning.advantages, grpo.advantages)
    all_nan = compute_advantages(outcome, [NAN] * 12, group_size=3)
    torch.testing.assert_close(all_nan.advantages, grpo.advantages)


def test_metrics_are_per_batch_diagnostics():
    outcome = [0, 0, 0, 1, 1, 1, 1, 0, 0]  # group 0 all failed, group 1 all passed, group 2 mixed
    reasoning = [0.2, 0.9, NAN, 0.5, 0.6, 0.7, 0.1, 0.4, 0.3]
    batch = compute_advantages(outcome, reasoning, group_size=3)
    m = batch.metrics
    assert m["adv/zero_outcome_variance_groups"] == pytest.approx(2 / 3)
    # group 0 failed everywhere but its reasoning differs: AWPO still gives it a signal; group 1
    # fully succeeded (weight 1 - p = 0): nothing to learn there
    assert m["adv/rescued_groups"] == pytest.approx(1 / 3)
    assert batch.advantages[:2].abs().min() > 0 and batch.advantages[3:6].abs().max() == 0
    assert batch.advantages[2] == 0  # NaN reasoning gets no reasoning term
    assert m["reward/reasoning_mean"] == pytest.approx(sum([0.2, 0.9, 0.5, 0.6, 0.7, 0.1, 0.4, 0.3]) / 8)
    assert m["reward/reasoning_valid_fraction"] == pytest.approx(8 / 9)
    assert m["reward/outcome_mean"] == pytest.approx(4 / 9)
    assert m["adv/weight_mean"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert 0.0 <= m["adv/clipped_fraction"] <= 1.0 and 0.0 <= m["adv/gate_mean"] <= 1.0
    assert all(isinstance(v, float) for v in m.values())


def test_reasoning_never_overturns_the_outcome_sign():
    outcome, reasoning = random_batch(groups=6, size=4, seed=3, nan_share=0.0)
    batch = compute_advantages(outcome, reasoning, group_size=4, options=AdvantageOptions(reasoning_coef=5.0))
    grpo = compute_advantages(outcome, None, group_size=4)
    moved = grpo.advantages != 0
    assert moved.any()
    assert torch.equal(torch.sign(batch.advantages[moved]), torch.sign(grpo.advantages[moved]))


@pytest.mark.parametrize("kwargs, match", [
    ({"estimator": "ppo"}, "estimator must be one of"),
    ({"gate": "sigmoid"}, "gate must be one of"),
    ({"weight": "quadratic"}, "weight must be one of"),
    ({"clip": "hard"}, "clip must be one of"),
    ({"scale": "batch"}, "scale must be one of"),
    ({"clip_ratio": 0}, "clip_ratio must be a finite number > 0"),
    ({"epsilon_high": float("inf")}, "epsilon_high must be a finite number > 0"),
    ({"reasoning_coef": -1}, "reasoning_coef must be a finite number >= 0"),
    ({"outcome_range": (1.0, 1.0)}, "outcome_range"),
])
def test_bad_options_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdvantageOptions(**kwargs)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="group_size"):
        compute_advantages([1.0, 0.0, 1.0], None, group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        compute_advantages([1.0, 0.0], None, group_size=1)
    with pytest.raises(ValueError, match="reasoning has 3 scores but outcome has 4"):
        compute_advantages([1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5], group_size=2)
    with pytest.raises(ValueError, match="outcome must be one score per rollout"):
        compute_advantages(torch.zeros(2, 2), None, group_size=2)


def test_scored_tool_use_rollouts_to_advantages():
    """Four samples of one built-in task, scored by the outcome reward and the RuleJudge: the
    correct call gets the largest advantage, the junk the smallest."""
    from awpo.bfcl.scripted import first_acceptable_calls
    from awpo.data import builtin_tasks
    from awpo.judges import RuleJudge
    from awpo.rewards import outcome_reward
    from awpo.toolcall import format_tool_calls, parse_completion

    tasks = builtin_tasks("train", n=40, seed=0)
    task = next(t for t in tasks if t.category == "simple" and len(first_acceptable_calls(t.ground_truth)[0]["arguments"]) >= 2)
    right = first_acceptable_calls(task.ground_truth)[0]
    values = " ".join(str(v) for v in right["arguments"].values())
    first = next(iter(right["arguments"]))  # one value wrong (invented), the others right
    value = right["arguments"][first]
    wrong_args = {**right["arguments"], first: value + 1 if isinstance(value, (int, float)) else f"{value} maybe"}
    wrong_call = format_tool_calls([{"name": right["name"], "arguments": wrong_args}])
    samples = [
        f"<think>The user wants {right['name']} with {values}.</think>\n" + format_tool_calls([right]),
        f"<think>Use {right['name']}.</think>\n" + wrong_call,
        f"<think>banana {right['name']} purple elephant quantum</think>\n" + wrong_call,
        "<tool_call>\n{oops}\n</tool_call>",
    ]
    judge = RuleJudge()
    outcome = [outcome_reward(s, task.ground_truth, tools=task.tools, graded=True) for s in samples]
    reasoning = []
    for s in samples:
        parsed = parse_completion(s)
        reasoning.append(judge.score(task.user_prompt, parsed.reasoning, parsed.calls, task.tools))
    assert outcome[0] == 1.0 and outcome[3] == 0.0 and 0 < outcome[2] == outcome[1] < 1
    assert reasoning[1] > reasoning[2] > reasoning[3] == 0.0  # no <think>: the worst score (SPEC section 1)
    batch = compute_advantages(outcome, reasoning, group_size=4, options=AdvantageOptions(graded_outcome=True))
    adv = batch.advantages.tolist()
    assert adv[0] == max(adv) and adv[3] == min(adv) and adv[1] > adv[2]
