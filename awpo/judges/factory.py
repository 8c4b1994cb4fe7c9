"""``--judge llm`` from the config: which model answers the rubric.

- ``judge_url``: a server speaking the OpenAI chat completions schema (``vllm serve``), checked at
  start-up (it answers, it serves the model, it takes the key);
- ``judge_model``: a second engine in this process for a fixed local model (never weight-synced);
- neither: the policy answers the rubric through its own rollout engine (it drifts as it trains).

Every form is an ``LLMJudge`` (same rubric, parsing, cache, NaN rules, missing-reasoning score);
only its ``generate`` differs.
"""
from __future__ import annotations

import os

from .engine import EngineBackend, open_judge_engine
from .http import OpenAIChatBackend

POLICY_JUDGE = "the policy itself: --judge llm without --judge_model or --judge_url"


def build_llm_judge(config, *, engine=None, tokenizer=None):
    """The LLM judge the config asks for. ``engine`` and ``tokenizer`` are the policy's, used only
    when neither ``judge_model`` nor ``judge_url`` is set. Bad settings raise ConfigError naming
    the option."""
    from ..rewards.reasoning import RUBRIC, LLMJudge, load_rubric

    rubric = load_rubric(config.judge_rubric) if config.judge_rubric else RUBRIC
    backend, name = _backend(config, engine, tokenizer)
    return LLMJudge(backend, rubric=rubric, missing_reasoning_score=config.missing_reasoning_score,
                    max_failed_steps=config.judge_max_failed_steps, name=name)


def _backend(config, engine, tokenizer):
    if config.judge_url:
        backend = server_backend(config)
        return backend, backend.describe()
    if config.judge_model:
        judge_engine = open_judge_engine(
            config.judge_model, rollout=config.rollout, seed=config.seed, max_model_len=config.judge_max_model_len,
            kv_cache_gb=config.judge_kv_cache_gb, gpu_memory_utilization=config.judge_gpu_memory_utilization)
        backend = EngineBackend(judge_engine, judge_engine.tokenizer, max_tokens=config.judge_max_tokens,
                                max_model_len=config.judge_max_model_len)
        return backend, f"judge model {config.judge_model}"
    if engine is None:
        raise ValueError("judge 'llm' without judge_model or judge_url asks the policy: pass its rollout engine")
    backend = EngineBackend(engine, tokenizer, max_tokens=config.judge_max_tokens, max_model_len=config.max_model_len)
    return backend, POLICY_JUDGE


def server_backend(config) -> OpenAIChatBackend:
    """The server judge, connected: ConfigError naming judge_url, judge_model_name or
    judge_api_key_env when the start-up check fails."""
    from ..config import ConfigError

    api_key = os.environ.get(config.judge_api_key_env) if config.judge_api_key_env else None
    backend = OpenAIChatBackend(config.judge_url, model=config.judge_model_name, api_key=api_key,
                                max_tokens=config.judge_max_tokens, timeout_s=config.judge_timeout_s,
                                max_retries=config.judge_max_retries, concurrency=config.judge_concurrency)
    try:
        return backend.connect()
    except PermissionError as err:
        raise ConfigError(f"judge_api_key_env={config.judge_api_key_env!r}: {err}") from None
    except ConnectionError as err:
        raise ConfigError(f"judge_url={config.judge_url!r}: {err}. Start the judge server first "
                          f"(e.g. vllm serve MODEL --port 8000) or fix the URL") from None
    except LookupError as err:
        raise ConfigError(f"judge_model_name={config.judge_model_name!r}: {err}") from None
