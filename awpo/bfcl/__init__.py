"""BFCL evaluation with BFCL's own code: its data, its ``ast_checker`` / irrelevance check /
``multi_turn_checker`` and its multi-turn loop, run in a separate venv as a subprocess.

- ``venv``: creates / finds the BFCL venv (``python -m awpo.bfcl.venv --ensure``).
- ``checker.BfclChecker``: the subprocess client: load entries, score outputs, play multi-turn episodes.
- ``generate``: the generate-function protocol and the rollout-engine adapter.
- ``evaluate.evaluate_generate_fn``: a whole evaluation; ``report``: tables and files.
- ``scripted``: oracle / silent models, the pipeline's sanity checks.

``python -m awpo.eval`` is the command line.
"""

import importlib

# Imported lazily so that `python -m awpo.bfcl.venv` does not load its own module twice.
_EXPORTS = {
    "BfclChecker": "checker", "BfclWorkerError": "checker",
    "ALL_CATEGORIES": "data", "DEFAULT_CATEGORIES": "data", "MULTI_TURN_CATEGORIES": "data",
    "SINGLE_TURN_CATEGORIES": "data", "resolve_categories": "data",
    "evaluate_generate_fn": "evaluate",
    "GenerateFn": "generate", "GenerationRequest": "generate", "engine_generate_fn": "generate",
    "generate_all": "generate",
    "ensure_venv": "venv",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'awpo.bfcl' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
