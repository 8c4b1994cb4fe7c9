"""BFCL's official checkers, run in the BFCL venv as a subprocess (``_worker.py``) and driven from here.

    with BfclChecker() as bfcl:
        entries = bfcl.load_entries("simple_python", limit=5)
        verdicts = bfcl.score("simple_python", [{"id": e["id"], "result": text} for e, text in ...])
        episodes = bfcl.run_multi_turn("multi_turn_base", generate_fn, limit=3)

Each checker gets its own scratch ``BFCL_PROJECT_ROOT`` (BFCL writes folders on import), removed on
close. The worker's stderr (BFCL prints progress) goes to a log file there; its tail is quoted when
the worker fails.

What is guaranteed about untrusted model output: multi-turn calls reach BFCL's ``eval()`` only as a
call of one of the entry's backend methods with literal plain-data arguments (see ``_worker.py``);
other calls never run. An allowed method can still be slow, so every request has a timeout
(``request_timeout_s``): once the worker has started on a request, each wait for its next message
(the next scored item, the next generation batch or progress report) is limited, and a worker that
stays silent longer is killed and restarted. ``score`` then records that item as failed
(``error_type`` ``"awpo:timeout"``) and goes on with the next ones; ``run_multi_turn`` records the
hung episode as stopped (``error`` says it timed out) and replays the episodes it interrupted. The
worker is not a sandbox: no memory, file-system or network limits are imposed on it.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .data import ALL_CATEGORIES, is_multi_turn
from .generate import GenerateFn, GenerationRequest, generate_all
from .venv import WORKER_SCRIPT, ensure_venv

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 180  # worker start, and each request's set-up (loading BFCL's data) before its first message
REQUEST_TIMEOUT_S = 60.0  # default: longest silence of a worker busy with a request
TIMEOUT_ERROR_TYPE = "awpo:timeout"


class BfclWorkerError(RuntimeError):
    """The BFCL worker process failed or answered with an error."""


class BfclTimeoutError(BfclWorkerError):
    """The worker did not answer in time; it has been killed (the next request starts a new one).
    ``started``: whether the worker had begun answering the request (sent any message for it)."""

    started: bool | None = None


class BfclChecker:
    def __init__(self, venv_dir: str | os.PathLike | None = None, *,
                 request_timeout_s: float | None = REQUEST_TIMEOUT_S):
        """``request_timeout_s``: how long the worker may stay silent while busy with a request (per
        scored item, per multi-turn step) before it is killed; None waits forever."""
        if request_timeout_s is not None and not request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be positive or None, got {request_timeout_s!r}")
        self.venv_dir = venv_dir
        self.request_timeout_s = request_timeout_s
        self._process: subprocess.Popen | None = None
        self._project_root: Path | None = None
        self._log = None
        self._received = bytearray()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> BfclChecker:
        if self._process is not None:
            return self
        python = ensure_venv(self.venv_dir)
        self._project_root = Path(tempfile.mkdtemp(prefix="awpo-bfcl-"))
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env["BFCL_PROJECT_ROOT"] = str(self._project_root)
        self._log = open(self._project_root / "worker.log", "w+")
        self._received = bytearray()
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

    def __enter__(self) -> BfclChecker:
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

    def score(self, category: str, items: list[dict], *, timeout_s: float | None = None) -> list[dict]:
        """Official verdicts ``{"id", "valid", "error", "error_type"}``, one per item, in order.

        Single-turn item: ``{"id", "result": completion_text}``; multi-turn: ``{"id", "result":
        [[step_text, ...] per turn]}`` (as ``run_multi_turn`` returns). Items for entries that are not
        BFCL's may carry ``function`` and ``ground_truth`` inline instead of a known id.

        An item whose scoring takes longer than ``timeout_s`` (default: ``request_timeout_s``) fails
        with ``error_type`` ``"awpo:timeout"``; the worker is killed, and a new one scores the rest.
        """
        _check_category(category)
        if not isinstance(items, list) or not all(isinstance(i, dict) and "result" in i for i in items):
            raise ValueError("items must be a list of dicts with a 'result'")
        timeout_s = self._timeout(timeout_s)
        verdicts: list[dict] = []
        while len(verdicts) < len(items):
            done = len(verdicts)

            def collect(progress: dict) -> None:
                if "verdict" in progress:
                    verdicts.append(progress["verdict"])

            try:
                result = self._request("score", on_progress=collect, timeout_s=timeout_s,
                                       category=category, items=items[done:])
            except BfclTimeoutError as exc:
                if exc.started is False:  # still loading the data: no item to blame
                    raise
                if len(verdicts) == len(items):  # only the closing answer was missing
                    break
                culprit = items[len(verdicts)]  # verdicts arrive in order, one per finished item
                logger.warning("BFCL worker: scoring %r timed out after %s s; worker restarted",
                               culprit.get("id"), timeout_s)
                verdicts.append({"id": culprit.get("id"), "valid": False, "error_type": TIMEOUT_ERROR_TYPE,
                                 "error": [f"timed out: scoring took longer than {timeout_s} s; the BFCL "
                                           "worker was killed and restarted"]})
                continue
            verdicts[done:] = result  # the worker's list is authoritative for this request
        return verdicts

    def run_multi_turn(self, category: str, generate_fn: GenerateFn, *, ids: list[str] | None = None,
                       limit: int | None = None, max_concurrency: int = 8, on_episode=None,
                       timeout_s: float | None = None) -> list[dict]:
        """Play multi-turn entries through BFCL's own loop and backends, ``generate_fn`` as the model.

        Returns ``[{"id", "result", "error"}]``: ``result`` is BFCL's per-turn list of per-step model
        responses, ``error`` says why an episode stopped early (e.g. a generation failure).
        Up to ``max_concurrency`` episodes advance together, so the model sees batches.
        ``on_episode(progress)`` is called as each episode ends (``{"id", "finished", "total"}``).

        If the worker stays silent for ``timeout_s`` (default ``request_timeout_s``) while executing
        the calls of a batch, it is killed and restarted. If one episode of that batch was still
        running, it ends with ``result`` None and an ``error`` saying it timed out; if several were,
        each is replayed alone (from its start, asking ``generate_fn`` again) to find the one that
        hangs. Episodes that had not finished are replayed; finished ones are kept.
        """
        if not is_multi_turn(category):
            raise ValueError(f"category must be a multi-turn category, got {category!r}")
        timeout_s = self._timeout(timeout_s)
        outcomes: dict[str, dict] = {}
        in_flight: set[str] = set()  # the last batch sent to the worker: the episodes executing calls
        total = {"n": None}

        def answer(raw_requests: list[dict]) -> dict:
            requests = [GenerationRequest(entry_id=r["entry_id"], category=category, messages=r["messages"],
                                          tools=r["tools"], turn=r["turn"], step=r["step"]) for r in raw_requests]
            results = generate_all(generate_fn, requests)
            in_flight.clear()
            in_flight.update(r.entry_id for r in requests)
            return {"texts": [r.text for r in results], "errors": [r.error for r in results]}

        def finished(outcome: dict) -> None:
            outcomes[outcome["id"]] = outcome
            if on_episode is not None:
                on_episode({"id": outcome["id"], "finished": len(outcomes), "total": total["n"]})

        def progress(update: dict) -> None:
            if total["n"] is None:
                total["n"] = update["total"]
            finished(update["outcome"])

        order: list[str] | None = None
        runs = [(ids, limit, max_concurrency)]
        while runs:
            run_ids, run_limit, concurrency = runs.pop(0)
            in_flight.clear()
            try:
                run_order = self._request("multi_turn", on_generate=answer, on_progress=progress,
                                          timeout_s=timeout_s, category=category, ids=run_ids, limit=run_limit,
                                          max_concurrency=concurrency)
                order = order or run_order
                continue
            except BfclTimeoutError:
                suspects = in_flight - outcomes.keys()
                if not suspects:  # not while executing model calls: nothing to blame
                    raise
            if order is None:  # the first run: learn which entries it covers
                order = run_ids if run_ids is not None else [
                    entry["id"] for entry in self.load_entries(category, limit=run_limit)]
                total["n"] = len(order)
            if len(suspects) == 1:
                (culprit,) = suspects
                logger.warning("BFCL worker: episode %r timed out after %s s; worker restarted", culprit, timeout_s)
                finished({"id": culprit, "result": None, "error_type": TIMEOUT_ERROR_TYPE,
                          "error": f"timed out: the BFCL worker was silent for more than {timeout_s} s while "
                                   "executing this episode's calls; it was killed and restarted"})
            else:  # replay each suspect alone: the one that hangs again is the culprit
                runs[:0] = [([i], None, 1) for i in order if i in suspects]
            pending = [i for i in (run_ids or order) if i not in outcomes and i not in suspects]
            if pending:
                runs.append((pending, None, concurrency))
        return [outcomes[i] for i in order]

    def ground_truth_calls(self, category: str, *, ids: list[str] | None = None,
                           limit: int | None = None) -> list[dict]:
        """Multi-turn ground truths as calls: ``[{"id", "turns": [[{"name", "arguments"}, ...], ...]}]``."""
        if not is_multi_turn(category):
            raise ValueError(f"category must be a multi-turn category, got {category!r}")
        return self._request("ground_truth_calls", category=category, ids=ids, limit=limit)

    # -- protocol -------------------------------------------------------------------------------
    def _timeout(self, timeout_s: float | None) -> float | None:
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        return timeout_s

    def _request(self, op: str, on_generate=None, on_progress=None, timeout_s: float | None = None, **payload):
        """Send one request and serve the worker's messages until its answer. Until the worker's first
        message the wait is limited by ``max(timeout_s, STARTUP_TIMEOUT_S)`` (it may be loading BFCL's
        data), then each wait by ``timeout_s`` (None: no limit at all); time spent in ``on_generate`` does not
        count. On a timeout the worker is killed and ``BfclTimeoutError`` raised (``started``: whether the worker
        had sent a message for this request)."""
        if self._process is None:
            self.start()
        started = False
        try:
            self._send({"op": op, **payload})
            while True:
                limit = timeout_s if started or timeout_s is None else max(timeout_s, STARTUP_TIMEOUT_S)
                message = self._receive(timeout=limit, timeout_error=BfclTimeoutError)
                started = True
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
        except BfclTimeoutError as exc:
            exc.started = started
            self._discard()
            raise
        except BfclWorkerError:
            raise
        except BaseException:
            # Interrupted mid-conversation (e.g. Ctrl-C, or a generate callback that raised): the
            # worker may be waiting for an answer it will never get, so it cannot be reused.
            self._discard()
            raise

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def _discard(self) -> None:
        """Kill the worker and drop its scratch folder; the next request starts a fresh one."""
        self._kill()
        self.close()

    def _send(self, message: dict) -> None:
        try:
            self._process.stdin.write(json.dumps(message) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise self._failure(f"cannot write to the worker ({exc})") from exc

    def _receive(self, timeout: float | None = None, timeout_error=BfclWorkerError) -> dict:
        # Reads the pipe's file descriptor directly and splits lines here: with a buffered reader,
        # select() would not see a line already sitting in the reader's buffer.
        fd = self._process.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        scanned = 0
        while (end := self._received.find(b"\n", scanned)) < 0:
            scanned = len(self._received)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise self._failure(f"no answer within {timeout:g} s", timeout_error)
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise self._failure("the worker exited")
            self._received += chunk
        line = bytes(self._received[:end])
        del self._received[:end + 1]
        return json.loads(line)

    def _failure(self, what: str, error_class=BfclWorkerError) -> BfclWorkerError:
        tail = ""
        if self._log is not None:
            self._log.flush()
            self._log.seek(0)
            tail = self._log.read()[-3000:]
        return error_class(f"BFCL worker: {what}\n--- worker log (tail) ---\n{tail}")


def _check_category(category: str) -> None:
    if category not in ALL_CATEGORIES:
        raise ValueError(f"category: unknown BFCL category {category!r}; choose from {', '.join(ALL_CATEGORIES)}")
