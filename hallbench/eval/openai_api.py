"""The one way hallbench talks to an OpenAI-compatible endpoint (the VQA judge, the ``openai`` backend).

Both callers get the same client (the real ``openai`` SDK with its own retries off), the same
reading of a failure (:func:`classify`: which kind, whether a retry can help, the server's
``Retry-After``), the same backoff (:func:`backoff_delay`: full jitter, capped, the server's wait
honoured up to the cap) and the same :func:`scrub`, applied to every text derived from an exception
or a reply before it is stored, logged or raised, so a key never leaves memory.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LOCAL_DUMMY_KEY = "hallbench-local-no-key"
"""Sent to a loopback endpoint when no key is set (such servers ignore it); never scrubbed, never secret."""
RETRYABLE_STATUS = frozenset({408, 409, 429})
"""Plus every 5xx: the openai SDK's own retry set."""
NAMED_STATUS = {400: "bad_request", 401: "auth", 403: "auth", 404: "not_found", 408: "timeout", 409: "conflict", 429: "rate_limit"}


def make_client(base_url: str, secret: str, *, timeout_s: float) -> Any:
    """The openai client: no retries of its own (the caller retries with :func:`classify` and
    :func:`backoff_delay`, so every attempt is counted and every failure is named)."""
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=secret, max_retries=0, timeout=timeout_s)


def scrub(text: str, secret: str | None) -> str:
    """``text`` with the secret, bearer tokens and ``sk-`` style keys replaced by ``[redacted]``.

    Besides the exact secret, it removes partial echoes such as OpenAI's "Incorrect API key
    provided: sk-abc***wxyz".
    """
    if secret and secret != LOCAL_DUMMY_KEY:
        text = text.replace(secret, "[redacted]")
    text = re.sub(r"(?i)\bbearer\s+\S+", "Bearer [redacted]", text)
    text = re.sub(r"(?i)(api[ _-]?key[^:]{0,20}:\s*)\S+", r"\1[redacted]", text)
    return re.sub(r"\bsk-[A-Za-z0-9_*.\-]{4,}", "[redacted]", text)


def short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a ``Retry-After`` (or ``retry-after-ms``) header; ``None`` when absent or not a number."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue  # an HTTP date: fall back to our own backoff
            if 0 <= seconds < float("inf"):
                return seconds
    return None


@dataclass(frozen=True)
class Failure:
    """One failed request, read."""

    kind: str
    """``rate_limit``, ``server_error``, ``timeout``, ``connection``, ``malformed``, ``auth``,
    ``bad_request``, ``not_found``, ``conflict`` or ``http_<status>``."""
    detail: str
    """One line (not yet scrubbed)."""
    retryable: bool
    status: int | None = None
    retry_after_s: float | None = None


def classify(err: BaseException, *, timeout_s: float) -> Failure | None:
    """What an exception of the openai SDK (or a non-JSON 200) means; ``None`` for anything else."""
    import openai

    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        kind = NAMED_STATUS.get(status, "server_error" if status >= 500 else f"http_{status}")
        retryable = status in RETRYABLE_STATUS or status >= 500
        return Failure(kind, f"HTTP {status}: {short(str(err))}", retryable, status, retry_after(err.response.headers))
    if isinstance(err, openai.APITimeoutError):
        return Failure("timeout", f"no answer within {timeout_s:g} s", True)
    if isinstance(err, openai.APIConnectionError):
        cause = err.__cause__ or err
        return Failure("connection", short(f"{type(cause).__name__}: {cause}"), True)
    if isinstance(err, openai.APIResponseValidationError | ValueError):
        # A 200 whose body is not JSON (json.JSONDecodeError is a ValueError).
        return Failure("malformed", short(f"{type(err).__name__}: {err}"), True)
    return None


def backoff_delay(attempt: int, *, base_s: float, max_s: float, server_s: float | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): the server's ``Retry-After`` up to
    ``max_s``, else full jitter on ``base_s * 2^(attempt-1)``, capped at ``max_s``."""
    if server_s is not None:
        return min(server_s, max_s)
    return random.uniform(0.0, min(max_s, base_s * 2 ** (attempt - 1)))
