"""CHAIR: object hallucination in generated captions (Rohrbach et al. 2018).

CHAIR compares the objects a caption names with the objects an image contains:

- **CHAIRs** (sentence level) = captions naming at least one object absent from the image / captions.
- **CHAIRi** (instance level) = object mentions whose object is absent / all object mentions.
- **Recall** = objects of the image that the caption names / objects of the image (both summed over
  captions; each object counted once per caption).
- **Len** = mean caption length in words.

The ground truth of an image is the union of its instance annotations' categories and the objects
named in its reference captions (the original CHAIR does the same: instance annotations miss plainly
visible objects). Objects are the categories of a synonym table (``coco_synonyms.txt``, one line per
category, first entry the category), so "puppy" counts as a dog.

How a caption is read (:meth:`ChairScorer.caption_mentions`):

1. Lower-case and split into words (letters and digits; an apostrophe or a hyphen inside a word
   keeps it whole: "man's", "tie-dye"). ``n_words`` is the number of these words. A hyphenated
   compound names an object when it is (the start of) a table phrase ("hot-dog" is a hot dog);
   otherwise only its last element can ("police-dog" is a dog; "cat-shaped", "tie-dye",
   "horse-drawn" name nothing).
2. Singularise each word with lemminflect (``getLemma(word, upos="NOUN")``), except a word that
   appears verbatim in a phrase of the synonym table (or of the special cases), which is kept as it
   is: "bus" stays "bus" and "skis", "scissors", "people", "children" and "oxen" stay themselves,
   while "buses", "wine glasses" and "mice" become "bus", "wine glass" and "mouse". A possessive
   "'s" is dropped first.
3. Match phrases left to right, longest first (three words, then two, then one), so "hot dog" is one
   hot dog and not a dog, "teddy bear" is not a bear and "stove top oven" is one oven.
4. Apply the special cases of the original CHAIR (see ``_special_phrases`` and
   ``CONTEXT_EXCLUSIONS``): "baby elephant" is an elephant and no person, "passenger jet" an
   airplane and no person, "bow tie" one tie, "toilet seat" a toilet and no chair.
5. hallbench's own rules (``MODIFIED_HEADS``, ``VERB_SUBJECTS``): a category word modifying a noun
   that names another thing is no mention ("train tracks", "bus stop", "toilet paper"), nor is one
   used as a verb ("A man ties his shoe"); "train car" is a train.

Mention counting follows the original code (``utils/chair.py`` of LisaAnne/Hallucination, whose
``compute_chair`` adds ``len(node_words)`` per caption): **every mention counts**, so "a dog chases
another dog" is two dog mentions for CHAIRi (two hallucinated mentions if there is no dog).
CHAIRs and Recall use distinct objects. The totals also report distinct-object counts
(``distinct_objects``, ``hallucinated_objects``) for anyone who needs the per-caption-distinct
variant.

Division guards: a ratio with a zero denominator is ``None`` (undefined), never 0.0 and never a
``ZeroDivisionError``: CHAIRs and Len with no captions, CHAIRi with no object mention, Recall with no
ground-truth object. ``None`` rather than 0.0 because 0.0 would read as a perfect score.

The ground-truth index is cached as JSON in ``cache_dir``, keyed by the sha256 of the annotation
files, the synonym table, the lemminflect version and :data:`CODE_VERSION`; any change to one of
them builds a new index.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.resources
import io
import itertools
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hallbench.data.formats import read_coco_captions, read_coco_instances, read_synonyms, read_utf8
from hallbench.errors import DataFormatError, HallbenchError, shorten
from hallbench.eval.benchmark import BenchmarkSpec, DetailTable, Metric, metric_values
from hallbench.provenance import sha256_file

# Bump whenever a change here can change a ground-truth index or a mention (tokenisation,
# singularisation, special cases, cache layout): it is part of the cache key, so old caches are never
# reused, and every summary records it. tests/test_versions.py fails on an edit without a bump.
CODE_VERSION = "chair-gt-3"

# The metrics, declared once (hallbench/eval/benchmark.py): ratios of per-caption fields (_fields),
# computed by aggregate() for summary.json and by the report for its intervals.
CHAIR_METRICS: tuple[Metric, ...] = (
    Metric("chair_s", "hallucinated_caption", label="CHAIRs", higher_is_better=False,
           description="CHAIRs: share of captions naming at least one object absent from the image (None with no captions)"),
    Metric("chair_i", "hallucinated_mentions", "mentions", label="CHAIRi", higher_is_better=False,
           description="CHAIRi: share of object mentions whose object is absent from the image, every mention counted (None with no mention)"),
    Metric("recall", "recalled", "ground_truth", label="Recall",
           description="Recall: share of the image's objects that the caption names, summed over captions (None with no ground-truth object)"),
    Metric("len", "words", label="Len", higher_is_better=None, scale=1.0, unit="words",
           description="Len: mean caption length in words (None with no captions)"),
)  # fmt: skip


def _fields(result: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, float]:
    """The per-caption fields of the CHAIR metrics, from a :meth:`ChairScorer.score_caption` result."""
    return {
        "hallucinated_caption": 1.0 if result["hallucinated"] else 0.0,
        "hallucinated_mentions": float(len(result["hallucinated"])),
        "mentions": float(len(result["mentioned"])),
        "recalled": float(len(result["recalled_objects"])),
        "ground_truth": float(len(result["ground_truth"])),
        "words": float(result["n_words"]),
    }


DEFAULT_SYNONYMS_RESOURCE = "coco_synonyms.txt"

# ---------------------------------------------------------------------------------------------
# Special cases of the original CHAIR, in one place (applied by _special_phrases and _match). A rule
# naming a category only applies when the synonym table has that category, so a table without them
# (the shapes world) is unaffected; "home plate" (no object) applies to every table.

# A qualifier directly before an animal word describes the animal, it is not a person: "baby
# elephant" is one elephant. The original uses "baby" and "adult"; "young", "mother", "father",
# "male" and "female" are added (the person-synonyms among them fire falsely the same way in
# "mother cat" or "female giraffe"; "young" is harmless and documents intent).
ANIMAL_QUALIFIERS: tuple[str, ...] = ("baby", "adult", "young", "mother", "father", "male", "female")
# Every synonym of these categories is an animal word (the original lists the category names only).
ANIMAL_CATEGORIES: tuple[str, ...] = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")
# Animal words that are no COCO object: "baby animal" and "baby cub" name nothing (and no person).
NON_OBJECT_ANIMAL_WORDS: tuple[str, ...] = ("animal", "cub")
# "passenger jet" is an airplane, not a person. The original covers "passenger jet" and
# "passenger train"; here every synonym of these vehicle categories ("passenger plane/bus/ferry").
PASSENGER_VEHICLE_CATEGORIES: tuple[str, ...] = ("airplane", "train", "bus", "boat")
# Phrases read as one unit: phrase -> category (None: the phrase names no object at all).
FIXED_PHRASES: dict[str, str | None] = {
    "bow tie": "tie",  # one tie; "bow" alone is also a tie, the phrase must not count twice
    "toilet seat": "toilet",  # the seat of a toilet is not a chair
    "home plate": None,  # baseball's home plate: no object (kept from the original's phrase list)
    "train car": "train",  # a railway car is part of a train, not an automobile (hallbench's own)
}
# A phrase that names no object when the caption mentions a given category: "the seat of the
# toilet" must not fire "chair". The original drops "seat" from any caption containing the word
# "toilet"; here any mention of the toilet category (toilet, urinal, commode, ...) does.
CONTEXT_EXCLUSIONS: dict[str, str] = {"seat": "toilet"}
# Rules of hallbench's own (the original CHAIR and OPERA's copy have none of them), each a class of
# false mentions found on probe captions (docs/evaluation.md has the measured differences):
#
# A category word directly before one of these nouns modifies it and names another thing, which
# does not show the object: "train tracks", "bus stop", "dog leash", "toilet paper", "pizza box"
# (places, infrastructure, containers and accessories of the object). Compared with the caption's
# own word, not its singular (lemminflect makes "parked" "park"); plurals are listed where the word
# is no common verb ("the bus stops", "a dog stands" keep their bus and dog). A table phrase wins
# ("stop sign", "hot dog"), and "bus stop sign" is a stop sign.
MODIFIED_HEADS: frozenset[str] = frozenset(
    {
        "track", "station", "stop", "shelter", "terminal", "depot", "platform", "lane", "route", "crossing", "rack", "park",
        "parking", "garage", "house", "food", "bowl", "leash", "collar", "crate", "cage", "feeder", "toy", "trailer",
        "stable", "stall", "paper", "box", "carton", "ramp", "dock", "string",
        "tracks", "stations", "shelters", "terminals", "depots", "platforms", "lanes", "routes", "crossings", "racks",
        "garages", "bowls", "leashes", "collars", "crates", "cages", "feeders", "toys", "trailers", "stables", "stalls",
        "papers", "cartons", "ramps", "strings",
    }
)  # fmt: skip
# A category word used as a verb: after a subject (a person word of the table, or one of these
# pronouns; not a possessive) and before one of the words below, "A man ties his shoe" and "The boy
# skis down the hill" name no tie and no skis. Both sides are required, so "a man with two ties"
# and "a woman's bag on the bench" keep their objects.
VERB_SUBJECTS: frozenset[str] = frozenset({"he", "she", "it", "they", "who", "that", "someone", "somebody", "everyone"})
VERB_FOLLOWERS: frozenset[str] = frozenset(
    {"his", "her", "their", "its", "my", "your", "our", "the", "a", "an", "up", "down", "back", "off", "together"}
)
# A hyphenated compound is one word (as in the originals' tokenisers). It names an object when the
# compound is a table phrase, or the start of one ("hot-dog", "stove-top oven"); otherwise only its
# last element can name one (the head of an English compound: "police-dog" is a dog), and the
# elements before it are modifiers: "cat-shaped", "tie-dye", "dog-friendly", "horse-drawn" name no
# cat, tie, dog or horse.
_BLOCKED = "\x00"  # a modifier element of a compound: it matches no phrase

_WORD_RE = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"'\u2019\u201d)\]]*(?=\s|$)")


def default_synonyms_path() -> Path:
    """The packaged COCO synonym table (``hallbench/eval/data/coco_synonyms.txt``).

    hallbench is installed as files (a wheel or ``pip install -e``), never zipped, so the resource is
    a real file path.
    """
    resource = importlib.resources.files("hallbench.eval").joinpath("data", DEFAULT_SYNONYMS_RESOURCE)
    return Path(str(resource))


def split_words(text: str) -> list[str]:
    """The lower-cased words of ``text`` as CHAIR counts them (punctuation dropped; a hyphenated compound is one word)."""
    return _WORD_RE.findall(text.lower())


def drop_incomplete_sentence(text: str) -> str:
    """``text`` without a trailing sentence that does not end with ``.``, ``!`` or ``?``.

    For captions cut by ``max_new_tokens``: "A dog on a bed. A cat sits on the" becomes "A dog on a
    bed.". A sentence end is a run of ``.!?`` (optionally followed by closing quotes or brackets)
    before whitespace or the end of the text, so "2.5" is no sentence end. A text without any
    complete sentence, or whose last sentence is complete, is returned unchanged.
    """
    ends = list(_SENTENCE_END_RE.finditer(text))
    last = ends[-1] if ends else None
    if last is None or not text[last.end() :].strip():
        return text
    return text[: last.end()]


def _lemminflect_version() -> str:
    try:
        return importlib.metadata.version("lemminflect")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - lemminflect is a dependency
        return "unknown"


def _image_key(image_id: object) -> int:
    """An image id as the int COCO uses; a string of digits (from a file name or JSON key) is accepted."""
    if isinstance(image_id, str) and image_id.strip().isdigit():
        return int(image_id)
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        raise HallbenchError(f"CHAIR: expected an integer COCO image id, found {type(image_id).__name__} {shorten(image_id)}")
    return image_id


def _ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or ``None`` when the denominator is zero (an undefined metric)."""
    return numerator / denominator if denominator else None


# ---------------------------------------------------------------------------------------------
# The scorer


class _Index(NamedTuple):
    """The ground truth of every image, compact: what is cached as JSON.

    Images with the same objects share one entry of ``sets``. The scorer turns a set into a
    frozenset of names on first use only, so that loading stays a ``json.loads`` and a ``dict``.
    """

    categories: list[str]  # category names; ``sets`` hold indices into this list
    image_ids: list[int]  # every image of the instances file, sorted
    set_of_image: list[int]  # per image (parallel to image_ids): its index into ``sets``
    sets: list[list[int]]  # distinct ground-truth sets, as sorted category indices
    ignored_captions: int  # reference captions of images absent from the instances file
    file_names: list[str]  # per image (parallel to image_ids): its file name, for the generation engine


class ChairScorer:
    """Scores captions of COCO-format images with CHAIR.

    Args:
        instances: a COCO instances file (``images``, ``annotations``, ``categories``). Its
            ``images`` are the images that can be scored; one without annotations has no instance
            objects (a valid, possibly empty, ground truth). Every category name must be in the
            synonym table.
        captions: an optional COCO captions file; objects named in an image's reference captions
            join its ground truth. Captions of images absent from ``instances`` are ignored (and
            counted in ``ignored_captions``); a file sharing no image with ``instances`` is an error.
        synonyms: the synonym table (default: the packaged COCO table, :func:`default_synonyms_path`).
        cache_dir: where the ground-truth index is cached (created if needed); ``None`` disables
            the cache.

    Attributes:
        loaded_from_cache: True when the index came from ``cache_path`` (no annotation file was parsed).
        cache_path: the cache file for these inputs, or None without ``cache_dir``.
        categories: the synonym table's categories, sorted.
    """

    def __init__(
        self,
        instances: str | Path,
        captions: str | Path | None = None,
        synonyms: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.instances_path = Path(instances)
        self.captions_path = Path(captions) if captions is not None else None
        self.synonyms_path = Path(synonyms) if synonyms is not None else default_synonyms_path()
        self.synonyms = read_synonyms(self.synonyms_path)  # synonym -> category; errors name the line
        self.categories: list[str] = sorted(set(self.synonyms.values()))
        self.phrases = _special_phrases(self.synonyms)  # phrase -> category, or None for "names nothing"
        # Words appearing verbatim in a phrase are never singularised ("bus", "skis", "people"): a
        # caption word equal to one matches as written, and any other word is singularised onto it.
        self._table_words = frozenset(w for phrase in self.phrases for w in phrase.split())
        # First word -> [(tail words, category or None, phrase)], longest phrase first.
        self._by_first: dict[str, list[tuple[list[str], str | None, str]]] = {}
        for phrase, category in sorted(self.phrases.items(), key=lambda item: -len(item[0].split())):
            first, *tail = phrase.split()
            self._by_first.setdefault(first, []).append((tail, category, phrase))
        self._exclusions = {p: c for p, c in CONTEXT_EXCLUSIONS.items() if p in self.phrases and c in self.categories}
        self._word_cache: dict[str, str] = {}

        for path, what in ((self.instances_path, "COCO instances file"), (self.captions_path, "COCO captions file")):
            if path is not None and not path.is_file():
                raise DataFormatError(path, None, f"an existing {what}", "no such file")

        self.cache_key = self._cache_key()
        self.cache_path = Path(cache_dir) / f"chair_gt_{self.cache_key}.json" if cache_dir is not None else None
        self.loaded_from_cache = False
        self.ignored_captions = 0
        index = self._load_cache() if self.cache_path is not None else None
        if index is None:
            index = self._build_index()
            if self.cache_path is not None:
                self._write_cache(index)
        else:
            self.loaded_from_cache = True
        self.ignored_captions = index.ignored_captions
        self._index = index
        self._set_of_image: dict[int, int] = dict(zip(index.image_ids, index.set_of_image, strict=True))
        self._frozen: dict[int, frozenset[str]] = {}  # set number -> category names, filled on first use

    # -- ground truth --------------------------------------------------------------------------

    @property
    def image_ids(self) -> list[int]:
        """The ids of the images that can be scored (those of the instances file), sorted."""
        return list(self._index.image_ids)

    def image_files(self) -> list[tuple[int, str]]:
        """``(image_id, file_name)`` of every image of the instances file, by id."""
        return list(zip(self._index.image_ids, self._index.file_names, strict=True))

    def __contains__(self, image_id: object) -> bool:
        try:
            return _image_key(image_id) in self._set_of_image
        except HallbenchError:
            return False

    def ground_truth(self, image_id: int) -> frozenset[str]:
        """The categories present in ``image_id``; an id absent from the instances file is an error."""
        return self._gt_of(_image_key(image_id))

    def _gt_of(self, image_id: int) -> frozenset[str]:
        number = self._set_of_image.get(image_id)
        if number is None:
            ids = self._index.image_ids
            span = f"ids {ids[0]}..{ids[-1]}" if ids else "no image at all"
            raise HallbenchError(
                f"CHAIR: image id {image_id} has no annotation in {self.instances_path}: "
                f"expected an id of its 'images' list ({len(ids)} images, {span})"
            )
        gt = self._frozen.get(number)
        if gt is None:
            names = self._index.categories
            gt = self._frozen[number] = frozenset(names[i] for i in self._index.sets[number])
        return gt

    def _cache_key(self) -> str:
        digest = hashlib.sha256()
        parts = [
            f"code:{CODE_VERSION}",
            f"lemminflect:{_lemminflect_version()}",
            f"instances:{sha256_file(self.instances_path)}",
            f"captions:{sha256_file(self.captions_path) if self.captions_path is not None else 'none'}",
            f"synonyms:{sha256_file(self.synonyms_path)}",
        ]
        digest.update("\n".join(parts).encode())
        return digest.hexdigest()

    def _build_index(self) -> _Index:
        """Parse the annotation files (validated by the hallbench readers) into the ground-truth index."""
        from pycocotools.coco import COCO

        data = read_coco_instances(self.instances_path)  # validated: ids unique, references resolve
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
            coco.createIndex()
        category_of: dict[int, str] = {}
        for i, category in enumerate(data["categories"]):
            name = category["name"].strip().lower()
            if name not in self.synonyms:
                raise DataFormatError(
                    self.instances_path,
                    f"$.categories[{i}].name",
                    f"a category of the synonym table {self.synonyms_path}",
                    repr(category["name"]),
                )
            category_of[category["id"]] = self.synonyms[name]
        gt: dict[int, set[str]] = {image_id: set() for image_id in coco.getImgIds()}
        for image_id, anns in coco.imgToAnns.items():
            gt[image_id].update(category_of[ann["category_id"]] for ann in anns)

        ignored = 0
        if self.captions_path is not None:
            captions = read_coco_captions(self.captions_path)
            shared = 0
            for image_id, texts in captions.items():
                if not texts:
                    continue  # an image listed without caption: nothing to add, nothing to check
                objects = gt.get(image_id)
                if objects is None:
                    ignored += len(texts)
                    continue
                shared += 1
                for text in texts:
                    objects.update(m["category"] for m in self.caption_mentions(text))
            if ignored and not shared:  # surely the wrong file (another split, another dataset)
                with_text = [image_id for image_id, texts in captions.items() if texts]
                raise DataFormatError(
                    self.captions_path,
                    "$.annotations",
                    f"captions of images listed in {self.instances_path}",
                    f"none of its {len(with_text)} captioned image ids (for example {with_text[0]}) among them",
                )

        position = {name: i for i, name in enumerate(self.categories)}
        image_ids = sorted(gt)
        set_number: dict[tuple[int, ...], int] = {}
        set_of_image = [set_number.setdefault(tuple(sorted(position[c] for c in gt[i])), len(set_number)) for i in image_ids]
        file_names = [coco.imgs[i]["file_name"] for i in image_ids]
        return _Index(self.categories, image_ids, set_of_image, [list(members) for members in set_number], ignored, file_names)

    def _load_cache(self) -> _Index | None:
        """The cached index, or None when there is none or it is unusable (then it is rebuilt)."""
        assert self.cache_path is not None
        try:
            payload = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        # The key is in the file name and in the file: a renamed or truncated file is not trusted.
        if not isinstance(payload, dict) or payload.get("key") != self.cache_key:
            return None
        try:
            index = _Index(*(payload[field] for field in _Index._fields))
            # Cheap structural checks (the key already vouches for the content): every reference resolves.
            n_sets, n_names = len(index.sets), len(index.categories)
            if not len(index.image_ids) == len(index.set_of_image) == len(index.file_names) or not isinstance(index.ignored_captions, int):
                return None
            if index.set_of_image and not (min(index.set_of_image) >= 0 and max(index.set_of_image) < n_sets):
                return None
            members = list(itertools.chain.from_iterable(index.sets))
            if members and not (min(members) >= 0 and max(members) < n_names):
                return None
        except (KeyError, TypeError, ValueError):
            return None
        return index

    def _write_cache(self, index: _Index) -> None:
        """Write the index atomically: a temp file in the cache dir, then ``os.replace``."""
        assert self.cache_path is not None
        payload = {
            "format": "hallbench-chair-ground-truth",
            "key": self.cache_key,
            "code_version": CODE_VERSION,
            "instances": str(self.instances_path),
            "captions": str(self.captions_path) if self.captions_path is not None else None,
            "synonyms": str(self.synonyms_path),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **index._asdict(),
        }
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=self.cache_path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(payload, separators=(",", ":")))  # C encoder; json.dump is pure Python
            os.replace(tmp, self.cache_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- reading captions ----------------------------------------------------------------------

    def _normalise(self, word: str) -> str:
        """The singular form used for matching (cached: the vocabulary of captions is small)."""
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached
        base = word.replace("\u2019", "'")
        if base.endswith("'s"):
            base = base[:-2]
        if base in self._table_words:
            result = base  # the table's own spelling wins: "bus", "skis", "people" are not changed
        else:
            from lemminflect import getLemma

            lemmas = getLemma(base, upos="NOUN")
            result = lemmas[0] if lemmas else base
        self._word_cache[word] = result
        return result

    def caption_mentions(self, caption: str) -> list[dict[str, Any]]:
        """The object mentions of ``caption``, in order: ``{"category", "words", "position"}``.

        ``words`` are the caption's own (lower-cased) words that named the object, ``position`` the
        index of the first of them in :func:`split_words`. Needs no ground truth.
        """
        return self._match(split_words(caption))

    def _starts_phrase(self, parts: list[str]) -> bool:
        """Whether ``parts`` (singular forms) are a table phrase or the start of one."""
        rest = parts[1:]
        return any(tail[: len(rest)] == rest for tail, _, _ in self._by_first.get(parts[0], ()))

    def _units(self, words: list[str]) -> tuple[list[str], list[int]]:
        """The singular forms matched against the table, and the index in ``words`` each comes from.

        A hyphenated compound becomes its elements when it is (the start of) a table phrase, else
        blocked modifiers followed by its last element (see ``_BLOCKED``).
        """
        cache = self._word_cache
        units: list[str] = []
        origin: list[int] = []
        for index, word in enumerate(words):
            if "-" not in word:
                units.append(cache.get(word) or self._normalise(word))
                origin.append(index)
                continue
            parts = [cache.get(p) or self._normalise(p) for p in word.split("-")]
            if not self._starts_phrase(parts):
                parts = [_BLOCKED] * (len(parts) - 1) + parts[-1:]
            units += parts
            origin += [index] * len(parts)
        return units, origin

    def _is_verb(self, words: list[str], units: list[str], origin: list[int], start: int, end: int) -> bool:
        """A one-word mention used as a verb: subject before it, a determiner or particle after it (``VERB_SUBJECTS``)."""
        if end - start != 1 or start == 0 or end >= len(units):
            return False
        before = words[origin[start - 1]]
        if before.endswith(("'s", "\u2019s")):
            return False
        subject = units[start - 1] in VERB_SUBJECTS or self.phrases.get(units[start - 1]) == "person"
        return subject and units[end] in VERB_FOLLOWERS

    def _match(self, words: list[str]) -> list[dict[str, Any]]:
        units, origin = self._units(words)
        by_first = self._by_first
        found: list[tuple[str, str, int, str]] = []  # (category, words, position, phrase)
        # Left to right over the units that can start a phrase; a match consumes its units (``free``
        # is the first unit not consumed), and the longest phrase at a position wins.
        free = 0
        for i in [i for i, w in enumerate(units) if w in by_first]:
            if i < free:
                continue
            for tail, category, phrase in by_first[units[i]]:
                end = i + 1 + len(tail)
                if units[i + 1 : end] == tail:  # a slice past the end is shorter than tail: no match
                    # (a possessive is no compound modifier: "the dog's bowl")
                    modifier = (
                        end < len(units)
                        and origin[end] != origin[end - 1]
                        and words[origin[end]] in MODIFIED_HEADS
                        and not words[origin[end - 1]].endswith(("'s", "\u2019s"))
                    )
                    if category is not None and not modifier and not self._is_verb(words, units, origin, i, end):
                        span = dict.fromkeys(origin[i:end])  # the caption's words, a compound once
                        found.append((category, " ".join(words[k] for k in span), origin[i], phrase))
                    free = end
                    break
        if self._exclusions and found:
            present = {category for category, _, _, _ in found}
            found = [f for f in found if self._exclusions.get(f[3]) not in present]
        return [{"category": c, "words": w, "position": p} for c, w, p, _ in found]

    # -- scoring -------------------------------------------------------------------------------

    def score_caption(self, image_id: int, caption: str) -> dict[str, Any]:
        """CHAIR for one caption of ``image_id``.

        Returns a JSON-ready dict: ``image_id``, ``caption``, ``n_words``; ``mentioned`` (every
        object mention in order, ``{"category", "words", "position"}``), ``mentioned_objects``
        (distinct categories, first-mention order), ``hallucinated`` (the mentions whose category
        is not in the ground truth), ``hallucinated_objects`` (distinct), ``recalled_objects``
        (distinct mentioned categories that are in the ground truth, sorted), ``ground_truth``
        (sorted); and the caption's own ``chair_s`` (0 or 1) and ``chair_i`` (None without mentions).
        """
        image_id = _image_key(image_id)
        if not isinstance(caption, str):
            raise HallbenchError(
                f"CHAIR: expected the caption of image {image_id} as a string, found {type(caption).__name__} {shorten(caption)}"
            )
        gt = self._gt_of(image_id)
        words = split_words(caption)
        mentioned = self._match(words)
        hallucinated = [m for m in mentioned if m["category"] not in gt]
        objects = list(dict.fromkeys(m["category"] for m in mentioned))
        return {
            "image_id": image_id,
            "caption": caption,
            "n_words": len(words),
            "mentioned": mentioned,
            "mentioned_objects": objects,
            "hallucinated": hallucinated,
            "hallucinated_objects": list(dict.fromkeys(m["category"] for m in hallucinated)),
            "recalled_objects": sorted(c for c in objects if c in gt),
            "ground_truth": sorted(gt),
            "chair_s": int(bool(hallucinated)),
            "chair_i": _ratio(len(hallucinated), len(mentioned)),
        }

    def score(self, items: Iterable[tuple[int, str]]) -> dict[str, Any]:
        """Score ``(image_id, caption)`` pairs: ``{"metrics": aggregate(...), "captions": [...]}``."""
        per_caption = [self.score_caption(image_id, caption) for image_id, caption in items]
        return {"metrics": aggregate(per_caption), "captions": per_caption}


def aggregate(per_caption: list[Mapping[str, Any]]) -> dict[str, Any]:
    """CHAIRs, CHAIRi, Recall and Len over the results of :meth:`ChairScorer.score_caption`.

    Returns ``chair_s``, ``chair_i``, ``recall``, ``len`` (each None when undefined: no caption, no
    object mention, no ground-truth object), ``n`` (captions) and ``totals``, the counts behind them:
    ``captions``, ``hallucinated_captions``, ``words``, ``mentions``, ``hallucinated_mentions``,
    ``distinct_objects``, ``hallucinated_objects`` (both counted once per caption),
    ``recalled_objects`` and ``ground_truth_objects``.
    """
    totals = dict.fromkeys(
        (
            "captions",
            "hallucinated_captions",
            "words",
            "mentions",
            "hallucinated_mentions",
            "distinct_objects",
            "hallucinated_objects",
            "recalled_objects",
            "ground_truth_objects",
        ),
        0,
    )
    for result in per_caption:
        totals["captions"] += 1
        totals["hallucinated_captions"] += 1 if result["hallucinated"] else 0
        totals["words"] += result["n_words"]
        totals["mentions"] += len(result["mentioned"])
        totals["hallucinated_mentions"] += len(result["hallucinated"])
        totals["distinct_objects"] += len(result["mentioned_objects"])
        totals["hallucinated_objects"] += len(result["hallucinated_objects"])
        totals["recalled_objects"] += len(result["recalled_objects"])
        totals["ground_truth_objects"] += len(result["ground_truth"])
    return {**metric_values(SPEC, per_caption), "n": totals["captions"], "totals": totals}


def _special_phrases(synonyms: Mapping[str, str]) -> dict[str, str | None]:
    """Every phrase the matcher knows: the table's synonyms plus the special cases above.

    A special case never overrides a table entry, and one naming a category the table lacks is
    skipped, so the rules are inert on other tables (the shapes world).
    """
    phrases: dict[str, str | None] = dict(synonyms)
    categories = set(synonyms.values())

    def add(phrase: str, category: str | None) -> None:
        phrases.setdefault(phrase, category)

    animal_words = [(s, c) for s, c in synonyms.items() if c in ANIMAL_CATEGORIES and " " not in s]
    if animal_words:
        for qualifier in ANIMAL_QUALIFIERS:
            for word, category in animal_words:
                add(f"{qualifier} {word}", category)
            for word in NON_OBJECT_ANIMAL_WORDS:
                add(f"{qualifier} {word}", None)
    for word, category in synonyms.items():
        if category in PASSENGER_VEHICLE_CATEGORIES and " " not in word:
            add(f"passenger {word}", category)
    for phrase, category in FIXED_PHRASES.items():
        if category is None or category in categories:
            add(phrase, category)
    return phrases


# ---------------------------------------------------------------------------------------------
# The benchmark (generation engine interface)

DEFAULT_CAPTION_PROMPT = "Please describe this image in detail."


def cache_dir() -> Path:
    """Where ground-truth indexes are cached: ``$HALLBENCH_CACHE_DIR`` or ``~/.cache/hallbench``, then ``chair/``."""
    root = os.environ.get("HALLBENCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hallbench"
    )
    return Path(root) / "chair"


def read_image_ids(path: Path) -> list[str]:
    """Image ids from a JSON list (numbers or strings) or a text file with one id per line; duplicates are an error."""
    text = read_utf8(path)
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            values = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise HallbenchError(f"{path}: not a valid JSON list of image ids ({err})") from None
        if not all(isinstance(v, int | str) and not isinstance(v, bool) for v in values):
            raise HallbenchError(f"{path}: expected a JSON list of image ids (numbers or strings)")
        ids = [str(v).strip() for v in values]
    else:
        ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise HallbenchError(f"{path} lists no image ids")
    seen: set[str] = set()
    duplicates = [i for i in ids if i in seen or seen.add(i)]
    if duplicates:
        raise HallbenchError(f"{path}: image id {duplicates[0]} is listed more than once")
    return ids


@dataclass(frozen=True)
class ChairOptions:
    """``hallbench eval --bench chair``'s own options."""

    prompt: str | None = None
    """Captioning prompt (default: "Please describe this image in detail.")."""
    drop_incomplete: bool = False
    """Drop a trailing sentence cut off by --max-new-tokens before scoring (re-scores only)."""
    instances: Path | None = None
    """COCO instances file (default: annotations/instances_val.json in --data)."""
    captions: Path | None = None
    """COCO captions file whose objects also count as ground truth (default: annotations/captions_val.json in --data, if any)."""
    synonyms: Path | None = None
    """Synonym table (default: synonyms.txt in --data, else the packaged COCO table; re-scores only)."""
    image_ids: Path | None = None
    """A JSON list (or one id per line) of the image ids to caption, e.g. a published 500-image subset."""


class ChairBenchmark:
    """``hallbench eval --bench chair``: one caption per image of the instances file.

    ``--data DIR`` is a shapes world or a folder laid out like one (``annotations/instances_val.json``,
    optional ``annotations/captions_val.json``, ``synonyms.txt``, ``images/``); ``--instances``,
    ``--captions``, ``--synonyms`` and ``--images`` name the files directly (COCO: the packaged
    synonym table is the default). Images are visited in a fixed shuffled order (seed
    ``chair-images``), so ``--max-samples 500`` evaluates 500 images drawn at random, the usual
    CHAIR protocol, and the same 500 on every run.
    """

    def __init__(self, cfg: Any):
        self.cfg = cfg
        options: ChairOptions = cfg.options
        self.options = options
        data = Path(cfg.data) if cfg.data is not None else None
        self.instances = (
            Path(options.instances) if options.instances else self._in_data(data, "annotations/instances_val.json", required=True)
        )
        self.captions = Path(options.captions) if options.captions else self._in_data(data, "annotations/captions_val.json", required=False)
        self.synonyms = Path(options.synonyms) if options.synonyms else self._in_data(data, "synonyms.txt", required=False)
        self.images = Path(cfg.images) if cfg.images else self._in_data(data, "images", required=True)
        self.prompt = options.prompt or DEFAULT_CAPTION_PROMPT
        self.scorer = ChairScorer(self.instances, self.captions, self.synonyms, cache_dir=cache_dir())

    @staticmethod
    def _in_data(data: Path | None, relative: str, *, required: bool) -> Path | None:
        if data is not None and (data / relative).exists():
            return data / relative
        if required:
            where = f"{data / relative} does not exist" if data is not None else "no --data given"
            raise HallbenchError(f"--bench chair needs {relative.split('/')[-1]} ({where}); pass --data DIR or --instances/--images")
        return None

    def samples(self) -> list[Any]:
        import random

        from hallbench.eval.engine import Sample

        order = self.scorer.image_files()
        random.Random("chair-images").shuffle(order)
        if self.options.image_ids is not None:
            wanted = read_image_ids(Path(self.options.image_ids))
            known = {str(image_id) for image_id, _ in order}
            unknown = [i for i in wanted if i not in known]
            if unknown:
                raise HallbenchError(
                    f"{self.options.image_ids}: {len(unknown)} image id(s) are not in {self.instances} (e.g. {', '.join(unknown[:5])})"
                )
            # The file's own order: a published subset is evaluated exactly as listed.
            by_id = {str(image_id): (image_id, name) for image_id, name in order}
            order = [by_id[i] for i in wanted]
        return [Sample(str(image_id), [self.images / name], self.prompt, {"image_id": image_id}) for image_id, name in order]

    def score(self, sample: Any, answer: str) -> dict[str, Any]:
        caption = drop_incomplete_sentence(answer) if self.options.drop_incomplete else answer
        result = self.scorer.score_caption(sample.meta["image_id"], caption)
        result.pop("image_id")
        result["scored_caption"] = result.pop("caption")
        return result

    def aggregate(self, records: list[dict]) -> dict[str, Any]:
        scored = [r for r in records if not r.get("error")]
        return {"metrics": aggregate(scored), "drop_incomplete": self.options.drop_incomplete, "prompt": self.prompt}

    def describe(self) -> dict[str, Any]:
        files = {"instances": self.instances, "captions": self.captions, "synonyms": self.synonyms or default_synonyms_path()}
        return {
            **{k: {"file": str(p), "sha256": sha256_file(p)} if p else None for k, p in files.items()},
            "images": str(self.images),
            "prompt": self.prompt,
            "image_ids": {"file": str(self.options.image_ids), "sha256": sha256_file(Path(self.options.image_ids))}
            if self.options.image_ids
            else None,
            "ground_truth_cache": str(self.scorer.cache_path),
        }


SPEC = BenchmarkSpec(
    name="chair",
    title="CHAIR",
    version=CODE_VERSION,  # the matcher and ground-truth rules the numbers come from
    metrics=CHAIR_METRICS,
    per_sample=_fields,
    benchmark=ChairBenchmark,
    # As OPERA and most CHAIR tables: long enough that a detailed caption ends on its own.
    default_max_new_tokens=512,
    sample_id=lambda record: str(record.get("image_id", record.get("id"))),
    group=None,  # one caption per image: every caption is its own unit
    options=ChairOptions,
    scoring_options=("synonyms", "drop_incomplete"),
    paper_metrics=("chair_s", "chair_i"),
    paper_always=True,
    detail=DetailTable("decoding", "CHAIR by decoding strategy", rows="decoding"),
    headline=(("all", "chair_s"), ("all", "chair_i")),
)
