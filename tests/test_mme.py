"""MME's hallucination subsets: the format, the two answer readers, acc / acc+ / score by hand, the
shapes-world generator, and the benchmark through eval and report (a benchmark added in four files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripted import ScriptedBackend

from hallbench.data.mme_build import build_mme
from hallbench.errors import DataFormatError, HallbenchError
from hallbench.eval.benchmark import get_spec, point, sample_table
from hallbench.eval.mme import SPEC, SUBSETS, MmeOptions, parse_mme_answer, read_mme_subset
from hallbench.eval.run import EvalConfig, run_eval
from hallbench.report import run_report


def _record(subset: str, image: str, k: int, label: str, parsed: str) -> dict:
    return {"id": f"{subset}/{image}/{k}", "split": subset, "images": [f"{image}.png"], "label": label, "parsed": parsed}


def test_accuracy_acc_plus_and_score_by_hand():
    # existence: image a both right, b one right, c both wrong -> acc 3/6, acc+ 1/3, score 50 + 33.3.
    records = [
        _record("existence", "a", 0, "yes", "yes"), _record("existence", "a", 1, "no", "no"),
        _record("existence", "b", 0, "yes", "yes"), _record("existence", "b", 1, "no", "yes"),
        _record("existence", "c", 0, "yes", "unknown"), _record("existence", "c", 1, "no", "yes"),
        # count: one image, both right; an errored record is left out of every metric.
        _record("count", "d", 0, "yes", "yes"), _record("count", "d", 1, "no", "no"),
        {**_record("count", "e", 0, "yes", "yes"), "error": "image failed to load"},
    ]  # fmt: skip
    summary = SPEC.benchmark.aggregate(type("B", (), {"cfg": type("C", (), {"options": MmeOptions()})})(), records)
    existence, count = summary["splits"]["existence"], summary["splits"]["count"]
    assert (existence["accuracy"], existence["acc_plus"], existence["n"], existence["n_images"]) == (0.5, pytest.approx(1 / 3), 6, 3)
    assert existence["score"] == pytest.approx(0.5 + 1 / 3)
    assert (count["accuracy"], count["acc_plus"], count["score"], count["n"], count["n_errors"]) == (1.0, 1.0, 2.0, 2, 1)
    assert summary["total_score"] is None  # two of the four subsets: no hallucination total
    # The report recomputes the same numbers (displayed units) from the same declarations.
    table = sample_table(SPEC, records, "existence", summary)
    assert [round(point(table, m), 6) for m in SPEC.metrics] == [50.0, 33.333333, 83.333333]
    assert table.n_groups == 3


def test_an_always_yes_model_gets_half_the_accuracy_and_no_acc_plus(tmp_path, mme_dir):
    summary = run_eval(
        EvalConfig(bench="mme", data=mme_dir, out=tmp_path / "yes"), backend=ScriptedBackend(lambda s: "Yes."), progress=False
    )
    assert {s: (v["accuracy"], v["acc_plus"], v["score"]) for s, v in summary["splits"].items()} == dict.fromkeys(SUBSETS, (0.5, 0.0, 0.5))
    assert summary["total_score"] == pytest.approx(200.0) and summary["bench_version"] == "mme-1"
    records = [json.loads(line) for line in (tmp_path / "yes" / "predictions.jsonl").read_text().splitlines()]
    assert records[0]["id"].endswith("/0") and records[1]["id"].endswith("/1") and records[0]["images"] == records[1]["images"]


def test_the_two_readers_differ_where_mme_calculation_is_loose():
    cases = {
        "Yes": ("yes", "yes"),
        "No, there is not.": ("no", "no"),
        "yes.": ("yes", "yes"),
        "Not sure.": ("no", "unknown"),  # MME's prefix rule finds "no" in "not "
        "The answer is yes.": ("unknown", "yes"),  # MME reads only the first four characters
        "": ("unknown", "unknown"),
    }
    assert {text: (parse_mme_answer(text, "official"), parse_mme_answer(text, "hallbench")) for text in cases} == cases


def test_both_release_layouts_are_read_and_bad_files_are_named(tmp_path):
    flat = tmp_path / "flat" / "existence"
    flat.mkdir(parents=True)
    (flat / "1.jpg").write_bytes(b"x")
    (flat / "1.txt").write_text("Is there a dog in this image? Please answer yes or no.\tYes\nIs there a cat?\tNo\n")
    nested = tmp_path / "nested" / "count"
    (nested / "images").mkdir(parents=True)
    (nested / "questions_answers_YN").mkdir()
    (nested / "images" / "2.png").write_bytes(b"x")
    (nested / "questions_answers_YN" / "2.txt").write_text("Are there two dogs?\tyes\n\nIs there one dog?\tNO\n")
    assert [(q.image.name, q.label) for q in read_mme_subset(flat, "existence")] == [("1.jpg", "yes"), ("1.jpg", "no")]
    assert [(q.image.name, q.label) for q in read_mme_subset(nested, "count")] == [("2.png", "yes"), ("2.png", "no")]
    (flat / "1.txt").write_text("Is there a dog?\tYes\nIs there a cat?\tMaybe\n")
    with pytest.raises(DataFormatError, match=r"1\.txt.*line 2.*Yes or No.*Maybe"):
        read_mme_subset(flat, "existence")
    (flat / "1.txt").write_text("Is there a dog? Yes\n")
    with pytest.raises(DataFormatError, match=r"line 1.*question<TAB>answer"):
        read_mme_subset(flat, "existence")
    (flat / "3.txt").write_text("Is there a dog?\tYes\n")
    (flat / "1.txt").unlink()
    with pytest.raises(DataFormatError, match=r"3\.txt.*an image 3\.jpg"):
        read_mme_subset(flat, "existence")
    with pytest.raises(HallbenchError, match="no subset folder count, position, color"):
        run_eval(EvalConfig(bench="mme", data=tmp_path / "flat", out=tmp_path / "o"), backend=ScriptedBackend(str), progress=False)
    with pytest.raises(HallbenchError, match="unknown --split 'ocr' for mme"):
        run_eval(EvalConfig(bench="mme", data=tmp_path / "flat", split="ocr", out=tmp_path / "o"), backend=ScriptedBackend(str))


def test_the_generator_is_deterministic_and_its_answers_are_true(tmp_path, shapes_dir):
    instances, images = shapes_dir / "annotations" / "instances_val.json", shapes_dir / "images"
    first = build_mme(instances, images, tmp_path / "a", seed=3)
    build_mme(instances, images, tmp_path / "b", seed=3)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files if f.name != "mme_build.json")
    assert all(first["images_per_subset"][s] > 0 for s in SUBSETS)
    data = json.loads(instances.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    shown = {Path(i["file_name"]).stem: set() for i in data["images"]}
    stems = {i["id"]: Path(i["file_name"]).stem for i in data["images"]}
    for ann in data["annotations"]:
        shown[stems[ann["image_id"]]].add(names[ann["category_id"]])
    for question in read_mme_subset(tmp_path / "a" / "existence", "existence"):
        asked = question.question.split(" in this image")[0].split()[-1]
        assert (asked in shown[question.image.stem]) == (question.label == "yes"), question
    for subset in SUBSETS:
        labels = [q.label for q in read_mme_subset(tmp_path / "a" / subset, subset)]
        assert labels == ["yes", "no"] * (len(labels) // 2)  # a Yes and a No question per image, Yes first
    with pytest.raises(HallbenchError, match="is not empty"):
        build_mme(instances, images, tmp_path / "a")


def _as_training_run(eval_folder: Path, training: Path, variant: str, label: str) -> None:
    model = {"name": "tiny-qwen", "display_name": "Tiny-Qwen3-VL", "family": "qwen3_vl", "path": None}
    variant_info = {"name": variant, "label": label, "table": "table2"}
    training.mkdir(parents=True, exist_ok=True)
    (training / "hallbench_config.json").write_text(json.dumps({"format": "hallbench-run/1", "model": model, "variant": variant_info}))
    config = json.loads((eval_folder / "config.json").read_text())
    config["backend"]["training_run"] = {"path": str(training), "model": model, "variant": variant_info}
    (eval_folder / "config.json").write_text(json.dumps(config))


def test_the_report_shows_mme_from_its_declarations_alone(tmp_path, mme_dir):
    runs = tmp_path / "runs"
    oracle = ScriptedBackend(lambda s: "Yes." if s.meta["label"] == "yes" else "No.")
    for variant, label, backend in (("base", "Base", ScriptedBackend(lambda s: "Yes.")), ("ours", "Ours", oracle)):
        run_eval(EvalConfig(bench="mme", data=mme_dir, out=runs / f"eval_{variant}"), backend=backend, progress=False)
        _as_training_run(runs / f"eval_{variant}", runs / f"train_{variant}", variant, label)
    result = run_report(runs, tmp_path / "report", n_resamples=200)
    table2 = (tmp_path / "report" / "table2.md").read_text()
    header = next(line for line in table2.splitlines() if line.startswith("| Model"))
    assert [f"MME {s} Score" in header for s in SUBSETS] == [True] * 4
    base = next(line for line in table2.splitlines() if "| Base |" in line)
    ours = next(line for line in table2.splitlines() if "| Ours |" in line)
    assert base.count("50.0 ± 0.0") == 4 and ours.count("**200.0 ± 0.0**†") == 4  # † vs Base
    assert "Score: points, Acc + Acc+" in table2
    frame = result.frame
    tested = frame[(frame.bench == "mme") & (frame.variant == "ours") & (frame.metric == "score")]
    assert len(tested) == 4 and (tested.delta == 150.0).all() and tested.p_value.max() < 0.05
    assert "mme_detail" in result.tables and (tmp_path / "report" / "mme_detail.tex").is_file()


@pytest.fixture(scope="module")
def mme_dir(tmp_path_factory, shapes_dir):
    out = tmp_path_factory.mktemp("mme") / "mme"
    build_mme(shapes_dir / "annotations" / "instances_val.json", shapes_dir / "images", out)
    return out


def test_the_spec_is_registered():
    assert get_spec("mme") is SPEC and [m.name for m in SPEC.metrics] == ["accuracy", "acc_plus", "score"]
