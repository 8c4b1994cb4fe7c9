"""BFCL categories this project evaluates, and what kind of scoring each one gets.

The entries themselves (questions, function docs, possible answers) come from the installed
``bfcl-eval`` package through ``BfclChecker.load_entries``, so they are processed by BFCL's own
loader (language hints, multi-turn function docs, held-out functions) exactly as its generation does.
"""

from __future__ import annotations

SINGLE_TURN_CATEGORIES = (
    "simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
    "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
    "live_irrelevance", "live_relevance",
)
# All four multi-turn categories run offline (their backends are plain Python state machines).
MULTI_TURN_CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
ALL_CATEGORIES = SINGLE_TURN_CATEGORIES + MULTI_TURN_CATEGORIES
DEFAULT_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
                      "live_simple", "live_multiple", "multi_turn_base")
# Shorthands accepted by --categories.
CATEGORY_GROUPS = {
    "default": DEFAULT_CATEGORIES,
    "all": ALL_CATEGORIES,
    "single_turn": SINGLE_TURN_CATEGORIES,
    "multi_turn": MULTI_TURN_CATEGORIES,
    "non_live": ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"),
    "live": tuple(c for c in SINGLE_TURN_CATEGORIES if c.startswith("live_")),
}


def is_multi_turn(category: str) -> bool:
    return category in MULTI_TURN_CATEGORIES


def resolve_categories(names) -> list[str]:
    """Category names and group shorthands -> the list of categories, in order, without repeats."""
    if isinstance(names, str):
        names = [part for part in names.replace(",", " ").split() if part]
    resolved: list[str] = []
    for name in names or ["default"]:
        members = CATEGORY_GROUPS.get(name, (name,))
        for category in members:
            if category not in ALL_CATEGORIES:
                raise ValueError(f"categories: unknown BFCL category {category!r}; choose from "
                                 f"{', '.join(ALL_CATEGORIES)} or a group ({', '.join(CATEGORY_GROUPS)})")
            if category not in resolved:
                resolved.append(category)
    return resolved
