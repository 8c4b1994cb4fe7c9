"""The verifiable outcome reward (BFCL semantics). The reasoning judges live in ``awpo.judges``."""

from .outcome import normalize_string, outcome_reward, validate_ground_truth

__all__ = ["normalize_string", "outcome_reward", "validate_ground_truth"]
