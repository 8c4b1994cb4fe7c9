"""AWPO's two rewards as one verl reward function (``reward.custom_reward_function``).

    reward.custom_reward_function.path=pkg://awpo.integrations.verl.reward
    reward.custom_reward_function.name=compute_score

``compute_score`` returns ``{"score", "outcome", "reasoning"}``. verl puts ``score`` on the response's
last token (its logged reward and validation score) and copies every key into ``non_tensor_batch``,
where AWPO's estimators read ``outcome`` and ``reasoning``:

- ``outcome`` (= ``score``): the tool calls checked with BFCL semantics (``awpo.rewards.outcome_reward``),
  1/0, or partial credit with ``graded=True``;
- ``reasoning``: the ``<think>`` text scored by a judge in [0, 1]; no reasoning scores
  ``missing_reasoning_score`` (default 0.0, SPEC section 1), NaN only when the judge failed.

It reads what ``python -m awpo.integrations.verl.data`` writes: the ground truth (BFCL possible-answer
list, JSON text or decoded) from ``reward_model.ground_truth``, and from ``extra_info`` the task's
``tools`` (JSON text or list; without them types are inferred from the ground truth) and ``request``
(the user's message, which an LLM judge is shown). Options, as
``+reward.custom_reward_function.reward_kwargs.<name>=...``:

- ``graded`` (False): partial-credit outcome;
- ``judge`` (None = ``RuleJudge``): an object with ``score(prompt, reasoning, calls, tools)``
  (``awpo.judges.LLMJudge``, ...), a class to instantiate without arguments, or a callable
  ``generate(prompts) -> replies`` that becomes ``LLMJudge(generate)``; or a ``"module:attribute"``
  string naming one of these (the form a YAML config can hold);
- ``missing_reasoning_score`` (0.0; None = NaN) for the default judge and judges built here;
- ``response_prefix`` (""): text the chat template already put before the response (e.g.
  ``"<think>\\n"`` for templates that open the think block in the prompt), prepended before parsing.

The response is parsed as one assistant message: single-turn tool calling, as in the exported tasks.
"""
from __future__ import annotations

import importlib
import inspect
import json
import math

from awpo.judges import (
    MISSING_REASONING_SCORE,
    JudgeRequest,
    LLMJudge,
    RuleJudge,
    check_missing_reasoning_score,
    judge_many,
)
from awpo.rewards import outcome_reward as score_outcome
from awpo.toolcall import parse_completion

_JUDGES: dict[tuple, object] = {}  # judges built here, reused across calls (an LLM judge holds a client)


def compute_score(data_source=None, solution_str: str = "", ground_truth=None, extra_info=None, *,
                  graded: bool = False, judge=None, missing_reasoning_score=MISSING_REASONING_SCORE,
                  response_prefix: str = "", reward_router_address=None, reward_model_tokenizer=None) -> dict:
    """verl's reward-function signature; returns ``{"score", "outcome", "reasoning"}`` (floats)."""
    if not isinstance(solution_str, str):
        raise ValueError(f"solution_str must be the decoded response text; got {type(solution_str).__name__}")
    if not isinstance(graded, bool):
        raise ValueError(f"graded must be a bool; got {graded!r}")
    if not isinstance(response_prefix, str):
        raise ValueError(f"response_prefix must be a string; got {response_prefix!r}")
    extra = extra_info if isinstance(extra_info, dict) else {}
    truth = _decoded(ground_truth, "ground_truth")
    tools = _decoded(extra.get("tools"), "extra_info['tools']") if extra.get("tools") is not None else None
    parsed = parse_completion(response_prefix + solution_str)
    outcome = float(score_outcome(parsed, truth, graded=graded, tools=tools))
    chosen = resolve_judge(judge, missing_reasoning_score)
    request = JudgeRequest.of_completion(str(extra.get("request") or ""), parsed, tools or [], truth)
    reasoning = float(judge_many(chosen, [request])[0])
    if isinstance(chosen, LLMJudge):
        chosen.clear_cache()  # one call per sample: a cache across steps would only grow
    if not (math.isnan(reasoning) or 0.0 <= reasoning <= 1.0):
        reasoning = math.nan  # a judge out of range gives no score, as SPEC's judges do
    return {"score": outcome, "outcome": outcome, "reasoning": reasoning}


def resolve_judge(judge, missing_reasoning_score=MISSING_REASONING_SCORE):
    """The judge object for ``compute_score``'s ``judge`` option (see the module docstring)."""
    missing = check_missing_reasoning_score(missing_reasoning_score)
    key = (judge if isinstance(judge, str) or judge is None else id(judge), "nan" if math.isnan(missing) else missing)
    if key not in _JUDGES:
        _JUDGES[key] = _build_judge(judge, missing_reasoning_score), judge  # keeps `judge` alive: ids stay unique
    return _JUDGES[key][0]


def _build_judge(judge, missing_reasoning_score):
    if judge is None:
        return RuleJudge(missing_reasoning_score=missing_reasoning_score)
    spec = judge
    if isinstance(judge, str):
        judge = import_object(judge)
    if inspect.isclass(judge):
        judge = judge()
    if callable(getattr(judge, "score", None)):
        return judge
    if callable(judge):
        return LLMJudge(judge, missing_reasoning_score=missing_reasoning_score)
    raise ValueError(f"judge must be a judge (with score()), a judge class, a generate callable or a "
                     f"'module:attribute' string naming one; got {spec!r}")


def import_object(path: str):
    """``"package.module:attribute"`` (or ``"package.module.attribute"``) -> the object."""
    module_name, sep, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not sep or not attribute:
        raise ValueError(f"judge {path!r} must be 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"judge {path!r}: cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"judge {path!r}: module {module_name!r} has no attribute {attribute!r}") from None


def _decoded(value, name: str):
    """A JSON-text value (how parquet holds ragged nested data) decoded; other values as they are."""
    if isinstance(value, (bytes, str)):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{name} is not valid JSON: {exc}") from None
    if hasattr(value, "tolist"):  # a numpy array, as a parquet list column comes back
        return value.tolist()
    return value
