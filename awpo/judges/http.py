"""The judge model behind an OpenAI-compatible server (what ``vllm serve`` exposes).

Each rubric prompt is one ``POST {url}/chat/completions`` request, ``{"model", "messages": [one user
turn], "max_tokens", "temperature": 0}``, answered by ``{"choices": [{"message": {"content"}}]}``:
the chat endpoint, so the server applies the judge model's own chat template. The prompts of a call
(a training step's completions) go out concurrently, at most ``concurrency`` at a time; the server
batches them (vLLM's continuous batching).

Every request has a timeout per attempt and at most ``max_retries`` retries, ``backoff_s``,
``2 * backoff_s``, ... apart: after connection errors, timeouts and the HTTP statuses that say "try
again" (408, 429, 5xx). Any other answer (a 4xx such as "prompt too long", a body that is not the
schema) fails at once. A request that fails gives ``None``, which the judge scores NaN; nothing here
raises during scoring. ``connect()`` is the start-up check: the server answers ``GET {url}/models``
and serves the model (the only one it serves when no name is given).

Only the standard library is used (urllib, a thread pool). Requests to a loopback host bypass any
proxy set in the environment.
"""
from __future__ import annotations

import http.client
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _GiveUp(Exception):
    """A failure that another attempt would not fix."""


def api_base(url: str) -> str:
    """``http://host:8000`` and ``http://host:8000/`` -> ``http://host:8000/v1``; a URL with a path
    is kept as given (``https://example.com/openai/v1``). ValueError for anything but http(s)."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/") or "/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class OpenAIChatBackend:
    """``backend(prompts) -> replies``: one reply text per prompt, ``None`` where the request failed."""

    def __init__(self, url: str, *, model: str = "", api_key: str | None = None, max_tokens: int = 96,
                 timeout_s: float = 60.0, max_retries: int = 2, concurrency: int = 16,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0):
        if timeout_s <= 0 or max_retries < 0 or concurrency < 1 or max_tokens < 1 or backoff_s < 0:
            raise ValueError("timeout_s and max_tokens must be > 0, concurrency >= 1, max_retries and backoff_s >= 0")
        self.url = api_base(url)
        self.model = model
        self.api_key = api_key
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.last_error: str | None = None
        host = urllib.parse.urlsplit(self.url).hostname
        handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)

    def describe(self) -> str:
        return f"chat completions at {self.url}, model {self.model or '(not resolved yet)'}"

    # ------------------------------------------------------------------------------------------
    def connect(self) -> OpenAIChatBackend:
        """Check that the server answers and serves the model; resolve the model name when empty.

        ConnectionError when the server cannot be reached, PermissionError when it refuses the
        API key, LookupError when the model is not among those it serves.
        """
        try:
            listing = self._request("GET", "/models", None, timeout=min(self.timeout_s, 10.0))
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise PermissionError(f"{self.url} refused the API key (HTTP {err.code})") from None
            if self.model:  # a server without the model list can still serve a named model
                return self
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
        return self

    def __call__(self, prompts: list[str]) -> list[str | None]:
        self.last_error = None
        if not prompts:
            return []
        workers = min(self.concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="awpo-judge") as pool:
            return list(pool.map(self.ask, prompts))

    def ask(self, prompt: str) -> str | None:
        """One rubric prompt -> the reply text, or None after the last failed attempt."""
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_tokens, "temperature": 0.0}
        error: BaseException | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
            try:
                return _reply_text(self._request("POST", "/chat/completions", body, timeout=self.timeout_s))
            except _GiveUp as err:
                error = err
                break
            except urllib.error.HTTPError as err:
                error = err
                if err.code not in RETRY_STATUSES:
                    break
            except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, cut short
                error = err
        self.last_error = _reason(error)
        logger.debug("judge request failed after %d attempt(s): %s", attempt + 1, self.last_error)
        return None

    # ------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None, *, timeout: float):
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with self._opener.open(request, timeout=timeout) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except ValueError:
            raise _GiveUp(f"the server's answer is not JSON: {raw[:120]!r}") from None


def _reply_text(answer) -> str:
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _GiveUp(f"the answer does not follow the chat completions schema: {str(answer)[:160]}") from None
    if not isinstance(content, str):
        raise _GiveUp("the answer's message has no text content")
    return content


def _reason(err: BaseException | None) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(err) or type(err).__name__
