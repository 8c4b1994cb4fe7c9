"""The server judge's limits and structured verdicts (awpo.judges.http): a total deadline per attempt
and per request, the reply size cap, and the ``response_format`` probe and fallback.

Against small servers in this process on 127.0.0.1: ``RawServer`` writes raw bytes on a socket (a
trickled answer, an endless body), ``ChatServer`` speaks the chat completions schema and decides
what to do with ``response_format``. Every server thread is a daemon with short socket timeouts and
bounded loops, and each test checks that its server's threads have ended.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from awpo.judges import OpenAIChatBackend
from awpo.judges.verdict import VERDICT_SCHEMA, parse_judge_score

EXPECTED_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": True}}


def chat_answer(content: str) -> bytes:
    return json.dumps({"id": "chatcmpl-local", "object": "chat.completion", "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}).encode()


def http_answer(status: int, body: bytes, *, reason: str = "OK") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


class RawServer:
    """A socket on 127.0.0.1 whose every connection gets its request read, then ``serve(conn, stop)``
    in its own daemon thread; ``close()`` stops it and says whether every thread ended."""

    def __init__(self, serve):
        self.serve = serve
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.stop = threading.Event()
        self.requests: list[bytes] = []
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(1.0)
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 1 << 20:
                    data += conn.recv(65536) or b"\r\n\r\n"
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536) or b" " * length
                self.requests.append(head)
                self.serve(conn, self.stop)
            except OSError:  # the client went away: what these servers wait for
                pass

    def close(self) -> bool:
        self.stop.set()
        self.accepter.join(5)
        self.listener.close()
        deadline = time.monotonic() + 5
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not self.accepter.is_alive() and not any(t.is_alive() for t in self.threads)


@pytest.fixture
def raw_server():
    started: list[RawServer] = []

    def start(serve) -> RawServer:
        started.append(RawServer(serve))
        return started[-1]

    yield start
    for server in started:
        assert server.close(), "a server thread did not end"


def trickle(answer: bytes, *, headers_at_once: bool):
    """Send ``answer`` one byte every 0.3 s (after its head at once with headers_at_once)."""
    head, _, body = answer.partition(b"\r\n\r\n")

    def serve(conn, stop):
        if headers_at_once:
            conn.sendall(head + b"\r\n\r\n")
        for byte in (body if headers_at_once else answer):
            if stop.wait(0.3):
                return
            conn.sendall(bytes([byte]))

    return serve


def endless(kind: str):
    """A body that never ends before the client closes: a Content-Length of 50 MB, chunks, or
    bytes until the connection closes (no length); 64 KiB at a time, 50 MB at most."""
    def serve(conn, stop):
        junk = b"x" * 65536
        if kind == "content-length":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n")
        elif kind == "chunked":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            junk = b"%x\r\n%s\r\n" % (len(junk), junk)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        for _ in range(50_000_000 // 65536):
            if stop.is_set():
                return
            conn.sendall(junk)

    return serve


def backend(url: str, **options) -> OpenAIChatBackend:
    settings = dict(model="m", timeout_s=1.0, max_retries=0, backoff_s=0.05, structured_output=False)
    settings.update(options)
    return OpenAIChatBackend(url, **settings)


# ----------------------------------------------------------------------------------------------
# the deadline
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers_at_once", [True, False], ids=["body-trickled", "all-trickled"])
def test_a_trickled_answer_fails_at_the_attempt_deadline_not_after_each_byte(raw_server, headers_at_once):
    answer = http_answer(200, chat_answer("The reasoning was read.\nScore: 7/10"))
    server = raw_server(trickle(answer, headers_at_once=headers_at_once))
    judge = backend(server.url, timeout_s=1.0, max_retries=0)
    started = time.monotonic()
    assert judge(["item-0"]) == [None]
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 3  # a bound, not a benchmark: one attempt of 1 s, not 0.3 s per byte
    assert judge.last_error == "deadline of 1 s passed"
    assert len(server.requests) == 1


def test_a_trickled_answer_is_retried_and_the_whole_request_stays_bounded(raw_server):
    server = raw_server(trickle(http_answer(200, chat_answer("Score: 7/10")), headers_at_once=True))
    judge = backend(server.url, timeout_s=1.0, max_retries=1, backoff_s=0.05)
    assert judge.total_deadline_s() == pytest.approx(2.05)
    started = time.monotonic()
    assert judge(["item-0", "item-1"]) == [None, None]
    elapsed = time.monotonic() - started
    assert 1.9 < elapsed < 4  # two attempts of 1 s each (concurrently for the two prompts)
    assert len(server.requests) == 4 and judge.last_error == "deadline of 1 s passed"


def test_a_server_that_never_answers_fails_at_the_deadline(raw_server):
    server = raw_server(lambda conn, stop: stop.wait(10))
    judge = backend(server.url, timeout_s=0.5, max_retries=2, backoff_s=0.05)
    started = time.monotonic()
    assert judge(["item-0"]) == [None]
    assert time.monotonic() - started < 3  # 3 attempts of 0.5 s and 0.05 + 0.1 s of pauses
    assert judge.last_error == "deadline of 0.5 s passed"
    # the server logs a request once it has read it: under load the last attempt may end before that
    assert 2 <= len(server.requests) <= 3


# ----------------------------------------------------------------------------------------------
# the size cap
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["content-length", "chunked", "until-close"])
def test_a_huge_reply_fails_at_once_on_the_size_cap(raw_server, kind):
    server = raw_server(endless(kind))
    judge = backend(server.url, timeout_s=5.0, max_retries=2)
    started = time.monotonic()
    assert judge(["item-0"]) == [None]
    assert time.monotonic() - started < 3
    assert "over the size cap of 1048576 bytes (max_reply_bytes)" in judge.last_error
    assert len(server.requests) == 1  # not retried


def test_the_size_cap_is_an_option_and_a_reply_under_it_is_read(raw_server):
    answer = chat_answer("Score: 7/10")
    server = raw_server(lambda conn, stop: conn.sendall(http_answer(200, answer)))
    assert backend(server.url, max_reply_bytes=len(answer))(["item-0"]) == ["Score: 7/10"]
    small = backend(server.url, max_reply_bytes=len(answer) - 1)
    assert small(["item-0"]) == [None]
    assert judge_error(small) == f"the reply's {len(answer)} bytes are over the size cap of {len(answer) - 1} bytes"
    with pytest.raises(ValueError, match="max_reply_bytes"):
        backend(server.url, max_reply_bytes=0)


def judge_error(judge: OpenAIChatBackend) -> str:
    return judge.last_error.removesuffix(" (max_reply_bytes)")


# ----------------------------------------------------------------------------------------------
# structured verdicts
# ----------------------------------------------------------------------------------------------

class ChatServer:
    """An OpenAI-schema server in this process: ``GET /v1/models`` -> model "m"; ``POST
    /v1/chat/completions`` -> ``answer(body, n)`` (n: the POST's number, from 1) gives (status,
    payload); ``bodies`` holds every POST's body."""

    def __init__(self, answer):
        self.bodies: list[dict] = []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with lock:
                    server.bodies.append(body)
                    n = len(server.bodies)
                self.send(*answer(body, n))

            def send(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> bool:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
        return not self.thread.is_alive()

    def formats(self) -> list:
        return [body.get("response_format") for body in self.bodies]


@pytest.fixture
def chat_server():
    started: list[ChatServer] = []

    def start(answer) -> ChatServer:
        started.append(ChatServer(answer))
        return started[-1]

    yield start
    for server in started:
        assert server.close()


def reply(content: str) -> tuple[int, dict]:
    return 200, json.loads(chat_answer(content))


REFUSAL = (400, {"error": {"message": "response_format of type 'json_schema' is not supported by this server",
                           "type": "invalid_request_error", "param": "response_format", "code": None}})


def constraining(body: dict, n: int) -> tuple[int, dict]:
    """A server that decodes under the verdict schema when asked to."""
    if "response_format" not in body:
        return reply("Fine.\nScore: 6/10")
    if body["response_format"] != EXPECTED_FORMAT:
        return 400, {"error": {"message": "unexpected response_format"}}
    return reply(json.dumps({"reason": "The call fits the request.", "score": 8}))


def refusing(body: dict, n: int) -> tuple[int, dict]:
    return REFUSAL if "response_format" in body else reply("Fine.\nScore: 6/10")


def test_a_server_that_accepts_response_format_gives_structured_verdicts(chat_server):
    server = chat_server(constraining)
    judge = OpenAIChatBackend(server.url, timeout_s=5.0, max_retries=0).connect()
    assert judge.structured and judge.model == "m"
    assert "structured verdicts" in judge.describe()
    replies = judge([f"item-{k}" for k in range(3)])
    assert [parse_judge_score(r) for r in replies] == [0.8, 0.8, 0.8]
    assert server.formats() == [EXPECTED_FORMAT] * 4  # the probe and the three requests
    probe = server.bodies[0]
    assert probe["model"] == "m" and probe["max_tokens"] <= 16


def test_a_server_that_refuses_response_format_gets_plain_requests(chat_server, caplog):
    server = chat_server(refusing)
    with caplog.at_level("INFO", logger="awpo.judges.http"):
        judge = OpenAIChatBackend(server.url, timeout_s=5.0, max_retries=0).connect()
    assert not judge.structured
    assert "falling back to the plain 'Score: N/10' verdict" in caplog.text and "not supported" in caplog.text
    assert "plain Score: N/10 verdicts" in judge.describe()
    replies = judge(["item-0", "item-1"])
    assert [parse_judge_score(r) for r in replies] == [0.6, 0.6]
    assert server.formats() == [EXPECTED_FORMAT, None, None]  # the refused probe, then plain requests


def test_structured_output_false_never_sends_response_format(chat_server):
    server = chat_server(constraining)
    judge = OpenAIChatBackend(server.url, timeout_s=5.0, structured_output=False).connect()
    assert not judge.structured
    assert parse_judge_score(judge(["item-0"])[0]) == 0.6
    assert server.formats() == [None]  # no probe either


def test_a_later_refusal_switches_structured_verdicts_off_and_resends_at_once(chat_server):
    server = chat_server(lambda body, n: constraining(body, n) if n == 1 else refusing(body, n))
    judge = OpenAIChatBackend(server.url, timeout_s=5.0, max_retries=0, concurrency=4).connect()
    assert judge.structured  # the probe was accepted
    started = time.monotonic()
    replies = judge([f"item-{k}" for k in range(4)])
    assert time.monotonic() - started < 3
    assert [parse_judge_score(r) for r in replies] == [0.6] * 4 and judge.last_error is None
    assert not judge.structured
    formats = server.formats()
    assert formats.count(None) == 4  # each prompt answered once without the field (max_retries=0: not a retry)
    assert 1 + 1 <= formats.count(EXPECTED_FORMAT) <= 1 + 4  # the probe; a refused request per prompt at most
    assert judge(["item-9"]) == ["Fine.\nScore: 6/10"] and server.formats()[-1] is None


def test_a_400_about_something_else_fails_at_once_and_keeps_structured_verdicts(chat_server):
    too_long = (400, {"object": "error", "message": "This model's maximum context length is 1024 tokens",
                      "type": "BadRequestError", "code": 400})
    server = chat_server(lambda body, n: constraining(body, n) if n == 1 else too_long)
    judge = OpenAIChatBackend(server.url, timeout_s=5.0, max_retries=2).connect()
    assert judge(["item-0"]) == [None]
    assert judge.structured and len(server.bodies) == 2
    assert judge.last_error == "HTTP 400 Bad Request: This model's maximum context length is 1024 tokens"


def test_the_fallback_is_bounded_by_the_total_deadline(chat_server):
    def slow_refusal(body, n):  # the refusal takes 0.8 s of the 1 s; the resent request would take 2 s more
        if n == 1:
            return constraining(body, n)
        time.sleep(0.8 if "response_format" in body else 2.0)
        return refusing(body, n)

    server = chat_server(slow_refusal)
    judge = OpenAIChatBackend(server.url, timeout_s=1.0, max_retries=0).connect()
    started = time.monotonic()
    assert judge(["item-0"]) == [None]
    # the resent request had what was left of the 1 s: about 1 s in all, where a fresh timeout would take at
    # least 0.8 + 2.0 s whatever the load; the bound sits between the two (a loaded machine only adds time)
    assert time.monotonic() - started < 2.6
    assert judge.last_error == "the request's total deadline of 1 s passed" and not judge.structured


def test_the_probe_fails_start_up_like_the_model_listing(chat_server):
    unavailable = chat_server(lambda body, n: (503, {"error": {"message": "overloaded"}}))
    with pytest.raises(ConnectionError, match="answered a test request with HTTP 503 Service Unavailable: overloaded"):
        OpenAIChatBackend(unavailable.url, timeout_s=5.0).connect()
    keyed = chat_server(lambda body, n: (401, {"error": {"message": "bad key"}}))
    with pytest.raises(PermissionError, match="refused the API key"):
        OpenAIChatBackend(keyed.url, timeout_s=5.0).connect()


def test_a_probe_that_hangs_raises_connection_error(raw_server):
    def models_then_hang(conn, stop):
        if len(server.requests) == 1:  # GET /v1/models
            conn.sendall(http_answer(200, json.dumps({"data": [{"id": "m"}]}).encode()))
        else:
            stop.wait(10)

    server = raw_server(models_then_hang)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach .*: deadline of 0.5 s passed"):
        OpenAIChatBackend(server.url, timeout_s=0.5).connect()
    assert time.monotonic() - started < 3
