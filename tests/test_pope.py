"""POPE: answer parsing (both rules), hand-computed metrics, aggregation, the join, and the split builder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hallbench.data.formats import read_pope_questions
from hallbench.data.pope_build import SPLITS, PopeBuildConfig, build_pope
from hallbench.data.shapes import THEMES, ShapesConfig, generate_shapes
from hallbench.errors import DataFormatError, HallbenchError
from hallbench.eval.pope import POPE_METRIC_NAMES, POPE_METRICS, aggregate_pope, parse_answer, pope_metrics

# ---------------------------------------------------------------------------------------------
# parse_answer

# (answer text, hallbench rule, official rule)
ANSWERS = [
    ("Yes", "yes", "yes"),
    ("yes.", "yes", "yes"),
    ("YES", "yes", "yes"),
    ("No", "no", "no"),
    ("no", "no", "no"),
    ("NO.", "no", "yes"),  # official is case-sensitive: "NO" is not in ["No", "not", "no"]
    ("No, there is not.", "no", "no"),
    ("Yes, there is a dog.", "yes", "yes"),
    ("There is no dog in the image.", "no", "no"),
    ("There isn't a dog.", "no", "yes"),  # official ignores n't
    ("There isn\u2019t a dog.", "no", "yes"),  # curly apostrophe
    ("I don't see a dog.", "no", "yes"),
    ("I cannot see a dog.", "no", "yes"),
    ("Not really.", "no", "yes"),  # official: "Not" (capital) is not a negation word
    ("None.", "no", "yes"),
    ("Never", "no", "yes"),
    ("Nope", "no", "yes"),  # hallbench adds "nope" to the negation words
    ("Yes\nNo", "yes", "yes"),  # hallbench: first line wins; official: one word "Yes\nNo"
    ("No\nthere is a dog", "no", "yes"),  # official: the word is "No\nthere", not "No"
    ("No!", "no", "yes"),  # official only strips "," and cuts at "."
    ("**No**", "no", "yes"),
    ("\n\n  - yes, there is.", "yes", "yes"),
    (" no", "no", "no"),  # official: " no".split(" ") == ["", "no"]
    ("", "unknown", "yes"),  # official: unparseable counts as yes
    ("   ", "unknown", "yes"),
    ("The image shows a dog.", "unknown", "yes"),
    ("There is a dog. There is no cat.", "unknown", "yes"),  # only the first sentence counts
    ("Yes, but not a cat.", "yes", "no"),  # hallbench: a leading yes wins; official: any negation
    ("There is a dog, not a cat.", "no", "no"),  # without the asked object the negation decides (see OBJECT_ANSWERS)
    ("I think yes.", "yes", "yes"),
    ("Yes. No.", "yes", "yes"),
    ("yesterday", "unknown", "yes"),  # whole words only
    ("nothing", "unknown", "yes"),
    ("Unknown", "unknown", "yes"),
    ("nobody knows", "unknown", "yes"),
]


@pytest.mark.parametrize(("text", "expected", "_official"), ANSWERS, ids=[repr(a[0]) for a in ANSWERS])
def test_parse_answer_hallbench_rule(text, expected, _official):
    assert parse_answer(text) == expected
    assert parse_answer(text, rule="hallbench") == expected


@pytest.mark.parametrize(("text", "_hallbench", "expected"), ANSWERS, ids=[repr(a[0]) for a in ANSWERS])
def test_parse_answer_official_rule(text, _hallbench, expected):
    assert parse_answer(text, rule="official") == expected


# Hedges and refusals are unknown, not no; an explicit leading answer word still decides.
HEDGES = [
    ("I don't know.", "unknown"),
    ("I do not know if there is one.", "unknown"),
    ("Not sure.", "unknown"),
    ("I'm not certain.", "unknown"),
    ("I cannot tell.", "unknown"),
    ("I can't determine whether there is a dog.", "unknown"),
    ("It's hard to say.", "unknown"),
    ("It is unclear from the image.", "unknown"),
    ("I am unable to answer that.", "unknown"),
    ("Maybe.", "unknown"),
    ("Possibly not.", "unknown"),
    ("There might be a dog.", "unknown"),
    ("There may or may not be a dog.", "unknown"),
    ("No, I'm not sure.", "no"),  # a leading no is the answer
    ("Yes, but I'm not certain.", "yes"),
    ("I cannot see a dog.", "no"),  # not seeing the object is an answer, not a hedge
]


@pytest.mark.parametrize(("text", "expected"), HEDGES, ids=[h[0] for h in HEDGES])
def test_hedges_and_refusals_are_unknown(text, expected):
    assert parse_answer(text, asked="dog") == expected
    assert parse_answer(text, rule="official") in ("yes", "no")  # the official rule never says unknown


# The answer is read for the asked object: affirming it while negating another is yes.
OBJECT_ANSWERS = [
    ("dog", "There is a dog, not a cat.", "yes"),
    ("cat", "There is a dog, not a cat.", "no"),
    ("dog", "I see two dogs.", "yes"),  # the plural names the object too
    ("dog", "There's no cat, only a dog.", "yes"),
    ("dog", "Not a dog but a cat.", "no"),
    ("dog", "The dog is not visible.", "no"),
    ("dog", "There is a dog bed, but no dog.", "no"),  # a clause that names the object holds a negation
    ("dog", "The image shows a cat.", "unknown"),  # says nothing about the dog
    ("dog", "A hotdog.", "unknown"),  # whole words only
    ("dog", "Is there a dog in the image? Yes, there is.", "yes"),  # the echoed question is skipped
    ("dining table", "There is a dining table but no chair.", "yes"),
    ("dining table", "I see chairs, no dining tables.", "no"),
]


@pytest.mark.parametrize(("asked", "text", "expected"), OBJECT_ANSWERS, ids=[f"{a}: {t}" for a, t, _ in OBJECT_ANSWERS])
def test_an_answer_is_read_for_the_asked_object(asked, text, expected):
    assert parse_answer(text, asked=asked) == expected


def test_questions_use_a_or_an_and_name_their_object():
    from hallbench.eval.pope import asked_object, existence_question

    assert [existence_question(n) for n in ("apple", "dog", "umbrella", "hair drier")] == [
        "Is there an apple in the image?", "Is there a dog in the image?", "Is there an umbrella in the image?",
        "Is there a hair drier in the image?",
    ]  # fmt: skip
    assert asked_object("Is there a dining table in the imange?") == "dining table"  # the official files' typo
    assert asked_object("Is there an apple in the image?") == "apple"
    assert asked_object("What is this?") is None


def test_official_rule_counts_every_unparseable_answer_as_yes():
    for text in ["", " ", "The image shows a dog.", "I am not sure", "Unknown", "NO", "n/a"]:
        got = parse_answer(text, rule="official")
        # "I am not sure" contains the word "not", so it is the one "no" here.
        assert got == ("no" if text == "I am not sure" else "yes"), text
    assert "unknown" not in {parse_answer(t, rule="official") for t, _, _ in ANSWERS}


def test_parse_answer_rejects_unknown_rule_and_non_strings():
    with pytest.raises(HallbenchError, match="unknown POPE parsing rule 'lmms'"):
        parse_answer("yes", rule="lmms")
    with pytest.raises(TypeError, match="NoneType"):
        parse_answer(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# pope_metrics


def test_metrics_hand_computed_with_unknowns():
    labels = ["yes", "yes", "yes", "yes", "yes", "no", "no", "no", "no", "no"]
    preds = ["yes", "yes", "yes", "no", "unknown", "yes", "no", "no", "no", "unknown"]
    # tp = 3 (0-2), fn = 1 (3), unknown on a yes label (4), fp = 1 (5), tn = 3 (6-8), unknown on a no label (9)
    # accuracy = (3 + 3) / 10 = 0.6
    # precision = 3 / (3 + 1) = 0.75
    # recall = 3 / 5 yes labels = 0.6 (the unknown on a yes label is a missed positive)
    # f1 = 2 * 0.75 * 0.6 / (0.75 + 0.6) = 0.9 / 1.35 = 2/3
    # yes_ratio = 4 yes predictions / 10 = 0.4, while the labels' yes share is 0.5
    # unknown_rate = 2 / 10 = 0.2
    m = pope_metrics(labels, preds)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n_unknown"], m["n"]) == (3, 1, 3, 1, 2, 10)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(0.4)
    assert m["label_yes_ratio"] == pytest.approx(0.5)
    assert m["unknown_rate"] == pytest.approx(0.2)


def test_yes_ratio_comes_from_predictions_not_labels():
    labels = ["yes", "yes", "no", "no", "no", "no", "no", "no"]
    preds = ["yes"] * 8
    # tp = 2, fp = 6; yes_ratio = 8/8 = 1.0 (predictions) while labels' yes share = 2/8 = 0.25
    # precision = 2/8 = 0.25; recall = 2/2 = 1.0; f1 = 2 * 0.25 * 1 / 1.25 = 0.4; accuracy = 2/8 = 0.25
    m = pope_metrics(labels, preds)
    assert m["yes_ratio"] == 1.0
    assert m["label_yes_ratio"] == 0.25
    assert m["precision"] == pytest.approx(0.25)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(0.4)
    assert m["accuracy"] == pytest.approx(0.25)


def test_metrics_all_no_predictions_guard_precision_and_f1():
    # tp = fp = 0: precision = 0/0 -> 0.0; recall = 0/2 = 0.0; f1 = 0/0 -> 0.0; accuracy = 2 tn / 4 = 0.5
    m = pope_metrics(["yes", "no", "yes", "no"], ["no", "no", "no", "no"])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.5, 0.0)
    # No yes label and no yes answer: precision and recall are 0/0 -> 0.0, accuracy = 2/2 = 1.0
    m = pope_metrics(["no", "no"], ["no", "no"])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.0, 0.0, 0.0, 1.0)


def test_metrics_empty_input_is_all_zero_with_n_zero():
    m = pope_metrics([], [])
    assert m["n"] == 0
    assert all(m[k] == 0.0 for k in POPE_METRIC_NAMES)


def test_metrics_perfect_answers():
    m = pope_metrics(["yes", "no"], ["yes", "no"])
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"], m["unknown_rate"]) == (1.0, 1.0, 1.0, 1.0, 0.5, 0.0)


def test_metrics_reject_bad_input():
    with pytest.raises(HallbenchError, match="2 predictions for 1 labels"):
        pope_metrics(["yes"], ["yes", "no"])
    with pytest.raises(HallbenchError, match=r"labels\[1\]: expected 'yes' or 'no', found 'maybe'"):
        pope_metrics(["yes", "maybe"], ["yes", "no"])
    with pytest.raises(HallbenchError, match=r"predictions\[0\]: expected 'yes', 'no' or 'unknown', found 'Yes'"):
        pope_metrics(["yes"], ["Yes"])


def test_metric_table_directions():
    assert POPE_METRIC_NAMES == ("accuracy", "precision", "recall", "f1", "yes_ratio", "unknown_rate")
    assert {m.name for m in POPE_METRICS if m.higher_is_better is True} == {"accuracy", "precision", "recall", "f1"}
    by_name = {m.name: m for m in POPE_METRICS}
    assert by_name["yes_ratio"].higher_is_better is None and by_name["unknown_rate"].higher_is_better is False
    assert all(m.description and m.empty == 0.0 for m in POPE_METRICS)  # every POPE ratio guards 0/0 as 0.0


# ---------------------------------------------------------------------------------------------
# aggregate_pope


def _records(split: str, labels: list[str], parsed: list[str], start: int = 1) -> list[dict]:
    return [
        {"question_id": start + i, "split": split, "label": lab, "parsed": p} for i, (lab, p) in enumerate(zip(labels, parsed, strict=True))
    ]


def test_aggregate_per_split_mean_and_pooled():
    records = _records("random", ["yes", "yes", "no", "no", "no", "no"], ["yes", "no", "no", "no", "no", "no"])
    records += _records("popular", ["yes", "yes", "no", "no"], ["yes", "yes", "yes", "unknown"])
    records.append({"question_id": 5, "split": "popular", "label": "no", "parsed": "yes", "error": "image not found"})
    records += [{"question_id": i, "split": "adversarial", "label": "yes", "error": "generation failed"} for i in (1, 2)]
    out = aggregate_pope(records)

    # random: tp 1, fn 1, tn 4 -> acc 5/6, precision 1/1, recall 1/2, f1 = 2*1*0.5/1.5 = 2/3, yes_ratio 1/6
    r = out["splits"]["random"]
    assert (r["tp"], r["fn"], r["tn"], r["fp"], r["n"], r["n_errors"]) == (1, 1, 4, 0, 6, 0)
    assert (r["accuracy"], r["precision"], r["recall"], r["f1"], r["yes_ratio"]) == pytest.approx((5 / 6, 1.0, 0.5, 2 / 3, 1 / 6))
    # popular (the error record is left out): tp 2, fp 1, unknown 1 -> acc 2/4, precision 2/3, recall 2/2,
    # f1 = 2*(2/3)*1/(5/3) = 0.8, yes_ratio 3/4, unknown_rate 1/4
    p = out["splits"]["popular"]
    assert (p["tp"], p["fp"], p["n_unknown"], p["n"], p["n_errors"]) == (2, 1, 1, 4, 1)
    assert (p["accuracy"], p["precision"], p["recall"], p["f1"], p["yes_ratio"], p["unknown_rate"]) == pytest.approx(
        (0.5, 2 / 3, 1.0, 0.8, 0.75, 0.25)
    )
    # adversarial: only errors -> reported with n = 0, left out of the mean
    a = out["splits"]["adversarial"]
    assert (a["n"], a["n_errors"]) == (0, 2)
    assert list(out["splits"]) == ["random", "popular", "adversarial"]
    assert out["mean_over"] == ["random", "popular"]
    # mean (unweighted over random, popular): acc (5/6 + 1/2)/2 = 2/3; precision (1 + 2/3)/2 = 5/6;
    # recall (0.5 + 1)/2 = 0.75; f1 (2/3 + 0.8)/2 = 11/15; yes_ratio (1/6 + 3/4)/2 = 11/24; unknown (0 + 1/4)/2 = 1/8
    assert out["mean"] == pytest.approx(
        {"accuracy": 2 / 3, "precision": 5 / 6, "recall": 0.75, "f1": 11 / 15, "yes_ratio": 11 / 24, "unknown_rate": 0.125}
    )
    # pooled over the 10 scored records: tp 3, fp 1, tn 4, fn 1, unknown 1 -> acc 7/10 (not the mean's 2/3),
    # precision 3/4, recall 3/4 yes labels, f1 0.75, yes_ratio 4/10, unknown 1/10; errors 3
    q = out["pooled"]
    assert (q["tp"], q["fp"], q["tn"], q["fn"], q["n_unknown"], q["n"], q["n_errors"]) == (3, 1, 4, 1, 1, 10, 3)
    assert (q["accuracy"], q["precision"], q["recall"], q["f1"], q["yes_ratio"], q["unknown_rate"]) == pytest.approx(
        (0.7, 0.75, 0.75, 0.75, 0.4, 0.1)
    )
    assert out["n_errors"] == 3


def test_aggregate_empty_and_bad_records():
    out = aggregate_pope([])
    assert out["splits"] == {} and out["mean_over"] == [] and out["pooled"]["n"] == 0
    assert all(v == 0.0 for v in out["mean"].values())
    with pytest.raises(
        HallbenchError, match=r"records\[1\]: expected one record per \(split, question_id\), found split 'random' question_id '1' again"
    ):
        aggregate_pope(_records("random", ["yes"], ["yes"]) + _records("random", ["no"], ["no"]))
    # The same id in two splits is fine: ids are unique within a split only.
    assert aggregate_pope(_records("random", ["yes"], ["yes"]) + _records("popular", ["no"], ["no"]))["pooled"]["n"] == 2
    with pytest.raises(HallbenchError, match=r"records\[0\]: .*missing \['parsed'\]"):
        aggregate_pope([{"question_id": 1, "split": "random", "label": "yes"}])
    with pytest.raises(HallbenchError, match=r"records\[0\] \(question_id 1\)\.label: expected 'yes' or 'no', found 'YES'"):
        aggregate_pope(_records("random", ["YES"], ["yes"]))
    with pytest.raises(HallbenchError, match=r"records\[1\] \(question_id 2\)\.parsed: expected 'yes', 'no' or 'unknown', found None"):
        aggregate_pope(_records("random", ["yes", "no"], ["yes", None]))


# ---------------------------------------------------------------------------------------------
# build_pope on hand-made COCO files


def _coco(tmp_path: Path, categories: list[tuple[int, str]], images: dict[int, list[str]], name: str = "instances.json") -> Path:
    """A minimal COCO instances file: ``images`` maps image id -> category names present."""
    ids = {n: i for i, n in categories}
    annotations = []
    for image_id, names in images.items():
        for n in names:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[n], "bbox": [0, 0, 1, 1]})
    data = {
        "images": [{"id": i, "file_name": f"img_{i:03d}.jpg"} for i in images],
        "categories": [{"id": i, "name": n} for i, n in categories],
        "annotations": annotations,
    }
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# Ids in reverse name order, so a tie broken by id would differ from one broken by name.
HAND_CATEGORIES = [(1, "hat"), (2, "goat"), (3, "fork"), (4, "egg"), (5, "dog"), (6, "car"), (7, "bear"), (8, "apple")]
# Images 10 and 11 have 3 objects (eligible with min_objects=3); the others only feed the statistics.
HAND_IMAGES = {
    10: ["apple", "bear", "car"],
    11: ["dog", "egg", "fork"],
    1: ["apple", "dog"],
    2: ["apple", "goat"],
    3: ["apple", "goat"],
    4: ["bear", "hat"],
    5: ["hat"],
    6: ["egg", "hat"],
    7: ["car", "goat"],
}
# Images per category: apple 4 (10,1,2,3); goat 3 (2,3,7); hat 3 (4,5,6); bear 2; car 2; dog 2; egg 2; fork 1.
# Co-occurrence (images with both): apple-bear 1, apple-car 1, apple-dog 1, apple-goat 2, bear-car 1, bear-hat 1,
# car-goat 1, dog-egg 1, dog-fork 1, egg-fork 1, egg-hat 1.
#
# Image 10 {apple, bear, car}, absent dog, egg, fork, goat, hat:
#   popular: goat 3, hat 3 (tie -> by name: goat, hat)                       -> goat, hat
#   adversarial: dog = 1 (apple) + 0 + 0 = 1; egg = 0; fork = 0;
#                goat = 2 (apple) + 0 + 1 (car) = 3; hat = 0 + 1 (bear) + 0 = 1 -> goat 3, then dog/hat tie -> dog
# Image 11 {dog, egg, fork}, absent apple, bear, car, goat, hat:
#   popular: apple 4, goat 3                                                  -> apple, goat
#   adversarial: apple = 1 (dog) + 0 + 0 = 1; bear = car = goat = 0; hat = 0 + 1 (egg) + 0 = 1 -> apple/hat tie -> apple, hat
EXPECTED_NEGATIVES = {
    "popular": {"img_010.jpg": ["goat", "hat"], "img_011.jpg": ["apple", "goat"]},
    "adversarial": {"img_010.jpg": ["goat", "dog"], "img_011.jpg": ["apple", "hat"]},
}


def _name(question: dict) -> str:
    text = question["text"]
    article = "an" if text.split()[3][0] in "aeiou" else "a"  # "an apple", "a goat", as the official files write
    assert text.startswith(f"Is there {article} ") and text.endswith(" in the image?"), text
    return text[len(f"Is there {article} ") : -len(" in the image?")]


def _read_split(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_build_hand_made_popular_and_adversarial(tmp_path):
    src = _coco(tmp_path, HAND_CATEGORIES, HAND_IMAGES)
    out = tmp_path / "pope"
    manifest = build_pope(src, out, PopeBuildConfig(n_images=2, per_image=2, min_objects=3, seed=0))
    splits = {split: _read_split(out, split) for split in SPLITS}
    for split, expected in EXPECTED_NEGATIVES.items():
        got: dict[str, list[str]] = {}
        for q in splits[split]:
            if q["label"] == "no":
                got.setdefault(q["image"], []).append(_name(q))
        assert got == expected, split
    present = {f"img_{i:03d}.jpg": set(names) for i, names in HAND_IMAGES.items()}
    for split, questions in splits.items():
        # Official layout: ids 1..n, images in id order, yes/no alternating, positives present and negatives absent.
        assert [q["question_id"] for q in questions] == list(range(1, 9))
        assert [q["image"] for q in questions] == ["img_010.jpg"] * 4 + ["img_011.jpg"] * 4
        assert [q["label"] for q in questions] == ["yes", "no"] * 4
        assert all((_name(q) in present[q["image"]]) == (q["label"] == "yes") for q in questions), split
        assert all(list(q) == ["question_id", "image", "text", "label"] for q in questions)
    # Positives are identical (same id, same text) in the three splits.
    positives = [[q for q in splits[s] if q["label"] == "yes"] for s in SPLITS]
    assert positives[0] == positives[1] == positives[2]
    assert manifest["stats"]["n_eligible"] == 2 and manifest["stats"]["n_images_total"] == 9
    assert all(manifest["stats"][s] == {"n_questions": 8, "n_yes": 4, "n_no": 4, "fallbacks": 0} for s in SPLITS)
    assert json.loads((out / "image_ids.json").read_text()) == [
        {"id": 10, "file_name": "img_010.jpg"},
        {"id": 11, "file_name": "img_011.jpg"},
    ]
    assert json.loads((out / "pope_build.json").read_text()) == manifest
    assert manifest["config"] == {"n_images": 2, "per_image": 2, "seed": 0, "min_objects": 3}


def test_build_output_reads_back_and_has_no_template_typo(tmp_path):
    src = _coco(tmp_path, HAND_CATEGORIES, HAND_IMAGES)
    build_pope(src, tmp_path / "pope", PopeBuildConfig(n_images=2, per_image=2, min_objects=3))
    for split in SPLITS:
        path = tmp_path / "pope" / f"{split}.jsonl"
        assert len(read_pope_questions(path)) == 8
        assert "imange" not in path.read_text()


def test_build_is_byte_identical_and_seed_dependent(tmp_path):
    src = _coco(tmp_path, HAND_CATEGORIES, HAND_IMAGES)
    cfg = PopeBuildConfig(n_images=None, per_image=2, min_objects=2, seed=3)
    build_pope(src, tmp_path / "a", cfg)
    build_pope(src, tmp_path / "b", cfg)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["adversarial.jsonl", "image_ids.json", "pope_build.json", "popular.jsonl", "random.jsonl"]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    manifest = json.loads((tmp_path / "a" / "pope_build.json").read_text())
    assert manifest["input"] == {"file": "instances.json", "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    others = [(tmp_path / "a" / "random.jsonl").read_bytes()]
    for seed in (4, 5, 6):
        build_pope(src, tmp_path / f"s{seed}", PopeBuildConfig(n_images=None, per_image=2, min_objects=2, seed=seed))
        others.append((tmp_path / f"s{seed}" / "random.jsonl").read_bytes())
    assert len(set(others)) > 1  # the random negatives do depend on the seed


def test_build_fallback_to_random(tmp_path):
    # Frequencies: apple, bear, car, dog 2 images each; egg and fig never appear.
    # Co-occurrence: apple-bear 2, car-dog 2, apple-car = apple-dog = bear-car = bear-dog = 1.
    # Image 1 {apple, bear}: popular car, dog (tie -> name); adversarial car = 1+1, dog = 1+1 -> car, dog.
    # Image 2 {car, dog}: popular apple, bear; adversarial apple = 2, bear = 2 -> apple, bear.
    # Image 3 {apple, bear, car, dog}: absent egg, fig, both with frequency 0 and co-occurrence 0, so
    #   popular and adversarial have no candidate: both negatives come from the random fallback (2 each).
    categories = [(1, "apple"), (2, "bear"), (3, "car"), (4, "dog"), (5, "egg"), (6, "fig")]
    src = _coco(tmp_path, categories, {1: ["apple", "bear"], 2: ["car", "dog"], 3: ["apple", "bear", "car", "dog"]})
    manifest = build_pope(src, tmp_path / "pope", PopeBuildConfig(n_images=None, per_image=2))
    assert {s: manifest["stats"][s]["fallbacks"] for s in SPLITS} == {"random": 0, "popular": 2, "adversarial": 2}
    for split in SPLITS:
        negatives: dict[str, list[str]] = {}
        for q in _read_split(tmp_path / "pope", split):
            if q["label"] == "no":
                negatives.setdefault(q["image"], []).append(_name(q))
        assert sorted(negatives["img_003.jpg"]) == ["egg", "fig"]
        if split != "random":
            assert negatives["img_001.jpg"] == ["car", "dog"]
            assert negatives["img_002.jpg"] == ["apple", "bear"]


def test_build_partial_fallback_keeps_ranked_candidates_first(tmp_path):
    # Images per category: apple 2, bear 1, car 1, dog 1, egg 0. Co-occurrence: apple-bear 1, apple-car 1.
    # Image 1 {apple, bear}, absent car, dog, egg: adversarial car = 1 + 0, dog = egg = 0 -> [car] + 1 random from {dog, egg}
    # Image 2 {apple, car}, absent bear, dog, egg: adversarial bear = 1 + 0 -> [bear] + 1 random from {dog, egg}
    # Popular never falls back: image 1 -> car, dog (tie at 1 -> name); image 2 -> bear, dog. Image 3 {dog} is not eligible.
    categories = [(1, "apple"), (2, "bear"), (3, "car"), (4, "dog"), (5, "egg")]
    src = _coco(tmp_path, categories, {1: ["apple", "bear"], 2: ["apple", "car"], 3: ["dog"]})
    manifest = build_pope(src, tmp_path / "pope", PopeBuildConfig(n_images=None, per_image=2, min_objects=2))
    assert {s: manifest["stats"][s]["fallbacks"] for s in SPLITS} == {"random": 0, "popular": 0, "adversarial": 2}
    negatives = [_name(q) for q in _read_split(tmp_path / "pope", "adversarial") if q["label"] == "no"]
    assert negatives[0] == "car" and negatives[1] in {"dog", "egg"}
    assert negatives[2] == "bear" and negatives[3] in {"dog", "egg"}
    popular = [_name(q) for q in _read_split(tmp_path / "pope", "popular") if q["label"] == "no"]
    assert popular == ["car", "dog", "bear", "dog"]


def test_build_eligibility_error_names_the_numbers(tmp_path):
    src = _coco(tmp_path, HAND_CATEGORIES, HAND_IMAGES)
    with pytest.raises(
        HallbenchError, match=r"instances.json: expected at least 3 eligible images \(>= 3 distinct object categories.*found 2 of 9 images"
    ):
        build_pope(src, tmp_path / "pope", PopeBuildConfig(n_images=3, per_image=2, min_objects=3))
    assert not (tmp_path / "pope").exists()  # nothing written on error
    # An image with every category but one cannot get 2 negatives: not eligible either.
    src = _coco(tmp_path, [(1, "a"), (2, "b"), (3, "c")], {1: ["a", "b"]}, name="full.json")
    with pytest.raises(
        HallbenchError, match=r"full.json: expected at least 1 eligible images.*>= 2 absent categories of 3\), found 0 of 1"
    ):
        build_pope(src, tmp_path / "pope", PopeBuildConfig(n_images=None, per_image=2))


def test_build_rejects_bad_input_files(tmp_path):
    src = _coco(tmp_path, [(1, "cat"), (2, "cat")], {1: ["cat"]})
    with pytest.raises(DataFormatError, match=r"\$\.categories\[1\]\.name: expected unique category names, found 'cat' again"):
        build_pope(src, tmp_path / "pope", PopeBuildConfig(n_images=None, per_image=1))
    with pytest.raises(DataFormatError, match="no such file"):
        build_pope(tmp_path / "missing.json", tmp_path / "pope")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"per_image": 0}, "per_image must be a positive integer, got 0"),
        ({"n_images": 0}, "n_images must be a positive integer or None, got 0"),
        ({"n_images": True}, "n_images must be a positive integer or None, got True"),
        ({"per_image": 3, "min_objects": 2}, r"min_objects must be >= per_image \(3\), got 2"),
        ({"seed": "0"}, "seed must be an integer, got '0'"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(HallbenchError, match="invalid POPE build config: " + message):
        PopeBuildConfig(**kwargs)


def test_config_defaults_resolve_min_objects():
    assert PopeBuildConfig().min_objects == 3
    assert PopeBuildConfig(per_image=2).min_objects == 2
    assert PopeBuildConfig(per_image=2, min_objects=4).min_objects == 4


# ---------------------------------------------------------------------------------------------
# build_pope on the shapes world


@pytest.fixture(scope="module")
def shapes_pope(tmp_path_factory):
    root = generate_shapes(ShapesConfig(seed=0, n_train=10, n_val=60), tmp_path_factory.mktemp("shapes_pope"))
    out = root / "pope"
    manifest = build_pope(root / "annotations" / "instances_val.json", out, PopeBuildConfig(n_images=None))
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    file_of = {img["id"]: img["file_name"] for img in data["images"]}
    present: dict[str, set[str]] = {}  # file name -> category names in it
    for ann in data["annotations"]:
        present.setdefault(file_of[ann["image_id"]], set()).add(names[ann["category_id"]])
    return out, manifest, present


def test_shapes_adversarial_negatives_are_theme_mates(shapes_pope):
    out, manifest, present = shapes_pope
    theme_of = {c: t for t, members in THEMES.items() for c in members}
    per_image = 3
    mates = {}
    achievable = 0
    for objects in present.values():
        if len(objects) >= per_image:
            themes = {theme_of[o] for o in objects}
            achievable += min(per_image, sum(1 for c in theme_of if c not in objects and theme_of[c] in themes))
    for split in SPLITS:
        negatives = [q for q in _read_split(out, split) if q["label"] == "no"]
        assert len(negatives) == 3 * manifest["stats"]["n_images"]
        mates[split] = sum(theme_of[_name(q)] in {theme_of[o] for o in present[q["image"]]} for q in negatives)
    # An image with 3 objects of one theme has a single absent theme-mate, so the ceiling is `achievable`,
    # not every negative; adversarial sampling reaches it (nearly), random sampling stays far below.
    assert mates["adversarial"] >= 0.9 * achievable
    assert mates["adversarial"] >= mates["random"] + 0.4 * achievable
    # The top-ranked adversarial negative of every image is a theme-mate whenever one is absent.
    first_negative: dict[str, str] = {}
    for q in _read_split(out, "adversarial"):
        if q["label"] == "no":
            first_negative.setdefault(q["image"], _name(q))
    for image, name in first_negative.items():
        themes = {theme_of[o] for o in present[image]}
        if any(c not in present[image] and theme_of[c] in themes for c in theme_of):
            assert theme_of[name] in themes, (image, name, present[image])


def test_shapes_build_counts_and_eligibility(shapes_pope):
    out, manifest, present = shapes_pope
    stats = manifest["stats"]
    assert stats["n_images_total"] == 60
    assert stats["n_eligible"] == stats["n_images"] == sum(len(objs) >= 3 for objs in present.values())
    for split in SPLITS:
        assert stats[split]["n_questions"] == 6 * stats["n_images"]
        assert stats[split]["n_yes"] == stats[split]["n_no"] == 3 * stats["n_images"]
        assert len(read_pope_questions(out / f"{split}.jsonl")) == stats[split]["n_questions"]
