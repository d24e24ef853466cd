"""Readers for every file format hallbench consumes, with errors a user can act on.

Each reader validates what later stages rely on and raises :class:`DataFormatError` naming the file,
the line (JSONL) or JSON path (JSON), what was expected and what was found. Fields a reader does not
need are kept (``extra``) rather than dropped. The formats are documented in ``docs/data_formats.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hallbench.errors import DataFormatError, HallbenchError, shorten

# ---------------------------------------------------------------------------------------------
# JSON and JSONL


def read_utf8(path: str | Path) -> str:
    """A text file's content; a file that is not UTF-8 or cannot be read is a :class:`DataFormatError`
    naming the line and byte (never a ``UnicodeDecodeError`` traceback)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataFormatError(path, None, "a readable file", err.strerror or str(err)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataFormatError(
            path, f"line {line}", "UTF-8 text", f"byte 0x{data[err.start]:02x} at offset {err.start} (re-save the file as UTF-8)"
        ) from None


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing file or a syntax error names the file (and line/column)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "an existing JSON file", "no such file")
    return _parse_json(path, read_utf8(path))


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, f"line {err.lineno} column {err.colno}", "valid JSON", err.msg) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file (1-based lines)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "an existing JSONL file", "no such file")
    yield from _parse_jsonl(path, read_utf8(path))


def _parse_jsonl(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    # split("\n"), not splitlines(): U+2028 and friends may appear unescaped inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, f"line {number}", "one JSON object per line", f"{err.msg}: {shorten(line.strip())}") from None


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """Records from a JSON array or a JSONL file, each with its location (``line 3`` or ``$[2]``).

    The format is chosen by content, not by extension: a file whose first non-blank character is
    ``[`` is a JSON array; anything else is JSONL (the official POPE files are JSONL named ``.json``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "an existing JSON or JSONL file", "no such file")
    text = read_utf8(path)  # read once, parsed as one or the other
    if text.lstrip().startswith("["):
        records = [(f"$[{i}]", item) for i, item in enumerate(_parse_json(path, text))]
    else:
        records = [(f"line {n}", item) for n, item in _parse_jsonl(path, text)]
    for where, item in records:
        if not isinstance(item, dict):
            raise DataFormatError(path, where, "a JSON object", f"{type(item).__name__} {shorten(item)}")
    return records


def _require(path: Path, where: str, record: dict, key: str, types: type | tuple[type, ...], what: str) -> Any:
    if key not in record:
        raise DataFormatError(path, where, f"field '{key}' ({what})", f"an object with fields {sorted(record)}")
    value = record[key]
    # bool is an int subclass; a true/false where a number is expected is almost always a mistake.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise DataFormatError(path, f"{where}.{key}", what, f"{type(value).__name__} {shorten(value)}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _nonempty_str(path: Path, where: str, record: dict, key: str, what: str) -> str:
    value = _require(path, where, record, key, str, what)
    if not value.strip():
        raise DataFormatError(path, f"{where}.{key}", what, "an empty string")
    return value


# ---------------------------------------------------------------------------------------------
# COCO


def read_coco_instances(path: str | Path) -> dict:
    """A validated COCO instances file (``images``, ``annotations``, ``categories``).

    Checks that ids are unique integers, every annotation points at a known image and category,
    and every bbox is four non-negative numbers; returns the parsed dict unchanged.
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(path, "$", "a COCO object with images/annotations/categories", type(data).__name__)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataFormatError(path, f"$.{key}", "a list", shorten(data.get(key, "nothing")))
    image_ids = _unique_ids(path, data["images"], "images")
    category_ids = _unique_ids(path, data["categories"], "categories")
    for i, category in enumerate(data["categories"]):
        _nonempty_str(path, f"$.categories[{i}]", category, "name", "a category name")
    for i, image in enumerate(data["images"]):
        _nonempty_str(path, f"$.images[{i}]", image, "file_name", "an image file name")
    for i, ann in enumerate(data["annotations"]):
        where = f"$.annotations[{i}]"
        image_id = _require(path, where, ann, "image_id", int, "an integer image id")
        if image_id not in image_ids:
            raise DataFormatError(path, f"{where}.image_id", "the id of an image in $.images", str(image_id))
        category_id = _require(path, where, ann, "category_id", int, "an integer category id")
        if category_id not in category_ids:
            raise DataFormatError(path, f"{where}.category_id", "the id of a category in $.categories", str(category_id))
        bbox = _require(path, where, ann, "bbox", list, "a bbox [x, y, width, height]")
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in bbox):
            raise DataFormatError(path, f"{where}.bbox", "four non-negative numbers [x, y, width, height]", shorten(bbox))
    return data


def read_coco_captions(path: str | Path) -> dict[int, list[str]]:
    """Captions per image id from a COCO captions file; every image listed gets an entry."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataFormatError(path, "$.annotations", "a COCO captions object with an annotations list", shorten(data))
    images = data.get("images", [])
    captions: dict[int, list[str]] = {img["id"]: [] for img in images if isinstance(img, dict) and "id" in img}
    for i, ann in enumerate(data["annotations"]):
        where = f"$.annotations[{i}]"
        image_id = _require(path, where, ann, "image_id", int, "an integer image id")
        captions.setdefault(image_id, []).append(_nonempty_str(path, where, ann, "caption", "a caption"))
    return captions


def _unique_ids(path: Path, items: list, key: str) -> set[int]:
    seen: set[int] = set()
    for i, item in enumerate(items):
        where = f"$.{key}[{i}]"
        if not isinstance(item, dict):
            raise DataFormatError(path, where, "an object", shorten(item))
        value = _require(path, where, item, "id", int, "an integer id")
        if value in seen:
            raise DataFormatError(path, f"{where}.id", f"a unique id in $.{key}", f"duplicate id {value}")
        seen.add(value)
    return seen


# ---------------------------------------------------------------------------------------------
# LLaVA conversations (training data)

HUMAN_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant"}


@dataclass
class Conversation:
    """One training sample: image file(s) and alternating user/assistant turns."""

    id: str
    images: list[str]
    turns: list[tuple[str, str]]  # (role, text) with role "user" or "assistant"
    location: str  # where it came from, for error messages
    extra: dict = field(default_factory=dict)


def read_conversations(path: str | Path) -> list[Conversation]:
    """LLaVA-format training data: ``{"id", "image", "conversations": [{"from", "value"}, ...]}``.

    ``image`` may be a string or a list of strings. Roles ``human``/``user`` and ``gpt``/``assistant``
    are accepted; a sample without an assistant turn is an error (it would train on nothing).
    """
    path = Path(path)
    conversations = []
    seen: dict[str, str] = {}
    for where, record in read_records(path):
        sample_id = str(_require(path, where, record, "id", (str, int), "a sample id"))
        if sample_id in seen:
            raise DataFormatError(path, f"{where}.id", "a unique sample id", f"'{sample_id}' again (first at {seen[sample_id]})")
        seen[sample_id] = where
        images = _image_list(path, where, record, "image")
        turns_raw = _require(path, where, record, "conversations", list, "a list of turns")
        turns = []
        for t, turn in enumerate(turns_raw):
            twhere = f"{where}.conversations[{t}]"
            if not isinstance(turn, dict):
                raise DataFormatError(path, twhere, "a turn object {from, value}", shorten(turn))
            role = _require(path, twhere, turn, "from", str, "'human' or 'gpt'")
            if role not in HUMAN_ROLES | ASSISTANT_ROLES:
                raise DataFormatError(path, f"{twhere}.from", "'human' or 'gpt'", repr(role))
            text = _require(path, twhere, turn, "value", str, "the turn's text")
            turns.append(("user" if role in HUMAN_ROLES else "assistant", text))
        if not any(role == "assistant" for role, _ in turns):
            raise DataFormatError(path, f"{where}.conversations", "at least one 'gpt' (assistant) turn", f"roles {[r for r, _ in turns]}")
        extra = {k: v for k, v in record.items() if k not in ("id", "image", "conversations")}
        conversations.append(Conversation(sample_id, images, turns, f"{path}, {where}", extra))
    return conversations


def _image_list(path: Path, where: str, record: dict, key: str) -> list[str]:
    value = _require(path, where, record, key, (str, list), "an image file name or a list of them")
    images = [value] if isinstance(value, str) else value
    if not images or not all(isinstance(v, str) and v.strip() for v in images):
        raise DataFormatError(path, f"{where}.{key}", "a non-empty image file name or list of them", shorten(value))
    return images


# ---------------------------------------------------------------------------------------------
# VQA (seed-001 format) and POPE questions


@dataclass
class VqaItem:
    """One question of the seed-001 evaluation format."""

    id: str
    images: list[str]
    question: str
    answer: str
    answer_type: str  # "OPEN" or "CLOSED"
    location: str
    extra: dict = field(default_factory=dict)


def read_vqa(path: str | Path) -> list[VqaItem]:
    """``[{"id", "img_name", "question", "answer", "answer_type": "OPEN"|"CLOSED", ...}]``; other fields kept."""
    path = Path(path)
    items = []
    seen: dict[str, str] = {}
    for where, record in read_records(path):
        item_id = str(_require(path, where, record, "id", (str, int), "a question id"))
        if item_id in seen:
            raise DataFormatError(path, f"{where}.id", "a unique question id", f"'{item_id}' again (first at {seen[item_id]})")
        seen[item_id] = where
        answer_type = _require(path, where, record, "answer_type", str, "'OPEN' or 'CLOSED'")
        if answer_type.upper() not in ("OPEN", "CLOSED"):
            raise DataFormatError(path, f"{where}.answer_type", "'OPEN' or 'CLOSED'", repr(answer_type))
        answer = record.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)  # numeric answers ("3") are common in hand-made files
        if not isinstance(answer, str) or not answer.strip():
            raise DataFormatError(path, f"{where}.answer", "a non-empty reference answer", shorten(answer))
        items.append(
            VqaItem(
                id=item_id,
                images=_image_list(path, where, record, "img_name"),
                question=_nonempty_str(path, where, record, "question", "the question text"),
                answer=answer,
                answer_type=answer_type.upper(),
                location=f"{path}, {where}",
                extra={k: v for k, v in record.items() if k not in ("id", "img_name", "question", "answer", "answer_type")},
            )
        )
    return items


@dataclass
class PopeQuestion:
    """One POPE question: does ``image`` contain the object asked about in ``text``?"""

    question_id: str
    image: str
    text: str
    label: str  # "yes" or "no"
    location: str


def read_pope_questions(path: str | Path) -> list[PopeQuestion]:
    """Official POPE files (JSONL or JSON array of ``{question_id, image, text, label}``)."""
    path = Path(path)
    questions = []
    seen: dict[str, str] = {}
    for where, record in read_records(path):
        qid = str(_require(path, where, record, "question_id", (str, int), "a question id"))
        if qid in seen:
            raise DataFormatError(path, f"{where}.question_id", "a unique question id", f"'{qid}' again (first at {seen[qid]})")
        seen[qid] = where
        label = _require(path, where, record, "label", str, "'yes' or 'no'")
        if label.strip().lower() not in ("yes", "no"):
            raise DataFormatError(path, f"{where}.label", "'yes' or 'no'", repr(label))
        questions.append(
            PopeQuestion(
                question_id=qid,
                image=_nonempty_str(path, where, record, "image", "an image file name"),
                text=_nonempty_str(path, where, record, "text", "the question text"),
                label=label.strip().lower(),
                location=f"{path}, {where}",
            )
        )
    return questions


# ---------------------------------------------------------------------------------------------
# Synonym tables (CHAIR)


def read_synonyms(path: str | Path) -> dict[str, str]:
    """Map every synonym (lower-case, possibly two words) to its category.

    One line per category: ``category, synonym, synonym, ...``; the first entry is the category.
    Blank lines and lines starting with ``#`` are skipped. Entries are stripped of surrounding
    whitespace (the original CHAIR table has entries with a stray leading space that could never
    match). A synonym claimed by two categories is an error naming both lines.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "an existing synonym table", "no such file")
    mapping: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entries = [e.strip().lower() for e in line.split(",")]
        if any(not e for e in entries):
            raise DataFormatError(path, f"line {number}", "comma-separated non-empty words", shorten(line))
        category = entries[0]
        for synonym in entries:
            if synonym in mapping and mapping[synonym] != category:
                raise DataFormatError(
                    path,
                    f"line {number}",
                    "each synonym in one category only",
                    f"'{synonym}' also under '{mapping[synonym]}' (line {first_line[synonym]})",
                )
            mapping[synonym] = category
            first_line.setdefault(synonym, number)
    if not mapping:
        raise DataFormatError(path, None, "at least one category line", "an empty table")
    return mapping


# ---------------------------------------------------------------------------------------------
# Images


def resolve_image(root: str | Path, name: str, referenced_by: str | None = None) -> Path:
    """``root / name``, or an error naming the missing file and who referenced it."""
    path = Path(root) / name
    if not path.is_file():
        by = f" (referenced by {referenced_by})" if referenced_by else ""
        hint = "" if Path(root).is_dir() else f"; the image folder {root} does not exist"
        raise HallbenchError(f"image not found: {path}{by}{hint}")
    return path


def _to_rgb(image: Any) -> Any:
    """8-bit RGB. Pillow's own ``convert("RGB")`` clips 16-bit grey values (modes ``I;16*`` and ``I``)
    at 255, so a 16-bit PNG would come out all white; those are scaled to 8 bits (65535 -> 255)."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode == "I":
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        # Mode "I" also holds 8-bit data from some files: scale only what exceeds the 8-bit range.
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))
    return image.convert("RGB")


def load_image(path: str | Path, referenced_by: str | None = None):
    """Open an image as RGB; a missing or undecodable file is a :class:`HallbenchError`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    by = f" (referenced by {referenced_by})" if referenced_by else ""
    if not path.is_file():
        raise HallbenchError(f"image not found: {path}{by}")
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        # A decompression bomb (more pixels than Pillow's limit) is one bad sample, not a crash of the run.
        raise HallbenchError(f"cannot decode image {path}{by}: {err}") from None


def referenced_images(kind: str, records: Any) -> list[tuple[str, str]]:
    """``(where, image file name)`` for every image a parsed file of ``kind`` refers to."""
    if kind == "conversations" or kind == "vqa":
        return [(r.location, name) for r in records for name in r.images]
    if kind == "pope":
        return [(q.location, q.image) for q in records]
    if kind == "coco-instances":
        return [(f"image id {img['id']}", img["file_name"]) for img in records["images"]]
    return []
