"""Reasoning judges whose model is not the policy (issue #14).

``awpo.rewards.reasoning.LLMJudge`` holds the rubric, the parsing, the cache and the NaN rules; this
package gives it other ``generate`` backends and the bookkeeping a training run needs:

- ``engine``: a second rollout engine in the trainer's process for a fixed judge model;
- ``http``: an OpenAI-compatible server (``vllm serve``), concurrent requests with timeouts and
  bounded retries;
- ``health``: per-step counts (requests, failures, latency) and the stop after several steps in
  which every request failed;
- ``factory``: the judge that ``--judge llm`` with ``--judge_model`` / ``--judge_url`` asks for.
"""
from .engine import EngineBackend, open_judge_engine
from .factory import build_llm_judge
from .health import FailureWatch, JudgeStats, JudgeUnavailableError
from .http import OpenAIChatBackend

__all__ = ["EngineBackend", "FailureWatch", "JudgeStats", "JudgeUnavailableError", "OpenAIChatBackend",
           "build_llm_judge", "open_judge_engine"]
