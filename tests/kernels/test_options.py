"""LossOptions / AdvantageOptions: one definition of each op family's options (values, defaults, checks, docs)."""
import dataclasses
import inspect
import typing

import pytest
import torch

import awpo_kernels as ak
from awpo_kernels import reference
from awpo_kernels.options import AdvantageKeywords, LossKeywords


def test_keyword_typed_dicts_list_the_dataclass_fields():
    for cls, keywords in ((ak.LossOptions, LossKeywords), (ak.AdvantageOptions, AdvantageKeywords)):
        assert list(typing.get_type_hints(keywords)) == [f.name for f in dataclasses.fields(cls)], cls.__name__


def test_allowed_values_are_the_literal_types():
    hints = typing.get_type_hints(ak.LossOptions)
    assert ak.LossOptions.LOSS_TYPES == typing.get_args(hints["loss_type"]) == ("grpo", "bnpo", "dr_grpo", "dapo")
    assert ak.LossOptions.KL_TYPES == ("k1", "k2", "k3")
    assert ak.AdvantageOptions.ESTIMATORS == ("grpo", "awpo", "awpo_mixed", "reward_sum", "gdpo")
    assert ak.AdvantageOptions.GATES == ("soft", "hard", "ratio", "none")


def test_reference_defaults_are_the_options_defaults():
    for func, cls in ((reference.group_advantages, ak.AdvantageOptions), (reference.policy_loss_flat, ak.LossOptions)):
        params = inspect.signature(func).parameters
        for f in dataclasses.fields(cls):
            if f.name in params:
                assert params[f.name].default == f.default, (func.__name__, f.name)


@pytest.mark.parametrize("cls,changes,name", [
    (ak.LossOptions, dict(loss_type="ppo"), "loss_type"),
    (ak.LossOptions, dict(kl_type="k4"), "kl_type"),
    (ak.LossOptions, dict(importance_sampling_level="tokens"), "importance_sampling_level"),
    (ak.LossOptions, dict(temperature=0.0), "temperature"),
    (ak.LossOptions, dict(epsilon_high=-0.1), "epsilon_high"),
    (ak.LossOptions, dict(delta=1.0 * -1), "delta"),
    (ak.LossOptions, dict(beta=-0.1), "beta"),
    (ak.LossOptions, dict(entropy_coef="0.1"), "entropy_coef"),
    (ak.LossOptions, dict(max_completion_length=0), "max_completion_length"),
    (ak.AdvantageOptions, dict(estimator="ppo"), "estimator"),
    (ak.AdvantageOptions, dict(eps=0.0), "eps"),
    (ak.AdvantageOptions, dict(outcome_range=(1.0, 0.0)), "outcome_range"),
    (ak.AdvantageOptions, dict(clip_shrink="1"), "clip_shrink"),
    (ak.AdvantageOptions, dict(unbiased="yes"), "unbiased"),
])
def test_bad_values_fail_at_construction_naming_the_option(cls, changes, name):
    with pytest.raises(ValueError, match=name):
        cls(**changes)


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ak.LossOptions().beta = 1.0
    assert ak.AdvantageOptions(outcome_range=[0, 2]).outcome_range == (0.0, 2.0)


def test_options_object_and_keywords_agree_and_keywords_override():
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(3, 5, generator=g, dtype=torch.float64)
    adv, mask = torch.randn(3, generator=g, dtype=torch.float64), torch.ones(3, 5, dtype=torch.bool)
    old = logp + 0.1 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    opts = ak.LossOptions(loss_type="grpo", epsilon_high=0.28, delta=1.5)
    by_keywords = ak.policy_loss(logp, adv, mask, old_logprobs=old, loss_type="grpo", epsilon_high=0.28, delta=1.5)
    by_options = ak.policy_loss(logp, adv, mask, old_logprobs=old, options=opts)
    assert torch.equal(by_keywords.loss, by_options.loss)
    overridden = ak.policy_loss(logp, adv, mask, old_logprobs=old, options=opts, loss_type="bnpo")
    expected = ak.policy_loss(logp, adv, mask, old_logprobs=old, loss_type="bnpo", epsilon_high=0.28, delta=1.5)
    assert torch.equal(overridden.loss, expected.loss)
    with pytest.raises(TypeError, match="epsilon"):
        ak.policy_loss(logp, adv, mask, epsilon=0.2)
    with pytest.raises(TypeError, match="LossOptions"):
        ak.policy_loss(logp, adv, mask, options=ak.AdvantageOptions())


def test_group_advantages_takes_an_options_object():
    outcome = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    opts = ak.AdvantageOptions(gate="hard", clip_shrink=0.5)
    a = ak.group_advantages(outcome, group_size=3, options=opts)
    b = ak.group_advantages(outcome, group_size=3, gate="hard", clip_shrink=0.5)
    assert torch.equal(a.advantages, b.advantages) and torch.equal(a.epsilon_low, b.epsilon_low)


def test_module_validates_at_construction():
    with pytest.raises(ValueError, match="loss_type"):
        ak.FusedLinearPolicyLoss(loss_type="ppo")
    with pytest.raises(ValueError, match="backend"):
        ak.FusedLinearPolicyLoss(backend="cuda")
    with pytest.raises(ValueError, match="chunk_size"):
        ak.FusedLinearPolicyLoss(chunk_size=0)
    module = ak.FusedLinearPolicyLoss(ak.LossOptions(beta=0.0), epsilon_high=0.28)
    assert module.loss_options.epsilon_high == 0.28


def test_docstrings_document_every_option():
    for op, cls in ((ak.fused_linear_policy_loss, ak.LossOptions), (ak.policy_loss, ak.LossOptions),
                    (ak.group_advantages, ak.AdvantageOptions)):
        for f in dataclasses.fields(cls):
            assert f"{f.name} (" in op.__doc__, (op.__name__, f.name)
        assert "{" not in op.__doc__
