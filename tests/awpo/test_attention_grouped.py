"""The "grouped" shared-prompt attention (`awpo.attention.grouped_attention`, the CPU default): values and
gradients against the dense [T, T] mask and against every sequence attended on its own, on random data of odd
sizes (several groups, a group of one response, responses of different lengths, GQA), in fp32 and bf16, through
both of its block paths (matmuls, and SDPA for blocks over the score budget); then through a tiny model's
forward and backward (hidden states and every parameter's gradient) against the dense path, and one policy
update.
"""
import pytest
import torch
import torch.nn.functional as F
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
    update_policy,
)

HEADS, KV_HEADS, DIM = 6, 2, 24


def grouped_layout(seed, groups=3):
    """pack()'s layout: per group a prompt, then 2..4 responses of random lengths (the first group has one)."""
    return random_layout(seed, groups, max_prompt=37, max_response=23, responses=(2, 4), first_group_responses=1)


def random_qkv(length, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    make = lambda heads, scale: (torch.randn(1, heads, length, DIM, generator=generator) * scale).to(dtype)
    return make(HEADS, 1.5), make(KV_HEADS, 1.5), make(KV_HEADS, 1.0)  # scale 1.5: peaked, not uniform, softmaxes


def dense_reference(q, k, v, layout):
    """Masked softmax attention over the dense mask in float64 -> [1, T, Hq, D]."""
    q, k, v = (x.double() for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~attention.dense_mask(layout), float("-inf"))
    return (torch.softmax(scores, -1) @ v).transpose(1, 2)


def separate_reference(q, k, v, layout):
    """Every prompt causally on its own, every response causally on [its prompt ; itself], float64; the pieces
    gathered from the same q, k, v, so a prompt's keys get the gradients of all its responses."""
    q, k, v = (x.double() for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    segment, parent = layout.segment.tolist(), layout.parent.tolist()
    positions = {}
    for t, seg in enumerate(segment):
        positions.setdefault(seg, []).append(t)
    out = [None] * layout.length
    for seg, rows in positions.items():
        index = torch.tensor(positions[parent[rows[0]]] + rows if parent[rows[0]] != seg else rows)
        piece = F.scaled_dot_product_attention(q[:, :, index], k[:, :, index].repeat_interleave(group, 1),
                                               v[:, :, index].repeat_interleave(group, 1), is_causal=True)
        for j, t in enumerate(rows):
            out[t] = piece[0, :, index.numel() - len(rows) + j]
    return torch.stack(out)[None]  # [1, T, Hq, D]


def grouped(q, k, v, layout, autocast=False):
    plan = attention.grouped_plan(layout)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, weights = attention.grouped_attention(None, q, k, v, None, **{attention.GROUPED_PLAN_KWARG: plan})
    assert weights is None
    return out


def values_and_grads(fn, inputs, upstream):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, upstream.to(out.dtype))
    return [out.detach(), *grads]


@pytest.fixture(params=["matmul", "sdpa", "one block per call"])
def block_path(request, monkeypatch):
    """Both ways a block is computed: matmuls + softmax, or SDPA (a score budget of 0 sends every block there);
    and every prompt and response in a call of its own (a pair budget of 1)."""
    if request.param == "sdpa":
        monkeypatch.setattr(attention, "_MATH_SCORE_BYTES", 0)
    if request.param == "one block per call":
        monkeypatch.setattr(attention, "_MAX_PAIRS_PER_CALL", 1)
    return request.param


@pytest.mark.parametrize("seed", range(4))
def test_grouped_attention_matches_the_dense_mask_and_separate_sequences_in_fp32(seed, block_path):
    layout = grouped_layout(seed)
    inputs = random_qkv(layout.length, seed)
    upstream = torch.randn(1, layout.length, HEADS, DIM, generator=torch.Generator().manual_seed(seed + 100))
    ours = values_and_grads(lambda *x: grouped(*x, layout), inputs, upstream)
    dense = values_and_grads(lambda *x: dense_reference(*x, layout), inputs, upstream)
    separate = values_and_grads(lambda *x: separate_reference(*x, layout), inputs, upstream)
    for name, got, want, alone in zip(("out", "dq", "dk", "dv"), ours, dense, separate):
        assert got.abs().max() > 0.1, name  # nothing vanished
        torch.testing.assert_close(got.double(), want.double(), atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(got.double(), alone.double(), atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("how", ["bf16 inputs", "fp32 inputs under bf16 autocast"])
def test_grouped_attention_in_bf16_agrees_with_the_dense_mask(seed, how, block_path):
    layout = grouped_layout(seed + 10)
    inputs = [x.to(torch.bfloat16) for x in random_qkv(layout.length, seed)]
    autocast = how != "bf16 inputs"
    if autocast:
        inputs = [x.float() for x in inputs]  # bf16-representable values: the casts inside lose nothing
    upstream = torch.randn(1, layout.length, HEADS, DIM, generator=torch.Generator().manual_seed(seed + 100))
    ours = values_and_grads(lambda *x: grouped(*x, layout, autocast=autocast), inputs, upstream)
    exact = values_and_grads(lambda *x: dense_reference(*x, layout), inputs, upstream)
    sdpa = values_and_grads(lambda q, k, v: F.scaled_dot_product_attention(  # today's dense bf16 path
        q.bfloat16(), k.bfloat16().repeat_interleave(3, 1), v.bfloat16().repeat_interleave(3, 1),
        attn_mask=attention.dense_mask(layout)).transpose(1, 2), inputs, upstream)
    assert ours[0].dtype == torch.bfloat16
    for name, got, want, dense in zip(("out", "dq", "dk", "dv"), ours, exact, sdpa):
        want = want.double()
        scale = float(want.abs().max())
        assert scale > 0.1, name
        torch.testing.assert_close(got.double(), want, atol=1e-2 * scale, rtol=1e-2, msg=name)
        # no further from the exact values than the dense mask's own bf16 result, up to bf16 rounding
        ours_error = float((got.double() - want).abs().max())
        dense_error = float((dense.double() - want).abs().max())
        assert ours_error <= 2 * dense_error + 4e-3 * scale, (name, ours_error, dense_error)


def test_the_plan_covers_every_token_once_and_masks_the_padding():
    layout = grouped_layout(7, groups=4)
    plan = attention.grouped_plan(layout)
    assert torch.equal(plan.slot_rows[plan.source], torch.arange(layout.length))  # each token's slot reads it
    assert torch.equal(plan.source.sort().values, plan.slot_real.nonzero()[:, 0])  # one real slot per token
    dense = attention.dense_mask(layout)[0, 0]
    blocks = [plan.prompts, *plan.responses]
    assert sum(b.count * b.width for b in blocks) == plan.slot_rows.numel()
    assert plan.computed_pairs >= int(dense.sum())
    for block in blocks:  # a real query's keys, padding masked out, are exactly its row of the dense mask
        rows = plan.slot_rows[block.start:block.start + block.count * block.width].view(block.count, block.width)
        real = plan.slot_real[block.start:block.start + block.count * block.width].view(block.count, block.width)
        mask = block.mask.expand(block.count, -1, -1)
        for member in range(block.count):
            for j in real[member].nonzero()[:, 0].tolist():
                allowed = torch.zeros(layout.length, dtype=torch.bool)
                allowed[block.keys[member][mask[member, j]]] = True
                assert torch.equal(allowed, dense[rows[member, j]]), (member, j)
    for block in plan.responses:  # buckets: members of one prompt together, the width of the longest
        owners = block.owner.tolist()
        assert owners == sorted(owners) and [(g, a, b) for g, a, b in block.owner_runs] == [
            (g, owners.index(g), len(owners) - owners[::-1].index(g)) for g in dict.fromkeys(owners)]
        real = plan.slot_real[block.start:block.start + block.count * block.width].view(block.count, block.width)
        assert real[:, -1].any()  # some member fills the width


def test_responses_of_very_different_lengths_go_into_different_buckets(monkeypatch):
    monkeypatch.setattr(attention, "_PAIRS_PER_CALL", 200)  # a call's cost, in pairs, at this toy size
    segment = [0] * 30 + [1] * 40 + [2] * 3 + [3] * 41 + [4] * 2
    layout = attention.SegmentLayout(torch.tensor(segment), torch.zeros(len(segment), dtype=torch.long))
    plan = attention.grouped_plan(layout)
    assert sorted((b.count, b.width) for b in plan.responses) == [(2, 3), (2, 41)]
    assert plan.prompt_calls == [1]
    monkeypatch.setattr(attention, "_PAIRS_PER_CALL", 10 ** 6)  # calls dearer than any padding: one bucket
    assert [(b.count, b.width) for b in attention.grouped_plan(layout).responses] == [(4, 41)]


def test_a_row_of_prompts_only_is_plain_causal_attention():
    layout = attention.SegmentLayout(torch.tensor([0] * 5 + [1] * 9), torch.tensor([0] * 5 + [1] * 9))
    plan = attention.grouped_plan(layout)
    assert plan.responses == [] and (plan.prompts.count, plan.prompts.width) == (2, 9)
    q, k, v = random_qkv(layout.length, 3)
    torch.testing.assert_close(grouped(q, k, v, layout).double(), dense_reference(q, k, v, layout), atol=1e-5,
                               rtol=1e-5)  # (the reference is float64 throughout here: no leaves)


@pytest.mark.parametrize("segment, parent, message", [
    ([0, 0, 1, 1, 0], [0, 0, 0, 0, 0], "not contiguous"),
    ([1, 1, 0, 0], [0, 0, 0, 0], "starts before its prompt"),
    ([0, 0, 1, 2, 2], [0, 0, 0, 1, 1], "not a prompt segment"),
    ([0, 0, 1, 1], [0, 0, 0, 1], "different parents"),
])
def test_the_plan_rejects_layouts_that_are_not_prompts_and_their_responses(segment, parent, message):
    with pytest.raises(ValueError, match=message):
        attention.grouped_plan(attention.SegmentLayout(torch.tensor(segment), torch.tensor(parent)))


def test_grouped_attention_needs_its_plan():
    q, k, v = random_qkv(8, 0)
    with pytest.raises(ValueError, match="GroupedPlan"):
        attention.grouped_attention(None, q, k, v, None)
    plan = attention.grouped_plan(attention.SegmentLayout(torch.zeros(7, dtype=torch.long),
                                                          torch.zeros(7, dtype=torch.long)))
    with pytest.raises(ValueError, match="7 tokens"):
        attention.grouped_attention(None, q, k, v, None, **{attention.GROUPED_PLAN_KWARG: plan})


# ----------------------------------------------------------------------------- through a model

def load_tiny(model_dir):
    from transformers import AutoModelForCausalLM  # imported here: collecting this file stays cheap

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def odd_batch(seed=5):
    """Three groups: 3 responses of different lengths, 1 response, 4 responses; odd prompt lengths."""
    generator = torch.Generator().manual_seed(seed)
    tokens = lambda n: torch.randint(3, 400, (n,), generator=generator).tolist()
    prompts, responses = [], []
    for prompt_length, lengths in ((37, (11, 29, 5)), (23, (17,)), (51, (3, 40, 21, 9))):
        prompt = tokens(prompt_length)
        for length in lengths:
            prompts.append(prompt)
            responses.append(tokens(length))
    masks = [[int(j % 4 != 1) for j in range(len(r))] for r in responses]
    n = len(responses)
    return RolloutBatch(prompts, responses, masks, [[-1.0] * len(r) for r in responses], torch.linspace(-1, 1, n),
                        torch.full((n,), 0.2), torch.full((n,), 0.2))


def forward_backward(model, micro, bf16_autocast=False):
    """(hidden states at the loss positions, every parameter's gradient) of a weighted log-prob sum."""
    model.zero_grad(set_to_none=True)
    hidden = last_hidden_states(model, micro, bf16_autocast=bf16_autocast)
    logp = ak.linear_logprobs(hidden, lm_head_weight(model), micro.targets).logprobs
    (logp * torch.linspace(0.5, 1.5, logp.numel())).sum().backward()
    return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_the_cpu_default_is_grouped_and_a_model_with_it_matches_the_dense_mask_and_separate_sequences(
        tiny_model_dir, monkeypatch):
    monkeypatch.delenv("AWPO_SHARED_ATTENTION", raising=False)
    model = load_tiny(tiny_model_dir)
    batch = odd_batch()
    every = list(range(len(batch)))
    assert shares_prompts(model, "cpu")
    ours = pack(batch, every, "cpu")
    assert ours.attention == "grouped" and isinstance(ours.attention_mask, attention.GroupedPlan)
    hidden, grads = forward_backward(model, ours)
    assert model.config._attn_implementation == "sdpa"  # switched back after the forward
    dense_hidden, dense_grads = forward_backward(model, pack(batch, every, "cpu", attention_mode="dense"))
    torch.testing.assert_close(hidden, dense_hidden, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, dense_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    separate = torch.cat([last_hidden_states(model, pack(batch, [i], "cpu", share_prompts=False)) for i in every])
    torch.testing.assert_close(hidden, separate.detach(), atol=1e-5, rtol=1e-5)


def test_a_model_under_bf16_autocast_matches_the_dense_mask(tiny_model_dir):
    model = load_tiny(tiny_model_dir)
    batch = odd_batch(6)
    every = list(range(len(batch)))
    hidden, grads = forward_backward(model, pack(batch, every, "cpu", attention_mode="grouped"), bf16_autocast=True)
    exact_hidden, exact_grads = forward_backward(model, pack(batch, every, "cpu", attention_mode="dense"))  # fp32
    dense_hidden, dense_grads = forward_backward(model, pack(batch, every, "cpu", attention_mode="dense"),
                                                 bf16_autocast=True)
    scale = float(exact_hidden.abs().max())
    torch.testing.assert_close(hidden, dense_hidden, atol=2e-2 * scale, rtol=2e-2)
    ours_error = float((hidden - exact_hidden).abs().max())
    assert ours_error <= 1.5 * float((dense_hidden - exact_hidden).abs().max()) + 1e-3 * scale
    for name, grad in grads.items():
        reference, dense = exact_grads[name], dense_grads[name]
        # bf16 matmuls: each gradient as close to the fp32 one as the dense mask's bf16 gradient is, give or take
        ours_error = float(torch.linalg.vector_norm(grad - reference))
        dense_error = float(torch.linalg.vector_norm(dense - reference))
        assert ours_error <= 1.5 * dense_error + 1e-3 * float(torch.linalg.vector_norm(reference)), name
        assert float(torch.linalg.vector_norm(grad - dense)) <= 0.05 * float(torch.linalg.vector_norm(dense)), name


def test_one_policy_update_is_the_same_with_grouped_and_dense_attention(tiny_model_dir, monkeypatch):
    after = {}
    for mode in ("grouped", "dense"):
        monkeypatch.setenv("AWPO_SHARED_ATTENTION", mode)
        torch.manual_seed(0)
        model = load_tiny(tiny_model_dir)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # (Adam would blow up round-off in tiny gradients)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        options = UpdateOptions(per_device_train_batch_size=5, is_correction=True)
        metrics = update_policy(model, optimizer, scheduler, odd_batch(), options)
        assert metrics["grad_norm"] > 0
        after[mode] = (metrics, {n: p.detach().clone() for n, p in model.named_parameters()})
    for key in ("loss", "grad_norm", "entropy"):
        assert after["grouped"][0][key] == pytest.approx(after["dense"][0][key], rel=1e-4, abs=1e-6), key
    for name, param in after["grouped"][1].items():
        torch.testing.assert_close(param, after["dense"][1][name], atol=1e-6, rtol=1e-5, msg=name)
    before = load_tiny(tiny_model_dir).state_dict()
    assert any(not torch.equal(p, before[n]) for n, p in after["grouped"][1].items()), "the update changed nothing"
