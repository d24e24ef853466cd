"""The command line: the sub-commands exist, are cheap to start, and report errors in one line."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from hallbench.cli import app

runner = CliRunner()


def test_help_lists_every_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "eval", "report", "data", "demo"):
        assert f" {command} " in result.output


def test_importing_the_cli_does_not_import_torch_or_transformers():
    code = "import sys, hallbench.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_data_shapes_writes_a_world(tmp_path):
    result = runner.invoke(
        app, ["data", "shapes", "--out", str(tmp_path), "--n-train", "6", "--n-val", "4", "--seed", "3", "--set", "clutter=0"]
    )
    assert result.exit_code == 0, result.output
    world = json.loads((tmp_path / "world.json").read_text())
    assert (world["config"]["seed"], world["config"]["n_val"], world["config"]["clutter"]) == (3, 4, 0)
    assert len(list((tmp_path / "images").glob("*.png"))) == 10


def test_data_shapes_rejects_bad_options(tmp_path):
    result = runner.invoke(app, ["data", "shapes", "--out", str(tmp_path), "--set", "colours=9"])
    assert result.exit_code == 1
    assert "unknown shapes world option(s) ['colours']" in result.output
    result = runner.invoke(app, ["data", "shapes", "--out", str(tmp_path), "--set", "clutter"])
    assert result.exit_code == 1
    assert "--set expects KEY=VALUE, got 'clutter'" in result.output


def test_data_check_accepts_good_files_and_reports_bad_ones(shapes_dir, tmp_path):
    result = runner.invoke(
        app, ["data", "check", str(shapes_dir / "train.json"), "--kind", "conversations", "--images", str(shapes_dir / "images")]
    )
    assert result.exit_code == 0, result.output
    assert "is valid conversations (200 entries, 200 images decoded)" in " ".join(result.output.split())
    bad = tmp_path / "vqa.json"
    bad.write_text(json.dumps([{"id": 1, "img_name": "gone.png", "question": "q", "answer": "a", "answer_type": "OPEN"}]))
    result = runner.invoke(app, ["data", "check", str(bad), "--kind", "vqa", "--images", str(shapes_dir / "images")])
    assert result.exit_code == 1
    assert "image not found" in result.output and "gone.png" in result.output
    result = runner.invoke(app, ["data", "check", str(bad), "--kind", "parquet"])
    assert result.exit_code == 1 and "unknown --kind 'parquet'" in result.output


def test_ask_answers_for_each_image(shapes_dir):
    images = sorted((shapes_dir / "images").glob("shapes_val_*.png"))[:2]
    args = ["ask", "--model", "tiny-ministral", "--max-new-tokens", "3", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--image", str(images[0]), "--image", str(images[1])])
    assert result.exit_code == 0, result.output
    assert result.output.count("shapes_val_") == 2


def test_ask_with_a_missing_model_is_one_clear_line(tmp_path, shapes_dir):
    image = sorted((shapes_dir / "images").glob("*.png"))[0]
    result = runner.invoke(app, ["ask", "--model", str(tmp_path / "nothing"), "--image", str(image)])
    assert result.exit_code == 1
    assert result.output.startswith("error: no model folder at ")
    assert "is not a registry name (qwen2b, qwen4b, ministral3b, tiny-qwen, tiny-ministral)" in " ".join(result.output.split())


def test_models_lists_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("HALLBENCH_BASEMODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "qwen2b" in result.output and "not on this machine" in result.output and "built in code" in result.output


def test_an_os_error_of_the_machine_is_one_line(monkeypatch, tmp_path):
    import errno

    import hallbench.report as report

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "results.csv"))

    monkeypatch.setattr(report, "run_report", disk_full)
    result = runner.invoke(app, ["report", "--runs", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "error: No space left on device" in result.output and "results.csv" in result.output and "Traceback" not in result.output
