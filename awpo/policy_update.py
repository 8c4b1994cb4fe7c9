"""The policy update: packed sequences -> last hidden state -> fused policy loss -> optimizer step.

The LM head never produces a `[tokens, vocab]` logits tensor here: the base model runs up to its
last hidden state and `awpo_kernels.fused_linear_policy_loss` takes that and the LM-head weight.

Sequences are packed padding-free: the micro-batch is one row, `position_ids` restart at 0 for
each sequence, and `use_cache=False` (transformers then keeps the packed sequences from attending
to each other). A group's prompt is packed once for its G responses (`awpo.attention`: on CPU the
"grouped" attention, which computes only the prompt blocks and each response against its prompt and
itself; on CUDA a FlexAttention block mask, O(T) memory; a dense [T, T] mask on request). Only the
hidden states that predict a loss token (a token the policy sampled) go into the loss.

With `bf16_autocast` the fused loss runs under the same autocast: on CUDA its LM-head GEMMs then read
bf16 operands (fp32 logits and softmax); on CPU it computes in fp32 either way.

Normalisation: the loss of one optimizer step equals the loss of its whole mini-batch computed at
once, however it is split into micro-batches: each micro-batch's loss call gets the whole mini-batch's
count as its denominator (`batch_counts`: `num_seqs_in_batch` for grpo / dr_grpo, `num_items_in_batch`,
the loss tokens, for dapo and bnpo). Sequences whose loss is identically zero (advantage 0 with no KL
or entropy term, or no loss token) are skipped in the forward passes; they still count in the
denominators, so skipping them changes no number.

The update's phases run inside `torch.profiler.record_function` ranges (`PHASES`, and `LM_HEAD_RANGE` around
the LM-head ops), which cost nothing measurable outside a profiler: `benchmarks/train_step.py` reads them.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch

import awpo_kernels as ak

from . import attention
from .models import backbone_hidden_states

# profiler ranges of the update's phases (benchmarks/train_step.py): packing and the no-grad passes (old /
# reference log-probs), the forward to the loss, its backward, and the optimizer step (zeroing, clipping)
PHASES = ("awpo::prepare", "awpo::forward", "awpo::backward", "awpo::optimizer")
LM_HEAD_RANGE = "awpo::lm_head"  # the fused LM-head ops inside those phases (fp32 on CPU)


@dataclass
class RolloutBatch:
    """One step's rollouts, group-contiguous, as the update needs them."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    loss_masks: list[list[int]]            # per response token: 1 = sampled by the policy, in the loss
    sampling_logprobs: list[list[float]]   # per response token: the rollout engine's log-prob
    advantages: torch.Tensor               # [B]
    epsilon_low: torch.Tensor              # [B]
    epsilon_high: torch.Tensor             # [B]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def num_loss_tokens(self, index: int) -> int:
        return sum(self.loss_masks[index])


@dataclass
class UpdateOptions:
    """The policy update's options: the loss's (`awpo_kernels.LossOptions`; its clip epsilons are replaced
    per sequence by the rollout batch's), then batching, optimisation and the IS correction."""

    loss: ak.LossOptions = field(default_factory=ak.LossOptions)
    per_device_train_batch_size: int = 8
    optimizer_steps_per_iteration: int = 1
    num_iterations: int = 1
    max_grad_norm: float = 1.0
    is_correction: bool = True
    is_mode: str = "token_truncate"
    is_cap: float = 2.0
    bf16_autocast: bool = False


@dataclass
class MicroBatch:
    """Packed sequences: one row of tokens, and the loss tokens' places in it."""

    seq_indices: list[int]          # indices into the RolloutBatch
    input_ids: torch.Tensor         # [1, T]
    position_ids: torch.Tensor      # [1, T]
    hidden_index: torch.Tensor      # [N] row positions whose hidden state predicts a loss token
    targets: torch.Tensor           # [N] the loss tokens
    seq_ids: torch.Tensor           # [N] in [0, len(seq_indices))
    sampling_logprobs: torch.Tensor  # [N]
    # shared-prompt packing only: an awpo.attention.GroupedPlan ("grouped"), a [1, 1, T, T] bool ("dense") or a
    # FlexAttention BlockMask ("flex")
    attention_mask: object | None = None
    attention: str | None = None
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    importance_weights: torch.Tensor | None = None


def pack(batch: RolloutBatch, seq_indices: list[int], device, *, share_prompts: bool = True,
         attention_mode: str | None = None) -> MicroBatch:
    """Pack sequences into one row, padding-free (`position_ids` restart for every sequence).

    `share_prompts`: consecutive sequences with the same prompt (a group's G completions) store that
    prompt once and every response attends to it through a mask: the forward pass then costs
    prompt + G responses tokens instead of G x (prompt + response), about 3x fewer with the
    built-in tasks. `attention_mode` ('grouped', 'dense' or 'flex', default
    `awpo.attention.attention_mode(device)`) says how the model attends to the allowed pairs. Without sharing
    each sequence is packed whole, no mask.
    """
    ids, positions, segments, prompt_of = [], [], [], []
    hidden_index, targets, seq_ids, sampling = [], [], [], []
    last_prompt = None
    for local, index in enumerate(seq_indices):
        prompt, response = batch.prompt_ids[index], batch.response_ids[index]
        if not (share_prompts and last_prompt is not None and prompt == batch.prompt_ids[last_prompt[0]]):
            start = len(ids)
            ids += prompt
            positions += range(len(prompt))
            segments += [("p", local)] * len(prompt)
            last_prompt = (index, start + len(prompt) - 1, ("p", local))
        _, prompt_end, prompt_segment = last_prompt
        segments += [("r", local)] * len(response)
        prompt_of.append(prompt_segment)
        response_start = len(ids)
        ids += response
        positions += range(len(prompt), len(prompt) + len(response))
        for j, (token, keep) in enumerate(zip(response, batch.loss_masks[index])):
            if keep:  # the hidden state at t predicts token t+1; the prompt's last one predicts token 0
                hidden_index.append(prompt_end if j == 0 else response_start + j - 1)
                targets.append(token)
                seq_ids.append(local)
                sampling.append(batch.sampling_logprobs[index][j])

    def tensor(values, dtype):
        return torch.tensor(values, dtype=dtype, device=device)

    micro = MicroBatch(seq_indices, tensor([ids], torch.long), tensor([positions], torch.long),
                       tensor(hidden_index, torch.long), tensor(targets, torch.long), tensor(seq_ids, torch.long),
                       tensor(sampling, torch.float32))
    if share_prompts:
        layout = segment_layout(segments, prompt_of, device)
        micro.attention = attention_mode or attention.attention_mode(device)
        builders = {"grouped": attention.grouped_plan, "flex": attention.block_mask, "dense": attention.dense_mask}
        if micro.attention not in builders:
            raise ValueError(f"attention_mode must be one of {', '.join(builders)}; got {micro.attention!r}")
        micro.attention_mask = builders[micro.attention](layout)
    return micro


def segment_layout(segments: list[tuple], prompt_of: list[tuple], device) -> attention.SegmentLayout:
    """Segment ids per token, and the segment each token also sees (a response's prompt)."""
    names = {name: k for k, name in enumerate(dict.fromkeys(segments))}
    segment = torch.tensor([names[s] for s in segments], dtype=torch.long, device=device)
    response_prompt = {("r", local): names[p] for local, p in enumerate(prompt_of)}
    parent = torch.tensor([response_prompt.get(s, names[s]) for s in segments], dtype=torch.long, device=device)
    return attention.SegmentLayout(segment, parent)


def last_hidden_states(model, micro: MicroBatch, *, bf16_autocast: bool = False) -> torch.Tensor:
    """[N, H]: the base model's last hidden state at the loss positions (no logits are computed).

    `bf16_autocast`: the transformer's matmuls in bf16 (fp32 master weights); the hidden state comes
    back in the weights' dtype so that the LM-head / softmax math of the loss stays in fp32.
    """
    device_type = micro.input_ids.device.type
    shared, mask, extra = contextlib.nullcontext(), micro.attention_mask, {}
    if micro.attention == "flex":
        shared = attention.use_shared_attention(model)
    elif micro.attention == "grouped":  # the plan travels to the attention function as a keyword argument
        shared, mask, extra = attention.use_grouped_attention(model), None, {attention.GROUPED_PLAN_KWARG: mask}
    autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16_autocast)
    with shared:
        states, _ = backbone_hidden_states(model, autocast, input_ids=micro.input_ids,
                                           position_ids=micro.position_ids, attention_mask=mask, **extra)
    hidden = states[0].index_select(0, micro.hidden_index)
    return hidden.to(lm_head_weight(model).dtype)


def shares_prompts(model, device=None) -> bool:
    """Whether a group's prompt can be packed once: always through the registered attention functions
    ('grouped', 'flex'); through the dense mask only where the model's attention takes a custom mask (not
    flash-attention)."""
    device = device if device is not None else next(model.parameters()).device
    if attention.attention_mode(device) in ("grouped", "flex"):
        return True
    return getattr(model.config, "_attn_implementation", "sdpa") != "flash_attention_2"


def lm_head_weight(model) -> torch.Tensor:
    return model.get_output_embeddings().weight


# ----------------------------------------------------------------------------------------------
# plan: which sequences, in which micro-batches, under which denominators
# ----------------------------------------------------------------------------------------------

@dataclass
class OptimizerStepPlan:
    micro_batches: list[list[int]]   # sequence indices, zero-loss sequences left out
    num_tokens: int                  # loss tokens of every sequence of this mini-batch
    num_seqs: int                    # sequences of this mini-batch


def plan_steps(batch: RolloutBatch, options: UpdateOptions) -> list[OptimizerStepPlan]:
    size = len(batch) // options.optimizer_steps_per_iteration
    plans = []
    for start in range(0, len(batch), size):
        members = range(start, start + size)
        trainable = [i for i in members if _contributes(batch, i, options)]
        micro = [trainable[k:k + options.per_device_train_batch_size]
                 for k in range(0, len(trainable), options.per_device_train_batch_size)]
        plans.append(OptimizerStepPlan(micro, sum(batch.num_loss_tokens(i) for i in members), size))
    return plans


def _contributes(batch: RolloutBatch, index: int, options: UpdateOptions) -> bool:
    if batch.num_loss_tokens(index) == 0:
        return False
    return bool(batch.advantages[index] != 0) or options.loss.beta != 0.0 or options.loss.entropy_coef != 0.0


# ----------------------------------------------------------------------------------------------
# no-grad passes: old / reference log-probs, importance weights
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def token_logprobs(model, micro: MicroBatch, temperature: float, *, entropy: bool = False,
                   bf16_autocast: bool = False):
    hidden = last_hidden_states(model, micro, bf16_autocast=bf16_autocast)
    with _loss_autocast(hidden, bf16_autocast), torch.profiler.record_function(LM_HEAD_RANGE):
        out = ak.linear_logprobs(hidden, lm_head_weight(model), micro.targets, temperature=temperature,
                                 return_entropy=entropy)
    return out.logprobs, out.entropy


def _loss_autocast(hidden: torch.Tensor, bf16_autocast: bool):
    """The LM-head ops under the policy's autocast (bf16 GEMMs on CUDA; ignored on CPU, where they
    compute in fp32)."""
    return torch.autocast(device_type=hidden.device.type, dtype=torch.bfloat16, enabled=bf16_autocast)


def importance_weights(old: torch.Tensor, sampling: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int,
                       mode: str, cap: float) -> torch.Tensor:
    """Truncated importance sampling (TIS) for the trainer / rollout-engine mismatch, as TRL's
    `vllm_importance_sampling_correction`: ratio = pi_train / pi_rollout per token (or the product
    per sequence), truncated at `cap` or, in the "mask" modes, zeroed above it. No gradient."""
    log_ratio = old - sampling
    if mode.startswith("sequence"):
        per_seq = torch.zeros(num_seqs, dtype=log_ratio.dtype, device=log_ratio.device)
        log_ratio = per_seq.index_add(0, seq_ids, log_ratio)[seq_ids]
    ratio = torch.exp(log_ratio)
    if mode.endswith("truncate"):
        return ratio.clamp(max=cap)
    return torch.where(ratio <= cap, ratio, torch.zeros_like(ratio))


def needs_old_pass(options: UpdateOptions) -> bool:
    """Whether the old log-probs need their own no-grad forward before the updates: only when the policy moves
    between them and a micro-batch's loss (several iterations or optimizer steps). With one of each, the old
    log-probs are the live ones: the importance weights are formed from the training forward's own hidden
    states (`live_importance_weights`), which saves a forward of the transformer."""
    return options.num_iterations > 1 or options.optimizer_steps_per_iteration > 1


def prepare_micro_batches(model, ref_model, batch: RolloutBatch, plans, options: UpdateOptions, device):
    """Pack every micro-batch and attach what stays fixed over the iterations: old log-probs (the
    policy before this step's updates), reference log-probs, importance weights."""
    need_old = needs_old_pass(options)
    entropies, packed = [], []
    for plan in plans:
        step_micro = []
        for indices in plan.micro_batches:
            micro = pack(batch, indices, device, share_prompts=shares_prompts(model, device))
            if need_old:
                micro.old_logprobs, entropy = token_logprobs(model, micro, options.loss.temperature, entropy=True,
                                                             bf16_autocast=options.bf16_autocast)
                entropies.append(entropy)
            if ref_model is not None:
                micro.ref_logprobs, _ = token_logprobs(ref_model, micro, options.loss.temperature,
                                                       bf16_autocast=options.bf16_autocast)
            if options.is_correction and need_old:
                micro.importance_weights = importance_weights(
                    micro.old_logprobs, micro.sampling_logprobs, micro.seq_ids, len(indices),
                    options.is_mode, options.is_cap)
            step_micro.append(micro)
        packed.append(step_micro)
    return packed, entropies


@torch.no_grad()
def live_importance_weights(model, micro: MicroBatch, hidden: torch.Tensor, options: UpdateOptions, tally: _Tally):
    """The importance weights of a micro-batch from the training forward's hidden states (no gradient; one
    LM-head pass), for an update whose old log-probs are the live ones (`needs_old_pass` false)."""
    with _loss_autocast(hidden, options.bf16_autocast):
        out = ak.linear_logprobs(hidden.detach(), lm_head_weight(model), micro.targets,
                                 temperature=options.loss.temperature, return_entropy=True)
    weights = importance_weights(out.logprobs, micro.sampling_logprobs, micro.seq_ids, len(micro.seq_indices),
                                 options.is_mode, options.is_cap)
    tally.add_tokens("entropy", out.entropy)
    _tally_importance(tally, weights, out.logprobs, micro.sampling_logprobs)
    return weights


def _tally_importance(tally, weights: torch.Tensor, old: torch.Tensor, sampling: torch.Tensor) -> None:
    tally.add_tokens("is_weight", weights)
    tally.add_tokens("is_logratio_abs", (old - sampling).abs())


# ----------------------------------------------------------------------------------------------
# the update
# ----------------------------------------------------------------------------------------------

def update_policy(model, optimizer, scheduler, batch: RolloutBatch, options: UpdateOptions, *,
                  ref_model=None) -> dict[str, float]:
    """All optimizer steps of one training step (num_iterations x optimizer_steps_per_iteration)."""
    device = next(model.parameters()).device
    started = time.perf_counter()
    model.train()
    plans = plan_steps(batch, options)
    with torch.profiler.record_function(PHASES[0]):
        packed, entropies = prepare_micro_batches(model, ref_model, batch, plans, options, device)
    tally = _Tally()
    if entropies:
        tally.add_tokens("entropy", torch.cat(entropies))
    for micro_list in packed:
        for micro in micro_list:
            if micro.importance_weights is not None:
                _tally_importance(tally, micro.importance_weights, micro.old_logprobs, micro.sampling_logprobs)

    for _ in range(options.num_iterations):
        for plan, micro_list in zip(plans, packed):
            with torch.profiler.record_function(PHASES[3]):
                optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in micro_list:
                step_loss += _backward_micro_batch(model, batch, micro, plan, options, tally)
            with torch.profiler.record_function(PHASES[3]):
                grad_norm = _clip_gradients(model, options.max_grad_norm) if micro_list else 0.0
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                raise FloatingPointError(
                    f"non-finite policy loss ({step_loss}) or gradient norm ({grad_norm}): the update was not "
                    "applied; the latest checkpoint is intact. Try a lower learning_rate, or float32 without "
                    "bf16_autocast")
            tally.add("loss", step_loss)
            if micro_list:
                tally.add("grad_norm", grad_norm)
            with torch.profiler.record_function(PHASES[3]):
                optimizer.step()      # without gradients (nothing to learn from) it changes nothing
                scheduler.step()
    metrics = tally.means()
    metrics.update({
        "update/trained_sequences": sum(len(m) for p in plans for m in p.micro_batches),
        "update/trained_tokens": sum(int(m.targets.numel()) for ml in packed for m in ml),
        "update/optimizer_steps": options.num_iterations * len(plans),
        "lr": scheduler.get_last_lr()[0],
        "time/update_s": time.perf_counter() - started,
    })
    return metrics


def _backward_micro_batch(model, batch: RolloutBatch, micro: MicroBatch, plan: OptimizerStepPlan,
                          options: UpdateOptions, tally: _Tally) -> float:
    index = torch.tensor(micro.seq_indices, dtype=torch.long)
    device = micro.targets.device
    advantages = batch.advantages[index].to(device, torch.float32)
    with torch.profiler.record_function(PHASES[1]):
        hidden = last_hidden_states(model, micro, bf16_autocast=options.bf16_autocast)
        weights = micro.importance_weights
        if options.is_correction and weights is None:
            with torch.profiler.record_function(LM_HEAD_RANGE):
                weights = live_importance_weights(model, micro, hidden, options, tally)
        with _loss_autocast(hidden, options.bf16_autocast), torch.profiler.record_function(LM_HEAD_RANGE):
            result = _fused_loss(model, batch, micro, index, hidden, advantages, options, plan, weights)
        loss = result.loss
    with torch.profiler.record_function(PHASES[2]):
        loss.backward()
    tokens = int(micro.targets.numel())
    for name, value in result.metrics.items():
        tally.add_weighted(name, float(value), tokens)
    return float(loss.detach())


def batch_counts(loss_type: str, plan: OptimizerStepPlan) -> tuple[str, dict]:
    """(the loss type for the op, its batch count) so that each micro-batch's loss is its share of the whole
    mini-batch's: grpo / dr_grpo divide by the mini-batch's sequences (`num_seqs_in_batch`), dapo by its loss
    tokens (`num_items_in_batch`), and bnpo, a token mean over the batch, is dapo with that count."""
    if loss_type in ("dapo", "bnpo"):
        return "dapo", {"num_items_in_batch": float(max(plan.num_tokens, 1))}
    return loss_type, {"num_seqs_in_batch": plan.num_seqs}


def _fused_loss(model, batch: RolloutBatch, micro: MicroBatch, index: torch.Tensor, hidden: torch.Tensor,
                advantages: torch.Tensor, options: UpdateOptions, plan: OptimizerStepPlan,
                importance: torch.Tensor | None) -> ak.PolicyLossOutput:
    device = micro.targets.device
    loss_type, counts = batch_counts(options.loss.loss_type, plan)
    return ak.fused_linear_policy_loss(
        hidden, lm_head_weight(model), micro.targets, advantages, seq_ids=micro.seq_ids,
        old_logprobs=micro.old_logprobs, ref_logprobs=micro.ref_logprobs,
        importance_weights=importance, options=options.loss,
        epsilon_low=batch.epsilon_low[index].to(device, torch.float32),
        epsilon_high=batch.epsilon_high[index].to(device, torch.float32), loss_type=loss_type, **counts)


def _clip_gradients(model, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))


class _Tally:
    """Running means for the metrics: plain, token-weighted, and over token tensors."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.extremes: dict[str, tuple[float, float]] = {}

    def add(self, name: str, value: float) -> None:
        self.add_weighted(name, value, 1.0)

    def add_weighted(self, name: str, value: float, weight: float) -> None:
        if math.isnan(value):
            return
        self.sums[name] = self.sums.get(name, 0.0) + value * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def add_tokens(self, name: str, values: torch.Tensor) -> None:
        if values.numel() == 0:
            return
        self.add_weighted(name, float(values.float().mean()), values.numel())
        low, high = float(values.min()), float(values.max())
        old_low, old_high = self.extremes.get(name, (low, high))
        self.extremes[name] = (min(low, old_low), max(high, old_high))

    def means(self) -> dict[str, float]:
        out = {name: self.sums[name] / self.weights[name] for name in self.sums if self.weights[name] > 0}
        for name, (low, high) in self.extremes.items():
            out[f"{name}_min"], out[f"{name}_max"] = low, high
        return out
