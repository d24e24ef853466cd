"""The LLM judge of the VQA bench: is a model's final answer semantically equivalent to the reference?

Any OpenAI-compatible chat endpoint works: DeepSeek (``https://api.deepseek.com``, ``deepseek-chat``),
OpenAI, a local vLLM / Ollama server, or ``hallbench.eval.judge_server`` (a deterministic string
matcher for tests and for users without a key)::

    cfg = JudgeConfig(base_url="https://api.deepseek.com", model="deepseek-chat", cache_path=Path("runs/judge.sqlite"))
    judgements, stats = judge_many([JudgeItem("q1", "How many stars?", "3", "three")], cfg)

Invariants:
- A failed or unparseable judgement is never counted as correct: its ``verdict`` is ``None``, its
  ``error`` says why, and the VQA bench's aggregate (``vqa.py``) leaves it out of the accuracy's
  denominator, counts it in ``judge_errors`` and lists its id.
- Only successful verdicts are cached, each committed as soon as it arrives: a crash loses at most
  the requests in flight, and a rerun of the same items requests exactly the ones without a cached
  verdict (the failed and the never-judged ones), so rerunning everything is the way to retry.
- The API key lives in memory only: it is never written to the cache, a record, the stats, a log
  line or an exception message (error texts derived from exceptions are scrubbed defensively).
- Worker threads only make requests and return outcomes; the calling thread alone touches the
  cache, the statistics and the callbacks (the SQLite connection is created with
  ``check_same_thread=True``, so a violation of this rule fails loudly).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hallbench.errors import HallbenchError
from hallbench.eval.openai_api import LOCAL_DUMMY_KEY, backoff_delay, classify, make_client, scrub, short
from hallbench.provenance import check_env_name, check_url_has_no_credentials

log = logging.getLogger(__name__)

PROMPT_ID = "equiv-v2"
"""Version of the judge prompt below. Stored in every judgement and part of the cache key: change it
whenever the prompt text, the request parameters or the verdict parsing change."""

DEFAULT_KEY_ENVS = ("DEEPSEEK_API_KEY", "OPENAI_API_KEY")
"""Environment variables tried, in this order, when ``JudgeConfig.key_env`` is ``None``."""


MAX_TOKENS = 16
"""Default completion budget: "Yes" or "No" is one or two tokens; room for "**Yes.**" or "Yes, they are
equivalent.". A reasoning model that thinks in its reply needs ``JudgeConfig.max_tokens`` in the thousands."""

_PROMPT_HEAD = (
    "You are grading a model's answer to a question about an image; you do not see the image.\n"
    "Decide whether the prediction and the reference answer are semantically equivalent answers to the question: "
    "they must give the same answer, although wording, case, punctuation, articles, synonyms and number words "
    "versus digits may differ. A prediction that hedges between several answers is not equivalent.\n"
    'Reply with exactly one word: "Yes" if they are equivalent, "No" if they are not.'
)
_FIELDS_MARKER = "\n\nAnswers (JSON):\n"
# The fields go as one JSON object after a fixed marker: JSON escapes quotes and line breaks, so no
# answer text can imitate the marker or the delimiters, and a server can parse the prompt back.


def build_judge_prompt(question: str, reference: str, prediction: str) -> str:
    """The user message for one judgement (prompt ``PROMPT_ID``); deterministic for given fields."""
    fields = json.dumps({"question": question, "reference": reference, "prediction": prediction}, ensure_ascii=False)
    return _PROMPT_HEAD + _FIELDS_MARKER + fields


def parse_judge_prompt(prompt: str) -> dict[str, str] | None:
    """The ``question``, ``reference`` and ``prediction`` of a prompt built by ``build_judge_prompt``, or ``None``."""
    head, marker, tail = prompt.partition(_FIELDS_MARKER)
    if not marker:
        return None
    try:
        fields = json.loads(tail)
    except json.JSONDecodeError:
        return None
    keys = ("question", "reference", "prediction")
    if not isinstance(fields, dict) or not all(isinstance(fields.get(k), str) for k in keys):
        return None
    return {k: fields[k] for k in keys}


_STRIP_CHARS = " \t\r\n\"'`*_#>:\u201c\u201d\u2018\u2019"
_THINK = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.DOTALL | re.IGNORECASE)
# "Final answer is Yes", "Verdict: no", "Answer: **Yes**"; a bare "answer" in prose ("the answer is three") is no marker.
_FINAL_MARKER = re.compile(r"(?:\bfinal\s+(?:answer|verdict)|\bverdict)\s*(?:is\b)?\s*[:=\-]?|\banswer\s*[:=]", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]+")


def parse_verdict(text: str | None) -> bool | None:
    """``True`` for yes, ``False`` for no, ``None`` when the reply gives no verdict.

    The rule, in order:

    1. A reasoning model's thinking (``<think>...</think>``) is dropped; an unclosed ``<think>`` means
       the reply was cut before its answer: ``None``.
    2. If the reply states a final answer (``Final answer: Yes``, ``Verdict - no``, ``Answer: **Yes**``),
       the word after the last such marker is the verdict.
    3. Otherwise the first word, after quotes, markdown and punctuation: ``"Yes."``, ``"**No**"``,
       ``"Yes, they are equivalent."``, ``"No - the counts differ."``.

    Only the words yes and no count (case ignored): ``"Maybe"``, ``"Y"``, ``"Equivalent"``, ``""`` are ``None``.
    """
    if text is None:
        return None
    text = _THINK.sub(" ", text)
    if re.search(r"<think(?:ing)?>", text, re.IGNORECASE):
        return None
    markers = list(_FINAL_MARKER.finditer(text))
    if markers:
        tail = text[markers[-1].end() :].strip(_STRIP_CHARS)
        word = _WORD.match(tail)
        verdict = {"yes": True, "no": False}.get(word.group(0).lower()) if word else None
        if verdict is not None:
            return verdict
    head = text.strip(_STRIP_CHARS)
    word = _WORD.match(head)
    return {"yes": True, "no": False}.get(word.group(0).lower()) if word else None


# ---------------------------------------------------------------------------------------------
# Configuration and the key


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to judge. Holds no secret: the key is read from the environment when judging.

    ``describe()`` gives the JSON-safe dict to record in a run's ``config.json``.
    """

    base_url: str
    """The OpenAI-compatible endpoint, e.g. ``https://api.deepseek.com`` or ``http://127.0.0.1:8000/v1``."""
    model: str
    """The judge model's name at that endpoint (``deepseek-chat``, ``gpt-4o-mini``...); part of the cache key."""
    key_env: str | None = None
    """The environment variable holding the API key; ``None`` tries ``DEEPSEEK_API_KEY`` then ``OPENAI_API_KEY``.
    A loopback ``base_url`` with no key set gets a dummy key (local servers need none)."""
    concurrency: int = 8
    """Requests in flight at once (worker threads)."""
    max_attempts: int = 6
    """Hard cap on requests per item, the first included; an item still failing then is a judge error."""
    timeout_s: float = 60.0
    """Per-request timeout (connect, read, write) in seconds; a timeout is retried."""
    max_tokens: int = MAX_TOKENS
    """Completion budget per verdict; raise it (e.g. 4096) for a reasoning model that thinks in its reply."""
    backoff_base_s: float = 1.0
    """Exponential backoff with full jitter: before retry ``n`` (1-based) wait uniform(0, min(max, base * 2**(n-1)))."""
    backoff_max_s: float = 60.0
    """Cap on one backoff wait, and on an honoured ``Retry-After``."""
    cache_path: Path | None = None
    """SQLite file of successful verdicts (created if missing); ``None``: no cache."""

    def __post_init__(self) -> None:
        parsed = urlparse(self.base_url) if isinstance(self.base_url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise HallbenchError(f"judge base_url must be an http(s) URL such as https://api.deepseek.com, got {self.base_url!r}")
        check_url_has_no_credentials(self.base_url, "judge base_url")
        if not isinstance(self.model, str) or not self.model.strip():
            raise HallbenchError("judge model must be a non-empty model name such as deepseek-chat")
        check_env_name(self.key_env, "judge key_env")
        if not (isinstance(self.concurrency, int) and self.concurrency >= 1):
            raise HallbenchError(f"judge concurrency must be an integer >= 1, got {self.concurrency!r}")
        if not (isinstance(self.max_attempts, int) and 1 <= self.max_attempts <= 100):
            raise HallbenchError(f"judge max_attempts must be an integer from 1 to 100, got {self.max_attempts!r}")
        if not (isinstance(self.max_tokens, int) and self.max_tokens >= 1):
            raise HallbenchError(f"judge max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not self.timeout_s > 0:
            raise HallbenchError(f"judge timeout_s must be > 0 seconds, got {self.timeout_s!r}")
        if not (self.backoff_base_s >= 0 and self.backoff_max_s >= self.backoff_base_s):
            raise HallbenchError(
                f"judge backoff needs 0 <= backoff_base_s <= backoff_max_s, got base {self.backoff_base_s!r}, max {self.backoff_max_s!r}"
            )
        if self.cache_path is not None and not isinstance(self.cache_path, Path):
            object.__setattr__(self, "cache_path", Path(self.cache_path))  # accept a str; frozen dataclass

    @property
    def is_loopback(self) -> bool:
        """Whether ``base_url`` points at this machine (127.0.0.0/8, ::1, localhost)."""
        host = urlparse(self.base_url).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def describe(self) -> dict[str, Any]:
        """JSON-safe settings for a run's config (no key; ``key_env`` names the variable only)."""
        out = asdict(self)
        out["cache_path"] = str(self.cache_path) if self.cache_path else None
        out["prompt_id"] = PROMPT_ID
        return out


def resolve_api_key(cfg: JudgeConfig) -> tuple[str, str]:
    """The API key for ``cfg`` and where it came from: ``(key, variable name)``, or ``(dummy, "none (loopback)")``.

    Tries ``cfg.key_env``, or ``DEEPSEEK_API_KEY`` then ``OPENAI_API_KEY`` when it is ``None``. A
    loopback endpoint without a key gets ``LOCAL_DUMMY_KEY``. Otherwise raises ``HallbenchError``
    naming the variables tried (never a value).
    """
    names = (cfg.key_env,) if cfg.key_env else DEFAULT_KEY_ENVS
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value, name
    if cfg.is_loopback:
        return LOCAL_DUMMY_KEY, "none (loopback)"
    tried = " or ".join(names)
    state = "is empty or unset" if len(names) == 1 else "are all empty or unset"
    raise HallbenchError(f"the LLM judge at {cfg.base_url} needs an API key: set the environment variable {tried} ({state})")


# ---------------------------------------------------------------------------------------------
# Items and results


@dataclass(frozen=True)
class JudgeItem:
    """One answer to judge."""

    id: str
    """Unique among the items of one call (the VQA sample id)."""
    question: str
    """The question the model was asked (text only; the judge does not see the image)."""
    reference: str
    """The reference answer."""
    prediction: str
    """The model's extracted final answer (an unextracted answer is not judged: score it as wrong before)."""


@dataclass
class Judgement:
    """The judge's decision on one item. ``verdict`` is ``None`` exactly when ``error`` is set."""

    id: str
    verdict: bool | None
    """``True``: equivalent (correct); ``False``: not; ``None``: no verdict (see ``error``), never counted correct."""
    error: str | None
    """Why there is no verdict (one line, secrets scrubbed), e.g. ``"rate_limit: HTTP 429 ... (gave up after 6 attempts)"``."""
    error_kind: str | None
    """``rate_limit``, ``server_error``, ``timeout``, ``connection``, ``malformed``, ``unparseable``, ``auth``,
    ``bad_request``, ``not_found`` or ``http_<status>``; ``None`` with a verdict."""
    attempts: int
    """Requests made for this item in this call (0 when ``cached``)."""
    prompt_id: str
    """The prompt version (``PROMPT_ID``) the verdict was obtained with."""
    model: str
    """The judge model."""
    cached: bool
    """No request was made for this item: the verdict came from the cache file or from an identical
    item (same question, reference and prediction) judged earlier in the same call."""
    prompt_tokens: int = 0
    """Prompt tokens billed for this item's requests in this call (from ``response.usage``)."""
    completion_tokens: int = 0
    """Completion tokens billed for this item's requests in this call."""
    reply: str | None = None
    """The judge's raw reply text (last attempt, shortened), for auditing verdicts and unparseable replies."""

    def to_record(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        return asdict(self)


@dataclass
class _Outcome:
    """What a worker returns for one unique request (no shared state: the main thread aggregates)."""

    verdict: bool | None = None
    error: str | None = None
    error_kind: str | None = None
    reply: str | None = None
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed_kinds: list[str] = field(default_factory=list)
    backoff_s: float = 0.0


def cache_key(model: str, prompt_id: str, question: str, reference: str, prediction: str) -> str:
    """sha256 of the fields that determine a verdict (JSON-encoded, so no two field tuples collide).

    The base URL is not part of it: the same model behind another address (a proxy, a local server
    on another port) gives the same verdicts. Use another ``cache_path`` to keep them apart.
    """
    payload = json.dumps([model, prompt_id, question, reference, prediction], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# The cache


class JudgeCache:
    """Successful verdicts in SQLite (WAL), one row per cache key, committed one by one.

    Used only from the thread that created it (``check_same_thread``). WAL with ``synchronous=NORMAL``:
    a committed verdict survives the process being killed; after a power loss the last few commits
    may be rolled back, which only costs re-requesting them. Several processes may share a file
    (``busy_timeout``).
    """

    SCHEMA_VERSION = 1

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30, check_same_thread=True)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, model TEXT NOT NULL, prompt_id TEXT NOT NULL, "
                "question TEXT NOT NULL, reference TEXT NOT NULL, prediction TEXT NOT NULL, verdict INTEGER NOT NULL, "
                "reply TEXT, created REAL NOT NULL)"
            )
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self.conn.execute(f"PRAGMA user_version={self.SCHEMA_VERSION}")
            elif version != self.SCHEMA_VERSION:
                raise HallbenchError(
                    f"{self.path}: judge cache schema version {version}, this hallbench reads {self.SCHEMA_VERSION}; use another cache_path"
                )
            self.conn.commit()
        except sqlite3.DatabaseError as err:
            raise HallbenchError(f"{self.path}: cannot open the judge cache as an SQLite database ({err})") from None

    def get_many(self, keys: Iterable[str]) -> dict[str, tuple[bool, str | None]]:
        """key -> (verdict, reply) for the keys that are cached."""
        keys = list(keys)
        found: dict[str, tuple[bool, str | None]] = {}
        for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[start : start + 500]
            rows = self.conn.execute(
                f"SELECT key, verdict, reply FROM verdicts WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            found.update((key, (bool(verdict), reply)) for key, verdict, reply in rows)
        return found

    def put_many(self, model: str, verdicts: Sequence[tuple[str, JudgeItem, bool, str | None]]) -> None:
        """Store ``(key, item, verdict, reply)`` rows in one transaction and commit at once (a crash after this keeps them)."""
        if not verdicts:
            return
        now = time.time()
        with self.conn:  # one transaction: committed on exit
            self.conn.executemany(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(key, model, PROMPT_ID, it.question, it.reference, it.prediction, int(v), reply, now) for key, it, v, reply in verdicts],
            )

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------------------------------------
# One request, with retries


def _count(value: object) -> int:
    """A token count from ``usage``; 0 when a server omits it or sends nonsense."""
    return value if isinstance(value, int) and value >= 0 else 0


def _read_completion(data: object) -> tuple[str | None, int, int]:
    """``(choices[0].message.content, prompt tokens, completion tokens)`` of a chat completion body; text ``None`` if absent."""
    if not isinstance(data, dict):
        return None, 0, 0
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    try:
        text = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        text = None
    return (text if isinstance(text, str) else None), _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _client(cfg: JudgeConfig, secret: str) -> Any:
    """The openai client of a judge: no retries of its own (``_judge_one`` retries), the per-request timeout."""
    return make_client(cfg.base_url, secret, timeout_s=cfg.timeout_s)


def _judge_one(
    client: Any,
    cfg: JudgeConfig,
    item: JudgeItem,
    secret: str,
    sleep: Callable[[float], object],
    stop: threading.Event,
    key_source: str,
) -> _Outcome:
    """Request a verdict for ``item`` until one parses, a non-retryable error, or ``cfg.max_attempts``."""
    out = _Outcome()
    messages = [{"role": "user", "content": build_judge_prompt(item.question, item.reference, item.prediction)}]
    kind, detail = "cancelled", "the run was interrupted"
    while out.attempts < cfg.max_attempts and not stop.is_set():
        out.attempts += 1
        retry_after: float | None = None
        try:
            # The raw response, parsed with json: the SDK's pydantic models would cost ~40% of the
            # client's CPU per request, the bottleneck against a fast local server. Status errors
            # still raise the SDK's exceptions.
            raw = client.chat.completions.with_raw_response.create(
                model=cfg.model, messages=messages, temperature=0.0, max_tokens=cfg.max_tokens
            )
            data = raw.http_response.json()
        except Exception as err:  # noqa: BLE001 - classify() names the SDK's failures; anything else propagates
            failure = classify(err, timeout_s=cfg.timeout_s)
            if failure is None:
                raise
            kind, detail = failure.kind, failure.detail
            if failure.status in (401, 403) and key_source == "none (loopback)":
                detail += f" (no API key was set; set {cfg.key_env or ' or '.join(DEFAULT_KEY_ENVS)})"
            if not failure.retryable:
                out.failed_kinds.append(kind)
                out.error_kind, out.error = kind, scrub(f"{kind}: {detail} (not retried)", secret)
                return out
            retry_after = failure.retry_after_s
        else:
            text, prompt_tokens, completion_tokens = _read_completion(data)
            out.prompt_tokens += prompt_tokens
            out.completion_tokens += completion_tokens
            if text is None:
                kind, detail = "malformed", "the response holds no choices[0].message.content string"
            else:
                out.reply = scrub(short(text), secret)
                verdict = parse_verdict(text)
                if verdict is not None:
                    out.verdict = verdict
                    return out
                kind, detail = "unparseable", f"the judge replied {out.reply!r}, which gives no Yes or No"
        out.failed_kinds.append(kind)
        log.debug("judge item %s attempt %d: %s", item.id, out.attempts, scrub(f"{kind}: {detail}", secret))
        if out.attempts < cfg.max_attempts:
            delay = backoff_delay(out.attempts, base_s=cfg.backoff_base_s, max_s=cfg.backoff_max_s, server_s=retry_after)
            out.backoff_s += delay
            sleep(delay)
    out.error_kind = kind
    out.error = scrub(f"{kind}: {detail} (gave up after {out.attempts} attempt{'s' * (out.attempts != 1)})", secret)
    return out


# ---------------------------------------------------------------------------------------------
# The entry points


def _check_items(items: Sequence[JudgeItem]) -> None:
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, JudgeItem):
            raise HallbenchError(f"judge items must be JudgeItem objects, got {type(item).__name__}")
        for name in ("id", "question", "reference", "prediction"):
            value = getattr(item, name)
            if not isinstance(value, str):
                raise HallbenchError(f"judge item {item.id!r}: {name} must be a string, got {type(value).__name__}")
        if item.id in seen:
            raise HallbenchError(f"duplicated judge item id {item.id!r}: ids must be unique within one call")
        seen.add(item.id)


def judge_many(
    items: Sequence[JudgeItem],
    cfg: JudgeConfig,
    *,
    sleep: Callable[[float], object] | None = None,
    on_judgement: Callable[[Judgement], None] | None = None,
) -> tuple[list[Judgement], dict[str, Any]]:
    """Judge every item; return the judgements (in item order) and the usage statistics.

    Cached verdicts (``cfg.cache_path``) are reused without a request; identical items (same
    question, reference and prediction) are requested once. The rest go to the endpoint with
    ``cfg.concurrency`` worker threads, each retrying as ``JudgeConfig`` says. Each new verdict is
    committed to the cache as soon as it arrives, then ``on_judgement`` is called with it (in the
    calling thread: a progress bar, or a test's crash). If ``on_judgement`` raises (or the call is
    interrupted), the exception propagates after pending requests are cancelled; verdicts
    committed so far stay cached.

    Args:
        items: what to judge; ids must be unique.
        cfg: endpoint, model and retry policy.
        sleep: the backoff wait (tests inject a recorder); default: an interruptible ``time.sleep``.
        on_judgement: called once per item judged in this call, cache hits included.

    Returns:
        ``(judgements, stats)``. ``stats``: ``model``, ``prompt_id``, ``key_source`` (the variable the key
        came from), ``n_items``, ``n_unique``, ``cache_hits`` (items answered without a request),
        ``requests``, ``retries`` (requests beyond the first per item), ``prompt_tokens``,
        ``completion_tokens``, ``total_tokens``, ``judged``, ``judge_errors``, ``errors_by_kind`` (final
        errors), ``failed_attempts_by_kind`` (every failed request), ``backoff_s`` and ``wall_s``.

    Raises:
        HallbenchError: a bad item, a missing API key, an unreadable cache file.
    """

    start = time.perf_counter()
    _check_items(items)
    secret, key_source = resolve_api_key(cfg)
    keys = [cache_key(cfg.model, PROMPT_ID, it.question, it.reference, it.prediction) for it in items]
    first_item: dict[str, JudgeItem] = {}
    for key, item in zip(keys, items, strict=True):
        first_item.setdefault(key, item)

    cache = JudgeCache(cfg.cache_path) if cfg.cache_path else None
    stop = threading.Event()
    wait_fn = sleep if sleep is not None else stop.wait  # stop.wait(delay) sleeps, but wakes at once on interruption
    stats: dict[str, Any] = {
        "model": cfg.model,
        "prompt_id": PROMPT_ID,
        "key_source": key_source,
        "n_items": len(items),
        "n_unique": len(first_item),
        "cache_hits": 0,
        "requests": 0,
        "retries": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "judged": 0,
        "judge_errors": 0,
        "errors_by_kind": Counter(),
        "failed_attempts_by_kind": Counter(),
        "backoff_s": 0.0,
        "wall_s": 0.0,
    }
    results: dict[str, Judgement] = {}  # item id -> judgement
    waiting: dict[str, list[JudgeItem]] = {}  # key -> the items answered by its request
    for key, item in zip(keys, items, strict=True):
        waiting.setdefault(key, []).append(item)

    def finish(key: str, judgement: Judgement) -> None:
        # Called in this thread only, after the verdict is committed: records, stats, callback.
        for n, item in enumerate(waiting[key]):
            own = judgement if n == 0 else _shared(judgement, item.id)
            results[item.id] = own
            stats["cache_hits"] += own.cached
            if own.verdict is None:
                stats["judge_errors"] += 1
                stats["errors_by_kind"][own.error_kind] += 1
            else:
                stats["judged"] += 1
            if on_judgement is not None:
                on_judgement(own)

    client = None
    pool = None
    try:
        hits = cache.get_many(first_item) if cache else {}
        for key, (verdict, reply) in hits.items():
            finish(key, Judgement(first_item[key].id, verdict, None, None, 0, PROMPT_ID, cfg.model, True, reply=reply))
        todo = [key for key in first_item if key not in hits]
        if todo:
            client = _client(cfg, secret)
            pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="judge")
            # Finished futures are queued by their done-callback, so the loop below costs O(1) per
            # verdict (concurrent.futures.wait re-arms every pending future on each call).
            arrivals: queue.SimpleQueue[Future[_Outcome]] = queue.SimpleQueue()
            futures: dict[Future[_Outcome], str] = {}
            for key in todo:
                future = pool.submit(_judge_one, client, cfg, first_item[key], secret, wait_fn, stop, key_source)
                futures[future] = key
                future.add_done_callback(arrivals.put)
            remaining = len(futures)
            while remaining:
                done = [arrivals.get()]
                while not arrivals.empty():
                    done.append(arrivals.get())
                remaining -= len(done)
                arrived: list[tuple[str, Judgement]] = []
                for future in done:
                    key = futures[future]
                    outcome = future.result()
                    item = first_item[key]
                    stats["requests"] += outcome.attempts
                    stats["retries"] += max(0, outcome.attempts - 1)
                    stats["prompt_tokens"] += outcome.prompt_tokens
                    stats["completion_tokens"] += outcome.completion_tokens
                    stats["failed_attempts_by_kind"].update(outcome.failed_kinds)
                    stats["backoff_s"] += outcome.backoff_s
                    judgement = Judgement(
                        item.id, outcome.verdict, outcome.error, outcome.error_kind, outcome.attempts, PROMPT_ID, cfg.model,
                        False, outcome.prompt_tokens, outcome.completion_tokens, outcome.reply,
                    )  # fmt: skip
                    arrived.append((key, judgement))
                # Commit every verdict that has arrived (one transaction) before running any callback:
                # a callback that crashes, or a SIGKILL in it, then loses only the requests still in flight.
                if cache is not None:
                    cache.put_many(cfg.model, [(k, first_item[k], j.verdict, j.reply) for k, j in arrived if j.verdict is not None])
                for key, judgement in arrived:
                    finish(key, judgement)
    except BaseException:
        stop.set()  # workers stop retrying; requests already on the wire end within timeout_s
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=not stop.is_set(), cancel_futures=True)
        if client is not None:
            client.close()
        if cache is not None:
            cache.close()

    stats["total_tokens"] = stats["prompt_tokens"] + stats["completion_tokens"]
    stats["errors_by_kind"] = dict(sorted(stats["errors_by_kind"].items()))
    stats["failed_attempts_by_kind"] = dict(sorted(stats["failed_attempts_by_kind"].items()))
    stats["wall_s"] = time.perf_counter() - start
    return [results[item.id] for item in items], stats


PROBE_ITEM = JudgeItem("hallbench-probe", "How many stars are in the image?", "3", "three")
"""The one request :func:`probe_judge` sends: any Yes or No passes (it checks the endpoint, not the judge's taste)."""


def probe_judge(cfg: JudgeConfig, *, sleep: Callable[[float], object] | None = None) -> str:
    """Send one judgement request; return the reply, or raise ``HallbenchError`` saying why the judge cannot work.

    Called before any generation, so that a wrong URL, model name or key, or a judge whose replies
    give no verdict, costs one request instead of a whole generation run. At most three attempts
    (a transient error should not stop a run).
    """

    secret, key_source = resolve_api_key(cfg)
    client = _client(cfg, secret)
    quick = replace(cfg, max_attempts=min(cfg.max_attempts, 3), backoff_max_s=min(cfg.backoff_max_s, 2.0))
    try:
        out = _judge_one(client, quick, PROBE_ITEM, secret, sleep or time.sleep, threading.Event(), key_source)
    finally:
        client.close()
    if out.verdict is None:
        raise HallbenchError(
            f"the LLM judge at {cfg.base_url} (model {cfg.model}) does not work: {out.error}; "
            "checked before generating, so nothing was generated. Fix --judge-base-url / --judge-model / the key "
            "(or --judge-max-tokens for a reasoning model) and run again"
        )
    return out.reply or ""


def _shared(judgement: Judgement, item_id: str) -> Judgement:
    """The judgement of an identical item: same verdict, no request of its own (``cached``, 0 attempts, 0 tokens)."""
    return replace(judgement, id=item_id, attempts=0, cached=True, prompt_tokens=0, completion_tokens=0)
