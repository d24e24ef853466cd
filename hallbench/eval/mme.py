"""``hallbench eval --bench mme``: MME's hallucination subsets (existence, count, position, color).

MME (Fu et al., 2023) asks two yes/no questions about each image, one whose answer is Yes and one
whose answer is No, and reports per subset:

- **accuracy**: questions answered correctly / questions;
- **acc+**: images whose two questions are both answered correctly / images (the stricter number:
  a model that always says "yes" has accuracy 50 and acc+ 0);
- **score** = accuracy + acc+ in percent points (0-200). The hallucination total that papers quote
  (OPERA, VCD) is the sum of the four subsets' scores (0-800): ``total_score`` in summary.json.

``--data`` is the MME release's layout, one folder per subset: either ``<subset>/<image>.jpg`` beside
``<subset>/<image>.txt`` (the hallucination subsets), or ``<subset>/images/`` and
``<subset>/questions_answers_YN/`` (the other subsets' layout). Each ``.txt`` holds one
``question<TAB>answer`` line per question (answer ``Yes`` or ``No``). ``hallbench data mme`` writes
the same layout from a shapes world.

Answers are read by ``--parser``: ``hallbench`` (the default) is POPE's reader (``pope.parse_answer``:
the first sentence's yes or no, hedges and refusals ``unknown``); ``official`` is MME's
``calculation.py`` (an answer that is exactly yes/no, else "yes" or "no" within its first four
characters, else neither), for numbers comparable with published tables. An answer read as neither
is wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallbench.errors import DataFormatError, HallbenchError, shorten
from hallbench.eval.benchmark import ALL, BenchmarkSpec, DetailTable, Metric, is_error, metric_values, scored_records
from hallbench.eval.pope import YesNoOptions

SUBSETS: tuple[str, ...] = ("existence", "count", "position", "color")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
VERSION = "mme-1"
"""The answer-reading rules and the metric definitions behind the numbers (bump when they change)."""


@dataclass(frozen=True)
class MmeQuestion:
    subset: str
    image: Path
    question: str
    label: str
    """``yes`` or ``no``."""
    location: str
    """``<file>, line N``: where the question is, for error messages."""


def _subset_folders(folder: Path) -> tuple[Path, Path]:
    """Where a subset's question files and images are: ``questions_answers_YN/`` and ``images/`` if present."""
    questions, images = folder / "questions_answers_YN", folder / "images"
    return (questions if questions.is_dir() else folder), (images if images.is_dir() else folder)


def read_mme_subset(folder: Path, subset: str) -> list[MmeQuestion]:
    """Every question of one MME subset folder, in file-name order then line order.

    Raises:
        DataFormatError: a line is not ``question<TAB>answer``, an answer is not Yes/No, or a question
            file has no image of the same name (naming the file and line).
        HallbenchError: the folder holds no question file.
    """
    from hallbench.data.formats import read_utf8

    question_dir, image_dir = _subset_folders(folder)
    files = sorted(question_dir.glob("*.txt"))
    if not files:
        raise HallbenchError(f"{question_dir}: no question files (<image>.txt with 'question<TAB>answer' lines) for MME {subset}")
    questions = []
    for file in files:
        image = next((image_dir / f"{file.stem}{s}" for s in IMAGE_SUFFIXES if (image_dir / f"{file.stem}{s}").is_file()), None)
        if image is None:
            raise DataFormatError(file, None, f"an image {file.stem}{'/'.join(IMAGE_SUFFIXES)} in {image_dir}", "none")
        for number, line in enumerate(read_utf8(file).splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].strip():
                raise DataFormatError(file, f"line {number}", "'question<TAB>answer'", shorten(line))
            answer = parts[1].strip().lower()
            if answer not in ("yes", "no"):
                raise DataFormatError(file, f"line {number}", "the answer Yes or No after the tab", shorten(parts[1]))
            questions.append(MmeQuestion(subset, image, parts[0].strip(), answer, f"{file}, line {number}"))
    return questions


def parse_official(text: str) -> str:
    """MME's ``calculation.py``: exactly yes/no, else yes or no within the first four characters, else ``unknown``."""
    answer = text.lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "unknown"


def parse_mme_answer(text: str, rule: str) -> str:
    """``yes``, ``no`` or ``unknown`` by ``rule`` (``hallbench``: POPE's reader; ``official``: MME's)."""
    if rule == "official":
        return parse_official(text)
    from hallbench.eval.pope import parse_answer

    return parse_answer(text, "hallbench")


@dataclass(frozen=True)
class MmeOptions(YesNoOptions):
    """``hallbench eval --bench mme``'s own option, ``parser``: ``hallbench`` reads answers as POPE's
    reader does; ``official`` is MME's ``calculation.py`` (:func:`parse_official`)."""


class MmeBenchmark:
    """One sample per question, id ``<subset>/<image>/<k>``; the two questions of an image are one acc+ unit."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        if cfg.data is None:
            raise HallbenchError("--bench mme needs --data: the MME folder (one folder per subset: existence, count, position, color)")
        if cfg.split not in (ALL, *SUBSETS):
            raise HallbenchError(f"unknown --split '{cfg.split}' for mme; choose one of all, {', '.join(SUBSETS)}")
        self.data = Path(cfg.data)
        wanted = SUBSETS if cfg.split == ALL else (cfg.split,)
        missing = [s for s in wanted if not (self.data / s).is_dir()]
        if missing:
            raise HallbenchError(f"--data {self.data} has no subset folder {', '.join(missing)} (expected {', '.join(wanted)})")
        self.subsets = wanted

    def samples(self) -> list[Any]:
        from hallbench.eval.engine import Sample

        samples, count = [], {}
        for subset in self.subsets:
            for q in read_mme_subset(self.data / subset, subset):
                k = count[(subset, q.image.stem)] = count.get((subset, q.image.stem), -1) + 1
                meta = {"split": subset, "label": q.label, "question": q.question}
                samples.append(Sample(f"{subset}/{q.image.stem}/{k}", [q.image], q.question, meta))
        return samples

    def score(self, sample: Any, answer: str) -> dict[str, Any]:
        return {"parsed": parse_mme_answer(answer, self.cfg.options.parser)}

    def aggregate(self, records: list[dict]) -> dict[str, Any]:
        splits = {}
        for subset in [s for s in SUBSETS if any(r.get("split") == s for r in records)]:
            rows = scored_records(SPEC, records, subset)
            splits[subset] = {
                **metric_values(SPEC, rows),
                "n": len(rows),
                "n_images": len({SPEC.group(r) for r in rows}),  # type: ignore[misc]
                "n_errors": sum(1 for r in records if r.get("split") == subset and is_error(r)),
            }
        scores = [v["score"] for v in splits.values()]
        return {
            "splits": splits,
            # MME's hallucination total: the sum of the subsets' scores, in points (0-200 each).
            "total_score": sum(100 * s for s in scores) if len(scores) == len(SUBSETS) else None,
            "parser": self.cfg.options.parser,
        }

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for subset in self.subsets:
            question_dir, _ = _subset_folders(self.data / subset)
            for file in sorted(question_dir.glob("*.txt")):
                digest.update(f"{subset}/{file.name}\0".encode() + file.read_bytes() + b"\0")
        return {
            "data": str(self.data),
            "subsets": list(self.subsets),
            "questions_sha256": digest.hexdigest(),
            "parser": self.cfg.options.parser,
        }


def _fields(record: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, float]:
    return {"correct": float(record["parsed"] == record["label"])}


ACCURACY = Metric("accuracy", "correct", label="Acc", description="questions answered correctly / questions (an unread answer is wrong)")
ACC_PLUS = Metric(
    "acc_plus", "correct", label="Acc+", per_group=True, description="images whose two questions are both answered correctly / images"
)
MME_METRICS: tuple[Metric, ...] = (
    ACCURACY,
    ACC_PLUS,
    Metric("score", label="Score", unit="points, Acc + Acc+", sum_of=(ACCURACY, ACC_PLUS),
           description="MME's score: accuracy + acc+ in percent points (0-200)"),
)  # fmt: skip

SPEC = BenchmarkSpec(
    name="mme",
    title="MME",
    version=VERSION,
    metrics=MME_METRICS,
    per_sample=_fields,
    benchmark=MmeBenchmark,
    default_max_new_tokens=32,  # a yes/no answer, as POPE's
    splits=SUBSETS,
    options=MmeOptions,
    scoring_options=("parser",),
    paper_metrics=("score",),
    detail=DetailTable("mme_detail", "MME hallucination subsets", rows="split"),
)
