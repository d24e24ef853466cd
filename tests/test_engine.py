"""The generation engine: batching equivalence, resume after SIGKILL, torn writes, bad images, backends."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hallbench.errors import HallbenchError
from hallbench.eval.engine import DecodingConfig, HFBackend, OpenAIBackend, Sample, generate_predictions, read_predictions
from hallbench.models.loading import LoadedModel
from hallbench.models.registry import resolve_model

PROMPTS = ("Is there a star in the image?", "Please describe this image in detail.", "How many objects are in the image?")


def _samples(shapes_dir: Path, n: int) -> list[Sample]:
    images = sorted((shapes_dir / "images").glob("shapes_val_*.png"))
    return [Sample(id=f"q{i}", images=[images[i % len(images)]], prompt=PROMPTS[i % 3], meta={"k": i}) for i in range(n)]


def _score(sample: Sample, answer: str) -> dict:
    return {"n_chars": len(answer)}


@pytest.fixture(scope="module")
def qwen_backend_factory(tiny_models):
    from hallbench.models import get_family

    model, processor = tiny_models["tiny-qwen"]
    loaded = LoadedModel(model, processor, get_family("qwen3_vl"), resolve_model("tiny-qwen"))
    return lambda decoding: HFBackend("tiny-qwen", decoding, loaded=loaded)


def test_batched_greedy_equals_one_at_a_time(tmp_path, shapes_dir, qwen_backend_factory):
    samples = _samples(shapes_dir, 7)
    results = {}
    for batch_size in (1, 4):
        decoding = DecodingConfig(max_new_tokens=8, batch_size=batch_size)
        out = tmp_path / f"b{batch_size}"
        out.mkdir()
        results[batch_size] = generate_predictions(samples, qwen_backend_factory(decoding), decoding, out, _score, progress=False)
    assert [r["prediction"] for r in results[1]] == [r["prediction"] for r in results[4]]
    assert [r["id"] for r in results[4]] == [f"q{i}" for i in range(7)]
    assert results[4][0]["k"] == 0 and results[4][0]["n_chars"] == len(results[4][0]["prediction"])
    assert len(read_predictions(tmp_path / "b4" / "predictions.jsonl")) == 7


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_engine import _samples, _score
    from hallbench.eval.engine import DecodingConfig, HFBackend, generate_predictions
    decoding = DecodingConfig(decoding={decoding!r}, max_new_tokens=6, batch_size=2, seed=3, **{extra!r})
    def kill(chunk):
        if chunk == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)
    generate_predictions(_samples(Path({shapes!r}), 9), HFBackend("tiny-qwen", decoding), decoding, Path({out!r}), _score,
                         progress=False, on_chunk=kill)
    """
)


@pytest.mark.parametrize("decoding, extra", [("greedy", {}), ("sample", {"temperature": 1.5})])
def test_resume_after_sigkill_gives_the_same_records(tmp_path, shapes_dir, decoding, extra):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir()
    clean.mkdir()
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent), decoding=decoding, extra=extra, kill_after=1, shapes=str(shapes_dir), out=str(killed)
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(read_predictions(killed / "predictions.jsonl")) == 4  # chunks 0 and 1 of size 2 were flushed

    cfg = DecodingConfig(decoding=decoding, max_new_tokens=6, batch_size=2, seed=3, **extra)
    resumed = generate_predictions(_samples(shapes_dir, 9), HFBackend("tiny-qwen", cfg), cfg, killed, _score, progress=False)
    reference = generate_predictions(_samples(shapes_dir, 9), HFBackend("tiny-qwen", cfg), cfg, clean, _score, progress=False)
    assert resumed == reference
    on_disk = read_predictions(killed / "predictions.jsonl")
    assert sorted(r["id"] for r in on_disk) == sorted(f"q{i}" for i in range(9))  # every id exactly once


def test_a_torn_last_line_is_dropped_and_regenerated(tmp_path, shapes_dir, qwen_backend_factory):
    decoding = DecodingConfig(max_new_tokens=4, batch_size=2)
    samples = _samples(shapes_dir, 4)
    first = generate_predictions(samples, qwen_backend_factory(decoding), decoding, tmp_path, _score, progress=False)
    path = tmp_path / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:20])  # killed in the middle of writing q3
    again = generate_predictions(samples, qwen_backend_factory(decoding), decoding, tmp_path, _score, progress=False)
    assert again == first
    assert [r["id"] for r in read_predictions(path)] == ["q0", "q1", "q2", "q3"]


def test_a_last_line_torn_inside_a_multibyte_character_is_dropped(tmp_path):
    path = tmp_path / "predictions.jsonl"
    whole = json.dumps({"id": "b", "prediction": "Ja, ein Bär."}, ensure_ascii=False).encode("utf-8")
    cut = whole[: whole.index("ä".encode()) + 1]  # the first of the two bytes of "ä"
    path.write_bytes(b'{"id": "a", "prediction": "\xc3\xa9t\xc3\xa9"}\n' + cut)
    assert read_predictions(path) == [{"id": "a", "prediction": "été"}]
    path.write_bytes(b'{"id": "a"}\n\xff\xfe\n{"id": "c"}\n')  # an undecodable line that is not the last: an error
    with pytest.raises(HallbenchError, match=r"line 2: corrupt prediction record"):
        read_predictions(path)


def test_a_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(HallbenchError, match=r"predictions.jsonl, line 2: corrupt prediction record"):
        read_predictions(path)


def test_unreadable_images_become_error_records_unless_strict(tmp_path, shapes_dir, qwen_backend_factory):
    samples = _samples(shapes_dir, 3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    samples[1] = Sample("q1", [broken], PROMPTS[0])
    decoding = DecodingConfig(max_new_tokens=3, batch_size=3)
    out = tmp_path / "out"
    out.mkdir()
    records = generate_predictions(samples, qwen_backend_factory(decoding), decoding, out, _score, progress=False)
    assert [r["error"] is None for r in records] == [True, False, True]
    assert records[1]["error"].startswith(f"cannot decode image {broken} (referenced by sample q1)")
    assert records[1]["prediction"] is None
    strict_out = tmp_path / "strict"
    strict_out.mkdir()
    with pytest.raises(HallbenchError, match="cannot decode image"):
        generate_predictions(samples, qwen_backend_factory(decoding), decoding, strict_out, _score, progress=False, strict=True)


def test_duplicate_sample_ids_are_rejected(tmp_path, shapes_dir, qwen_backend_factory):
    samples = _samples(shapes_dir, 2)
    samples[1].id = "q0"
    decoding = DecodingConfig()
    with pytest.raises(HallbenchError, match="duplicated sample id 'q0'"):
        generate_predictions(samples, qwen_backend_factory(decoding), decoding, tmp_path, _score, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"decoding": "nucleus"}, "--decoding must be one of greedy, sample, beam"),
        ({"decoding": "beam", "num_beams": 1}, "--decoding beam needs --num-beams >= 2"),
        ({"decoding": "greedy", "temperature": 0.7}, "--temperature/--top-p only apply to --decoding sample"),
        ({"decoding": "sample", "temperature": 0}, "sampling needs --temperature > 0"),
        ({"batch_size": 0}, "--max-new-tokens and --batch-size must be >= 1"),
    ],
)
def test_decoding_config_rejects_contradictions(kwargs, message):
    with pytest.raises(HallbenchError, match=message):
        DecodingConfig(**kwargs)


def test_beam_search_runs_batched(tmp_path, shapes_dir, qwen_backend_factory):
    decoding = DecodingConfig(decoding="beam", num_beams=2, max_new_tokens=4, batch_size=3)
    records = generate_predictions(_samples(shapes_dir, 3), qwen_backend_factory(decoding), decoding, tmp_path, _score, progress=False)
    assert all(isinstance(r["prediction"], str) and r["error"] is None for r in records)


# ---------------------------------------------------------------------------------------------
# The openai backend, against a real HTTP server on 127.0.0.1 with the real openai client


class _ChatServer(BaseHTTPRequestHandler):
    requests: list[dict] = []
    auth: list[str] = []
    failures: list[int | str] = []
    """HTTP statuses (or "html": a 200 that is no completion) to answer the next requests with, in order."""

    def do_POST(self):  # noqa: N802 - http.server naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        type(self).auth.append(self.headers.get("Authorization", ""))
        if type(self).failures and type(self).failures[0] == "html":  # a proxy's page instead of a completion
            type(self).failures.pop(0)
            page = b"<html>gateway</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if type(self).failures:
            status = type(self).failures.pop(0)
            # As OpenAI does on a 401, the error echoes part of the key.
            key = self.headers.get("Authorization", "").removeprefix("Bearer ")
            error = json.dumps({"error": {"message": f"status {status}; Incorrect API key provided: {key}", "type": "x"}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        content = body["messages"][0]["content"]
        n_images = sum(
            1 for part in content if part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
        )
        text = next(part["text"] for part in content if part["type"] == "text")
        answer = f"{n_images} image(s): {text}"
        payload = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }  # fmt: skip
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def chat_server():
    _ChatServer.requests, _ChatServer.auth, _ChatServer.failures = [], [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_openai_backend_sends_images_as_data_urls(tmp_path, shapes_dir, chat_server, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("HALLBENCH_TEST_KEY", secret)
    decoding = DecodingConfig(max_new_tokens=5, batch_size=2)
    backend = OpenAIBackend(chat_server, "served-model", decoding, key_env="HALLBENCH_TEST_KEY")
    records = generate_predictions(_samples(shapes_dir, 3), backend, decoding, tmp_path, _score, progress=False)
    assert [r["prediction"] for r in records] == [f"1 image(s): {PROMPTS[i]}" for i in range(3)]
    assert len(_ChatServer.requests) == 3
    assert {r["temperature"] for r in _ChatServer.requests} == {0.0}
    assert set(_ChatServer.auth) == {f"Bearer {secret}"}
    assert secret not in json.dumps(backend.describe())
    assert all(secret not in p.read_text() for p in tmp_path.rglob("*") if p.is_file())


def test_openai_backend_retries_like_the_judge_and_stops_with_a_scrubbed_line(tmp_path, shapes_dir, chat_server, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("HALLBENCH_TEST_KEY", secret)
    waits: list[float] = []
    monkeypatch.setattr(OpenAIBackend, "_sleep", staticmethod(waits.append))
    decoding = DecodingConfig(max_new_tokens=5, batch_size=1)
    backend = OpenAIBackend(chat_server, "served-model", decoding, key_env="HALLBENCH_TEST_KEY")
    for name in "abc":
        (tmp_path / name).mkdir()
    _ChatServer.failures = [503, "html", 429]  # retryable: answered on the fourth request
    records = generate_predictions(_samples(shapes_dir, 1), backend, decoding, tmp_path / "a", _score, progress=False)
    assert records[0]["prediction"] == f"1 image(s): {PROMPTS[0]}" and len(_ChatServer.requests) == 4 and len(waits) == 3
    assert all(0 <= w <= OpenAIBackend.BACKOFF_MAX_S for w in waits)
    _ChatServer.requests, _ChatServer.failures = [], [401]  # not retryable: one request, one line, no key
    with pytest.raises(HallbenchError) as failed:
        generate_predictions(_samples(shapes_dir, 2), backend, decoding, tmp_path / "b", _score, progress=False)
    message = str(failed.value)
    assert "auth: HTTP 401" in message and "(not retried)" in message and "run again to resume" in message
    assert secret not in message and "sk-test" not in message and len(_ChatServer.requests) == 1
    _ChatServer.requests, _ChatServer.failures = [], [500] * OpenAIBackend.ATTEMPTS  # every attempt fails
    with pytest.raises(HallbenchError, match=f"server_error: HTTP 500.*gave up after {OpenAIBackend.ATTEMPTS} attempts"):
        generate_predictions(_samples(shapes_dir, 1), backend, decoding, tmp_path / "c", _score, progress=False)
    assert len(_ChatServer.requests) == OpenAIBackend.ATTEMPTS


def test_openai_backend_needs_its_key(monkeypatch):
    monkeypatch.delenv("HALLBENCH_MISSING_KEY", raising=False)
    with pytest.raises(HallbenchError, match="needs an API key in the environment variable HALLBENCH_MISSING_KEY"):
        OpenAIBackend("http://127.0.0.1:1/v1", "m", DecodingConfig(), key_env="HALLBENCH_MISSING_KEY")
