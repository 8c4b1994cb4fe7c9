"""awpo: an AWPO trainer for tool-using LLMs (``python -m awpo.train``) and BFCL evaluation (``python -m awpo.eval``).

The names below are the public API. Each is imported on first use (PEP 562 ``__getattr__``), so ``import awpo`` stays
cheap: the trainer pulls in torch and transformers, the rollout engines vLLM, the BFCL client nothing heavy.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # configuration and the training loop
    "Config": "config", "ConfigError": "config", "parse_args": "config",
    "Trainer": "trainer", "TrainResult": "trainer",
    # tool calls: the completion format, parsing and rendering
    "ToolCall": "toolcall", "ParsedCompletion": "toolcall", "parse_completion": "toolcall",
    "format_tool_calls": "toolcall",
    # rewards and reasoning judges
    "outcome_reward": "rewards", "validate_ground_truth": "rewards", "Judge": "judges", "LLMJudge": "judges",
    "RuleJudge": "judges", "ReferenceJudge": "judges", "JudgeOptions": "judges", "build_judge": "judges",
    # data
    "Task": "data", "builtin_tasks": "data", "load_tasks": "data",
    # rollouts
    "make_engine": "rollout", "RolloutEngine": "rollout", "Completion": "rollout",
    # BFCL evaluation
    "BfclChecker": "bfcl", "evaluate_generate_fn": "bfcl", "first_acceptable_calls": "bfcl.scripted",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'awpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
