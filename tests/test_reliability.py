"""One writer per folder, crash-safe training checkpoints, the gradient guard, resuming with a lower learning rate.

Real processes and real signals: a lock holder is another Python process, killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hallbench.cli import app
from hallbench.errors import HallbenchError
from hallbench.runfolder import LOCK_FILE, FolderLock, FolderLockedError, read_appended_jsonl
from hallbench.train.config import TrainConfig
from hallbench.train.run import run_train
from hallbench.train.trainer import CHECKPOINT_MARKER, NonFiniteLossError, checkpoints

HOLD = "import sys, time\nfrom hallbench.runfolder import FolderLock\nFolderLock(sys.argv[1], rank=int(sys.argv[2])).acquire()\nprint('locked', flush=True)\ntime.sleep(120)\n"


def _holder(folder: Path, rank: int = 0) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(rank)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    holder = _holder(folder)
    try:
        with pytest.raises(FolderLockedError, match=rf"--out {folder} is in use by another hallbench process \(pid {holder.pid} on .* -c"):
            FolderLock(folder, option="--out").acquire()
    finally:
        _kill(holder)
    with FolderLock(folder) as lock:  # the kernel released the killed holder's lock: no stale file to delete
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
        with FolderLock(folder):  # re-entrant within a process (the demo's stages nest)
            pass
        assert lock.folder == folder
    assert (folder / LOCK_FILE).read_text() == ""  # released: the file stays, empty


def test_ranks_of_one_launch_share_a_folder_and_a_second_launch_collides_rank_for_rank(tmp_path):
    folder = tmp_path / "run"
    rank1 = _holder(folder, rank=1)
    try:
        with FolderLock(folder, rank=0):  # rank 0 of the same launch
            pass
        with pytest.raises(FolderLockedError):
            FolderLock(folder, rank=1).acquire()  # rank 1 of a second launch
    finally:
        _kill(rank1)


def test_eval_train_and_report_refuse_a_locked_folder_in_one_line(tmp_path, shapes_dir, pope_dir):
    runner = CliRunner()
    eval_out, train_out, report_out = tmp_path / "eval", tmp_path / "train", tmp_path / "report"
    holders = [_holder(eval_out), _holder(train_out), _holder(report_out)]
    try:
        results = {
            "eval": runner.invoke(app, ["eval", "--bench", "pope", "--data", str(pope_dir), "--out", str(eval_out), "--max-samples", "2"]),
            "train": runner.invoke(
                app,
                [
                    "train",
                    "--model",
                    "tiny-qwen",
                    "--variant",
                    "base",
                    "--data",
                    str(shapes_dir / "train.json"),
                    "--images",
                    str(shapes_dir / "images"),
                    "--output-dir",
                    str(train_out),
                ],
            ),  # fmt: skip
            "report": runner.invoke(app, ["report", "--runs", str(tmp_path / "eval"), "--out", str(report_out)]),
        }
    finally:
        for holder in holders:
            _kill(holder)
    for stage, result in results.items():
        assert result.exit_code == 1, (stage, result.output)
        lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("note:")]
        assert len(lines) == 1 and "is in use by another hallbench process (pid" in lines[0], (stage, result.output)
    assert sorted(p.name for p in eval_out.iterdir()) == [LOCK_FILE]  # nothing was written


def test_two_concurrent_evals_into_one_folder_never_mix(tmp_path, pope_dir):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hallbench", "eval", "--bench", "pope", "--data", str(pope_dir), "--out", str(out)]
    command += ["--max-samples", "6", "--device", "cpu"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ((out / LOCK_FILE).is_file() and (out / LOCK_FILE).read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode == 1 and f"in use by another hallbench process (pid {first.pid}" in " ".join(second.stderr.split())
    ids = [r["id"] for r in read_appended_jsonl(out / "predictions.jsonl")]
    assert len(ids) == 6 == len(set(ids))


# ---------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def small_data(shapes_dir, tmp_path_factory):
    records = json.loads((shapes_dir / "train.json").read_text())[:16]  # 4 steps per epoch at batch 4
    path = tmp_path_factory.mktemp("small") / "train.json"
    path.write_text(json.dumps(records))
    return path


def _config(root: Path, shapes_dir: Path, data: Path, **kw) -> TrainConfig:
    kw.setdefault("training_args", {"max_steps": 6, "save_steps": 1})
    kw.setdefault("learning_rate", 1e-3)
    return TrainConfig(model="tiny-qwen", variant="ours", data=data, images=shapes_dir / "images", output_root=root, logging_steps=1, **kw)


def _assert_same_weights(a, b):
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], atol=1e-6, rtol=1e-5, msg=key)


def test_step_checkpoints_are_marked_complete_and_rotation_keeps_complete_ones(tmp_path, shapes_dir, small_data):
    result = run_train(_config(tmp_path, shapes_dir, small_data, save_total_limit=2), progress=False)
    found = checkpoints(result.path)
    assert [(step, ok) for step, _, ok in found] == [(5, True), (6, True)]  # every step saved, the last 2 kept
    marker = json.loads((found[-1][1] / CHECKPOINT_MARKER).read_text())
    assert marker["step"] == 6 and "model.safetensors" in marker["files"] and "optimizer.pt" in marker["files"]


def test_resume_skips_a_torn_checkpoint_and_ends_with_the_uninterrupted_weights_and_loss(
    tmp_path, shapes_dir, small_data, monkeypatch, interrupt_training_at
):
    straight = run_train(_config(tmp_path / "a", shapes_dir, small_data), progress=False)
    cfg = _config(tmp_path / "b", shapes_dir, small_data)
    interrupt_training_at(5)  # checkpoints 3 and 4 complete
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, progress=False)
    monkeypatch.undo()
    folder = next((tmp_path / "b").glob("output_model_*"))
    torn = folder / "checkpoint-4" / "optimizer.pt"
    torn.write_bytes(torn.read_bytes()[:100])  # as a kill or a full disk mid-write leaves it
    resumed = run_train(replace(cfg, resume=True), progress=False)
    assert Path(resumed.summary["resumed_from"]).name == "checkpoint-3"
    assert json.loads((folder / "hallbench_config.json").read_text())["resumes"][0]["skipped_torn_checkpoints"] == ["checkpoint-4"]
    _assert_same_weights(straight.model, resumed.model)
    assert [r["step"] for r in read_appended_jsonl(folder / "train_log.jsonl")] == [1, 2, 3, 4, 5, 6]
    # train_loss covers all six steps, not only the three after the resume
    assert resumed.summary["train_loss"] == pytest.approx(straight.summary["train_loss"], rel=1e-5)


def test_a_sigkilled_training_resumes_to_the_same_weights(tmp_path, shapes_dir, small_data):
    """A real process killed while it writes checkpoint-N (or just after): resume gives the uninterrupted run."""
    straight = run_train(_config(tmp_path / "a", shapes_dir, small_data), progress=False)
    out = tmp_path / "b" / "run"
    command = [sys.executable, "-m", "hallbench", "train", "--model", "tiny-qwen", "--variant", "ours", "--data", str(small_data)]
    command += ["--images", str(shapes_dir / "images"), "--output-dir", str(out), "--learning-rate", "1e-3", "--logging-steps", "1"]
    command += ["--set", "max_steps=6", "--set", "save_steps=1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        # Kill at the first sign of checkpoint-3: usually inside its write, before the marker.
        if (out / "checkpoint-3").exists():
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    result = CliRunner().invoke(app, [*command[3:], "--resume"])
    assert result.exit_code == 0, result.output
    from hallbench.models import load_model

    _assert_same_weights(straight.model, load_model(str(out), device="cpu", dtype="float32").model)


def test_a_non_finite_gradient_stops_before_the_update_and_a_lower_lr_resume_is_allowed(tmp_path, shapes_dir, small_data, monkeypatch):
    from hallbench.train import trainer as trainer_module

    original = trainer_module.EvidenceTrainer.compute_loss

    def poisoned(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        if self.state.global_step + 1 == 3:
            loss.register_hook(lambda grad: grad * float("nan"))  # the loss is finite, its gradient is not
        return loss

    monkeypatch.setattr(trainer_module.EvidenceTrainer, "compute_loss", poisoned)
    cfg = _config(tmp_path, shapes_dir, small_data, training_args={"max_steps": 4, "save_steps": 1})
    with pytest.raises(NonFiniteLossError, match=r"gradient norm became nan at step 3 .*stopped before the update.*checkpoint-2"):
        run_train(cfg, progress=False)
    monkeypatch.undo()
    folder = next(tmp_path.glob("output_model_*"))
    assert [step for step, _, ok in checkpoints(folder) if ok] == [1, 2]  # nothing saved after the bad step
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(str(folder / "checkpoint-2" / "model.safetensors")).values())

    with pytest.raises(HallbenchError, match=r"unfinished run of these settings but learning_rate: 0\.001 -> 0\.0005; add --resume"):
        run_train(replace(cfg, learning_rate=5e-4), progress=False)
    resumed = run_train(replace(cfg, learning_rate=5e-4, resume=True), progress=False)
    assert resumed.status == "trained" and Path(resumed.summary["resumed_from"]).name == "checkpoint-2"
    record = json.loads((folder / "hallbench_config.json").read_text())
    assert record["resumes"][-1]["learning_rate"] == 5e-4 and record["resumes"][-1]["previous_learning_rate"] == 1e-3
    log = {r["step"]: r["learning_rate"] for r in read_appended_jsonl(folder / "train_log.jsonl")}
    # linear decay over 4 steps: the rate of step s is peak * (1 - (s - 1) / 4); the new peak from step 3 on
    assert log[2] == pytest.approx(1e-3 * 3 / 4) and log[3] == pytest.approx(5e-4 * 2 / 4) and log[4] == pytest.approx(5e-4 * 1 / 4)
    assert run_train(replace(cfg, learning_rate=5e-4), progress=False).status == "skipped"  # finished with the new rate


def test_training_images_are_checked_before_the_first_step(tmp_path, shapes_dir, small_data):
    records = json.loads(small_data.read_text())
    images = tmp_path / "images"
    images.mkdir()
    for name in {r["image"] for r in records}:
        (images / name).write_bytes((shapes_dir / "images" / name).read_bytes())
    (tmp_path / "secret.png").write_bytes((shapes_dir / "images" / records[0]["image"]).read_bytes())
    cases = {
        "../secret.png": r"image '\.\./secret\.png' leads outside the image folder",
        "/etc/hostname": r"image '/etc/hostname' leads outside the image folder",
        "not_an_image.png": r"not_an_image\.png \(referenced by .*\$\[3\]\) cannot be read as an image",
    }
    (images / "not_an_image.png").write_text("this is text, not a PNG")
    for n, (name, message) in enumerate(cases.items()):
        bad = [dict(r) for r in records]
        bad[3]["image"] = name
        data = tmp_path / f"bad{n}.json"
        data.write_text(json.dumps(bad))
        cfg = replace(_config(tmp_path / f"run{n}", shapes_dir, data), images=images)
        with pytest.raises(HallbenchError, match=message):
            run_train(cfg, progress=False)
