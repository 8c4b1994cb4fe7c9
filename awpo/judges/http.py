"""The judge model behind an OpenAI-compatible server (what ``vllm serve`` exposes).

Each rubric prompt is one ``POST {url}/chat/completions`` request, ``{"model", "messages": [one user
turn], "max_tokens", "temperature": 0}``, answered by ``{"choices": [{"message": {"content"}}]}``:
the chat endpoint, so the server applies the judge model's own chat template. The prompts of a call
(a training step's completions) go out concurrently, at most ``concurrency`` at a time; the server
batches them (vLLM's continuous batching).

**Structured verdicts.** While ``structured`` is True every request also carries ``"response_format":
{"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": true}}``
(``awpo.judges.verdict``), so a server that constrains decoding makes every reply one JSON verdict
``{"reason", "score"}``. ``structured_output=False`` never sends it. Otherwise ``connect()`` probes
the server with one tiny request carrying it: an answer 200 (whatever its content; a reply cut short by
the probe's few tokens is fine) keeps it; 400, 404, 422 or 501 means the server refuses it, and the
judge falls back to the plain ``Score: N/10`` verdict (an info line says so). A later 400 or 422 whose
body names ``response_format``, ``json_schema``, ``guided`` or ``structured`` also switches it off,
and that request is sent again at once without it (not counted as a retry).

**Time limits.** ``timeout_s`` is a deadline for one attempt, all of it together: connecting,
sending, the status line, the headers and every read of the body (each socket operation waits at
most for the time left). An attempt past it fails ("deadline of X s passed") and is retried like any
timeout. A request, all its attempts and the pauses between them, has a total deadline of
``timeout_s * (max_retries + 1)`` plus those pauses: an attempt gets ``timeout_s`` or what is left of
the total if less, and none starts once it is spent. Nothing waits longer, whatever the server does.

**Retries.** At most ``max_retries`` retries, ``backoff_s``, ``2 * backoff_s``, ... apart (at most
``max_backoff_s``): after connection errors, timeouts and the HTTP statuses that say "try again"
(408, 409, 425, 429, 5xx). Any other answer (a 4xx such as "prompt too long", a body that is not the
schema) fails at once.

**Size cap.** A reply body larger than ``max_reply_bytes`` (1 MiB; by its Content-Length or by the
bytes read) fails at once, without reading the rest: a verdict is a few hundred bytes.

A request that fails gives ``None``, which the judge scores NaN, and ``last_error`` says why; nothing
here raises during scoring. ``connect()`` is the start-up check: the server answers ``GET
{url}/models`` and serves the model (the only one it serves when no name is given), then the probe
above.

Only the standard library is used (urllib over http.client, a thread pool). Requests to a loopback
host bypass any proxy set in the environment.
"""
from __future__ import annotations

import functools
import http.client
import io
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from .verdict import VERDICT_MAX_TOKENS, VERDICT_SCHEMA

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
REFUSAL_STATUSES = frozenset({400, 404, 422, 501})  # the probe's answers that mean "no response_format here"
SCHEMA_ERROR_WORDS = ("response_format", "json_schema", "guided", "structured")
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": True}}
PROBE_PROMPT = 'Reply with this JSON object: {"reason": "ok", "score": 10}'
PROBE_MAX_TOKENS = 16  # the probe checks that the field is accepted (HTTP 200), not the reply: a cut-off one is fine
MAX_REPLY_BYTES = 1 << 20
_ERROR_BODY_BYTES = 64 << 10  # read of an error answer's body, for its message
_READ_BYTES = 64 << 10
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _GiveUp(Exception):
    """A failure that another attempt would not fix."""


class DeadlinePassed(TimeoutError):
    """An attempt, or a whole request, ran past its deadline."""


class _Deadline:
    """A point in time (``time.monotonic``) and what to say when it has passed."""

    def __init__(self, seconds: float, message: str):
        self.end = time.monotonic() + seconds
        self.message = message

    def left(self) -> float:
        """Seconds left; DeadlinePassed when none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.passed()
        return left

    def spent(self) -> bool:
        return time.monotonic() >= self.end

    def passed(self) -> DeadlinePassed:
        return DeadlinePassed(self.message)


def api_base(url: str) -> str:
    """``http://host:8000`` and ``http://host:8000/`` -> ``http://host:8000/v1``; a URL with a path
    is kept as given (``https://example.com/openai/v1``). ValueError for anything but http(s)."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/") or "/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class OpenAIChatBackend:
    """``backend(prompts) -> replies``: one reply text per prompt, ``None`` where the request failed.

    Attributes: ``structured`` (requests carry the verdict ``response_format``; starts as
    ``structured_output``, settled by ``connect()`` and switched off for good when the server
    refuses it), ``last_error`` (why the last failed request of the last call failed, else None).
    """

    def __init__(self, url: str, *, model: str = "", api_key: str | None = None, max_tokens: int = 96,
                 timeout_s: float = 60.0, max_retries: int = 2, concurrency: int = 16,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0, max_reply_bytes: int = MAX_REPLY_BYTES,
                 structured_output: bool = True):
        if (timeout_s <= 0 or max_retries < 0 or concurrency < 1 or max_tokens < 1 or backoff_s < 0
                or max_reply_bytes < 1):
            raise ValueError("timeout_s, max_tokens and max_reply_bytes must be > 0, concurrency >= 1, "
                             "max_retries and backoff_s >= 0")
        self.url = api_base(url)
        self.model = model
        self.api_key = api_key
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_reply_bytes = max_reply_bytes
        self.structured_output = structured_output
        self.structured = structured_output
        self.last_error: str | None = None
        host = urllib.parse.urlsplit(self.url).hostname
        handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        handlers += [_DeadlineHTTPHandler(), _DeadlineHTTPSHandler()]
        self._opener = urllib.request.build_opener(*handlers)

    def describe(self) -> str:
        verdicts = "structured verdicts (response_format)" if self.structured else "plain Score: N/10 verdicts"
        return f"chat completions at {self.url}, model {self.model or '(not resolved yet)'}, {verdicts}"

    def pauses(self) -> list[float]:
        """The pauses before retry 1, 2, ..."""
        return [min(self.backoff_s * 2 ** k, self.max_backoff_s) for k in range(self.max_retries)]

    def total_deadline_s(self) -> float:
        """The most one request, all its attempts and pauses together, may take."""
        return self.timeout_s * (self.max_retries + 1) + sum(self.pauses())

    # ------------------------------------------------------------------------------------------
    def connect(self) -> OpenAIChatBackend:
        """Check that the server answers and serves the model; resolve the model name when empty;
        settle ``structured`` (the probe).

        ConnectionError when the server cannot be reached, PermissionError when it refuses the
        API key, LookupError when the model is not among those it serves.
        """
        self._check_model()
        self.structured = self.structured_output and self._accepts_response_format()
        return self

    def _check_model(self) -> None:
        seconds = min(self.timeout_s, 10.0)
        try:
            listing = self._request("GET", "/models", None, _Deadline(seconds, f"deadline of {seconds:g} s passed"))
        except urllib.error.HTTPError as err:
            err.close()
            if err.code in (401, 403):
                raise PermissionError(f"{self.url} refused the API key (HTTP {err.code})") from None
            if self.model:  # a server without the model list can still serve a named model
                return
            raise LookupError(f"{self.url}/models answered HTTP {err.code}; name the model") from None
        except (OSError, http.client.HTTPException) as err:
            raise ConnectionError(f"cannot reach {self.url}: {_reason(err)}") from None
        except _GiveUp as err:
            raise ConnectionError(f"{self.url} is not an OpenAI-compatible server: {err}") from None
        models = listing.get("data", []) if isinstance(listing, dict) else []
        served = [m["id"] for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if self.model and self.model not in served and served:
            raise LookupError(f"{self.url} serves {', '.join(served)}, not {self.model!r}")
        if not self.model:
            if len(served) != 1:
                raise LookupError(f"{self.url} serves {len(served)} models ({', '.join(served) or 'none listed'}); "
                                  "name the one to use")
            self.model = served[0]

    def _accepts_response_format(self) -> bool:
        """The probe: one tiny chat request with the verdict response_format. True when the server
        answers it (200), False when it refuses the field."""
        body = self._chat_body(PROBE_PROMPT, structured=True, max_tokens=PROBE_MAX_TOKENS)
        deadline = _Deadline(self.timeout_s, f"deadline of {self.timeout_s:g} s passed")
        try:
            self._request("POST", "/chat/completions", body, deadline)
        except urllib.error.HTTPError as err:
            detail = _error_detail(err)
            if err.code in (401, 403):
                raise PermissionError(f"{self.url} refused the API key (HTTP {err.code})") from None
            if err.code in REFUSAL_STATUSES:
                logger.info("judge server %s refuses response_format (%s): falling back to the plain "
                            "'Score: N/10' verdict", self.url, _reason(err, detail))
                return False
            raise ConnectionError(f"{self.url}/chat/completions answered a test request with "
                                  f"{_reason(err, detail)}") from None
        except (OSError, http.client.HTTPException) as err:
            raise ConnectionError(f"cannot reach {self.url}: {_reason(err)}") from None
        except _GiveUp as err:
            raise ConnectionError(f"{self.url} is not an OpenAI-compatible server: {err}") from None
        logger.info("judge server %s accepts response_format: structured verdicts", self.url)
        return True

    def __call__(self, prompts: list[str]) -> list[str | None]:
        self.last_error = None
        if not prompts:
            return []
        workers = min(self.concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="awpo-judge") as pool:
            return list(pool.map(self.ask, prompts))

    def ask(self, prompt: str) -> str | None:
        """One rubric prompt -> the reply text, or None after the last failed attempt."""
        total_s = self.total_deadline_s()
        total = _Deadline(total_s, f"the request's total deadline of {total_s:g} s passed")
        structured = self.structured
        pauses = self.pauses()
        error: BaseException | None = None
        detail = ""
        attempts = retries = 0
        while not total.spent():
            attempts += 1
            left = total.end - time.monotonic()
            # an attempt cut short by the total (after a resend without response_format) says so; one that
            # lost a few ms to the attempts and pauses before it (each may overrun its deadline a little) does not
            attempt = _Deadline(min(self.timeout_s, left), total.message if left < 0.9 * self.timeout_s
                                else f"deadline of {self.timeout_s:g} s passed")
            try:
                budget = max(self.max_tokens, VERDICT_MAX_TOKENS) if structured else self.max_tokens
                body = self._chat_body(prompt, structured=structured, max_tokens=budget)
                return _reply_text(self._request("POST", "/chat/completions", body, attempt))
            except _GiveUp as err:
                error, detail = err, ""
                break
            except urllib.error.HTTPError as err:
                error, detail = err, _error_detail(err)
                if structured and err.code in (400, 422) and _names_structured_output(detail):
                    structured = False
                    self._refused_response_format(_reason(err, detail))
                    continue  # at once, without the field; not a retry
                if err.code not in RETRY_STATUSES:
                    break
            except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, cut short
                error, detail = err, ""
            if retries == len(pauses):
                break
            time.sleep(max(0.0, min(pauses[retries], total.end - time.monotonic())))
            retries += 1
        else:  # the total deadline is spent: the last attempt's error says more, if there was one
            error = error or total.passed()
        self.last_error = _reason(error, detail)
        logger.debug("judge request failed after %d attempt(s): %s", attempts, self.last_error)
        return None

    def _refused_response_format(self, reason: str) -> None:
        if self.structured:
            self.structured = False  # a plain write: concurrent requests see it on their next attempt
            logger.info("judge server %s refused response_format (%s): falling back to the plain "
                        "'Score: N/10' verdict", self.url, reason)

    # ------------------------------------------------------------------------------------------
    def _chat_body(self, prompt: str, *, structured: bool, max_tokens: int) -> dict:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "temperature": 0.0}
        if structured:
            body["response_format"] = RESPONSE_FORMAT
        return body

    def _request(self, method: str, path: str, body: dict | None, deadline: _Deadline):
        """One attempt, all of it before ``deadline``: the answer's JSON. HTTPError for a status
        other than 2xx, OSError (DeadlinePassed among them) or HTTPException when the exchange
        fails, _GiveUp for a body over the size cap or not JSON."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = _Request(self.url + path, data=data, headers=headers, method=method)
        request.deadline = deadline
        with self._opener.open(request, timeout=deadline.left()) as response:
            raw = _read_capped(response, self.max_reply_bytes)
        try:
            return json.loads(raw)
        except ValueError:
            raise _GiveUp(f"the server's answer is not JSON: {raw[:120]!r}") from None


def _read_capped(response, cap: int) -> bytes:
    """The body, read in chunks; _GiveUp as soon as it is known to be over ``cap`` bytes."""
    if response.length is not None and response.length > cap:
        raise _GiveUp(f"the reply's {response.length} bytes are over the size cap of {cap} bytes (max_reply_bytes)")
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read(_READ_BYTES):
        size += len(chunk)
        if size > cap:
            raise _GiveUp(f"the reply is over the size cap of {cap} bytes (max_reply_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _reply_text(answer) -> str:
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _GiveUp(f"the answer does not follow the chat completions schema: {str(answer)[:160]}") from None
    if not isinstance(content, str):
        raise _GiveUp("the answer's message has no text content")
    return content


def _error_detail(err: urllib.error.HTTPError) -> str:
    """The start of an error answer's body (within the attempt's deadline), as text; closes it."""
    try:
        raw = err.read(_ERROR_BODY_BYTES)
    except (OSError, http.client.HTTPException, ValueError):
        raw = b""
    finally:
        err.close()
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""


def _names_structured_output(detail: str) -> bool:
    detail = detail.lower()
    return any(word in detail for word in SCHEMA_ERROR_WORDS)


def _server_message(detail: str) -> str:
    """The message of an OpenAI-style ({"error": {"message"}}), vLLM ({"message"}) or FastAPI
    ({"detail"}) error body, else its text; at most 200 characters."""
    try:
        obj = json.loads(detail)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        error = obj.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or obj.get("message") or obj.get("detail")
        if message:
            detail = message if isinstance(message, str) else json.dumps(message)
    return " ".join(detail.split())[:200]


def _reason(err: BaseException | None, detail: str = "") -> str:
    if isinstance(err, urllib.error.HTTPError):
        message = _server_message(detail)
        return f"HTTP {err.code} {err.reason}" + (f": {message}" if message else "")
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, DeadlinePassed):
        return str(err)
    if isinstance(err, TimeoutError):  # socket.timeout is TimeoutError
        return "timed out"
    return str(err) or type(err).__name__


# ----------------------------------------------------------------------------------------------
# urllib over http.client connections that keep one deadline
# ----------------------------------------------------------------------------------------------

class _Request(urllib.request.Request):
    deadline: _Deadline | None = None


def _deadline_of(request) -> _Deadline:
    # a redirect makes a plain Request: it gets a deadline of its own, the attempt's timeout
    deadline = getattr(request, "deadline", None)
    return deadline if deadline is not None else _Deadline(request.timeout, f"deadline of {request.timeout:g} s passed")


class _DeadlineConnection:
    """Mixed into http.client's connections: connecting, every send and every read of the response
    (status line, headers, body) wait at most for the time left before ``deadline``."""

    def __init__(self, host, *args, deadline: _Deadline, **kwargs):
        super().__init__(host, *args, **kwargs)
        self.deadline = deadline

    def connect(self):
        self.timeout = self.deadline.left()  # socket.create_connection's timeout, and the TLS handshake's
        try:
            super().connect()
        except TimeoutError:
            raise self.deadline.passed() from None

    def send(self, data):
        if self.sock is not None:
            self.sock.settimeout(self.deadline.left())  # sendall: at most this long in all
        try:
            super().send(data)
        except TimeoutError:
            raise self.deadline.passed() from None

    def response_class(self, sock, *args, **kwargs):  # how http.client makes its response
        return http.client.HTTPResponse(_DeadlineSocket(sock, self.deadline), *args, **kwargs)


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPConnection, deadline=_deadline_of(req)), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPSConnection, deadline=_deadline_of(req)), req)


class _DeadlineSocket:
    """What http.client's response reads from: ``makefile`` gives a buffered reader whose every
    read of the socket first sets its timeout to the time left."""

    def __init__(self, sock, deadline: _Deadline):
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args, **kwargs):
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock, deadline: _Deadline):
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # holds the socket open until this reader closes
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        self._sock.settimeout(self._deadline.left())
        try:
            return self._raw.readinto(buffer)
        except TimeoutError:
            raise self._deadline.passed() from None

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()
