"""Virtual environments of their own, for packages whose pins clash with the training environment.

BFCL's checker (``awpo.bfcl.venv``) and verl (``awpo.integrations.verl.venv``) each live in a venv
created on first use from a pinned requirements file, installed with ``--no-deps`` (the file lists
every package), and reused afterwards. A ``VenvRecipe`` describes one such venv; this module does
the rest:

- location: ``$<env_var>`` when set, else ``<repo>/<dirname>`` for a writable source checkout, else
  ``$XDG_CACHE_HOME/awpo/<cache_name>``;
- creation is idempotent and safe to race: a lock file serialises concurrent callers, and a stamp
  file holding the hash of the requirements (and of ``hashed_files``) marks a finished install; a
  changed file triggers a re-install into the same venv;
- each setup step runs as a subprocess without the caller's ``PYTHONPATH``, and a failing step
  raises ``RuntimeError`` naming the step and showing the end of its output.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PIP_TIMEOUT_S = 1800


def source_checkout() -> Path | None:
    """The repository root when this package runs from a writable source checkout, else None."""
    if (REPO_ROOT / "pyproject.toml").exists() and os.access(REPO_ROOT, os.W_OK):
        return REPO_ROOT
    return None


@dataclass(frozen=True)
class VenvRecipe:
    """How to build one venv: where it lives, what it installs, and what runs after pip.

    ``finish(recipe, venv_dir)`` runs after the pinned install (install this project, a self-check);
    ``run_env()`` returns variables added to the environment of every setup step (``os.environ`` wins);
    ``note`` is shown when the build starts.
    """

    label: str                    # in messages: "BFCL", "verl"
    dirname: str                  # in a source checkout: <repo>/<dirname>
    cache_name: str               # otherwise: $XDG_CACHE_HOME/awpo/<cache_name>
    env_var: str                  # overrides the location
    requirements: Path
    stamp_name: str
    lock_name: str
    hashed_files: tuple[Path, ...] = ()
    note: str = "first use: about a minute"
    run_env: Callable[[], Mapping[str, str]] | None = None
    finish: Callable[[VenvRecipe, Path], None] | None = None

    def default_dir(self) -> Path:
        """Where the venv lives when ``$<env_var>`` is not set."""
        override = os.environ.get(self.env_var)
        if override:
            return Path(override).expanduser().resolve()
        root = source_checkout()
        if root is not None:
            return root / self.dirname
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return cache / "awpo" / self.cache_name

    def resolve_dir(self, venv_dir: str | os.PathLike | None) -> Path:
        return Path(venv_dir).resolve() if venv_dir else self.default_dir()

    @staticmethod
    def python(venv_dir: str | os.PathLike) -> Path:
        return Path(venv_dir) / "bin" / "python"

    def requirements_hash(self) -> str:
        digest = hashlib.sha256(self.requirements.read_bytes())
        for path in self.hashed_files:
            digest.update(path.read_bytes() if path.exists() else b"")
        return digest.hexdigest()[:16]

    def is_ready(self, venv_dir: str | os.PathLike) -> bool:
        """True when the venv exists and was installed from the current requirements."""
        stamp = Path(venv_dir) / self.stamp_name
        return (self.python(venv_dir).exists() and stamp.exists()
                and stamp.read_text().strip() == self.requirements_hash())

    def ensure(self, venv_dir: str | os.PathLike | None = None) -> Path:
        """Create (first use) or reuse the venv; return the path of its python."""
        venv_dir = self.resolve_dir(venv_dir)
        if self.is_ready(venv_dir):
            return self.python(venv_dir)
        venv_dir.mkdir(parents=True, exist_ok=True)  # `python -m venv` fills an existing directory
        with open(venv_dir / self.lock_name, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
            if not self.is_ready(venv_dir):
                self.build(venv_dir)
        return self.python(venv_dir)

    def build(self, venv_dir: Path) -> None:
        started = time.monotonic()
        logger.warning("Creating the %s venv at %s (%s)", self.label, venv_dir, self.note)
        if not self.python(venv_dir).exists():
            self.run([sys.executable, "-m", "venv", str(venv_dir)], "python -m venv")
        self.run([*self.pip(venv_dir), "--no-deps", "-r", str(self.requirements)],
                 f"pip install -r {self.requirements.name}")
        if self.finish is not None:
            self.finish(self, venv_dir)
        (venv_dir / self.stamp_name).write_text(self.requirements_hash() + "\n")
        logger.warning("%s venv ready at %s (%.0f s)", self.label, venv_dir, time.monotonic() - started)

    def pip(self, venv_dir: Path) -> list[str]:
        """The venv's ``pip install`` command line (quiet)."""
        return [str(self.python(venv_dir)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]

    def run(self, command: list[str], what: str, *, cwd: str | os.PathLike | None = None) -> None:
        """Run one setup step; RuntimeError naming the step (and the end of its output) when it fails."""
        env = {**(self.run_env() if self.run_env else {}), **os.environ}
        env.pop("PYTHONPATH", None)  # the calling environment's packages must not leak into the venv
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=PIP_TIMEOUT_S, cwd=cwd)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-4000:]
            raise RuntimeError(f"Setting up the {self.label} venv failed at step '{what}' "
                               f"(exit {result.returncode}):\n{tail}")


def main(recipe: VenvRecipe, argv: list[str] | None, *, prog: str, description: str) -> int:
    """``python -m <module> [--ensure] [--venv DIR]``: create the venv if asked, print where it is."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--ensure", action="store_true", help="create the venv if needed and print its python")
    parser.add_argument("--venv", default=None,
                        help=f"venv directory (default: ${recipe.env_var} or <repo>/{recipe.dirname})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    venv_dir = recipe.resolve_dir(args.venv)
    if args.ensure:
        print(recipe.ensure(venv_dir))
        return 0
    print(f"{venv_dir} ({'ready' if recipe.is_ready(venv_dir) else 'not created yet'})")
    return 0
