"""`group_advantages` on every backend against `reference.group_advantages` (float64), the four AWPO
properties of docs/SPEC.md section 2, the defining properties of the ablation baselines (reward_sum, gdpo,
gate "none"), hand-computed examples, and input validation.

Backends: `torch` always; `triton_interp` (Triton on CPU) only when TRITON_INTERPRET=1 was set before
triton was imported, which `test_advantages_triton_interpreted.py` does in a subprocess; `triton_cuda`
when a GPU is present (skipped by its marker otherwise).
"""
import itertools
import math
import os

import pytest
import torch

import awpo_kernels as ak
from awpo_kernels import reference

f64 = torch.float64
NAN = float("nan")
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_CUDA = torch.cuda.is_available()

BACKENDS = [pytest.param(("torch", "cpu"), id="torch")]
if INTERPRETING:
    BACKENDS.append(pytest.param(("triton", "cpu"), id="triton_interp"))
if HAS_CUDA and not INTERPRETING:  # the CUDA variant exists only where it can run
    BACKENDS.append(pytest.param(("triton", "cuda"), id="triton_cuda"))

FIELDS = ("advantages", "epsilon_low", "epsilon_high", "gate", "weight", "outcome_std", "reasoning_std",
          "clipped_fraction")


@pytest.fixture(params=BACKENDS)
def adv_backend(request):
    return request.param


def run(adv_backend, outcome, reasoning=None, **options):
    """group_advantages on `adv_backend`, outputs brought back to the CPU."""
    name, device = adv_backend
    out = ak.group_advantages(outcome.to(device), None if reasoning is None else reasoning.to(device),
                              backend=name, **options)
    for field in FIELDS:
        setattr(out, field, getattr(out, field).cpu())
    return out


# ----------------------------------------------------------------------------- random data

def random_batch(num_groups, group_size, seed, *, graded=False, outcome_range=(0.0, 1.0), nan_rate=0.25):
    """Odd-sized random rewards with the edge cases the op must handle, in float64.

    Groups 0-2 have equal outcomes (all max, all min, all at 3/4 of the range: values that every
    adv_backend, the reference included, averages exactly). Group 3 has no reasoning score, group 4
    exactly one, group 5 all-equal scores; elsewhere about `nan_rate` of the scores are missing.
    """
    gen = torch.Generator().manual_seed(seed)
    lo, hi = outcome_range
    shape = (num_groups, group_size)
    if graded:
        outcome = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=f64)
    else:
        outcome = torch.where(torch.rand(shape, generator=gen, dtype=f64) < 0.4, hi, lo)
    outcome[0], outcome[1], outcome[2] = hi, lo, lo + 0.75 * (hi - lo)
    reasoning = torch.rand(shape, generator=gen, dtype=f64)
    reasoning[torch.rand(shape, generator=gen) < nan_rate] = NAN
    if num_groups > 3:
        reasoning[3] = NAN
    if num_groups > 4:
        reasoning[4] = NAN
        reasoning[4, group_size // 2] = 0.25
    if num_groups > 5:
        reasoning[5] = 0.5
    return outcome.reshape(-1), reasoning.reshape(-1)


def assert_matches_reference(out, ref, atol, rtol):
    for field in FIELDS:
        actual, expected = getattr(out, field), getattr(ref, field)
        assert actual.shape == expected.shape, field
        torch.testing.assert_close(actual.to(f64), expected, atol=atol, rtol=rtol, msg=lambda m, field=field: f"{field}: {m}")


# Option combinations that change the code path: every gate x weight x clip for AWPO, both scales and
# both std corrections, every gate x weight for the mixed estimator, GRPO with both scales.
AWPO_CASES = [dict(estimator="awpo", gate=g, weight=w, clip=c)
              for g, w, c in itertools.product(("soft", "hard", "ratio"), ("linear", "bernoulli", "none"),
                                               ("sign", "none"))]
AWPO_CASES += [dict(estimator="awpo", scale="none"), dict(estimator="awpo", unbiased=False, gate="ratio"),
               dict(estimator="awpo", gate="hard", gate_threshold=0.2, clip_ratio=0.9),
               dict(estimator="awpo", reasoning_coef=2.5, clip_max=0.7, clip_ratio=0.3)]
MIXED_CASES = [dict(estimator="awpo_mixed", gate=g, weight=w)
               for g, w in itertools.product(("soft", "hard", "ratio"), ("linear", "bernoulli", "none"))]
MIXED_CASES += [dict(estimator="awpo_mixed", scale="none", gate="ratio"), dict(estimator="awpo_mixed", unbiased=False)]
GRPO_CASES = [dict(estimator="grpo"), dict(estimator="grpo", scale="none"), dict(estimator="grpo", unbiased=False)]
# The ablations: gate "none" on both AWPO estimators; reward_sum and gdpo with both scales, both std
# corrections, another reasoning_coef, and several gates / weights (their gate and weight are diagnostics
# and drive the epsilon shrink). Appended, so the cases above keep their seeds.
GATE_NONE_CASES = [dict(estimator="awpo", gate="none", weight=w, clip=c)
                   for w, c in (("linear", "sign"), ("bernoulli", "none"), ("none", "sign"))]
GATE_NONE_CASES += [dict(estimator="awpo_mixed", gate="none", weight="linear"),
                    dict(estimator="awpo_mixed", gate="none", weight="none", scale="none")]
REWARD_SUM_CASES = [dict(estimator="reward_sum"), dict(estimator="reward_sum", scale="none"),
                    dict(estimator="reward_sum", unbiased=False, gate="ratio", weight="bernoulli"),
                    dict(estimator="reward_sum", reasoning_coef=2.5, gate="none"),
                    dict(estimator="reward_sum", reasoning_coef=0.3, gate="hard", weight="none", scale="none")]
GDPO_CASES = [dict(estimator="gdpo"), dict(estimator="gdpo", scale="none"),
              dict(estimator="gdpo", unbiased=False, gate="ratio", weight="bernoulli"),
              dict(estimator="gdpo", reasoning_coef=2.5, gate="none"),
              dict(estimator="gdpo", reasoning_coef=0.3, gate="hard", weight="none", unbiased=False, scale="none")]
CASES = AWPO_CASES + MIXED_CASES + GRPO_CASES + GATE_NONE_CASES + REWARD_SUM_CASES + GDPO_CASES
GROUP_SIZES = (2, 3, 5, 7, 16)


def case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


def test_the_reference_cases_cover_every_value_of_every_choice_option():
    """Each estimator, gate, weight, clip and scale runs on every backend against the reference (a value
    added to options.py without a case here, and so possibly without a kernel branch, fails this)."""
    resolved = [ak.AdvantageOptions(**case) for case in CASES]
    for field, allowed in (("estimator", ak.AdvantageOptions.ESTIMATORS), ("gate", ak.AdvantageOptions.GATES),
                           ("weight", ak.AdvantageOptions.WEIGHTS), ("clip", ak.AdvantageOptions.CLIPS),
                           ("scale", ak.AdvantageOptions.SCALES)):
        assert {getattr(options, field) for options in resolved} == set(allowed), field
    # every gate and weight also with the estimator that uses both in its advantages (awpo)
    awpo = [(o.gate, o.weight) for o in resolved if o.estimator == "awpo"]
    assert {g for g, _ in awpo} == set(ak.AdvantageOptions.GATES)
    assert {w for _, w in awpo} == set(ak.AdvantageOptions.WEIGHTS)


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(adv_backend, case, group_size):
    index = CASES.index(case)
    graded = index % 2 == 1
    outcome_range = (-1.0, 3.0) if index % 3 == 2 else (0.0, 1.0)
    outcome, reasoning = random_batch(7 + 2 * (index % 3), group_size, seed=100 * index + group_size,
                                      graded=graded, outcome_range=outcome_range)
    options = dict(group_size=group_size, outcome_range=outcome_range, clip_shrink=0.7, epsilon_low=0.2,
                   epsilon_high=0.28, **case)
    ref = reference.group_advantages(outcome, reasoning, **options)
    assert_matches_reference(run(adv_backend, outcome, reasoning, **options), ref, atol=1e-9, rtol=1e-9)
    out32 = run(adv_backend, outcome.float(), reasoning.float(), **options)
    assert out32.advantages.dtype == torch.float32
    ref32 = reference.group_advantages(outcome.float().to(f64), reasoning.float().to(f64), **options)
    assert_matches_reference(out32, ref32, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("estimator", ak.AdvantageOptions.ESTIMATORS)
@pytest.mark.parametrize("gate", ("soft", "ratio", "none"))
def test_without_reasoning_matches_reference(adv_backend, estimator, gate):
    outcome, _ = random_batch(9, 5, seed=7, graded=True)
    options = dict(group_size=5, estimator=estimator, gate=gate, clip_shrink=0.5)
    ref = reference.group_advantages(outcome, None, **options)
    assert_matches_reference(run(adv_backend, outcome, None, **options), ref, atol=1e-9, rtol=1e-9)
    ref32 = reference.group_advantages(outcome.float().to(f64), None, **options)
    assert_matches_reference(run(adv_backend, outcome.float(), None, **options), ref32, atol=1e-5, rtol=1e-5)


def test_half_precision_inputs_give_float32(adv_backend):
    outcome, reasoning = random_batch(5, 3, seed=11)
    out = run(adv_backend, outcome.bfloat16(), reasoning.half(), group_size=3)
    ref = reference.group_advantages(outcome.bfloat16().to(f64), reasoning.half().to(f64), group_size=3)
    assert all(getattr(out, f).dtype == torch.float32 for f in FIELDS)
    assert_matches_reference(out, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the AWPO properties

# The interpreter runs one program per group at a few ms each: fewer random groups there.
PROPERTY_GROUPS = 41 if INTERPRETING else 101


def property_batch(seed, num_groups=PROPERTY_GROUPS, group_size=6, graded=False):
    return random_batch(num_groups, group_size, seed, graded=graded, nan_rate=0.2)


@pytest.mark.parametrize("gate,weight", [("soft", "linear"), ("hard", "bernoulli"), ("ratio", "none")])
def test_property1_no_reasoning_signal_gives_exactly_grpo(adv_backend, gate, weight):
    outcome, reasoning = property_batch(seed=1, graded=True)
    options = dict(group_size=6, gate=gate, weight=weight, clip_shrink=0.3)
    grpo = run(adv_backend, outcome, reasoning, estimator="grpo", **options).advantages
    all_nan = run(adv_backend, outcome, torch.full_like(reasoning, NAN), **options)
    no_coef = run(adv_backend, outcome, reasoning, reasoning_coef=0.0, **options)
    with_reasoning = run(adv_backend, outcome, reasoning, **options).advantages
    assert torch.equal(all_nan.advantages, grpo)
    assert torch.equal(no_coef.advantages, grpo)
    assert all_nan.clipped_fraction == 0 and no_coef.clipped_fraction == 0
    assert not torch.equal(with_reasoning, grpo)  # the reasoning term is live on this data


@pytest.mark.parametrize("clip_ratio", (0.1, 0.5, 0.99))
@pytest.mark.parametrize("gate", ("soft", "ratio"))
def test_property2_sign_clip_never_overturns_the_outcome(adv_backend, clip_ratio, gate):
    for seed, graded in ((2, False), (3, True)):
        outcome, reasoning = property_batch(seed, graded=graded)
        options = dict(group_size=6, gate=gate, weight="none", reasoning_coef=4.0, clip_ratio=clip_ratio)
        adv_o = run(adv_backend, outcome, reasoning, estimator="grpo", **options).advantages
        awpo = run(adv_backend, outcome, reasoning, clip="sign", **options)
        unclipped = run(adv_backend, outcome, reasoning, clip="none", **options).advantages
        decided = adv_o != 0
        assert decided.sum() > 0.8 * decided.numel()
        assert torch.equal(torch.sign(awpo.advantages[decided]), torch.sign(adv_o[decided]))
        assert awpo.clipped_fraction > 0  # the clip had work to do ...
        assert (torch.sign(unclipped[decided]) != torch.sign(adv_o[decided])).any()  # ... and it mattered
        assert ((awpo.advantages - adv_o).abs() <= clip_ratio * adv_o.abs() + 1e-6)[decided].all()


@pytest.mark.parametrize("gate,weight", [("soft", "linear"), ("hard", "linear"), ("ratio", "bernoulli"),
                                         ("soft", "none")])
def test_property3_equal_outcomes_still_learn_from_reasoning(adv_backend, gate, weight):
    # Equal outcomes in every group, graded values included (0.1 and 0.3 are not averaged exactly by a
    # plain floating-point mean); the reasoning scores differ.
    gen = torch.Generator().manual_seed(4)
    levels = torch.tensor([0.0, 0.1, 0.3, 0.6, 0.75, 1.0], dtype=f64)
    num_groups, group_size = PROPERTY_GROUPS + 20, 7
    outcome = levels[torch.randint(0, len(levels), (num_groups, 1), generator=gen)].expand(-1, group_size)
    reasoning = torch.rand(num_groups, group_size, generator=gen, dtype=f64)
    reasoning[torch.rand(num_groups, group_size, generator=gen) < 0.2] = NAN
    reasoning[:, :2] = torch.tensor([0.1, 0.9], dtype=f64)  # at least two valid, different scores
    clip_max = 0.7
    for dtype in (f64, torch.float32):
        out = run(adv_backend, outcome.reshape(-1).to(dtype), reasoning.reshape(-1).to(dtype), group_size=group_size,
                  gate=gate, weight=weight, reasoning_coef=3.0, clip_max=clip_max)
        adv = out.advantages.to(f64).reshape(num_groups, group_size)
        assert (out.outcome_std == 0).all()
        weight_positive = (out.weight > 0)[:, None]
        s = reasoning.to(dtype).to(f64)
        valid = ~torch.isnan(s)
        mean_s = torch.where(valid, s, 0.0).sum(1, keepdim=True) / valid.sum(1, keepdim=True)
        differs = valid & ((s - mean_s).abs() > 1e-3)
        assert weight_positive.sum() > num_groups // 2
        assert weight == "none" or (~weight_positive).sum() > num_groups // 20  # solved groups get w = 0 ...
        assert (adv[differs & weight_positive] != 0).all()
        assert (adv[~valid] == 0).all() and (adv[~weight_positive.expand_as(adv)] == 0).all()  # ... and A = 0
        assert (adv.abs() <= clip_max + 1e-6).all()
        assert (adv.abs().amax(1)[weight_positive[:, 0]] > 0.1).all()


@pytest.mark.parametrize("gate", ("soft", "hard"))
@pytest.mark.parametrize("clip", ("sign", "none"))
def test_property4_reasoning_shift_and_scale_leave_advantages_unchanged(adv_backend, gate, clip):
    outcome, reasoning = property_batch(seed=5, graded=gate == "soft")
    gen = torch.Generator().manual_seed(6)
    num_groups = outcome.numel() // 6
    scale = (0.2 + 3.0 * torch.rand(num_groups, 1, generator=gen, dtype=f64)).expand(-1, 6).reshape(-1)
    shift = (4.0 * torch.rand(num_groups, 1, generator=gen, dtype=f64) - 2.0).expand(-1, 6).reshape(-1)
    options = dict(group_size=6, gate=gate, clip=clip, weight="bernoulli", reasoning_coef=1.5)
    for eps, atol in ((1e-12, 1e-8), (1e-6, 1e-3)):
        base = run(adv_backend, outcome, reasoning, eps=eps, **options).advantages
        moved = run(adv_backend, outcome, reasoning * scale + shift, eps=eps, **options).advantages
        torch.testing.assert_close(moved, base, atol=atol, rtol=0)
    assert not torch.equal(base, run(adv_backend, outcome, None, **options).advantages)  # reasoning matters here


# ----------------------------------------------------------------------------- the ablation baselines

def equal_groups(group_size, seed, num_groups=12):
    """Every group's outcomes equal (graded levels that a plain floating-point mean does not average
    exactly), one level per group, in float64 [num_groups * group_size]."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.0, 0.1, 0.3, 0.6, 0.75, 1.0], dtype=f64)
    picks = torch.randint(0, len(levels), (num_groups, 1), generator=gen)
    picks[: len(levels), 0] = torch.arange(len(levels))  # every level at least once
    return levels[picks].expand(-1, group_size).reshape(-1)


@pytest.mark.parametrize("scale,unbiased", [("group", True), ("none", True), ("group", False)])
def test_reward_sum_is_grpo_on_the_summed_reward(adv_backend, scale, unbiased):
    outcome, reasoning = property_batch(seed=21, graded=True)
    coef = 1.7
    options = dict(group_size=6, scale=scale, unbiased=unbiased)
    for dtype, tol in ((f64, 1e-10), (torch.float32, 2e-5)):
        o, s = outcome.to(dtype), reasoning.to(dtype)
        got = run(adv_backend, o, s, estimator="reward_sum", reasoning_coef=coef, **options)
        summed = o + coef * torch.nan_to_num(s, nan=0.0)  # x = o + coef * s, NaN counting as 0
        grpo = run(adv_backend, summed, None, estimator="grpo", outcome_range=(0.0, 1.0 + coef), **options)
        assert got.advantages.dtype == dtype and got.clipped_fraction == 0
        torch.testing.assert_close(got.advantages, grpo.advantages, atol=tol, rtol=tol)
        torch.testing.assert_close(got.outcome_std, run(adv_backend, o, s, estimator="grpo", **options).outcome_std)
    plain = run(adv_backend, outcome, None, estimator="grpo", **options).advantages
    assert not torch.allclose(got.advantages.to(f64), plain, atol=1e-3)  # the reasoning reward is live here


def test_reward_sum_without_reasoning_signal_is_exactly_grpo(adv_backend):
    outcome, reasoning = property_batch(seed=22, graded=True)
    options = dict(group_size=6, clip_shrink=0.4)
    for dtype in (f64, torch.float32):
        o, s = outcome.to(dtype), reasoning.to(dtype)
        grpo = run(adv_backend, o, s, estimator="grpo", **options).advantages
        for scores, coef in ((None, 1.0), (torch.full_like(s, NAN), 1.0), (s, 0.0)):
            out = run(adv_backend, o, scores, estimator="reward_sum", reasoning_coef=coef, **options)
            assert torch.equal(out.advantages, grpo)


@pytest.mark.parametrize("scale,unbiased", [("group", True), ("group", False), ("none", True)])
def test_gdpo_is_whitened_over_the_batch(adv_backend, scale, unbiased):
    outcome, reasoning = property_batch(seed=23)
    options = dict(group_size=6, estimator="gdpo", scale=scale, unbiased=unbiased, reasoning_coef=1.3)
    for dtype, tol in ((f64, 1e-12), (torch.float32, 1e-5)):
        out = run(adv_backend, outcome.to(dtype), reasoning.to(dtype), **options)
        adv = out.advantages.to(f64)
        assert out.advantages.dtype == dtype and out.clipped_fraction == 0
        assert abs(adv.mean().item()) < tol
        # std(z) / (std(z) + eps) = 1 - eps / std(z), with the same std correction as the groups
        assert adv.std(correction=1 if unbiased else 0).item() == pytest.approx(1.0, abs=1e-5)
    # whitened over the batch, not per group: the groups' spreads differ
    group_std = adv.reshape(-1, 6).std(dim=1)
    assert group_std.max() - group_std.min() > 0.5


def test_gdpo_couples_the_groups_of_a_call(adv_backend):
    """Changing one group's rewards rescales every other group's advantages by one common factor."""
    outcome, reasoning = property_batch(seed=27)
    groups = outcome.reshape(-1, 6)
    k = next(i for i in range(6, groups.shape[0]) if groups[i].std() > 0)  # a group with mixed outcomes
    changed = groups.clone()
    changed[k] = 1.0  # now all solved: A^o = 0 there
    others = torch.ones_like(groups, dtype=torch.bool)
    others[k] = False
    others = others.reshape(-1)
    for dtype, tol in ((f64, 1e-9), (torch.float32, 2e-5)):
        base = run(adv_backend, outcome.to(dtype), reasoning.to(dtype), group_size=6, estimator="gdpo").advantages
        moved = run(adv_backend, changed.reshape(-1).to(dtype), reasoning.to(dtype), group_size=6,
                    estimator="gdpo").advantages
        live = others & (base.abs() > 0.05)
        ratio = moved.to(f64)[live] / base.to(f64)[live]
        assert live.sum() > 0.5 * others.sum()
        torch.testing.assert_close(ratio, torch.full_like(ratio, ratio[0].item()), atol=0, rtol=tol)
        assert abs(ratio[0].item() - 1.0) > 1e-3


@pytest.mark.parametrize("unbiased", (True, False))
def test_gdpo_without_reasoning_is_whitened_grpo(adv_backend, unbiased):
    outcome, reasoning = property_batch(seed=24, graded=True)
    options = dict(group_size=6, unbiased=unbiased)
    for dtype, tol in ((f64, 1e-10), (torch.float32, 1e-5)):
        o, s = outcome.to(dtype), reasoning.to(dtype)
        grpo = run(adv_backend, o, None, estimator="grpo", **options).advantages.to(f64)
        expected = (grpo - grpo.mean()) / (grpo.std(correction=1 if unbiased else 0) + 1e-6)
        for scores, coef in ((None, 1.0), (torch.full_like(s, NAN), 1.0), (s, 0.0)):
            got = run(adv_backend, o, scores, estimator="gdpo", reasoning_coef=coef, **options).advantages
            torch.testing.assert_close(got.to(f64), expected, atol=tol, rtol=tol)
        with_reasoning = run(adv_backend, o, s, estimator="gdpo", **options).advantages.to(f64)
        assert not torch.allclose(with_reasoning, expected, atol=1e-2)  # the reasoning reward is live here


@pytest.mark.parametrize("scores", ("none", "all_nan", "one_valid", "equal"))
def test_equal_rewards_give_exactly_zero(adv_backend, scores):
    """gdpo on a batch whose z are all equal, and reward_sum on groups whose summed rewards are equal,
    give exactly 0: never rounding noise divided by eps."""
    group_size = 7
    outcome = equal_groups(group_size, seed=28)
    num_groups = outcome.numel() // group_size
    reasoning = torch.full((num_groups, group_size), NAN, dtype=f64)
    if scores == "one_valid":
        reasoning[:, 3] = 0.6
    elif scores == "equal":  # a different score per group, graded too
        reasoning[:] = (0.1 + 0.2 * torch.arange(num_groups, dtype=f64) % 0.9)[:, None]
    reasoning = None if scores == "none" else reasoning.reshape(-1)
    estimators = ("gdpo",) if scores == "one_valid" else ("gdpo", "reward_sum")  # x = o + s is not equal there
    for dtype in (f64, torch.float32):
        for estimator, unbiased, scale in itertools.product(estimators, (True, False), ("group", "none")):
            out = run(adv_backend, outcome.to(dtype), None if reasoning is None else reasoning.to(dtype),
                      group_size=group_size, estimator=estimator, unbiased=unbiased, scale=scale,
                      reasoning_coef=1.3, gate="none", clip_shrink=0.5)
            assert torch.equal(out.advantages, torch.zeros_like(out.advantages)), (estimator, unbiased, scale)
            assert (out.outcome_std == 0).all() and (out.gate == 1).all()


@pytest.mark.parametrize("estimator", ("grpo", "awpo", "awpo_mixed", "reward_sum", "gdpo"))
def test_gate_none_is_one_everywhere(adv_backend, estimator):
    outcome, reasoning = property_batch(seed=25, graded=True)
    options = dict(group_size=6, estimator=estimator, weight="bernoulli", clip_shrink=0.8, reasoning_coef=2.0)
    for dtype in (f64, torch.float32):
        o, s = outcome.to(dtype), reasoning.to(dtype)
        out = run(adv_backend, o, s, gate="none", **options)
        assert torch.equal(out.gate, torch.ones_like(out.gate))
        # the same as a hard gate that is always open: popvar(o) <= (range / 2)^2 = 0.25 < 1
        always_open = run(adv_backend, o, s, gate="hard", gate_threshold=1.0, **options)
        for field in FIELDS:
            assert torch.equal(getattr(out, field), getattr(always_open, field)), field
        shrink = 1.0 if estimator == "grpo" else 1.0 / (1.0 + 0.8 * out.weight.to(f64))
        expected = (0.2 * shrink * torch.ones(out.weight.shape[0], 6, dtype=f64).T).T.reshape(-1)
        torch.testing.assert_close(out.epsilon_low.to(f64), expected, atol=1e-7, rtol=1e-6)
    if estimator in ("awpo", "awpo_mixed"):  # and the gate matters for AWPO
        assert not torch.equal(out.advantages, run(adv_backend, o, s, gate="soft", **options).advantages)


@pytest.mark.parametrize("estimator", ("reward_sum", "gdpo"))
@pytest.mark.parametrize("gate,weight", [("soft", "linear"), ("ratio", "bernoulli"), ("none", "none")])
def test_baselines_report_awpo_diagnostics_and_shrink_without_clipping(adv_backend, estimator, gate, weight):
    outcome, reasoning = property_batch(seed=26, graded=True)
    options = dict(group_size=6, gate=gate, weight=weight, reasoning_coef=4.0, clip_shrink=0.9, epsilon_high=0.28)
    for dtype in (f64, torch.float32):
        o, s = outcome.to(dtype), reasoning.to(dtype)
        awpo = run(adv_backend, o, s, estimator="awpo", **options)
        out = run(adv_backend, o, s, estimator=estimator, **options)
        assert awpo.clipped_fraction > 0 and out.clipped_fraction == 0
        for field in ("epsilon_low", "epsilon_high", "gate", "weight", "outcome_std", "reasoning_std"):
            torch.testing.assert_close(getattr(out, field), getattr(awpo, field), atol=1e-7, rtol=1e-6)
        shrink = 1.0 / (1.0 + 0.9 * out.gate.to(f64) * out.weight.to(f64))
        assert (shrink < 1).any()
        torch.testing.assert_close(out.epsilon_high.to(f64).reshape(-1, 6), (0.28 * shrink)[:, None].expand(-1, 6),
                                   atol=1e-7, rtol=1e-6)


def test_reward_sum_hand_computed(adv_backend):
    # x = o + s (NaN -> 0) = [2, .5, 0, 0]; mean .625; deviations [1.375, -.125, -.625, -.625];
    # sum of squares 1.890625 + .015625 + 2 * .390625 = 2.6875; unbiased std sqrt(2.6875 / 3).
    out = run(adv_backend, OUTCOME_1000, REASONING_HALVES, group_size=4, estimator="reward_sum")
    dev = torch.tensor([1.375, -0.125, -0.625, -0.625], dtype=f64)
    torch.testing.assert_close(out.advantages, dev / math.sqrt(2.6875 / 3), atol=1e-5, rtol=0)
    assert out.clipped_fraction.item() == 0.0
    # scale "none", coefficient 2: x = [3, 1, 0, 0], mean 1, A = x - mean
    dr = run(adv_backend, OUTCOME_1000, REASONING_HALVES, group_size=4, estimator="reward_sum", scale="none",
             reasoning_coef=2.0)
    assert dr.advantages.tolist() == [2.0, 0.0, -1.0, -1.0]
    dr32 = run(adv_backend, OUTCOME_1000.float(), REASONING_HALVES.float(), group_size=4, estimator="reward_sum",
               scale="none", reasoning_coef=2.0)
    assert dr32.advantages.tolist() == [2.0, 0.0, -1.0, -1.0]


def test_gdpo_hand_computed(adv_backend):
    # Group 1: A^o = [1.5, -.5, -.5, -.5], A^s = [1, 0, -1, 0] (up to eps), z = [2.5, -.5, -1.5, -.5].
    # Group 2: outcomes all 0, no reasoning score: z = 0. Over the batch of 8: mean 0, sum of squares 9,
    # unbiased std sqrt(9 / 7). With population stds: A^o = [r3, -1/r3, -1/r3, -1/r3] (r3 = sqrt(3)),
    # A^s = [r1.5, 0, -r1.5, 0] (std of 1, .5, 0 is sqrt(1/6)); z sums to 0 again, whitened by sqrt(ss / 8).
    outcome = torch.cat([OUTCOME_1000, torch.zeros(4, dtype=f64)])
    reasoning = torch.cat([REASONING_HALVES, torch.full((4,), NAN, dtype=f64)])
    z = torch.tensor([2.5, -0.5, -1.5, -0.5, 0.0, 0.0, 0.0, 0.0], dtype=f64)
    r3, r15 = math.sqrt(3.0), math.sqrt(1.5)
    z_pop = torch.tensor([r3 + r15, -1 / r3, -1 / r3 - r15, -1 / r3, 0.0, 0.0, 0.0, 0.0], dtype=f64)
    for dtype in (f64, torch.float32):
        o, s = outcome.to(dtype), reasoning.to(dtype)
        out = run(adv_backend, o, s, group_size=4, estimator="gdpo", gate="ratio", clip_shrink=1.0)
        torch.testing.assert_close(out.advantages.to(f64), z / math.sqrt(9 / 7), atol=1e-5, rtol=0)
        pop = run(adv_backend, o, s, group_size=4, estimator="gdpo", unbiased=False).advantages
        torch.testing.assert_close(pop.to(f64), z_pop / math.sqrt((z_pop ** 2).sum().item() / 8), atol=1e-5, rtol=0)
        # ratio gate .5 and linear weight .75 in group 1 (gate 0, weight 1 in group 2): eps / (1 + g * w)
        torch.testing.assert_close(out.epsilon_low.to(f64), torch.tensor([0.2 / 1.375] * 4 + [0.2] * 4, dtype=f64),
                                   atol=1e-6, rtol=0)
        assert out.clipped_fraction.item() == 0.0


# ----------------------------------------------------------------------------- hand-computed examples

OUTCOME_1000 = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=f64)
REASONING_HALVES = torch.tensor([1.0, 0.5, 0.0, NAN], dtype=f64)


def test_grpo_hand_computed(adv_backend):
    # mean = 1/4; deviations .75, -.25, -.25, -.25; sum of squares .5625 + 3 * .0625 = .75;
    # unbiased std = sqrt(.75 / 3) = .5, so A^o = [1.5, -.5, -.5, -.5]
    out = run(adv_backend, OUTCOME_1000, group_size=4, estimator="grpo")
    torch.testing.assert_close(out.advantages, torch.tensor([1.5, -0.5, -0.5, -0.5], dtype=f64), atol=1e-5, rtol=0)
    assert out.outcome_std.item() == pytest.approx(0.5, abs=1e-12)
    # population std = sqrt(.75 / 4) = sqrt(3) / 4, so A^o = [sqrt(3), -1/sqrt(3), ...]
    pop = run(adv_backend, OUTCOME_1000, group_size=4, estimator="grpo", unbiased=False).advantages
    r3 = math.sqrt(3.0)
    torch.testing.assert_close(pop, torch.tensor([r3, -1 / r3, -1 / r3, -1 / r3], dtype=f64), atol=1e-5, rtol=0)
    # Dr. GRPO (scale="none"): o - mean
    dr = run(adv_backend, OUTCOME_1000, group_size=4, estimator="grpo", scale="none").advantages
    assert dr.tolist() == [0.75, -0.25, -0.25, -0.25]
    # two groups: [1, 1, 0] (mean 2/3, std sqrt(1/3)) and an all-equal one (A = 0)
    two = run(adv_backend, torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=f64), group_size=3, estimator="grpo")
    a = (1 / 3) / math.sqrt(1 / 3)
    torch.testing.assert_close(two.advantages, torch.tensor([a, a, -2 * a, 0, 0, 0], dtype=f64), atol=1e-5, rtol=0)


def test_awpo_soft_gate_linear_weight_hand_computed(adv_backend):
    # A^o = [1.5, -.5, -.5, -.5] as above. Valid reasoning 1, .5, 0: mean .5, std sqrt(.5 / 2) = .5,
    # A^s = [1, 0, -1, 0] (NaN member: 0). popstd(o) = sqrt(3)/4, half range .5, v = sqrt(3)/2,
    # soft gate g = 1 - sqrt(3)/2 = .1340; pass rate .25, linear weight w = .75.
    # R = g * w * A^s = [.1005, 0, -.1005, 0]; sign-clip bounds .5 * |A^o| = [.75, .25, .25, .25]: no clip.
    out = run(adv_backend, OUTCOME_1000, REASONING_HALVES, group_size=4, clip_shrink=2.0)
    g, w = 1 - math.sqrt(3) / 2, 0.75
    expected = torch.tensor([1.5 + g * w, -0.5, -0.5 - g * w, -0.5], dtype=f64)
    torch.testing.assert_close(out.advantages, expected, atol=1e-5, rtol=0)
    assert out.gate.item() == pytest.approx(g, abs=1e-6) and out.weight.item() == pytest.approx(w, abs=1e-6)
    assert out.outcome_std.item() == pytest.approx(0.5, abs=1e-6)
    assert out.reasoning_std.item() == pytest.approx(0.5, abs=1e-6)
    assert out.clipped_fraction.item() == 0.0
    # dynamic clip: epsilon / (1 + eta * g * w) with eta = 2
    torch.testing.assert_close(out.epsilon_low, torch.full((4,), 0.2 / (1 + 2 * g * w), dtype=f64), atol=1e-6, rtol=0)


def test_awpo_ratio_gate_sign_clip_hand_computed(adv_backend):
    # ratio gate g = sd_s / (sd_o + sd_s) = .5 / (.5 + .5) = .5; weight "none": w = 1; R = .5 * A^s =
    # [.5, 0, -.5, 0]; bounds [.75, .25, .25, .25] clip member 2 to -.25: A = [2, -.5, -.75, -.5],
    # one of four terms clipped.
    out = run(adv_backend, OUTCOME_1000, REASONING_HALVES, group_size=4, gate="ratio", weight="none",
              clip_shrink=1.0, epsilon_high=0.3)
    torch.testing.assert_close(out.advantages, torch.tensor([2.0, -0.5, -0.75, -0.5], dtype=f64), atol=1e-5, rtol=0)
    assert out.gate.item() == pytest.approx(0.5, abs=1e-6) and out.weight.item() == 1.0
    assert out.clipped_fraction.item() == 0.25
    # eps / (1 + 1 * .5 * 1): .2 -> .1333, .3 -> .2
    torch.testing.assert_close(out.epsilon_low, torch.full((4,), 0.2 / 1.5, dtype=f64), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.epsilon_high, torch.full((4,), 0.2, dtype=f64), atol=1e-6, rtol=0)
    # without the clip the reasoning term goes through: A = [2, -.5, -1, -.5]
    free = run(adv_backend, OUTCOME_1000, REASONING_HALVES, group_size=4, gate="ratio", weight="none", clip="none")
    torch.testing.assert_close(free.advantages, torch.tensor([2.0, -0.5, -1.0, -0.5], dtype=f64), atol=1e-5, rtol=0)


def test_awpo_equal_outcomes_hand_computed(adv_backend):
    # Outcomes all .6 (graded): A^o = 0, sd_o = 0, soft gate 1, w = 1 - .6 = .4. Reasoning .2, .5, .8:
    # mean .5, std sqrt(.18 / 2) = .3, A^s = [-1, 0, 1]; R = .4 * A^s, bounded by clip_max (.3 here).
    outcome = torch.tensor([0.6, 0.6, 0.6], dtype=f64)
    reasoning = torch.tensor([0.2, 0.5, 0.8], dtype=f64)
    out = run(adv_backend, outcome, reasoning, group_size=3)
    torch.testing.assert_close(out.advantages, torch.tensor([-0.4, 0.0, 0.4], dtype=f64), atol=1e-5, rtol=0)
    assert out.gate.item() == 1.0 and out.outcome_std.item() == 0.0
    capped = run(adv_backend, outcome, reasoning, group_size=3, clip_max=0.3)
    torch.testing.assert_close(capped.advantages, torch.tensor([-0.3, 0.0, 0.3], dtype=f64), atol=1e-6, rtol=0)
    assert capped.clipped_fraction.item() == pytest.approx(2 / 3)
    hard = run(adv_backend, outcome, reasoning, group_size=3, gate="hard")
    assert hard.gate.item() == 1.0  # popvar(o) = 0 <= threshold 0


def test_awpo_mixed_hand_computed(adv_backend):
    # ratio gate .5, weight none. m = .5 * o + .5 * s (NaN -> o) = [1, .25, 0, 0]; mean .3125;
    # deviations [.6875, -.0625, -.3125, -.3125]; sum of squares .671875; unbiased std sqrt(.671875 / 3).
    out = run(adv_backend, OUTCOME_1000, REASONING_HALVES, group_size=4, estimator="awpo_mixed", gate="ratio",
              weight="none")
    sd = math.sqrt(0.671875 / 3)
    expected = torch.tensor([0.6875, -0.0625, -0.3125, -0.3125], dtype=f64) / sd
    torch.testing.assert_close(out.advantages, expected, atol=1e-5, rtol=0)
    assert out.clipped_fraction.item() == 0.0


def test_fewer_than_two_valid_scores_give_no_reasoning_term(adv_backend):
    outcome = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0], dtype=f64)
    reasoning = torch.tensor([0.9, NAN, NAN, NAN, NAN, NAN], dtype=f64)
    out = run(adv_backend, outcome, reasoning, group_size=3, gate="ratio", weight="none")
    grpo = run(adv_backend, outcome, group_size=3, estimator="grpo")
    assert torch.equal(out.advantages, grpo.advantages)
    assert out.reasoning_std.tolist() == [0.0, 0.0] and out.gate.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("estimator", ("awpo", "reward_sum", "gdpo"))
def test_empty_batch(adv_backend, estimator):
    for dtype in (f64, torch.float32):
        out = run(adv_backend, torch.zeros(0, dtype=dtype), torch.zeros(0, dtype=dtype), group_size=4,
                  estimator=estimator)
        assert out.advantages.shape == (0,) and out.gate.shape == (0,)


@pytest.mark.parametrize("adv_backend", [p for p in BACKENDS if p.id != "torch"])
def test_float64_runs_the_torch_path_and_float32_the_kernel(adv_backend, monkeypatch):
    """Compiled Triton would round float64 hyper-parameters to fp32: float64 inputs never reach the kernel."""
    from awpo_kernels import _advantages_triton
    launched = []
    launcher = _advantages_triton.group_advantages_triton
    monkeypatch.setattr(_advantages_triton, "group_advantages_triton",
                        lambda *a, **k: launched.append(k["dtype"]) or launcher(*a, **k))
    outcome, reasoning = random_batch(4, 5, seed=12)
    exact = run(adv_backend, outcome, reasoning, group_size=5, epsilon_low=0.1 + 1e-12)
    assert launched == [] and exact.epsilon_low.dtype == f64
    assert (exact.epsilon_low == 0.1 + 1e-12).all()  # clip_shrink = 0: exactly the option, unrounded
    run(adv_backend, outcome.float(), reasoning.float(), group_size=5)
    assert launched == [torch.float32]


# ----------------------------------------------------------------------------- bad input

GOOD = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 1.0])


@pytest.mark.parametrize("outcome,reasoning,options,name", [
    (GOOD, None, dict(group_size=4), "group_size"),  # B = 6 is not a multiple of 4
    (GOOD, None, dict(group_size=1), "group_size"),
    (GOOD, None, dict(group_size=3.0), "group_size"),
    (GOOD, None, dict(group_size=True), "group_size"),
    (torch.tensor([1.0, NAN, 0.0]), None, dict(group_size=3), "outcome"),
    (torch.tensor([1.0, float("inf"), 0.0]), None, dict(group_size=3), "outcome"),
    (torch.tensor([1, 0, 1]), None, dict(group_size=3), "outcome"),
    (GOOD.reshape(2, 3), None, dict(group_size=3), "outcome"),
    (GOOD, torch.tensor([0.1, float("inf"), 0.2, 0.3, 0.4, 0.5]), dict(group_size=3), "reasoning"),
    (GOOD, torch.tensor([0.1, -float("inf"), NAN, 0.3, 0.4, 0.5]), dict(group_size=3), "reasoning"),
    (GOOD, torch.rand(5), dict(group_size=3), "reasoning"),
    (GOOD, torch.rand(6, 1), dict(group_size=3), "reasoning"),
    (GOOD, torch.ones(6, dtype=torch.int64), dict(group_size=3), "reasoning"),
    (GOOD, None, dict(group_size=3, estimator="ppo"), "estimator"),
    (GOOD, None, dict(group_size=3, scale="batch"), "scale"),
    (GOOD, None, dict(group_size=3, gate="sigmoid"), "gate"),
    (GOOD, None, dict(group_size=3, weight="quadratic"), "weight"),
    (GOOD, None, dict(group_size=3, clip="abs"), "clip"),
    (GOOD, None, dict(group_size=3, backend="cuda"), "backend"),
    (GOOD, None, dict(group_size=3, outcome_range=(1.0, 0.0)), "outcome_range"),
    (GOOD * 2, None, dict(group_size=3), "outcome_range"),           # 2.0 > 1: the pass rate would clamp
    (GOOD - 0.5, None, dict(group_size=3, outcome_range=(0.0, 2.0)), "outcome_range"),
    (GOOD, None, dict(group_size=3, outcome_range=(0.0, float("inf"))), "outcome_range"),
    (GOOD, None, dict(group_size=3, eps=0.0), "eps"),
    (GOOD, None, dict(group_size=3, eps=NAN), "eps"),
    (GOOD, None, dict(group_size=3, clip_ratio=-0.5), "clip_ratio"),
    (GOOD, None, dict(group_size=3, clip_max=NAN), "clip_max"),
    (GOOD, None, dict(group_size=3, clip_shrink="1"), "clip_shrink"),
    (GOOD, None, dict(group_size=3, reasoning_coef=float("inf")), "reasoning_coef"),
    (GOOD, None, dict(group_size=3, gate_threshold=-1.0), "gate_threshold"),
    (GOOD, None, dict(group_size=3, epsilon_low=-0.1), "epsilon_low"),
    (GOOD, None, dict(group_size=3, epsilon_high=None), "epsilon_high"),
    (GOOD, None, dict(group_size=3, unbiased="yes"), "unbiased"),
])
def test_bad_input_raises_value_error_naming_the_argument(outcome, reasoning, options, name):
    with pytest.raises(ValueError, match=name):
        ak.group_advantages(outcome, reasoning, **options)


@pytest.mark.skipif(INTERPRETING, reason="the interpreter makes backend='triton' legal on CPU")
def test_triton_on_cpu_without_interpreter_raises():
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        ak.group_advantages(GOOD, group_size=3, backend="triton")


# ----------------------------------------------------------------------------- the kernel's contract

@pytest.mark.skipif(INTERPRETING, reason="inspects the compiled (not interpreted) JIT function")
def test_kernel_takes_hyper_parameters_at_run_time():
    from awpo_kernels._advantages_triton import _group_advantages_kernel
    constexprs = {p.name for p in _group_advantages_kernel.params if p.is_constexpr}
    assert constexprs == {"HAS_REASONING", "ESTIMATOR", "SCALE_BY_STD", "GATE", "WEIGHT", "CLIP_SIGN", "BLOCK_G"}


@pytest.mark.skipif(not HAS_CUDA or INTERPRETING, reason="needs a CUDA GPU")
def test_cuda_changing_hyper_parameters_does_not_recompile():
    from awpo_kernels._advantages_triton import _group_advantages_kernel
    outcome, reasoning = random_batch(9, 5, seed=8)
    outcome, reasoning = outcome.float().cuda(), reasoning.float().cuda()
    ak.group_advantages(outcome, reasoning, group_size=5, backend="triton")
    device = torch.cuda.current_device()
    compiled = len(_group_advantages_kernel.device_caches[device][0])
    for value in (0.3, 0.7, 1.9):
        ak.group_advantages(outcome, reasoning, group_size=5, backend="triton", eps=value * 1e-5, clip_ratio=value,
                            clip_max=value, clip_shrink=value, reasoning_coef=value, epsilon_low=value / 4,
                            epsilon_high=value / 3, outcome_range=(-value, 2.0), gate_threshold=value / 10)
    torch.cuda.synchronize()
    assert len(_group_advantages_kernel.device_caches[device][0]) == compiled


@pytest.mark.skipif(not HAS_CUDA or INTERPRETING, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ("triton", "torch"))
def test_cuda_no_host_sync(name, monkeypatch):
    monkeypatch.setenv("AWPO_KERNELS_CHECK_INPUTS", "0")  # the value checks sync by design
    outcome, reasoning = random_batch(9, 5, seed=9)
    outcome, reasoning = outcome.float().cuda(), reasoning.float().cuda()
    ak.group_advantages(outcome, reasoning, group_size=5, backend=name)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for estimator in ("grpo", "awpo", "awpo_mixed", "reward_sum", "gdpo"):
            ak.group_advantages(outcome, reasoning, group_size=5, backend=name, estimator=estimator)
        ak.group_advantages(outcome, reasoning, group_size=5, backend=name, gate="none")
        ak.group_advantages(outcome, None, group_size=5, backend=name, estimator="gdpo")
    finally:
        torch.cuda.set_sync_debug_mode(0)
