"""A deterministic OpenAI-compatible judge server on 127.0.0.1, for tests, benchmarks and users without an API key.

It implements ``POST /v1/chat/completions`` (and ``GET /v1/models``) with the standard library only.
It reads the question, reference and prediction from the prompt that ``hallbench.eval.judge``
builds and answers ``Yes`` when the normalised prediction equals the normalised reference
(``normalize_answer``: lower case, punctuation and articles dropped, number words as digits), else
``No``, with a ``usage`` block. It is a string matcher, not a language model: "a cat" == "Cat." and
"three" == "3", but "kitten" != "cat".

Faults can be injected per server to exercise a client's error handling (``faults=``): each
request gets a behaviour, by arrival order or from a function of the request number and the
judged fields:

- ``"ok"``: the normal answer;
- ``"429"`` / ``"429:S"``: rate limited, with ``Retry-After: S`` (default 1);
- ``"500"``, ``"502"``, ``"503"``, ``"400"``, ``"401"``, ``"403"``, ``"404"``: that HTTP status with a JSON error body;
- ``"slow"`` / ``"slow:S"``: wait S seconds (default 2) before answering normally (past a client's timeout);
- ``"malformed"``: status 200 with a body that is not JSON;
- ``"empty"``: status 200 with no ``choices``;
- ``"maybe"``: the verdict ``Maybe`` (neither Yes nor No); ``"reply:TEXT"``: the verdict ``TEXT``;
- ``"drop"``: close the connection without answering;
- ``"echo_key_401"``: a 401 whose message repeats the request's bearer token, as some misbehaving
  servers do (for testing that clients scrub secrets from error messages).

Run it by hand::

    python -m hallbench.eval.judge_server --port 8099 [--latency-s 0.05]

and point the judge at ``http://127.0.0.1:8099/v1`` (any model name; no API key needed).
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hallbench.eval.judge import parse_judge_prompt

# ---------------------------------------------------------------------------------------------
# The matcher

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed (except inside numbers: ``3.5``), articles dropped, number words as digits.

    ``"Three."``, ``"3"`` and ``"three"`` all give ``"3"``; ``"Twenty-one"`` gives ``"21"``;
    ``"A red circle"`` gives ``"red circle"``; ``"1,000"`` gives ``"1000"``.
    """
    text = text.lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # thousands separators
    # Any character that is neither a word character nor a space becomes a space, except a '.' between digits.
    text = re.sub(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_", " ", text)
    words = [w for w in text.split() if w not in _ARTICLES]
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in _TENS:
            value = _TENS[word]
            if i + 1 < len(words) and words[i + 1] in _UNITS and 0 < _UNITS[words[i + 1]] < 10:
                value += _UNITS[words[i + 1]]
                i += 1
            out.append(str(value))
        elif word in _UNITS:
            out.append(str(_UNITS[word]))
        else:
            out.append(word)
        i += 1
    return " ".join(out)


def judge_fields(fields: dict[str, str]) -> str:
    """The server's verdict for parsed judge fields: ``Yes`` when prediction and reference normalise equally."""
    return "Yes" if normalize_answer(fields["prediction"]) == normalize_answer(fields["reference"]) else "No"


# ---------------------------------------------------------------------------------------------
# The server

Faults = Sequence[str] | Callable[[int, dict[str, str]], str | None] | None
"""A behaviour per request: a sequence (request ``n`` gets ``faults[n - 1]``, ``"ok"`` past its end), or a
function of the 1-based request number and the parsed fields (``{}`` when the prompt has none) that returns a
behaviour or ``None`` for ``"ok"``."""

_STATUS_FAULTS = {"400", "401", "403", "404", "500", "502", "503"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # stop() must not wait for a handler sleeping in a "slow" fault
    request_queue_size = 256  # a listen backlog of 5 (the default) drops connections under concurrency 16+
    allow_reuse_address = True

    def __init__(self, port: int, latency_s: float, faults: Faults):
        super().__init__(("127.0.0.1", port), _Handler)
        self.latency_s = latency_s
        self.faults = faults
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth_headers: set[str] = set()
        self.behaviours: list[str] = []

    def behaviour(self, n: int, fields: dict[str, str]) -> str:
        if self.faults is None:
            return "ok"
        if callable(self.faults):
            return self.faults(n, fields) or "ok"
        return self.faults[n - 1] if n <= len(self.faults) else "ok"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers; every response has a Content-Length
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for the client's
    # delayed ACK (~40 ms on Linux), which would dwarf the emulated latency.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # quiet: tests and benchmarks make thousands of requests

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        body = {"error": {"message": message, "type": "judge_server_error", "code": status}}
        self._send(status, json.dumps(body).encode(), headers)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, json.dumps({"object": "list", "data": [{"id": "hallbench-judge", "object": "model"}]}).encode())
        else:
            self._error(404, f"no route GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route POST {self.path}")
            return
        server = self.server
        with server.lock:
            server.requests += 1
            n = server.requests
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            server.auth_headers.add(self.headers.get("Authorization", ""))
        try:
            self._complete(n, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) while we were answering
        finally:
            with server.lock:
                server.in_flight -= 1

    def _complete(self, n: int, raw: bytes) -> None:
        server = self.server
        try:
            request = json.loads(raw)
            prompt = _last_user_text(request["messages"])
            model = str(request.get("model", "hallbench-judge"))
        except (ValueError, KeyError, TypeError, IndexError):
            self._error(400, "the body must be a JSON chat completion request with a user message")
            return
        fields = parse_judge_prompt(prompt) or {}
        behaviour = server.behaviour(n, fields)
        with server.lock:
            server.behaviours.append(behaviour)
        if server.latency_s > 0:
            time.sleep(server.latency_s)
        name, _, arg = behaviour.partition(":")
        if name == "429":
            self._error(429, "rate limited (injected)", {"Retry-After": arg or "1"})
        elif name in _STATUS_FAULTS:
            self._error(int(name), f"HTTP {name} (injected)")
        elif name == "echo_key_401":
            self._error(401, f"Incorrect API key provided: {self.headers.get('Authorization', '').removeprefix('Bearer ')}")
        elif name == "drop":
            self.close_connection = True  # no response at all: the client sees the connection closed
        elif name == "malformed":
            self._send(200, b'{"id": "x", "choices": [{"message": {"content": "Yes"')
        elif name == "empty":
            self._send(200, json.dumps(_completion(model, None, prompt)).encode())
        elif name in ("ok", "slow", "maybe", "reply"):
            if name == "slow":
                time.sleep(float(arg or 2.0))
            if name == "maybe":
                verdict = "Maybe"
            elif name == "reply":
                verdict = arg
            elif not fields:
                self._error(400, "the prompt holds no judge fields (question, reference, prediction)")
                return
            else:
                verdict = judge_fields(fields)
            self._send(200, json.dumps(_completion(model, verdict, prompt)).encode())
        else:
            self._error(500, f"unknown injected behaviour {behaviour!r}")


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    message = [m for m in messages if m["role"] == "user"][-1]
    content = message["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part.get("type") == "text")


def _completion(model: str, verdict: str | None, prompt: str) -> dict[str, Any]:
    choices = [] if verdict is None else [{"index": 0, "message": {"role": "assistant", "content": verdict}, "finish_reason": "stop"}]
    prompt_tokens = len(prompt.split())  # a word count stands in for a tokenizer
    completion_tokens = 0 if verdict is None else max(1, len(verdict.split()))
    return {
        "id": "chatcmpl-hallbench-judge",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class JudgeServer:
    """A running judge server. Use ``start_judge_server``; stop it with ``.stop()`` or a ``with`` block.

    Attributes:
        base_url: ``http://127.0.0.1:PORT/v1``, for ``JudgeConfig.base_url`` or any OpenAI client.
        port: the bound port.
    """

    def __init__(self, port: int = 0, latency_s: float = 0.0, faults: Faults = None):
        self._server = _Server(port, latency_s, faults)
        self.port: int = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="judge-server", daemon=True)
        self._thread.start()

    @property
    def requests(self) -> int:
        """Chat completion requests received so far (faulty ones included)."""
        return self._server.requests

    @property
    def max_in_flight(self) -> int:
        """The most chat completion requests being handled at the same time so far."""
        return self._server.max_in_flight

    @property
    def auth_headers(self) -> set[str]:
        """The distinct ``Authorization`` headers received (to check which key a client sent)."""
        return set(self._server.auth_headers)

    @property
    def behaviours(self) -> list[str]:
        """The behaviour applied to each request, in the order they were decided."""
        return list(self._server.behaviours)

    def wait_idle(self, quiet_s: float = 0.3, timeout_s: float = 10.0) -> None:
        """Wait until no request is being handled and none has arrived for ``quiet_s`` seconds.

        A client killed mid-request may leave a request in the socket that a handler thread counts a
        moment later; call this before :meth:`reset_counts` so that such stragglers are not counted
        against the next run. Raises ``TimeoutError`` if the server does not go quiet in ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._server.lock:
                before = (self._server.requests, self._server.in_flight)
            time.sleep(quiet_s)
            with self._server.lock:
                if (self._server.requests, self._server.in_flight) == before and before[1] == 0:
                    return
        raise TimeoutError(f"the judge server did not go idle within {timeout_s} s")

    def reset_counts(self) -> None:
        """Set ``requests`` and ``max_in_flight`` back to 0 (``faults`` keep counting from 1 again)."""
        with self._server.lock:
            self._server.requests = 0
            self._server.max_in_flight = self._server.in_flight
            self._server.behaviours.clear()

    def stop(self) -> None:
        """Stop serving and close the socket; handlers still sleeping are abandoned (daemon threads)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> JudgeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_judge_server(port: int = 0, latency_s: float = 0.0, faults: Faults = None) -> JudgeServer:
    """Start a judge server on 127.0.0.1 (``port=0``: a free port) in a background thread.

    Args:
        port: the TCP port; 0 picks a free one (read it from ``.port`` / ``.base_url``).
        latency_s: a fixed delay added to every chat completion (to emulate a remote model).
        faults: injected behaviours (see the module docstring); ``None``: always answer.
    """
    return JudgeServer(port, latency_s, faults)


def main(argv: list[str] | None = None) -> None:
    """``python -m hallbench.eval.judge_server``: serve until interrupted; prints the base URL first."""
    parser = argparse.ArgumentParser(description="A deterministic OpenAI-compatible judge server on 127.0.0.1 (string matching).")
    parser.add_argument("--port", type=int, default=8099, help="port on 127.0.0.1 (0: pick a free one); default 8099")
    parser.add_argument("--latency-s", type=float, default=0.0, help="delay added to every answer, in seconds")
    args = parser.parse_args(argv)
    server = start_judge_server(args.port, args.latency_s)
    print(server.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
