"""AWPOTrainer's fused loss keeps TRL's numerics under mixed precision, on CPU (issue #22, points 1 and 2).

- FSDP2 (`torch.distributed.fsdp.fully_shard`) with a bf16 `MixedPrecisionPolicy` casts every floating-point
  argument of the root module's forward to bf16 (`cast_forward_inputs`, on by default). The loss runs inside that
  forward (TRL's `_ForwardRedirection`), so its fp32 inputs (advantages, old / reference log-probs, vLLM
  importance ratios) must not travel as forward arguments. Run here under a real `fully_shard` in a one-process
  gloo group (FSDP2 runs on CPU): the inputs arrive in fp32, bit for bit, and the loss matches the unsharded fp32
  computation within what bf16 parameters explain, on inputs built so that bf16 inputs would move it 5x further.
- With accelerate's bf16 autocast (DDP + `--bf16`, fp32 master weights), TRL computes its old / reference
  log-probs with bf16 GEMMs; the fused loss must read the LM head in the autocast dtype too (fp32 logits and
  log-softmax), else the PPO ratio is off 1 on-policy. Checked plain and inside a real DistributedDataParallel
  wrapper (one-process gloo group).
"""
from __future__ import annotations

import math
import tempfile

import pytest
import torch
import torch.distributed as dist
from test_trl_support import loss_inputs, tiny_dataset

from awpo.integrations.trl import AWPOConfig, AWPOTrainer, outcome_reward

pytestmark = pytest.mark.slow  # FSDP2 and DDP process groups (~30 s)

FLOAT_INPUTS = ("advantages", "old_per_token_logps", "ref_per_token_logps", "importance_sampling_ratio")
LOSS_OPTIONS = dict(loss_type="dapo", beta=0.05, use_bias_correction_kl=False, vllm_importance_sampling_correction=True,
                    use_cpu=True, report_to=[], num_generations=2, per_device_train_batch_size=6,
                    gradient_accumulation_steps=2)


def grpo_trainer(model_dir, output_dir, **overrides) -> AWPOTrainer:
    args = AWPOConfig(output_dir=str(output_dir), estimator="grpo", **{**LOSS_OPTIONS, "bf16": False, **overrides})
    trainer = AWPOTrainer(model=model_dir, reward_funcs=[outcome_reward], args=args, train_dataset=tiny_dataset(2))
    trainer.use_vllm = True  # the vLLM importance ratio is an input: no engine needed to apply it
    trainer.current_gradient_accumulation_steps = 2
    trainer.model.train()
    return trainer


def trl_logprobs(trainer, inputs) -> torch.Tensor:
    """[B, C] log-probs of the completion tokens by TRL's own fused LM head (under the trainer's autocast)."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask,
                                                                 inputs["completion_ids"].size(1))
    return logps


def off_bf16_grid(values: torch.Tensor) -> torch.Tensor:
    """Values 0.9 of a half bf16 step away from the bf16 grid (towards zero): a bf16 cast moves every one of them
    the same way, which a loss averages instead of cancelling."""
    on_grid = values.to(torch.bfloat16).float()
    half_step = torch.pow(2.0, torch.floor(torch.log2(on_grid.abs())) - 8)
    return on_grid - 0.9 * half_step * torch.sign(on_grid)


def on_policy_inputs(trainer) -> dict:
    """A micro-batch whose old log-probs are the fp32 model's own (ratio ~1, no token clips), moved off the bf16
    grid as the other fp32 inputs, with positive advantages: a bf16 cast of the inputs biases the loss by ~1%."""
    inputs = loss_inputs(trainer.processing_class)
    inputs["old_per_token_logps"] = off_bf16_grid(trl_logprobs(trainer, inputs))
    inputs["ref_per_token_logps"] = off_bf16_grid(inputs["old_per_token_logps"] - 0.01)
    inputs["importance_sampling_ratio"] = off_bf16_grid(torch.full_like(inputs["importance_sampling_ratio"], 1.0))
    inputs["advantages"] = off_bf16_grid(0.5 + inputs["advantages"].abs())
    return inputs


def loss_value(trainer, inputs) -> float:
    return trainer._compute_loss(trainer.model, {k: v.clone() for k, v in inputs.items()}).item()


@pytest.fixture
def gloo_group():
    """A one-process gloo group (FSDP2 needs a process group; FileStore: no port to pick), destroyed after.

    In a full run an earlier test may have left this process's default group up (a vLLM engine starts
    one): a one-process gloo group is what the test needs, so it is used as it is and left alone."""
    if dist.is_initialized():
        if dist.get_world_size() != 1 or dist.get_backend() != "gloo":
            pytest.fail(f"an earlier test left a {dist.get_backend()} group of {dist.get_world_size()} processes")
        yield
        return
    with tempfile.NamedTemporaryFile(delete=False) as store_file:
        store = dist.FileStore(store_file.name, 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp2_bf16_mixed_precision_leaves_the_loss_inputs_in_fp32(tiny_model_dir, tmp_path, gloo_group, monkeypatch):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    import awpo.integrations.trl.trainer as trainer_module

    trainer = grpo_trainer(tiny_model_dir, tmp_path)
    inputs = on_policy_inputs(trainer)
    unsharded = loss_value(trainer, inputs)
    as_bf16 = {k: (v.to(torch.bfloat16).float() if k in FLOAT_INPUTS else v) for k, v in inputs.items()}
    cast_error = abs(loss_value(trainer, as_bf16) - unsharded)  # what cast_forward_inputs did to the loss

    # accelerate's FSDP2 set-up: one unit per decoder layer, then the root; bf16 compute, fp32 gradient reduction
    mesh = init_device_mesh("cpu", (1,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    assert policy.cast_forward_inputs
    for layer in trainer.model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(trainer.model, mesh=mesh, mp_policy=policy)
    assert type(trainer.model.lm_head.weight).__name__ == "DTensor"

    arrived = {}
    real = trainer_module.compute_fused_loss

    def recording(unwrapped, received, settings, **kwargs):
        arrived.update({k: received[k].detach().clone() for k in FLOAT_INPUTS})
        arrived["lm_head"] = unwrapped.get_output_embeddings().weight.dtype
        return real(unwrapped, received, settings, **kwargs)

    monkeypatch.setattr(trainer_module, "compute_fused_loss", recording)
    loss = trainer._compute_loss(trainer.model, {k: v.clone() for k, v in inputs.items()})
    assert arrived["lm_head"] == torch.bfloat16  # the forward really ran under FSDP2's bf16 parameters
    for name in FLOAT_INPUTS:
        assert arrived[name].dtype == torch.float32, name
        assert torch.equal(arrived[name], inputs[name]), name

    sharded_error = abs(loss.item() - unsharded)
    assert sharded_error <= 2e-3 * abs(unsharded), (loss.item(), unsharded)  # bf16 parameters only
    assert cast_error >= 5 * 2e-3 * abs(unsharded), (cast_error, unsharded)  # the bug would fail the line above
    loss.backward()  # FSDP2's reduce-scatter over gloo
    grad = trainer.model.lm_head.weight.grad
    assert grad.dtype == torch.float32 and bool(torch.isfinite(grad.full_tensor()).all())


def test_bf16_autocast_reads_the_lm_head_in_bf16_and_the_ratio_is_one_on_policy(tiny_model_dir, tmp_path,
                                                                                  monkeypatch):
    check_bf16_lm_head(grpo_trainer(tiny_model_dir, tmp_path, bf16=True), monkeypatch, ddp=False)


def test_the_same_under_a_real_ddp_wrapper(tiny_model_dir, tmp_path, gloo_group, monkeypatch):
    """DDP + --bf16 as accelerate runs it: the loss gets the DistributedDataParallel-wrapped model."""
    check_bf16_lm_head(grpo_trainer(tiny_model_dir, tmp_path, bf16=True), monkeypatch, ddp=True)


def check_bf16_lm_head(trainer, monkeypatch, *, ddp: bool):
    import awpo.integrations.trl.loss as loss_module

    with trainer.accelerator.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    model = trainer.model
    assert model.lm_head.weight.dtype == torch.float32  # TRL loads fp32 master weights

    inputs = loss_inputs(trainer.processing_class)
    inputs["old_per_token_logps"] = trl_logprobs(trainer, inputs)  # TRL's on-policy log-probs (bf16 GEMMs)
    seen = {}
    real = loss_module.ak

    class Recording:
        @staticmethod
        def fused_linear_policy_loss(hidden, weight, targets, *args, **kwargs):
            result = real.fused_linear_policy_loss(hidden, weight, targets, *args, **kwargs)
            seen.update(hidden=hidden.dtype, weight=weight.dtype, logprobs=result.logprobs, targets=targets,
                        old=kwargs["old_logprobs"])
            return result

    monkeypatch.setattr(loss_module, "ak", Recording)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    forwards = []
    if ddp:  # the loss must run inside DDP's own forward (its gradient hooks expect it)
        through = wrapped.forward
        wrapped.forward = lambda *a, **k: forwards.append(1) or through(*a, **k)
    loss = trainer._compute_loss(wrapped, {k: v.clone() for k, v in inputs.items()})
    if ddp:
        assert forwards, "the loss bypassed the DDP wrapper's forward"
        loss.backward()  # DDP's gradient all-reduce runs (one process: the gradients are the local ones)
        assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.dtype == torch.float32
    # the GEMM operands are bf16 (on CPU the op upcasts them and accumulates in fp32; on CUDA the fp32 weight goes
    # in as it is and the op casts it, see loss.lm_head_operands)
    assert seen["hidden"] == torch.bfloat16 and seen["weight"] == torch.bfloat16

    # the ratio against TRL's own bf16 log-probs is 1 within bf16 rounding of TRL's logits
    ratio = torch.exp(seen["logprobs"] - seen["old"])
    assert (ratio - 1).abs().max() < 2 ** -7, (ratio - 1).abs().max()

    # and the log-probs are exactly those of bf16 operands with fp32 logits and log-softmax, not fp32 GEMMs
    mask = inputs["completion_mask"].bool()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.no_grad(), trainer.accelerator.autocast():
        hidden = model.model(input_ids=ids, attention_mask=attention).last_hidden_state
    hidden = hidden[:, -inputs["completion_ids"].size(1) - 1:-1][mask]
    weight = model.lm_head.weight.detach()

    def logprobs(h, w):
        return torch.log_softmax(h.float() @ w.float().T / trainer.temperature, dim=-1).gather(
            1, seen["targets"][:, None])[:, 0]

    bf16_operands = logprobs(hidden.to(torch.bfloat16), weight.to(torch.bfloat16))
    fp32_gemms = logprobs(hidden.float(), weight)  # what the loss did before: fp32 master weight, fp32 GEMM
    torch.testing.assert_close(seen["logprobs"], bf16_operands, rtol=0, atol=2e-6)
    assert (fp32_gemms - bf16_operands).abs().max() > 50 * 2e-6  # the check above tells the two apart
    assert math.isfinite(trainer._metrics["train"]["clip_ratio/low_mean"][-1])


def test_the_lm_head_weight_is_cast_only_where_the_op_would_not_read_the_compute_dtype():
    from awpo.integrations.trl.loss import lm_head_compute_dtype, weight_cast

    bf16, fp32 = torch.bfloat16, torch.float32
    # TRL's choice: fp32 when asked, else the autocast dtype, else the hidden states'
    assert lm_head_compute_dtype(fp32, bf16, cast_lm_head_to_fp32=False) == bf16
    assert lm_head_compute_dtype(bf16, None, cast_lm_head_to_fp32=False) == bf16
    assert lm_head_compute_dtype(bf16, bf16, cast_lm_head_to_fp32=True) == fp32
    # CUDA: a bf16 hidden state makes the op read the fp32 master weight in bf16 itself (fp32 weight gradient)
    assert weight_cast("cuda", bf16, fp32) is None and weight_cast("cuda", bf16, bf16) is None
    assert weight_cast("cuda", fp32, bf16) == fp32  # cast_lm_head_to_fp32 with bf16 parameters
    # CPU: the op upcasts to fp32, so bf16 operands must be rounded before it
    assert weight_cast("cpu", bf16, fp32) == bf16
    assert weight_cast("cpu", fp32, bf16) is None and weight_cast("cpu", fp32, fp32) is None
