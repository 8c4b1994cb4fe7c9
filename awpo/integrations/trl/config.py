"""`AWPOConfig`: TRL's `GRPOConfig` plus AWPO's options, with the names and defaults of `python -m awpo.train`.

Every AWPO option is checked when the config is built, by the same code that checks `python -m awpo.train`'s
(`awpo.batch_advantages.AdvantageOptions`, whose allowed values, defaults and help come from
`awpo_kernels.AdvantageOptions`), so a bad value
fails before any model is loaded, with a message naming the option. TRL options that AWPO's fused loss does not
implement fail here too (`fused_loss=False` keeps TRL's own loss for them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from awpo.batch_advantages import AdvantageOptions
from awpo.judges.base import MISSING_REASONING_SCORE, check_missing_reasoning_score
from awpo_kernels import AdvantageOptions as KernelAdvantageOptions
from awpo_kernels import LossOptions

# TRL loss types that `awpo_kernels.fused_linear_policy_loss` computes (SPEC section 3, TRL's names).
FUSED_LOSS_TYPES = LossOptions.LOSS_TYPES


def _awpo(default, help_text: str):
    return field(default=default, metadata={"help": f"[AWPO] {help_text}"})


def _kernel(name: str, note: str = ""):
    """An AWPO advantage option whose default and help `awpo_kernels.AdvantageOptions` owns."""
    spec = KernelAdvantageOptions.spec(name)
    return _awpo(spec.default, spec.doc + note)


@dataclass
class AWPOConfig(GRPOConfig):
    """`GRPOConfig` + AWPO's advantage options (SPEC section 2) + `fused_loss`.

    Reward functions: the first is the outcome reward, the second the reasoning score (NaN / None = no score);
    `estimator="grpo"` takes the outcome alone. TRL's `epsilon` / `epsilon_high` are the PPO clip bounds that
    `clip_shrink` tightens per group, and TRL's `scale_rewards` ("group" or "none") scales the outcome advantage.
    """

    # default and help text from awpo_kernels.AdvantageOptions (written once, there)
    estimator: str = _kernel("estimator")
    gate: str = _kernel("gate")
    gate_threshold: float = _kernel("gate_threshold")
    weight: str = _kernel("weight")
    reasoning_coef: float = _kernel("reasoning_coef")
    clip: str = _kernel("clip")
    clip_ratio: float = _kernel("clip_ratio")
    clip_max: float = _kernel("clip_max")
    clip_shrink: float = _kernel("clip_shrink", " (needs fused_loss)")
    graded_outcome: bool = _awpo(True, "awpo's outcome_reward gives partial credit (names, parameters, values) "
                                       "instead of 1/0")
    # float | None; `str` lets the command line say 'none' (HfArgumentParser parses the field as text then)
    missing_reasoning_score: float | str | None = _awpo(
        MISSING_REASONING_SCORE, "reasoning score of a completion without reasoning (no or an empty <think>) for "
        "awpo's reasoning_reward (SPEC section 1); None: no score (NaN)")
    outcome_range: list[float] = field(default_factory=lambda: [0.0, 1.0], metadata={
        "help": "[AWPO] the range [low, high] the outcome reward lives in (pass rate and gate are taken in it)"})
    fused_loss: bool = _awpo(True, "policy loss by awpo_kernels.fused_linear_policy_loss from the last hidden "
                                   "state and the LM-head weight (false: TRL's own loss on AWPO's advantages)")

    def __post_init__(self):
        # AWPO's own options first: their errors are the likely ones, and need nothing from TRL's set-up
        self.missing_reasoning_score = _missing_score(self.missing_reasoning_score)
        self.scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        if self.scale_rewards not in ("group", "none"):
            raise ValueError(f"scale_rewards must be 'group' or 'none' with AWPOTrainer (AWPO normalises each "
                             f"group), got {self.scale_rewards!r}")
        try:
            self.advantage_options()  # raises ValueError naming a bad AWPO option
        except ValueError as exc:  # AdvantageOptions names TRL's `epsilon` `epsilon_low`
            raise ValueError(str(exc).replace("epsilon_low", "epsilon")) from None
        if not isinstance(self.fused_loss, bool):
            raise ValueError(f"fused_loss must be a bool, got {self.fused_loss!r}")
        if getattr(self, "multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
            raise ValueError(f"multi_objective_aggregation={self.multi_objective_aggregation!r} does not apply to "
                             "AWPOTrainer: AWPO computes its advantages from the outcome and the reasoning score "
                             "itself (environment rewards are added to the outcome); leave it at 'sum_then_normalize'")
        if self.reward_weights is not None:
            raise ValueError("reward_weights is not used by AWPOTrainer: the first reward function is the outcome, "
                             "the second the reasoning score, and `reasoning_coef` weighs them; leave it unset")
        if self.fused_loss:
            check_fused_loss_options(self)
        elif self.clip_shrink > 0:
            raise ValueError("clip_shrink > 0 needs fused_loss=True: TRL's own loss takes one epsilon for every "
                             "sequence, not AWPO's per-group clip bounds")
        super().__post_init__()

    @property
    def effective_epsilon_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def advantage_options(self) -> AdvantageOptions:
        """The options of `awpo.batch_advantages.compute_advantages`, checked there."""
        low_high = tuple(self.outcome_range) if isinstance(self.outcome_range, (list, tuple)) else ()
        if len(low_high) != 2:
            raise ValueError(f"outcome_range must be [low, high], got {self.outcome_range!r}")
        return AdvantageOptions(
            estimator=self.estimator, scale=self.scale_rewards, gate=self.gate, gate_threshold=self.gate_threshold,
            weight=self.weight, reasoning_coef=self.reasoning_coef, clip=self.clip, clip_ratio=self.clip_ratio,
            clip_max=self.clip_max, clip_shrink=self.clip_shrink, epsilon_low=self.epsilon,
            epsilon_high=self.effective_epsilon_high, graded_outcome=self.graded_outcome, outcome_range=low_high)

    @property
    def uses_reasoning(self) -> bool:
        """Whether the estimator reads a reasoning score (every estimator but plain GRPO)."""
        return self.estimator != "grpo"


def _missing_score(value):
    """None (from Python) or 'none' (from the command line) -> None; else a number in [0, 1]."""
    if isinstance(value, str) and value.strip().lower() in ("none", "null", "nan"):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    check_missing_reasoning_score(value)
    return None if value is None else float(value)


def check_fused_loss_options(args) -> None:
    """TRL options that the fused loss does not implement: a clear error instead of a silently different loss."""
    if args.loss_type not in FUSED_LOSS_TYPES:
        raise ValueError(f"loss_type={args.loss_type!r} is not implemented by the fused loss (it computes "
                         f"{', '.join(FUSED_LOSS_TYPES)}); set fused_loss=False to use TRL's own loss")
    unsupported = [
        ("entropy_coef", args.entropy_coef != 0.0, "0.0"),
        ("use_adaptive_entropy", args.use_adaptive_entropy, "False"),
        ("top_entropy_quantile", args.top_entropy_quantile < 1.0, "1.0"),
        ("off_policy_mask_threshold", args.off_policy_mask_threshold is not None, "None"),
        # TRL multiplies the KL term by the policy ratio (on by default); SPEC section 3's KL term is not
        ("use_bias_correction_kl", args.beta != 0.0 and getattr(args, "use_bias_correction_kl", False),
         "False when beta > 0"),
    ]
    for name, active, default in unsupported:
        if active:
            raise ValueError(f"{name}={getattr(args, name)!r} is not implemented by the fused loss; leave it at "
                             f"{default} or set fused_loss=False to use TRL's own loss")
