"""BFCL's official checkers, run in the BFCL venv as a subprocess (``_worker.py``) and driven from here.

    with BfclChecker() as bfcl:
        entries = bfcl.load_entries("simple_python", limit=5)
        verdicts = bfcl.score("simple_python", [{"id": e["id"], "result": text} for e, text in ...])
        episodes = bfcl.run_multi_turn("multi_turn_base", generate_fn, limit=3)

Each checker gets its own scratch ``BFCL_PROJECT_ROOT`` (BFCL writes folders on import), removed on
close. The worker's stderr (BFCL prints progress) goes to a log file there; its tail is quoted when
the worker fails.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import subprocess
import tempfile
from pathlib import Path

from .data import ALL_CATEGORIES, is_multi_turn
from .generate import GenerateFn, GenerationRequest, generate_all
from .venv import WORKER_SCRIPT, ensure_venv

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 180


class BfclWorkerError(RuntimeError):
    """The BFCL worker process failed or answered with an error."""


class BfclChecker:
    def __init__(self, venv_dir: str | os.PathLike | None = None):
        self.venv_dir = venv_dir
        self._process: subprocess.Popen | None = None
        self._project_root: Path | None = None
        self._log = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "BfclChecker":
        if self._process is not None:
            return self
        python = ensure_venv(self.venv_dir)
        self._project_root = Path(tempfile.mkdtemp(prefix="awpo-bfcl-"))
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env["BFCL_PROJECT_ROOT"] = str(self._project_root)
        self._log = open(self._project_root / "worker.log", "w+")
        self._process = subprocess.Popen([str(python), "-I", str(WORKER_SCRIPT)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)
        ready = self._receive(timeout=STARTUP_TIMEOUT_S)
        if ready.get("result") != "ready":
            raise self._failure(f"unexpected first message {ready!r}")
        return self

    def close(self) -> None:
        if self._process is not None:
            try:
                if self._process.poll() is None:
                    self._send({"op": "exit"})
                    self._process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._project_root is not None:
            shutil.rmtree(self._project_root, ignore_errors=True)
            self._project_root = None

    def __enter__(self) -> "BfclChecker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- operations -----------------------------------------------------------------------------
    def info(self) -> dict:
        """Versions inside the BFCL venv: ``{"bfcl_eval", "python", "model"}``."""
        return self._request("hello")

    def load_entries(self, category: str, *, ids: list[str] | None = None, limit: int | None = None) -> list[dict]:
        """BFCL entries as its generation sees them, each with its ``ground_truth`` (possible answers;
        ``[]`` for irrelevance). ``limit`` takes the first entries in BFCL's order."""
        _check_category(category)
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
        return self._request("load", category=category, ids=ids, limit=limit)

    def score(self, category: str, items: list[dict]) -> list[dict]:
        """Official verdicts ``{"id", "valid", "error", "error_type"}``, one per item, in order.

        Single-turn item: ``{"id", "result": completion_text}``; multi-turn: ``{"id", "result":
        [[step_text, ...] per turn]}`` (as ``run_multi_turn`` returns). Items for entries that are not
        BFCL's may carry ``function`` and ``ground_truth`` inline instead of a known id.
        """
        _check_category(category)
        if not isinstance(items, list) or not all(isinstance(i, dict) and "result" in i for i in items):
            raise ValueError("items must be a list of dicts with a 'result'")
        return self._request("score", category=category, items=items) if items else []

    def run_multi_turn(self, category: str, generate_fn: GenerateFn, *, ids: list[str] | None = None,
                       limit: int | None = None, max_concurrency: int = 8, on_episode=None) -> list[dict]:
        """Play multi-turn entries through BFCL's own loop and backends, ``generate_fn`` as the model.

        Returns ``[{"id", "result", "error"}]``: ``result`` is BFCL's per-turn list of per-step model
        responses, ``error`` says why an episode stopped early (e.g. a generation failure).
        Up to ``max_concurrency`` episodes advance together, so the model sees batches.
        ``on_episode(progress)`` is called as each episode ends (``{"id", "finished", "total"}``).
        """
        if not is_multi_turn(category):
            raise ValueError(f"category must be a multi-turn category, got {category!r}")

        def answer(raw_requests: list[dict]) -> dict:
            requests = [GenerationRequest(entry_id=r["entry_id"], category=category, messages=r["messages"],
                                          tools=r["tools"], turn=r["turn"], step=r["step"]) for r in raw_requests]
            results = generate_all(generate_fn, requests)
            return {"texts": [r.text for r in results], "errors": [r.error for r in results]}

        return self._request("multi_turn", on_generate=answer, on_progress=on_episode, category=category,
                             ids=ids, limit=limit, max_concurrency=max_concurrency)

    def ground_truth_calls(self, category: str, *, ids: list[str] | None = None,
                           limit: int | None = None) -> list[dict]:
        """Multi-turn ground truths as calls: ``[{"id", "turns": [[{"name", "arguments"}, ...], ...]}]``."""
        if not is_multi_turn(category):
            raise ValueError(f"category must be a multi-turn category, got {category!r}")
        return self._request("ground_truth_calls", category=category, ids=ids, limit=limit)

    # -- protocol -------------------------------------------------------------------------------
    def _request(self, op: str, on_generate=None, on_progress=None, **payload):
        if self._process is None:
            self.start()
        try:
            self._send({"op": op, **payload})
            while True:
                message = self._receive()
                if "generate" in message:
                    if on_generate is None:
                        raise self._failure("worker asked for generations outside a multi-turn run")
                    self._send(on_generate(message["generate"]))
                elif "progress" in message:
                    if on_progress is not None:
                        on_progress(message["progress"])
                elif not message.get("ok"):
                    raise BfclWorkerError(f"BFCL worker: {op} failed: {message.get('error')}")
                else:
                    return message["result"]
        except BfclWorkerError:
            raise
        except BaseException:
            # Interrupted mid-conversation (e.g. Ctrl-C, or a generate callback that raised): the
            # worker may be waiting for an answer it will never get, so it cannot be reused.
            self._kill()
            raise

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def _send(self, message: dict) -> None:
        try:
            self._process.stdin.write(json.dumps(message) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise self._failure(f"cannot write to the worker ({exc})") from exc

    def _receive(self, timeout: float | None = None) -> dict:
        if timeout is not None:
            readable, _, _ = select.select([self._process.stdout], [], [], timeout)
            if not readable:
                raise self._failure(f"no answer within {timeout:.0f} s")
        line = self._process.stdout.readline()
        if not line:
            raise self._failure("the worker exited")
        return json.loads(line)

    def _failure(self, what: str) -> BfclWorkerError:
        tail = ""
        if self._log is not None:
            self._log.flush()
            self._log.seek(0)
            tail = self._log.read()[-3000:]
        return BfclWorkerError(f"BFCL worker: {what}\n--- worker log (tail) ---\n{tail}")


def _check_category(category: str) -> None:
    if category not in ALL_CATEGORIES:
        raise ValueError(f"category: unknown BFCL category {category!r}; choose from {', '.join(ALL_CATEGORIES)}")
