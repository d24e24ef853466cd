"""``hallbench data mme``: MME's four hallucination subsets from a COCO-style instances file (a shapes world's).

Each image gets, per subset it qualifies for, MME's pair of questions, one answered Yes and one No,
written in the MME release's layout (``OUT/<subset>/<image>.png`` + ``<image>.txt``, one
``question<TAB>answer`` line each, Yes first as in the release), so that ``hallbench eval --bench mme``
reads it exactly like the real benchmark:

- existence: a category the image shows / one it does not ("Is there a star in this image?");
- count: the number of instances of a shown category / one more or one fewer (at least one);
- position: two categories shown once each, their centres at least a sixth of the width apart: the
  true side / the other side ("Is the star on the left side of the moon?");
- color: a shown category whose instances share one colour: that colour / another one (needs the
  shapes world's ``attributes.colour``; a COCO file without it yields no color subset).

Every choice comes from a ``random.Random`` seeded by ``(seed, subset, image id)``: the same input and
seed give byte-identical files, and one image's questions never depend on another's.
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

from hallbench.errors import HallbenchError
from hallbench.eval.mme import SUBSETS

SUFFIX = "Please answer yes or no."
"""MME's instruction after every question."""
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "sh", "ch")) else "s")


def _count_question(category: str, n: int) -> str:
    return f"Is there {NUMBERS[n]} {category} in the image?" if n == 1 else f"Are there {NUMBERS[n]} {_plural(category)} in the image?"


def _pairs(
    rng: random.Random, subset: str, objects: list[dict], categories: list[str], width: float, palette: list[str]
) -> tuple[str, str] | None:
    """The (Yes question, No question) of one image for ``subset``, or None when it does not qualify."""
    present = sorted({o["category"] for o in objects})
    if subset == "existence":
        absent = [c for c in categories if c not in present]
        if not present or not absent:
            return None
        return f"Is there {_a(rng.choice(present))} in this image?", f"Is there {_a(rng.choice(absent))} in this image?"
    if subset == "count":
        counts = Counter(o["category"] for o in objects)
        shown = [c for c in present if counts[c] < len(NUMBERS) - 1]
        if not shown:
            return None
        category = rng.choice(shown)
        n = counts[category]
        wrong = rng.choice([m for m in (n - 1, n + 1) if m >= 1])
        return _count_question(category, n), _count_question(category, wrong)
    if subset == "position":
        counts = Counter(o["category"] for o in objects)
        once = {o["category"]: o for o in objects if counts[o["category"]] == 1}

        def centre(o: dict) -> float:
            return o["bbox"][0] + o["bbox"][2] / 2

        pairs = [(a, b) for a in sorted(once) for b in sorted(once) if a != b and abs(centre(once[a]) - centre(once[b])) >= width / 6]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        side, other = ("left", "right") if centre(once[a]) < centre(once[b]) else ("right", "left")
        return f"Is the {a} on the {side} side of the {b}?", f"Is the {a} on the {other} side of the {b}?"
    colours = {c: {o.get("colour") for o in objects if o["category"] == c} for c in present}
    single = [c for c in present if len(colours[c]) == 1 and None not in colours[c]]
    if not single:
        return None
    category = rng.choice(single)
    (colour,) = colours[category]
    wrong = rng.choice([c for c in palette if c != colour])
    return f"Is there {_a(f'{colour} {category}')} in the image?", f"Is there {_a(f'{wrong} {category}')} in the image?"


def build_mme(instances: Path, images: Path, out: Path, *, seed: int = 0) -> dict:
    """Write the four subsets under ``out`` and ``out/mme_build.json`` (source, seed, images per subset); return the manifest.

    Raises:
        HallbenchError: the instances file cannot be read, or ``out`` holds files already.
    """
    from hallbench.data.shapes import COLOURS

    try:
        data = json.loads(Path(instances).read_text(encoding="utf-8"))
        names = {c["id"]: c["name"] for c in data["categories"]}
        by_image: dict[int, list[dict]] = {image["id"]: [] for image in data["images"]}
        for ann in data["annotations"]:
            colour = (ann.get("attributes") or {}).get("colour")
            by_image[ann["image_id"]].append({"category": names[ann["category_id"]], "bbox": ann["bbox"], "colour": colour})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HallbenchError(f"{instances}: not a readable COCO instances file ({err!r})") from None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise HallbenchError(f"--out {out} is not empty; choose another folder")
    categories = sorted(names.values())
    palette = sorted({o["colour"] for objects in by_image.values() for o in objects if o["colour"]} | set(COLOURS))
    counts = {}
    for subset in SUBSETS:
        folder = out / subset
        folder.mkdir(parents=True, exist_ok=True)
        counts[subset] = 0
        for image in sorted(data["images"], key=lambda i: i["id"]):
            rng = random.Random(f"mme-{seed}-{subset}-{image['id']}")
            pair = _pairs(rng, subset, by_image[image["id"]], categories, float(image.get("width") or 1), palette)
            source = Path(images) / image["file_name"]
            if pair is None:
                continue
            if not source.is_file():
                raise HallbenchError(f"{instances} names image {image['file_name']}, which is not in {images}")
            stem = Path(image["file_name"]).stem
            shutil.copyfile(source, folder / f"{stem}{source.suffix}")
            (folder / f"{stem}.txt").write_text(f"{pair[0]} {SUFFIX}\tYes\n{pair[1]} {SUFFIX}\tNo\n", encoding="utf-8")
            counts[subset] += 1
    manifest = {
        "instances": str(Path(instances).resolve()),
        "images": str(Path(images).resolve()),
        "seed": seed,
        "images_per_subset": counts,
    }
    (out / "mme_build.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
