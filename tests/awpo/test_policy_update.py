"""The trainer's update normalises each micro-batch's loss by the batch counts of its whole mini-batch: however the
mini-batch is split into micro-batches (and whichever zero-loss sequences are skipped), the summed loss and the
gradient of an optimizer step equal one loss call on the whole mini-batch (awpo_kernels' reference), for every
loss type. The counts reach the op as `num_seqs_in_batch` (grpo, dr_grpo) and `num_items_in_batch` (dapo, bnpo).
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import awpo_kernels as ak
from awpo.policy_update import (
    OptimizerStepPlan,
    RolloutBatch,
    UpdateOptions,
    batch_counts,
    importance_weights,
    last_hidden_states,
    lm_head_weight,
    pack,
    token_logprobs,
    update_policy,
)

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
ADVANTAGES = [1.0, -0.5, 0.0, 0.7, -1.2, 0.3, 0.9, 0.0]   # two zero-advantage sequences: skipped by the update


def rollout_batch(seed: int = 3) -> RolloutBatch:
    """Two groups of 4 completions (a shared prompt each), odd lengths, tool tokens outside the loss, and one
    completion with no loss token at all; sampling log-probs near the tiny model's (~ -6.2)."""
    g = torch.Generator().manual_seed(seed)

    def tokens(n):
        return torch.randint(3, 400, (n,), generator=g).tolist()

    prompts = [tokens(7)] * 4 + [tokens(5)] * 4
    lengths = [5, 3, 6, 4, 7, 2, 5, 3]
    responses = [tokens(n) for n in lengths]
    masks = [[int(torch.rand((), generator=g) > 0.25) for _ in range(n)] for n in lengths]
    masks[0][0], masks[5] = 1, [0, 0]  # sequence 5 has no loss token
    sampling = [(-6.2 + 0.3 * torch.randn(n, generator=g)).tolist() for n in lengths]
    eps_low = 0.15 + 0.1 * torch.rand(8, generator=g)
    return RolloutBatch(prompts, responses, masks, sampling, torch.tensor(ADVANTAGES), eps_low, eps_low + 0.05)


def loss_options(loss_type: str) -> ak.LossOptions:
    return ak.LossOptions(loss_type=loss_type, max_completion_length=9 if loss_type == "dr_grpo" else None)


def whole_batch_loss(model, batch: RolloutBatch, options: UpdateOptions):
    """(loss, gradients) of one reference loss call on every sequence of the batch, as SPEC section 3 reads."""
    model.zero_grad(set_to_none=True)
    every = list(range(len(batch)))
    micro = pack(batch, every, "cpu")
    old, _ = token_logprobs(model, micro, options.loss.temperature)
    weights = importance_weights(old, micro.sampling_logprobs, micro.seq_ids, len(batch), options.is_mode,
                                 options.is_cap)
    out = ak.fused_linear_policy_loss(last_hidden_states(model, micro), lm_head_weight(model), micro.targets,
                                      batch.advantages, seq_ids=micro.seq_ids, old_logprobs=old,
                                      importance_weights=weights, epsilon_low=batch.epsilon_low,
                                      epsilon_high=batch.epsilon_high, options=options.loss, backend="reference")
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def update_gradients(model, batch: RolloutBatch, options: UpdateOptions):
    """(the step's summed loss, its gradients) from `update_policy`, with an optimizer step that changes nothing."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    metrics = update_policy(model, optimizer, scheduler, batch, options)
    return metrics, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_any_micro_batching_gives_the_loss_and_gradient_of_the_whole_mini_batch(model, loss_type):
    batch = rollout_batch()
    expected_loss, expected_grads = None, None
    for size in (1, 3, 8):
        options = UpdateOptions(loss=loss_options(loss_type), per_device_train_batch_size=size, max_grad_norm=0.0)
        if expected_loss is None:
            expected_loss, expected_grads = whole_batch_loss(model, batch, options)
            assert abs(expected_loss) > 1e-4
        metrics, grads = update_gradients(model, batch, options)
        assert metrics["update/trained_sequences"] == 5  # zero advantage or no loss token: skipped
        assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5, abs=1e-7), size
        assert set(grads) == set(expected_grads)
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7, msg=f"{size}: {name}")


def test_batch_counts_are_the_mini_batchs_sequences_or_loss_tokens():
    plan = OptimizerStepPlan(micro_batches=[[0, 1], [3]], num_tokens=23, num_seqs=8)
    assert batch_counts("grpo", plan) == ("grpo", {"num_seqs_in_batch": 8})
    assert batch_counts("dr_grpo", plan) == ("dr_grpo", {"num_seqs_in_batch": 8})
    assert batch_counts("dapo", plan) == ("dapo", {"num_items_in_batch": 23.0})
    assert batch_counts("bnpo", plan) == ("dapo", {"num_items_in_batch": 23.0})  # bnpo: the mini-batch's token mean
    empty = OptimizerStepPlan(micro_batches=[], num_tokens=0, num_seqs=4)
    assert batch_counts("dapo", empty) == ("dapo", {"num_items_in_batch": 1.0})  # never 0 (nothing trains then)


@pytest.mark.parametrize("is_mode", ["token_truncate", "sequence_mask"])
def test_live_importance_weights_equal_the_old_log_prob_pass(model, is_mode, monkeypatch):
    """With one iteration of one optimizer step the update forms the importance weights from its own forward
    (`live_importance_weights`) instead of a no-grad pass of the transformer: the same loss, gradients and
    logged weights, log-ratio gap and entropy as with the pass (forced here)."""
    import awpo.policy_update as policy_update

    batch = rollout_batch(seed=5)
    options = UpdateOptions(loss=loss_options("grpo"), per_device_train_batch_size=3, max_grad_norm=0.0,
                            is_mode=is_mode, is_cap=1.02)   # a cap inside the weights' range: truncation acts
    assert not policy_update.needs_old_pass(options)
    live_metrics, live_grads = update_gradients(model, batch, options)
    monkeypatch.setattr(policy_update, "needs_old_pass", lambda options: True)
    pass_metrics, pass_grads = update_gradients(model, batch, options)
    assert live_metrics["is_weight_min"] < 1.0 < live_metrics["is_weight_max"] or is_mode == "sequence_mask"
    for key in ("loss", "is_weight", "is_weight_min", "is_weight_max", "is_logratio_abs", "entropy"):
        assert live_metrics[key] == pytest.approx(pass_metrics[key], rel=1e-5, abs=1e-7), key
    for name, grad in pass_grads.items():
        torch.testing.assert_close(live_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
