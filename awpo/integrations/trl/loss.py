"""TRL's GRPO loss computed by `awpo_kernels.fused_linear_policy_loss` from the last hidden state.

`GRPOTrainer._compute_loss` runs the model with TRL's fused LM head (`add_fused_lm_head`) to per-token log-probs,
then builds the clipped surrogate in PyTorch. Here the backbone runs up to its last hidden state and one fused op
takes that and the LM-head weight to the loss and its gradients, with TRL's semantics (TRL 1.16):

- the same tokens: completion tokens where `completion_mask * tool_mask` is 1, each predicted by the hidden state
  before it; packed padding-free into the op (`seq_ids`), so padding costs no LM-head work;
- TRL's loss types `grpo`, `bnpo`, `dr_grpo`, `dapo` and their normalisation: `dapo` divides by TRL's
  `num_items_in_batch / num_processes * gradient_accumulation_steps / steps_per_generation`, the others by the
  gradient-accumulation steps; `beta` with the reference log-probs (k3); TRL's vLLM importance-sampling ratio
  (`importance_sampling_ratio`, token or sequence level) as importance weights; `delta`; GSPO
  (`importance_sampling_level="sequence"`); the logits' temperature and the model's logit scale;
- per-sequence clip bounds when AWPO's `clip_shrink` > 0 (`epsilon_low` / `epsilon_high` in the inputs).

`compute_fused_loss` must run inside the wrapped model's forward (the trainer calls it through TRL's
`_ForwardRedirection`): DDP then prepares the gradient all-reduce, FSDP holds the root's parameters (the LM
head) unsharded, and ZeRO-3's hooks stay armed; the LM-head weight is gathered as TRL gathers it (a DTensor's
`full_tensor()` under FSDP2, `maybe_gather_lm_head_ctx` under ZeRO-3). No collective runs in here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import awpo_kernels as ak

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


def last_hidden_states(model, inputs: dict, autocast) -> torch.Tensor:
    """[B, C, H]: the backbone's hidden states that predict the C completion tokens (no logits)."""
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    completion_length = inputs["completion_ids"].size(1)
    with autocast():
        out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state[:, -completion_length - 1:-1]


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


def normalisation(settings: LossSettings, inputs: dict, training: bool):
    """(num_items_in_batch for the op or None, divisor applied after it), as TRL normalises each loss type."""
    if settings.loss_type == "dapo":
        # TRL: num_items_in_batch spans the generation batch; rescale it to one accumulation window
        items = inputs["num_items_in_batch"].clamp(min=1.0) / settings.num_processes
        if training:
            items = items * settings.accumulation_steps / settings.steps_per_generation
        return items, 1.0
    return None, float(settings.accumulation_steps) if training else 1.0


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
    hidden = last_hidden_states(model, inputs, autocast)
    rows, _ = torch.nonzero(mask, as_tuple=True)
    targets = inputs["completion_ids"][mask]
    weight, gather_context = gathered_lm_head(model.get_output_embeddings().weight)
    num_items, divisor = normalisation(settings, inputs, training)
    device = hidden.device
    with gather_context, torch.autocast(device.type, enabled=False):
        flat_hidden = hidden[mask].to(torch.float32 if settings.cast_lm_head_to_fp32 else weight.dtype)
        result = ak.fused_linear_policy_loss(
            flat_hidden, weight.float() if settings.cast_lm_head_to_fp32 else weight, targets,
            inputs["advantages"].to(torch.float32), seq_ids=rows,
            old_logprobs=_per_token(inputs.get("old_per_token_logps"), mask),
            ref_logprobs=_per_token(inputs.get("ref_per_token_logps"), mask) if settings.beta != 0.0 else None,
            importance_weights=_per_token(inputs.get("importance_sampling_ratio"), mask)
            if settings.importance_sampling else None,
            temperature=settings.temperature / scale,
            epsilon_low=_per_sequence(inputs.get("epsilon_low"), settings.epsilon_low, device),
            epsilon_high=_per_sequence(inputs.get("epsilon_high"), settings.epsilon_high, device),
            delta=settings.delta, beta=settings.beta, kl_type="k3", loss_type=settings.loss_type,
            importance_sampling_level=settings.importance_sampling_level,
            max_completion_length=settings.max_completion_length, num_items_in_batch=num_items)
    return FusedLoss(result.loss / divisor, result.logprobs, mask.sum(), dict(result.metrics))

