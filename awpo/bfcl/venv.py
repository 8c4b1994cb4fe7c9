"""The separate Python environment that holds BFCL's official checkers.

``bfcl-eval`` pins numpy==1.26.4 and old API SDKs that clash with the training environment, so it
lives in a venv of its own, created on first use from the pinned ``requirements-bfcl.txt`` (installed
with ``--no-deps``: the file lists every package) and reused afterwards. Its location is
``$AWPO_BFCL_VENV`` when set, else ``<repo>/.venv-bfcl`` for a source checkout, else
``$XDG_CACHE_HOME/awpo/venv-bfcl``.

Creation is idempotent and safe to race: a lock file serialises concurrent callers, and a stamp
file holding the hash of the requirements marks a finished install (a changed requirements file
triggers a re-install into the same venv).

    python -m awpo.bfcl.venv --ensure     # create it if needed, print its python
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
from pathlib import Path

logger = logging.getLogger(__name__)

BFCL_EVAL_VERSION = "2026.3.23"
REQUIREMENTS_FILE = Path(__file__).with_name("requirements-bfcl.txt")
WORKER_SCRIPT = Path(__file__).with_name("_worker.py")
VENV_ENV_VAR = "AWPO_BFCL_VENV"
STAMP_NAME = ".awpo-bfcl-installed"
LOCK_NAME = ".awpo-bfcl-lock"
PIP_TIMEOUT_S = 1800


def default_venv_dir() -> Path:
    """Where the BFCL venv lives when ``$AWPO_BFCL_VENV`` is not set."""
    override = os.environ.get(VENV_ENV_VAR)
    if override:
        return Path(override).expanduser().resolve()
    repo_root = Path(__file__).resolve().parents[2]
    if (repo_root / "setup.py").exists() and os.access(repo_root, os.W_OK):
        return repo_root / ".venv-bfcl"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "awpo" / "venv-bfcl"


def venv_python(venv_dir: Path) -> Path:
    return Path(venv_dir) / "bin" / "python"


def requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS_FILE.read_bytes()).hexdigest()[:16]


def is_ready(venv_dir: Path) -> bool:
    """True when the venv exists and was installed from the current requirements file."""
    stamp = Path(venv_dir) / STAMP_NAME
    return venv_python(venv_dir).exists() and stamp.exists() and stamp.read_text().strip() == requirements_hash()


def ensure_venv(venv_dir: str | os.PathLike | None = None) -> Path:
    """Create (first use) or reuse the BFCL venv; return the path of its python."""
    venv_dir = Path(venv_dir).resolve() if venv_dir else default_venv_dir()
    if is_ready(venv_dir):
        return venv_python(venv_dir)
    venv_dir.mkdir(parents=True, exist_ok=True)  # `python -m venv` fills an existing directory
    with open(venv_dir / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if not is_ready(venv_dir):
            _build(venv_dir)
    return venv_python(venv_dir)


def _build(venv_dir: Path) -> None:
    started = time.monotonic()
    logger.warning("Creating the BFCL venv at %s (bfcl-eval==%s, first use: about a minute)",
                   venv_dir, BFCL_EVAL_VERSION)
    if not venv_python(venv_dir).exists():
        _run([sys.executable, "-m", "venv", str(venv_dir)], "python -m venv")
    pip = [str(venv_python(venv_dir)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, "--no-deps", "-r", str(REQUIREMENTS_FILE)], "pip install -r requirements-bfcl.txt")
    _run([str(venv_python(venv_dir)), "-I", str(WORKER_SCRIPT), "--self-check"], "BFCL import self-check")
    (venv_dir / STAMP_NAME).write_text(requirements_hash() + "\n")
    logger.warning("BFCL venv ready at %s (%.0f s)", venv_dir, time.monotonic() - started)


def _run(command: list[str], what: str) -> None:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the training env's packages must not leak into the BFCL venv
    env.setdefault("BFCL_PROJECT_ROOT", str(Path(os.environ.get("TMPDIR", "/tmp")) / "awpo-bfcl-selfcheck"))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=PIP_TIMEOUT_S)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise RuntimeError(f"Setting up the BFCL venv failed at step '{what}' "
                           f"(exit {result.returncode}):\n{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m awpo.bfcl.venv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ensure", action="store_true", help="create the venv if needed and print its python")
    parser.add_argument("--venv", default=None, help=f"venv directory (default: ${VENV_ENV_VAR} or <repo>/.venv-bfcl)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    venv_dir = Path(args.venv).resolve() if args.venv else default_venv_dir()
    if args.ensure:
        print(ensure_venv(venv_dir))
        return 0
    print(f"{venv_dir} ({'ready' if is_ready(venv_dir) else 'not created yet'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
