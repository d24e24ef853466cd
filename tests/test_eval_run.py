"""``hallbench eval`` end to end: POPE (and CHAIR) through the engine, run folders, resume rules, CLI."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from scripted import ScriptedBackend
from typer.testing import CliRunner

from hallbench.cli import app
from hallbench.data.pope_build import PopeBuildConfig, build_pope
from hallbench.errors import HallbenchError
from hallbench.eval.benchmark import get_spec
from hallbench.eval.engine import DecodingConfig
from hallbench.eval.run import EvalConfig, run_eval

runner = CliRunner()


def _oracle(sample):
    return "Yes, there is." if sample.meta["label"] == "yes" else "No, there is not."


def test_pope_run_writes_a_self_describing_folder(tmp_path, pope_dir, shapes_dir):
    cfg = EvalConfig(bench="pope", data=pope_dir, out=tmp_path / "run")
    summary = run_eval(cfg, backend=ScriptedBackend(_oracle), progress=False)
    # 5 images x 2 yes + 2 no = 20 questions per split
    assert {s: m["n"] for s, m in summary["splits"].items()} == {"random": 20, "popular": 20, "adversarial": 20}
    assert summary["pooled"]["accuracy"] == 1.0 and summary["mean"]["f1"] == 1.0 and summary["n_errors"] == 0
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert files == {"config.json", "predictions.jsonl", "summary.json", ".hallbench.lock"}
    assert (tmp_path / "run" / ".hallbench.lock").read_text() == ""  # released at the end of the run
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["eval"]["bench"] == "pope" and config["eval"]["decoding"]["decoding"] == "greedy"
    assert config["versions"]["transformers"] and "git_commit" in config
    assert config["data"]["images"] == str(shapes_dir / "images")  # recorded by `hallbench data pope`
    records = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert records[0]["id"] == "random/1" and records[0]["parsed"] == records[0]["label"]


def test_pope_always_yes_has_yes_ratio_one_from_predictions(tmp_path, pope_dir):
    summary = run_eval(EvalConfig(bench="pope", data=pope_dir, out=tmp_path), backend=ScriptedBackend(lambda s: "Yes"), progress=False)
    random_split = summary["splits"]["random"]
    assert (random_split["accuracy"], random_split["precision"], random_split["recall"], random_split["yes_ratio"]) == (0.5, 0.5, 1.0, 1.0)
    assert random_split["f1"] == pytest.approx(2 / 3)


def test_pope_unparseable_answers_differ_between_parsers(tmp_path, pope_dir):
    answer = ScriptedBackend(lambda s: "Maybe.")
    ours = run_eval(EvalConfig(bench="pope", data=pope_dir, out=tmp_path / "a", split="random"), backend=answer, progress=False)
    assert list(ours["splits"]) == ["random"]
    assert ours["pooled"]["unknown_rate"] == 1.0 and ours["pooled"]["accuracy"] == 0.0
    official = run_eval(
        EvalConfig.from_flags(bench="pope", data=pope_dir, out=tmp_path / "b", split="random", parser="official"),
        backend=ScriptedBackend(lambda s: "I see."),
        progress=False,
    )
    assert official["pooled"]["yes_ratio"] == 1.0  # the official rule counts anything without a negation as yes


def _no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("re-scoring loaded a model")

    monkeypatch.setattr("hallbench.eval.run.make_backend", refuse)
    monkeypatch.setattr("hallbench.models.loading.load_model", refuse)


def _hedging(sample):
    # yes questions: "Yes." for the first two images, a hedge after; no questions: "NO."
    if sample.meta["label"] == "no":
        return "NO."
    return "Yes." if int(sample.meta["question_id"]) % 4 < 2 else "I don't know."


def test_changing_only_the_parser_rescores_the_answers_without_a_model(tmp_path, pope_dir, monkeypatch):
    out = tmp_path / "run"
    own = run_eval(EvalConfig(bench="pope", data=pope_dir, out=out, split="random"), backend=ScriptedBackend(_hedging), progress=False)
    files = {name: (out / name).read_bytes() for name in ("config.json", "summary.json", "predictions.jsonl")}
    _no_model(monkeypatch)
    official = run_eval(EvalConfig.from_flags(bench="pope", data=pope_dir, out=out, split="random", parser="official"), progress=False)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    n_yes = sum(r["label"] == "yes" for r in records)
    n_hedged = sum(r["prediction"] == "I don't know." for r in records)
    n = len(records)
    assert 0 < n_hedged < n_yes
    # hallbench: "NO." is no (right), a hedge is unknown (wrong); official: "NO." is yes (wrong: case), a hedge is yes (right)
    assert own["pooled"]["accuracy"] == pytest.approx((n - n_hedged) / n)
    assert official["pooled"]["accuracy"] == pytest.approx(n_yes / n) and official["pooled"]["yes_ratio"] == 1.0
    folder = out / "scores" / "parser-official"
    assert official["scored_into"] == str(folder) and official["scoring"] == {"parser": "official", "labels": None}
    assert json.loads((folder / "summary.json").read_text())["pooled"] == official["pooled"]
    assert json.loads((folder / "scoring.json").read_text())["run_scoring"] == {"parser": "hallbench", "labels": None}
    assert {name: (out / name).read_bytes() for name in files} == files  # the run itself is untouched
    # The run's own scoring again: a plain resume, nothing generated, the same summary.
    again = run_eval(EvalConfig(bench="pope", data=pope_dir, out=out, split="random"), backend=ScriptedBackend(_hedging), progress=False)
    assert again["pooled"] == own["pooled"]


def test_repope_labels_rescore_against_the_corrected_set_and_count_removed_questions(tmp_path, pope_dir, monkeypatch):
    out = tmp_path / "run"
    run_eval(EvalConfig(bench="pope", data=pope_dir, out=out, split="random"), backend=ScriptedBackend(_oracle), progress=False)
    questions = [json.loads(line) for line in (pope_dir / "random.jsonl").read_text().splitlines()]
    # RePOPE-style: the first two labels were wrong (flipped), the last three questions were ambiguous (removed).
    relabelled = [{**q, "label": {"yes": "no", "no": "yes"}[q["label"]]} if i < 2 else q for i, q in enumerate(questions[:-3])]
    labels = tmp_path / "repope"
    labels.mkdir()
    (labels / "random.jsonl").write_text("".join(json.dumps(q) + "\n" for q in relabelled))
    _no_model(monkeypatch)
    repope = run_eval(EvalConfig.from_flags(bench="pope", data=pope_dir, out=out, split="random", labels=labels), progress=False)
    kept = len(questions) - 3
    assert repope["n_removed"] == 3 and repope["n_samples"] == kept and repope["splits"]["random"]["n"] == kept
    assert repope["pooled"]["accuracy"] == pytest.approx((kept - 2) / kept)  # the oracle answered the old labels
    assert (out / "scores" / "labels-repope" / "summary.json").is_file()
    # The report reads the re-scoring beside the run's own numbers.
    from hallbench.report import run_report

    table = run_report(tmp_path / "run", tmp_path / "report", n_resamples=20).tables["pope_scorings"]
    assert [(c.group, c.label) for c in table.columns] == [(g, m) for g in ("POPE random", "repope random") for m in ("Acc", "F1")]
    values = [cell.value for cell in table.cells[0]]
    assert values[0] == pytest.approx(100.0) and values[2] == pytest.approx(100 * (kept - 2) / kept)
    assert any("3 questions of each run removed" in note for note in table.notes)
    bad = [{**questions[0], "text": "Is there a unicorn in the image?"}]
    (labels / "random.jsonl").write_text(json.dumps(bad[0]) + "\n")
    with pytest.raises(HallbenchError, match=r"question .* asks 'Is there a unicorn in the image\?'.*random.jsonl asks"):
        run_eval(EvalConfig.from_flags(bench="pope", data=pope_dir, out=out, split="random", labels=labels), progress=False)


def test_the_reports_rescoring_command_rescores_the_run_it_names(tmp_path, pope_dir, monkeypatch):
    """The missing-cell command the report writes for a re-scoring carries the run's own settings, so
    that the CLI re-scores it (no model) instead of refusing it as another experiment."""
    import shlex

    from hallbench.report.tables import _identity_flags

    out = tmp_path / "run"
    decoding = DecodingConfig(max_new_tokens=7, batch_size=3, seed=5)
    cfg = EvalConfig(
        bench="pope", data=pope_dir, out=out, split="random", prompt_suffix="Answer yes or no.", max_samples=6, decoding=decoding
    )
    run_eval(cfg, backend=ScriptedBackend(_oracle), progress=False)
    config = json.loads((out / "config.json").read_text())
    flags = _identity_flags(config["eval"], json.loads((out / "summary.json").read_text())["max_samples"])
    assert "--max-new-tokens 7" in flags and "--batch-size 3" in flags and "--seed 5" in flags and "--max-samples 6" in flags
    _no_model(monkeypatch)
    args = ["eval", *(part for flag in flags for part in shlex.split(flag)), "--parser", "official", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "scores" / "parser-official" / "summary.json").is_file()


def test_rescoring_an_unfinished_run_is_refused(tmp_path, pope_dir, monkeypatch):
    out = tmp_path / "run"
    cfg = EvalConfig(bench="pope", data=pope_dir, out=out, split="random", max_samples=4)
    run_eval(cfg, backend=ScriptedBackend(_oracle), progress=False)
    _no_model(monkeypatch)
    with pytest.raises(HallbenchError, match=r"16 of 20 samples have no answer yet .* re-scoring never generates"):
        run_eval(replace(cfg, max_samples=None, options=replace(cfg.options, parser="official")), progress=False)


def test_rerun_resumes_without_generating_again(tmp_path, pope_dir):
    cfg = EvalConfig(bench="pope", data=pope_dir, out=tmp_path, split="popular")
    first = run_eval(cfg, backend=ScriptedBackend(_oracle), progress=False)
    again = ScriptedBackend(_oracle)
    second = run_eval(cfg, backend=again, progress=False)
    assert again.calls == 0
    assert first["pooled"] == second["pooled"]


def test_a_folder_with_another_configuration_is_refused(tmp_path, pope_dir):
    run_eval(EvalConfig(bench="pope", data=pope_dir, out=tmp_path, split="random"), backend=ScriptedBackend(_oracle), progress=False)
    changed = EvalConfig(bench="pope", data=pope_dir, out=tmp_path, split="random", decoding=DecodingConfig(max_new_tokens=8))
    with pytest.raises(HallbenchError, match=r"holds a run with other settings \(decoding\.max_new_tokens: 32 -> 8\)"):
        run_eval(changed, backend=ScriptedBackend(_oracle), progress=False)


def test_a_folder_written_before_the_per_benchmark_options_resumes(tmp_path, pope_dir):
    """Folders of earlier versions recorded every benchmark's options in every run's identity (a POPE
    run's CHAIR prompt, VQA marker...) and the parser: none of them changed a POPE answer."""
    first = run_eval(
        EvalConfig(bench="pope", data=pope_dir, out=tmp_path, split="random"), backend=ScriptedBackend(_oracle), progress=False
    )
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    assert "marker" not in config["eval"] and "prompt" not in config["eval"]  # POPE's identity holds POPE's options only
    config["eval"] |= {
        "parser": "hallbench", "prompt": None, "drop_incomplete": False, "instances": None, "captions": None, "synonyms": None,
        "marker": "### The final answer is:", "require_marker": False, "image_ids": None, "labels": None,
    }  # fmt: skip
    config.pop("scoring")
    config_path.write_text(json.dumps(config))
    (tmp_path / "summary.json").unlink()
    resumed = run_eval(
        EvalConfig(bench="pope", data=pope_dir, out=tmp_path, split="random"), backend=ScriptedBackend(_oracle), progress=False
    )
    assert resumed["pooled"] == first["pooled"]
    # A common setting recorded differently is still another experiment.
    config["eval"]["system_prompt"] = "Be brief."
    config_path.write_text(json.dumps(config))
    with pytest.raises(HallbenchError, match="system_prompt: 'Be brief.' -> None"):
        run_eval(EvalConfig(bench="pope", data=pope_dir, out=tmp_path, split="random"), backend=ScriptedBackend(_oracle), progress=False)


def test_missing_images_are_recorded_and_counted(tmp_path, pope_dir, shapes_dir):
    images = tmp_path / "images"
    images.mkdir()
    for i, path in enumerate(sorted((shapes_dir / "images").glob("shapes_val_*.png"))):
        if i % 2 == 0:
            (images / path.name).write_bytes(path.read_bytes())
    summary = run_eval(
        EvalConfig(bench="pope", data=pope_dir, images=images, out=tmp_path / "run"), backend=ScriptedBackend(_oracle), progress=False
    )
    assert 0 < summary["n_errors"] < 60
    assert summary["pooled"]["n"] + summary["n_errors"] == 60
    assert summary["errors"][0]["error"].startswith("image not found:")
    with pytest.raises(HallbenchError, match="image not found"):
        run_eval(
            EvalConfig(bench="pope", data=pope_dir, images=images, out=tmp_path / "strict", strict=True),
            backend=ScriptedBackend(_oracle),
            progress=False,
        )


def test_pope_data_errors(tmp_path, pope_dir):
    (tmp_path / "random.jsonl").write_text((pope_dir / "random.jsonl").read_text())
    with pytest.raises(HallbenchError, match=r"no popular split in .*: tried popular.jsonl, coco_pope_popular.json"):
        run_eval(
            EvalConfig(bench="pope", data=tmp_path, images=tmp_path, out=tmp_path / "o"), backend=ScriptedBackend(_oracle), progress=False
        )
    with pytest.raises(HallbenchError, match="needs --images"):
        run_eval(
            EvalConfig(bench="pope", data=tmp_path / "random.jsonl", out=tmp_path / "o"), backend=ScriptedBackend(_oracle), progress=False
        )
    with pytest.raises(HallbenchError, match="unknown --bench 'mmbench'; choose one of pope, chair, vqa, mme"):
        EvalConfig(bench="mmbench", out=tmp_path)


def test_cli_pope_with_the_tiny_model(tmp_path, shapes_dir):
    pope = tmp_path / "pope"
    result = runner.invoke(
        app,
        [
            "data",
            "pope",
            "--instances",
            str(shapes_dir / "annotations/instances_val.json"),
            "--images",
            str(shapes_dir / "images"),
            "--out",
            str(pope),
            "--n-images",
            "2",
            "--per-image",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "run"
    args = [
        "eval",
        "--bench",
        "pope",
        "--model",
        "tiny-qwen",
        "--data",
        str(pope),
        "--split",
        "all",
        "--out",
        str(out),
        "--max-new-tokens",
        "3",
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["splits"]) == {"random", "popular", "adversarial"} and summary["pooled"]["n"] == 12
    assert re.search(r"pooled", result.output)


def test_cli_data_pope_reports_too_few_images(tmp_path, shapes_dir):
    args = [
        "data",
        "pope",
        "--instances",
        str(shapes_dir / "annotations/instances_val.json"),
        "--images",
        str(shapes_dir / "images"),
        "--out",
        str(tmp_path),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "expected at least 500 eligible images" in " ".join(result.output.split())


def test_chair_run_scores_captions_against_the_shapes_ground_truth(tmp_path, shapes_dir):
    from pycocotools.coco import COCO

    coco = COCO(str(shapes_dir / "annotations" / "instances_val.json"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    truth = {i: sorted({names[a["category_id"]] for a in coco.loadAnns(coco.getAnnIds(imgIds=i))}) for i in coco.getImgIds()}

    def describe(sample):  # every true object, plus one "heart" that is hallucinated unless present
        objects = truth[sample.meta["image_id"]]
        return "There is " + " and ".join(f"a {o}" for o in objects) + " and a heart. And a blue"

    cfg = EvalConfig.from_flags(bench="chair", data=shapes_dir, out=tmp_path, drop_incomplete=True)
    summary = run_eval(cfg, backend=ScriptedBackend(describe), progress=False)
    metrics = summary["metrics"]
    without_heart = [i for i, objs in truth.items() if "heart" not in objs]
    assert metrics["n"] == 20
    assert metrics["chair_s"] == pytest.approx(len(without_heart) / 20)
    mentions = sum(len(objs) + 1 for objs in truth.values())  # a repeated "heart" counts twice, as in the original CHAIR
    assert metrics["chair_i"] == pytest.approx(len(without_heart) / mentions)
    assert metrics["recall"] == 1.0
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all(r["scored_caption"].endswith("heart.") for r in records)  # the cut-off "And a blue" was dropped
    first = records[0]
    assert first["ground_truth"] == truth[first["image_id"]]
    assert sorted(first["mentioned_objects"]) == sorted(set(truth[first["image_id"]]) | {"heart"})


def test_cli_chair_with_the_tiny_model(tmp_path, shapes_dir):
    out = tmp_path / "chair"
    args = ["eval", "--bench", "chair", "--model", "tiny-ministral", "--data", str(shapes_dir), "--out", str(out)]
    result = runner.invoke(
        app, [*args, "--max-new-tokens", "5", "--max-samples", "4", "--device", "cpu", "--decoding", "beam", "--num-beams", "2"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["n"] == 4 and summary["decoding"] == "beam"
    assert set(summary["metrics"]) >= {"chair_s", "chair_i", "recall", "len"}


def test_chair_needs_its_files(tmp_path):
    with pytest.raises(HallbenchError, match=r"--bench chair needs instances_val.json"):
        run_eval(EvalConfig(bench="chair", data=tmp_path, out=tmp_path / "o"), backend=ScriptedBackend(lambda s: ""), progress=False)


def test_two_ranks_with_torchrun_merge_to_the_single_process_result(tmp_path, shapes_dir):
    import socket
    import subprocess
    import sys
    from pathlib import Path

    pope = tmp_path / "pope"
    build_pope(
        shapes_dir / "annotations/instances_val.json", pope, PopeBuildConfig(n_images=4, per_image=2), images_dir=shapes_dir / "images"
    )
    common = [
        "eval",
        "--bench",
        "pope",
        "--data",
        str(pope),
        "--split",
        "random",
        "--max-new-tokens",
        "3",
        "--batch-size",
        "3",
        "--device",
        "cpu",
    ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = Path(sys.executable).parent / "torchrun"
    launch = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "hallbench"]
    proc = subprocess.run([*launch, *common, "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert runner.invoke(app, [*common, "--out", str(tmp_path / "one")]).exit_code == 0
    two = (tmp_path / "two" / "predictions.jsonl").read_text()
    assert two == (tmp_path / "one" / "predictions.jsonl").read_text()
    ranks = [len((tmp_path / "two" / f"predictions.rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert ranks == [9, 7]  # 16 questions in batches of 3: rank 0 has batches 0, 2, 4 (3+3+3), rank 1 has 1, 3, 5 (3+3+1)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["pooled"]["n"] == 16


def test_each_benchmark_has_its_own_default_answer_length(tmp_path, pope_dir, shapes_dir):
    lengths = {bench: EvalConfig(bench=bench, out=tmp_path, data=pope_dir).decoding.max_new_tokens for bench in ("pope", "chair", "vqa")}
    assert lengths == {"pope": 32, "chair": 512, "vqa": 1024}
    assert EvalConfig(bench="chair", out=tmp_path, decoding=DecodingConfig(max_new_tokens=77)).decoding.max_new_tokens == 77
    run_eval(
        EvalConfig(bench="pope", data=pope_dir, out=tmp_path / "run", split="random"), backend=ScriptedBackend(_oracle), progress=False
    )
    assert json.loads((tmp_path / "run" / "config.json").read_text())["eval"]["decoding"]["max_new_tokens"] == 32


def test_prompt_suffix_is_sent_recorded_and_part_of_the_identity(tmp_path, pope_dir):
    seen = []

    def answer(sample):
        seen.append(sample.prompt)
        return _oracle(sample)

    suffix = "Answer the question using a single word or phrase."
    cfg = EvalConfig(bench="pope", data=pope_dir, out=tmp_path, split="random", prompt_suffix=suffix)
    run_eval(cfg, backend=ScriptedBackend(answer), progress=False)
    assert seen and all(p.endswith("?\n" + suffix) for p in seen)
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all(r["prompt"].endswith("\n" + suffix) for r in records)
    with pytest.raises(HallbenchError, match="prompt_suffix"):
        run_eval(EvalConfig(bench="pope", data=pope_dir, out=tmp_path, split="random"), backend=ScriptedBackend(_oracle), progress=False)


def test_chair_image_ids_evaluate_exactly_the_listed_subset_in_order(tmp_path, shapes_dir):
    from pycocotools.coco import COCO

    ids = sorted(COCO(str(shapes_dir / "annotations" / "instances_val.json")).getImgIds())
    wanted = [ids[5], ids[0], ids[3]]
    listing = tmp_path / "subset.json"
    listing.write_text(json.dumps(wanted))
    cfg = EvalConfig.from_flags(bench="chair", data=shapes_dir, out=tmp_path / "run", image_ids=listing)
    summary = run_eval(cfg, backend=ScriptedBackend(lambda s: "A star."), progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in records] == wanted and summary["metrics"]["n"] == 3
    lines = tmp_path / "subset.txt"
    lines.write_text(f"{ids[1]}\n\n{ids[2]}\n")
    cfg = EvalConfig.from_flags(bench="chair", data=shapes_dir, out=tmp_path / "run2", image_ids=lines)
    run_eval(cfg, backend=ScriptedBackend(lambda s: "A star."), progress=False)
    assert len((tmp_path / "run2" / "predictions.jsonl").read_text().splitlines()) == 2
    for content, message in (
        (json.dumps([ids[0], 999999]), r"1 image id\(s\) are not in .*999999"),
        (f"{ids[0]}\n{ids[0]}\n", "listed more than once"),
    ):
        listing.write_text(content)
        with pytest.raises(HallbenchError, match=message):
            run_eval(
                EvalConfig.from_flags(bench="chair", data=shapes_dir, out=tmp_path / "bad", image_ids=listing),
                backend=ScriptedBackend(str),
                progress=False,
            )
    with pytest.raises(HallbenchError, match="--image-ids applies to --bench chair, not --bench pope"):
        EvalConfig.from_flags(bench="pope", out=tmp_path, image_ids=listing)


def test_a_key_passed_as_an_env_var_name_is_refused_without_showing_it(tmp_path, pope_dir):
    key = "sk-4f9c2e7a1b3d5f6e8a0c2e4f6a8b0d2f"
    for bench, option in (("pope", "api_key_env"), ("vqa", "judge_key_env")):
        with pytest.raises(HallbenchError) as err:
            EvalConfig.from_flags(bench=bench, data=pope_dir, out=tmp_path, **{option: key})
        assert key not in str(err.value) and "NAME of an environment variable" in str(err.value)
    with_credentials = {
        "base_url": {"bench": "pope", "backend": "openai", "api_model": "m", "base_url": "http://user:secret@127.0.0.1:8000/v1"},
        "judge_base_url": {"bench": "vqa", "judge_base_url": "https://user:secret@api.deepseek.com"},
    }
    for settings in with_credentials.values():
        with pytest.raises(HallbenchError, match="must not contain credentials") as err:
            EvalConfig.from_flags(data=pope_dir, out=tmp_path, **settings)
        assert "secret" not in str(err.value)
    result = runner.invoke(app, ["eval", "--bench", "vqa", "--data", str(pope_dir), "--out", str(tmp_path / "x"), "--judge-key-env", key])
    assert result.exit_code == 1 and key not in result.output
    assert not (tmp_path / "x").exists()


def test_the_recorded_command_line_hides_keys_and_url_credentials():
    from hallbench.provenance import scrubbed_command

    argv = ["hallbench", "eval", "--judge-key-env", "sk-abc-123", "--api-key-env=sk-xyz-9", "--base-url", "http://u:pw@host:8000/v1"]
    assert scrubbed_command(argv) == "hallbench eval --judge-key-env *** --api-key-env=*** --base-url http://***@host:8000/v1"
    assert scrubbed_command(["hallbench", "eval", "--api-key-env", "MY_KEY"]) == "hallbench eval --api-key-env MY_KEY"


def test_unusable_out_and_device_are_one_line_errors(tmp_path, pope_dir):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "under"):
        result = runner.invoke(app, ["eval", "--bench", "pope", "--data", str(pope_dir), "--out", str(out)])
        assert result.exit_code == 1 and "cannot create the folder" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["eval", "--bench", "pope", "--data", str(pope_dir), "--out", str(tmp_path / "o"), "--device", "bogus"])
    assert result.exit_code == 1 and "--device 'bogus' is not a device" in result.output


def test_a_run_where_every_sample_failed_exits_non_zero(tmp_path, pope_dir):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "image": "missing.png", "text": "Is there a dog?", "label": "yes"}) + "\n")
    args = ["eval", "--bench", "pope", "--data", str(questions), "--images", str(tmp_path), "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*args, "--max-new-tokens", "2"])
    assert result.exit_code == 1 and "every one of the 1 samples failed" in result.output and "image not found" in result.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_errors"] == 1  # the summary is still written


def test_recorded_image_folders_work_from_any_working_directory(tmp_path, shapes_dir, monkeypatch):
    import shutil

    world = tmp_path / "demo" / "shapes"
    shutil.copytree(shapes_dir / "images", world / "images")
    shutil.copy(shapes_dir / "annotations" / "instances_val.json", tmp_path / "instances.json")
    monkeypatch.chdir(tmp_path)  # as `hallbench demo` runs: relative paths
    build_pope(
        Path("instances.json"), Path("demo/shapes/pope"), PopeBuildConfig(n_images=2, per_image=1), images_dir=Path("demo/shapes/images")
    )
    manifest = json.loads((world / "pope" / "pope_build.json").read_text())
    assert manifest["images"] == str(world.resolve() / "images")  # absolute since this version
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = EvalConfig(bench="pope", data=world / "pope", out=tmp_path / "run")
    assert run_eval(cfg, backend=ScriptedBackend(_oracle), progress=False)["n_errors"] == 0
    # A manifest of an older version, relative to where `data pope` ran: found above the manifest.
    (world / "pope" / "pope_build.json").write_text(json.dumps({**manifest, "images": "demo/shapes/images"}))
    cfg = EvalConfig(bench="pope", data=world / "pope", out=tmp_path / "run2")
    assert run_eval(cfg, backend=ScriptedBackend(_oracle), progress=False)["n_errors"] == 0


def test_from_flags_routes_flat_options_to_the_config_the_decoding_and_the_benchmark(tmp_path):
    from hallbench.eval.pope import PopeOptions

    cfg = EvalConfig.from_flags(bench="pope", out=tmp_path, split="random", decoding="beam", num_beams=4, parser="official")
    assert cfg.split == "random" and cfg.options == PopeOptions(parser="official")
    assert cfg.decoding == DecodingConfig(decoding="beam", max_new_tokens=32, num_beams=4)  # POPE's answer length filled in
    base = DecodingConfig(max_new_tokens=8, batch_size=2)
    assert EvalConfig.from_flags(bench="chair", out=tmp_path, decoding=base, seed=3).decoding == replace(base, seed=3)
    assert EvalConfig.from_flags(bench="chair", out=tmp_path, labels=None).options == get_spec("chair").options()  # defaults pass
    with pytest.raises(HallbenchError, match="hallbench eval has no option 'colour'"):
        EvalConfig.from_flags(bench="pope", out=tmp_path, colour="red")
    with pytest.raises(HallbenchError, match="--bench chair takes ChairOptions options, got PopeOptions"):
        EvalConfig(bench="chair", out=tmp_path, options=PopeOptions())
