"""AWPO's policy loss as verl's ``actor_rollout_ref.actor.policy_loss.loss_mode=awpo``.

``awpo_kernels.policy_loss`` (SPEC section 3) on the log-probs verl's actor computed, with verl's
options mapped:

- ``clip_ratio_low`` / ``clip_ratio_high`` (each falling back to ``clip_ratio``) are the PPO clip
  epsilons; ``clip_ratio_c`` is SPEC's ``delta``, the cap on the unclipped ratio, which for negative
  advantages is verl's dual clip and for positive ones is inert while ``clip_ratio_c >= 1 +
  clip_ratio_high`` (required);
- ``rollout_is_weights`` (verl's rollout-correction importance weights) are the per-token
  ``importance_weights``;
- ``loss_agg_mode`` and ``global_batch_info`` (dp size, global token / sequence counts) choose the loss
  type and its batch count (the global count divided by dp size: verl multiplies each rank's loss by dp size,
  its all-reduce averages), so the loss equals verl's ``agg_loss`` of the same per-token terms:

  | verl ``loss_agg_mode`` | awpo ``loss_type`` | batch count |
  |---|---|---|
  | ``token-mean`` | ``dapo`` | ``num_items_in_batch`` = ``batch_num_tokens`` / dp size (*) |
  | ``token-sum`` | ``dapo`` | ``num_items_in_batch`` = 1 / dp size |
  | ``seq-mean-token-mean`` | ``grpo`` | ``num_seqs_in_batch`` = ``global_batch_size`` / dp size (*) |
  | ``seq-mean-token-sum`` | ``dr_grpo``, ``max_completion_length=1`` | the same |
  | ``seq-mean-token-sum-norm`` | ``dr_grpo``, ``max_completion_length`` = ``loss_scale_factor`` or T | the same |

  (*) without the global count (one rank), as verl: this call's loss tokens; this call's sequences that have a
  response token.

AWPO's advantages are one per sequence: verl broadcasts each over the sequence's response tokens, and
the loss takes it back (an estimator whose advantages vary along a response, such as GAE, is refused).
KL and entropy terms stay verl's (``use_kl_loss``, ``entropy_coeff``): they are added by verl's actor.

verl's own losses clamp the log-ratio ``log_prob - old_log_prob`` to [-20, 20] before ``exp`` (gradient zero
outside). ``awpo_kernels.policy_loss`` does not: a token whose log-ratio exceeds ~88 overflows fp32 to an infinite
ratio, and although the clip zeroes its loss term, its gradient is NaN (inf x 0), which poisons the whole update.
The loss keeps verl's clamp (``verl_log_ratio_clamp``): tokens outside the range enter with the clamped ratio and no
gradient, exactly as in verl; tokens inside are passed bit for bit.
"""
from __future__ import annotations

import torch

from awpo_kernels import policy_loss

LOSS_NAME = "awpo"
LOG_RATIO_CLAMP = 20.0  # verl 0.9.1's compute_policy_loss_*: clamp(log_prob - old_log_prob, -20, 20) before exp
AGG_MODES = {"token-mean": "dapo", "token-sum": "dapo", "seq-mean-token-mean": "grpo",
             "seq-mean-token-sum": "dr_grpo", "seq-mean-token-sum-norm": "dr_grpo"}


def awpo_policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                     response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config=None,
                     rollout_is_weights: torch.Tensor | None = None):
    """verl's PolicyLossFn: ``(loss, metrics)`` for ``[B, T]`` log-probs, advantages and mask."""
    if config is None:
        raise ValueError("the awpo policy loss needs the actor config (clip ratios, global_batch_info)")
    if loss_agg_mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode={loss_agg_mode!r} has no awpo equivalent; one of {list(AGG_MODES)}")
    epsilon_low, epsilon_high, delta = clip_bounds(config)
    mask = response_mask.bool()
    loss_type, options = aggregation(loss_agg_mode, mask, _batch_info(config))
    log_prob, old_log_prob = verl_log_ratio_clamp(log_prob, old_log_prob)
    out = policy_loss(log_prob, sequence_advantages(advantages, mask), mask, old_logprobs=old_log_prob,
                      importance_weights=rollout_is_weights, epsilon_low=epsilon_low, epsilon_high=epsilon_high,
                      delta=delta, loss_type=loss_type, **options)
    return out.loss, _metrics(out.metrics, log_prob, old_log_prob, advantages, mask, delta)


def verl_log_ratio_clamp(log_prob: torch.Tensor, old_log_prob: torch.Tensor):
    """(log_prob, old_log_prob) whose difference is verl's clamped log-ratio, with verl's gradient.

    Where ``|log_prob - old_log_prob| > 20`` the log-prob enters detached (torch.clamp passes no gradient there) and
    the old log-prob is moved so the difference is the clamped value (up to one rounding); elsewhere both are the
    inputs themselves, untouched.
    """
    with torch.no_grad():
        log_ratio = log_prob.detach() - old_log_prob
        outside = log_ratio.abs() > LOG_RATIO_CLAMP
    if not bool(outside.any()):
        return log_prob, old_log_prob
    detached = log_prob.detach()
    clamped_old = detached - log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.where(outside, detached, log_prob), torch.where(outside, clamped_old, old_log_prob)


def clip_bounds(config) -> tuple[float, float, float]:
    """(epsilon_low, epsilon_high, delta) from the actor config's clip ratios."""
    clip_ratio = _option(config, "clip_ratio", 0.2)
    low = _option(config, "clip_ratio_low", clip_ratio)
    high = _option(config, "clip_ratio_high", clip_ratio)
    delta = _option(config, "clip_ratio_c", 3.0)
    if not delta >= 1.0 + high:
        raise ValueError(f"clip_ratio_c={delta} must be >= 1 + clip_ratio_high = {1.0 + high} for the awpo loss: it "
                         "is SPEC's delta, which caps the ratio for both signs of the advantage")
    return float(low), float(high), float(delta)


def _option(config, name: str, default):
    value = config.get(name, None) if hasattr(config, "get") else getattr(config, name, None)
    return default if value is None else value


def _batch_info(config) -> dict:
    info = dict(_option(config, "global_batch_info", {}) or {})
    if info.get("loss_scale_factor") is None:
        info["loss_scale_factor"] = _option(config, "loss_scale_factor", None)
    return info


def aggregation(loss_agg_mode: str, mask: torch.Tensor, info: dict) -> tuple[str, dict]:
    """(awpo loss_type, its options and batch count) that reproduce verl's ``agg_loss`` for this mode.

    verl divides each rank's sum by a global count and multiplies by dp size (its data-parallel all-reduce averages
    the ranks' gradients), so the count the op gets is the global one divided by dp size.
    """
    dp_size = info.get("dp_size") or 1
    if loss_agg_mode == "token-mean":
        tokens = info.get("batch_num_tokens")
        _needs_global(tokens, dp_size, "batch_num_tokens", loss_agg_mode)
        return "dapo", {"num_items_in_batch": None if tokens is None else tokens / dp_size}
    if loss_agg_mode == "token-sum":
        return "dapo", {"num_items_in_batch": 1 / dp_size}
    sequences = info.get("global_batch_size")
    _needs_global(sequences, dp_size, "global_batch_size", loss_agg_mode)
    if sequences is not None:
        counts = {"num_seqs_in_batch": sequences / dp_size}
    else:  # verl averages over the sequences that have a response token
        counts = {"num_seqs_in_batch": max(int(mask.any(dim=-1).sum()), 1)}
    if loss_agg_mode == "seq-mean-token-mean":
        return "grpo", counts
    horizon = info.get("loss_scale_factor") if loss_agg_mode == "seq-mean-token-sum-norm" else 1
    return "dr_grpo", {"max_completion_length": horizon or mask.shape[-1], **counts}


def _needs_global(value, dp_size: int, name: str, loss_agg_mode: str) -> None:
    if value is None and dp_size > 1:
        raise ValueError(f"loss_agg_mode={loss_agg_mode} with dp_size={dp_size} needs global_batch_info['{name}']")


def sequence_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One advantage per row from verl's ``[B, T]`` broadcast (ValueError when a row's values differ)."""
    if advantages.shape != mask.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} must have response_mask's shape {tuple(mask.shape)}")
    weights = mask.to(advantages.dtype)
    per_row = (advantages * weights).sum(dim=-1) / weights.sum(dim=-1).clamp(min=1)
    if advantages.numel():
        spread = float(((advantages - per_row.unsqueeze(-1)).abs() * weights).amax())
        if spread > 1e-4 * (1.0 + float(per_row.abs().amax())):
            raise ValueError(f"the awpo loss takes one advantage per sequence, but advantages vary along a response "
                             f"(by up to {spread:.3g}): use a group estimator (awpo, grpo, ...), not a per-token one")
    return per_row.detach()


def _metrics(kernel_metrics: dict, log_prob, old_log_prob, advantages, mask, delta: float) -> dict[str, float]:
    """verl's usual policy-loss metrics (clip fractions, ppo_kl) plus AWPO's two clip sides."""
    with torch.no_grad():
        count = mask.sum().clamp(min=1)
        log_ratio = (log_prob - old_log_prob).float()
        dual_clipped = (log_ratio.exp() > delta) & (advantages < 0) & mask
        low = float(kernel_metrics["clip_ratio/low_mean"])
        high = float(kernel_metrics["clip_ratio/high_mean"])
        return {
            "actor/pg_clipfrac": low + high,
            "actor/ppo_kl": float((-log_ratio * mask).sum() / count),
            "actor/pg_clipfrac_lower": float(dual_clipped.sum() / count),
            "actor/awpo/clipfrac_low": low,
            "actor/awpo/clipfrac_high": high,
        }
