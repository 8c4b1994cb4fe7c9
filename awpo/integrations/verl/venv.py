"""The separate Python environment that holds verl (``.venv-verl``).

verl 0.9.1 pins transformers>=5.5.3,<5.11, which does not overlap the training environment's 5.19.0,
so verl lives in a venv of its own, created on first use from the pinned ``requirements-verl.txt``
(installed with ``--no-deps``: the file lists every package, CPU torch included), with this project
installed into it without deps (editable from a source checkout, so the venv always runs the
checkout's code). Its location is ``$AWPO_VERL_VENV`` when set, else ``<repo>/.venv-verl`` for a
source checkout, else ``$XDG_CACHE_HOME/awpo/venv-verl``. The stamp covers the requirements and
``pyproject.toml`` (the plugin's ``verl.plugins`` entry point lives there), so a change to either
re-installs into the same venv. Locking, stamps and error messages: ``awpo.isolated_venv``.

    python -m awpo.integrations.verl.venv --ensure     # create it if needed, print its python
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ...isolated_venv import REPO_ROOT, VenvRecipe, source_checkout
from ...isolated_venv import main as venv_main

VERL_VERSION = "0.9.1"
REQUIREMENTS_FILE = Path(__file__).with_name("requirements-verl.txt")
VENV_ENV_VAR = "AWPO_VERL_VENV"
PROJECT_ROOT = Path(__file__).resolve().parents[3]  # the directory that holds the `awpo` package
SELF_CHECK = ("import awpo.integrations.verl as plugin; import verl.trainer.ppo.core_algos as algos; "
              "missing = [n for n in plugin.ESTIMATOR_NAMES if n not in algos.ADV_ESTIMATOR_REGISTRY]; "
              "assert not missing, missing; algos.get_policy_loss_fn(plugin.LOSS_NAME); print('verl plugin ok')")


def _install_project(recipe: VenvRecipe, venv_dir: Path) -> None:
    """This project into the venv, without deps: editable from a checkout, else a path entry."""
    if source_checkout() is not None:
        recipe.run([*recipe.pip(venv_dir), "--no-deps", "--no-build-isolation", "-e", str(REPO_ROOT)],
                   "pip install --no-deps -e <repo>")
    else:  # an installed copy of awpo: put the directory that holds it on the venv's path
        python = f"python{sys.version_info.major}.{sys.version_info.minor}"
        site_packages = Path(venv_dir) / "lib" / python / "site-packages"
        (site_packages / "awpo-project.pth").write_text(str(PROJECT_ROOT) + "\n")


def _finish(recipe: VenvRecipe, venv_dir: Path) -> None:
    _install_project(recipe, venv_dir)
    with tempfile.TemporaryDirectory() as scratch:  # not the checkout: only what is installed may count
        recipe.run([str(recipe.python(venv_dir)), "-I", "-c", SELF_CHECK], "verl plugin self-check", cwd=scratch)


RECIPE = VenvRecipe(
    label="verl", dirname=".venv-verl", cache_name="venv-verl", env_var=VENV_ENV_VAR,
    requirements=REQUIREMENTS_FILE, stamp_name=".awpo-verl-installed", lock_name=".awpo-verl-lock",
    hashed_files=(REPO_ROOT / "pyproject.toml",),
    note=f"verl=={VERL_VERSION} and CPU torch, 1.9 GB, first use: a few minutes", finish=_finish,
    run_env=lambda: {"OMP_NUM_THREADS": "1"},
)


def default_venv_dir() -> Path:
    """Where the verl venv lives when ``$AWPO_VERL_VENV`` is not set."""
    return RECIPE.default_dir()


def is_ready(venv_dir: str | os.PathLike) -> bool:
    """True when the venv exists and was installed from the current requirements and pyproject.toml."""
    return RECIPE.is_ready(venv_dir)


def ensure_venv(venv_dir: str | os.PathLike | None = None) -> Path:
    """Create (first use) or reuse the verl venv; return the path of its python."""
    return RECIPE.ensure(venv_dir)


def main(argv: list[str] | None = None) -> int:
    return venv_main(RECIPE, argv, prog="python -m awpo.integrations.verl.venv", description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
