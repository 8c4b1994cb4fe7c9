"""BFCL evaluation with BFCL's own code: its data, its ``ast_checker`` / irrelevance check /
``multi_turn_checker`` and its multi-turn loop, run in a separate venv as a subprocess.

- ``venv``: creates / finds the BFCL venv (``python -m awpo.bfcl.venv --ensure``).
- ``checker.BfclChecker``: the subprocess client: load entries, score outputs, play multi-turn episodes.
- ``generate``: the generate-function protocol and the rollout-engine adapter.
- ``evaluate.evaluate_generate_fn``: a whole evaluation; ``report``: tables and files.
- ``scripted``: oracle / silent models, the pipeline's sanity checks.

``python -m awpo.eval`` is the command line.
"""

from .checker import BfclChecker, BfclWorkerError
from .data import ALL_CATEGORIES, DEFAULT_CATEGORIES, MULTI_TURN_CATEGORIES, SINGLE_TURN_CATEGORIES, resolve_categories
from .evaluate import evaluate_generate_fn
from .generate import GenerateFn, GenerationRequest, engine_generate_fn, generate_all
from .venv import ensure_venv

__all__ = [
    "ALL_CATEGORIES", "DEFAULT_CATEGORIES", "MULTI_TURN_CATEGORIES", "SINGLE_TURN_CATEGORIES",
    "BfclChecker", "BfclWorkerError", "GenerateFn", "GenerationRequest", "engine_generate_fn",
    "ensure_venv", "evaluate_generate_fn", "generate_all", "resolve_categories",
]
