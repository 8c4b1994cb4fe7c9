"""Shared-prompt attention (`awpo.attention`): the FlexAttention block mask against the dense mask, the
flex path against separate sequences, and on CUDA its gradients, its memory against the dense mask and
the trainer's update under bf16 autocast. The "grouped" attention (the CPU default) is tested in
test_attention_grouped.py.

FlexAttention has no backward on CPU (torch raises NotImplementedError), so the CPU tests compare
forward log-probs; every parameter's gradient is compared on CUDA (`cuda` tests, run by
benchmarks/gpu_suite.sh).
"""
import pytest
import torch
from segment_layouts import random_layout

import awpo_kernels as ak
from awpo import attention
from awpo.policy_update import (
    RolloutBatch,
    UpdateOptions,
    last_hidden_states,
    lm_head_weight,
    pack,
    shares_prompts,
    token_logprobs,
    update_policy,
)


def load_tiny(model_dir, device="cpu"):
    from transformers import AutoModelForCausalLM  # imported here: collecting this file stays cheap

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)


needs_flex = pytest.mark.skipif(not attention.flex_available(), reason="torch has no FlexAttention")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_flex
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block", [8, 32, 128])
def test_block_mask_tiles_and_mask_mod_agree_with_the_dense_mask(seed, block):
    layout = random_layout(seed, max_prompt=4 * block, max_response=2 * block)
    dense = attention.dense_mask(layout)[0, 0]
    length = layout.length
    mask = attention.block_mask(layout, block)
    q, kv = torch.arange(length)[:, None], torch.arange(length)[None, :]
    assert torch.equal(mask.mask_mod(0, 0, q, kv), dense)  # token level
    tiles = -(-length // block)
    padded = torch.zeros(tiles * block, tiles * block, dtype=torch.bool)
    padded[:length, :length] = dense
    per_tile = padded.view(tiles, block, tiles, block)
    any_allowed = per_tile.any(3).any(1)
    assert torch.equal(mask.to_dense()[0, 0].bool(), any_allowed)  # every tile with a pair, and no other
    partial, full = attention._block_classes(layout, block)
    assert not (partial & full).any() and torch.equal(partial | full, any_allowed)
    for i, j in full.nonzero().tolist():  # full tiles skip the mask_mod: all their real pairs must be allowed
        assert dense[i * block:(i + 1) * block, j * block:(j + 1) * block].all()
    assert full.any() and partial.any() and not any_allowed.all()  # the layout exercises every class


def shared_batch(seed=4, prompt_lengths=(140, 70), responses_per_prompt=(3, 2)):
    """Two groups, long enough that the packed row spans several 128-token tiles."""
    generator = torch.Generator().manual_seed(seed)
    tokens = lambda n: torch.randint(3, 400, (n,), generator=generator).tolist()
    prompts, responses = [], []
    for length, count in zip(prompt_lengths, responses_per_prompt):
        prompt = tokens(length)
        for _ in range(count):
            prompts.append(prompt)
            responses.append(tokens(int(torch.randint(20, 90, (1,), generator=generator))))
    masks = [[int(j % 5 != 2) for j in range(len(r))] for r in responses]
    n = len(responses)
    return RolloutBatch(prompts, responses, masks, [[-1.0] * len(r) for r in responses], torch.linspace(-1, 1, n),
                        torch.full((n,), 0.2), torch.full((n,), 0.2))


@needs_flex
@pytest.mark.slow  # FlexAttention compiles on first use
def test_flex_forward_matches_the_dense_mask_and_separate_sequences_on_cpu(tiny_model_dir):
    model = load_tiny(tiny_model_dir)
    batch = shared_batch()
    indices = list(range(len(batch)))
    flex = pack(batch, indices, "cpu", attention_mode="flex")
    dense = pack(batch, indices, "cpu", attention_mode="dense")
    assert flex.input_ids.shape[1] > 3 * attention.BLOCK_SIZE and flex.attention == "flex"
    flex_lp = token_logprobs(model, flex, 1.0)[0]
    dense_lp = token_logprobs(model, dense, 1.0)[0]
    separate = torch.cat([token_logprobs(model, pack(batch, [i], "cpu", share_prompts=False), 1.0)[0]
                          for i in indices])
    torch.testing.assert_close(flex_lp, dense_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(flex_lp, separate, atol=1e-5, rtol=0)
    assert model.config._attn_implementation == "sdpa"  # switched back after the forward


def test_attention_follows_the_device_unless_overridden(monkeypatch):
    monkeypatch.delenv("AWPO_SHARED_ATTENTION", raising=False)
    assert attention.attention_mode("cpu") == "grouped"
    for mode in ("dense", "flex", "grouped"):
        monkeypatch.setenv("AWPO_SHARED_ATTENTION", mode)
        assert attention.attention_mode("cpu") == mode
    monkeypatch.setenv("AWPO_SHARED_ATTENTION", "sparse")
    with pytest.raises(ValueError, match="AWPO_SHARED_ATTENTION"):
        attention.attention_mode("cpu")


@needs_flex
def test_flash_attention_models_still_share_prompts_through_flex(monkeypatch, tiny_model_dir):
    model = load_tiny(tiny_model_dir)
    model.config._attn_implementation = "flash_attention_2"  # as loaded where flash-attn is installed
    monkeypatch.setenv("AWPO_SHARED_ATTENTION", "dense")
    assert not shares_prompts(model, "cpu")  # a dense mask cannot go through flash-attention
    monkeypatch.setenv("AWPO_SHARED_ATTENTION", "flex")
    assert shares_prompts(model, "cpu")      # the packed forward switches to FlexAttention instead


@needs_flex
def test_shared_attention_rejects_other_masks_and_restores_the_model(tiny_model_dir):
    model = load_tiny(tiny_model_dir)
    micro = pack(shared_batch(), [0, 1], "cpu", attention_mode="dense")
    micro.attention = "flex"  # a dense mask handed to the flex path
    with pytest.raises(ValueError, match="BlockMask"):
        last_hidden_states(model, micro)
    assert model.config._attn_implementation == "sdpa"


# ----------------------------------------------------------------------------- CUDA

def parameter_grads(model, batch, indices, device, share, bf16_autocast=False):
    model.zero_grad()
    micro = pack(batch, indices, device, share_prompts=share)
    hidden = last_hidden_states(model, micro, bf16_autocast=bf16_autocast)
    logp = ak.linear_logprobs(hidden, lm_head_weight(model), micro.targets).logprobs
    (logp * torch.linspace(0.5, 1.5, logp.numel(), device=device)).sum().backward()
    return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, micro


@needs_cuda
@needs_flex
def test_cuda_flex_shared_prompts_match_separate_sequences_in_logprobs_and_every_gradient(tiny_model_dir):
    model = load_tiny(tiny_model_dir, "cuda")
    batch = shared_batch()
    shared_lp, shared_grads, micro = parameter_grads(model, batch, list(range(len(batch))), "cuda", share=True)
    assert micro.attention == "flex"
    weights = torch.linspace(0.5, 1.5, shared_lp.numel(), device="cuda")  # the upstream gradient of the shared run
    model.zero_grad()
    separate_lp, start = [], 0
    for i in range(len(batch)):  # each sequence on its own (prompt included), gradients summed
        micro = pack(batch, [i], "cuda", share_prompts=False)
        logp = ak.linear_logprobs(last_hidden_states(model, micro), lm_head_weight(model), micro.targets).logprobs
        (logp * weights[start:start + logp.numel()]).sum().backward()
        separate_lp.append(logp.detach())
        start += logp.numel()
    torch.testing.assert_close(shared_lp, torch.cat(separate_lp), atol=1e-4, rtol=0)
    for name, param in model.named_parameters():
        assert shared_grads[name].abs().sum() > 0, name
        torch.testing.assert_close(shared_grads[name], param.grad, atol=2e-4, rtol=1e-3, msg=name)


@needs_cuda
@needs_flex
def test_cuda_flex_uses_less_memory_than_the_dense_mask_at_a_long_packed_length(tiny_model_dir):
    model = load_tiny(tiny_model_dir, "cuda")
    batch = shared_batch(prompt_lengths=(3000, 2000), responses_per_prompt=(8, 8))  # ~6k tokens
    parameter_grads(model, batch, [0], "cuda", share=True)  # warm-up (compiles FlexAttention)
    peaks = {}
    for mode in ("dense", "flex"):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        micro = pack(batch, list(range(len(batch))), "cuda", attention_mode=mode)  # the mask counts too
        last_hidden_states(model, micro, bf16_autocast=True).sum().backward()
        torch.cuda.synchronize()
        peaks[mode] = torch.cuda.max_memory_allocated() - base
        del micro
    assert peaks["flex"] < peaks["dense"], peaks


@needs_cuda
@needs_flex
def test_cuda_policy_update_with_bf16_autocast_and_shared_prompts(tiny_model_dir):
    model = load_tiny(tiny_model_dir, "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    options = UpdateOptions(bf16_autocast=True, per_device_train_batch_size=5, is_correction=False)
    metrics = update_policy(model, optimizer, scheduler, shared_batch(), options)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["grad_norm"] > 0
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
