"""``hallbench eval --bench vqa``: final-answer extraction, judge verdicts that never count a failure as correct, BERTScore."""

from __future__ import annotations

import json
import socket

import pytest
from scripted import ScriptedBackend
from typer.testing import CliRunner

from hallbench.cli import app
from hallbench.errors import HallbenchError
from hallbench.eval.judge_server import start_judge_server
from hallbench.eval.run import EvalConfig, run_eval
from hallbench.eval.vqa import extract_final_answer

MARKER = "### The final answer is:"


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"I see a red star. {MARKER} 1", ("I see a red star.", "1", True)),
        (f"I see two. {MARKER} 2.", ("I see two.", "2", True)),
        (f"{MARKER}yes", ("", "yes", True)),
        (f"Format: {MARKER} X. Reasoning... {MARKER} blue", (f"Format: {MARKER} X. Reasoning...", "blue", True)),  # the last marker counts
        ("  just an answer  ", ("", "just an answer", False)),
        ("i see one. ### the final answer is : 1", ("i see one.", "1", True)),  # a word-level tokenizer's spacing
        ("I see one. ###The Final Answer is:one", ("I see one.", "one", True)),
        ("", ("", "", False)),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text, MARKER) == expected


@pytest.fixture()
def vqa_file(tmp_path, shapes_dir):
    items = json.loads((shapes_dir / "eval_vqa.json").read_text())[:8]  # 4 CLOSED + 4 OPEN, alternating
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps(items))
    return path, items


def _answers(items):
    """CLOSED: right, right (as a number word), wrong, no marker; OPEN: the reference, something else, no marker, empty."""
    closed = [i for i in items if i["answer_type"] == "CLOSED"]
    opened = [i for i in items if i["answer_type"] == "OPEN"]
    number_words = {"1": "one", "2": "two", "3": "three", "4": "four"}
    table = {
        closed[0]["id"]: f"Looking. {MARKER} {closed[0]['answer']}",
        closed[1]["id"]: f"Looking. {MARKER} {number_words.get(closed[1]['answer'], closed[1]['answer']).upper()}",
        closed[2]["id"]: f"Looking. {MARKER} definitely not that",
        closed[3]["id"]: closed[3]["answer"],
        opened[0]["id"]: f"Hmm. {MARKER} {opened[0]['answer']}",
        opened[1]["id"]: f"Hmm. {MARKER} the stock market fell sharply today",
        opened[2]["id"]: opened[2]["answer"],
        opened[3]["id"]: f"Hmm. {MARKER}",
    }
    return lambda sample: table[sample.id]


def _config(tmp_path, path, shapes_dir, base_url, **extra):
    return EvalConfig.from_flags(
        bench="vqa", data=path, images=shapes_dir / "images", out=tmp_path / "run", judge_base_url=base_url, judge_model="local", **extra
    )


def test_vqa_end_to_end_with_the_local_judge(tmp_path, shapes_dir, vqa_file):
    path, items = vqa_file
    with start_judge_server() as server:
        summary = run_eval(_config(tmp_path, path, shapes_dir, server.base_url), backend=ScriptedBackend(_answers(items)), progress=False)
        first_requests = server.requests
        again = run_eval(_config(tmp_path, path, shapes_dir, server.base_url), backend=ScriptedBackend(_answers(items)), progress=False)
        assert server.requests == first_requests + 1  # the probe only: every verdict came from the cache
    metrics = summary["metrics"]
    assert metrics["closed_accuracy"] == pytest.approx(3 / 4)  # right, right ("TWO" == "2"), wrong, right without marker
    assert (summary["n_closed"], summary["n_closed_judged"], summary["judge_errors"]) == (4, 4, 0)
    assert summary["n_missing_marker"] == 2 and metrics["missing_marker_rate"] == pytest.approx(2 / 8)
    assert summary["bertscore"]["rescaled"] is False and "L6" in summary["bertscore"]["hash"]
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "predictions.jsonl").read_text().splitlines())}
    opened = [i["id"] for i in items if i["answer_type"] == "OPEN"]
    f1 = [records[i]["bertscore"]["f1"] for i in opened]
    assert f1[0] > 0.99 and f1[1] < 0.5 and f1[3] == 0.0  # the reference (less its final period), unrelated, empty
    assert records[opened[2]]["missing_marker"] is True and records[opened[2]]["final_answer"] == next(
        i["answer"] for i in items if i["id"] == opened[2]
    )
    closed_record = records[items[0]["id"]]
    assert closed_record["judge"]["prompt_id"] and closed_record["correct"] is True
    assert again["metrics"] == metrics


def test_require_marker_counts_missing_markers_as_wrong(tmp_path, shapes_dir, vqa_file):
    path, items = vqa_file
    with start_judge_server() as server:
        summary = run_eval(
            _config(tmp_path, path, shapes_dir, server.base_url, require_marker=True),
            backend=ScriptedBackend(_answers(items)),
            progress=False,
        )
    assert summary["metrics"]["closed_accuracy"] == pytest.approx(2 / 4)  # the unmarked right answer is now wrong
    assert summary["n_open_excluded"] == 1


def test_judge_failures_are_excluded_never_correct(tmp_path, shapes_dir, vqa_file, monkeypatch):
    path, items = vqa_file
    # every request fails with a 500: all CLOSED judgements are errors
    with start_judge_server(faults=lambda n, fields: "ok" if n == 1 else "500") as server:  # the probe (request 1) passes
        cfg = _config(tmp_path, path, shapes_dir, server.base_url)
        monkeypatch.setattr("hallbench.eval.judge.JudgeConfig.__post_init__", _fast_retries(cfg))
        summary = run_eval(cfg, backend=ScriptedBackend(_answers(items)), progress=False)
    assert summary["judge_errors"] == 4 and summary["n_closed_judged"] == 0
    assert summary["metrics"]["closed_accuracy"] is None  # not 0, not 1: nothing was judged
    assert sorted(summary["judge_error_ids"]) == sorted(i["id"] for i in items if i["answer_type"] == "CLOSED")


def _fast_retries(cfg):
    from hallbench.eval.judge import JudgeConfig

    original = JudgeConfig.__post_init__

    def post_init(self):
        object.__setattr__(self, "max_attempts", 2)
        object.__setattr__(self, "backoff_base_s", 0.001)
        object.__setattr__(self, "backoff_max_s", 0.002)
        original(self)

    return post_init


def test_closed_questions_need_a_judge(tmp_path, shapes_dir, vqa_file):
    path, items = vqa_file
    with pytest.raises(HallbenchError, match="needs an LLM judge"):
        run_eval(_config(tmp_path, path, shapes_dir, None), backend=ScriptedBackend(_answers(items)), progress=False)


def test_vqa_options_are_checked_where_they_are_declared():
    from hallbench.eval.vqa import VqaOptions

    with pytest.raises(HallbenchError, match="--judge-max-error-rate must be a fraction from 0 to 1, got 1.5"):
        VqaOptions(judge_max_error_rate=1.5)
    with pytest.raises(HallbenchError, match="--judge-base-url must not contain credentials"):
        VqaOptions(judge_base_url="https://me:pw@api.deepseek.com")
    assert VqaOptions(judge_max_error_rate=0.1).judge_max_error_rate == 0.1


def test_cli_vqa_with_the_tiny_model_and_the_local_judge(tmp_path, shapes_dir, vqa_file):
    path, _ = vqa_file
    with start_judge_server() as server:
        args = ["eval", "--bench", "vqa", "--model", "tiny-qwen", "--data", str(path), "--images", str(shapes_dir / "images")]
        args += [
            "--judge-base-url",
            server.base_url,
            "--judge-model",
            "local",
            "--out",
            str(tmp_path / "out"),
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
        ]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_closed"] == 4 and summary["n_open"] == 4 and summary["n_missing_marker"] == 8  # a random model writes no marker


def test_the_judge_key_never_reaches_the_output_folder(tmp_path, shapes_dir, vqa_file, monkeypatch):
    path, items = vqa_file
    secret = "sk-hallbench-test-7f3a9c1e5d"
    monkeypatch.setenv("HALLBENCH_JUDGE_TEST_KEY", secret)
    with start_judge_server() as server:
        cfg = _config(tmp_path, path, shapes_dir, server.base_url, judge_key_env="HALLBENCH_JUDGE_TEST_KEY")
        summary = run_eval(cfg, backend=ScriptedBackend(_answers(items)), progress=False)
        assert f"Bearer {secret}" in server.auth_headers  # the key was used...
    assert secret not in json.dumps(summary)
    for file in (tmp_path / "run").rglob("*"):  # ...and written nowhere, the SQLite cache included
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file


def test_a_rerun_with_fewer_samples_keeps_the_finished_predictions(tmp_path, shapes_dir, vqa_file):
    path, items = vqa_file
    with start_judge_server() as server:
        full = run_eval(_config(tmp_path, path, shapes_dir, server.base_url), backend=ScriptedBackend(_answers(items)), progress=False)
        before = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
        part = run_eval(
            _config(tmp_path, path, shapes_dir, server.base_url, max_samples=2), backend=ScriptedBackend(_answers(items)), progress=False
        )
    after = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()

    def ids(lines):
        return [json.loads(line)["id"] for line in lines]

    assert sorted(ids(after)) == sorted(ids(before)) and len(after) == len(items)  # nothing deleted
    rerun = set(ids(after)[:2])  # re-scored (their verdicts now come from the judge cache)
    assert [line for line in after if json.loads(line)["id"] not in rerun] == [
        line for line in before if json.loads(line)["id"] not in rerun
    ]  # the others are untouched
    assert (full["n_samples"], full["max_samples"]) == (len(items), None)
    assert (part["n_samples"], part["max_samples"]) == (2, 2)  # the summary says exactly what it covers


def test_a_dead_judge_is_an_error_before_any_generation(tmp_path, shapes_dir, vqa_file):
    path, items = vqa_file
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{free.getsockname()[1]}/v1"  # nothing listens once the socket closes
    calls = []
    backend = ScriptedBackend(lambda s: calls.append(s.id) or "x")
    with pytest.raises(
        HallbenchError,
        match=r"the LLM judge at http://127\.0\.0\.1:\d+/v1 \(model local\) does not work: connection.*nothing was generated",
    ):
        run_eval(_config(tmp_path, path, shapes_dir, dead, judge_attempts=1), backend=backend, progress=False)
    assert calls == [] and not (tmp_path / "run" / "predictions.jsonl").exists()
    with start_judge_server(faults=lambda n, fields: "404") as server:  # a wrong model name or path: not retried
        with pytest.raises(HallbenchError, match=r"does not work: not_found: HTTP 404"):
            run_eval(_config(tmp_path, path, shapes_dir, server.base_url), backend=backend, progress=False)
        assert server.requests == 1
    unparseable = pytest.raises(HallbenchError, match=r"does not work: unparseable: the judge replied 'Equivalent'")
    with start_judge_server(faults=lambda n, fields: "reply:Equivalent") as server, unparseable:  # answers, never Yes or No
        run_eval(_config(tmp_path, path, shapes_dir, server.base_url, judge_attempts=2), backend=backend, progress=False)
    assert calls == []


def test_sentence_and_reasoning_verdicts_are_read(tmp_path, shapes_dir, vqa_file):
    path, items = vqa_file
    replies = {"three": "reply:Yes, they are equivalent."}  # the probe's prediction

    def faults(n, fields):
        if fields and fields["prediction"] in replies:
            return replies[fields["prediction"]]
        return "reply:<think>The reference and the prediction differ, or do they? No.</think>Final answer: **No**"

    with start_judge_server(faults=faults) as server:
        summary = run_eval(_config(tmp_path, path, shapes_dir, server.base_url), backend=ScriptedBackend(_answers(items)), progress=False)
    assert (summary["n_closed_judged"], summary["judge_errors"], summary["metrics"]["closed_accuracy"]) == (4, 0, 0.0)


def test_judge_errors_past_the_threshold_exit_1_with_the_kinds(tmp_path, shapes_dir, vqa_file):
    path, _ = vqa_file
    args = ["eval", "--bench", "vqa", "--model", "tiny-qwen", "--data", str(path), "--images", str(shapes_dir / "images")]
    args += ["--judge-model", "local", "--max-new-tokens", "2", "--device", "cpu", "--judge-attempts", "1"]
    from hallbench.eval.judge import PROBE_ITEM

    with start_judge_server(faults=lambda n, fields: "ok" if fields["prediction"] == PROBE_ITEM.prediction else "400") as server:
        failed = CliRunner().invoke(app, [*args, "--judge-base-url", server.base_url, "--out", str(tmp_path / "a")])
        tolerated = CliRunner().invoke(
            app, [*args, "--judge-base-url", server.base_url, "--out", str(tmp_path / "b"), "--judge-max-error-rate", "1"]
        )
    assert failed.exit_code == 1, failed.output
    assert "judge: 4 of 4 CLOSED judgements failed (4 bad_request)" in " ".join(failed.output.split())
    assert "more than --judge-max-error-rate 0" in " ".join(failed.output.split())
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["judge_failed"] is True  # the summary is still written
    assert tolerated.exit_code == 0, tolerated.output
