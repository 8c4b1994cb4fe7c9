"""transformers `generate` as the rollout engine: the fallback where vLLM is not installed.

It samples from the training model itself, so there is nothing to sync; it is much slower than
vLLM (no paged KV cache, no continuous batching). The sampled tokens' log-probs come from the
processed scores (after temperature / top-p), the distribution the tokens were drawn from.

It cannot constrain decoding to a JSON schema (``supports_json_schema = False``): a ``json_schema``
raises ValueError rather than being ignored, so a caller never takes free text for a constrained reply.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from . import Completion, Prompt
from .precision import torch_dtype_name

logger = logging.getLogger(__name__)


class HFEngine:
    supports_json_schema = False

    def __init__(self, *, model, tokenizer, seed: int = 0, batch_size: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.seed = seed
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    def generate(self, prompts: Sequence[Prompt], *, n: int, temperature: float, max_tokens: int,
                 top_p: float = 1.0, stop: list[str] | None = None,
                 seed: int | None = None, json_schema: dict | None = None) -> list[list[Completion]]:
        if json_schema is not None:
            raise ValueError("json_schema: the hf rollout engine cannot constrain decoding to a JSON schema "
                             "(supports_json_schema is False); use the vllm engine")
        if stop:
            raise ValueError("the hf rollout engine does not support stop strings; use the eos token")
        token_prompts = [self._token_ids(p) for p in prompts]
        results: list[list[Completion]] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed if seed is None else seed)
            for start in range(0, len(token_prompts), self.batch_size):
                chunk = token_prompts[start:start + self.batch_size]
                results.extend(self._generate_batch(chunk, n, temperature, max_tokens, top_p))
        return results

    def _token_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return [int(t) for t in prompt]

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], n, temperature, max_tokens, top_p):
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        # left padding, so every prompt ends where generation starts
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        sampling = temperature > 0
        options = dict(do_sample=sampling, max_new_tokens=max_tokens, num_return_sequences=n,
                       output_scores=True, return_dict_in_generate=True, pad_token_id=self.pad_id,
                       use_cache=True)
        if sampling:
            options.update(temperature=temperature, top_p=top_p, top_k=0)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **options)
        finally:
            self.model.train(was_training)
        new_tokens = out.sequences[:, width:]
        logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
        token_logprobs = logprobs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        completions = [self._completion(new_tokens[i].tolist(), token_logprobs[i].tolist(), max_tokens)
                       for i in range(new_tokens.shape[0])]
        return [completions[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _completion(self, tokens: list[int], logprobs: list[float], max_tokens: int) -> Completion:
        end = next((i + 1 for i, t in enumerate(tokens) if t in self.eos_ids), None)
        finish = "stop" if end is not None else "length"
        end = end if end is not None else min(len(tokens), max_tokens)
        tokens, logprobs = tokens[:end], logprobs[:end]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(text=text, token_ids=tokens, logprobs=logprobs, finish_reason=finish)

    @property
    def dtype(self) -> str:
        """The dtype it samples in: the training model's ("float32", "bfloat16")."""
        return torch_dtype_name(next(self.model.parameters()).dtype)

    def sync_weights(self, model) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())
