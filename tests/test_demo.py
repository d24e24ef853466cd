"""`hallbench demo --quick` end to end: every stage runs for real and every expected file is there."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hallbench.cli import app
from hallbench.train.presets import PRESETS, TABLE2

runner = CliRunner()


def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path, monkeypatch, interrupt_training_at):
    out = tmp_path / "demo"
    # First interrupted in the middle of pretraining (after its checkpoint at step 4): the next demo resumes it.
    interrupt_training_at(7)
    assert runner.invoke(app, ["demo", "--quick", "--out", str(out)], env={"COLUMNS": "400"}).exit_code != 0
    monkeypatch.undo()
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    pretrain_folder = out / "pretrained" / "Tiny-Qwen3-VL-shapes"
    assert json.loads((pretrain_folder / "train_summary.json").read_text())["resumed_from"].endswith("checkpoint-4")
    assert [json.loads(line)["step"] for line in (pretrain_folder / "train_log.jsonl").read_text().splitlines()] == [5, 10]
    assert "Table 2: Base, +M, +M+A and Ours" in result.output and "demo finished" in result.output
    assert "One fine-tuning seed (0)" in result.output and "--seeds 0,1,2" in result.output
    assert f"runs {out / 'study' / 'runs'}" in " ".join(result.output.split())  # where the printed paths point exists

    runs = {json.loads(p.read_text())["variant"]["name"]: p.parent for p in (out / "study" / "runs").glob("*/hallbench_config.json")}
    assert sorted(runs) == sorted(TABLE2)
    for name, run in runs.items():
        assert (run / "train_summary.json").is_file(), name
        assert run.name == f"output_model_Tiny-Qwen3-VL-shapes_{PRESETS[name].folder_label}_seed0"
        log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        assert log and all(r["ce"] > 0 for r in log)
        assert all((r["l_ctr"] is not None) == (name == "ours") for r in log)
        evals = run.parent.parent / "eval" / run.name
        expected = ["pope", "chair-greedy", "chair-sample", "chair-beam", "vqa"]
        assert sorted(p.name for p in evals.iterdir()) == sorted(expected)
        for bench in expected:
            summary = json.loads((evals / bench / "summary.json").read_text())
            assert summary["n_errors"] == 0, (name, bench, summary["errors"])
        pope = json.loads((evals / "pope" / "summary.json").read_text())
        assert set(pope["splits"]) == {"random", "popular", "adversarial"}
        assert all(0.0 <= s["accuracy"] <= 1.0 for s in pope["splits"].values())
        config = json.loads((evals / "pope" / "config.json").read_text())
        assert config["backend"]["training_run"]["variant"]["name"] == name

    report = out / "report"
    for table in ("table2", "decoding", "pope_detail", "ablation_injection", "ablation_loss"):
        assert (report / f"{table}.md").is_file() and (report / f"{table}.tex").is_file(), table
    assert list(report.glob("*.png")), "no plots"
    # The pretraining the fine-tuned runs start from has its own curve (it lies outside study/, the report's --runs).
    assert (report / "pretrain_Tiny-Qwen3-VL-shapes.png").is_file()
    recorded = json.loads((next(iter(runs.values())) / "hallbench_config.json").read_text())
    assert Path(recorded["model"]["path"]).is_absolute() and Path(recorded["data"]["train"]).is_absolute()
    index = (report / "index.md").read_text()
    assert "table2.md" in index and ".png" in index
    frame = pd.read_csv(report / "results.csv")
    pope_acc = frame[(frame.bench == "pope") & (frame.metric == "accuracy")]
    assert len(pope_acc) >= 12 and pope_acc.value.between(0, 100).all()
    times = json.loads((out / "demo_times.json").read_text())
    assert [s["name"] for s in times["stages"]] == ["world", "pretrain", "fine-tune", "evaluate", "report"]
    pretrained = json.loads((out / "pretrained" / "Tiny-Qwen3-VL-shapes" / "hallbench_config.json").read_text())
    assert pretrained["data"]["train"].endswith("pretrain_list_exist.json")  # short answers only, see DemoProfile.pretrain_kinds

    first_table = (report / "table2.md").read_text()
    again = runner.invoke(app, ["demo", "--quick", "--out", str(out)], env={"COLUMNS": "400"})
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped output_model_") == 4  # a finished demo resumes without retraining
    rerun_times = json.loads((out / "demo_times.json").read_text())
    assert rerun_times["earlier"] == [times] and rerun_times["total_s"] < times["total_s"]  # the first timing is kept
    assert (report / "table2.md").read_text() == first_table  # the same runs give the same report, byte for byte

    # A second fine-tuning seed: seed 0's runs are reused, seed 1's trained; the table shows mean ± sd over both.
    seeds = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--seeds", "0,1"], env={"COLUMNS": "400"})
    assert seeds.exit_code == 0, seeds.output
    assert seeds.output.count("skipped output_model_") == 4 and seeds.output.count("trained output_model_") == 4
    assert sorted(p.name for p in (out / "study" / "runs").iterdir() if p.name.endswith("_seed1")) == sorted(
        f"output_model_Tiny-Qwen3-VL-shapes_{PRESETS[name].folder_label}_seed1" for name in TABLE2
    )
    assert "Across fine-tuning seeds 0, 1" in seeds.output and "standard deviation across the 2 seeds" in seeds.output
    assert "Cells over 2 training seeds" in (report / "table2.md").read_text()
    two = pd.read_csv(report / "results.csv")
    base_acc = two[(two.variant == "base") & (two.split == "random") & (two.metric == "accuracy")]
    assert sorted(base_acc.n_seeds) == [1, 1, 2] and base_acc.per_seed.sum() == 2  # two per-seed rows, one for the cell

    # A demo folder made with other settings (an older default profile) is refused with what to delete.
    from dataclasses import replace

    from hallbench.demo import QUICK, DemoConfig, run_demo
    from hallbench.errors import HallbenchError

    other = replace(QUICK, pretrain={**QUICK.pretrain, "learning_rate": 5e-4})
    with pytest.raises(
        HallbenchError, match=r"made by a demo with other settings \(learning_rate: 0\.001 -> 0\.0005\); delete .*pretrained"
    ):
        run_demo(DemoConfig(out=out, profile_override=other), say=lambda line: None)


def test_a_world_regenerated_in_place_gets_fresh_pope_splits(tmp_path):
    from dataclasses import replace

    from hallbench.demo import QUICK, DemoConfig, _pretrain_data, _world
    from hallbench.provenance import sha256_file

    def pope_labels(folder):
        return [json.loads(line)["label"] for line in (folder / "pope" / "random.jsonl").read_text().splitlines()]

    first = _world(DemoConfig(out=tmp_path, quick=True))
    first_instances, first_labels = sha256_file(first / "annotations" / "instances_val.json"), pope_labels(first)
    assert _world(DemoConfig(out=tmp_path, quick=True)) == first and pope_labels(first) == first_labels  # same world: reused

    first_pretrain = json.loads(_pretrain_data(DemoConfig(out=tmp_path, quick=True), first).read_text())
    other = replace(QUICK, world={**QUICK.world, "theme_prob": 0.2})  # same image names, other objects
    second = _world(DemoConfig(out=tmp_path, profile_override=other))
    pretrain = json.loads(_pretrain_data(DemoConfig(out=tmp_path, profile_override=other), second).read_text())
    train = json.loads((second / "train.json").read_text())
    assert pretrain != first_pretrain and pretrain == [r for r in train if r["id"].split("-")[1] in ("list", "exist")]
    instances = second / "annotations" / "instances_val.json"
    assert sha256_file(instances) != first_instances
    build = json.loads((second / "pope" / "pope_build.json").read_text())
    assert build["input"]["sha256"] == sha256_file(instances)  # rebuilt from the new annotations, not the stale splits
    questions = [json.loads(line) for line in (second / "pope" / "random.jsonl").read_text().splitlines()]
    present = {}
    annotations = json.loads(instances.read_text())
    names = {c["id"]: c["name"] for c in annotations["categories"]}
    files = {i["id"]: i["file_name"] for i in annotations["images"]}
    for a in annotations["annotations"]:
        present.setdefault(files[a["image_id"]], set()).add(names[a["category_id"]])
    for q in questions:
        asked = next(name for name in names.values() if f" {name} " in f" {q['text']} ")
        assert (asked in present[q["image"]]) == (q["label"] == "yes"), q
