"""The options of the public ops, one frozen dataclass per op family.

`LossOptions` holds the hyper-parameters of `fused_linear_policy_loss`, `policy_loss` and
`FusedLinearPolicyLoss` (docs/SPEC.md section 3); `AdvantageOptions` those of `group_advantages` (docs/SPEC.md
section 2). Each class owns, in one place:

- the allowed values of every choice option (class-level tuples such as `LossOptions.LOSS_TYPES`,
  the same values as the `Literal` types below; the Triton kernels map each value to a named code
  in `_kernel_codes`, explicitly, so the order of a `Literal` never matters),
- the defaults (the reference implementation's keyword defaults read them from here),
- the validation: building an object with a bad value raises `ValueError` naming the option,
- the documentation of each option (`describe()`), inserted into the public ops' docstrings.

The ops take `options=` and, as a convenience, the same names as keyword arguments. A keyword given
together with `options=` overrides that field (the result is validated again), so a shared options
object can be adjusted per call: `policy_loss(..., options=opts, epsilon_low=per_sequence_eps)`.

What depends on the inputs (tensor shapes, devices, dr_grpo's default `max_completion_length` in the
padded layout, `ref_logprobs` being given when `beta > 0`) is checked by the ops, per call.
"""
from __future__ import annotations

import dataclasses
import math
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypedDict, TypeVar

import torch

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
KlType = Literal["k1", "k2", "k3"]
ImportanceSamplingLevel = Literal["token", "sequence"]
Estimator = Literal["grpo", "awpo", "awpo_mixed", "reward_sum", "gdpo"]
Scale = Literal["group", "none"]
Gate = Literal["soft", "hard", "ratio", "none"]
Weight = Literal["linear", "bernoulli", "none"]
Clip = Literal["sign", "none"]


def check_choice(name: str, value, allowed) -> None:
    """ValueError naming `name` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def is_number(value) -> bool:
    """A finite int or float (bool excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_number(name: str, value, *, low: float = 0.0, low_open: bool = False) -> None:
    """ValueError naming `name` unless `value` is a finite number >= low (> low when `low_open`)."""
    if not is_number(value) or (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be a finite number {'>' if low_open else '>='} {low:g}; got {value!r}")


def _option(default, doc: str):
    return field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option as every front end shows it: its default, its help text and its allowed values."""

    name: str
    default: object
    doc: str
    choices: tuple[str, ...] | None


class _Documented:
    """`describe()`: one indented line per option (name, type, default, doc), for the ops' docstrings;
    `names()` and `spec(name)`: the options, and each one's default, help and choices, which the trainer's
    `Config`, TRL's `AWPOConfig`, verl's `algorithm.awpo` and the command lines take from here (one definition
    per option)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option's name, in definition order (`spec(name)` describes each)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def spec(cls, name: str) -> OptionSpec:
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        if name not in by_name:
            raise KeyError(f"{cls.__name__} has no option {name!r}")
        option = by_name[name]
        return OptionSpec(name, option.default, option.metadata["doc"], cls.CHOICES.get(name))

    @classmethod
    def describe(cls, indent: str = "    ", exclude: tuple[str, ...] = ()) -> str:
        hints = typing.get_type_hints(cls)
        lines = []
        for f in dataclasses.fields(cls):
            if f.name in exclude:
                continue
            hint = hints[f.name]
            kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            text = f"{f.name} ({kind}, default {f.default!r}): {f.metadata['doc']}"
            lines.append(textwrap.fill(text, width=110, initial_indent=indent, subsequent_indent=indent + "    "))
        return "\n".join(lines)

    def as_kwargs(self, exclude: tuple[str, ...] = ()) -> dict:
        """The fields as keyword arguments (shallow: tensors stay tensors)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in exclude}


# ----------------------------------------------------------------------------- policy loss

@dataclass(frozen=True)
class LossOptions(_Documented):
    """Hyper-parameters of the clipped-surrogate policy loss (docs/SPEC.md section 3; TRL's GRPOConfig names).

    `epsilon_low` / `epsilon_high` may also be tensors, 0-dim or one value per sequence `[S]` (AWPO's
    dynamic clip, `GroupAdvantages.epsilon_low`); their shape is checked by the op that receives them
    (and two options objects holding tensors do not compare with `==`).
    """

    LOSS_TYPES: ClassVar[tuple[str, ...]] = typing.get_args(LossType)
    KL_TYPES: ClassVar[tuple[str, ...]] = typing.get_args(KlType)
    IMPORTANCE_SAMPLING_LEVELS: ClassVar[tuple[str, ...]] = typing.get_args(ImportanceSamplingLevel)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "loss_type": LOSS_TYPES, "kl_type": KL_TYPES, "importance_sampling_level": IMPORTANCE_SAMPLING_LEVELS}

    temperature: float = _option(1.0, "the logits are divided by it before the softmax (the rollout's sampling "
                                      "temperature); `policy_loss` takes log-probs already and ignores it")
    epsilon_low: float | torch.Tensor = _option(0.2, "PPO clip, lower side: the ratio is clipped at 1 - epsilon_low "
                                                     "(a float >= 0, or a tensor: 0-dim or [S])")
    epsilon_high: float | torch.Tensor = _option(0.2, "PPO clip, upper side: 1 + epsilon_high (as epsilon_low)")
    delta: float | None = _option(None, "two-sided clip: the unclipped ratio is capped at delta (None: off)")
    beta: float = _option(0.0, "KL coefficient against ref_logprobs (> 0 needs ref_logprobs)")
    kl_type: KlType = _option("k3", "KL estimator: 'k1', 'k2' or 'k3'")
    entropy_coef: float = _option(0.0, "entropy bonus: entropy_coef * entropy is subtracted per token")
    loss_type: LossType = _option("dapo", "token aggregation: 'grpo' (mean per sequence, summed over sequences, / "
                                          "num_seqs_in_batch, default S), 'bnpo' (mean over the call's tokens), "
                                          "'dr_grpo' (sum / (num_seqs_in_batch * max_completion_length)) or 'dapo' "
                                          "(sum / num_items_in_batch, default the call's token count)")
    importance_sampling_level: ImportanceSamplingLevel = _option(
        "token", "'token' ratios (GRPO) or one ratio per 'sequence' (GSPO)")
    max_completion_length: int | None = _option(
        None, "dr_grpo's denominator length (None: T of the padded layout; required in the packed layout)")

    def __post_init__(self) -> None:
        check_choice("loss_type", self.loss_type, self.LOSS_TYPES)
        check_choice("kl_type", self.kl_type, self.KL_TYPES)
        check_choice("importance_sampling_level", self.importance_sampling_level, self.IMPORTANCE_SAMPLING_LEVELS)
        check_number("temperature", self.temperature, low_open=True)
        for name in ("epsilon_low", "epsilon_high"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                                        or value < 0):
                raise ValueError(f"{name} must be a float >= 0 or a per-sequence tensor; got {value!r}")
        if self.delta is not None:
            check_number("delta", self.delta, low_open=True)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or self.beta < 0:
            raise ValueError(f"beta must be a float >= 0; got {self.beta!r}")
        if isinstance(self.entropy_coef, bool) or not isinstance(self.entropy_coef, (int, float)):
            raise ValueError(f"entropy_coef must be a float; got {self.entropy_coef!r}")
        if self.max_completion_length is not None:
            check_number("max_completion_length", self.max_completion_length, low_open=True)


class LossKeywords(TypedDict, total=False):
    """The fields of `LossOptions` as keyword arguments of the ops (tests check that the two agree)."""

    temperature: float
    epsilon_low: float | torch.Tensor
    epsilon_high: float | torch.Tensor
    delta: float | None
    beta: float
    kl_type: KlType
    entropy_coef: float
    loss_type: LossType
    importance_sampling_level: ImportanceSamplingLevel
    max_completion_length: int | None


# ----------------------------------------------------------------------------- group advantages

@dataclass(frozen=True)
class AdvantageOptions(_Documented):
    """Hyper-parameters of AWPO's group advantages (docs/SPEC.md section 2)."""

    ESTIMATORS: ClassVar[tuple[str, ...]] = typing.get_args(Estimator)
    SCALES: ClassVar[tuple[str, ...]] = typing.get_args(Scale)
    GATES: ClassVar[tuple[str, ...]] = typing.get_args(Gate)
    WEIGHTS: ClassVar[tuple[str, ...]] = typing.get_args(Weight)
    CLIPS: ClassVar[tuple[str, ...]] = typing.get_args(Clip)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "estimator": ESTIMATORS, "scale": SCALES, "gate": GATES, "weight": WEIGHTS, "clip": CLIPS}

    estimator: Estimator = _option(
        "awpo", "'awpo' (the outcome advantage + a gated, weighted, sign-clipped reasoning term), 'grpo' (the "
                "outcome advantage only); for ablations 'awpo_mixed' (mixing at the reward level), 'reward_sum' "
                "(GRPO on outcome + reasoning_coef * reasoning, a missing score counting as 0) and 'gdpo' (each "
                "reward normalised in its group, summed, whitened over the batch)")
    scale: Scale = _option("group", "'group': divide by the group std (GRPO); 'none': x - mean (Dr. GRPO)")
    unbiased: bool = _option(True, "std with Bessel's correction (n - 1)")
    eps: float = _option(1e-6, "added to every std before dividing (> 0)")
    outcome_range: tuple[float, float] = _option((0.0, 1.0), "(min, max) the outcome rewards live in: the pass "
                                                             "rate and the soft gate are read on this scale")
    gate: Gate = _option("soft", "variance-aware gate of the reasoning term: 'soft' (1 - outcome spread), 'hard', "
                                 "'ratio' or 'none' (1 everywhere, an ablation)")
    gate_threshold: float = _option(0.0, "the 'hard' gate opens when the outcome variance is <= this")
    weight: Weight = _option("linear", "difficulty weight: 'linear' (1 - pass rate), 'bernoulli' (4p(1-p)) "
                                       "or 'none'")
    reasoning_coef: float = _option(1.0, "reasoning term coefficient (0: plain GRPO advantages)")
    clip: Clip = _option("sign", "tailored clip of the reasoning term ('sign': it never flips the outcome "
                                 "advantage) or 'none'")
    clip_ratio: float = _option(0.5, "reasoning term bound as a share of |outcome advantage|")
    clip_max: float = _option(1.0, "reasoning term bound when the group's outcomes are all equal")
    clip_shrink: float = _option(0.0, "dynamic PPO clip: epsilon / (1 + clip_shrink * gate * weight), every "
                                      "estimator but grpo")
    epsilon_low: float = _option(0.2, "PPO clip, lower side, before the shrink")
    epsilon_high: float = _option(0.2, "PPO clip, upper side, before the shrink")

    def __post_init__(self) -> None:
        check_choice("estimator", self.estimator, self.ESTIMATORS)
        check_choice("scale", self.scale, self.SCALES)
        check_choice("gate", self.gate, self.GATES)
        check_choice("weight", self.weight, self.WEIGHTS)
        check_choice("clip", self.clip, self.CLIPS)
        if not isinstance(self.unbiased, bool):
            raise ValueError(f"unbiased must be a bool; got {self.unbiased!r}")
        low_high = self.outcome_range
        if (not isinstance(low_high, (tuple, list)) or len(low_high) != 2
                or not all(is_number(v) for v in low_high) or not low_high[1] > low_high[0]):
            raise ValueError(f"outcome_range must be (min, max), finite numbers with max > min; got {low_high!r}")
        object.__setattr__(self, "outcome_range", (float(low_high[0]), float(low_high[1])))
        # eps > 0: with eps = 0 a group of equal outcomes would divide 0 by 0.
        check_number("eps", self.eps, low_open=True)
        for name in ("gate_threshold", "reasoning_coef", "clip_ratio", "clip_max", "clip_shrink", "epsilon_low",
                     "epsilon_high"):
            check_number(name, getattr(self, name))


class AdvantageKeywords(TypedDict, total=False):
    """The fields of `AdvantageOptions` as keyword arguments of `group_advantages`."""

    estimator: Estimator
    scale: Scale
    unbiased: bool
    eps: float
    outcome_range: tuple[float, float]
    gate: Gate
    gate_threshold: float
    weight: Weight
    reasoning_coef: float
    clip: Clip
    clip_ratio: float
    clip_max: float
    clip_shrink: float
    epsilon_low: float
    epsilon_high: float


# ----------------------------------------------------------------------------- helpers for the ops

OptionsT = TypeVar("OptionsT", LossOptions, AdvantageOptions)


def resolve_options(cls: type[OptionsT], options: OptionsT | None, overrides: dict) -> OptionsT:
    """`options` (default `cls()`) with the keyword `overrides` applied; validated. Unknown keywords and an
    `options` of another type raise TypeError."""
    if options is not None and not isinstance(options, cls):
        raise TypeError(f"options must be a {cls.__name__}; got {type(options).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)} (the options of {cls.__name__} are "
                        f"{', '.join(sorted(names))})")
    if options is None:
        return cls(**overrides)
    return dataclasses.replace(options, **overrides) if overrides else options


def document(template_fields: dict[str, str]) -> Callable:
    """Decorator: fill `{name}` placeholders of a docstring with the given fragments (shared docs are
    written once and inserted)."""
    def apply(func):
        func.__doc__ = func.__doc__.format(**template_fields)
        return func
    return apply


__all__ = ["LossOptions", "AdvantageOptions", "LossKeywords", "AdvantageKeywords", "LossType", "KlType",
           "ImportanceSamplingLevel", "Estimator", "Scale", "Gate", "Weight", "Clip"]
