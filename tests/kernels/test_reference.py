"""The reference itself, checked against hand computations and independent formulations.

Every fast path is tested against `reference.py`; these tests pin the reference to docs/SPEC.md.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from awpo_kernels import reference

f64 = torch.float64


def test_linear_logprobs_matches_cross_entropy_and_ignores_minus_100():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, 11, generator=g, dtype=f64)
    weight = torch.randn(37, 11, generator=g, dtype=f64)
    targets = torch.randint(0, 37, (7,), generator=g)
    targets[2] = -100
    out = reference.linear_logprobs(hidden, weight, targets, temperature=0.7, return_entropy=True)
    logits = hidden @ weight.T / 0.7
    expected = -F.cross_entropy(logits, targets, ignore_index=-100, reduction="none")
    torch.testing.assert_close(out.logprobs, expected)
    p = logits.softmax(-1)
    entropy = -(p * p.log()).sum(-1)
    entropy[2] = 0.0
    torch.testing.assert_close(out.entropy, entropy)
    assert out.logprobs[2] == 0.0 and (out.logprobs <= 0).all()


def _loss(logp, adv, mask, **kw):
    B, T = logp.shape
    seq_ids = torch.arange(B).repeat_interleave(T)
    kw = {k: v.reshape(-1) if isinstance(v, torch.Tensor) and v.shape == logp.shape else v for k, v in kw.items()}
    return reference.policy_loss_flat(logp.reshape(-1), seq_ids, mask.reshape(-1), adv, num_seqs=B, **kw)


def test_grpo_loss_hand_computed():
    # Two sequences, no old log-probs: ratio = 1, so pg_t = -A_b and the loss is the average of -A.
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.1, -4.0]], dtype=f64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([2.0, -1.0], dtype=f64)
    # grpo: mean over sequences of per-sequence token means: ((-2 -2)/2 + (1+1+1)/3) / 2 = (-2 + 1)/2
    out = _loss(logp, adv, mask, loss_type="grpo")
    assert out.loss.item() == pytest.approx(-0.5)
    out.loss.backward()
    # d loss / d logp_t = -A_b * ratio / (len_b * B) on masked tokens
    expected = torch.tensor([[-2 / 4, -2 / 4, 0.0], [1 / 6, 1 / 6, 1 / 6]], dtype=f64)
    torch.testing.assert_close(logp.grad, expected)
    # bnpo / dapo: token sums over 5 tokens: (-2*2 + 1*3)/5; dr_grpo: / (B * L) with L = 4
    assert _loss(logp, adv, mask, loss_type="bnpo").loss.item() == pytest.approx(-1 / 5)
    assert _loss(logp, adv, mask, loss_type="dapo").loss.item() == pytest.approx(-1 / 5)
    assert _loss(logp, adv, mask, loss_type="dapo", num_items_in_batch=10).loss.item() == pytest.approx(-1 / 10)
    assert _loss(logp, adv, mask, loss_type="dr_grpo", max_completion_length=4).loss.item() == pytest.approx(-1 / 8)
    # the batch counts replace B (grpo, dr_grpo) or the token count (dapo): this call is part of a larger batch
    assert _loss(logp, adv, mask, loss_type="grpo", num_seqs_in_batch=8).loss.item() == pytest.approx(-1 / 8)
    assert _loss(logp, adv, mask, loss_type="dr_grpo", max_completion_length=4,
                 num_seqs_in_batch=torch.tensor(5)).loss.item() == pytest.approx(-1 / 20)
    assert _loss(logp, adv, mask, loss_type="dapo", num_items_in_batch=torch.tensor(20)).loss.item() == pytest.approx(
        -1 / 20)


def test_grpo_batch_count_divides_the_sum_of_sequence_means_and_its_gradient():
    # grpo with num_seqs_in_batch = S': sum_b(mean_t(loss_bt)) / S', gradient -A_b / (len_b * S') on b's tokens
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.1, -4.0], [-1.0, -1.0, -1.0]], dtype=f64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)  # the third sequence is empty
    adv = torch.tensor([2.0, -1.0, 3.0], dtype=f64)
    out = _loss(logp, adv, mask, loss_type="grpo", num_seqs_in_batch=10)
    assert out.loss.item() == pytest.approx((-2 + 1) / 10)
    out.loss.backward()
    expected = torch.tensor([[-2 / 20, -2 / 20, 0.0], [1 / 30, 1 / 30, 1 / 30], [0.0, 0.0, 0.0]], dtype=f64)
    torch.testing.assert_close(logp.grad, expected)
    # without the count, the three sequences of the call (the empty one included) are the denominator
    assert _loss(logp, adv, mask, loss_type="grpo").loss.item() == pytest.approx((-2 + 1) / 3)


def test_clipped_ratio_hand_computed():
    # One token per sequence. ratio = e^{0.5} = 1.6487 > 1 + 0.2: clipped for A > 0, not for A < 0.
    logp = torch.tensor([[0.0 - 1.0], [0.0 - 1.0]], dtype=f64, requires_grad=True)
    old = torch.tensor([[-1.5], [-1.5]], dtype=f64)
    mask = torch.ones(2, 1, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0], dtype=f64)
    out = _loss(logp, adv, mask, old_logprobs=old, loss_type="bnpo")
    r = math.exp(0.5)
    # seq 0: -min(r*1, 1.2*1) = -1.2 ; seq 1: -min(-r, -1.2) = r
    assert out.loss.item() == pytest.approx((-1.2 + r) / 2)
    assert out.metrics["clip_ratio/high_mean"].item() == pytest.approx(0.5)
    assert out.metrics["clip_ratio/low_mean"].item() == 0.0
    out.loss.backward()
    # clipped token has no gradient; the other: d(r)/d logp = r, times -A / 2
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0], [r / 2]], dtype=f64))
    # delta caps the unclipped branch: -min(min(r, 1.5) * -1, clamp * -1) = 1.5 for seq 1
    capped = _loss(logp.detach(), adv, mask, old_logprobs=old, delta=1.5, loss_type="bnpo")
    assert capped.loss.item() == pytest.approx((-1.2 + 1.5) / 2)


def test_sequence_level_ratio_is_the_geometric_mean():
    logp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=f64)
    old = torch.tensor([[-1.1, -2.0, -5.0]], dtype=f64)
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)  # the third token is not in the loss
    adv = torch.tensor([-1.0], dtype=f64)
    out = _loss(logp, adv, mask, old_logprobs=old, importance_sampling_level="sequence", loss_type="bnpo",
                epsilon_low=10.0, epsilon_high=10.0)
    assert out.loss.item() == pytest.approx(math.exp(0.05))


@pytest.mark.parametrize("kind,expected", [
    ("k1", lambda d: -d), ("k2", lambda d: 0.5 * d * d), ("k3", lambda d: math.exp(d) - d - 1.0)])
def test_kl_estimators(kind, expected):
    logp = torch.tensor([[-1.0]], dtype=f64)
    ref = torch.tensor([[-0.6]], dtype=f64)
    out = _loss(logp, torch.tensor([0.0], dtype=f64), torch.ones(1, 1, dtype=torch.bool), ref_logprobs=ref,
                beta=0.5, kl_type=kind, loss_type="bnpo")
    d = -0.6 - (-1.0)  # ref - logp
    assert out.metrics["kl"].item() == pytest.approx(expected(d))
    assert out.loss.item() == pytest.approx(0.5 * expected(d))


def test_entropy_bonus_and_importance_weights():
    logp = torch.tensor([[-1.0, -2.0]], dtype=f64)
    entropy = torch.tensor([[0.5, 1.5]], dtype=f64)
    w = torch.tensor([[0.5, 2.0]], dtype=f64)
    out = _loss(logp, torch.tensor([1.0], dtype=f64), torch.ones(1, 2, dtype=torch.bool), entropy=entropy,
                entropy_coef=0.1, importance_weights=w, loss_type="bnpo")
    # pg = -1 per token, weighted by w; minus 0.1 * H
    assert out.loss.item() == pytest.approx(((-0.5 - 0.05) + (-2.0 - 0.15)) / 2)
    assert out.metrics["entropy"].item() == pytest.approx(1.0)


def test_grpo_advantages_hand_computed():
    out = reference.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=f64), group_size=4,
                                     estimator="grpo", eps=0.0)
    # mean 0.25, unbiased std sqrt(0.75/3) = 0.5
    torch.testing.assert_close(out.advantages, torch.tensor([1.5, -0.5, -0.5, -0.5], dtype=f64))


def test_awpo_advantages_hand_computed():
    o = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=f64)
    s = torch.tensor([0.2, 0.9, 0.1, float("nan")], dtype=f64)
    out = reference.group_advantages(o, s, group_size=4, eps=0.0)
    # popstd(o) = sqrt(0.1875) = 0.4330 -> v = 0.8660, soft gate g = 0.1340; pass rate 0.25 -> w = 0.75
    g = 1 - math.sqrt(0.1875) / 0.5
    assert out.gate.item() == pytest.approx(g)
    assert out.weight.item() == pytest.approx(0.75)
    # reasoning over 3 valid: mean 0.4, unbiased std sqrt(((.2)^2+(.5)^2+(.3)^2)/2) = sqrt(0.19)
    sd = math.sqrt(0.19)
    a_s = [(-0.2) / sd, 0.5 / sd, -0.3 / sd, 0.0]
    a_o = [1.5, -0.5, -0.5, -0.5]
    expected = []
    for ao, as_ in zip(a_o, a_s):
        r = g * 0.75 * as_
        bound = 0.5 * abs(ao)
        expected.append(ao + max(-bound, min(bound, r)))
    torch.testing.assert_close(out.advantages, torch.tensor(expected, dtype=f64))
    assert out.reasoning_std.item() == pytest.approx(sd)


def test_equal_outcomes_that_do_not_average_exactly_still_count_as_equal():
    # 0.3 * 7 / 7 != 0.3 in floating point; the group must still be "all outcomes equal" (SPEC property 3)
    for dtype in (torch.float32, f64):
        out = reference.group_advantages(torch.full((7,), 0.3, dtype=dtype), torch.linspace(0, 1, 7, dtype=dtype),
                                         group_size=7, gate="hard")
        assert out.gate.item() == 1.0 and out.outcome_std.item() == 0.0
        assert (out.advantages != 0).sum() == 6  # the median score sits at the mean
        assert out.advantages.abs().max() <= 1.0
