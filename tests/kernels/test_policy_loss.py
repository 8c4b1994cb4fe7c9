"""`fused_linear_policy_loss` and `policy_loss` on every backend against the float64 reference: loss,
metrics, per-token log-probs and the gradients of hidden and weight (or of logprobs and entropy), for
every option of SPEC section 3; packed == padded; chunking; autograd's tie and boundary rules;
a hand-computed example."""
import itertools
import math
import zlib
from types import SimpleNamespace

import pytest
import torch

import awpo_kernels as ak

PARAMETRIZE_LM_BACKENDS = True  # conftest: the backend / grid_backend / triton_backend parameters
f64 = torch.float64
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]


def option_grid():
    """Every loss type x IS level x old_logprobs given/absent, each with a rotating mix of the other
    options (delta, KL type, entropy bonus, importance weights, per-sequence epsilons, num_items)."""
    extras = [
        dict(),
        dict(delta=1.15, beta=0.1, kl_type="k3"),
        dict(beta=0.2, kl_type="k1", entropy_coef=0.05, importance_weights=True),
        dict(beta=0.15, kl_type="k2", per_sequence_eps=True, delta=1.4),
        dict(entropy_coef=-0.03, importance_weights=True, per_sequence_eps=True),
        dict(num_items_in_batch=17, beta=0.05, kl_type="k3", entropy_coef=0.02),
    ]
    grid = []
    for i, (loss_type, level, old) in enumerate(itertools.product(LOSS_TYPES, ["token", "sequence"], [True, False])):
        for j in range(2):
            extra = extras[(2 * i + j) % len(extras)]
            if "num_items_in_batch" in extra and loss_type != "dapo":
                extra = extras[0]
            grid.append(dict(loss_type=loss_type, importance_sampling_level=level, old=old, **extra))
    return grid


GRID = option_grid()


def test_the_option_grid_covers_every_value_of_every_choice_option():
    """Every KL type (the kernels' KL_TYPE codes), loss type and IS level runs against the reference."""
    assert {e["kl_type"] for e in GRID if e.get("beta")} == set(ak.LossOptions.KL_TYPES)
    assert {e["loss_type"] for e in GRID} == set(ak.LossOptions.LOSS_TYPES)
    assert {e["importance_sampling_level"] for e in GRID} == set(ak.LossOptions.IMPORTANCE_SAMPLING_LEVELS)


def build_options(kt, case, temperature, old=True, importance_weights=False, per_sequence_eps=False, beta=0.0,
                  **options):
    """Turn a grid entry into the op's keyword arguments (tensors built from the case's data)."""
    g = case.generator
    batch = case.targets.shape[0]
    if old:
        options["old_logprobs"] = kt.rollout_logprobs(case, temperature)
    if beta:
        options["beta"] = beta
        options["ref_logprobs"] = kt.rollout_logprobs(case, temperature, noise=0.5, seed=2)
    if importance_weights:
        options["importance_weights"] = 0.5 + torch.rand(case.targets.shape, generator=g)
    if per_sequence_eps:
        options["epsilon_low"] = 0.1 + 0.2 * torch.rand(batch, generator=g)
        options["epsilon_high"] = 0.15 + 0.2 * torch.rand(batch, generator=g)
    return options


def check_fused(kt, backend, case, temperature=1.0, chunk_size=None, **grid_entry):
    options = build_options(kt, case, temperature, **grid_entry)
    got = kt.run_fused(backend, case, temperature=temperature, chunk_size=chunk_size, **options)
    expected = kt.run_fused(backend, case, reference=True, temperature=temperature, **options)
    kt.assert_same_results(got, expected, case.dtype, str(grid_entry))
    assert (got["logprobs"] <= 0).all()
    return got, expected


def grid_id(entry):
    return "-".join(f"{k}={v}" for k, v in entry.items())


def seed_of(entry):
    return zlib.crc32(grid_id(entry).encode()) % 1000


@pytest.mark.parametrize("entry", GRID, ids=grid_id)
def test_every_option_matches_reference_fp64(kt, grid_backend, entry):
    dtype = f64 if grid_backend[0] == "torch" else torch.float32
    case = kt.make_case(4, 9, 13, 1001, dtype=dtype, seed=seed_of(entry))
    check_fused(kt, grid_backend, case, temperature=0.9, chunk_size=10, **entry)


@pytest.mark.parametrize("entry", GRID, ids=grid_id)
def test_every_option_matches_reference_fp32(kt, backend, entry):
    case = kt.make_case(3, 7, 19, 1001, seed=seed_of(entry) + 1)
    check_fused(kt, backend, case, temperature=0.8, chunk_size=8, **entry)


@pytest.mark.parametrize("shape", [(2, 9, 33, 5003), (5, 3, 7, 3)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_odd_shapes_and_dtypes(kt, backend, shape, dtype):
    case = kt.make_case(*shape, dtype=dtype, seed=21)
    check_fused(kt, backend, case, temperature=1.2, loss_type="grpo", beta=0.1, kl_type="k3", entropy_coef=0.01)


@pytest.mark.parametrize("chunk_size", [1, 5, 9, 1000])
def test_chunk_size_smaller_than_and_not_dividing_n_gives_the_same_results(kt, backend, chunk_size):
    case = kt.make_case(3, 7, 19, 1001, seed=22)  # N = 21
    options = build_options(kt, case, 1.0, beta=0.1, entropy_coef=0.02)
    whole = kt.run_fused(backend, case, chunk_size=21, importance_sampling_level="sequence", **options)
    chunked = kt.run_fused(backend, case, chunk_size=chunk_size, importance_sampling_level="sequence", **options)
    for key in whole:  # the same numbers up to fp32 GEMM rounding (other shapes round differently)
        kt.assert_matches(chunked[key], whole[key], torch.float32, key)


def pack(case, tensors):
    """Padded [B, T, ...] -> packed [N, ...] of the loss tokens only, with seq_ids."""
    mask = case.mask
    seq_ids = torch.arange(mask.shape[0]).unsqueeze(1).expand_as(mask)[mask]
    return seq_ids, {k: (v[mask] if isinstance(v, torch.Tensor) and v.shape[:2] == mask.shape else v)
                     for k, v in tensors.items()}


@pytest.mark.parametrize("loss_type,level", [(t, "token") for t in LOSS_TYPES] + [("dapo", "sequence"),
                                                                                  ("grpo", "sequence")])
def test_packed_layout_equals_padded_layout(kt, backend, loss_type, level):
    case = kt.make_case(4, 8, 13, 1001, seed=23)
    options = build_options(kt, case, 1.0, beta=0.1, kl_type="k2", importance_weights=True, entropy_coef=0.02)
    options.update(loss_type=loss_type, importance_sampling_level=level, max_completion_length=8)
    padded = kt.run_fused(backend, case, **options)

    seq_ids, packed_options = pack(case, options)
    packed_case = kt.make_case(4, 8, 13, 1001, seed=23)
    packed_case.hidden, packed_case.targets = case.hidden[case.mask], case.targets[case.mask]
    packed = kt.run_fused(backend, packed_case, seq_ids=seq_ids, chunk_size=7, **packed_options)

    kt.assert_matches(packed["loss"], padded["loss"], case.dtype, "loss")
    kt.assert_matches(packed["grad_weight"], padded["grad_weight"], case.dtype, "grad_weight")
    kt.assert_matches(packed["grad_hidden"], padded["grad_hidden"][case.mask], case.dtype, "grad_hidden")
    kt.assert_matches(packed["logprobs"], padded["logprobs"][case.mask], case.dtype, "logprobs")
    for key in padded:
        if key.startswith("metric:"):
            kt.assert_matches(packed[key], padded[key], case.dtype, key)
    assert (padded["grad_hidden"][~case.mask] == 0).all()


def test_no_grad_gives_the_same_loss_and_metrics(kt, backend):
    case = kt.make_case(3, 7, 19, 1001, seed=24)
    name, device = backend
    options = build_options(kt, case, 1.0, beta=0.1, entropy_coef=0.02)
    options = {k: kt.to_device(v, device) for k, v in options.items()}
    args = (case.hidden.to(device), case.weight.to(device), case.targets.to(device), case.advantages.to(device))
    with torch.no_grad():
        plain = ak.fused_linear_policy_loss(*args, backend=name, importance_sampling_level="sequence", **options)
    tracked = kt.run_fused(backend, case, importance_sampling_level="sequence", **options)
    assert plain.loss.grad_fn is None
    kt.assert_matches(plain.loss, tracked["loss"], case.dtype, "loss")
    for key, value in plain.metrics.items():
        kt.assert_matches(value, tracked[f"metric:{key}"], case.dtype, key)


def test_frozen_weight_gets_no_gradient_and_hidden_still_does(kt, backend):
    case = kt.make_case(3, 7, 19, 1001, seed=25)
    name, device = backend
    hidden = case.hidden.to(device).requires_grad_()
    weight = case.weight.to(device)
    out = ak.fused_linear_policy_loss(hidden, weight, case.targets.to(device), case.advantages.to(device),
                                      backend=name, beta=0.0)
    out.loss.backward()
    expected = kt.run_fused(backend, case, reference=True)
    assert weight.grad is None
    kt.assert_matches(hidden.grad, expected["grad_hidden"], case.dtype, "grad_hidden")


def test_gradient_scales_with_the_upstream_gradient_and_backward_runs_once(kt, backend):
    case = kt.make_case(3, 7, 19, 1001, seed=26)
    name, device = backend
    hidden = case.hidden.to(device).requires_grad_()
    out = ak.fused_linear_policy_loss(hidden, case.weight.to(device), case.targets.to(device),
                                      case.advantages.to(device), backend=name)
    (out.loss * -2.5).backward(retain_graph=True)
    expected = kt.run_fused(backend, case, reference=True)
    kt.assert_matches(hidden.grad, -2.5 * expected["grad_hidden"], case.dtype, "grad_hidden")
    with pytest.raises(RuntimeError, match="one backward"):
        out.loss.backward()


def test_module_wrapper_matches_the_function(kt, backend):
    case = kt.make_case(3, 7, 19, 1001, seed=27)
    name, device = backend
    module = ak.FusedLinearPolicyLoss(loss_type="grpo", epsilon_high=0.28, backend=name)
    args = (case.hidden.to(device), case.weight.to(device), case.targets.to(device), case.advantages.to(device))
    got = module(*args)
    expected = ak.fused_linear_policy_loss(*args, loss_type="grpo", epsilon_high=0.28, backend="reference")
    kt.assert_matches(got.loss, expected.loss, case.dtype, "loss")


# ----------------------------------------------------------------------------- policy_loss (given log-probs)

def run_policy_loss(backend, logprobs, entropy, advantages, mask, *, reference=False, **options):
    name, device = ("reference", "cpu") if reference else backend
    dtype = f64 if reference else logprobs.dtype
    logp = logprobs.to(device=device, dtype=dtype).detach().clone().requires_grad_()
    ent = None if entropy is None else entropy.to(device=device, dtype=dtype).detach().clone().requires_grad_()
    opts = {k: (v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) and v.is_floating_point()
                else (v.to(device) if isinstance(v, torch.Tensor) else v)) for k, v in options.items()}
    out = ak.policy_loss(logp, advantages.to(device, dtype), mask.to(device), entropy=ent, backend=name, **opts)
    out.loss.backward()
    result = {"loss": out.loss, "logprobs": out.logprobs, "grad_logprobs": logp.grad}
    if ent is not None and ent.grad is not None:
        result["grad_entropy"] = ent.grad
    result.update({f"metric:{k}": v for k, v in out.metrics.items()})
    return {k: v.detach().cpu() for k, v in result.items()}


def policy_inputs(kt, seed, batch=5, length=11):
    case = kt.make_case(batch, length, 3, 11, seed=seed)
    g = case.generator
    logprobs = -torch.rand(case.targets.shape, generator=g) * 4
    entropy = torch.rand(case.targets.shape, generator=g) * 3
    return case, logprobs, entropy


@pytest.mark.parametrize("entry", GRID, ids=grid_id)
def test_policy_loss_matches_reference(kt, backend, entry):
    case, logprobs, entropy = policy_inputs(kt, seed=seed_of(entry) + 2)
    entry = dict(entry)
    old = entry.pop("old")
    options = build_options(kt, case, 1.0, old=False, **entry)
    if old:
        options["old_logprobs"] = logprobs + 0.3 * torch.randn(logprobs.shape, generator=case.generator)
    if options.get("beta"):
        options["ref_logprobs"] = logprobs + 0.5 * torch.randn(logprobs.shape, generator=case.generator)
    use_entropy = entropy if "entropy_coef" in options else None
    got = run_policy_loss(backend, logprobs, use_entropy, case.advantages, case.mask, **options)
    expected = run_policy_loss(backend, logprobs, use_entropy, case.advantages, case.mask, reference=True, **options)
    assert set(got) == set(expected)
    assert expected["grad_logprobs"].abs().sum() > 0
    for key in expected:
        kt.assert_matches(got[key], expected[key], torch.float32, key)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("delta", [None, 1.0])
def test_ties_and_clip_boundaries_follow_autograd(kt, backend, level, delta):
    # old == logp gives ratio exactly 1: with eps 0 the clip bounds are 1 as well (clamp's closed
    # interval), min(ratio*A, clip*A) is a tie (half/half), and delta = 1 puts ratio on delta's bound.
    case, logprobs, _ = policy_inputs(kt, seed=31)
    options = dict(old_logprobs=logprobs.clone(), epsilon_low=0.0, epsilon_high=0.0, delta=delta,
                   importance_sampling_level=level, loss_type="bnpo")
    got = run_policy_loss(backend, logprobs, None, case.advantages, case.mask, **options)
    expected = run_policy_loss(backend, logprobs, None, case.advantages, case.mask, reference=True, **options)
    assert expected["grad_logprobs"].abs().sum() > 0
    for key in expected:
        kt.assert_matches(got[key], expected[key], torch.float32, key)


def test_hand_computed_grpo_example(backend):
    # two sequences; A = (+1, -0.5); eps 0.2; dapo over the 3 loss tokens
    name, device = backend
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], device=device, requires_grad=True)
    old = torch.tensor([[-1.5, -2.0], [-0.2, -3.0]], device=device)
    mask = torch.tensor([[1, 1], [1, 0]], device=device)
    adv = torch.tensor([1.0, -0.5], device=device)
    out = ak.policy_loss(logp, adv, mask, old_logprobs=old, backend=name)
    out.loss.backward()
    r = [math.exp(0.5), 1.0, math.exp(-0.3)]  # ratios of the three loss tokens
    # token 0: ratio 1.6487 > 1.2, A > 0 -> clipped to 1.2 (no gradient); token 1: ratio 1;
    # token 2: ratio 0.7408 < 0.8, A < 0 -> -min(0.7408*-0.5, 0.8*-0.5) = 0.4 (clipped, no gradient)
    per_token = [-1.2 * 1.0, -1.0 * 1.0, 0.8 * 0.5]
    assert out.loss.item() == pytest.approx(sum(per_token) / 3, rel=1e-6)
    expected_grad = torch.tensor([[0.0, -1.0 / 3], [0.0, 0.0]])
    torch.testing.assert_close(logp.grad.cpu(), expected_grad)
    assert out.metrics["clip_ratio/high_mean"].item() == pytest.approx(1 / 3)
    assert out.metrics["clip_ratio/low_mean"].item() == pytest.approx(1 / 3)
    assert r[0] > 1.2 and r[2] < 0.8


def test_num_items_in_batch_scales_the_dapo_loss(kt, backend):
    case, logprobs, _ = policy_inputs(kt, seed=32)
    tokens = int(case.mask.sum())
    base = run_policy_loss(backend, logprobs, None, case.advantages, case.mask)
    for items in (3 * tokens, torch.tensor(3.0 * tokens)):
        scaled = run_policy_loss(backend, logprobs, None, case.advantages, case.mask, num_items_in_batch=items)
        torch.testing.assert_close(scaled["loss"], base["loss"] / 3)
        torch.testing.assert_close(scaled["grad_logprobs"], base["grad_logprobs"] / 3)


# ----------------------------------------------------------------------------- batch counts

# (loss type, the count that is its denominator): num_seqs_in_batch for the sequence-averaging types,
# num_items_in_batch for dapo
COUNTED = [("grpo", "num_seqs_in_batch"), ("dr_grpo", "num_seqs_in_batch"), ("dapo", "num_items_in_batch")]
COUNT_VALUES = {"num_seqs_in_batch": 7.0, "num_items_in_batch": 41.5}  # larger than the call's own, not integral


def count_id(entry):
    return "-".join(entry)


def count_value(count, as_tensor):
    value = COUNT_VALUES[count]
    return torch.tensor(value) if as_tensor else value


@pytest.mark.parametrize("as_tensor", [False, True], ids=["number", "tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("loss_type,count", COUNTED, ids=map(count_id, COUNTED))
def test_batch_counts_match_reference(kt, backend, loss_type, count, dtype, as_tensor):
    """num_seqs_in_batch (grpo, dr_grpo) and num_items_in_batch (dapo), a number or a 0-dim tensor on the inputs'
    device: loss, metrics, log-probs and both gradients equal the float64 reference."""
    case = kt.make_case(3, 7, 19, 1001, dtype=dtype, seed=41)
    options = build_options(kt, case, 0.9, beta=0.1, kl_type="k3", entropy_coef=0.02, importance_weights=True,
                            per_sequence_eps=True)
    options.update(loss_type=loss_type, **{count: count_value(count, as_tensor)})
    got = kt.run_fused(backend, case, temperature=0.9, chunk_size=8, **options)
    expected = kt.run_fused(backend, case, reference=True, temperature=0.9, **options)
    kt.assert_same_results(got, expected, dtype, f"{loss_type} {count}")
    own = kt.run_fused(backend, case, reference=True, temperature=0.9, **{**options, count: None})
    calls_count = case.targets.shape[0] if count == "num_seqs_in_batch" else int(case.mask.sum())
    # the count replaces the call's own in the denominator: the loss scales by their ratio
    kt.assert_matches(expected["loss"], own["loss"] * calls_count / COUNT_VALUES[count], f64, "reference loss")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("loss_type,count", COUNTED, ids=map(count_id, COUNTED))
def test_policy_loss_batch_counts_match_reference(kt, backend, loss_type, count, dtype):
    case, logprobs, entropy = policy_inputs(kt, seed=42)
    g = case.generator
    options = dict(old_logprobs=logprobs + 0.3 * torch.randn(logprobs.shape, generator=g),
                   ref_logprobs=logprobs + 0.5 * torch.randn(logprobs.shape, generator=g), beta=0.05,
                   importance_weights=0.5 + torch.rand(logprobs.shape, generator=g), entropy_coef=0.03,
                   loss_type=loss_type, **{count: count_value(count, as_tensor=dtype == torch.float32)})
    # every input on the dtype's grid, so that the float64 reference reads the very same values
    logprobs, entropy = logprobs.to(dtype), entropy.to(dtype)
    options = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in options.items()}
    got = run_policy_loss(backend, logprobs, entropy, case.advantages, case.mask, **options)
    expected = run_policy_loss(backend, logprobs, entropy, case.advantages, case.mask, reference=True, **options)
    assert set(got) == set(expected) and expected["grad_logprobs"].abs().sum() > 0
    for key in expected:
        kt.assert_matches(got[key], expected[key], dtype, key)


def split_rows(case, options, start, stop):
    """Rows [start, stop) of a padded case and of its per-token ([B, T]) and per-sequence ([B]) options."""
    batch = case.targets.shape[0]
    part = SimpleNamespace(**vars(case))
    part.hidden, part.targets = case.hidden[start:stop], case.targets[start:stop]
    part.advantages, part.mask = case.advantages[start:stop], case.mask[start:stop]

    def rows(value):
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch:
            return value[start:stop]
        return value
    return part, {k: rows(v) for k, v in options.items()}


SPLITS = [(0, 2), (2, 3), (3, 5)]  # uneven micro-batches; row 1 (in the first) has no loss token


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type,count", COUNTED, ids=map(count_id, COUNTED))
def test_micro_batches_called_with_the_batch_count_sum_to_one_call_on_the_batch(kt, backend, loss_type, count, level):
    """Split a batch into micro-batches, call each with the whole batch's count (its sequences for grpo / dr_grpo,
    its loss tokens for dapo) and sum: loss and weight gradient equal one call on the whole batch (the float64
    reference), the hidden-state gradients and log-probs are the whole call's rows."""
    case = kt.make_case(5, 9, 13, 1001, seed=43)
    options = build_options(kt, case, 1.0, beta=0.1, kl_type="k2", entropy_coef=0.02, importance_weights=True,
                            per_sequence_eps=True)
    options.update(loss_type=loss_type, importance_sampling_level=level)
    whole = kt.run_fused(backend, case, reference=True, **options)
    total = case.targets.shape[0] if count == "num_seqs_in_batch" else int(case.mask.sum())
    parts = []
    for start, stop in SPLITS:
        part, part_options = split_rows(case, options, start, stop)
        parts.append(kt.run_fused(backend, part, chunk_size=7, **part_options, **{count: total}))
    kt.assert_matches(sum(p["loss"] for p in parts), whole["loss"], case.dtype, "loss")
    kt.assert_matches(sum(p["grad_weight"] for p in parts), whole["grad_weight"], case.dtype, "grad_weight")
    for key in ("grad_hidden", "logprobs"):
        kt.assert_matches(torch.cat([p[key] for p in parts]), whole[key], case.dtype, key)
    assert whole["grad_hidden"].abs().sum() > 0 and all(p["grad_weight"].abs().sum() > 0 for p in parts)


@pytest.mark.parametrize("loss_type,count", COUNTED, ids=map(count_id, COUNTED))
def test_policy_loss_micro_batches_with_the_batch_count_sum_to_the_batch(kt, backend, loss_type, count):
    case, logprobs, _ = policy_inputs(kt, seed=44)
    old = logprobs + 0.3 * torch.randn(logprobs.shape, generator=case.generator)
    options = dict(old_logprobs=old, loss_type=loss_type, max_completion_length=13)
    whole = run_policy_loss(backend, logprobs, None, case.advantages, case.mask, reference=True, **options)
    total = case.targets.shape[0] if count == "num_seqs_in_batch" else int(case.mask.sum())
    losses, grads = [], []
    for start, stop in SPLITS:
        part = run_policy_loss(backend, logprobs[start:stop], None, case.advantages[start:stop],
                               case.mask[start:stop], old_logprobs=old[start:stop], loss_type=loss_type,
                               max_completion_length=13, **{count: torch.tensor(float(total))})
        losses.append(part["loss"])
        grads.append(part["grad_logprobs"])
    kt.assert_matches(sum(losses), whole["loss"], torch.float32, "loss")
    kt.assert_matches(torch.cat(grads), whole["grad_logprobs"], torch.float32, "grad_logprobs")


def test_module_wrapper_takes_the_batch_counts(kt, backend):
    case = kt.make_case(3, 7, 19, 1001, seed=45)
    name, device = backend
    args = (case.hidden.to(device), case.weight.to(device), case.targets.to(device), case.advantages.to(device))
    for loss_type, count in COUNTED:
        module = ak.FusedLinearPolicyLoss(loss_type=loss_type, epsilon_high=0.28, backend=name)
        got = module(*args, **{count: COUNT_VALUES[count]})
        expected = ak.fused_linear_policy_loss(*args, loss_type=loss_type, epsilon_high=0.28, backend="reference",
                                               **{count: COUNT_VALUES[count]})
        kt.assert_matches(got.loss, expected.loss, case.dtype, f"{loss_type} loss")
        with pytest.raises(ValueError, match=f"{count}.*loss_type='bnpo'"):
            ak.FusedLinearPolicyLoss(loss_type="bnpo", backend=name)(*args, **{count: COUNT_VALUES[count]})


@pytest.mark.parametrize("vocab", [1001, 20011])
def test_triton_epilogue_writes_bf16_dlogits_in_place(kt, triton_backend, vocab):
    """The kernel's bf16 d(logits) land in the first half of each fp32 row's bytes (the CUDA layout
    with bf16 weights): the result must equal the fp32 d(logits) up to bf16 rounding. At V=20011 a row
    spans several vocabulary blocks, so on a GPU one warp's stores land on bytes other warps load."""
    _, device = triton_backend
    logits, targets, spec = kt.epilogue_inputs(device, 13, vocab)
    wide, _ = kt.run_epilogue(device, logits, targets, spec, torch.float32)
    narrow, _ = kt.run_epilogue(device, logits, targets, spec, torch.bfloat16)
    # within one bf16 unit in the last place (the interpreter truncates, GPUs round to nearest)
    assert ((narrow - wide).abs() <= 2 ** -7 * wide.abs()).all()
    assert wide.abs().sum() > 0 and (wide[4] == 0).all()


def test_triton_epilogue_never_reads_the_logits_of_ignored_rows(kt, triton_backend):
    """Rows whose target is -100 are written as zeros without being read: NaN there leaves every output
    finite (a read would put NaN into that row's log-sum-exp)."""
    _, device = triton_backend
    logits, targets, spec = kt.epilogue_inputs(device, 13, 1001)
    clean, clean_out = kt.run_epilogue(device, logits, targets, spec, torch.float32)
    logits[4] = float("nan")
    dz, out = kt.run_epilogue(device, logits, targets, spec, torch.float32)
    assert torch.equal(dz, clean) and (dz[4] == 0).all() and dz.abs().sum() > 0
    for name in ("logprobs", "entropy", "lse"):
        values = getattr(out, name).cpu()
        assert torch.isfinite(values).all() and values[4] == 0, name
        assert torch.equal(values, getattr(clean_out, name).cpu()), name


@pytest.mark.parametrize("rows, block_v, warps", [("2", "64", "2"), ("1", "16", "1")])
def test_triton_epilogue_launch_overrides_give_the_same_numbers(kt, triton_backend, monkeypatch, rows, block_v,
                                                                  warps):
    case = kt.make_case(3, 7, 19, 1001, seed=36)
    options = build_options(kt, case, 1.0, beta=0.1, entropy_coef=0.02)
    expected = kt.run_fused(triton_backend, case, reference=True, **options)
    monkeypatch.setenv("AWPO_KERNELS_EPILOGUE_BLOCK_ROWS", rows)
    monkeypatch.setenv("AWPO_KERNELS_EPILOGUE_BLOCK_V", block_v)
    monkeypatch.setenv("AWPO_KERNELS_EPILOGUE_NUM_WARPS", warps)
    got = kt.run_fused(triton_backend, case, chunk_size=8, **options)
    kt.assert_same_results(got, expected, case.dtype, f"rows={rows} block_v={block_v} warps={warps}")


def test_int32_ids_and_strided_packed_inputs(kt, backend):
    case = kt.make_case(1, 30, 13, 1001, seed=34, empty_rows=(), prompt_tokens=0)
    name, device = backend
    targets = case.targets[0, ::2]                   # strided views of a packed batch of 15 tokens
    seq_ids = (torch.arange(30) // 7)[::2]           # sequences 0..4
    advantages = torch.randn(5, generator=case.generator)
    results = []
    for fast in (True, False):
        base = case.hidden[0].to(device).clone().requires_grad_()
        ids, seqs = (targets.int(), seq_ids.int()) if fast else (targets.contiguous(), seq_ids.contiguous())
        out = ak.fused_linear_policy_loss(base[::2], case.weight.to(device), ids.to(device), advantages.to(device),
                                          seq_ids=seqs.to(device), backend=name if fast else "reference",
                                          chunk_size=4, loss_type="grpo")
        out.loss.backward()
        results.append((out.loss.detach().cpu(), base.grad.cpu()))
    for a, b in zip(*results):
        kt.assert_matches(a, b, torch.float32)
    assert (results[0][1][1::2] == 0).all() and results[0][1][::2].abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled Triton kernels need a CUDA GPU")
def test_cuda_changing_hyper_parameters_never_recompiles_the_kernel(kt):
    from awpo_kernels import _epilogue_triton as triton_kernels

    def compiled_variants():  # triton 3.x keeps (kernel_cache, ...) per device
        return sum(len(entry[0]) for entry in triton_kernels._lm_head_epilogue_kernel.device_caches.values())

    case = kt.make_case(3, 7, 19, 1001, seed=35)
    options = build_options(kt, case, 1.0, beta=0.1, entropy_coef=0.02, delta=1.3, per_sequence_eps=True)
    kt.run_fused(("triton", "cuda"), case, temperature=1.0, **options)
    before = compiled_variants()
    for temperature, beta, entropy_coef, delta in [(0.7, 0.3, 0.05, 1.1), (1.3, 0.01, -0.02, 2.0)]:
        changed = dict(options, beta=beta, entropy_coef=entropy_coef, delta=delta, epsilon_high=0.31)
        changed.pop("epsilon_low")
        kt.run_fused(("triton", "cuda"), case, temperature=temperature, **changed)
    assert compiled_variants() == before


def test_one_per_sequence_epsilon_and_one_float_mix():
    g = torch.Generator().manual_seed(11)
    B, T, H, V = 3, 5, 7, 101
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (B, T), generator=g)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 6
    eps_low = 0.05 + 0.1 * torch.rand(B, generator=g, dtype=torch.float64)
    results = []
    for backend in ("reference", "torch"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = ak.fused_linear_policy_loss(h, w, targets, adv, old_logprobs=old, epsilon_low=eps_low,
                                          epsilon_high=0.3, backend=backend)
        out.loss.backward()
        results.append((out.loss.detach(), h.grad, w.grad))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_cpu_autocast_leaves_the_fused_loss_unchanged(kt):
    """The trainer calls the loss under its bf16 autocast; on CPU the op computes in fp32 regardless."""
    case = kt.make_case(3, 7, 19, 1001, seed=37)
    case.hidden = case.hidden.bfloat16()
    options = build_options(kt, case, 1.0, beta=0.1, entropy_coef=0.02, importance_weights=True)
    plain = kt.run_fused(("torch", "cpu"), case, chunk_size=8, **options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = kt.run_fused(("torch", "cpu"), case, chunk_size=8, **options)
    for key in plain:
        torch.testing.assert_close(autocast[key], plain[key], rtol=0, atol=0, msg=key)
