"""Helpers of the judge tests (test_judge*.py); no tests here. Run as a script, it is the server.

- ``LocalServer``/``start_local_server``: a small local HTTP server speaking the OpenAI chat
  completions schema, in its own process (``python test_judge_support.py``). It stands in for
  `vllm serve`, whose start-up takes over a minute on the CI machine's two cores (the real server is
  exercised by an opt-in test in test_judge_engine.py). Being a process, a test can kill it mid-step.
- ``ThinkingEngine``: a test double over the real tiny rollout engine. The tiny random model never
  writes ``<think>``, and a completion without reasoning is never sent to the judge; this double
  prefixes each completion's text with a numbered reasoning block (token ids and log-probs stay the
  engine's own), so that a training step really asks the judge.

The server answers ``GET /v1/models`` -> ``{"data": [{"id": MODEL}]}`` (404 with ``--no-models``) and
``POST /v1/chat/completions`` -> ``{"choices": [{"index": 0, "message": {"role": "assistant",
"content": ...}}]}``, the content chosen from markers in the user message (the judge's rubric prompt,
which holds the completion's reasoning): ``grade-N`` -> "Score: N/10"; ``HANG`` -> never answers;
``FAIL503`` -> HTTP 503; ``NOTJSON`` -> a body that is not JSON; ``NOSCORE`` -> a reply without a
score; ``slow-K`` -> answers after K * 50 ms; else "Score: 5/10". Options: ``--model NAME``,
``--api-key KEY`` (401 without it), ``--delay S`` before every answer, ``--die-after N`` (SIGKILL
itself right after answering N requests), ``--log FILE`` (one JSON line per event: {"event":
"request" | "answer", "item": "item-K", "inflight": n}). It prints ``PORT n`` once it listens on
127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ITEM = re.compile(r"item-\d+")
_GRADE = re.compile(r"grade-(\d+)")
_SLOW = re.compile(r"slow-(\d+)")


class State:
    def __init__(self, options):
        self.options = options
        self.lock = threading.Lock()
        self.inflight = 0
        self.answered = 0

    def log(self, **event) -> None:
        if self.options.log:
            with self.lock, open(self.options.log, "a") as file:
                file.write(json.dumps(event) + "\n")


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            if not self.authorized():
                return
            if self.path.rstrip("/") != "/v1/models" or state.options.no_models:
                return self.send_json(404, {"error": {"message": "not found"}})
            self.send_json(200, {"object": "list", "data": [{"id": state.options.model, "object": "model"}]})

        def do_POST(self):
            if not self.authorized():
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if self.path != "/v1/chat/completions":
                return self.send_json(404, {"error": {"message": "not found"}})
            if body.get("model") != state.options.model:
                return self.send_json(404, {"error": {"message": f"model {body.get('model')!r} not served"}})
            prompt = body["messages"][-1]["content"]
            item = (_ITEM.findall(prompt) or ["?"])[-1]
            with state.lock:
                state.inflight += 1
                inflight = state.inflight
            state.log(event="request", item=item, inflight=inflight)
            try:
                self.answer(prompt, item)
            finally:
                with state.lock:
                    state.inflight -= 1

        def answer(self, prompt: str, item: str):
            if "HANG" in prompt:
                time.sleep(3600)
                return
            slow = _SLOW.findall(prompt)
            time.sleep(state.options.delay + (0.05 * int(slow[-1]) if slow else 0.0))
            if "FAIL503" in prompt:
                return self.send_json(503, {"error": {"message": "overloaded"}})
            if "NOTJSON" in prompt:
                return self.send_raw(200, b"this is not json")
            grade = _GRADE.findall(prompt)
            content = f"The reasoning was read.\nScore: {grade[-1] if grade else 5}/10"
            if "NOSCORE" in prompt:
                content = "I cannot grade this."
            with state.lock:
                state.answered += 1
                answered = state.answered
            # logged before the reply goes out: a reply the client got is always in the log, even when a
            # concurrent request's --die-after kill comes between sending and logging
            state.log(event="answer", item=item)
            self.send_json(200, {"id": "chatcmpl-local", "object": "chat.completion", "model": state.options.model,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": content}}]})
            if state.options.die_after and answered >= state.options.die_after:
                os.kill(os.getpid(), signal.SIGKILL)

        def authorized(self) -> bool:
            key = state.options.api_key
            if key and self.headers.get("Authorization") != f"Bearer {key}":
                self.send_json(401, {"error": {"message": "bad key"}})
                return False
            return True

        def send_json(self, status: int, payload: dict):
            self.send_raw(status, json.dumps(payload).encode(), "application/json")

        def send_raw(self, status: int, data: bytes, kind: str = "text/plain"):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

    return Handler



# ----------------------------------------------------------------------------------------------
# test side
# ----------------------------------------------------------------------------------------------

class LocalServer:
    """A running local server process: ``url``, ``events()`` from its log, ``kill()``."""

    def __init__(self, process, port: int, log_path: str):
        self.process = process
        self.url = f"http://127.0.0.1:{port}/v1"
        self.log_path = log_path

    def events(self, kind: str | None = None) -> list[dict]:
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as file:
            events = [json.loads(line) for line in file if line.strip()]
        return [e for e in events if kind is None or e["event"] == kind]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def start_local_server(log_path: str, *args: str, start_timeout_s: float = 20.0) -> LocalServer:
    """Start the server (``args``: its options) and wait, at most ``start_timeout_s``, for its port."""
    import subprocess

    process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--log", str(log_path), *args],
                               stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(start_timeout_s)
    if not lines or not lines[0].startswith("PORT "):
        process.kill()
        raise RuntimeError(f"the local OpenAI-schema server did not start within {start_timeout_s} s")
    return LocalServer(process, int(lines[0].split()[1]), str(log_path))


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThinkingEngine:
    """The real rollout engine, with ``<think>item-K grade-G ...</think>`` put before each completion's
    text; with ``every=2``, before every second one only (the others have no reasoning)."""

    def __init__(self, engine, grade: int = 8, every: int = 1):
        self.engine = engine
        self.grade = grade
        self.every = every
        self.count = 0

    def generate(self, prompts, **kwargs):
        groups = self.engine.generate(prompts, **kwargs)
        for group in groups:
            for completion in group:
                self.count += 1
                if self.count % self.every == 0:
                    completion.text = (f"<think>item-{self.count} grade-{self.grade} The user wants the weather, "
                                       f"so I call get_weather.</think>") + completion.text
        return groups

    def sync_weights(self, model) -> None:
        self.engine.sync_weights(model)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="local-judge")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--die-after", type=int, default=0)
    parser.add_argument("--log", default="")
    parser.add_argument("--no-models", action="store_true")
    options = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(State(options)))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
