"""The separate Python environment that holds BFCL's official checkers.

``bfcl-eval`` pins numpy==1.26.4 and old API SDKs that clash with the training environment, so it
lives in a venv of its own, created on first use from the pinned ``requirements-bfcl.txt`` (installed
with ``--no-deps``: the file lists every package) and reused afterwards. Its location is
``$AWPO_BFCL_VENV`` when set, else ``<repo>/.venv-bfcl`` for a source checkout, else
``$XDG_CACHE_HOME/awpo/venv-bfcl``.

Creation is idempotent and safe to race: a lock file serialises concurrent callers, and a stamp
file holding the hash of the requirements marks a finished install (a changed requirements file
triggers a re-install into the same venv); the mechanics are shared with verl's venv
(``awpo.isolated_venv``).

    python -m awpo.bfcl.venv --ensure     # create it if needed, print its python
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..isolated_venv import VenvRecipe
from ..isolated_venv import main as venv_main

BFCL_EVAL_VERSION = "2026.3.23"
REQUIREMENTS_FILE = Path(__file__).with_name("requirements-bfcl.txt")
WORKER_SCRIPT = Path(__file__).with_name("_worker.py")
VENV_ENV_VAR = "AWPO_BFCL_VENV"
STAMP_NAME = ".awpo-bfcl-installed"
LOCK_NAME = ".awpo-bfcl-lock"


def _self_check(recipe: VenvRecipe, venv_dir: Path) -> None:
    recipe.run([str(recipe.python(venv_dir)), "-I", str(WORKER_SCRIPT), "--self-check"], "BFCL import self-check")


def _run_env() -> dict[str, str]:
    return {"BFCL_PROJECT_ROOT": str(Path(os.environ.get("TMPDIR", "/tmp")) / "awpo-bfcl-selfcheck")}


RECIPE = VenvRecipe(
    label="BFCL", dirname=".venv-bfcl", cache_name="venv-bfcl", env_var=VENV_ENV_VAR,
    requirements=REQUIREMENTS_FILE, stamp_name=STAMP_NAME, lock_name=LOCK_NAME,
    note=f"bfcl-eval=={BFCL_EVAL_VERSION}, first use: about a minute", run_env=_run_env, finish=_self_check,
)


def default_venv_dir() -> Path:
    """Where the BFCL venv lives when ``$AWPO_BFCL_VENV`` is not set."""
    return RECIPE.default_dir()


def requirements_hash() -> str:
    return RECIPE.requirements_hash()


def is_ready(venv_dir: Path) -> bool:
    """True when the venv exists and was installed from the current requirements file."""
    return RECIPE.is_ready(venv_dir)


def ensure_venv(venv_dir: str | os.PathLike | None = None) -> Path:
    """Create (first use) or reuse the BFCL venv; return the path of its python."""
    return RECIPE.ensure(venv_dir)


def _run(command: list[str], what: str) -> None:
    RECIPE.run(command, what)


def main(argv: list[str] | None = None) -> int:
    return venv_main(RECIPE, argv, prog="python -m awpo.bfcl.venv", description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
