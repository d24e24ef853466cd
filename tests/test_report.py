"""The report stage: tables, CIs, significance, bad input, snapshots, plots and the CLI, on hand-made run folders.

The fixture runs are small enough to check by hand (see ``build_study``); their summaries come from
the benches' own aggregate functions, exactly as ``hallbench eval`` writes them.
Regenerate the snapshots in tests/fixtures/report/ with ``HALLBENCH_UPDATE_SNAPSHOTS=1 pytest tests/test_report.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from hallbench.cli import app
from hallbench.errors import HallbenchError
from hallbench.eval.benchmark import Metric, SampleTable, point, sample_table
from hallbench.eval.chair import SPEC as CHAIR_SPEC
from hallbench.eval.chair import aggregate as chair_aggregate
from hallbench.eval.pope import SPEC as POPE_SPEC
from hallbench.eval.pope import aggregate_pope, pope_metrics
from hallbench.report import run_report
from hallbench.report.bootstrap import bootstrap_ci, paired_test, stable_seed
from hallbench.train.presets import PRESETS

SNAPSHOTS = Path(__file__).parent / "fixtures" / "report"

# ---------------------------------------------------------------------------------------------
# Fixture run folders

MODEL = {"name": "tiny-qwen", "display_name": "Tiny-Qwen3-VL", "family": "qwen3_vl", "path": None}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def training_run(
    root: Path, variant: str, *, model: dict = MODEL, log: list[dict] | None = None, created: str = "2026-01-01T00:00:00+00:00",
    seed: int | None = None,
) -> Path:  # fmt: skip
    preset = PRESETS[variant]
    folder = root / (f"output_model_{model['display_name']}_{preset.label}" + (f"_seed{seed}" if seed is not None else ""))
    _dump(
        folder / "hallbench_config.json",
        {
            "format": "hallbench-run/1",
            "model": model,
            "variant": {"name": preset.name, "label": preset.label, "table": preset.table},
            "evidence": {},
            "train": {} if seed is None else {"seed": seed, "seed_in_folder": True},
            "data": {},
            "versions": {},
            "git_commit": COMMIT,
            "created": created,
        },
    )
    # A saved model's own config.json must not be mistaken for an evaluation run.
    _dump(folder / "config.json", {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl"})
    if log is not None:
        _jsonl(folder / "train_log.jsonl", log)
    return folder


def train_log(variant: str, steps: int = 10) -> list[dict]:
    ev = PRESETS[variant].evidence
    return [
        {
            "step": s,
            "epoch": s / steps,
            "loss": 2.0 / s,
            "ce": 1.5 / s,
            "l_orth": 0.3 / s if ev.lambda_orth else None,
            "l_ctr": 0.2 / s if ev.lambda_ctr else None,
            "learning_rate": 1e-5,
            "grad_norm": 1.0,
        }
        for s in range(1, steps + 1)
    ]


def _config(bench: str, decoding: str, training: Path | None, variant: str | None, *, model: dict, created: str, data: str) -> dict:
    backend = {"backend": "hf", "model": model["name"], "display_name": model["display_name"], "source": "tiny", "path": None}
    if training is not None:
        preset = PRESETS[variant]
        backend["model"] = str(training)
        backend["training_run"] = {
            "path": str(training),
            "model": model,
            "variant": {"name": preset.name, "label": preset.label, "table": preset.table},
            "evidence": dataclasses.asdict(preset.evidence),
        }
    return {
        "eval": {
            "bench": bench,
            "model": str(training) if training is not None else model["name"],
            "split": "all",
            "data": data,
            "images": None,
            "decoding": {"decoding": decoding, "max_new_tokens": 64, "seed": 0},
        },
        "backend": backend,
        "git_commit": COMMIT,
        "created": created,
        "command": "hallbench eval",
        "versions": {},
    }


def pope_records(answers: dict[str, list[tuple[str, str]]]) -> list[dict]:
    """``{split: [(label, parsed), ...]}`` -> predictions.jsonl records (question ids 1..n per split)."""
    records = []
    for split, pairs in answers.items():
        for i, (label, parsed) in enumerate(pairs, 1):
            records.append(
                {
                    "id": f"{split}/{i}",
                    "question_id": str(i),
                    "split": split,
                    "label": label,
                    "parsed": parsed,
                    "prediction": parsed,
                    "error": None,
                }
            )
    return records


def eval_pope(
    folder: Path, answers: dict, *, training: Path | None = None, variant: str | None = None, decoding: str = "greedy",
    model: dict = MODEL, created: str = "2026-01-02T00:00:00+00:00",
) -> Path:  # fmt: skip
    records = pope_records(answers)
    _dump(folder / "config.json", _config("pope", decoding, training, variant, model=model, created=created, data="/data/pope"))
    _jsonl(folder / "predictions.jsonl", records)
    summary = {
        "bench": "pope",
        "model": model["display_name"],
        "decoding": decoding,
        "n_samples": len(records),
        "n_errors": 0,
        "errors": [],
        "metrics_info": POPE_SPEC.metrics_info(),
        **aggregate_pope(records),
        "parser": "hallbench",
    }
    _dump(folder / "summary.json", summary)
    return folder


def chair_records(captions: list[tuple[list[str], list[str], int]]) -> list[dict]:
    """``[(mentioned categories, ground truth, n_words), ...]`` -> CHAIR per-caption records (image ids 1..n)."""
    records = []
    for i, (mentioned, truth, words) in enumerate(captions, 1):
        mentions = [{"category": c, "words": c, "position": k} for k, c in enumerate(mentioned)]
        hallucinated = [m for m in mentions if m["category"] not in truth]
        objects = list(dict.fromkeys(mentioned))
        records.append(
            {
                "id": str(i),
                "image_id": i,
                "prediction": " ".join(mentioned),
                "error": None,
                "n_words": words,
                "mentioned": mentions,
                "mentioned_objects": objects,
                "hallucinated": hallucinated,
                "hallucinated_objects": list(dict.fromkeys(m["category"] for m in hallucinated)),
                "recalled_objects": sorted(c for c in objects if c in truth),
                "ground_truth": sorted(truth),
                "chair_s": int(bool(hallucinated)),
                "chair_i": len(hallucinated) / len(mentions) if mentions else None,
            }
        )
    return records


def eval_chair(
    folder: Path, captions: list, *, training: Path | None = None, variant: str | None = None, decoding: str = "greedy",
    model: dict = MODEL, created: str = "2026-01-02T00:00:00+00:00",
) -> Path:  # fmt: skip
    records = chair_records(captions)
    _dump(folder / "config.json", _config("chair", decoding, training, variant, model=model, created=created, data="/data/shapes"))
    _jsonl(folder / "predictions.jsonl", records)
    summary = {
        "bench": "chair",
        "model": model["display_name"],
        "decoding": decoding,
        "n_samples": len(records),
        "n_errors": 0,
        "errors": [],
        "metrics_info": CHAIR_SPEC.metrics_info(),
        "metrics": chair_aggregate(records),
    }
    _dump(folder / "summary.json", summary)
    return folder


def eval_vqa(folder: Path, closed: list[bool], open_f1: list[float], *, training: Path, variant: str) -> Path:
    records = [
        {"id": f"{i}-closed", "answer_type": "CLOSED", "correct": ok, "missing_marker": False, "error": None, "judge": {"verdict": ok}}
        for i, ok in enumerate(closed, 1)
    ] + [
        {
            "id": f"{i}-open",
            "answer_type": "OPEN",
            "missing_marker": False,
            "error": None,
            "bertscore": {"precision": f, "recall": f, "f1": f},
        }
        for i, f in enumerate(open_f1, 1)
    ]
    _dump(
        folder / "config.json",
        _config("vqa", "greedy", training, variant, model=MODEL, created="2026-01-02T00:00:00+00:00", data="/data/vqa.json"),
    )
    _jsonl(folder / "predictions.jsonl", records)
    summary = {
        "bench": "vqa",
        "model": MODEL["display_name"],
        "decoding": "greedy",
        "n_samples": len(records),
        "n_errors": 0,
        "errors": [],
        "metrics": {
            "closed_accuracy": sum(closed) / len(closed),
            "open_bertscore_f1": sum(open_f1) / len(open_f1),
            "open_bertscore_precision": sum(open_f1) / len(open_f1),
            "open_bertscore_recall": sum(open_f1) / len(open_f1),
            "missing_marker_rate": 0.0,
        },
        "require_marker": False,
    }
    _dump(folder / "summary.json", summary)
    return folder


def yes_no(n_yes: int, n_no: int, *, wrong_yes: int = 0, wrong_no: int = 0, unknown: int = 0) -> list[tuple[str, str]]:
    """``n_yes`` yes-labelled then ``n_no`` no-labelled questions; the first ``wrong_*`` of each are answered wrongly,
    and the last ``unknown`` questions are answered ``unknown``."""
    pairs = [("yes", "no" if i < wrong_yes else "yes") for i in range(n_yes)] + [
        ("no", "yes" if i < wrong_no else "no") for i in range(n_no)
    ]
    if unknown:
        pairs = pairs[:-unknown] + [(label, "unknown") for label, _ in pairs[-unknown:]]
    return pairs


def build_study(root: Path) -> dict[str, Path]:
    """The standard fixture: Tiny-Qwen3-VL with Base, +M+A, Ours (Table 2), one ablation, a pretrained model.

    POPE (20 questions per split, 10 labelled yes):
      Base:  says yes to everything -> Acc 50, Precision 50, Recall 100, F1 66.7, Yes ratio 100, on every split.
      Ours:  all correct on every split -> 100 everywhere, yes ratio 50; CI [100, 100].
      +M+A:  random split only, 2 wrong yes + 2 wrong no -> Acc 80, F1 80.
      +M:    trained but never evaluated -> its cells are missing.
    CHAIR (4 captions):
      Base greedy: hallucinates in 2 captions (3 of 6 mentions) -> CHAIRs 50, CHAIRi 50.
      Ours greedy: hallucinates in 1 caption (1 of 6 mentions) -> CHAIRs 25, CHAIRi 16.7.
      Base sample and beam for the decoding table; a pretrained tiny-qwen greedy.
    VQA: Ours only (so the VQA columns appear and Base's VQA cells are missing).
    """
    train = root / "train"
    paths = {v: training_run(train, v, log=train_log(v)) for v in ("base", "m", "ma", "ours", "abl-all-add")}
    ev = root / "eval"
    full = {s: yes_no(10, 10, wrong_no=10) for s in ("random", "popular", "adversarial")}
    perfect = {s: yes_no(10, 10) for s in ("random", "popular", "adversarial")}
    eval_pope(ev / "base_pope", full, training=paths["base"], variant="base")
    eval_pope(ev / "ours_pope", perfect, training=paths["ours"], variant="ours")
    eval_pope(ev / "ma_pope_random", {"random": yes_no(10, 10, wrong_yes=2, wrong_no=2)}, training=paths["ma"], variant="ma")
    eval_pope(
        ev / "abl_all_add_pope", {"random": yes_no(10, 10, wrong_yes=1, unknown=1)}, training=paths["abl-all-add"], variant="abl-all-add"
    )
    base_caps = [(["dog", "cat"], ["dog"], 10), (["car"], ["car"], 8), (["bus", "tree"], ["car"], 12), (["person"], ["person"], 6)]
    ours_caps = [(["dog"], ["dog"], 9), (["car"], ["car"], 8), (["bus", "car"], ["car"], 11), (["person", "dog"], ["person", "dog"], 7)]
    eval_chair(ev / "base_chair", base_caps, training=paths["base"], variant="base")
    eval_chair(ev / "ours_chair", ours_caps, training=paths["ours"], variant="ours")
    eval_chair(ev / "base_chair_sample", base_caps[:2] + ours_caps[2:], training=paths["base"], variant="base", decoding="sample")
    eval_chair(ev / "base_chair_beam", ours_caps, training=paths["base"], variant="base", decoding="beam")
    eval_chair(ev / "pretrained_chair", base_caps, decoding="greedy")
    eval_vqa(ev / "ours_vqa", [True, True, False, True], [0.5, 0.7], training=paths["ours"], variant="ours")
    return paths


# ---------------------------------------------------------------------------------------------
# Shared report (built once: the tests below only read it)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    runs = root / "runs"
    build_study(runs)
    result = run_report(runs, root / "report")
    return runs, result


def _cell(result, table: str, labels: tuple, group: str, label: str):
    t = result.tables[table]
    i = [r.labels for r in t.rows].index(labels)
    j = [(c.group, c.label) for c in t.columns].index((group, label))
    return t.cells[i][j]


def _row(frame, **where):
    rows = frame
    for key, value in where.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, (where, rows)
    return rows.iloc[0]


# ---------------------------------------------------------------------------------------------
# Table numbers, bold, missing cells, significance


def test_table2_numbers_match_hand_computed_values(study):
    _, result = study
    base, ours = ("Tiny-Qwen3-VL", "Base"), ("Tiny-Qwen3-VL", "Ours")
    for split in ("random", "popular", "adversarial"):
        assert _cell(result, "table2", base, f"POPE {split}", "Acc").value == pytest.approx(50.0)
        assert _cell(result, "table2", base, f"POPE {split}", "F1").value == pytest.approx(200 / 3)  # P = 1/2, R = 1
        assert _cell(result, "table2", ours, f"POPE {split}", "Acc").value == pytest.approx(100.0)
    assert _cell(result, "table2", ("Tiny-Qwen3-VL", "+M+A"), "POPE random", "Acc").value == pytest.approx(80.0)
    assert _cell(result, "table2", base, "CHAIR", "CHAIRs").value == pytest.approx(50.0)  # 2 of 4 captions
    assert _cell(result, "table2", base, "CHAIR", "CHAIRi").value == pytest.approx(50.0)  # 3 of 6 mentions
    assert _cell(result, "table2", ours, "CHAIR", "CHAIRi").value == pytest.approx(100 / 6)  # 1 of 6 mentions
    assert _cell(result, "table2", ours, "VQA", "Closed Acc").value == pytest.approx(75.0)
    assert _cell(result, "table2", ours, "VQA", "Open BERTScore-F1").value == pytest.approx(60.0)
    # Rows follow the paper's order; the decoding table has Len in words, not percent.
    assert [r.labels[1] for r in result.tables["table2"].rows] == ["Base", "+M", "+M+A", "Ours"]
    assert _cell(result, "decoding", ("Tiny-Qwen3-VL", "Base", "Greedy"), "CHAIR", "Len").value == pytest.approx(9.0)


def test_bold_marks_the_best_value_respecting_direction(study):
    _, result = study
    t2 = result.tables["table2"]
    bold = t2.matrix("bold")
    assert bold.loc[("Tiny-Qwen3-VL", "Ours"), ("POPE random", "Acc")]  # higher is better
    assert not bold.loc[("Tiny-Qwen3-VL", "Base"), ("POPE random", "Acc")]
    assert bold.loc[("Tiny-Qwen3-VL", "Ours"), ("CHAIR", "CHAIRs")]  # lower is better: 25 < 50
    assert not bold.loc[("Tiny-Qwen3-VL", "Base"), ("CHAIR", "CHAIRs")]
    assert not bold.loc[("Tiny-Qwen3-VL", "Ours"), ("VQA", "Closed Acc")]  # the only value of its column: nothing to compare
    detail = result.tables["pope_detail"].matrix("bold")
    assert not detail[("POPE", "Yes Ratio")].any()  # neutral metric: never bold
    decoding = result.tables["decoding"].matrix("bold")
    assert not decoding[("CHAIR", "Len")].any()
    # Ties at the displayed precision are all bold (Base: sampling and beam both recall 100.0).
    assert decoding.loc[("Tiny-Qwen3-VL", "Base", "Sampling"), ("CHAIR", "Recall")]
    assert decoding.loc[("Tiny-Qwen3-VL", "Base", "Beam"), ("CHAIR", "Recall")]


def test_missing_cells_are_dashes_listed_with_the_commands_that_fill_them(study):
    runs, result = study
    t2 = result.tables["table2"]
    assert t2.matrix("missing").loc[("Tiny-Qwen3-VL", "+M")].all()
    md = (result.out / "table2.md").read_text()
    assert "| Tiny-Qwen3-VL | +M | – | – | – | – | – | – | – | – | – | – |" in md
    missing = {(m.row.labels[1], m.bench): m for m in t2.missing}
    assert set(missing) == {
        ("Base", "vqa"),
        ("+M", "pope"),
        ("+M", "chair"),
        ("+M", "vqa"),
        ("+M+A", "pope"),
        ("+M+A", "chair"),
        ("+M+A", "vqa"),
    }
    # +M was trained but never evaluated: one POPE command over all splits, on its training run.
    train_m = runs / "train" / "output_model_Tiny-Qwen3-VL_+M"
    assert missing[("+M", "pope")].commands == [
        f"hallbench eval --bench pope --model {train_m} --data /data/pope --out {runs / 'eval' / 'Tiny-Qwen3-VL_+M_pope_greedy'}"
    ]
    # +M+A has the random split only: one command per missing split.
    assert [c.split("--split ")[1].split()[0] for c in missing[("+M+A", "pope")].commands] == ["popular", "adversarial"]
    assert "--judge-base-url <judge endpoint>" in missing[("Base", "vqa")].commands[0]
    assert f"`{missing[('+M', 'pope')].commands[0]}`" in md
    # A variant never trained: its train command comes first (ablation 4.1, first-layer add).
    first_add = next(m for m in result.tables["ablation_injection"].missing if m.row.variant == "abl-first-add" and m.bench == "pope")
    assert first_add.commands[0] == (
        f"hallbench train --model tiny-qwen --variant abl-first-add --data <train.json> --images <image folder> --output-root {runs / 'train'}"
    )
    assert "--model '" + str(runs / "train" / "output_model_Tiny-Qwen3-VL_First-layer add") + "'" in first_add.commands[1]
    # The decoding table lists Ours' missing sampling and beam runs with their --decoding.
    decoding = [c for m in result.tables["decoding"].missing if m.row.variant == "ours" for c in m.commands]
    assert [c.split("--decoding ")[1].split()[0] for c in decoding] == ["sample", "beam"]


def test_cis_and_significance_vs_base(study):
    _, result = study
    frame = result.frame
    ours = _row(frame, variant="ours", bench="pope", split="random", metric="accuracy")
    assert (ours.ci_low, ours.ci_high) == (100.0, 100.0)  # every answer correct: every resample is 100%
    assert ours.significant and ours.delta == pytest.approx(50.0) and ours.n_paired == 20
    assert ours.delta_low > 0 and ours.p_value < 0.05
    assert _cell(result, "table2", ("Tiny-Qwen3-VL", "Ours"), "POPE random", "Acc").significant
    base = _row(frame, variant="base", bench="pope", split="random", metric="accuracy")
    assert base.ci_low < 50 < base.ci_high and pd_isna(base.significant)  # Base is the reference: no test
    # 4 captions are too few: Ours' lower CHAIRs (25 vs 50) is not significant.
    chair = _row(frame, variant="ours", bench="chair", decoding="greedy", metric="chair_s")
    assert not chair.significant and chair.delta_low <= 0 <= chair.delta_high
    # The pretrained model is compared with Base too (same display name): same captions, so no difference.
    pre = _row(frame, variant="pretrained", bench="chair", metric="chair_i")
    assert pre.delta == 0 and not pre.significant and pre.p_value == 1.0
    md = (result.out / "table2.md").read_text()
    assert "| Tiny-Qwen3-VL | Ours | **100.0 ± 0.0**† |" in md
    assert "| Tiny-Qwen3-VL | Base | 50.0 ± 22.5 | 66.7 ± 19.8 |" in md


def pd_isna(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def test_pretrained_model_is_kept_out_of_the_paper_tables(study):
    runs, result = study
    assert [(e.path, e.reason.split(":")[0]) for e in result.excluded] == [
        (
            runs / "eval" / "pretrained_chair",
            "the evaluated model (tiny-qwen) is not a hallbench training run (config.json has no backend.training_run)",
        )
    ]
    assert all(r.variant != "pretrained" for t in ("table2", "ablation_injection", "ablation_loss") for r in result.tables[t].rows)
    assert ("Tiny-Qwen3-VL", "pretrained", "Greedy") in [r.labels for r in result.tables["decoding"].rows]
    assert "## Runs not in the paper tables\n\n- `eval/pretrained_chair`: the evaluated model" in result.index.read_text()


def test_a_table_with_no_run_lists_how_to_produce_it(study):
    _, result = study
    loss = result.tables["ablation_loss"]
    assert [r.labels[1] for r in loss.rows] == ["Full", "w/o L_ctr", "w/o L_orth", "CE only"]
    assert all(c.missing for row in loss.cells for c in row)
    assert loss.missing[0].commands[0].startswith("hallbench train --model tiny-qwen --variant loss-full ")


# ---------------------------------------------------------------------------------------------
# Bootstrap: pinned numbers


def test_metric_recomputation_matches_pope_metrics_on_random_answers():
    rng = np.random.default_rng(7)
    labels = list(rng.choice(["yes", "no"], 200))
    parsed = list(rng.choice(["yes", "no", "unknown"], 200, p=[0.5, 0.4, 0.1]))
    records = [
        {"question_id": str(i), "split": "random", "label": a, "parsed": b} for i, (a, b) in enumerate(zip(labels, parsed, strict=True))
    ]
    table = sample_table(POPE_SPEC, records, "random", {})
    expected = pope_metrics(labels, parsed)
    for metric in POPE_SPEC.metrics:
        assert point(table, metric) == pytest.approx(100 * expected[metric.name]), metric


def test_bootstrap_ci_known_cases():
    accuracy = {"acc": Metric("acc", "correct")}
    seed = stable_seed(0, "test")
    perfect = SampleTable([str(i) for i in range(5)], {"correct": np.ones(5), "one": np.ones(5)})
    interval = bootstrap_ci(perfect, accuracy, n_resamples=1000, seed=seed)["acc"]
    assert (interval.low, interval.high) == (100.0, 100.0)
    # Two samples, one correct: resamples give 0, 50 or 100 (probabilities 1/4, 1/2, 1/4): the 95% interval is [0, 100].
    half = SampleTable(["a", "b"], {"correct": np.array([1.0, 0.0]), "one": np.ones(2)})
    got = bootstrap_ci(half, accuracy, n_resamples=1000, seed=seed)["acc"]
    assert (got.low, got.high) == (0.0, 100.0)
    # A pinned seeded case: 15 of 20 correct, 1,000 resamples, seed 0 (numpy's Generator stream is stable).
    table = SampleTable([str(i) for i in range(20)], {"correct": np.array([1.0] * 15 + [0.0] * 5), "one": np.ones(20)})
    got = bootstrap_ci(table, accuracy, n_resamples=1000, seed=stable_seed(0, "pinned"))["acc"]
    assert (got.low, got.high) == PINNED_CI
    again = bootstrap_ci(table, accuracy, n_resamples=1000, seed=stable_seed(0, "pinned"))["acc"]
    assert again == got
    other = bootstrap_ci(table, accuracy, n_resamples=1000, seed=stable_seed(1, "pinned"))["acc"]
    assert 50 <= other.low <= 60 and 90 <= other.high <= 95


PINNED_CI = (55.0, 90.0)


def test_undefined_resamples_are_left_out_of_the_interval():
    # CHAIRi with one caption that mentions objects and one that does not: a resample of only the
    # second has no mention (undefined), and must not count as 0.
    chair_i = {"chair_i": Metric("chair_i", "hall", "mentions")}
    table = SampleTable(["1", "2"], {"hall": np.array([1.0, 0.0]), "mentions": np.array([2.0, 0.0])})
    got = bootstrap_ci(table, chair_i, n_resamples=500, seed=stable_seed(0, "x"))["chair_i"]
    assert (got.low, got.high) == (50.0, 50.0)


def test_paired_test_pairs_by_id_and_detects_a_consistent_difference():
    acc = {"acc": Metric("acc", "correct")}
    ids = [str(i) for i in range(30)]
    base = SampleTable(ids, {"correct": np.array([1.0] * 15 + [0.0] * 15), "one": np.ones(30)})
    # The variant fixes 10 of base's errors; its records come in another order (pairing is by id, not position).
    variant_correct = np.array([1.0] * 25 + [0.0] * 5)
    variant = SampleTable(ids[::-1], {"correct": variant_correct[::-1].copy(), "one": np.ones(30)})
    result = paired_test(variant, base, acc, n_resamples=1000, seed=stable_seed(0, "p"))["acc"]
    assert result.delta == pytest.approx(100 * 10 / 30) and result.n_paired == 30
    # 10 discordant questions, all for the variant: the permutation p-value is about 2 / 2^10 (at least 1 / 10000),
    # the exact McNemar p-value is 2 * 0.5^10
    assert result.significant and result.low > 0 and 1 / 10000 <= result.p_value < 0.01
    assert result.mcnemar_p == pytest.approx(2 * 0.5**10)
    same = paired_test(base, base, acc, n_resamples=1000, seed=stable_seed(0, "p"))["acc"]
    assert same.delta == 0 and (same.low, same.high) == (0.0, 0.0) and not same.significant and same.p_value == 1.0
    assert same.mcnemar_p == 1.0  # no discordant pair
    # Only shared ids are paired.
    partial = paired_test(variant.subset(ids[:10]), base, acc, n_resamples=100, seed=stable_seed(0, "p"))["acc"]
    assert partial.n_paired == 10


def test_two_presets_of_one_configuration_get_the_same_intervals(tmp_path):
    # +M+A and All-layer ours are one method configuration; with the same answers their cells must
    # match, interval and test included (the seeds come from the run's identity, not the row label).
    runs = tmp_path / "runs"
    paths = {v: training_run(runs / "train", v) for v in ("base", "ma", "abl-all-ours")}
    answers = {"random": yes_no(10, 10, wrong_yes=3, wrong_no=2)}
    eval_pope(runs / "base", {"random": yes_no(10, 10, wrong_yes=5, wrong_no=5)}, training=paths["base"], variant="base")
    for variant in ("ma", "abl-all-ours"):
        eval_pope(runs / variant, answers, training=paths[variant], variant=variant)
    frame = run_report(runs, tmp_path / "out", n_resamples=200).frame
    columns = ["value", "ci_low", "ci_high", "delta", "delta_low", "delta_high", "p_value"]
    twins = [frame[(frame.variant == v) & (frame.metric == "f1")][columns].to_numpy().tolist() for v in ("ma", "abl-all-ours")]
    assert twins[0] == twins[1] and twins[0][0][1] < twins[0][0][2]


# ---------------------------------------------------------------------------------------------
# Bad input


def test_corrupt_and_missing_summaries_are_reported_and_skipped(tmp_path):
    runs = tmp_path / "runs"
    paths = {v: training_run(runs / "train", v) for v in ("base", "ours")}
    eval_pope(runs / "good", {"random": yes_no(4, 4)}, training=paths["base"], variant="base")
    eval_pope(runs / "corrupt", {"random": yes_no(4, 4)}, training=paths["ours"], variant="ours")
    (runs / "corrupt" / "summary.json").write_text('{"bench": "pope", "splits": {', encoding="utf-8")
    eval_pope(runs / "unfinished", {"popular": yes_no(4, 4)}, training=paths["ours"], variant="ours")
    (runs / "unfinished" / "summary.json").unlink()
    eval_pope(runs / "wrong_shape", {"adversarial": yes_no(4, 4)}, training=paths["ours"], variant="ours")
    (runs / "wrong_shape" / "summary.json").write_text('{"bench": "pope", "metrics": {}}', encoding="utf-8")
    result = run_report(runs, tmp_path / "out", n_resamples=50)
    reasons = {s.path.name: s.reason for s in result.skipped}
    assert reasons == {
        "corrupt": "evaluation run: summary.json is corrupt (not JSON: Expecting property name enclosed in double quotes at line 1 column 30)",
        "unfinished": "evaluation run: no summary.json (the evaluation did not finish; re-run the same command to resume it)",
        "wrong_shape": "evaluation run: summary.json has no 'splits' object (expected POPE metrics per split)",
    }
    index = result.index.read_text()
    assert f"- `corrupt`: {reasons['corrupt']}" in index
    assert _cell(result, "table2", ("Tiny-Qwen3-VL", "Base"), "POPE random", "Acc").value == 100.0
    assert _cell(result, "table2", ("Tiny-Qwen3-VL", "Ours"), "POPE random", "Acc").missing
    cli = CliRunner().invoke(app, ["report", "--runs", str(runs), "--out", str(tmp_path / "cli"), "--resamples", "20"])
    assert cli.exit_code == 0, cli.output
    assert "skipped" in cli.output and "corrupt" in cli.output and "no summary.json" in cli.output


def test_two_runs_claiming_one_cell_is_an_error_unless_prefer_newest(tmp_path):
    runs = tmp_path / "runs"
    base = training_run(runs / "train", "base")
    eval_pope(runs / "a", {"random": yes_no(4, 4)}, training=base, variant="base", created="2026-01-02T00:00:00+00:00")
    eval_pope(runs / "b", {"random": yes_no(4, 4, wrong_no=4)}, training=base, variant="base", created="2026-01-03T00:00:00+00:00")
    with pytest.raises(HallbenchError) as err:
        run_report(runs, tmp_path / "out", n_resamples=10)
    message = str(err.value)
    assert str(runs / "a") in message and str(runs / "b") in message and "Tiny-Qwen3-VL / base / pope random / greedy" in message
    result = run_report(runs, tmp_path / "out", n_resamples=10, prefer="newest")
    assert _cell(result, "table2", ("Tiny-Qwen3-VL", "Base"), "POPE random", "Acc").value == 50.0  # b, the newer
    assert [w.path.name for w in result.warnings if "newer run" in w.reason] == ["a"]
    cli = CliRunner().invoke(app, ["report", "--runs", str(runs), "--out", str(tmp_path / "cli"), "--resamples", "10"])
    assert cli.exit_code == 1 and "error:" in cli.output and "two runs claim the same cell" in cli.output


def test_predictions_that_do_not_reproduce_the_summary_give_no_ci(tmp_path):
    runs = tmp_path / "runs"
    base = training_run(runs / "train", "base")
    folder = eval_pope(runs / "e", {"random": yes_no(4, 4)}, training=base, variant="base")
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["parsed"] = "no"  # edited after scoring
    (folder / "predictions.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    result = run_report(runs, tmp_path / "out", n_resamples=10)
    cell = _cell(result, "table2", ("Tiny-Qwen3-VL", "Base"), "POPE random", "Acc")
    assert cell.value == 100.0 and cell.ci_low is None
    assert "predictions.jsonl gives accuracy = 87.5000 on random, summary.json says 100.0" in result.warnings[0].reason
    assert (
        "| Tiny-Qwen3-VL | Base | **100.0** |" in (result.out / "table2.md").read_text()
        or "| Tiny-Qwen3-VL | Base | 100.0 |" in (result.out / "table2.md").read_text()
    )


def test_a_broken_training_log_line_is_skipped_with_a_warning(tmp_path):
    runs = tmp_path / "runs"
    folder = training_run(runs, "ours", log=train_log("ours", 5))
    with (folder / "train_log.jsonl").open("a") as handle:
        handle.write('{"step": 6, "ce": 0.')  # cut by a crash
    result = run_report(runs, tmp_path / "out", n_resamples=0)
    assert (tmp_path / "out" / "train_Tiny-Qwen3-VL_Ours.png").stat().st_size > 10_000
    assert any("line 6: not JSON" in w.reason for w in result.warnings)


# ---------------------------------------------------------------------------------------------
# Snapshots, LaTeX, plots, provenance


def _normalise(text: str, runs: Path) -> str:
    return text.replace(str(runs.resolve()), "<RUNS>").replace(str(runs), "<RUNS>")


@pytest.mark.parametrize("name", ["table2.md", "table2.tex", "decoding.md", "pope_detail.tex"])
def test_snapshot(study, name):
    runs, result = study
    got = _normalise((result.out / name).read_text(encoding="utf-8"), runs)
    path = SNAPSHOTS / name
    if os.environ.get("HALLBENCH_UPDATE_SNAPSHOTS"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got, encoding="utf-8")
    assert got == path.read_text(encoding="utf-8")


def _tex_body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("%")]


def _check_latex(text: str, n_columns: int) -> None:
    body = _tex_body(text)
    joined = "\n".join(body)
    assert body[0].startswith(r"\begin{tabular}{") and body[-1] == r"\end{tabular}"
    assert body[1] == r"\toprule" and r"\midrule" in body and body[-2] == r"\bottomrule"
    depth = 0
    for char in joined.replace(r"\{", "").replace(r"\}", ""):
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0
    assert joined.isascii(), "non-ASCII characters outside comments (±, –, † must be LaTeX commands)"
    assert re.search(r"(?<!\\)[_%]", joined) is None, "unescaped _ or %"
    rows = [line for line in body[2:-2] if line.endswith(r"\\") and not line.startswith(r"\multicolumn")]
    for line in rows:
        if line == r"\midrule":
            continue
        assert len(re.findall(r"(?<!\\)&", line)) == n_columns - 1, line
    assert "±" not in joined and (r"$\pm$" in joined or "--" in joined)


def test_every_tex_file_is_a_well_formed_booktabs_tabular(study):
    _, result = study
    for name, table in result.tables.items():
        text = (result.out / f"{name}.tex").read_text(encoding="utf-8")
        _check_latex(text, len(table.index_names) + len(table.columns))
    assert r"\bfseries 100.0 $\pm$ 0.0$^{\dagger}$" in (result.out / "table2.tex").read_text()


def test_latex_escapes_names_with_special_characters(tmp_path):
    runs = tmp_path / "runs"
    model = {"name": "odd", "display_name": "M_1 & 50% {x}", "family": "qwen3_vl", "path": None}
    base = training_run(runs, "base", model=model)
    eval_pope(runs / "e", {"random": yes_no(4, 4)}, training=base, variant="base", model=model)
    loss = training_run(runs, "loss-no-ctr", model=model)
    eval_pope(runs / "f", {"random": yes_no(4, 4, wrong_no=1)}, training=loss, variant="loss-no-ctr", model=model)
    result = run_report(runs, tmp_path / "out", n_resamples=20)
    tex = (result.out / "table2.tex").read_text()
    _check_latex(tex, 2 + len(result.tables["table2"].columns))
    assert r"M\_1 \& 50\% \{x\} & Base & 100.0 $\pm$ 0.0 &" in tex
    loss_tex = (result.out / "ablation_loss.tex").read_text()
    _check_latex(loss_tex, 2 + len(result.tables["ablation_loss"].columns))
    assert r"w/o L\_ctr" in loss_tex
    assert "| M_1 & 50% {x} | w/o L_ctr |" in (result.out / "ablation_loss.md").read_text()


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed on this machine (no TeX distribution)")
def test_tex_compiles_with_pdflatex(study, tmp_path):
    _, result = study
    for name in result.tables:
        doc = tmp_path / f"{name}_doc.tex"
        doc.write_text(
            "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
            f"\\input{{{(result.out / f'{name}.tex').as_posix()}}}\n\\end{{document}}\n",
            encoding="utf-8",
        )
        run = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stdout[-2000:]


def test_pngs_exist_and_carry_their_provenance(study):
    _, result = study
    pngs = sorted(p.name for p in result.out.glob("*.png"))
    assert pngs == [
        "pope_f1_yes_ratio.png",
        "train_Tiny-Qwen3-VL_+M+A.png",
        "train_Tiny-Qwen3-VL_+M.png",
        "train_Tiny-Qwen3-VL_All-layer-add.png",
        "train_Tiny-Qwen3-VL_Base.png",
        "train_Tiny-Qwen3-VL_Ours.png",
    ]
    # One 400-pixel panel per loss term the variant uses: only Ours (of these) adds L_orth and L_ctr to CE.
    panels = {"pope_f1_yes_ratio.png": 3, "train_Tiny-Qwen3-VL_Base.png": 1, "train_Tiny-Qwen3-VL_+M.png": 1,
              "train_Tiny-Qwen3-VL_+M+A.png": 1, "train_Tiny-Qwen3-VL_Ours.png": 3, "train_Tiny-Qwen3-VL_All-layer-add.png": 1}  # fmt: skip
    for name in pngs:
        path = result.out / name
        assert path.stat().st_size > 8_000
        with Image.open(path) as image:
            assert image.size[0] == 400 * panels[name], name
            assert "eval/" in image.info["Description"] or "training run train/" in image.info["Description"]
    index = result.index.read_text()
    for name in pngs:
        assert f"]({name})" in index


def test_every_file_ends_with_its_provenance(study):
    _, result = study
    for name in result.tables:
        md = (result.out / f"{name}.md").read_text()
        tex = (result.out / f"{name}.tex").read_text()
        assert "## Provenance" in md and "% Provenance:" in tex
        if result.tables[name].runs:
            assert "git 0123456789ab, 2026-01-02T00:00:00+00:00" in md.split("## Provenance")[1]
    assert (
        "- `eval/base_pope`: pope greedy, git 0123456789ab, 2026-01-02T00:00:00+00:00; model from training run"
        in (result.out / "table2.md").read_text()
    )
    index = result.index.read_text()
    for name in result.tables:
        assert f"[{name}.md]({name}.md)" in index and f"[{name}.tex]({name}.tex)" in index


def test_report_is_deterministic_and_independent_of_the_folder_location(study, tmp_path):
    runs, result = study
    moved = tmp_path / "elsewhere" / "runs"
    shutil.copytree(runs, moved)
    again = run_report(moved, tmp_path / "again")
    # Same numbers, CIs and marks wherever the folder lies (the bootstrap seeds hash the cell, not the path).
    # Only the provenance may differ: the copied configs still name the original training runs.
    for name in ("table2.md", "decoding.md", "pope_detail.md"):
        first = _normalise((result.out / name).read_text(), runs).split("## Provenance")[0]
        second = _normalise(_normalise((again.out / name).read_text(), moved), runs).split("## Provenance")[0]
        assert first == second, name
    for name in ("table2.tex", "ablation_injection.tex"):
        assert _tex_body((result.out / name).read_text()) == _tex_body((again.out / name).read_text())
    assert (result.out / "results.csv").read_text() == (again.out / "results.csv").read_text()


def test_cli_report_writes_everything(study, tmp_path):
    runs, _ = study
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["report", "--runs", str(runs), "--out", str(out), "--resamples", "50", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "table2: 20 of 40 cells filled" in result.output
    assert f"wrote 18 files to {out}" in result.output.replace("\n", "")
    names = {p.name for p in out.iterdir()}
    for table in ("table2", "ablation_injection", "ablation_loss", "decoding", "pope_detail"):
        assert {f"{table}.md", f"{table}.tex"} <= names
    assert {"index.md", "results.csv", "pope_f1_yes_ratio.png"} <= names
    assert "Bootstrap: 50 resamples, seed 3." in (out / "index.md").read_text()
    bad = CliRunner().invoke(app, ["report", "--runs", str(tmp_path / "nope"), "--out", str(out)])
    assert bad.exit_code == 1 and "is not a folder" in bad.output


def test_a_failed_rewrite_keeps_the_previous_files_and_leaves_no_debris(study, tmp_path, monkeypatch):
    """A full disk (or a kill) while the report is rewritten must not destroy the last good copy."""
    import errno

    runs, _ = study
    first = run_report(runs, tmp_path / "report", n_resamples=20)
    before = {p.name: p.read_bytes() for p in first.out.iterdir()}

    def disk_full(self, path, *args, **kwargs):
        Path(path).write_text("half a fi")  # what a full disk leaves behind
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_report(runs, tmp_path / "report", n_resamples=20)
    after = {p.name: p.read_bytes() for p in first.out.iterdir()}
    assert after["results.csv"] == before["results.csv"]  # the previous good copy survives
    assert sorted(after) == sorted(before)  # no temporary file left behind


def test_resampling_images_widens_the_interval_when_an_images_answers_go_together():
    # 20 images x 6 questions; an image is answered all right or all wrong (as a misread image is).
    ids = [f"q{i}" for i in range(120)]
    correct = np.repeat([1.0, 0.0] * 10, 6)
    acc = {"acc": Metric("acc", "correct")}
    by_question = SampleTable(ids, {"correct": correct, "one": np.ones(120)})
    by_image = SampleTable(ids, {"correct": correct, "one": np.ones(120)}, groups=[f"img{i // 6}" for i in range(120)])
    narrow = bootstrap_ci(by_question, acc, n_resamples=2000, seed=stable_seed(0, "w"))["acc"]
    wide = bootstrap_ci(by_image, acc, n_resamples=2000, seed=stable_seed(0, "w"))["acc"]
    # binomial standard errors: sqrt(.25/120) = 4.6 points over questions, sqrt(.25/20) = 11.2 over images
    assert 15 < narrow.high - narrow.low < 21 and 39 < wide.high - wide.low < 49
    assert by_image.n_groups == 20 and by_image.group_sums(["correct"]).ravel().tolist() == [6.0, 0.0] * 10


def test_the_permutation_test_keeps_its_level_and_holm_corrects_a_family():
    from hallbench.report.bootstrap import holm

    rng = np.random.default_rng(1)
    acc = {"acc": Metric("acc", "correct")}
    ids = [str(i) for i in range(200)]
    rejections = 0
    for trial in range(40):  # two runs of one model: exchangeable, so p < 0.05 about 5% of the time
        a = SampleTable(
            ids, {"correct": (rng.random(200) < 0.7).astype(float), "one": np.ones(200)}, groups=[f"g{i // 4}" for i in range(200)]
        )
        b = SampleTable(ids, {"correct": (rng.random(200) < 0.7).astype(float), "one": np.ones(200)}, groups=a.groups)
        rejections += paired_test(a, b, acc, n_resamples=200, seed=stable_seed(trial, "null"))["acc"].significant
    assert rejections <= 6  # 40 trials at 5%: P(more than 6) < 2%
    # Holm by hand: sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def test_report_and_its_help_import_no_torch(tmp_path):
    # The report only reads files: it must start fast and run where torch is broken or absent.
    runs = tmp_path / "runs"
    paths = {v: training_run(runs / "train", v, log=train_log(v)) for v in ("base", "ours")}
    for v in ("base", "ours"):
        eval_pope(runs / v, {"random": yes_no(4, 4)}, training=paths[v], variant=v)
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom hallbench.cli import app\n"
        f"r = CliRunner().invoke(app, ['report', '--help'])\nassert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(app, ['report', '--runs', {str(runs)!r}, '--out', {str(tmp_path / 'out')!r}, '--resamples', '20'])\n"
        "assert r.exit_code == 0, r.output\nprint(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "table2.md").is_file()


# ---------------------------------------------------------------------------------------------
# Several training seeds per cell


def test_several_seeds_share_a_cell_mean_sd_per_seed_rows_and_the_test_over_seeds(tmp_path):
    from scipy.stats import ttest_1samp

    runs = tmp_path / "runs"
    # POPE random, 20 questions: Base wrong on 4, 5, 6 (seeds 0, 1, 2) -> 80, 75, 70; Ours wrong on 2, 4, 3 -> 90, 80, 85.
    wrong = {"base": (4, 5, 6), "ours": (2, 4, 3)}
    for variant, counts in wrong.items():
        for seed, n_wrong in enumerate(counts):
            training = training_run(runs / "train", variant, log=train_log(variant), seed=seed)
            answers = {"random": yes_no(10, 10, wrong_yes=n_wrong // 2, wrong_no=n_wrong - n_wrong // 2)}
            eval_pope(runs / "eval" / f"{variant}_seed{seed}", answers, training=training, variant=variant)
    result = run_report(runs, tmp_path / "report", n_resamples=200)
    frame = result.frame
    ours = _row(frame, variant="ours", split="random", metric="accuracy", per_seed=False)
    assert ours.value == pytest.approx(85.0) and ours.n_seeds == 3 and ours.seed_sd == pytest.approx(5.0)
    per_seed = frame[(frame.variant == "ours") & (frame.split == "random") & (frame.metric == "accuracy") & frame.per_seed]
    assert per_seed.seed.tolist() == [0, 1, 2] and per_seed.value.tolist() == pytest.approx([90.0, 80.0, 85.0])
    # Differences from Base by seed: 10, 5, 15 -> t = 10 / (5 / sqrt 3); with 2 degrees of freedom p = 1 - t / sqrt(t^2 + 2).
    t = 10 / (5 / 3**0.5)
    assert ours.seed_t_p == pytest.approx(1 - t / (t**2 + 2) ** 0.5) == pytest.approx(ttest_1samp([10, 5, 15], 0).pvalue)
    # The paired test pools the three seed pairs: 60 pairs of answers, the mean difference 10 points.
    assert ours.n_paired == 60 and ours.delta == pytest.approx(10.0)
    assert ours.base_run.count(";") == 2 and ours.run.count(";") == 2
    # The interval is the bootstrap of the mean over seeds: it contains the mean and lies within the per-seed extremes' reach.
    assert ours.ci_low < 85.0 < ours.ci_high
    cell = _cell(result, "table2", ("Tiny-Qwen3-VL", "Ours"), "POPE random", "Acc")
    assert (cell.value, cell.n_seeds, cell.seed_sd) == (pytest.approx(85.0), 3, pytest.approx(5.0))
    table2 = (tmp_path / "report" / "table2.md").read_text()
    assert "| Tiny-Qwen3-VL | Ours | **85.0 ± 5.0**" in table2 and "Cells over 3 training seeds" in table2
    assert (tmp_path / "report" / "seeds.png").is_file()
    # A fourth Ours run of an existing seed conflicts with it (and names the seed).
    again = training_run(runs / "train2", "ours", log=train_log("ours"), seed=1)
    eval_pope(runs / "eval" / "ours_seed1_again", {"random": yes_no(10, 10)}, training=again, variant="ours")
    with pytest.raises(HallbenchError, match=r"\(Tiny-Qwen3-VL / ours / pope random / greedy / seed 1\)"):
        run_report(runs, tmp_path / "report2")


def test_a_several_seed_cell_whose_seeds_base_lacks_is_not_tested(tmp_path):
    runs = tmp_path / "runs"
    base = training_run(runs / "train", "base", log=train_log("base"), seed=0)
    eval_pope(runs / "eval" / "base_seed0", {"random": yes_no(10, 10, wrong_no=5)}, training=base, variant="base")
    for seed in (0, 1):
        ours = training_run(runs / "train", "ours", log=train_log("ours"), seed=seed)
        eval_pope(runs / "eval" / f"ours_seed{seed}", {"random": yes_no(10, 10)}, training=ours, variant="ours")
    result = run_report(runs, tmp_path / "report", n_resamples=50)
    cell = _row(result.frame, variant="ours", split="random", metric="accuracy", per_seed=False)
    assert pd_isna(cell.p_value) and pd_isna(cell.base_run)  # not the seed-0 test shown as the cell's
    seed0 = _row(result.frame, variant="ours", split="random", metric="accuracy", per_seed=True, seed=0)
    assert seed0.delta == pytest.approx(25.0)  # the seed that has a Base is still compared, on its own row
    assert any("seed(s) 1 have no Base run of the same seed" in w.reason for w in result.warnings)


def test_one_seed_of_a_variant_pairs_with_the_same_seed_of_base(tmp_path):
    runs = tmp_path / "runs"
    for seed, n_wrong in enumerate((4, 5, 6)):
        training = training_run(runs / "train", "base", log=train_log("base"), seed=seed)
        eval_pope(runs / "eval" / f"base_seed{seed}", {"random": yes_no(10, 10, wrong_no=n_wrong)}, training=training, variant="base")
    ours = training_run(runs / "train", "ours", log=train_log("ours"), seed=1)
    eval_pope(runs / "eval" / "ours_seed1", {"random": yes_no(10, 10)}, training=ours, variant="ours")
    frame = run_report(runs, tmp_path / "report", n_resamples=100).frame
    row = _row(frame, variant="ours", split="random", metric="accuracy", per_seed=False)
    assert row.n_seeds == 1 and row.seed == 1 and row.base_run == "eval/base_seed1"
    assert row.delta == pytest.approx(100.0 - 75.0) and row.n_paired == 20


# ---------------------------------------------------------------------------------------------
# Re-scored runs: POPE beside RePOPE


def rescore_pope(run: Path, name: str, answers: dict, scoring: dict, n_removed: int = 0) -> Path:
    """``run/scores/<name>/`` as ``hallbench eval`` writes it when only scoring options change."""
    folder = run / "scores" / name
    records = pope_records(answers)
    _jsonl(folder / "predictions.jsonl", records)
    summary = {"bench": "pope", "scoring": scoring, "n_samples": len(records), "n_errors": 0, "errors": [], **aggregate_pope(records)}
    if n_removed:
        summary["n_removed"] = n_removed
    _dump(folder / "summary.json", summary)
    _dump(folder / "scoring.json", {"scoring": scoring, "run_scoring": {"parser": "hallbench", "labels": None}, "run": str(run)})
    return folder


def test_pope_and_repope_side_by_side_from_the_runs_scores_folders(tmp_path):
    runs = tmp_path / "runs"
    train = runs / "train"
    paths = {v: training_run(train, v, log=train_log(v)) for v in ("base", "ma", "ours")}
    repope = {"parser": "hallbench", "labels": "/data/repope"}
    # The original labels: 10 yes + 10 no. Base answers yes to all (Acc 50), Ours all right (Acc 100).
    base = eval_pope(runs / "eval" / "base", {"random": yes_no(10, 10, wrong_no=10)}, training=paths["base"], variant="base")
    ours = eval_pope(runs / "eval" / "ours", {"random": yes_no(10, 10)}, training=paths["ours"], variant="ours")
    ma = eval_pope(runs / "eval" / "ma", {"random": yes_no(10, 10, wrong_yes=1)}, training=paths["ma"], variant="ma")
    # RePOPE: two yes-labelled questions removed (ambiguous), so 8 yes + 10 no; one "no" label was wrong for Ours' answer.
    rescore_pope(base, "labels-repope", {"random": yes_no(8, 10, wrong_no=10)}, repope, n_removed=2)
    rescore_pope(ours, "labels-repope", {"random": yes_no(8, 10, wrong_no=1)}, repope, n_removed=2)
    rescore_pope(ma, "parser-official", {"random": yes_no(10, 10, wrong_yes=2)}, {"parser": "official", "labels": None})
    result = run_report(runs, tmp_path / "report", n_resamples=200)
    table = result.tables["pope_scorings"]
    assert [(c.group, c.label) for c in table.columns] == [
        (g, m) for g in ("POPE random", "repope random", "parser official random") for m in ("Acc", "F1")
    ]
    assert [r.labels for r in table.rows] == [("Tiny-Qwen3-VL", v, "Greedy") for v in ("Base", "+M+A", "Ours")]
    matrix = table.matrix()
    assert matrix.loc[("Tiny-Qwen3-VL", "Base", "Greedy"), ("POPE random", "Acc")] == pytest.approx(50.0)
    # Base under RePOPE: 8 of 18 right; F1 = 2 * 8 / (18 answered yes + 8 labelled yes).
    assert matrix.loc[("Tiny-Qwen3-VL", "Base", "Greedy"), ("repope random", "Acc")] == pytest.approx(100 * 8 / 18)
    assert matrix.loc[("Tiny-Qwen3-VL", "Base", "Greedy"), ("repope random", "F1")] == pytest.approx(100 * 16 / 26)
    # Ours under RePOPE: 17 of 18; F1 = 2 * 8 / (9 + 8).
    assert matrix.loc[("Tiny-Qwen3-VL", "Ours", "Greedy"), ("repope random", "Acc")] == pytest.approx(100 * 17 / 18)
    assert matrix.loc[("Tiny-Qwen3-VL", "Ours", "Greedy"), ("repope random", "F1")] == pytest.approx(100 * 16 / 17)
    assert matrix.loc[("Tiny-Qwen3-VL", "+M+A", "Greedy"), ("parser official random", "Acc")] == pytest.approx(90.0)
    # Each re-scoring is tested against Base under the same scoring.
    row = _row(result.frame, variant="ours", split="random", metric="accuracy", scoring="labels-repope")
    assert row.base_run == "eval/base/scores/labels-repope" and row.n_paired == 18
    assert row.delta == pytest.approx(100 * 9 / 18)
    assert any(
        "repope: the same answers scored with labels /data/repope" in n and "2 questions of each run removed" in n for n in table.notes
    )
    # +M+A has no RePOPE scoring: its cells are missing, with the command that re-scores its run.
    missing = [m for m in table.missing if m.row.variant == "ma"]
    assert [m.scoring for m in missing] == ["labels-repope"]
    # (its own evaluation command, into its own folder, so that nothing is generated again)
    # (every recorded setting that is not the default, here the answer length, or the run would refuse it)
    assert missing[0].commands == [
        f"hallbench eval --bench pope --model {paths['ma']} --data /data/pope --max-new-tokens 64 --labels /data/repope --out {ma}"
    ]
    md = (tmp_path / "report" / "pope_scorings.md").read_text()
    assert "| Tiny-Qwen3-VL | Ours | Greedy |" in md and "POPE random scored as repope" in md
    # The paper tables still show the runs' own scoring only.
    assert result.tables["table2"].matrix().loc[("Tiny-Qwen3-VL", "Ours"), ("POPE random", "Acc")] == pytest.approx(100.0)


def test_no_rescoring_no_scorings_table(study):
    _, result = study
    assert "pope_scorings" not in result.tables and not (result.out / "pope_scorings.md").exists()
