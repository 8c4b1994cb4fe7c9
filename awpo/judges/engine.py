"""The judge model in the trainer's process: a rollout engine answering rubric prompts.

``EngineBackend`` turns any rollout engine (``awpo.rollout``: vLLM or transformers) into the
``generate`` of an ``LLMJudge``: each rubric prompt becomes one user turn in the judge model's chat
template, and the whole batch is one greedy ``engine.generate`` call. A prompt that does not fit
the judge's context (``max_model_len`` minus ``max_tokens``, the reply budget) gets no reply (NaN)
instead of failing the batch.

Structured verdicts: where the engine can constrain decoding (``engine.supports_json_schema``: the
vLLM engine, not transformers' ``generate``), the backend asks for ``VERDICT_SCHEMA``
(``awpo.judges.verdict``) and every reply is one JSON verdict ``{"reason": ..., "score": N}`` that
``parse_judge_score`` reads, whatever the model (even a random one): the grammar ends the reply when
the object closes, so a reply can only be cut by its token budget. That budget is therefore at
least ``VERDICT_MAX_TOKENS``, the longest verdict the schema allows (a 120-character reason can
take far more than the default 96 tokens), and a structured call asks for up to that many tokens;
the context check still reserves only ``max_tokens``, so a long rubric prompt is not refused for a
reply that a real judge model never writes (vLLM stops a reply at the context's end; a cut verdict is
unreadable, counted as such). ``structured_output=False`` asks for free text, and the rubric's
``Score: N/10`` line is read instead. ``structured`` says which one a backend does.

``open_judge_engine`` starts a second engine for a separate judge model (``--judge_model``). It is
the trainer's policy engine's sibling, never its replacement: the trainer syncs the policy's weights
into its own engine only, so the judge's weights stay those of its directory for the whole run.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from .verdict import VERDICT_MAX_TOKENS, VERDICT_SCHEMA

logger = logging.getLogger(__name__)


class EngineBackend:
    """``backend(prompts) -> replies``: one batched call (greedy unless told otherwise), ``None``
    for prompts too long.

    ``structured`` is True when the replies are constrained to ``VERDICT_SCHEMA``: asked for
    (``structured_output``, the default) and possible (the engine's ``supports_json_schema``).
    ``reply_tokens`` is the token budget of one reply: ``max_tokens``, raised to
    ``VERDICT_MAX_TOKENS`` when structured."""

    def __init__(self, engine, tokenizer=None, *, max_tokens: int = 96, max_model_len: int | None = None,
                 temperature: float = 0.0, structured_output: bool = True):
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        self.engine = engine
        self.temperature = temperature
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        self.structured = bool(structured_output) and getattr(engine, "supports_json_schema", False) is True
        self.reply_tokens = max(max_tokens, VERDICT_MAX_TOKENS) if self.structured else max_tokens
        self.last_error: str | None = None

    def __call__(self, prompts: Sequence[str]) -> list[str | None]:
        self.last_error = None
        texts = [self.chat_text(p) for p in prompts]
        fits = [i for i, text in enumerate(texts) if self._fits(text)]
        if len(fits) < len(texts):
            self.last_error = (f"{len(texts) - len(fits)} rubric prompt(s) longer than the judge's context "
                               f"({self.max_model_len} tokens less {self.max_tokens} for the reply)")
        replies: list[str | None] = [None] * len(texts)
        if fits:
            schema = {"json_schema": VERDICT_SCHEMA} if self.structured else {}
            groups = self.engine.generate([texts[i] for i in fits], n=1, temperature=self.temperature,
                                          max_tokens=self.reply_tokens, **schema)
            for index, group in zip(fits, groups):
                replies[index] = group[0].text
        return replies

    def chat_text(self, prompt: str) -> str:
        """The rubric as one user turn of the judge's chat template (the bare text without one)."""
        if self.tokenizer is None:
            return prompt
        try:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        except ValueError:  # transformers: the tokenizer has no chat template
            return prompt

    def _fits(self, text: str) -> bool:
        counter = self.tokenizer if self.tokenizer is not None else getattr(self.engine, "tokenizer", None)
        if self.max_model_len is None or counter is None:
            return True
        length = len(counter(text, add_special_tokens=False)["input_ids"])
        return length + self.max_tokens <= self.max_model_len


def open_judge_engine(model_path: str, *, rollout: str = "vllm", seed: int = 0, dtype: str = "auto",
                      max_model_len: int = 4096, kv_cache_gb: float = 0.5, gpu_memory_utilization: float = 0.2):
    """A second rollout engine for the judge model: vLLM in this process (with its own KV cache on
    CPU, its own share of GPU memory on CUDA), or transformers' generate when ``rollout`` is "hf" or
    vLLM is not installed. The caller's torch thread count is kept (vLLM's start-up changes it)."""
    import torch

    from ..rollout import make_engine, vllm_available

    threads = torch.get_num_threads()
    try:
        if rollout == "vllm" and vllm_available():
            return make_engine("vllm", model_path, seed=seed, dtype=dtype, max_model_len=max_model_len,
                               kv_cache_gb=kv_cache_gb, gpu_memory_utilization=gpu_memory_utilization)
        logger.warning("judge model %s runs on transformers' generate (slow): vLLM is not in use", model_path)
        return _hf_engine(model_path, seed=seed, dtype=dtype)
    finally:
        if torch.get_num_threads() != threads:
            from ..cpu import set_cpu_threads

            set_cpu_threads(threads)


def _hf_engine(model_path: str, *, seed: int, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..rollout import make_engine

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return make_engine("hf", model_path, seed=seed, model=model, tokenizer=tokenizer)
