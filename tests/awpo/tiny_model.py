"""The tiny causal LM of the `awpo` tests, built offline: a `LlamaConfig` (hidden 128, 2 layers, 4 heads
of size 32, 2 key/value heads, tied embeddings, fp32 random weights from a fixed seed) and a byte-level
BPE tokenizer (vocab 512) trained on a small built-in corpus, with ChatML special tokens and template.

Tests import it as `from tiny_model import build_tiny_model` (not `from conftest import ...`: several
test directories have a `conftest` module, and which one that name finds depends on what was collected).
"""
from __future__ import annotations

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
