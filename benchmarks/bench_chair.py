"""Benchmark the CHAIR scorer on a synthetic COCO-scale annotation set.

Generates, in a temp dir, COCO-format instances and captions files the size of COCO 2014
train+val (120k images, 600k captions, 80 categories with their real names, a few objects per
image; captions built from the packaged synonym table with plurals, qualifiers and filler words,
so that singularisation and phrase matching do real work), then measures:

- ground-truth build time (no cache; parses both files, reads every caption), target < 60 s;
- cached start time (a second ``ChairScorer`` on the same files: hashes them, loads the JSON
  index), target < 1 s;
- scoring throughput over 5,000 captions on the freshly cached scorer (cold word cache), target
  >= 5,000 captions/s; then the median of 3 more passes (warm word cache), for information.

Prints the figures with their ratio to the targets and writes ``benchmarks/results/bench_chair.json``.

    python benchmarks/bench_chair.py [--images 120000] [--captions-per-image 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from hallbench.data.formats import read_synonyms
from hallbench.eval.chair import ChairScorer, default_synonyms_path

TARGET_BUILD_S = 60.0
TARGET_CACHED_START_S = 1.0
TARGET_CAPTIONS_PER_S = 5000.0
N_SCORED = 5000
RESULTS = Path(__file__).parent / "results" / "bench_chair.json"

# The 80 COCO categories in their official order (official ids have gaps; these are the names).
COCO_CATEGORIES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip
# COCO's supercategories, in blocks of the list above (sizes sum to 80).
SUPERCATEGORIES = [
    ("person", 1), ("vehicle", 8), ("outdoor", 5), ("animal", 10), ("accessory", 5), ("sports", 10),
    ("kitchen", 7), ("food", 10), ("furniture", 6), ("electronic", 6), ("appliance", 5), ("indoor", 7),
]  # fmt: skip

TEMPLATES = [
    "a {a} {v} {p} a {b}.",
    "{A} {v} next to {n} {bs} in a {s}.",
    "a {adj} {a} and a {b} {p} the {s}.",
    "there is a {a} {p} a {adj} {s} with {n} {bs}.",
    "a close up of a {a} on a {s} near a {b}.",
    "{n} {aa} and a {adj} {b} {v} {p} the {s}.",
]
VERBS = ["sitting", "standing", "lying", "parked", "walking", "resting", "displayed", "shown", "placed", "waiting"]
PREPS = ["on", "near", "in front of", "behind", "beside", "under", "next to", "on top of", "inside"]
ADJS = ["small", "large", "white", "black", "red", "old", "young", "wooden", "empty", "busy", "sunny", "dark", "baby", "adult"]
SCENES = ["street", "kitchen", "field", "room", "table top", "park", "beach", "city", "counter", "yard", "road", "grass"]
NUMBERS = ["two", "three", "four", "several", "many", "some"]


def _plural(word: str) -> str:
    last = word.split()[-1]
    if last.endswith(("s", "x", "ch", "sh")):
        plural = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return " ".join([*word.split()[:-1], plural])


def generate(root: Path, n_images: int, captions_per_image: int, seed: int = 0) -> tuple[Path, Path, dict]:
    """Write ``instances.json`` and ``captions.json`` (COCO format) under ``root``; plain Python + json."""
    rng = random.Random(seed)
    table = read_synonyms(default_synonyms_path())
    words_of: dict[str, list[str]] = {c: [] for c in COCO_CATEGORIES}
    for synonym, category in table.items():
        words_of[category].append(synonym)
    supercategory = [s for s, n in SUPERCATEGORIES for _ in range(n)]
    categories = [{"id": i + 1, "name": c, "supercategory": supercategory[i]} for i, c in enumerate(COCO_CATEGORIES)]
    # A realistic long tail of filler words (COCO captions use ~25k distinct words), so the word
    # cache meets misses as it would on real captions.
    syllables = ["ba", "ro", "ti", "mel", "zo", "kan", "pri", "lu", "ven", "da", "so", "fir", "gu", "ne", "tal"]
    filler = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))) for _ in range(20000)]
    scene_words = SCENES + filler

    # random.choice/randint cost ~1 us each through randrange; indexing with random() is ~4x cheaper,
    # and the generator makes ~10M draws.
    uniform = rng.random

    def pick(seq: list) -> object:
        return seq[int(uniform() * len(seq))]

    def between(low: int, high: int) -> int:
        return low + int(uniform() * (high - low + 1))

    plural = {w: _plural(w) for words in words_of.values() for w in words}
    category_id = {name: i + 1 for i, name in enumerate(COCO_CATEGORIES)}
    images, annotations, captions = [], [], []
    weights = [30 if c == "person" else 3 if c in ("car", "chair", "cup", "dining table", "bottle") else 1 for c in COCO_CATEGORIES]
    ann_id = cap_id = 0
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"COCO_synth_{image_id:012d}.jpg", "width": 640, "height": 480})
        # A few distinct categories per image (1-4), each with 1-3 instances; ~2% of images have none.
        present = [] if uniform() < 0.02 else list(dict.fromkeys(rng.choices(COCO_CATEGORIES, weights, k=between(1, 4))))
        for name in present:
            for _ in range(between(1, 3)):
                ann_id += 1
                x, y, w, h = between(0, 500), between(0, 380), between(5, 140), between(5, 100)
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": category_id[name],
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                    }
                )
        for _ in range(captions_per_image):
            # Mostly objects of the image, sometimes another one (as human captions name unannotated things).
            pool = present if present and uniform() < 0.9 else COCO_CATEGORIES
            a, b = pick(words_of[pick(pool)]), pick(words_of[pick(pool)])
            text = pick(TEMPLATES).format(
                a=a,
                A=a.capitalize(),
                b=b,
                aa=plural[a],
                bs=plural[b],
                v=pick(VERBS),
                p=pick(PREPS),
                adj=pick(ADJS),
                s=pick(scene_words),
                n=pick(NUMBERS),
            )
            cap_id += 1
            captions.append({"id": cap_id, "image_id": image_id, "caption": text[0].upper() + text[1:]})

    info = {"description": "hallbench synthetic COCO-scale set for bench_chair.py", "version": "1"}
    instances_path, captions_path = root / "instances.json", root / "captions.json"
    # json.dumps (the C encoder) then one write: json.dump streams through the pure-Python encoder, ~10x slower.
    instances_path.write_text(
        json.dumps({"info": info, "images": images, "annotations": annotations, "categories": categories}), encoding="utf-8"
    )
    captions_path.write_text(json.dumps({"info": info, "images": images, "annotations": captions}), encoding="utf-8")
    stats = {"images": len(images), "annotations": len(annotations), "captions": len(captions), "categories": len(categories)}
    return instances_path, captions_path, stats


def generated_captions(scorer: ChairScorer, n: int, seed: int = 1) -> list[tuple[int, str]]:
    """``n`` model-like captions: two to four sentences naming objects of the image and, sometimes, others."""
    rng = random.Random(seed)
    table = read_synonyms(default_synonyms_path())
    words_of: dict[str, list[str]] = {}
    for synonym, category in table.items():
        words_of.setdefault(category, []).append(synonym)
    ids = scorer.image_ids
    pairs = []
    for _ in range(n):
        image_id = rng.choice(ids)
        gt = sorted(scorer.ground_truth(image_id)) or ["person"]
        sentences = ["The image shows"]
        for _ in range(rng.randint(2, 4)):
            category = rng.choice(gt) if rng.random() < 0.75 else rng.choice(COCO_CATEGORIES)
            word = rng.choice(words_of[category])
            word = _plural(word) if rng.random() < 0.3 else word
            sentences.append(f"a {rng.choice(ADJS)} {word} {rng.choice(VERBS)} {rng.choice(PREPS)} the {rng.choice(SCENES)}.")
        pairs.append((image_id, " ".join(sentences)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=120_000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="generate into this dir and keep it (default: a temp dir, removed)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_chair_"))
    root.mkdir(parents=True, exist_ok=True)
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        instances, captions, sizes = generate(root, args.images, args.captions_per_image)
        generate_s = time.perf_counter() - t0
        sizes["instances_mb"] = round(instances.stat().st_size / 1e6, 1)
        sizes["captions_mb"] = round(captions.stat().st_size / 1e6, 1)
        print(f"generated {sizes} in {generate_s:.1f} s under {root}")

        t0 = time.perf_counter()
        built = ChairScorer(instances, captions, cache_dir=cache)
        build_s = time.perf_counter() - t0
        assert not built.loaded_from_cache
        del built

        starts = []
        for _ in range(3):
            t0 = time.perf_counter()
            scorer = ChairScorer(instances, captions, cache_dir=cache)
            starts.append(time.perf_counter() - t0)
            assert scorer.loaded_from_cache
        cached_start_s = statistics.median(starts)

        pairs = generated_captions(scorer, N_SCORED)
        t0 = time.perf_counter()
        results = [scorer.score_caption(image_id, caption) for image_id, caption in pairs]
        score_s = time.perf_counter() - t0
        throughput = N_SCORED / score_s  # cold word cache: the figure compared with the target
        warm = []
        for _ in range(3):
            t0 = time.perf_counter()
            for image_id, caption in pairs:
                scorer.score_caption(image_id, caption)
            warm.append(N_SCORED / (time.perf_counter() - t0))
        metrics = {k: v for k, v in scorer.score(pairs)["metrics"].items() if k != "totals"}
        assert len(results) == N_SCORED
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    figures = {
        "ground_truth_build_s": round(build_s, 2),
        "cached_start_s": round(cached_start_s, 3),
        "cached_start_runs_s": [round(s, 3) for s in starts],
        "scoring_captions_per_s": round(throughput, 0),
        "scoring_captions_per_s_warm_median": round(statistics.median(warm), 0),
        "scored_captions": N_SCORED,
        "generate_s": round(generate_s, 1),
    }
    ratios = {
        "build_s / target": round(build_s / TARGET_BUILD_S, 3),
        "cached_start_s / target": round(cached_start_s / TARGET_CACHED_START_S, 3),
        "captions_per_s / target": round(throughput / TARGET_CAPTIONS_PER_S, 2),
    }
    passed = build_s < TARGET_BUILD_S and cached_start_s < TARGET_CACHED_START_S and throughput >= TARGET_CAPTIONS_PER_S
    print(f"ground-truth build : {build_s:8.2f} s      target < {TARGET_BUILD_S:.0f} s     ratio {ratios['build_s / target']}")
    print(
        f"cached start       : {cached_start_s:8.3f} s      target < {TARGET_CACHED_START_S:.0f} s      ratio {ratios['cached_start_s / target']}"
    )
    print(f"scoring            : {throughput:8.0f} caps/s target >= {TARGET_CAPTIONS_PER_S:.0f}  ratio {ratios['captions_per_s / target']}")
    print(f"scoring, warm cache: {statistics.median(warm):8.0f} caps/s (median of 3 more passes over the same captions)")
    print(f"metrics on the 5,000 synthetic captions: {metrics}")
    print("all targets met" if passed else "TARGET MISSED")

    report = {
        "benchmark": "bench_chair",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "targets": {"build_s": TARGET_BUILD_S, "cached_start_s": TARGET_CACHED_START_S, "captions_per_s": TARGET_CAPTIONS_PER_S},
        "figures": figures,
        "ratios": ratios,
        "all_targets_met": passed,
        "dataset": sizes,
        "synthetic_metrics": metrics,
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "lemminflect": version("lemminflect"),
            "pycocotools": version("pycocotools"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
