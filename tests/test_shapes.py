"""The shapes world: determinism, COCO compatibility, vocabulary coverage and the co-occurrence bias."""

from __future__ import annotations

import hashlib
import itertools
import json
import random

import pytest

from hallbench.data import shapes
from hallbench.data.shapes import CATEGORIES, THEMES, ShapesConfig, generate_shapes
from hallbench.errors import HallbenchError


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path, shapes_dir, shapes_config):
    again = generate_shapes(shapes_config, tmp_path / "again")
    assert _digest(again) == _digest(shapes_dir)
    other = generate_shapes(ShapesConfig(seed=1, n_train=40, n_val=20), tmp_path / "other")
    assert _digest(other)["annotations/instances_val.json"] != _digest(shapes_dir)["annotations/instances_val.json"]


def test_writes_every_file(shapes_dir):
    expected = {"train.json", "eval_vqa.json", "synonyms.txt", "world.json"} | {
        f"annotations/{kind}_{split}.json" for kind in ("instances", "captions") for split in ("train", "val")
    }
    assert expected <= set(_digest(shapes_dir))
    assert len(list((shapes_dir / "images").glob("*.png"))) == 60


def test_annotations_load_with_pycocotools(shapes_dir):
    from pycocotools.coco import COCO

    coco = COCO(str(shapes_dir / "annotations" / "instances_val.json"))
    assert len(coco.getImgIds()) == 20
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(CATEGORIES)
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) <= 4
        assert len({a["category_id"] for a in anns}) == len(anns)  # distinct categories per image
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x + w <= 128 and y + h <= 128
    # val ids follow the train ids, so ids are unique across splits as in COCO
    assert min(coco.getImgIds()) == 41
    captions = COCO(str(shapes_dir / "annotations" / "captions_val.json"))
    assert len(captions.getAnnIds(imgIds=41)) == 5


def test_every_text_is_in_the_vocabulary(shapes_dir):
    vocab = set(shapes.vocabulary())
    texts = []
    for record in json.loads((shapes_dir / "train.json").read_text()):
        texts += [turn["value"].replace("<image>", "") for turn in record["conversations"]]
    for item in json.loads((shapes_dir / "eval_vqa.json").read_text()):
        texts += [item["question"].replace("<image>", ""), item["answer"], item["reasoning"]]
    for split in ("train", "val"):
        texts += [a["caption"] for a in json.loads((shapes_dir / f"annotations/captions_{split}.json").read_text())["annotations"]]
    missing = {w for t in texts for w in shapes.split_words(t)} - vocab
    assert missing == set()


def test_training_data_mixes_tasks(shapes_dir):
    records = json.loads((shapes_dir / "train.json").read_text())
    kinds = [r["id"].split("-")[1] for r in records]
    # per image: caption, list, 2 existence questions (one yes, one no), 1 VQA item
    assert kinds.count("caption") == kinds.count("list") == kinds.count("vqa") == 40
    answers = [r["conversations"][1]["value"] for r in records if "-exist-" in r["id"]]
    assert answers.count("Yes.") == answers.count("No.") == 40
    assert all(shapes.FINAL_ANSWER_MARKER in r["conversations"][1]["value"] for r in records if "-vqa-" in r["id"])


def test_vqa_file_has_open_and_closed_questions(shapes_dir):
    items = json.loads((shapes_dir / "eval_vqa.json").read_text())
    assert [i["answer_type"] for i in items].count("OPEN") == 20
    assert [i["answer_type"] for i in items].count("CLOSED") == 20


def test_cooccurrence_bias_follows_theme_prob():
    def same_theme_fraction(theme_prob: float) -> float:
        cfg = ShapesConfig(theme_prob=theme_prob, min_objects=2, max_objects=2)
        same = total = 0
        for i in range(400):
            _, _, objects = shapes.draw_scene(random.Random(i), cfg)
            a, b = (o.category for o in objects)
            same += any(a in m and b in m for m in THEMES.values())
            total += 1
        return same / total

    # theme_prob p: both objects come from the image's theme with probability p^2 (0.72 for 0.85),
    # plus a little from two off-theme objects that happen to share a theme.
    # theme_prob 0: both come from the 12 off-theme categories, which share a theme in 18/66 = 0.27 of pairs.
    assert 0.65 < same_theme_fraction(0.85) < 0.82
    assert 0.20 < same_theme_fraction(0.0) < 0.35


def test_every_glyph_draws_something():
    for category in CATEGORIES:
        mask = shapes._glyph_mask(category, 32, 0.0)
        covered = sum(mask.histogram()[128:])
        assert 80 < covered < 32 * 32, category


def test_synonym_table_round_trips(tmp_path):
    from hallbench.data.formats import read_synonyms

    path = tmp_path / "syn.txt"
    path.write_text(shapes.synonyms_table())
    mapping = read_synonyms(path)
    assert mapping["lightning bolt"] == "bolt"
    assert mapping["doughnut"] == "ring"
    assert set(mapping.values()) == set(CATEGORIES)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"theme_prob": 1.5}, "theme_prob must be in [0, 1], got 1.5"),
        ({"min_objects": 3, "max_objects": 2}, "need 1 <= min_objects <= max_objects <= 15, got 3..2"),
        ({"image_size": 16}, "image_size must be >= 32, got 16"),
        ({"colour_count": 3}, "unknown shapes world option(s) ['colour_count']"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, message):
    with pytest.raises(HallbenchError) as info:
        shapes.config_from_overrides(**overrides)
    assert message in str(info.value)


def test_categories_are_split_into_disjoint_themes():
    members = list(itertools.chain.from_iterable(THEMES.values()))
    assert len(members) == len(set(members)) == 16


def test_category_colours_make_colour_a_cue_and_keep_theme_mates_apart(tmp_path):
    import json

    from hallbench.data.shapes import HOME_COLOURS, THEMES, ShapesConfig, generate_shapes

    out = generate_shapes(ShapesConfig(seed=1, n_train=10, n_val=0, category_colour_prob=1.0), tmp_path)
    instances = json.loads((out / "annotations" / "instances_train.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    assert all(a["attributes"]["colour"] == HOME_COLOURS[names[a["category_id"]]] for a in instances["annotations"])
    for members in THEMES.values():
        assert len({HOME_COLOURS[c] for c in members}) == len(members)
