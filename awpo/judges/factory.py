"""Which judge a run uses, built from plain options; and the checks that run before any model loads.

``JudgeOptions`` holds the judge's settings (the trainer's ``Config.judge_options()`` makes one
from its ``judge*`` options, and error messages use those option names). ``kind``:

- ``rule``: the grounded rule judge (rule.py), the default;
- ``reference``: the reference judge (reference.py), a CONTROL that reads the task's answer;
- ``llm``: a model answers the rubric: ``url``'s server, ``model``'s second engine in this process
  (never weight-synced), or else the policy itself through its own rollout engine (it drifts as it
  trains, and a policy that grades itself can learn to please itself: for checks only);
- ``none``: no reasoning score (GRPO).

``check_judge_options(options)`` checks that the options agree (``Config.validate`` runs it);
``check_judge(options)`` is the preflight: those, the rubric file, the judge model's directory, the
API key variable, and for a server, that it answers, serves the model and takes the key. It
takes seconds and raises ValueError naming the option. ``build_judge`` makes the judge; it reuses the
server connection of the preflight when given one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .base import MISSING_REASONING_SCORE
from .engine import EngineBackend, open_judge_engine
from .http import OpenAIChatBackend, api_base
from .llm import LLMJudge
from .reference import ReferenceJudge
from .rubric import RUBRIC, load_rubric
from .rule import RuleJudge

KINDS = ("rule", "reference", "llm", "none")
POLICY_JUDGE = "the policy itself: --judge llm without --judge_model or --judge_url"


@dataclass(frozen=True)
class JudgeOptions:
    """The judge's settings; each field is the trainer option ``judge_<field>`` (``kind``: ``judge``)."""

    kind: str = "rule"
    model: str = ""
    url: str = ""
    model_name: str = ""
    api_key_env: str = ""
    rubric: str = ""
    max_tokens: int = 96
    timeout_s: float = 60.0
    max_retries: int = 2
    concurrency: int = 16
    max_failed_steps: int = 3
    max_model_len: int = 4096
    kv_cache_gb: float = 0.5
    gpu_memory_utilization: float = 0.2
    structured_output: bool = True
    missing_reasoning_score: float | None = MISSING_REASONING_SCORE
    rollout: str = "vllm"        # how a judge_model engine runs (the trainer's rollout option)
    seed: int = 0
    policy_max_model_len: int = 2048  # the policy engine's context, when the policy judges


def check_judge_options(options: JudgeOptions) -> None:
    """The options agree with each other (no file, variable or server is looked at): ValueError naming
    the option."""
    if options.kind not in KINDS:
        raise ValueError(f"judge={options.kind!r}: choose one of {', '.join(KINDS)}")
    for name in ("model", "url", "rubric"):
        if getattr(options, name) and options.kind != "llm":
            raise ValueError(f"judge_{name}={getattr(options, name)!r} needs judge='llm' (judge={options.kind!r})")
    for name in ("model_name", "api_key_env"):
        if getattr(options, name) and not options.url:
            raise ValueError(f"judge_{name}={getattr(options, name)!r} applies to a judge server: set judge_url too")
    if options.model and options.url:
        raise ValueError(f"judge_model={options.model!r} and judge_url={options.url!r} are both set: choose one "
                         "(judge_model: a judge engine in this process; judge_url: a judge server)")
    if options.url:
        try:
            api_base(options.url)
        except ValueError as err:
            raise ValueError(f"judge_url={options.url!r}: {err}") from None


def check_judge(options: JudgeOptions, *, connect: bool = True) -> OpenAIChatBackend | None:
    """The preflight (module docstring): the options, the rubric file, the judge model's directory,
    the API key variable and (``connect``) the server; returns the connected server backend."""
    check_judge_options(options)
    if options.kind != "llm":
        return None
    if options.rubric:
        try:
            load_rubric(options.rubric)
        except ValueError as err:
            raise ValueError(f"judge_rubric={options.rubric!r}: {err}") from None
    if options.model and not (Path(options.model).expanduser() / "config.json").is_file():
        raise ValueError(f"judge_model={options.model!r}: no such model directory (a local HF model directory "
                         "with config.json)")
    if options.api_key_env and not os.environ.get(options.api_key_env):
        raise ValueError(f"judge_api_key_env={options.api_key_env!r}: no such environment variable, or it is "
                         "empty (export it before starting)")
    return connect_server(options) if options.url and connect else None


def connect_server(options: JudgeOptions) -> OpenAIChatBackend:
    """The server judge, connected: ValueError naming judge_url, judge_model_name or judge_api_key_env."""
    api_key = os.environ.get(options.api_key_env) if options.api_key_env else None
    backend = OpenAIChatBackend(options.url, model=options.model_name, api_key=api_key,
                                max_tokens=options.max_tokens, timeout_s=options.timeout_s,
                                max_retries=options.max_retries, concurrency=options.concurrency,
                                structured_output=options.structured_output)
    try:
        return backend.connect()
    except PermissionError as err:
        raise ValueError(f"judge_api_key_env={options.api_key_env!r}: {err}") from None
    except ConnectionError as err:
        raise ValueError(f"judge_url={options.url!r}: {err}. Start the judge server first "
                         f"(e.g. vllm serve MODEL --port 8000) or fix the URL") from None
    except LookupError as err:
        raise ValueError(f"judge_model_name={options.model_name!r}: {err}") from None


def build_judge(options: JudgeOptions, *, engine=None, tokenizer=None, server: OpenAIChatBackend | None = None):
    """The judge the options ask for (None for 'none'). ``engine`` and ``tokenizer`` are the policy's,
    used only by an LLM judge without judge_model or judge_url; ``server``: ``check_judge``'s result."""
    if options.kind == "none":
        return None
    if options.kind == "rule":
        return RuleJudge(missing_reasoning_score=options.missing_reasoning_score)
    if options.kind == "reference":
        return ReferenceJudge(missing_reasoning_score=options.missing_reasoning_score)
    if options.kind != "llm":
        raise ValueError(f"judge={options.kind!r}: choose one of {', '.join(KINDS)}")
    rubric = load_rubric(options.rubric) if options.rubric else RUBRIC
    backend, name = _backend(options, engine, tokenizer, server)
    return LLMJudge(backend, rubric=rubric, missing_reasoning_score=options.missing_reasoning_score,
                    max_failed_steps=options.max_failed_steps, name=name)


def _backend(options: JudgeOptions, engine, tokenizer, server):
    if options.url:
        backend = server if server is not None else connect_server(options)
        return backend, backend.describe()
    if options.model:
        judge_engine = open_judge_engine(
            options.model, rollout=options.rollout, seed=options.seed, max_model_len=options.max_model_len,
            kv_cache_gb=options.kv_cache_gb, gpu_memory_utilization=options.gpu_memory_utilization)
        backend = EngineBackend(judge_engine, judge_engine.tokenizer, max_tokens=options.max_tokens,
                                max_model_len=options.max_model_len, structured_output=options.structured_output)
        return backend, f"judge model {options.model}"
    if engine is None:
        raise ValueError("judge 'llm' without judge_model or judge_url asks the policy: pass its rollout engine")
    backend = EngineBackend(engine, tokenizer, max_tokens=options.max_tokens,
                            max_model_len=options.policy_max_model_len, structured_output=options.structured_output)
    return backend, POLICY_JUDGE
