"""Rewards of finished episodes: the outcome (exact and, for training, optionally graded), and the
reasoning score from a judge (NaN = no score)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .judges.base import JudgeRequest, judge_many
from .rewards import outcome_reward
from .rollout.multiturn import Episode


@dataclass
class EpisodeScores:
    outcome: list[float]              # what the advantages use: graded or exact
    exact: list[float]                # 1.0 / 0.0: the accuracy
    reasoning: list[float] | None     # judge scores, or None without a judge


def outcome_of(episode: Episode, *, graded: bool) -> float:
    task = episode.task
    if episode.env is not None:
        from .envs import multi_turn_outcome

        # any malformed assistant turn scores 0, whatever the final state (as single-turn)
        return float(multi_turn_outcome(task, episode.env, graded=graded, turns=episode.parsed_turns))
    return float(outcome_reward(episode.parsed_turns[-1], task.ground_truth, graded=graded, tools=task.tools))


def score_episodes(episodes: Sequence[Episode], *, graded: bool, judge=None) -> EpisodeScores:
    exact = [outcome_of(e, graded=False) for e in episodes]
    outcome = [outcome_of(e, graded=True) for e in episodes] if graded else list(exact)
    reasoning = None
    if judge is not None:
        requests = [JudgeRequest(_request_text(e.task), e.reasoning, e.calls, e.task.tools, e.task.ground_truth,
                                 malformed=any(p.error is not None for p in e.parsed_turns))
                    for e in episodes]
        reasoning = [float(s) for s in judge_many(judge, requests)]
    return EpisodeScores(outcome, exact, reasoning)


def _request_text(task) -> str:
    prompt = getattr(task, "user_prompt", None)
    if prompt is not None:
        return prompt
    users = [m.get("content", "") for m in task.messages if m.get("role") == "user"]
    return users[-1] if users else ""
