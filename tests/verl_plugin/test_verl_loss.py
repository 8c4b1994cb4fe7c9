"""The registered policy loss ``awpo``: equal to awpo_kernels.policy_loss under each loss_agg_mode mapping,
equal to verl's own ``vanilla`` PPO loss on the same inputs (same math, verl's aggregation), and it
backpropagates. Through ``get_policy_loss_fn`` and verl's actor loss (``ppo_loss``)."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

import awpo_kernels as ak
from awpo.integrations.verl import LOSS_NAME

B, T = 6, 9
LENGTHS = [9, 4, 0, 7, 1, 5]  # row 2 has no response token
MODES = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
LOCAL = {}
GLOBAL = {"dp_size": 2, "batch_num_tokens": 61, "global_batch_size": 16, "loss_scale_factor": 12}


def actor_config(mode: str, batch_info: dict, **options):
    from verl.workers.config import FSDPActorConfig

    config = FSDPActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=2, loss_agg_mode=mode,
                             clip_ratio_low=options.pop("low", 0.2), clip_ratio_high=options.pop("high", 0.28),
                             **options)
    config.global_batch_info.update(batch_info)  # verl's ppo_loss fills it per micro-batch the same way
    return config


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in LENGTHS], dtype=torch.bool)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logp = (old + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0.0)
    per_row = torch.tensor([1.2, -0.7, 0.3, -1.5, 0.0, 0.9], dtype=torch.float64)
    advantages = per_row.unsqueeze(-1) * mask  # what verl's estimators hand the actor
    weights = 0.5 + torch.rand(B, T, generator=g, dtype=torch.float64)
    return logp, old, advantages, mask, weights, per_row


def kernel_loss(mode: str, batch_info: dict, logp, old, per_row, mask, weights):
    """awpo_kernels.policy_loss on this call's own counts, times the factor that turns it into verl's agg_loss: an
    independent form of the plugin's mapping (the plugin passes global counts to the op instead)."""
    dp = batch_info.get("dp_size", 1)
    sequences = batch_info.get("global_batch_size")
    seq_factor = B * dp / sequences if sequences else B / int(mask.any(-1).sum())
    loss_type, options, factor = {
        "token-mean": ("dapo", {"num_items_in_batch": batch_info.get("batch_num_tokens")}, dp),
        "token-sum": ("dapo", {"num_items_in_batch": 1}, dp),
        "seq-mean-token-mean": ("grpo", {}, seq_factor),
        "seq-mean-token-sum": ("dr_grpo", {"max_completion_length": 1}, seq_factor),
        "seq-mean-token-sum-norm": ("dr_grpo", {"max_completion_length": batch_info.get("loss_scale_factor", T)},
                                    seq_factor),
    }[mode]
    out = ak.policy_loss(logp, per_row, mask, old_logprobs=old, importance_weights=weights, epsilon_low=0.2,
                         epsilon_high=0.28, delta=3.0, loss_type=loss_type, **options)
    return out.loss * factor


def loss_and_grad(fn, *args):
    logp = args[0].detach().clone().requires_grad_(True)
    loss = fn(logp, *args[1:])
    loss.backward()
    return loss.detach(), logp.grad


@pytest.mark.parametrize("batch_info", [LOCAL, GLOBAL], ids=["one-rank", "dp2-global-counts"])
@pytest.mark.parametrize("mode", MODES)
def test_loss_equals_awpo_kernels_and_verl_vanilla(mode, batch_info):
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    awpo_loss, vanilla = get_policy_loss_fn(LOSS_NAME), get_policy_loss_fn("vanilla")
    logp, old, advantages, mask, weights, per_row = inputs()
    config = actor_config(mode, batch_info)

    def registered(lp):
        return awpo_loss(old, lp, advantages, mask, mode, config, rollout_is_weights=weights)[0]

    def verl_vanilla(lp):
        return vanilla(old, lp, advantages, mask, mode, config, rollout_is_weights=weights)[0]

    loss, grad = loss_and_grad(registered, logp)
    kernel, kernel_grad = loss_and_grad(lambda lp: kernel_loss(mode, batch_info, lp, old, per_row, mask, weights), logp)
    reference, reference_grad = loss_and_grad(verl_vanilla, logp)
    torch.testing.assert_close(loss, kernel, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, kernel_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, reference.to(loss.dtype), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-6, atol=1e-9)
    assert grad[~mask].abs().max() == 0 and grad[mask].abs().max() > 0


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_verls_log_ratio_clamp_is_kept_far_off_policy(mode):
    """Log-ratios beyond verl's clamp (|log_prob - old| > 20, up to 100: fp32's exp overflows past ~88), as verl's
    actor hands them (fp32): loss and gradient equal verl's vanilla loss, finite, where the kernel alone gives NaN."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    logp, old, advantages, mask, weights, per_row = (t.float() for t in inputs(3))
    old = old.clone()
    far = {(0, 1): 100.0, (0, 3): -100.0, (1, 0): 30.0, (3, 2): -30.0, (3, 5): 95.0, (5, 4): -25.0}
    for (row, col), log_ratio in far.items():
        old[row, col] = logp[row, col] - log_ratio
    config = actor_config(mode, {})

    def registered(lp):
        return get_policy_loss_fn(LOSS_NAME)(old, lp, advantages, mask, mode, config, rollout_is_weights=weights)[0]

    def verl_vanilla(lp):
        return get_policy_loss_fn("vanilla")(old, lp, advantages, mask, mode, config, rollout_is_weights=weights)[0]

    loss, grad = loss_and_grad(registered, logp)
    reference, reference_grad = loss_and_grad(verl_vanilla, logp)
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-7)
    for row, col in far:
        assert grad[row, col] == 0  # no gradient past the clamp, as verl
    _, kernel_grad = loss_and_grad(lambda lp: kernel_loss(mode, {}, lp, old, per_row, mask, weights), logp)
    assert torch.isnan(kernel_grad).any()  # what the loss gave before it kept the clamp


def test_metrics_and_dual_clip():
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    logp, old, advantages, mask, weights, _ = inputs(1)
    logp = logp.clone()
    logp[1, 0] = old[1, 0] + 2.0  # ratio e^2 = 7.4 > clip_ratio_c = 3 on a negative advantage: dual clip
    loss, metrics = get_policy_loss_fn(LOSS_NAME)(old, logp, advantages, mask, "token-mean", actor_config("token-mean", {}))
    assert set(metrics) >= {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"}
    assert metrics["actor/pg_clipfrac_lower"] >= 1 / int(mask.sum())
    _, vanilla_metrics = get_policy_loss_fn("vanilla")(old, logp, advantages, mask, "token-mean",
                                                        actor_config("token-mean", {}))
    for key in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
        assert metrics[key] == pytest.approx(vanilla_metrics[key], abs=1e-6)


def test_bad_options_are_named():
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    fn = get_policy_loss_fn(LOSS_NAME)
    logp, old, advantages, mask, _, _ = inputs()
    with pytest.raises(ValueError, match="loss_agg_mode='token-median' has no awpo equivalent"):
        fn(old, logp, advantages, mask, "token-median", actor_config("token-mean", {}))
    with pytest.raises(ValueError, match=r"dp_size=2 needs global_batch_info\['batch_num_tokens'\]"):
        fn(old, logp, advantages, mask, "token-mean", actor_config("token-mean", {"dp_size": 2}))
    with pytest.raises(ValueError, match="clip_ratio_c=1.1 must be >= 1 \\+ clip_ratio_high"):
        fn(old, logp, advantages, mask, "token-mean", actor_config("token-mean", {}, clip_ratio_c=1.1))
    per_token = advantages + 0.1 * torch.arange(T) * mask
    with pytest.raises(ValueError, match="one advantage per sequence"):
        fn(old, logp, per_token, mask, "token-mean", actor_config("token-mean", {}))


def test_through_verl_actor_ppo_loss():
    """verl's actor loss (workers/utils/losses.ppo_loss) with policy_loss.loss_mode=awpo vs vanilla."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.config import FSDPActorConfig
    from verl.workers.utils.losses import ppo_loss

    logp, old, advantages, mask, weights, _ = inputs(2)
    prompt_len = 3
    values = []  # the model's flat log-probs: each sequence's prompt + response tokens, left-shifted by one
    for row, n in enumerate(LENGTHS):
        values.append(torch.cat([torch.zeros(prompt_len - 1, dtype=logp.dtype), logp[row, :n], torch.zeros(1, dtype=logp.dtype)]))

    def run(mode: str):
        flat = torch.cat(values).detach().requires_grad_(True)
        config = FSDPActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=2, clip_ratio_high=0.28,
                                 policy_loss={"loss_mode": mode}, loss_agg_mode="seq-mean-token-mean")
        attention = torch.cat([torch.ones(B, prompt_len, dtype=torch.long), mask.long()], dim=1)
        data = TensorDict({"prompts": torch.ones(B, prompt_len, dtype=torch.long), "responses": torch.ones(B, T, dtype=torch.long),
                           "attention_mask": attention, "response_mask": mask.long(), "old_log_probs": old,
                           "advantages": advantages, "rollout_is_weights": weights}, batch_size=B)
        tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=None)
        loss, metrics = ppo_loss(config, {"log_probs": flat}, data)
        loss.backward()
        assert ("actor/awpo/clipfrac_low" in metrics) == (mode == LOSS_NAME)  # the loss verl picked
        return loss.detach(), flat.grad

    awpo_loss, awpo_grad = run(LOSS_NAME)
    vanilla_loss, vanilla_grad = run("vanilla")
    assert awpo_grad.abs().max() > 0
    torch.testing.assert_close(awpo_loss, vanilla_loss, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(awpo_grad, vanilla_grad, rtol=1e-6, atol=1e-9)
