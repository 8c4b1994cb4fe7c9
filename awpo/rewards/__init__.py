"""Rewards for tool-use rollouts: the verifiable outcome reward and the reasoning judges."""

from .outcome import normalize_string, outcome_reward, validate_ground_truth
from .reasoning import Judge, LLMJudge, RuleJudge, parse_judge_score

__all__ = [
    "Judge",
    "LLMJudge",
    "RuleJudge",
    "normalize_string",
    "outcome_reward",
    "parse_judge_score",
    "validate_ground_truth",
]
