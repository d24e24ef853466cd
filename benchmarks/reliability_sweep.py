"""Kill real hallbench processes at many points, feed the CLI bad input, and count what survives.

    python benchmarks/reliability_sweep.py            # ~12 minutes on 2 cores
    python benchmarks/reliability_sweep.py --points 3 # fewer kill points per stage

What it does, in a temporary folder with a small shapes world and the tiny model:

- **Kill points.** For ``eval`` (POPE, CHAIR, VQA with the local judge), ``train`` (Ours, step
  checkpoints) and ``report``: one uninterrupted reference run, then for each kill point a fresh run
  SIGKILLed at that moment (spread between the first file it writes and its end; for ``train`` also
  while a checkpoint is being written) and resumed with the same command. A point *survives* when
  the resumed run exits 0 without a traceback and ends with the reference's results: the same
  predictions and metrics (eval), the same final weights within 1e-6 and the same ``train_loss``
  (train), byte-identical files and no temporary debris at any moment after the kill (report).
- **Bad inputs.** Each case is one CLI call on damaged or wrong input; it passes when the exit code
  is non-zero, nothing is a traceback, and exactly one ``error:`` line explains it.

Prints the counts and writes benchmarks/results/reliability_sweep.json. Nothing here is timed
against a baseline: it measures robustness, the figures the reliability issue asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PY = [sys.executable, "-m", "hallbench"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}


def run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(PY + args, capture_output=True, text=True, timeout=timeout, env=ENV)


def timed_reference(args: list[str], first_file: Path) -> tuple[float, float]:
    """Run to completion; return (seconds until ``first_file`` appeared, total seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen(PY + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    first = None
    while proc.poll() is None:
        if first is None and first_file.exists():
            first = time.monotonic() - start
        time.sleep(0.01)
    total = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed: {' '.join(args)}\n{proc.stderr.read()}")
    return (first if first is not None else total * 0.5), total


def kill_at(args: list[str], seconds: float, until: Any = None) -> float:
    """Start the command and SIGKILL it after ``seconds`` (or as soon as ``until()`` is true); return when it died."""
    start = time.monotonic()
    proc = subprocess.Popen(PY + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    while proc.poll() is None and time.monotonic() - start < seconds:
        if until is not None and until():
            break
        time.sleep(0.002)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return time.monotonic() - start


def points(first: float, total: float, n: int) -> list[float]:
    return [first + (total - first) * (i + 0.5) / n for i in range(n)]


def has_traceback(result: subprocess.CompletedProcess) -> bool:
    return "Traceback (most recent call last)" in (result.stdout + result.stderr)


# ---------------------------------------------------------------------------------------------


def setup(root: Path) -> dict[str, Path]:
    from hallbench.data.pope_build import PopeBuildConfig, build_pope
    from hallbench.data.shapes import ShapesConfig, generate_shapes

    world = generate_shapes(ShapesConfig(seed=0, n_train=40, n_val=20), root / "world")
    pope = root / "pope"
    build_pope(world / "annotations" / "instances_val.json", pope, PopeBuildConfig(n_images=10, per_image=2), images_dir=world / "images")
    vqa = root / "vqa.json"
    vqa.write_text(json.dumps(json.loads((world / "eval_vqa.json").read_text())[:12]))
    train = root / "train.json"
    train.write_text(json.dumps(json.loads((world / "train.json").read_text())[:64]))
    return {"world": world, "pope": pope, "vqa": vqa, "train": train}


def eval_args(bench: str, files: dict[str, Path], out: Path, judge_url: str) -> list[str]:
    common = ["--model", "tiny-qwen", "--device", "cpu", "--out", str(out)]
    if bench == "pope":
        return ["eval", "--bench", "pope", "--data", str(files["pope"]), "--batch-size", "4", *common]
    if bench == "chair":
        return ["eval", "--bench", "chair", "--data", str(files["world"]), "--max-new-tokens", "24", "--batch-size", "2", *common]
    return [
        "eval", "--bench", "vqa", "--data", str(files["vqa"]), "--images", str(files["world"] / "images"), "--judge-base-url",
        judge_url, "--judge-model", "local", "--max-new-tokens", "16", "--batch-size", "2", *common,
    ]  # fmt: skip


def eval_outcome(out: Path) -> tuple[dict, dict]:
    from hallbench.runfolder import read_appended_jsonl

    keep = ("prediction", "parsed", "mentioned", "hallucinated", "correct", "final_answer", "bertscore", "error")
    records = {r["id"]: {k: r.get(k) for k in keep} for r in read_appended_jsonl(out / "predictions.jsonl")}
    summary = json.loads((out / "summary.json").read_text())
    metrics = {k: summary.get(k) for k in ("metrics", "splits", "n_samples", "n_errors", "judge_errors")}
    return records, metrics


def sweep_eval(files: dict[str, Path], root: Path, n: int, judge_url: str) -> list[dict]:
    results = []
    for bench in ("pope", "chair", "vqa"):
        ref = root / f"eval_ref_{bench}"
        first, total = timed_reference(eval_args(bench, files, ref, judge_url), ref / "predictions.jsonl")
        expected = eval_outcome(ref)
        for i, t in enumerate(points(first, total, n)):
            out = root / f"eval_{bench}_{i}"
            died = kill_at(eval_args(bench, files, out, judge_url), t)
            lines = len((out / "predictions.jsonl").read_bytes().splitlines()) if (out / "predictions.jsonl").exists() else 0
            resumed = run(eval_args(bench, files, out, judge_url))
            ok = resumed.returncode == 0 and not has_traceback(resumed) and eval_outcome(out) == expected
            results.append({"stage": f"eval-{bench}", "kill_s": round(died, 2), "lines_at_kill": lines, "survived": ok,
                            "traceback": has_traceback(resumed), "detail": resumed.stderr[-300:] if not ok else ""})  # fmt: skip
            print(f"eval {bench} kill at {died:5.1f}s ({lines} lines): {'survived' if ok else 'LOST'}", flush=True)
    return results


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=1e-5) for k in a)


def sweep_train(files: dict[str, Path], root: Path, n: int) -> list[dict]:
    def args(out: Path, resume: bool = False) -> list[str]:
        base = [
            "train",
            "--model",
            "tiny-qwen",
            "--variant",
            "ours",
            "--data",
            str(files["train"]),
            "--images",
            str(files["world"] / "images"),
        ]
        base += ["--output-dir", str(out), "--learning-rate", "1e-3", "--logging-steps", "1", "--batch-size", "4"]
        base += ["--set", "max_steps=40", "--set", "save_steps=4"]  # ~10 s of steps to kill into, on 2 cores
        return base + (["--resume"] if resume else [])

    ref = root / "train_ref"
    first, total = timed_reference(args(ref), ref / "train_log.jsonl")
    expected = weights(ref), json.loads((ref / "train_summary.json").read_text())["train_loss"]
    results = []

    def writing_checkpoint(out: Path):
        def check() -> bool:
            return any(p.is_dir() and not (p / "hallbench_checkpoint.json").exists() for p in out.glob("checkpoint-*"))

        return check

    kills = [(t, None) for t in points(first, total, n)] + [(total, "checkpoint-write")] * 2
    for i, (t, trigger) in enumerate(kills):
        out = root / f"train_{i}"
        died = kill_at(args(out), t, writing_checkpoint(out) if trigger else None)
        state = sorted(p.name + ("" if (p / "hallbench_checkpoint.json").exists() else " (torn)") for p in out.glob("checkpoint-*"))
        resumed = run(args(out, resume=True))
        ok = resumed.returncode == 0 and not has_traceback(resumed)
        if ok:
            loss = json.loads((out / "train_summary.json").read_text())["train_loss"]
            ok = same_weights(expected[0], weights(out)) and abs(loss - expected[1]) <= 1e-5 * abs(expected[1])
        results.append({"stage": "train", "kill_s": round(died, 2), "trigger": trigger, "checkpoints_at_kill": state, "survived": ok,
                        "traceback": has_traceback(resumed), "detail": resumed.stderr[-300:] if not ok else ""})  # fmt: skip
        print(f"train kill at {died:5.1f}s {state}: {'survived' if ok else 'LOST'}", flush=True)
    return results


def sweep_report(root: Path, n: int) -> list[dict]:
    runs = root / "report_runs"
    runs.mkdir()
    for bench in ("pope", "chair", "vqa"):
        shutil.copytree(root / f"eval_ref_{bench}", runs / bench)
    ref = root / "report_ref"
    args = ["report", "--runs", str(runs), "--out", str(ref)]
    first, total = timed_reference(args, ref / "index.md")
    expected = {p.name: p.read_bytes() for p in ref.iterdir() if p.is_file() and not p.name.startswith(".")}
    results = []
    for i, t in enumerate(points(0.3 * total, total, n)):
        out = root / f"report_{i}"
        shutil.copytree(ref, out)  # the previous good report, overwritten by the killed run
        died = kill_at(["report", "--runs", str(runs), "--out", str(out)], t)
        after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
        debris = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        intact = after == expected and not debris
        rerun = run(["report", "--runs", str(runs), "--out", str(out)])
        final = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
        ok = intact and rerun.returncode == 0 and final == expected and not has_traceback(rerun)
        results.append({"stage": "report", "kill_s": round(died, 2), "survived": ok, "debris": debris,
                        "changed_after_kill": sorted(k for k in expected if after.get(k) != expected[k]), "traceback": has_traceback(rerun)})  # fmt: skip
        print(f"report kill at {died:5.1f}s: {'survived' if ok else 'LOST'} {debris}", flush=True)
    return results


# ---------------------------------------------------------------------------------------------


def bad_inputs(files: dict[str, Path], root: Path, judge_url: str) -> list[dict]:
    bad = root / "bad"
    bad.mkdir()
    latin1 = bad / "latin1.json"
    latin1.write_bytes('[{"id": "q1", "question": "Caf\xe9?"}]'.encode("latin-1"))
    a_file = bad / "a_file"
    a_file.write_text("x")
    torn_pope = bad / "pope_torn.jsonl"
    lines = (files["pope"] / "random.jsonl").read_text().splitlines()
    torn_pope.write_text("\n".join([*lines[:2], '{"question_id": 3, "image": ', *lines[2:4]]) + "\n")
    train = json.loads(files["train"].read_text())
    escaping = bad / "escaping.json"
    escaping.write_text(json.dumps([{**train[0], "image": "../../etc/passwd"}, *train[1:4]]))
    not_image = bad / "images"
    not_image.mkdir()
    (not_image / train[0]["image"]).write_text("not a png")
    empty = bad / "empty.json"
    empty.write_text("")
    corrupt_run = bad / "runs" / "r1"
    corrupt_run.mkdir(parents=True)
    (corrupt_run / "config.json").write_text('{"eval": {"bench": "pope"')
    (corrupt_run / "summary.json").write_text("{")
    pope = ["eval", "--bench", "pope", "--model", "tiny-qwen", "--device", "cpu", "--max-samples", "2"]
    train_cmd = ["train", "--model", "tiny-qwen", "--variant", "base", "--set", "max_steps=1"]
    images = str(files["world"] / "images")
    cases: dict[str, list[str]] = {
        "eval: non-UTF-8 POPE file": [*pope, "--data", str(latin1), "--images", images, "--out", str(bad / "o1")],
        "eval: POPE file with a broken line": [*pope, "--data", str(torn_pope), "--images", images, "--out", str(bad / "o2")],
        "eval: missing --data": [*pope, "--data", str(bad / "nope.json"), "--out", str(bad / "o3")],
        "eval: --out is a file": [*pope, "--data", str(files["pope"]), "--out", str(a_file)],
        "eval: --out under a file": [*pope, "--data", str(files["pope"]), "--out", str(a_file / "sub")],
        "eval: --device bogus": [*pope, "--data", str(files["pope"]), "--out", str(bad / "o4"), "--device", "bogus"],
        "eval: unknown --bench": ["eval", "--bench", "mme2", "--out", str(bad / "o5")],
        "eval: wrong --images (every sample fails)": [*pope, "--data", str(files["pope"]), "--images", str(bad), "--out", str(bad / "o6")],
        "eval: --api-key-env holding a key": [*pope, "--data", str(files["pope"]), "--out", str(bad / "o7"), "--api-key-env", "sk-abcdefghijklmnopqrstuvwxyz123456"],
        "eval: --base-url with credentials": ["eval", "--bench", "pope", "--data", str(files["pope"]), "--out", str(bad / "o8"), "--backend", "openai", "--base-url", "http://u:pw@127.0.0.1:1/v1", "--api-model", "m"],
        "eval: openai backend without --base-url": ["eval", "--bench", "pope", "--data", str(files["pope"]), "--out", str(bad / "o9"), "--backend", "openai"],
        "eval: vqa without a judge": ["eval", "--bench", "vqa", "--data", str(files["vqa"]), "--images", images, "--out", str(bad / "o10"), "--device", "cpu"],
        "eval: vqa with a dead judge": ["eval", "--bench", "vqa", "--data", str(files["vqa"]), "--images", images, "--out", str(bad / "o11"), "--judge-base-url", "http://127.0.0.1:9/v1", "--judge-attempts", "1", "--device", "cpu"],
        "eval: non-empty folder that is no run": [*pope, "--data", str(files["pope"]), "--out", str(bad)],
        "eval: chair without instances": ["eval", "--bench", "chair", "--data", str(bad), "--out", str(bad / "o12")],
        "eval: decoding typo": [*pope, "--data", str(files["pope"]), "--out", str(bad / "o13"), "--decoding", "greedyy"],
        "train: non-UTF-8 train.json": [*train_cmd, "--data", str(latin1), "--images", images, "--output-dir", str(bad / "t1")],
        "train: empty train.json": [*train_cmd, "--data", str(empty), "--images", images, "--output-dir", str(bad / "t2")],
        "train: image path escaping --images": [*train_cmd, "--data", str(escaping), "--images", images, "--output-dir", str(bad / "t3")],
        "train: an image that is not an image": [*train_cmd, "--data", str(files["train"]), "--images", str(not_image), "--output-dir", str(bad / "t4")],
        "train: unknown --set key": [*train_cmd, "--data", str(files["train"]), "--images", images, "--output-dir", str(bad / "t5"), "--set", "no_such_arg=1"],
        "train: --set of an owned argument": [*train_cmd, "--data", str(files["train"]), "--images", images, "--output-dir", str(bad / "t6"), "--set", "learning_rate=1"],
        "train: unknown --variant": ["train", "--model", "tiny-qwen", "--variant", "oursx", "--data", str(files["train"]), "--images", images, "--output-dir", str(bad / "t7")],
        "train: --output-dir is a file": [*train_cmd, "--data", str(files["train"]), "--images", images, "--output-dir", str(a_file)],
        "train: missing --deepspeed file": [*train_cmd, "--data", str(files["train"]), "--images", images, "--output-dir", str(bad / "t8"), "--deepspeed", str(bad / "ds.json")],
        "report: missing --runs": ["report", "--runs", str(bad / "nope"), "--out", str(bad / "r1")],
        "report: --out is a file": ["report", "--runs", str(root / "report_runs"), "--out", str(a_file)],
        "data pope: non-UTF-8 instances": ["data", "pope", "--instances", str(latin1), "--images", images, "--out", str(bad / "p1")],
        "data pope: instances of another format": ["data", "pope", "--instances", str(files["train"]), "--images", images, "--out", str(bad / "p2")],
    }  # fmt: skip
    results = []
    for name, args in cases.items():
        result = run(args, timeout=300)
        output = result.stdout + result.stderr
        errors = [line for line in output.splitlines() if line.lstrip().lower().startswith(("error:", "error "))]
        usage = result.returncode == 2 and ("Usage:" in output or "Invalid value" in output)  # Typer's own one-box usage error
        ok = result.returncode != 0 and not has_traceback(result) and (len(errors) == 1 or usage)
        results.append({"case": name, "exit": result.returncode, "one_line": ok, "traceback": has_traceback(result),
                        "message": (errors[0] if errors else output.strip().splitlines()[-1] if output.strip() else "")[:300]})  # fmt: skip
        print(f"{'ok  ' if ok else 'BAD '} {name}: {results[-1]['message'][:150]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=6, help="kill points per eval benchmark, train and report")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reliability_sweep.json")
    args = parser.parse_args()
    from hallbench.eval.judge_server import start_judge_server
    from hallbench.provenance import git_commit, package_versions

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hallbench-sweep-") as tmp, start_judge_server() as judge:
        root = Path(tmp)
        files = setup(root)
        kills = sweep_eval(files, root, args.points, judge.base_url)
        kills += sweep_train(files, root, args.points)
        kills += sweep_report(root, args.points)
        inputs = bad_inputs(files, root, judge.base_url)
    by_stage: dict[str, list[int]] = {}
    for k in kills:
        by_stage.setdefault(k["stage"].split("-")[0], [0, 0])
        by_stage[k["stage"].split("-")[0]][0] += k["survived"]
        by_stage[k["stage"].split("-")[0]][1] += 1
    summary = {
        "kill_points": {stage: f"{s}/{t}" for stage, (s, t) in by_stage.items()},
        "kill_points_total": f"{sum(k['survived'] for k in kills)}/{len(kills)}",
        "bad_inputs_one_line": f"{sum(r['one_line'] for r in inputs)}/{len(inputs)}",
        "tracebacks": sum(k["traceback"] for k in kills) + sum(r["traceback"] for r in inputs),
        "data_lost": [k for k in kills if not k["survived"]],
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "data_lost"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "summary": summary, "kills": kills, "bad_inputs": inputs, "wall_s": round(time.monotonic() - start, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}, "commit": git_commit(),
        "versions": package_versions(),
    }  # fmt: skip
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
