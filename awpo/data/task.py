"""The unit of training and evaluation data: one tool-use task."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SINGLE_TURN_CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
CATEGORIES = SINGLE_TURN_CATEGORIES + ("multi_turn",)


@dataclass
class Task:
    """A prompt plus what counts as a correct answer.

    Single-turn: ``ground_truth`` is BFCL's possible-answer list ``[{name: {param: [values]}}]``
    (``[]`` = no tool fits). Multi-turn: ``env`` names a registered environment started from
    ``env_state``; ``messages`` ends with the first user turn, ``user_turns`` holds the later ones,
    and ``ground_truth`` is one list of ``{"name", "arguments"}`` calls per user turn, whose replay
    defines the correct final state.
    """

    id: str
    category: str
    messages: list[dict]
    tools: list[dict]
    ground_truth: list
    env: str | None = None
    env_state: dict | None = None
    user_turns: list[str] | None = None
    meta: dict = field(default_factory=dict)  # free-form provenance (templates used, source file, ...)

    @property
    def is_multi_turn(self) -> bool:
        return self.env is not None

    @property
    def user_prompt(self) -> str:
        """The text of the last user message (what a judge is shown as the request)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return str(message.get("content", ""))
        return ""

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and not (k == "meta" and not v)}
