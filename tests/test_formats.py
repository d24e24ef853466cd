"""Every reader turns bad input into one message naming the place, what was expected and what was found."""

from __future__ import annotations

import json

import pytest

from hallbench.data import formats
from hallbench.errors import DataFormatError, HallbenchError


def _write(path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def _message(reader, path) -> str:
    with pytest.raises(HallbenchError) as info:
        reader(path)
    return str(info.value)


GOOD_TURNS = [{"from": "human", "value": "<image>\nIs there a star?"}, {"from": "gpt", "value": "Yes."}]


def test_reads_the_shapes_world(shapes_dir):
    assert len(formats.read_conversations(shapes_dir / "train.json")) == 40 * 5
    vqa = formats.read_vqa(shapes_dir / "eval_vqa.json")
    assert {item.answer_type for item in vqa} == {"OPEN", "CLOSED"}
    assert vqa[0].extra["kind"] in {"count", "colour", "exist"}  # extra fields are kept
    instances = formats.read_coco_instances(shapes_dir / "annotations/instances_val.json")
    assert len(instances["images"]) == 20
    captions = formats.read_coco_captions(shapes_dir / "annotations/captions_val.json")
    assert all(len(c) == 5 for c in captions.values())


def test_missing_file(tmp_path):
    assert (
        _message(formats.read_vqa, tmp_path / "nope.json")
        == f"{tmp_path / 'nope.json'}: expected an existing JSON or JSONL file, found no such file"
    )


def test_json_syntax_error_names_line_and_column(tmp_path):
    path = _write(tmp_path / "bad.json", '[\n  {"id": 1,\n  "img_name": }\n]')
    assert _message(formats.read_vqa, path) == f"{path}, line 3 column 15: expected valid JSON, found Expecting value"


def test_malformed_jsonl_line_names_the_line(tmp_path):
    good = json.dumps({"question_id": 1, "image": "a.png", "text": "Is there a star in the image?", "label": "yes"})
    path = _write(tmp_path / "pope.jsonl", good + "\n\n" + '{"question_id": 2, "image": "b.png",\n')
    assert _message(formats.read_pope_questions, path).startswith(f"{path}, line 3: expected one JSON object per line, found ")


def test_pope_label_must_be_yes_or_no(tmp_path):
    path = _write(tmp_path / "pope.json", [{"question_id": 7, "image": "a.png", "text": "Is there a star?", "label": "maybe"}])
    assert _message(formats.read_pope_questions, path) == f"{path}, $[0].label: expected 'yes' or 'no', found 'maybe'"


def test_pope_duplicate_question_id(tmp_path):
    q = {"question_id": 7, "image": "a.png", "text": "Is there a star?", "label": "yes"}
    path = _write(tmp_path / "pope.jsonl", json.dumps(q) + "\n" + json.dumps(q) + "\n")
    assert _message(formats.read_pope_questions, path) == (
        f"{path}, line 2.question_id: expected a unique question id, found '7' again (first at line 1)"
    )


def test_pope_accepts_upper_case_labels_and_jsonl_named_json(tmp_path):
    q = {"question_id": 7, "image": "a.png", "text": "Is there a star?", "label": "Yes "}
    path = _write(tmp_path / "coco_pope_random.json", json.dumps(q) + "\n")
    assert formats.read_pope_questions(path)[0].label == "yes"


def test_wrong_type_names_the_field(tmp_path):
    path = _write(tmp_path / "train.json", [{"id": "a", "image": 5, "conversations": GOOD_TURNS}])
    assert _message(formats.read_conversations, path) == (f"{path}, $[0].image: expected an image file name or a list of them, found int 5")


def test_missing_field_lists_what_is_there(tmp_path):
    path = _write(tmp_path / "train.json", [{"id": "a", "conversations": GOOD_TURNS}])
    assert _message(formats.read_conversations, path) == (
        f"{path}, $[0]: expected field 'image' (an image file name or a list of them), found an object with fields ['conversations', 'id']"
    )


def test_conversation_without_assistant_turn(tmp_path):
    path = _write(tmp_path / "train.json", [{"id": "a", "image": "x.png", "conversations": GOOD_TURNS[:1]}])
    assert _message(formats.read_conversations, path) == (
        f"{path}, $[0].conversations: expected at least one 'gpt' (assistant) turn, found roles ['user']"
    )


def test_conversation_unknown_role(tmp_path):
    turns = [GOOD_TURNS[0], {"from": "bot", "value": "Yes."}]
    path = _write(tmp_path / "train.json", [{"id": "a", "image": "x.png", "conversations": turns}])
    assert _message(formats.read_conversations, path) == f"{path}, $[0].conversations[1].from: expected 'human' or 'gpt', found 'bot'"


def test_vqa_bad_answer_type_and_empty_answer(tmp_path):
    item = {"id": 1, "img_name": "x.png", "question": "<image>\nq", "answer": "yes", "answer_type": "MULTI"}
    path = _write(tmp_path / "a.json", [item])
    assert _message(formats.read_vqa, path) == f"{path}, $[0].answer_type: expected 'OPEN' or 'CLOSED', found 'MULTI'"
    path = _write(tmp_path / "b.json", [dict(item, answer_type="closed", answer="  ")])
    assert _message(formats.read_vqa, path) == f"{path}, $[0].answer: expected a non-empty reference answer, found '  '"


def test_vqa_accepts_numeric_answers_and_image_lists(tmp_path):
    item = {"id": 1, "img_name": ["a.png", "b.png"], "question": "<image>\nhow many?", "answer": 3, "answer_type": "closed"}
    [parsed] = formats.read_vqa(_write(tmp_path / "a.json", [item]))
    assert (parsed.answer, parsed.answer_type, parsed.images) == ("3", "CLOSED", ["a.png", "b.png"])


def test_json_array_of_non_objects(tmp_path):
    path = _write(tmp_path / "a.json", [1])
    assert _message(formats.read_vqa, path) == f"{path}, $[0]: expected a JSON object, found int 1"


def test_coco_annotation_with_unknown_image(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "star"}],
        "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}],
    }
    path = _write(tmp_path / "instances.json", coco)
    assert (
        _message(formats.read_coco_instances, path)
        == f"{path}, $.annotations[0].image_id: expected the id of an image in $.images, found 2"
    )
    coco["annotations"][0].update(image_id=1, bbox=[0, 0, -1, 1])
    path = _write(tmp_path / "instances.json", coco)
    assert _message(formats.read_coco_instances, path) == (
        f"{path}, $.annotations[0].bbox: expected four non-negative numbers [x, y, width, height], found [0, 0, -1, 1]"
    )
    coco["images"].append({"id": 1, "file_name": "b.png"})
    path = _write(tmp_path / "instances.json", coco)
    assert _message(formats.read_coco_instances, path) == f"{path}, $.images[1].id: expected a unique id in $.images, found duplicate id 1"


def test_synonyms_strip_stray_spaces_and_reject_conflicts(tmp_path):
    path = _write(tmp_path / "syn.txt", "# comment\nperson, girl,  boy\n\nhot dog, hot dogs\n")
    assert formats.read_synonyms(path) == {
        "person": "person",
        "girl": "person",
        "boy": "person",
        "hot dog": "hot dog",
        "hot dogs": "hot dog",
    }
    path = _write(tmp_path / "bad.txt", "person, girl\nwoman, girl\n")
    assert (
        _message(formats.read_synonyms, path)
        == f"{path}, line 2: expected each synonym in one category only, found 'girl' also under 'person' (line 1)"
    )
    path = _write(tmp_path / "empty.txt", "person, , boy\n")
    assert _message(formats.read_synonyms, path) == f"{path}, line 1: expected comma-separated non-empty words, found 'person, , boy'"


def test_missing_and_corrupt_images(tmp_path):
    with pytest.raises(HallbenchError, match=r"image not found: .*a\.png \(referenced by train\.json, \$\[3\]\)"):
        formats.resolve_image(tmp_path, "a.png", "train.json, $[3]")
    with pytest.raises(HallbenchError, match=r"the image folder .*nowhere does not exist"):
        formats.resolve_image(tmp_path / "nowhere", "a.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(HallbenchError, match=r"cannot decode image .*corrupt\.png \(referenced by q1\)"):
        formats.load_image(corrupt, "q1")


def test_data_format_error_keeps_its_parts(tmp_path):
    err = DataFormatError(tmp_path / "f.json", "line 2", "x", "y")
    assert (err.location, err.expected, err.found) == ("line 2", "x", "y")
    assert isinstance(err, ValueError)


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    import numpy as np
    from PIL import Image

    values = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as reopened:
        assert reopened.mode in ("I;16", "I")  # what Pillow makes of a 16-bit PNG
    rgb = np.asarray(formats.load_image(tmp_path / "deep.png"))
    assert rgb.shape == (2, 2, 3) and rgb[..., 0].tolist() == [[0, 64], [128, 255]]
    assert (rgb[..., 0] == rgb[..., 2]).all()
    # Mode "I" (32-bit integers) holds 16-bit data from some files and 8-bit data from others.
    wide = formats._to_rgb(Image.fromarray(values.astype(np.int32)))
    narrow = formats._to_rgb(Image.fromarray(np.array([[0, 200]], dtype=np.int32)))
    assert np.asarray(wide)[..., 1].tolist() == [[0, 64], [128, 255]] and np.asarray(narrow)[..., 1].tolist() == [[0, 200]]


@pytest.mark.parametrize("kind", ["pope", "conversations", "synonyms"])
def test_a_file_that_is_not_utf8_names_the_line_and_byte(tmp_path, kind):
    path = tmp_path / "input.txt"
    if kind == "synonyms":
        path.write_bytes("dog, puppy\ncat, kitten, caf\xe9\n".encode("latin-1"))
        reader = formats.read_synonyms
    else:
        good = '{"question_id": 1, "image": "a.png", "text": "Is there a dog?", "label": "yes"}\n'
        path.write_bytes(good.encode() + '{"question_id": 2, "image": "b\xe9.png", "text": "?", "label": "no"}\n'.encode("latin-1"))
        reader = formats.read_pope_questions if kind == "pope" else formats.read_conversations
    with pytest.raises(DataFormatError, match=r"line 2.*UTF-8 text.*byte 0xe9 at offset \d+ \(re-save the file as UTF-8\)"):
        reader(path)


def test_a_decompression_bomb_is_a_clear_error_not_a_crash(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4,096 > 2 x the limit: Pillow raises
    with pytest.raises(HallbenchError, match=r"cannot decode image .*big.png.*exceeds limit"):
        formats.load_image(tmp_path / "big.png")
