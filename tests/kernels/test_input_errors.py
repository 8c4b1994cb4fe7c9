"""Bad input to the LM-head ops raises ValueError (IndexError for token ids) naming the argument."""
import os

import pytest
import torch

import awpo_kernels as ak

B, T, H, V = 3, 5, 7, 11


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden=torch.randn(B, T, H, generator=g), weight=torch.randn(V, H, generator=g),
                targets=torch.randint(0, V, (B, T), generator=g), advantages=torch.randn(B, generator=g))


def fused(**changes):
    args = inputs()
    options = {k: changes.pop(k) for k in list(changes) if k not in args}
    args.update(changes)
    options.setdefault("backend", "torch")
    return ak.fused_linear_policy_loss(args["hidden"], args["weight"], args["targets"], args["advantages"], **options)


def logprobs(**changes):
    args = inputs()
    options = {k: changes.pop(k) for k in list(changes) if k not in args}
    args.update(changes)
    options.setdefault("backend", "torch")
    return ak.linear_logprobs(args["hidden"], args["weight"], args["targets"], **options)


def policy(**changes):
    g = torch.Generator().manual_seed(1)
    args = dict(logprobs=-torch.rand(B, T, generator=g), advantages=torch.randn(B, generator=g),
                mask=torch.ones(B, T, dtype=torch.bool))
    options = {k: changes.pop(k) for k in list(changes) if k not in args}
    args.update(changes)
    options.setdefault("backend", "torch")
    return ak.policy_loss(args["logprobs"], args["advantages"], args["mask"], **options)


def with_target(value):
    targets = inputs()["targets"].clone()
    targets[1, 2] = value
    return targets


@pytest.mark.parametrize("op", [fused, logprobs])
@pytest.mark.parametrize("bad_id", [V, V + 100, -1, -99, -101])
def test_out_of_range_or_negative_token_ids_raise_index_error(op, bad_id):
    with pytest.raises(IndexError, match="targets"):
        op(targets=with_target(bad_id))


@pytest.mark.parametrize("op", [fused, logprobs])
def test_minus_100_is_the_only_allowed_negative_id(op):
    op(targets=with_target(-100))  # no error


CASES = [
    # (op, changes, message fragment)
    (fused, dict(targets=torch.randint(0, V, (B, T + 1))), "targets"),
    (fused, dict(weight=torch.randn(V, H + 1)), "H"),
    (fused, dict(weight=torch.randn(V)), "weight"),
    (fused, dict(targets=inputs()["targets"].float()), "targets"),
    (fused, dict(hidden=torch.randint(0, 3, (B, T, H))), "hidden"),
    (fused, dict(advantages=torch.randn(B + 1)), "advantages"),
    (fused, dict(advantages=torch.randn(B, 1)), "advantages"),
    (fused, dict(old_logprobs=torch.randn(B, T - 1)), "old_logprobs"),
    (fused, dict(ref_logprobs=torch.randn(T, B), beta=0.1), "ref_logprobs"),
    (fused, dict(importance_weights=torch.randn(B * T)), "importance_weights"),
    (fused, dict(epsilon_low=torch.rand(B + 2)), "epsilon_low"),
    (fused, dict(epsilon_high=-0.1), "epsilon_high"),
    (fused, dict(loss_type="ppo"), "loss_type"),
    (fused, dict(kl_type="k4", beta=0.1, ref_logprobs=torch.randn(B, T)), "kl_type"),
    (fused, dict(importance_sampling_level="tokens"), "importance_sampling_level"),
    (fused, dict(beta=0.1), "ref_logprobs"),
    (fused, dict(beta=-0.1), "beta"),
    (fused, dict(temperature=0.0), "temperature"),
    (fused, dict(temperature=float("nan")), "temperature"),
    (fused, dict(delta=-1.0), "delta"),
    (fused, dict(chunk_size=0), "chunk_size"),
    (fused, dict(chunk_size=2.5), "chunk_size"),
    (fused, dict(num_items_in_batch=0), "num_items_in_batch"),
    (fused, dict(num_items_in_batch=float("nan")), "num_items_in_batch"),
    (fused, dict(num_items_in_batch=torch.tensor(-3.0)), "num_items_in_batch"),
    (fused, dict(num_items_in_batch=torch.tensor([12.0])), "num_items_in_batch"),
    (fused, dict(num_seqs_in_batch=0, loss_type="grpo"), "num_seqs_in_batch"),
    (fused, dict(num_seqs_in_batch=-2.0, loss_type="dr_grpo"), "num_seqs_in_batch"),
    (fused, dict(num_seqs_in_batch=float("nan"), loss_type="grpo"), "num_seqs_in_batch"),
    (fused, dict(num_seqs_in_batch=float("inf"), loss_type="grpo"), "num_seqs_in_batch"),
    (fused, dict(num_seqs_in_batch=True, loss_type="grpo"), "num_seqs_in_batch"),
    (fused, dict(num_seqs_in_batch="4", loss_type="grpo"), "num_seqs_in_batch"),
    (fused, dict(num_seqs_in_batch=torch.tensor(0), loss_type="grpo"), "num_seqs_in_batch"),
    (fused, dict(num_seqs_in_batch=torch.tensor(float("inf")), loss_type="dr_grpo"), "num_seqs_in_batch"),
    (fused, dict(num_seqs_in_batch=torch.ones(B), loss_type="grpo"), "num_seqs_in_batch"),
    (fused, dict(num_seqs_in_batch=torch.tensor(True), loss_type="grpo"), "num_seqs_in_batch"),
    (fused, dict(backend="cuda"), "backend"),
    (logprobs, dict(targets=torch.randint(0, V, (B, T + 1))), "targets"),
    (logprobs, dict(weight=torch.randn(V, H - 1)), "H"),
    (logprobs, dict(temperature=-1.0), "temperature"),
    (logprobs, dict(chunk_size=-4), "chunk_size"),
    (logprobs, dict(backend="fast"), "backend"),
    (policy, dict(mask=torch.ones(B, T + 1, dtype=torch.bool)), "mask"),
    (policy, dict(logprobs=torch.zeros(B, T, dtype=torch.long)), "logprobs"),
    (policy, dict(entropy_coef=0.1), "entropy"),
    (policy, dict(entropy=torch.rand(B, T - 1), entropy_coef=0.1), "entropy"),
    (policy, dict(advantages=torch.randn(B - 1)), "advantages"),
    (policy, dict(loss_type="sum"), "loss_type"),
    (policy, dict(old_logprobs=torch.rand(B, T, dtype=torch.float64).long()), "old_logprobs"),
    (policy, dict(num_seqs_in_batch=0, loss_type="grpo"), "num_seqs_in_batch"),
    (policy, dict(num_seqs_in_batch=torch.tensor(float("nan")), loss_type="dr_grpo"), "num_seqs_in_batch"),
    (policy, dict(num_items_in_batch=-1), "num_items_in_batch"),
    (policy, dict(num_items_in_batch=torch.tensor(float("inf"))), "num_items_in_batch"),
]


@pytest.mark.parametrize("op,changes,fragment", CASES, ids=[f"{c[0].__name__}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_bad_argument_raises_value_error_naming_it(op, changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        op(**dict(changes))


UNUSED_COUNTS = [("num_seqs_in_batch", "dapo"), ("num_seqs_in_batch", "bnpo"), ("num_items_in_batch", "grpo"),
                 ("num_items_in_batch", "dr_grpo"), ("num_items_in_batch", "bnpo")]


@pytest.mark.parametrize("op", [fused, policy])
@pytest.mark.parametrize("count,loss_type", UNUSED_COUNTS, ids=[f"{c}-{t}" for c, t in UNUSED_COUNTS])
def test_a_count_the_loss_type_does_not_use_raises_naming_both(op, count, loss_type):
    """num_seqs_in_batch divides grpo / dr_grpo, num_items_in_batch dapo; any other pairing is refused (a count
    that changed nothing would hide a caller's mistake), whatever its value, a valid one included."""
    for value in (12, torch.tensor(12.0)):
        with pytest.raises(ValueError, match=f"{count} is a count of loss_type .* loss_type='{loss_type}' does not"):
            op(loss_type=loss_type, **{count: value})
    op(loss_type=loss_type, **{count: None})  # None is "this call's count" for every loss type


def test_checks_off_skip_reading_a_count_tensor_but_not_its_shape_or_loss_type(monkeypatch):
    monkeypatch.setenv("AWPO_KERNELS_CHECK_INPUTS", "0")
    fused(loss_type="grpo", num_seqs_in_batch=torch.tensor(-1.0))  # the value is the caller's responsibility
    with pytest.raises(ValueError, match="num_seqs_in_batch must be a number or a 0-dim"):
        fused(loss_type="grpo", num_seqs_in_batch=torch.ones(2))
    with pytest.raises(ValueError, match="loss_type='dapo' does not use it"):
        fused(loss_type="dapo", num_seqs_in_batch=torch.tensor(3.0))
    with pytest.raises(ValueError, match="num_seqs_in_batch must be a finite number > 0"):
        fused(loss_type="grpo", num_seqs_in_batch=0)  # a number costs no synchronisation: always checked


def packed_inputs(seq_ids):
    g = torch.Generator().manual_seed(2)
    n = seq_ids.shape[0]
    return (torch.randn(n, H, generator=g), torch.randn(V, H, generator=g), torch.randint(0, V, (n,), generator=g),
            torch.randn(3, generator=g))


@pytest.mark.parametrize("seq_ids", [torch.tensor([0, 0, 1, 3, 2]), torch.tensor([0, -1, 1, 2, 2])], ids=["high", "negative"])
def test_seq_ids_outside_the_sequences_raise(seq_ids):
    hidden, weight, targets, advantages = packed_inputs(seq_ids)
    with pytest.raises(IndexError, match="seq_ids"):
        ak.fused_linear_policy_loss(hidden, weight, targets, advantages, seq_ids=seq_ids, backend="torch")


@pytest.mark.parametrize("seq_ids,fragment", [(torch.tensor([0, 0, 1, 2]), "seq_ids"),
                                              (torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0]), "seq_ids")],
                         ids=["short", "float"])
def test_malformed_seq_ids_raise(seq_ids, fragment):
    hidden, weight, targets, advantages = packed_inputs(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=fragment):
        ak.fused_linear_policy_loss(hidden, weight, targets, advantages, seq_ids=seq_ids, backend="torch")


def test_dr_grpo_in_the_packed_layout_needs_max_completion_length():
    seq_ids = torch.tensor([0, 0, 1, 2, 2])
    hidden, weight, targets, advantages = packed_inputs(seq_ids)
    with pytest.raises(ValueError, match="max_completion_length"):
        ak.fused_linear_policy_loss(hidden, weight, targets, advantages, seq_ids=seq_ids, loss_type="dr_grpo",
                                    backend="torch")


def test_packed_targets_must_be_one_dimensional():
    hidden, weight, targets, advantages = packed_inputs(torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        ak.fused_linear_policy_loss(hidden.reshape(2, 3, H), weight, targets.reshape(2, 3), advantages,
                                    seq_ids=torch.zeros(2, 3, dtype=torch.long), backend="torch")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="only meaningful without the interpreter")
def test_triton_backend_on_cpu_without_the_interpreter_explains_itself():
    args = inputs()
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        ak.linear_logprobs(args["hidden"], args["weight"], args["targets"], backend="triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        ak.fused_linear_policy_loss(*args.values(), backend="triton")


@pytest.mark.parametrize("name", ["advantages", "old_logprobs", "epsilon_low", "num_items_in_batch",
                                  "num_seqs_in_batch"])
def test_tensor_options_on_another_device_raise_naming_them(name):
    """A per-sequence or per-token tensor elsewhere than the inputs would be copied (a host sync) or read
    through a wrong pointer: refused up front. (The meta device stands in for a GPU here.)"""
    meta = {"advantages": torch.zeros(B, device="meta"), "old_logprobs": torch.zeros(B, T, device="meta"),
            "epsilon_low": torch.zeros(B, device="meta"), "num_items_in_batch": torch.zeros(1, device="meta"),
            "num_seqs_in_batch": torch.zeros((), device="meta")}
    with pytest.raises(ValueError, match=f"{name} must be on the inputs' device"):
        fused(**{name: meta[name]}, loss_type="grpo" if name == "num_seqs_in_batch" else "dapo")


def test_a_cpu_scalar_tensor_option_is_a_scalar_not_a_device_mismatch():
    expected = fused(epsilon_high=0.28, num_items_in_batch=40.0).loss
    got = fused(epsilon_high=torch.tensor(0.28), num_items_in_batch=torch.tensor(40.0)).loss
    torch.testing.assert_close(got, expected)
    expected = fused(loss_type="grpo", num_seqs_in_batch=7).loss
    for count in (torch.tensor(7), torch.tensor(7.0, dtype=torch.float64)):  # int or float64: the loss stays fp32
        got = fused(loss_type="grpo", num_seqs_in_batch=count).loss
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected)
