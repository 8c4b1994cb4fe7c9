"""The rollout engine's dtype, and whether the loss corrects for the rollout / learner mismatch.

The learner (the policy's fp32 master weights, `dtype`) and the rollout engine need not share a dtype:
vLLM samples about 1.5x faster in bf16 on a CPU with bf16 units (benchmarks/RESULTS.md: 316 vs 202
tokens/s on a 2-core AMD EPYC with avx512_bf16). `rollout_dtype auto` takes bf16 where the rollout
device has bf16 units and the learner's dtype otherwise:

- learner `dtype bfloat16`: bfloat16 (the rollout was never wider than the learner before this option);
- CUDA (vLLM runs on the GPU whenever there is one): bfloat16 where the GPU has native bf16 (compute
  capability 8.0 and later), else float32;
- CPU: bfloat16 where /proc/cpuinfo lists `amx_bf16` or `avx512_bf16` (`awpo.cpu.cpu_bf16_unit`), else float32.

The hf engine samples from the training model itself, so its dtype is always the learner's.

A bf16 rollout samples from a slightly different distribution than the fp32 learner scores; the
importance-sampling correction (`vllm_importance_sampling_correction`, TRL's truncated importance
sampling) reweights the loss by pi_learner / pi_rollout per token. Its default, `auto`, turns it on
whenever either side computes in bf16 (the rollout's dtype, the learner's, or its bf16 autocast) and
leaves it off only when both compute in float32.
"""
from __future__ import annotations

from collections.abc import Iterable

ROLLOUT_DTYPES = ("float32", "bfloat16")


def rollout_device() -> str:
    """Where a vLLM engine runs: the GPU whenever CUDA is available (`VLLMEngine`), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cuda_bf16() -> tuple[bool, str]:
    """Whether the current CUDA device has native bf16 units, and its name and compute capability."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    name = f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the keyword
        native = major >= 8
    return bool(native), name


def choose_rollout_dtype(requested: str, learner_dtype: str, *, engine: str = "vllm", device: str | None = None,
                         cpu_flags: Iterable[str] | None = None,
                         cuda: tuple[bool, str] | None = None) -> tuple[str, str]:
    """(dtype, reason) of the rollout engine for `rollout_dtype=requested` (module docstring).

    `engine`: the engine that will run ('vllm' or 'hf'); `device`: where vLLM runs ('cpu' or 'cuda';
    default `rollout_device()`); `cpu_flags`: the CPU's feature flags (default: this machine's, see
    `awpo.cpu.cpu_bf16_unit`); `cuda`: (native bf16, device name) (default: `cuda_bf16()`). The reason
    is a short phrase for the start-up log ("CPU has avx512_bf16")."""
    if requested not in ("auto", *ROLLOUT_DTYPES):
        raise ValueError(f"rollout_dtype must be 'auto' or one of {', '.join(ROLLOUT_DTYPES)}; got {requested!r}")
    if engine == "hf":
        why = "the hf rollout samples from the training model"
        if requested not in ("auto", learner_dtype):
            why += f", whatever rollout_dtype ({requested}) says"
        return learner_dtype, why
    if requested == "float32":
        return "float32", "set by rollout_dtype"
    if requested == "auto" and learner_dtype == "bfloat16":
        return "bfloat16", "the learner's dtype is bfloat16"
    has_units, hardware = _bf16_units(device or rollout_device(), cpu_flags, cuda)
    if requested == "bfloat16":
        emulated = "" if has_units else f"; {hardware}: emulated, slower than float32"
        return "bfloat16", "set by rollout_dtype" + emulated
    return ("bfloat16" if has_units else "float32"), hardware


def _bf16_units(device: str, cpu_flags: Iterable[str] | None, cuda: tuple[bool, str] | None) -> tuple[bool, str]:
    """Whether the rollout device has bf16 units, and a phrase that says so ("CPU has avx512_bf16")."""
    if device == "cuda":
        native, name = cuda if cuda is not None else cuda_bf16()
        return native, f"GPU {name} {'has' if native else 'has no'} bf16 units"
    from ..cpu import BF16_CPU_FLAGS, cpu_bf16_unit

    unit = cpu_bf16_unit(cpu_flags)
    if unit is not None:
        return True, f"CPU has {unit}"
    return False, f"CPU has no bf16 units (neither {' nor '.join(BF16_CPU_FLAGS)})"


def choose_is_correction(requested: bool | None, *, rollout_dtype: str, learner_dtype: str,
                         bf16_autocast: bool = False, engine: str = "vllm") -> tuple[bool, str]:
    """(on, reason) of the importance-sampling correction for `vllm_importance_sampling_correction=requested`
    (None: auto). It needs `engine` 'vllm' (the option's TRL semantics: the hf engine samples from the
    training model); true and false are obeyed; auto is on unless sampler and learner both compute in
    float32, the one case where their log-probs agree (~1e-6; measured on SmolLM2-135M, docs/TRAINING.md).
    bf16 anywhere (the rollout's dtype, the learner's, or the learner's bf16 autocast) moves them apart by
    ~1e-2 mean |log-ratio|, even when both sides are bf16 (different kernels round differently)."""
    if engine != "vllm":
        return False, f"rollout {engine!r} samples from the training model"
    if requested is not None:
        return bool(requested), "set by vllm_importance_sampling_correction"
    learner = "bfloat16 autocast" if bf16_autocast else learner_dtype
    if rollout_dtype == "float32" and learner == "float32":
        return False, "auto: rollout and learner both compute in float32"
    return True, f"auto: the rollout computes in {rollout_dtype}, the learner in {learner}"


def config_is_correction(config, rollout_dtype: str) -> tuple[bool, str]:
    """`choose_is_correction` for a run of `config` (awpo.config.Config) whose rollouts run in `rollout_dtype`."""
    return choose_is_correction(config.vllm_importance_sampling_correction, rollout_dtype=rollout_dtype,
                                learner_dtype=config.dtype, bf16_autocast=config.bf16_autocast, engine=config.rollout)


def config_precision(config) -> tuple[str, bool]:
    """(rollout dtype, correction on) that a fresh run of `config` resolves to on this machine."""
    rollout_dtype, _ = choose_rollout_dtype(config.rollout_dtype, config.dtype, engine=config.rollout)
    return rollout_dtype, config_is_correction(config, rollout_dtype)[0]


def torch_dtype_name(dtype) -> str:
    """'float32' for torch.float32 (or for the string 'float32')."""
    return str(dtype).removeprefix("torch.")


__all__ = ["ROLLOUT_DTYPES", "choose_is_correction", "choose_rollout_dtype", "config_is_correction",
           "config_precision", "cuda_bf16", "rollout_device", "torch_dtype_name"]
