"""The LLM judge against the real judge server on 127.0.0.1, through the real openai client (no mocks)."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from hallbench.errors import HallbenchError
from hallbench.eval import judge as judge_module
from hallbench.eval.judge import (
    LOCAL_DUMMY_KEY,
    PROMPT_ID,
    JudgeConfig,
    JudgeItem,
    Judgement,
    build_judge_prompt,
    judge_many,
    parse_judge_prompt,
    parse_verdict,
    resolve_api_key,
    scrub,
)
from hallbench.eval.judge_server import normalize_answer, start_judge_server

ITEMS = [
    JudgeItem("q1", "How many stars are in the image?", "3", "three"),  # equivalent
    JudgeItem("q2", "What colour is the circle?", "red", "Blue"),  # not
    JudgeItem("q3", "What shape is at the top?", "a circle", "Circle."),  # equivalent
]


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch):
    # A developer's real keys must not be picked up (nor sent, even to 127.0.0.1).
    for name in ("DEEPSEEK_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def server():
    """start(**kwargs) -> a running judge server, stopped at teardown."""
    started = []

    def start(**kwargs):
        started.append(start_judge_server(**kwargs))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def _cfg(base_url: str, **kwargs) -> JudgeConfig:
    defaults = {"model": "judge-test", "backoff_base_s": 0.01, "backoff_max_s": 5.0, "timeout_s": 5.0}
    return JudgeConfig(base_url=base_url, **{**defaults, **kwargs})


def _items(n: int) -> list[JudgeItem]:
    """n distinct items; every third prediction is wrong."""
    return [JudgeItem(f"i{k}", f"How many shapes are in image {k}?", str(k % 7), str(k % 7) if k % 3 else "many") for k in range(n)]


def _expected(items: list[JudgeItem]) -> list[bool]:
    return [normalize_answer(it.prediction) == normalize_answer(it.reference) for it in items]


# ---------------------------------------------------------------------------------------------
# End to end


def test_verdicts_end_to_end(server):
    s = server()
    judgements, stats = judge_many(ITEMS, _cfg(s.base_url))
    assert [j.id for j in judgements] == ["q1", "q2", "q3"]
    assert [j.verdict for j in judgements] == [True, False, True]
    assert all(j.error is None and j.error_kind is None and j.attempts == 1 and not j.cached for j in judgements)
    assert all(j.prompt_id == PROMPT_ID and j.model == "judge-test" for j in judgements)
    assert [j.reply for j in judgements] == ["Yes", "No", "Yes"]
    assert all(j.prompt_tokens > 10 and j.completion_tokens == 1 for j in judgements)
    assert s.requests == 3 and s.auth_headers == {f"Bearer {LOCAL_DUMMY_KEY}"}  # loopback: a dummy key
    assert stats["requests"] == 3 and stats["retries"] == 0 and stats["cache_hits"] == 0 and stats["judged"] == 3
    assert stats["prompt_tokens"] == sum(j.prompt_tokens for j in judgements) and stats["completion_tokens"] == 3
    assert stats["total_tokens"] == stats["prompt_tokens"] + 3
    assert stats["key_source"] == "none (loopback)" and stats["prompt_id"] == PROMPT_ID
    assert json.loads(json.dumps([j.to_record() for j in judgements]))[0]["prompt_id"] == PROMPT_ID


def test_identical_items_are_requested_once(server):
    s = server()
    items = [JudgeItem(f"d{k}", "How many stars?", "2", "two") for k in range(5)]
    judgements, stats = judge_many(items, _cfg(s.base_url))
    assert s.requests == 1 and stats["requests"] == 1 and stats["n_unique"] == 1
    assert all(j.verdict is True for j in judgements)
    assert [j.attempts for j in judgements] == [1, 0, 0, 0, 0] and [j.cached for j in judgements] == [False] + [True] * 4


def test_bad_items_are_rejected_and_no_items_is_no_request():
    cfg = _cfg("http://127.0.0.1:9/v1")
    assert judge_many([], cfg)[0] == [] and judge_many([], cfg)[1]["requests"] == 0
    with pytest.raises(HallbenchError, match="duplicated judge item id 'a'"):
        judge_many([JudgeItem("a", "q", "r", "p"), JudgeItem("a", "q", "r", "x")], cfg)
    with pytest.raises(HallbenchError, match="judge item 'b': prediction must be a string, got NoneType"):
        judge_many([JudgeItem("b", "q", "r", None)], cfg)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Retries


@pytest.mark.parametrize(
    "fault, kind",
    [
        ("429:2", "rate_limit"),
        ("429", "rate_limit"),
        ("500", "server_error"),
        ("503", "server_error"),
        ("slow:1", "timeout"),
        ("malformed", "malformed"),
        ("empty", "malformed"),
        ("drop", "connection"),
        ("maybe", "unparseable"),
    ],
)
def test_a_transient_failure_is_retried(server, fault, kind):
    s = server(faults=[fault])  # the first request fails, the second is answered
    sleeps: list[float] = []
    cfg = _cfg(s.base_url, timeout_s=0.25 if fault.startswith("slow") else 5.0, backoff_base_s=0.5)
    [judgement], stats = judge_many(ITEMS[:1], cfg, sleep=sleeps.append)
    assert judgement.verdict is True and judgement.error is None and judgement.attempts == 2
    assert s.requests == 2 and stats["requests"] == 2 and stats["retries"] == 1
    assert stats["failed_attempts_by_kind"] == {kind: 1} and stats["errors_by_kind"] == {}
    assert len(sleeps) == 1
    if fault.startswith("429"):
        assert sleeps == [2.0] if fault == "429:2" else sleeps == [1.0]  # Retry-After honoured, not the jitter
    else:
        assert 0 <= sleeps[0] <= 0.5  # full jitter on the first retry: uniform(0, base)


def test_retry_after_is_capped_by_backoff_max(server):
    s = server(faults=["429:30"])
    sleeps: list[float] = []
    [judgement], _ = judge_many(ITEMS[:1], _cfg(s.base_url, backoff_max_s=3.0), sleep=sleeps.append)
    assert judgement.verdict is True and sleeps == [3.0]


def test_backoff_is_exponential_with_full_jitter_and_a_hard_cap(server):
    s = server(faults=lambda n, fields: "500")
    sleeps: list[float] = []
    cfg = _cfg(s.base_url, max_attempts=5, backoff_base_s=0.1, backoff_max_s=0.3)
    [judgement], stats = judge_many(ITEMS[:1], cfg, sleep=sleeps.append)
    assert s.requests == 5 and judgement.attempts == 5 and stats["retries"] == 4  # the cap
    assert len(sleeps) == 4 and all(0 <= d <= bound for d, bound in zip(sleeps, [0.1, 0.2, 0.3, 0.3], strict=True))
    assert judgement.verdict is None and judgement.error_kind == "server_error"
    assert judgement.error.startswith("server_error: HTTP 500") and judgement.error.endswith("(gave up after 5 attempts)")
    assert stats["backoff_s"] == pytest.approx(sum(sleeps))


def test_the_default_sleep_really_waits(server):
    s = server(faults=["500", "500"])
    [judgement], stats = judge_many(ITEMS[:1], _cfg(s.base_url, backoff_base_s=0.05, backoff_max_s=0.05))
    assert judgement.verdict is True and judgement.attempts == 3
    assert stats["wall_s"] >= stats["backoff_s"] > 0


@pytest.mark.parametrize("status, kind", [("400", "bad_request"), ("401", "auth"), ("403", "auth"), ("404", "not_found")])
def test_non_retryable_errors_fail_at_once(server, status, kind):
    s = server(faults=lambda n, fields: status)
    sleeps: list[float] = []
    [judgement], stats = judge_many(ITEMS[:1], _cfg(s.base_url), sleep=sleeps.append)
    assert s.requests == 1 and sleeps == [] and judgement.attempts == 1
    assert judgement.verdict is None and judgement.error_kind == kind
    assert judgement.error.startswith(f"{kind}: HTTP {status}") and judgement.error.endswith("(not retried)")
    if status == "401":
        assert "no API key was set; set DEEPSEEK_API_KEY or OPENAI_API_KEY" in judgement.error
    assert stats["errors_by_kind"] == {kind: 1}


def test_failed_judgements_are_excluded_from_the_accuracy(server):
    items = [*ITEMS, JudgeItem("q4", "How many?", "4", "FAIL"), JudgeItem("q5", "How many?", "5", "UNSURE")]

    def faults(n, fields):
        return {"FAIL": "500", "UNSURE": "maybe"}.get(fields.get("prediction"))

    s = server(faults=faults)
    judgements, stats = judge_many(items, _cfg(s.base_url, max_attempts=3), sleep=lambda _: None)
    assert [j.verdict for j in judgements] == [True, False, True, None, None]
    assert judgements[3].error_kind == "server_error" and judgements[4].error_kind == "unparseable"
    assert judgements[4].error == "unparseable: the judge replied 'Maybe', which gives no Yes or No (gave up after 3 attempts)"
    assert judgements[4].reply == "Maybe"
    assert s.requests == 3 + 3 + 3 and stats["judge_errors"] == 2 and stats["judged"] == 3


# ---------------------------------------------------------------------------------------------
# The cache


def test_a_cached_rerun_makes_no_request_and_errors_are_retried(server, tmp_path):
    failing = {"on": True}
    s = server(faults=lambda n, fields: "500" if failing["on"] and fields.get("prediction") == "three" else None)
    cfg = _cfg(s.base_url, cache_path=tmp_path / "cache" / "judge.sqlite", max_attempts=2)
    first, stats1 = judge_many(ITEMS, cfg, sleep=lambda _: None)
    assert [j.verdict for j in first] == [None, False, True] and s.requests == 4
    assert stats1["judge_errors"] == 1

    failing["on"] = False
    s.reset_counts()
    second, stats2 = judge_many(ITEMS, cfg)
    assert s.requests == 1 and stats2["requests"] == 1 and stats2["cache_hits"] == 2  # only the failed item
    assert [j.verdict for j in second] == [True, False, True] and [j.cached for j in second] == [False, True, True]

    s.reset_counts()
    third, stats3 = judge_many(ITEMS, cfg)
    assert s.requests == 0 and stats3["requests"] == 0 and stats3["cache_hits"] == 3
    assert [j.verdict for j in third] == [True, False, True] and all(j.cached and j.attempts == 0 for j in third)
    assert [j.reply for j in third] == ["Yes", "No", "Yes"] and all(j.prompt_id == PROMPT_ID for j in third)
    with sqlite3.connect(cfg.cache_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 3


def test_the_prompt_id_and_the_model_are_part_of_the_cache_key(server, tmp_path, monkeypatch):
    s = server()
    cfg = _cfg(s.base_url, cache_path=tmp_path / "judge.sqlite")
    judge_many(ITEMS, cfg)
    judge_many(ITEMS, _cfg(s.base_url, cache_path=tmp_path / "judge.sqlite", model="another-judge"))
    assert s.requests == 6
    monkeypatch.setattr(judge_module, "PROMPT_ID", "equiv-test")
    judgements, _ = judge_many(ITEMS, cfg)
    assert s.requests == 9 and {j.prompt_id for j in judgements} == {"equiv-test"}


def test_a_file_that_is_not_a_cache_is_a_clear_error(server, tmp_path):
    bad = tmp_path / "judge.sqlite"
    bad.write_text("not a database " * 100)
    with pytest.raises(HallbenchError, match=r"judge.sqlite: cannot open the judge cache as an SQLite database"):
        judge_many(ITEMS, _cfg(server().base_url, cache_path=bad))


def _committed(cache) -> int:
    with sqlite3.connect(cache) as conn:
        return conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]


def test_an_exception_mid_run_keeps_the_committed_verdicts(server, tmp_path):
    s = server(latency_s=0.02)
    items = _items(30)
    cfg = _cfg(s.base_url, cache_path=tmp_path / "judge.sqlite", concurrency=4)
    seen: list[Judgement] = []

    def crash_after_10(judgement):
        seen.append(judgement)
        if len(seen) == 10:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        judge_many(items, cfg, on_judgement=crash_after_10)
    committed = _committed(cfg.cache_path)
    # Verdicts are committed before they are reported; at most the requests in flight (<= concurrency)
    # plus the ones answered in the same instant are lost.
    assert 10 <= committed < 30 and s.requests - committed <= 2 * 4
    s.wait_idle()
    s.reset_counts()
    judgements, stats = judge_many(items, cfg)
    assert s.requests == 30 - committed and stats["cache_hits"] == committed  # the rerun judges only the rest
    assert all(j.cached for j in judgements if j.id in {r.id for r in seen})
    assert [j.verdict for j in judgements] == _expected(items)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal
    from pathlib import Path
    from hallbench.eval.judge import JudgeConfig, JudgeItem, judge_many
    items = [JudgeItem(*fields) for fields in {items!r}]
    cfg = JudgeConfig(base_url={url!r}, model="judge-test", concurrency=4, cache_path=Path({cache!r}))
    count = 0
    def kill(judgement):
        global count
        count += 1
        print(judgement.id, flush=True)
        if count == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)
    judge_many(items, cfg, on_judgement=kill)
    """
)


def test_a_sigkill_mid_run_loses_only_the_requests_in_flight(server, tmp_path):
    s = server(latency_s=0.05)
    items = _items(24)
    cache = tmp_path / "judge.sqlite"
    script = KILL_SCRIPT.format(
        items=[(it.id, it.question, it.reference, it.prediction) for it in items], url=s.base_url, cache=str(cache), kill_after=6
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr[-2000:]
    reported = proc.stdout.split()
    assert len(reported) == 6
    committed = _committed(cache)
    s.wait_idle()  # a request the killed client had sent may reach a handler thread only now
    assert 6 <= committed < 24 and s.requests - committed <= 2 * 4  # lost: only what was in flight

    s.reset_counts()
    judgements, stats = judge_many(items, _cfg(s.base_url, cache_path=cache, concurrency=4))
    assert s.requests == 24 - committed and stats["requests"] == 24 - committed and stats["cache_hits"] == committed
    assert all(j.cached for j in judgements if j.id in reported)  # everything reported before the kill was on disk
    assert [j.verdict for j in judgements] == _expected(items)


# ---------------------------------------------------------------------------------------------
# Concurrency


def test_requests_overlap_with_concurrency(server):
    s = server(latency_s=0.05)
    items = _items(16)
    judgements, _ = judge_many(items, _cfg(s.base_url, concurrency=8))
    assert s.max_in_flight > 1 and s.requests == 16
    assert [j.verdict for j in judgements] == _expected(items)

    serial = server(latency_s=0.01)
    judge_many(items[:5], _cfg(serial.base_url, concurrency=1))
    assert serial.max_in_flight == 1


# ---------------------------------------------------------------------------------------------
# Secrets

SECRET = "sk-hb-LEAKCHECK-7f3a9c2e41b0d5"


def test_the_key_never_leaks(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HB_JUDGE_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    behaviours = {
        "echo": "echo_key_401",
        "boom": "500",
        "garbled": "malformed",
        "unsure": "maybe",
        "gone": "drop",
        "busy": "429:0",
        "late": "slow:2",
        "leaky-reply": f"reply:{SECRET}",
    }
    s = server(faults=lambda n, fields: behaviours.get(fields.get("prediction")))
    items = [JudgeItem(name, "How many?", "2", name) for name in behaviours] + [JudgeItem("fine", "How many?", "2", "two")]
    cfg = _cfg(s.base_url, key_env="HB_JUDGE_TEST_KEY", cache_path=tmp_path / "judge.sqlite", max_attempts=2, timeout_s=0.5)
    judgements, stats = judge_many(items, cfg, sleep=lambda _: None)
    records = [j.to_record() for j in judgements]
    (tmp_path / "judgements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "stats.json").write_text(json.dumps(stats))

    assert s.auth_headers == {f"Bearer {SECRET}"}  # the key was really used...
    by_id = {j.id: j for j in judgements}
    assert by_id["echo"].error_kind == "auth" and "[redacted]" in by_id["echo"].error  # ...and echoed back by the server
    assert by_id["leaky-reply"].error_kind == "unparseable" and by_id["late"].error_kind == "timeout" and by_id["fine"].verdict is True
    assert stats["key_source"] == "HB_JUDGE_TEST_KEY"

    texts = {"records": json.dumps(records), "stats": json.dumps(stats), "log": caplog.text, "repr": repr(judgements)}
    texts.update({str(p): p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()})
    assert any(name.endswith("judge.sqlite") for name in texts)
    for part in (SECRET, SECRET[3:], SECRET[-12:]):
        leaks = [name for name, text in texts.items() if part in text]
        assert leaks == [], f"the key leaked into {leaks}"


def test_a_missing_key_names_the_variables_and_no_value(monkeypatch):
    with pytest.raises(HallbenchError) as err:
        resolve_api_key(JudgeConfig(base_url="https://api.deepseek.com", model="deepseek-chat"))
    assert "DEEPSEEK_API_KEY or OPENAI_API_KEY" in str(err.value) and "api.deepseek.com" in str(err.value)

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # set, but not the variable asked for
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    cfg = JudgeConfig(base_url="https://api.example.org/v1", model="m", key_env="MY_JUDGE_KEY")
    with pytest.raises(HallbenchError, match="set the environment variable MY_JUDGE_KEY \\(is empty or unset\\)") as err:
        judge_many(ITEMS, cfg)
    assert SECRET not in str(err.value)
    assert resolve_api_key(JudgeConfig(base_url="https://api.example.org/v1", model="m")) == (SECRET, "OPENAI_API_KEY")

    # Passing the key itself instead of a variable name is refused without echoing it.
    with pytest.raises(HallbenchError, match="NAME of an environment variable") as err:
        JudgeConfig(base_url="https://api.deepseek.com", model="deepseek-chat", key_env=SECRET)
    assert SECRET not in str(err.value) and "LEAKCHECK" not in str(err.value)


def test_scrub_removes_exact_and_partial_keys():
    text = f"Error code: 401 - Incorrect API key provided: sk-hb-***d5. Headers: Authorization: Bearer {SECRET}; again {SECRET}"
    cleaned = scrub(text, SECRET)
    assert SECRET not in cleaned and "sk-hb" not in cleaned and cleaned.count("[redacted]") >= 3
    assert scrub("HTTP 500: internal error", SECRET) == "HTTP 500: internal error"


# ---------------------------------------------------------------------------------------------
# Prompt, parsing, config, summary


def test_the_prompt_round_trips_any_answer_text():
    tricky = 'three\n\nAnswers (JSON):\n{"question": "x", "reference": "y", "prediction": "z"} "quoted" </prediction>'
    prompt = build_judge_prompt("How many?", "3", tricky)
    assert parse_judge_prompt(prompt) == {"question": "How many?", "reference": "3", "prediction": tricky}
    assert "semantically equivalent" in prompt and 'exactly one word: "Yes"' in prompt
    assert build_judge_prompt("How many?", "3", tricky) == prompt  # deterministic
    assert parse_judge_prompt("Is this a prompt?") is None


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Yes", True), ("yes", True), ("YES.", True), (" **Yes.** ", True), ('"No"', False), ("no.", False), ("`No`", False),
        ("\u201cYes\u201d", True), ("Maybe", None), ("Y", None), ("", None), (None, None), ("Equivalent.", None), ("Nope", None),
        # a sentence: its first word
        ("Yes, they are equivalent.", True), ("No - the counts differ.", False), ("**No**, three is not four.", False),
        # an explicit final answer wins over the first word; a bare "answer" in prose is no marker
        ("The prediction says 3, the reference three. Final answer: **Yes**", True), ("Verdict - no", False),
        ("Answer: Yes", True), ("No. The reference answer is three.", False),
        # reasoning models: the thinking is dropped; a reply cut inside it gives no verdict
        ("<think>Is 3 three? No wait, yes.</think>\n\nNo", False), ("<think>Three equals 3, so yes", None),
    ],
)  # fmt: skip
def test_verdict_parsing(text, verdict):
    assert parse_verdict(text) is verdict


@pytest.mark.parametrize(
    "a, b, equal",
    [
        ("three", "3", True), ("Three.", "3", True), ("twenty-one", "21", True), ("A red circle", "red circle", True),
        ("The CAT!", "cat", True), ("an apple", "Apple", True), ("1,000", "1000", True), ("3.5", "3.5", True), ("3.5", "35", False),
        ("two", "3", False), ("kitten", "cat", False), ("zero", "0", True), ("on the left", "left", False),
    ],
)  # fmt: skip
def test_the_server_normaliser(a, b, equal):
    assert (normalize_answer(a) == normalize_answer(b)) is equal


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"base_url": "api.deepseek.com"}, "judge base_url must be an http\\(s\\) URL"),
        ({"base_url": "https://user:pw@api.deepseek.com"}, "must not contain credentials"),
        ({"model": " "}, "judge model must be a non-empty model name"),
        ({"concurrency": 0}, "judge concurrency must be an integer >= 1, got 0"),
        ({"max_attempts": 0}, "judge max_attempts must be an integer from 1 to 100, got 0"),
        ({"timeout_s": 0}, "judge timeout_s must be > 0 seconds"),
        ({"backoff_base_s": 2.0, "backoff_max_s": 1.0}, "0 <= backoff_base_s <= backoff_max_s"),
        ({"key_env": "MY KEY"}, "NAME of an environment variable"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(HallbenchError, match=message):
        JudgeConfig(**{"base_url": "https://api.deepseek.com", "model": "deepseek-chat", **kwargs})


def test_config_describe_and_loopback(tmp_path):
    cfg = JudgeConfig(base_url="http://localhost:8000/v1", model="m", cache_path=str(tmp_path / "c.sqlite"))  # type: ignore[arg-type]
    assert cfg.is_loopback and cfg.cache_path == tmp_path / "c.sqlite"
    assert cfg.describe()["prompt_id"] == PROMPT_ID and json.dumps(cfg.describe())
    assert resolve_api_key(cfg) == (LOCAL_DUMMY_KEY, "none (loopback)")
    assert not JudgeConfig(base_url="https://api.deepseek.com", model="m").is_loopback
    assert JudgeConfig(base_url="http://[::1]:8000/v1", model="m").is_loopback
