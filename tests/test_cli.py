"""The command line: the sub-commands exist, are cheap to start, and report errors in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import typer.main
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
    assert "is not a registry name (qwen2b, qwen4b, ministral3b, llava7b, tiny-qwen, tiny-ministral, tiny-llava)" in " ".join(
        result.output.split()
    )


def test_models_lists_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("HALLBENCH_BASEMODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = runner.invoke(app, ["models"], env={"COLUMNS": "400"})  # a long tmp_path (pytest-xdist's) stays on one line
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


def test_console_tables_stay_readable_at_80_columns_and_in_logs():
    from hallbench.cli import format_grid

    columns = ["POPE random Acc", "POPE random F1", "POPE popular Acc", "CHAIR CHAIRs", "VQA Open BERTScore-F1"]
    rows = [("Base", ["80.3 ± 3.2", "80.5 ± 3.4", "84.6 ± 2.8", "65.3 ± 7.7", "36.2 ± 2.3"]), ("+M+A", ["75.9 ± 3.3†"] * 5)]
    narrow = format_grid("Table 2", "Variant", columns, rows, width=80)
    assert all(len(line) <= 80 for line in narrow)
    assert narrow[1] == "Variant Base" and "  VQA Open BERTScore-F1  36.2 ± 2.3" in narrow  # whole headers, one cell a line
    wide = format_grid("Table 2", "Variant", columns, rows, width=200)
    assert len(wide) == 3 + len(rows) and wide[1].startswith("Variant") and wide[1].endswith("VQA Open BERTScore-F1")
    assert wide[4].startswith("+M+A") and wide[4].endswith("75.9 ± 3.3†")


def test_an_eval_summary_printed_at_80_columns_has_no_cut_header(tmp_path, shapes_dir):
    from hallbench.data.pope_build import PopeBuildConfig, build_pope

    pope = tmp_path / "pope"
    build_pope(
        shapes_dir / "annotations" / "instances_val.json", pope, PopeBuildConfig(n_images=2, per_image=1), images_dir=shapes_dir / "images"
    )
    result = runner.invoke(
        app, ["eval", "--bench", "pope", "--data", str(pope), "--out", str(tmp_path / "o"), "--device", "cpu"], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    grid = lines[lines.index(next(line for line in lines if line.startswith("pope - "))) :]
    assert all(len(line) <= 80 for line in grid) and any("unknown_rate" in line for line in grid)


def _params(command_name: str) -> dict:
    import typer.main

    command = typer.main.get_command(app).commands[command_name]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


def test_train_help_comes_from_the_config_field_docs_with_their_defaults():
    from hallbench.cli import _EVIDENCE_OPTIONS, _TRAIN_OPTIONS
    from hallbench.fielddocs import field_docs, field_help
    from hallbench.train.config import TrainConfig
    from hallbench.train.method import EvidenceConfig

    params = _params("train")
    for option, field in _TRAIN_OPTIONS.items():
        if option == "images":  # its default is derived from --data, which its own text says
            continue
        assert params[option].help == field_help(TrainConfig, field), option
    for option in _EVIDENCE_OPTIONS:
        assert params[option].help == field_help(EvidenceConfig, option, default="the preset's"), option
    assert field_docs(TrainConfig)["learning_rate"] == "Peak learning rate (the seed's 1e-5)."
    shown = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output
    # Every default is visible (rich would eat an unescaped "[default: ...]"), and brackets of the docs survive.
    assert "Peak learning rate (the seed's 1e-5). [default: 1e-05]" in shown
    assert "Samples per device and step" in shown and "[default: 4]" in shown
    assert "concat (h + W_c [h; e])" in shown and "[default: the preset's]" in shown


def test_eval_help_and_defaults_come_from_the_config_and_benchmark_option_fields():
    from dataclasses import MISSING, fields

    from hallbench.eval.benchmark import all_specs, option_flags
    from hallbench.eval.engine import DecodingConfig
    from hallbench.eval.run import EvalConfig
    from hallbench.fielddocs import field_default, option_help

    params = _params("eval")
    owners = {f.name: EvalConfig for f in fields(EvalConfig) if f.name not in ("decoding", "options")}
    owners |= {f.name: DecodingConfig for f in fields(DecodingConfig)}
    owners |= {name: declared[0][0].options for name, declared in option_flags().items()}
    assert set(params) - {"help"} == set(owners)  # every flag is a field, every field a flag
    for name, cls in owners.items():
        default = field_default(cls, name)
        assert params[name].default == (None if default is MISSING else default), name
        if name != "model" and name != "max_new_tokens":  # these two append the registry / the benchmarks' lengths
            assert params[name].help == option_help(cls, name), name
    # One panel per benchmark; an option two benchmarks share is one flag in a panel naming both.
    panels = {p.name: p.rich_help_panel for p in params.values()}
    assert panels["labels"] == "POPE options" and panels["parser"] == "POPE and MME options"
    assert panels["synonyms"] == panels["image_ids"] == "CHAIR options" and panels["judge_model"] == "VQA options"
    for spec in all_specs():
        assert all(spec.title in panels[option.name].removesuffix(" options").split(" and ") for option in fields(spec.options))
    for name, declared in option_flags().items():
        assert len({(option.type, option.default) for _, option in declared}) == 1, name
    shown = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "400"}).output
    # Choices and every default are visible.
    assert "<pope|chair|vqa|mme>" in shown and "<hallbench|official>" in shown and "<greedy|sample|beam>" in shown
    assert "[default: deepseek-chat]" in shown and "[default: 60.0]" in shown and "[default: hallbench]" in shown
    assert "Baseline file for BERTScore rescaling (needed to rescale a local model). [default: none]" in shown
    assert "Per benchmark: POPE 32, CHAIR 512, VQA 1024, MME 32." in shown


def test_an_option_of_another_benchmark_is_refused_not_ignored(tmp_path, shapes_dir):
    import pytest

    from hallbench.errors import HallbenchError
    from hallbench.eval.run import EvalConfig

    result = runner.invoke(
        app, ["eval", "--bench", "chair", "--data", str(shapes_dir), "--labels", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "--labels applies to --bench pope, not --bench chair" in result.output
    result = runner.invoke(app, ["eval", "--bench", "pope", "--parser", "strict", "--out", str(tmp_path / "o")], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "'strict' is not one of 'hallbench', 'official'" in result.output
    with pytest.raises(HallbenchError, match="unknown --parser 'strict'; choose one of hallbench, official"):
        EvalConfig.from_flags(bench="mme", out=tmp_path, parser="strict")  # Python callers get the same check


def test_data_command_help_and_defaults_come_from_their_config_fields():
    from hallbench.data.pope_build import PopeBuildConfig
    from hallbench.data.shapes import ShapesConfig
    from hallbench.fielddocs import field_default, option_help

    data = typer.main.get_command(app).commands["data"]  # type: ignore[attr-defined]
    for command, cls, own in (
        ("shapes", ShapesConfig, {"out", "set_"}),
        ("pope", PopeBuildConfig, {"instances", "images", "out", "all_images"}),
    ):
        params = {p.name: p for p in data.commands[command].params if p.name != "help"}
        assert set(params) - own <= set(cls.__dataclass_fields__), command
        for name in set(params) - own:
            assert params[name].help == option_help(cls, name) and params[name].default == field_default(cls, name), (command, name)
