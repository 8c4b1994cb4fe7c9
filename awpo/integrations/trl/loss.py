"""TRL's GRPO loss computed by `awpo_kernels.fused_linear_policy_loss` from the last hidden state.

`GRPOTrainer._compute_loss` runs the model with TRL's fused LM head (`add_fused_lm_head`) to per-token log-probs,
then builds the clipped surrogate in PyTorch. Here the backbone runs up to its last hidden state and one fused op
takes that and the LM-head weight to the loss and its gradients, with TRL's semantics (TRL 1.16):

- the same tokens: completion tokens where `completion_mask * tool_mask` is 1, each predicted by the hidden state
  before it; packed padding-free into the op (`seq_ids`), so padding costs no LM-head work;
- TRL's loss types `grpo`, `bnpo`, `dr_grpo`, `dapo` and their normalisation, passed to the op as batch counts:
  `dapo` divides by TRL's `num_items_in_batch / num_processes * gradient_accumulation_steps / steps_per_generation`
  (`num_items_in_batch`), `grpo` / `dr_grpo` by the micro-batch's rows times the gradient-accumulation steps
  (`num_seqs_in_batch`), `bnpo` by its loss tokens times those steps (the op's `dapo` with that count);
  `beta` with the reference log-probs (k3); TRL's vLLM importance-sampling ratio
  (`importance_sampling_ratio`, token or sequence level) as importance weights; `delta`; GSPO
  (`importance_sampling_level="sequence"`); the logits' temperature and the model's logit scale;
- per-sequence clip bounds when AWPO's `clip_shrink` > 0 (`epsilon_low` / `epsilon_high` in the inputs).

`compute_fused_loss` must run inside the wrapped model's forward (the trainer calls it through TRL's
`_ForwardRedirection`): DDP then prepares the gradient all-reduce, FSDP holds the root's parameters (the LM
head) unsharded, and ZeRO-3's hooks stay armed; the LM-head weight is gathered as TRL gathers it (a DTensor's
`full_tensor()` under FSDP2, `maybe_gather_lm_head_ctx` under ZeRO-3). No collective runs in here. The inputs
must not be the wrapper's forward arguments: FSDP2's `cast_forward_inputs` (and DeepSpeed's input casting) turn
every floating-point argument into the compute dtype, and bf16 advantages / old and reference log-probs /
importance ratios carry percent-level noise into the PPO ratio (the trainer passes them in a closure).

Precision of the LM head, as TRL's fused head (`trl.kernels.chunked_logprob`) chooses it: the GEMM operands are
in the autocast dtype when the backbone ran under autocast (bf16 with accelerate's `--bf16`), else in the hidden
states' dtype, or fp32 with `cast_lm_head_to_fp32`; the logits and the log-softmax stay fp32 (awpo_kernels never
rounds the logits). TRL's old / reference log-probs come from bf16 GEMMs under `--bf16`, so fp32 GEMMs here (fp32
master weights) would make the ratio differ from 1 on-policy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import awpo_kernels as ak
from awpo.models import backbone_hidden_states
from awpo_kernels._matmul import gemm_dtypes

# Per-micro-batch inputs that only a vision-language model produces: the fused path runs text models only.
MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "spatial_shapes", "image_sizes",
                   "token_type_ids", "mm_token_type_ids", "image_position_ids", "num_images")


@dataclass
class LossSettings:
    """What the loss needs from the trainer, read once per call (TRL may change it between steps)."""

    temperature: float
    epsilon_low: float
    epsilon_high: float
    delta: float | None
    beta: float
    loss_type: str
    importance_sampling_level: str
    max_completion_length: int | None
    importance_sampling: bool          # TRL's vLLM importance-sampling correction is on
    cast_lm_head_to_fp32: bool
    num_processes: int
    accumulation_steps: int            # current gradient-accumulation steps (1 in eval)
    steps_per_generation: int          # (1 in eval)


@dataclass
class FusedLoss:
    loss: torch.Tensor                 # scalar, already normalised as TRL normalises its loss
    logprobs: torch.Tensor             # [N] detached per-token log-probs of the loss tokens
    token_count: torch.Tensor          # loss tokens of this micro-batch (0-dim)
    metrics: dict                      # detached 0-dim tensors: token means on this micro-batch


def causal_lm(unwrapped):
    """The `*ForCausalLM` module (under a PEFT wrapper, its base model)."""
    get_base = getattr(unwrapped, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(unwrapped, "peft_config") else unwrapped


def lm_head_scale(model) -> float:
    """The factor the model multiplies its logits by (TRL's reading of the config), 1.0 for most models.

    Raises for what the fused op does not compute: logit soft-capping and a biased LM head.
    """
    config = model.config.get_text_config()
    if getattr(config, "final_logit_softcapping", None) is not None:
        raise NotImplementedError(f"{type(model).__name__} soft-caps its logits (final_logit_softcapping), which "
                                  "the fused loss does not implement; set fused_loss=False")
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("the fused loss takes an LM head without bias; set fused_loss=False")
    scale = getattr(config, "logit_scale", None)
    for name in ("output_multiplier", "lm_head_multiplier"):
        scale = getattr(config, name, None) if scale is None else scale
    if scale is None and getattr(config, "logits_scaling", None) is not None:
        scaling = config.logits_scaling
        scale = scaling if config.model_type == "hyperclovax" else 1.0 / scaling
    scale = 1.0 if scale is None else float(scale)
    if not scale > 0:
        raise NotImplementedError(f"logit scale {scale} <= 0 is not supported by the fused loss")
    return scale


def check_text_inputs(inputs: dict) -> None:
    present = [k for k in MULTIMODAL_KEYS if inputs.get(k) is not None]
    if present:
        raise NotImplementedError(f"the fused loss runs text-only models; these inputs need the model's own "
                                  f"forward: {', '.join(present)}. Set fused_loss=False")


def last_hidden_states(model, inputs: dict, autocast) -> tuple[torch.Tensor, torch.dtype | None]:
    """([B, C, H] hidden states that predict the C completion tokens (no logits), the autocast dtype they were
    computed under or None)."""
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    completion_length = inputs["completion_ids"].size(1)
    hidden, autocast_dtype = backbone_hidden_states(model, autocast(), input_ids=input_ids,
                                                    attention_mask=attention_mask)
    return hidden[:, -completion_length - 1:-1], autocast_dtype


def lm_head_compute_dtype(hidden_dtype: torch.dtype, autocast_dtype: torch.dtype | None,
                          cast_lm_head_to_fp32: bool) -> torch.dtype:
    """The dtype the LM-head GEMMs read, as TRL's fused head picks it: fp32 when asked, else the autocast dtype the
    backbone ran under, else the hidden states' own."""
    if cast_lm_head_to_fp32:
        return torch.float32
    return autocast_dtype if autocast_dtype is not None else hidden_dtype


def lm_head_operands(hidden: torch.Tensor, weight: torch.Tensor, compute_dtype: torch.dtype):
    """(hidden, weight) for `fused_linear_policy_loss` so that its GEMMs read `compute_dtype` operands.

    The op picks its GEMM dtypes from its inputs (`awpo_kernels._matmul.gemm_dtypes`): on CUDA a bf16 hidden with
    an fp32 master weight already runs bf16 GEMMs (the op casts the weight once, and its gradient stays fp32), so
    the weight is passed as it is; where the op would read another dtype (CPU upcasts to fp32; an fp32 GEMM asked
    for a bf16 weight) the weight is cast here, as autocast casts any other layer's weight.
    """
    hidden = hidden.to(compute_dtype)
    cast = weight_cast(hidden.device.type, compute_dtype, weight.dtype)
    return hidden, (weight if cast is None else weight.to(cast))


def weight_cast(device_type: str, compute_dtype: torch.dtype, weight_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype to cast the LM-head weight to before the op, or None when the op's GEMMs, given a
    `compute_dtype` hidden state and this weight, already read `compute_dtype`."""
    accumulate = torch.float64 if compute_dtype == torch.float64 else torch.float32
    reads, _ = gemm_dtypes(device_type, compute_dtype, weight_dtype, accumulate, None)
    return None if reads == compute_dtype else compute_dtype


def loss_mask(inputs: dict) -> torch.Tensor:
    mask = inputs["completion_mask"]
    if inputs.get("tool_mask") is not None:
        mask = mask * inputs["tool_mask"]
    return mask.bool()


def _per_token(value, mask: torch.Tensor):
    """[B, T] or [B, 1] (sequence-level importance ratios) -> [N] at the loss tokens; None stays None."""
    if value is None:
        return None
    return value.expand(mask.shape)[mask].float()


def _per_sequence(value, default: float, device) -> torch.Tensor | float:
    return default if value is None else value.to(device=device, dtype=torch.float32)


def normalisation(settings: LossSettings, inputs: dict, mask: torch.Tensor, training: bool) -> tuple[str, dict]:
    """(the op's loss type, its batch count) that normalise the loss of this micro-batch as TRL does.

    TRL divides the loss of each loss type but dapo by the gradient-accumulation steps (in training), so the count
    is this micro-batch's times those steps: its B rows for grpo / dr_grpo (`num_seqs_in_batch`, rows without a
    loss token included, as TRL's mean over rows), its loss tokens for bnpo (a token mean: dapo with that
    `num_items_in_batch`). dapo's `num_items_in_batch` spans the generation batch; TRL rescales it to one
    accumulation window.
    """
    steps = settings.accumulation_steps if training else 1
    if settings.loss_type == "dapo":
        items = inputs["num_items_in_batch"].clamp(min=1.0) / settings.num_processes
        if training:
            items = items * settings.accumulation_steps / settings.steps_per_generation
        return "dapo", {"num_items_in_batch": items}
    if settings.loss_type == "bnpo":
        return "dapo", {"num_items_in_batch": mask.sum().clamp(min=1).float() * steps}
    return settings.loss_type, {"num_seqs_in_batch": mask.shape[0] * steps}


def gathered_lm_head(weight):
    """The full LM-head weight and the context that keeps it gathered (FSDP2 DTensor / ZeRO-3), as TRL does."""
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    context = maybe_gather_lm_head_ctx(weight)
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return weight, context
    return (weight.full_tensor() if isinstance(weight, DTensor) else weight), context


def compute_fused_loss(unwrapped, inputs: dict, settings: LossSettings, *, autocast, training: bool) -> FusedLoss:
    """The policy loss of one micro-batch; call it inside the wrapped model's forward (see module doc)."""
    check_text_inputs(inputs)
    model = causal_lm(unwrapped)
    scale = lm_head_scale(model)
    mask = loss_mask(inputs)
    hidden, autocast_dtype = last_hidden_states(model, inputs, autocast)
    compute_dtype = lm_head_compute_dtype(hidden.dtype, autocast_dtype, settings.cast_lm_head_to_fp32)
    rows, _ = torch.nonzero(mask, as_tuple=True)
    targets = inputs["completion_ids"][mask]
    weight, gather_context = gathered_lm_head(model.get_output_embeddings().weight)
    loss_type, counts = normalisation(settings, inputs, mask, training)
    device = hidden.device
    # autocast off: every dtype of the op is explicit (on CUDA it would otherwise read the caller's autocast)
    with gather_context, torch.autocast(device.type, enabled=False):
        flat_hidden, lm_weight = lm_head_operands(hidden[mask], weight, compute_dtype)
        result = ak.fused_linear_policy_loss(
            flat_hidden, lm_weight, targets, inputs["advantages"].to(torch.float32), seq_ids=rows,
            old_logprobs=_per_token(inputs.get("old_per_token_logps"), mask),
            ref_logprobs=_per_token(inputs.get("ref_per_token_logps"), mask) if settings.beta != 0.0 else None,
            importance_weights=_per_token(inputs.get("importance_sampling_ratio"), mask)
            if settings.importance_sampling else None,
            temperature=settings.temperature / scale,
            epsilon_low=_per_sequence(inputs.get("epsilon_low"), settings.epsilon_low, device),
            epsilon_high=_per_sequence(inputs.get("epsilon_high"), settings.epsilon_high, device),
            delta=settings.delta, beta=settings.beta, kl_type="k3", loss_type=loss_type,
            importance_sampling_level=settings.importance_sampling_level,
            max_completion_length=settings.max_completion_length, **counts)
    return FusedLoss(result.loss, result.logprobs, mask.sum(), dict(result.metrics))

