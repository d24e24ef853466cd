"""Build POPE question files (random, popular, adversarial) from a COCO instances file.

POPE (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models") polls a
model with ``Is there a {object} in the image?`` about objects that are in the image (label
``yes``) and objects that are not (label ``no``). The three splits differ only in how the absent
objects are chosen:

- **random**: uniformly among the categories absent from the image;
- **popular**: the categories present in the most images of the dataset, skipping those in the image;
- **adversarial**: the categories that co-occur most often with the image's objects, skipping those
  in the image.

:func:`build_pope` follows the paper, with these deliberate choices (all deterministic):

- Frequencies and co-occurrences are counted over *every* image of the instances file (a category
  counts once per image, however many instances it has; crowd annotations count as present, so a
  crowd of people is never asked about as an absent "person").
- Adversarial ranks an absent category ``c`` by ``sum over g in GT(image) of cooc(g, c)``, where
  ``cooc(g, c)`` is the number of images that contain both: "the objects that co-occur most with
  the ground-truth objects" of the paper. (The official code instead takes, for the i-th positive,
  the top co-occurring object of that one positive; summing over all of the image's objects is the
  paper's wording and does not depend on which positives were drawn.)
- Ties in popular/adversarial rankings are broken by category name, so the files never depend on
  dict or annotation order.
- Popular candidates are categories present in at least one image; adversarial candidates are
  categories with a non-zero co-occurrence score. When an image has fewer candidates than
  ``per_image`` negatives, the rest are drawn at random among the remaining absent categories
  (the official code does the same); each such negative is counted in ``stats[split]["fallbacks"]``.
- Positives are drawn once per image and shared by the three splits (as in POPE), so a positive
  has the same ``question_id`` in every split.
- Questions of an image alternate yes, no, yes, no, ... (the official order); images are in
  increasing image id; question ids run 1, 2, 3, ... within a split.

The question text is ``Is there a {name} in the image?``, with "an" before a vowel letter as in the official files
(``hallbench.eval.pope.existence_question``).
The official template string contains a typo in some copies ("imange"); it is not reproduced here.

Invariant: the same instances file (same bytes) and the same :class:`PopeBuildConfig` give
byte-identical output files. Every random choice uses its own ``random.Random`` seeded from a string
naming the seed, the purpose and the image id, so no choice depends on how many were made before it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from hallbench.data.formats import read_coco_instances
from hallbench.errors import DataFormatError, HallbenchError
from hallbench.eval.pope import existence_question
from hallbench.provenance import sha256_file

SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class PopeBuildConfig:
    """How to sample POPE questions. Every field is recorded in ``pope_build.json``."""

    n_images: int | None = 500
    """Number of images to sample among the eligible ones (POPE uses 500); ``None`` (``--all-images``) takes every eligible image."""
    per_image: int = 3
    """Positive questions per image; the same number of negative questions is asked, so 2 * per_image per image."""
    seed: int = 0
    """Seed of every random choice (image sample, positives, random negatives, fallbacks)."""
    min_objects: int | None = None
    """Fewest distinct ground-truth categories an image needs to be eligible; ``None`` means ``per_image``
    (the POPE paper uses images with at least 3 objects). Must be >= ``per_image``."""

    def __post_init__(self) -> None:
        problems = []
        if self.n_images is not None and (isinstance(self.n_images, bool) or not isinstance(self.n_images, int) or self.n_images < 1):
            problems.append(f"n_images must be a positive integer or None, got {self.n_images!r}")
        if isinstance(self.per_image, bool) or not isinstance(self.per_image, int) or self.per_image < 1:
            problems.append(f"per_image must be a positive integer, got {self.per_image!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if self.min_objects is None:
            if not problems:
                object.__setattr__(self, "min_objects", self.per_image)
        elif isinstance(self.min_objects, bool) or not isinstance(self.min_objects, int):
            problems.append(f"min_objects must be an integer or None, got {self.min_objects!r}")
        elif isinstance(self.per_image, int) and self.min_objects < self.per_image:
            # An image needs per_image distinct present categories to ask per_image positive questions.
            problems.append(f"min_objects must be >= per_image ({self.per_image}), got {self.min_objects}")
        if problems:
            raise HallbenchError("invalid POPE build config: " + "; ".join(problems))


def pope_question(question_id: int, image: str, name: str, label: str) -> dict:
    """One question in the official POPE format, keys in the official order."""
    return {"question_id": question_id, "image": image, "text": existence_question(name), "label": label}


def _rng(cfg: PopeBuildConfig, purpose: str, image_id: int | None = None) -> random.Random:
    # String seeds are hashed with SHA-512 by random.Random: stable across runs and platforms.
    return random.Random(f"pope-{cfg.seed}-{purpose}-{image_id}")


def _objects_per_image(path: Path, data: dict) -> tuple[list[dict], dict[int, set[str]], list[str]]:
    """Images in id order, the set of category names present in each, and all category names (sorted)."""
    names: dict[int, str] = {}
    first_at: dict[str, int] = {}
    for i, category in enumerate(data["categories"]):
        name = category["name"].strip()
        if name in first_at:
            # Two ids with one name would make "Is there a X?" ambiguous (present under one id, absent under the other).
            raise DataFormatError(
                path, f"$.categories[{i}].name", "unique category names", f"'{name}' again (first at $.categories[{first_at[name]}])"
            )
        first_at[name] = i
        names[category["id"]] = name
    present: dict[int, set[str]] = {image["id"]: set() for image in data["images"]}
    for ann in data["annotations"]:
        present[ann["image_id"]].add(names[ann["category_id"]])
    images = sorted(data["images"], key=lambda image: image["id"])
    return images, present, sorted(names.values())


def _negatives(
    split: str,
    present: set[str],
    absent: list[str],
    per_image: int,
    frequency: Counter,
    cooc: dict[str, Counter],
    rng: random.Random,
) -> tuple[list[str], int]:
    """``per_image`` absent categories for ``split`` and how many came from the random fallback.

    ``absent`` is sorted by name and has at least ``per_image`` entries (eligibility guarantees it).
    """
    if split == "random":
        return rng.sample(absent, per_image), 0
    # popular: images containing c; adversarial: images where c co-occurs with one of the image's objects (summed).
    scores = {c: frequency[c] for c in absent} if split == "popular" else {c: sum(cooc[g][c] for g in present) for c in absent}
    ranked = sorted((c for c in absent if scores[c] > 0), key=lambda c: (-scores[c], c))
    chosen = ranked[:per_image]
    missing = per_image - len(chosen)
    if missing:
        rest = [c for c in absent if c not in chosen]
        chosen += rng.sample(rest, missing)
    return chosen, missing


def build_pope(
    instances_path: str | Path, out_dir: str | Path, cfg: PopeBuildConfig | None = None, images_dir: str | Path | None = None
) -> dict:
    """Write POPE questions for ``instances_path`` (COCO instances) into ``out_dir``; return the manifest.

    Files written (``out_dir`` is created if needed; ``pope_build.json`` is written last, so its
    presence means the build is complete):

    - ``random.jsonl``, ``popular.jsonl``, ``adversarial.jsonl``: one JSON object per line,
      ``{"question_id": int, "image": file_name, "text": "Is there a {name} in the image?", "label": "yes"|"no"}``,
      readable by :func:`hallbench.data.formats.read_pope_questions` and by the official POPE scripts;
    - ``image_ids.json``: ``[{"id": image_id, "file_name": ...}, ...]`` for the chosen images, in id order;
    - ``pope_build.json``: ``{"config": resolved config, "input": {"file": name, "sha256": ...}, "stats": ...}``,
      the returned manifest. Only the input's file name is recorded (with its hash), so the same
      file built from two places gives the same bytes.

    ``images_dir``, when given, is recorded as ``images`` in the manifest, so that ``hallbench eval
    --bench pope --data out_dir`` finds the images without ``--images``.

    ``stats`` holds ``n_images_total``, ``n_eligible``, ``n_images`` and, per split, ``n_questions``,
    ``n_yes``, ``n_no`` and ``fallbacks`` (negatives drawn at random because the popular/adversarial
    ranking had too few absent candidates; always 0 for random).

    An image is eligible when it has at least ``cfg.min_objects`` distinct categories and at least
    ``cfg.per_image`` absent categories. Fewer eligible images than ``cfg.n_images`` is an error
    naming both numbers. See the module docstring for the sampling rules.
    """
    cfg = cfg or PopeBuildConfig()
    path = Path(instances_path)
    data = read_coco_instances(path)
    images, present, categories = _objects_per_image(path, data)

    # Dataset-wide statistics: a category counts once per image; cooc[a][b] = images containing both.
    frequency: Counter = Counter()
    cooc: dict[str, Counter] = {c: Counter() for c in categories}
    for names in present.values():
        frequency.update(names)
        for a in names:
            cooc[a].update(b for b in names if b != a)

    eligible = [
        img for img in images if len(present[img["id"]]) >= cfg.min_objects and len(categories) - len(present[img["id"]]) >= cfg.per_image
    ]
    n_wanted = len(eligible) if cfg.n_images is None else cfg.n_images
    if len(eligible) < n_wanted or not eligible:
        raise HallbenchError(
            f"{path}: expected at least {max(n_wanted, 1)} eligible images (>= {cfg.min_objects} distinct object categories and "
            f">= {cfg.per_image} absent categories of {len(categories)}), found {len(eligible)} of {len(images)} images; "
            "lower n_images or per_image/min_objects"
        )
    # Sample from the id-ordered list, then restore id order: the output order never depends on the RNG.
    chosen = sorted(_rng(cfg, "images").sample(eligible, n_wanted), key=lambda image: image["id"])

    questions: dict[str, list[dict]] = {split: [] for split in SPLITS}
    fallbacks = dict.fromkeys(SPLITS, 0)
    for image in chosen:
        image_id, file_name = image["id"], image["file_name"]
        names = present[image_id]
        absent = [c for c in categories if c not in names]  # sorted, because categories is
        positives = sorted(_rng(cfg, "positives", image_id).sample(sorted(names), cfg.per_image))
        for split in SPLITS:
            negatives, n_fallback = _negatives(split, names, absent, cfg.per_image, frequency, cooc, _rng(cfg, split, image_id))
            fallbacks[split] += n_fallback
            out = questions[split]
            for positive, negative in zip(positives, negatives, strict=True):
                out.append(pope_question(len(out) + 1, file_name, positive, "yes"))
                out.append(pope_question(len(out) + 1, file_name, negative, "no"))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with (out_dir / f"{split}.jsonl").open("w", encoding="utf-8", newline="\n") as handle:
            for question in questions[split]:
                handle.write(json.dumps(question) + "\n")
    _dump_json(out_dir / "image_ids.json", [{"id": image["id"], "file_name": image["file_name"]} for image in chosen])
    manifest = {
        "config": asdict(cfg),
        "input": {"file": path.name, "sha256": sha256_file(path)},
        # Absolute: the manifest is read from wherever eval runs, not from this command's folder.
        **({"images": str(Path(images_dir).resolve())} if images_dir is not None else {}),
        "stats": {
            "n_images_total": len(images),
            "n_eligible": len(eligible),
            "n_images": len(chosen),
            **{
                split: {
                    "n_questions": len(questions[split]),
                    "n_yes": sum(q["label"] == "yes" for q in questions[split]),
                    "n_no": sum(q["label"] == "no" for q in questions[split]),
                    "fallbacks": fallbacks[split],
                }
                for split in SPLITS
            },
        },
    }
    _dump_json(out_dir / "pope_build.json", manifest)
    return manifest


def _dump_json(path: Path, obj: object) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
