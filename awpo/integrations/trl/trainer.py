"""`AWPOTrainer`: TRL's `GRPOTrainer` with AWPO's advantages and the fused policy loss.

Everything distributed stays TRL's and accelerate's (DDP, FSDP, DeepSpeed, vLLM rollouts). Two points change:

- advantages: TRL gathers every process's rewards per reward function (`_calculate_rewards`, a
  `[global batch, n_funcs]` tensor, grouped by prompt). After TRL's own scoring, the gathered outcome (first
  function, plus the reward columns TRL appends for `environment_factory` environments with `get_reward`) and
  reasoning score (second) go through `awpo.batch_advantages.compute_advantages`
  (`awpo_kernels.group_advantages`) and this process's slice replaces TRL's advantages, with per-sequence clip
  bounds when `clip_shrink > 0`. AWPO's diagnostics are logged as `awpo/...` metrics, TRL's `reward` /
  `reward_std` / `frac_reward_zero_std` describe that outcome, and the advantages shown in TRL's completion logs
  are AWPO's.
- loss (`fused_loss=True`): `awpo_kernels.fused_linear_policy_loss` on the last hidden state and the LM-head
  weight (`loss.py`), run inside the wrapped model's forward through TRL's `_ForwardRedirection` so DDP still
  all-reduces the gradients and FSDP / ZeRO-3 keep the head gathered; the loss's inputs reach it in a closure,
  out of reach of FSDP2's and DeepSpeed's casting of forward arguments.
"""
from __future__ import annotations

import logging

import torch
from trl import GRPOTrainer
from trl.models.utils import _ForwardRedirection

from awpo.batch_advantages import AdvantageBatch, compute_advantages

from .config import AWPOConfig
from .loss import LossSettings, compute_fused_loss, lm_head_scale
from .rewards import bind_rewards, outcome_reward, reasoning_reward
from .vllm_sync import use_reload_sync

logger = logging.getLogger(__name__)

# Loss metrics of the fused op, logged under TRL's names as token means over every process.
LOSS_METRICS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "kl")
# The only argument the wrapped model's forward gets for the fused loss (see `_compute_loss`).
FORWARD_MARKER = "awpo-fused-loss"


class AWPOTrainer(GRPOTrainer):
    """A drop-in `GRPOTrainer` that trains with AWPO (arXiv 2512.19126). `args` must be an `AWPOConfig`.

    `reward_funcs`: the outcome reward first, then the reasoning score (AWPO estimators), or the outcome alone
    (`estimator="grpo"`); None: awpo's own `outcome_reward` (+ `reasoning_reward`), which read the dataset
    columns `ground_truth` and `tools` (`awpo.data.builtin_dataset`).
    """

    _tag_names = ["trl", "grpo", "awpo"]
    _name = "AWPO"

    def __init__(self, model, reward_funcs=None, args: AWPOConfig | None = None, train_dataset=None, **kwargs):
        if args is None:
            raise ValueError("AWPOTrainer needs args=AWPOConfig(output_dir=..., ...)")
        if not isinstance(args, AWPOConfig):
            raise ValueError(f"args must be an AWPOConfig (AWPO's options on top of GRPOConfig), got "
                             f"{type(args).__name__}")
        funcs = check_reward_funcs(reward_funcs, args)
        funcs = bind_rewards(funcs, graded_outcome=args.graded_outcome,
                             missing_reasoning_score=args.missing_reasoning_score)
        self.last_rewards: torch.Tensor | None = None      # [global batch, n_funcs] of the latest generation
        self.last_advantages: AdvantageBatch | None = None  # AWPO's advantages of that whole batch
        given = len(funcs)  # TRL appends to this very list
        super().__init__(model, funcs, args, train_dataset, **kwargs)
        # TRL appends one reward column per environment class with a `get_reward` (environment_factory) after the
        # functions given here: AWPO folds them into the outcome (see `outcome_rewards`), never drops them
        self.environment_reward_columns = list(range(given, len(self.reward_funcs)))
        if self.environment_reward_columns:
            names = ", ".join(self.reward_func_names[c] for c in self.environment_reward_columns)
            logger.info("AWPOTrainer: the environments' get_reward (%s) are added to the outcome reward '%s' "
                        "(weight 1, as TRL adds them to the reward)", names, self.reward_func_names[0])
        if args.fused_loss:
            self._check_fused_loss_model()
        self._forward_redirection = _ForwardRedirection()
        if self.use_vllm:
            use_reload_sync(self.vllm_generation)

    # ------------------------------------------------------------------------------------------ advantages
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.last_rewards = rewards  # gathered over processes, group-contiguous
        mode = "train" if self.model.training else "eval"
        for func in self.reward_funcs:  # an LLM judge's requests, failures and latency (this process's)
            stats = getattr(getattr(func, "judge", None), "stats", None)
            if callable(getattr(stats, "metrics", None)):
                for name, value in stats.metrics().items():
                    self._metrics[mode][name].append(value)
        return rewards

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        batch = self.awpo_advantages(self.last_rewards, group_size)
        self.last_advantages = batch
        self._log_trained_reward(self.outcome_rewards(self.last_rewards), group_size, mode)
        local = output["prompt_ids"].size(0)
        mine = slice(self.accelerator.process_index * local, (self.accelerator.process_index + 1) * local)
        device = output["advantages"].device
        output["advantages"] = batch.advantages[mine].to(device, torch.float32)
        if self.args.clip_shrink > 0:
            output["epsilon_low"] = batch.epsilon_low[mine].to(device, torch.float32)
            output["epsilon_high"] = batch.epsilon_high[mine].to(device, torch.float32)
        self._log_advantages(batch, mode)
        return output

    def awpo_advantages(self, rewards: torch.Tensor, group_size: int) -> AdvantageBatch:
        """AWPO advantages of a gathered `[global batch, n_funcs]` reward tensor (outcome, reasoning, and the
        environments' rewards, which `outcome_rewards` adds to the outcome)."""
        outcome = self.outcome_rewards(rewards)
        reasoning = rewards[:, 1] if self.args.uses_reasoning else None
        options = self.args.advantage_options()
        low, high = options.outcome_range
        if self.environment_reward_columns and bool(((outcome < low) | (outcome > high)).any()):
            names = ", ".join(f"'{self.reward_func_names[c]}'" for c in self.environment_reward_columns)
            raise ValueError(
                f"the outcome AWPO trains on is '{self.reward_func_names[0]}' plus the environments' get_reward "
                f"({names}); it spans [{float(outcome.min()):g}, {float(outcome.max()):g}], outside outcome_range="
                f"[{low:g}, {high:g}]: set AWPOConfig.outcome_range to the range of that sum")
        return compute_advantages(outcome, reasoning, group_size=group_size, options=options)

    def outcome_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """The outcome AWPO trains on: column 0 (the outcome function, never None / NaN) plus each environment's
        `get_reward` column, weighted as TRL weighs it (`reward_weights`, 1 for an environment) and skipped where it
        is NaN (a rollout of another environment), as TRL's `nansum` skips it."""
        outcome = rewards[:, 0]
        missing = torch.isnan(outcome)
        if bool(missing.any()):
            raise ValueError(
                f"the outcome reward '{self.reward_func_names[0]}' (the first reward function) returned None or NaN "
                f"for {int(missing.sum())} of {outcome.numel()} completions: AWPO needs an outcome for every "
                "completion (score output that cannot be checked as 0.0, as awpo's outcome_reward does)")
        for column in self.environment_reward_columns:
            weight = self.reward_weights[column].to(rewards.device, rewards.dtype)
            outcome = outcome + torch.nan_to_num(rewards[:, column] * weight, nan=0.0)
        return outcome

    def _log_trained_reward(self, outcome: torch.Tensor, group_size: int, mode: str) -> None:
        """TRL's `reward`, `reward_std` and `frac_reward_zero_std` for what AWPO trains on: TRL logs the sum of every
        reward column (the reasoning score included); here they describe the outcome (environment rewards included),
        and `frac_reward_zero_std` is the share of completions in groups whose outcomes are all equal (AWPO's reasoning
        term still moves those: `awpo/adv/rescued_groups`)."""
        from trl.trainer.utils import nanstd

        grouped = outcome.view(-1, group_size)
        zero_std = torch.isclose(nanstd(grouped, dim=1), torch.zeros(grouped.size(0), device=outcome.device))
        values = {"reward": outcome.mean().item(), "reward_std": nanstd(outcome).item(),
                  "frac_reward_zero_std": zero_std.float().mean().item()}
        for name, value in values.items():
            logged = self._metrics[mode][name]
            if logged:  # TRL appended its own value for this batch just before
                logged[-1] = value
            else:
                logged.append(value)

    def _log_advantages(self, batch: AdvantageBatch, mode: str) -> None:
        """AWPO's diagnostics into TRL's metrics; AWPO's advantages into TRL's completion log (not TRL's own)."""
        for name, value in batch.metrics.items():
            self._metrics[mode][f"awpo/{name}"].append(value)
        logged = self._logs["advantages"]
        for _ in range(min(batch.advantages.numel(), len(logged))):
            logged.pop()
        logged.extend(batch.advantages.tolist())

    # ------------------------------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs):
        if not self.args.fused_loss:
            return super()._compute_loss(model, inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        training = self.model.training
        settings = self._loss_settings(training)

        def fused_loss_in_forward(_marker):
            """Runs inside the wrapper's forward; returns plain tensors for the wrapper.

            The loss's inputs (advantages, old / reference log-probs, importance ratios: fp32) reach it through
            this closure, never as the wrapper's forward arguments, which FSDP2's `cast_forward_inputs` (on by
            default under mixed precision) and DeepSpeed cast to bf16. The wrapper gets one string instead: DDP
            indexes its (moved) inputs, so it needs an argument, and a string is nothing any wrapper casts.
            """
            result = compute_fused_loss(unwrapped, inputs, settings, autocast=self.accelerator.autocast,
                                        training=training)
            return result.loss, result.token_count, result.metrics

        loss, token_count, metrics = self._forward_redirection(model, unwrapped, fused_loss_in_forward,
                                                               FORWARD_MARKER)
        self._log_loss_metrics(token_count, metrics, "train" if training else "eval")
        return loss

    def _loss_settings(self, training: bool) -> LossSettings:
        return LossSettings(
            temperature=self.temperature, epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high,
            delta=self.args.delta, beta=self.beta, loss_type=self.loss_type,
            importance_sampling_level=self.importance_sampling_level,
            max_completion_length=self.max_completion_length,
            importance_sampling=bool(self.use_vllm and self.vllm_importance_sampling_correction),
            cast_lm_head_to_fp32=bool(self.args.cast_lm_head_to_fp32),
            num_processes=self.accelerator.num_processes,
            accumulation_steps=self.current_gradient_accumulation_steps if training else 1,
            steps_per_generation=self.args.steps_per_generation if training else 1)

    def _log_loss_metrics(self, token_count: torch.Tensor, metrics: dict, mode: str) -> None:
        """Token means over every process, as TRL's `global_masked_mean` logs them (a collective per metric)."""
        count = token_count.detach().float()
        means = {}
        for name in LOSS_METRICS:
            if name not in metrics:
                continue
            local = torch.stack([torch.nan_to_num(metrics[name].float()) * count, count])
            totals = self.accelerator.reduce(local, reduction="sum")
            means[name] = (totals[0] / totals[1].clamp(min=1.0)).item()
            self._metrics[mode][name].append(means[name])
        if "clip_ratio/low_mean" in means:  # disjoint events (A < 0 vs A > 0): the region is their sum
            self._metrics[mode]["clip_ratio/region_mean"].append(means["clip_ratio/low_mean"]
                                                                 + means["clip_ratio/high_mean"])

    def _check_fused_loss_model(self) -> None:
        """Fail at construction, not mid-run, for a model the fused loss cannot train."""
        if self.aux_loss_enabled:
            raise NotImplementedError("the fused loss does not add a Mixture-of-Experts load-balancing loss "
                                      "(router_aux_loss_coef); set router_aux_loss_coef=0.0 or fused_loss=False")
        if self._is_vlm:
            raise NotImplementedError("the fused loss runs text-only models; set fused_loss=False for a "
                                      "vision-language model")
        from .loss import causal_lm

        lm_head_scale(causal_lm(self.accelerator.unwrap_model(self.model)))


def check_reward_funcs(reward_funcs, args: AWPOConfig) -> list:
    """The reward functions as a list: [outcome, reasoning] for AWPO estimators, [outcome] for 'grpo'."""
    if reward_funcs is None:
        return [outcome_reward, reasoning_reward] if args.uses_reasoning else [outcome_reward]
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    wanted = 2 if args.uses_reasoning else 1
    if len(funcs) != wanted:
        roles = "the outcome reward, then the reasoning score" if wanted == 2 else "the outcome reward only"
        raise ValueError(f"reward_funcs: estimator={args.estimator!r} takes {wanted} reward function(s) ({roles}), "
                         f"got {len(funcs)}")
    return funcs
