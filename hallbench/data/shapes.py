"""The shapes world: a procedurally generated stand-in for COCO + POPE + the users' VQA set.

Every later stage runs on it exactly as on the real data, because it is written in the same file
formats (see ``docs/data_formats.md``):

    DIR/
      images/shapes_{train,val}_NNNNNN.png
      annotations/instances_{train,val}.json   COCO instances (pycocotools-loadable)
      annotations/captions_{train,val}.json    COCO captions, several per image
      synonyms.txt                             CHAIR synonym table (first word = category)
      train.json                               LLaVA conversations (captions + yes/no + VQA)
      eval_vqa.json                            seed-001 VQA format on the val images
      world.json                               the resolved config, categories and themes

Invariants:
- Same ``ShapesConfig`` -> byte-identical files. Each image has its own RNG seeded from
  ``(seed, split, index)``, so one image never depends on how many were drawn before it.
- Every text the world writes (captions, questions, answers) uses only words from
  :func:`vocabulary`, which is fixed by the code, not by the config; the tiny models' word-level
  tokenizer is built from it and never sees an unknown word.
- The co-occurrence bias is real: an image picks one theme and draws each object from that theme
  with probability ``theme_prob``. A model that learns the prior hallucinates theme-mates, which is
  what POPE's adversarial split probes.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from PIL import Image, ImageDraw

from hallbench.errors import HallbenchError
from hallbench.eval.pope import QUESTION_TEMPLATE, existence_question

# Four themes of four glyphs each; an image mostly draws from one theme.
THEMES: dict[str, tuple[str, ...]] = {
    "sky": ("star", "moon", "bolt", "drop"),
    "cards": ("heart", "diamond", "cross", "ring"),
    "geometry": ("square", "triangle", "hexagon", "pentagon"),
    "signs": ("arrow", "circle", "oval", "trapezoid"),
}
CATEGORIES: tuple[str, ...] = tuple(c for members in THEMES.values() for c in members)

# First entry is the category name; the rest are words a caption may use for it (CHAIR maps them back).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "star": ("star",),
    "moon": ("moon", "crescent"),
    "bolt": ("bolt", "lightning bolt", "lightning"),
    "drop": ("drop", "droplet", "teardrop"),
    "heart": ("heart",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "donut", "doughnut"),
    "square": ("square",),
    "triangle": ("triangle",),
    "hexagon": ("hexagon",),
    "pentagon": ("pentagon",),
    "arrow": ("arrow",),
    "circle": ("circle", "disc", "disk"),
    "oval": ("oval", "ellipse"),
    "trapezoid": ("trapezoid", "trapezium"),
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 119, 180),
    "yellow": (230, 190, 20),
    "purple": (148, 103, 189),
    "orange": (255, 127, 14),
}

# Each category's own colour (used with probability ``category_colour_prob``): a shade of one of the
# named colours, distinct for every category, so that colour is a learnable cue to the category
# while captions keep the plain colour word ("a blue star" whichever blue). Consecutive categories
# get consecutive colour names, so the four members of a theme always differ in colour name too.
_COLOUR_NAMES = sorted(COLOURS)
HOME_COLOURS: dict[str, str] = {c: _COLOUR_NAMES[i % len(_COLOUR_NAMES)] for i, c in enumerate(CATEGORIES)}
_SHADES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "blue": ((31, 119, 180), (120, 190, 250), (20, 40, 120)),
    "green": ((44, 160, 44), (150, 230, 110), (10, 90, 60)),
    "orange": ((255, 127, 14), (180, 80, 0), (255, 190, 120)),
    "purple": ((148, 103, 189), (220, 160, 240), (80, 30, 120)),
    "red": ((214, 39, 40), (255, 130, 140), (130, 10, 20)),
    "yellow": ((230, 190, 20), (255, 245, 140), (170, 150, 0)),
}
HOME_RGB: dict[str, tuple[int, int, int]] = {c: _SHADES[HOME_COLOURS[c]][i // len(_COLOUR_NAMES)] for i, c in enumerate(CATEGORIES)}

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Where an object's centre falls, in a 3x3 grid; used by detailed captions.
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)

FINAL_ANSWER_MARKER = "### The final answer is:"

CAPTION_TEMPLATES = (
    "there is {objects} in the image.",
    "an image showing {objects}.",
    "a picture with {objects} on a grey background.",
    "{objects} drawn on a plain background.",
    "a simple drawing of {objects}.",
    "{count} shapes: {objects}.",
)
DETAILED_CAPTION_TEMPLATE = "the image shows {objects}."
CAPTION_PROMPT = "Please describe this image in detail."
LIST_PROMPT = "What objects are in the image?"
COUNT_PROMPT = "How many objects are in the image?"
COLOUR_PROMPT = "What color is the {name} in the image?"
OPEN_PROMPT = "Describe the image briefly."
VQA_SUFFIX = "Explain your reasoning, then give the final answer."
# Words that only the chat templates and the answer formats use.
EXTRA_WORDS = ("user", "assistant", "system", "yes", "no", "i", "see", "it", "is", "and", "of")

_WORD_RE = re.compile(r"\w+|[^\w\s]+")


def split_words(text: str) -> list[str]:
    """Lower-cased words and punctuation runs: the tokenisation of the tiny models' tokenizer."""
    return _WORD_RE.findall(text.lower())


def vocabulary() -> list[str]:
    """Every word the shapes world can write, sorted; fixed by the code, not by a config."""
    texts = [
        *CAPTION_TEMPLATES,
        DETAILED_CAPTION_TEMPLATE,
        CAPTION_PROMPT,
        LIST_PROMPT,
        QUESTION_TEMPLATE,
        "a an",  # the articles of QUESTION_TEMPLATE
        COUNT_PROMPT,
        COLOUR_PROMPT,
        OPEN_PROMPT,
        VQA_SUFFIX,
        FINAL_ANSWER_MARKER,
        *(s for syns in SYNONYMS.values() for s in syns),
        *THEMES,
        *COLOURS,
        *NUMBER_WORDS,
        *(p for row in POSITIONS for p in row),
        *EXTRA_WORDS,
        "a an the at in on , . : ? ; - shapes objects",
        " ".join(str(d) for d in range(10)),
    ]
    return sorted({w for t in texts for w in split_words(re.sub(r"\{\w+\}", " ", t))})


@dataclass(frozen=True)
class ShapesConfig:
    """How to draw a shapes world. Every field is part of the output's identity (``world.json``)."""

    seed: int = 0
    """Master seed; the same config and seed give byte-identical files."""
    n_train: int = 2000
    """Number of training images."""
    n_val: int = 500
    """Number of validation images (POPE, CHAIR and the VQA set are built from these)."""
    image_size: int = 128
    """Side of the square PNG images, in pixels."""
    min_objects: int = 1
    """Fewest objects in an image."""
    max_objects: int = 4
    """Most objects in an image (distinct categories)."""
    theme_prob: float = 0.85
    """Probability that each object comes from the image's theme (the co-occurrence bias)."""
    min_object_frac: float = 0.14
    """Smallest object size as a fraction of the image side."""
    max_object_frac: float = 0.32
    """Largest object size as a fraction of the image side."""
    max_overlap: float = 0.25
    """Largest allowed fraction of an object's box covered by earlier objects (partial occlusion)."""
    clutter: int = 3
    """Number of grey distractor strokes per image (not objects; never annotated)."""
    category_colour_prob: float = 0.0
    """Probability that an object is drawn in its category's own colour (``HOME_COLOURS``) instead of a random one.
    0 (default): colour says nothing about the category; near 1: colour is a strong, learnable cue."""
    captions_per_image: int = 5
    """Reference captions per image in ``captions_*.json``."""
    exist_questions_per_image: int = 2
    """Yes/no existence questions per training image (half yes, half no)."""
    adversarial_negative_prob: float = 0.5
    """Probability that a training 'no' question asks about an absent theme-mate rather than a random absent object."""
    list_questions: bool = True
    """Add one 'what objects are in the image?' question per training image (dense supervision)."""
    vqa_questions_per_image: int = 1
    """Counting/colour questions with reasoning and the final-answer marker, per training image."""

    def __post_init__(self) -> None:
        problems = []
        if self.n_train < 0 or self.n_val < 0:
            problems.append("n_train and n_val must be >= 0")
        if self.image_size < 32:
            problems.append(f"image_size must be >= 32, got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects <= len(CATEGORIES) - 1:
            problems.append(f"need 1 <= min_objects <= max_objects <= {len(CATEGORIES) - 1}, got {self.min_objects}..{self.max_objects}")
        if not 0.0 <= self.category_colour_prob <= 1.0:
            problems.append(f"category_colour_prob must be in [0, 1], got {self.category_colour_prob}")
        if not 0.0 <= self.theme_prob <= 1.0:
            problems.append(f"theme_prob must be in [0, 1], got {self.theme_prob}")
        if not 0.0 < self.min_object_frac <= self.max_object_frac <= 0.9:
            problems.append("need 0 < min_object_frac <= max_object_frac <= 0.9")
        if not 0.0 <= self.max_overlap < 1.0:
            problems.append(f"max_overlap must be in [0, 1), got {self.max_overlap}")
        if self.captions_per_image < 1:
            problems.append("captions_per_image must be >= 1")
        if min(self.clutter, self.exist_questions_per_image, self.vqa_questions_per_image) < 0:
            problems.append("clutter and question counts must be >= 0")
        if problems:
            raise HallbenchError("invalid shapes world config: " + "; ".join(problems))


@dataclass(frozen=True)
class PlacedObject:
    category: str
    colour: str
    bbox: tuple[float, float, float, float]  # COCO x, y, w, h of the drawn pixels
    area: int  # number of drawn pixels in the mask
    position: str  # one of POSITIONS, from the centre of the bbox


def _position_word(cx: float, cy: float, size: int) -> str:
    col = min(2, int(3 * cx / size))
    row = min(2, int(3 * cy / size))
    return POSITIONS[row][col]


# ---------------------------------------------------------------------------------------------
# Glyph masks. Each is drawn at 4x on a square canvas and downsampled, for anti-aliased edges.

_SUPERSAMPLE = 4


def _regular_polygon(n: int, r: float, c: float, rotation: float) -> list[tuple[float, float]]:
    return [(c + r * math.cos(rotation + 2 * math.pi * k / n), c + r * math.sin(rotation + 2 * math.pi * k / n)) for k in range(n)]


def _rotate(points: list[tuple[float, float]], c: float, angle: float) -> list[tuple[float, float]]:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(c + (x - c) * cos - (y - c) * sin, c + (x - c) * sin + (y - c) * cos) for x, y in points]


def _glyph_mask(category: str, size: int, angle: float) -> Image.Image:
    """An L-mode mask of ``size`` x ``size`` with the glyph in white, slightly rotated by ``angle``."""
    s = size * _SUPERSAMPLE
    c, r = s / 2, s * 0.48
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    if category == "circle":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif category == "oval":
        pts = [(c + r * math.cos(t), c + 0.55 * r * math.sin(t)) for t in (2 * math.pi * k / 48 for k in range(48))]
        draw.polygon(_rotate(pts, c, angle), fill=255)
    elif category == "ring":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
        draw.ellipse([c - 0.55 * r, c - 0.55 * r, c + 0.55 * r, c + 0.55 * r], fill=0)
    elif category == "moon":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
        off = 0.45 * r
        dx, dy = off * math.cos(angle - 0.6), off * math.sin(angle - 0.6)
        draw.ellipse([c - r + dx, c - r + dy, c + r + dx, c + r + dy], fill=0)
    elif category == "square":
        draw.polygon(_regular_polygon(4, r, c, math.pi / 4 + angle), fill=255)
    elif category == "diamond":
        pts = [(c, c - r), (c + 0.6 * r, c), (c, c + r), (c - 0.6 * r, c)]
        draw.polygon(_rotate(pts, c, angle), fill=255)
    elif category == "triangle":
        draw.polygon(_regular_polygon(3, r, c, -math.pi / 2 + angle), fill=255)
    elif category == "pentagon":
        draw.polygon(_regular_polygon(5, r, c, -math.pi / 2 + angle), fill=255)
    elif category == "hexagon":
        draw.polygon(_regular_polygon(6, r, c, angle), fill=255)
    elif category == "star":
        pts = [
            (
                c + (r if k % 2 == 0 else 0.42 * r) * math.cos(-math.pi / 2 + angle + math.pi * k / 5),
                c + (r if k % 2 == 0 else 0.42 * r) * math.sin(-math.pi / 2 + angle + math.pi * k / 5),
            )
            for k in range(10)
        ]
        draw.polygon(pts, fill=255)
    elif category == "cross":
        a = 0.3 * r
        pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
        draw.polygon(_rotate([(c + x, c + y) for x, y in pts], c, angle), fill=255)
    elif category == "arrow":
        pts = [(-r, -0.2 * r), (0.1 * r, -0.2 * r), (0.1 * r, -0.6 * r), (r, 0), (0.1 * r, 0.6 * r), (0.1 * r, 0.2 * r), (-r, 0.2 * r)]
        draw.polygon(_rotate([(c + x, c + y) for x, y in pts], c, angle), fill=255)
    elif category == "trapezoid":
        pts = [(-r, 0.55 * r), (r, 0.55 * r), (0.5 * r, -0.55 * r), (-0.5 * r, -0.55 * r)]
        draw.polygon(_rotate([(c + x, c + y) for x, y in pts], c, angle), fill=255)
    elif category == "bolt":
        pts = [(0.2 * r, -r), (-0.5 * r, 0.1 * r), (-0.05 * r, 0.1 * r), (-0.25 * r, r), (0.5 * r, -0.15 * r), (0.05 * r, -0.15 * r)]
        draw.polygon(_rotate([(c + x, c + y) for x, y in pts], c, angle), fill=255)
    elif category == "drop":
        rr = 0.6 * r
        cy = c + 0.35 * r
        draw.ellipse([c - rr, cy - rr, c + rr, cy + rr], fill=255)
        draw.polygon([(c, c - r), (c - 0.95 * rr, cy - 0.3 * rr), (c + 0.95 * rr, cy - 0.3 * rr)], fill=255)
    elif category == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((c + r * x / 17, c + r * (y + 2.5) / 17))
        draw.polygon(_rotate(pts, c, angle), fill=255)
    else:  # pragma: no cover - CATEGORIES and this function are kept in step by a test
        raise ValueError(f"no glyph for category {category!r}")
    return mask.resize((size, size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------------------------
# Scenes


def _box_overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Fraction of square ``a`` (x, y, size) covered by square ``b``."""
    ax, ay, asz = a
    bx, by, bsz = b
    w = max(0, min(ax + asz, bx + bsz) - max(ax, bx))
    h = max(0, min(ay + asz, by + bsz) - max(ay, by))
    return (w * h) / (asz * asz)


def _choose_categories(rng: random.Random, cfg: ShapesConfig) -> tuple[str, list[str]]:
    theme = rng.choice(sorted(THEMES))
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    chosen: list[str] = []
    while len(chosen) < n:
        in_theme = [c for c in THEMES[theme] if c not in chosen]
        off_theme = [c for c in CATEGORIES if c not in chosen and c not in THEMES[theme]]
        pool = in_theme if (in_theme and rng.random() < cfg.theme_prob) or not off_theme else off_theme
        chosen.append(rng.choice(pool))
    return theme, chosen


def draw_scene(rng: random.Random, cfg: ShapesConfig) -> tuple[Image.Image, str, list[PlacedObject]]:
    """One image, its theme and its objects (in drawing order: later objects may occlude earlier ones)."""
    size = cfg.image_size
    grey = rng.randint(205, 235)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    for _ in range(cfg.clutter):
        tone = rng.randint(150, 190)
        x0, y0 = rng.uniform(0, size), rng.uniform(0, size)
        length, ang = rng.uniform(0.1, 0.4) * size, rng.uniform(0, math.pi)
        draw.line(
            [(x0, y0), (x0 + length * math.cos(ang), y0 + length * math.sin(ang))],
            fill=(tone, tone, tone),
            width=max(1, size // 64),
        )
    theme, categories = _choose_categories(rng, cfg)
    boxes: list[tuple[int, int, int]] = []
    objects: list[PlacedObject] = []
    for category in categories:
        for _attempt in range(50):
            side = int(rng.uniform(cfg.min_object_frac, cfg.max_object_frac) * size)
            x, y = rng.randint(0, size - side), rng.randint(0, size - side)
            if all(_box_overlap(b, (x, y, side)) <= cfg.max_overlap for b in boxes):
                break
        # With category_colour_prob 0 no extra random number is drawn, so default worlds are unchanged.
        if cfg.category_colour_prob and rng.random() < cfg.category_colour_prob:
            colour, rgb = HOME_COLOURS[category], HOME_RGB[category]
        else:
            colour = rng.choice(sorted(COLOURS))
            rgb = COLOURS[colour]
        mask = _glyph_mask(category, side, rng.uniform(-0.35, 0.35))
        image.paste(rgb, (x, y), mask)
        bx0, by0, bx1, by1 = mask.getbbox() or (0, 0, side, side)
        area = sum(mask.histogram()[128:])
        bbox = (float(x + bx0), float(y + by0), float(bx1 - bx0), float(by1 - by0))
        boxes.append((x, y, side))
        position = _position_word(bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2, size)
        objects.append(PlacedObject(category, colour, bbox, area, position))
    return image, theme, objects


# ---------------------------------------------------------------------------------------------
# Texts


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _article(word: str) -> str:
    return "an" if word[0] in "aeio" else "a"


def _phrase(rng: random.Random, obj: PlacedObject, *, with_colour: bool, synonyms: bool) -> str:
    name = rng.choice(SYNONYMS[obj.category]) if synonyms else obj.category
    words = f"{obj.colour} {name}" if with_colour else name
    return f"{_article(words)} {words}"


def captions_for(rng: random.Random, objects: list[PlacedObject], n: int) -> list[str]:
    """``n`` distinct-ish reference captions, mixing category names, synonyms and colours."""
    captions = []
    for k in range(n):
        order = list(objects)
        rng.shuffle(order)
        phrases = [_phrase(rng, o, with_colour=rng.random() < 0.7, synonyms=True) for o in order]
        template = CAPTION_TEMPLATES[k % len(CAPTION_TEMPLATES)]
        text = template.format(objects=_join(phrases), count=NUMBER_WORDS[len(objects)])
        captions.append(text[0].upper() + text[1:])
    return captions


def detailed_caption(objects: list[PlacedObject]) -> str:
    """The training target for the caption prompt: every object with colour and position."""
    phrases = [f"{_article(o.colour)} {o.colour} {o.category} at the {o.position}" for o in objects]
    text = DETAILED_CAPTION_TEMPLATE.format(objects=_join(phrases))
    return text[0].upper() + text[1:]


def object_list(objects: list[PlacedObject]) -> str:
    return _join([o.category for o in objects]).capitalize() + "."


def _absent_category(rng: random.Random, theme: str, present: set[str], adversarial: bool) -> str | None:
    mates = [c for c in THEMES[theme] if c not in present]
    others = [c for c in CATEGORIES if c not in present]
    pool = mates if adversarial and mates else others
    return rng.choice(pool) if pool else None


def vqa_item(rng: random.Random, objects: list[PlacedObject], theme: str) -> tuple[str, str, str, str]:
    """One CLOSED question with reasoning: (question, reasoning, answer, kind)."""
    seen = _join([f"{_article(o.colour)} {o.colour} {o.category}" for o in objects])
    reasoning = f"I see {seen}."
    kind = rng.choice(("count", "colour", "exist"))
    if kind == "count":
        return COUNT_PROMPT, reasoning, str(len(objects)), kind
    if kind == "colour":
        obj = rng.choice(objects)
        return COLOUR_PROMPT.format(name=obj.category), reasoning, obj.colour, kind
    present = {o.category for o in objects}
    if rng.random() < 0.5:
        name = rng.choice(sorted(present))
        return existence_question(name), reasoning, "yes", kind
    name = _absent_category(rng, theme, present, adversarial=True) or rng.choice(sorted(present))
    return existence_question(name), reasoning, "yes" if name in present else "no", kind


def with_marker(reasoning: str, answer: str) -> str:
    return f"{reasoning} {FINAL_ANSWER_MARKER} {answer}"


# ---------------------------------------------------------------------------------------------
# Writing


def _image_id(split: str, index: int, cfg: ShapesConfig) -> int:
    # Train ids 1..n_train, val ids after them: unique across splits, like COCO.
    return 1 + index + (cfg.n_train if split == "val" else 0)


def _dump_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def synonyms_table() -> str:
    """The CHAIR synonym table for the shapes world: one line per category, first word the category."""
    return "".join(", ".join(SYNONYMS[c]) + "\n" for c in CATEGORIES)


def generate_shapes(cfg: ShapesConfig, out: str | Path, progress: bool = False) -> Path:
    """Write a shapes world into ``out`` (created if needed) and return ``out``.

    ``world.json`` is written last, so its presence means the world is complete.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [
        {"id": i + 1, "name": name, "supercategory": theme}
        for i, name in enumerate(CATEGORIES)
        for theme in [next(t for t, m in THEMES.items() if name in m)]
    ]
    cat_id = {c["name"]: c["id"] for c in categories}
    train_records: list[dict] = []
    vqa_records: list[dict] = []
    counts = {"train": cfg.n_train, "val": cfg.n_val}

    task = None
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("drawing shapes", total=cfg.n_train + cfg.n_val)
    try:
        for split, n_images in counts.items():
            images, instances, captions = [], [], []
            for index in range(n_images):
                rng = random.Random(f"shapes-{cfg.seed}-{split}-{index}")
                image_id = _image_id(split, index, cfg)
                file_name = f"shapes_{split}_{image_id:06d}.png"
                image, theme, objects = draw_scene(rng, cfg)
                image.save(out / "images" / file_name, format="PNG")
                images.append({"id": image_id, "file_name": file_name, "width": cfg.image_size, "height": cfg.image_size})
                for obj in objects:
                    x, y, w, h = obj.bbox
                    instances.append(
                        {
                            "id": len(instances) + 1 + image_id * 100,
                            "image_id": image_id,
                            "category_id": cat_id[obj.category],
                            "bbox": [x, y, w, h],
                            "area": obj.area,
                            "iscrowd": 0,
                            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                            "attributes": {"colour": obj.colour},
                        }
                    )
                for caption in captions_for(rng, objects, cfg.captions_per_image):
                    captions.append({"id": len(captions) + 1 + image_id * 100, "image_id": image_id, "caption": caption})
                if split == "train":
                    train_records.extend(_training_records(rng, cfg, image_id, file_name, theme, objects))
                else:
                    vqa_records.extend(_vqa_records(rng, image_id, file_name, theme, objects))
                if bar is not None:
                    bar.advance(task)
            info = {"description": f"hallbench shapes world ({split})", "version": "1", "year": 2026}
            _dump_json(
                out / "annotations" / f"instances_{split}.json",
                {"info": info, "licenses": [], "images": images, "annotations": instances, "categories": categories},
            )
            _dump_json(
                out / "annotations" / f"captions_{split}.json",
                {"info": info, "licenses": [], "images": images, "annotations": captions},
            )
    finally:
        if bar is not None:
            bar.stop()
    _dump_json(out / "train.json", train_records)
    _dump_json(out / "eval_vqa.json", vqa_records)
    (out / "synonyms.txt").write_text(synonyms_table(), encoding="utf-8")
    _dump_json(
        out / "world.json",
        {
            "config": asdict(cfg),
            "categories": list(CATEGORIES),
            "themes": {k: list(v) for k, v in THEMES.items()},
            "colours": sorted(COLOURS),
            "final_answer_marker": FINAL_ANSWER_MARKER,
        },
    )
    return out


def _conversation(record_id: str, file_name: str, question: str, answer: str) -> dict:
    return {
        "id": record_id,
        "image": file_name,
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
    }


def _training_records(
    rng: random.Random, cfg: ShapesConfig, image_id: int, file_name: str, theme: str, objects: list[PlacedObject]
) -> list[dict]:
    records = [_conversation(f"{image_id}-caption", file_name, CAPTION_PROMPT, detailed_caption(objects))]
    if cfg.list_questions:
        records.append(_conversation(f"{image_id}-list", file_name, LIST_PROMPT, object_list(objects)))
    present = {o.category for o in objects}
    for k in range(cfg.exist_questions_per_image):
        if k % 2 == 0:
            name, answer = rng.choice(sorted(present)), "Yes."
        else:
            adversarial = rng.random() < cfg.adversarial_negative_prob
            name = _absent_category(rng, theme, present, adversarial)
            if name is None:
                continue
            answer = "No."
        records.append(_conversation(f"{image_id}-exist-{k}", file_name, existence_question(name), answer))
    for k in range(cfg.vqa_questions_per_image):
        question, reasoning, answer, _kind = vqa_item(rng, objects, theme)
        records.append(_conversation(f"{image_id}-vqa-{k}", file_name, f"{question} {VQA_SUFFIX}", with_marker(reasoning, answer)))
    return records


def _vqa_records(rng: random.Random, image_id: int, file_name: str, theme: str, objects: list[PlacedObject]) -> list[dict]:
    question, reasoning, answer, kind = vqa_item(rng, objects, theme)
    return [
        {
            "id": f"{image_id}-closed",
            "img_name": file_name,
            "question": f"<image>\n{question} {VQA_SUFFIX}",
            "reasoning": reasoning,
            "answer": answer,
            "answer_type": "CLOSED",
            "kind": kind,
        },
        {
            "id": f"{image_id}-open",
            "img_name": file_name,
            "question": f"<image>\n{OPEN_PROMPT} {VQA_SUFFIX}",
            "reasoning": "",
            "answer": captions_for(rng, objects, 1)[0],
            "answer_type": "OPEN",
            "kind": "describe",
        },
    ]


def config_from_overrides(**overrides: object) -> ShapesConfig:
    """A ``ShapesConfig`` with ``overrides`` applied; unknown keys are an error naming the valid ones."""
    known = {f.name for f in fields(ShapesConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise HallbenchError(f"unknown shapes world option(s) {unknown}; valid options: {sorted(known)}")
    return ShapesConfig(**overrides)  # type: ignore[arg-type]
