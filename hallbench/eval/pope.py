"""POPE scoring: answer parsing, metrics per split, and the join of predictions to labels.

Pure Python, no model: the generation engine produces answer texts; this module turns them into
``yes``/``no``/``unknown`` (:func:`parse_answer`), scores them against the labels
(:func:`pope_metrics`) and aggregates a run over the random/popular/adversarial splits
(:func:`aggregate_pope`). The positive class is always ``yes``.

Two parsing rules exist. ``hallbench`` (the default) is strict about what counts as an answer and
reports ``unknown`` when the first sentence says neither yes nor no. ``official`` reproduces the
POPE repository's ``evaluate.py`` word for word, for numbers comparable with published tables: it
never says ``unknown`` (anything without a negation word counts as ``yes``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from hallbench.errors import HallbenchError, shorten
from hallbench.eval.benchmark import BenchmarkSpec, DetailTable, Metric, is_error, metric_values
from hallbench.runfolder import recorded_path_candidates

SPLIT_ORDER: tuple[str, ...] = ("random", "popular", "adversarial")
Rule = Literal["hallbench", "official"]
"""The yes/no parsing rules (``--parser``), shared by the other yes/no benchmarks (MME)."""
RULES: tuple[str, ...] = get_args(Rule)
PARSER_VERSION = "pope-2"
"""Version of the ``hallbench`` parsing rule and the question template. Bump it whenever
``parse_answer`` can read an answer differently (``tests/test_versions.py`` fails until you do).
pope-2: hedges are unknown; answers are read for the asked object; "an" before a vowel."""
PREDICTIONS: tuple[str, ...] = ("yes", "no", "unknown")

# The metrics, declared once (hallbench/eval/benchmark.py): pope_metrics, aggregate_pope and the report
# all compute them from these ratios of per-question fields (_fields).
POPE_METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "correct", label="Acc", empty=0.0,
           description="share of questions answered correctly; an 'unknown' answer is wrong"),
    Metric("precision", "tp", "answered_yes", label="Precision", empty=0.0,
           description="of the questions answered 'yes', the share whose label is 'yes' (0.0 when none answered 'yes')"),
    Metric("recall", "tp", "label_yes", label="Recall", empty=0.0,
           description="of the questions labelled 'yes', the share answered 'yes' (0.0 when no label is 'yes')"),
    # F1 = 2PR / (P + R) = 2 tp / (answered yes + labelled yes): a ratio of sums, like every metric.
    Metric("f1", "tp2", "yes_total", label="F1", empty=0.0,
           description="harmonic mean of precision and recall, for the class 'yes' (0.0 when both are 0)"),
    Metric("yes_ratio", "answered_yes", label="Yes Ratio", higher_is_better=None, empty=0.0, reference=50.0,
           reference_label="50% (POPE labels)",
           description="share of predictions that are 'yes'; neutral: closest to the labels' yes share (0.5 in POPE) is ideal"),
    Metric("unknown_rate", "unknown", label="Unknown", higher_is_better=False, empty=0.0,
           description="share of answers that the parsing rule could not read as yes or no"),
)  # fmt: skip
POPE_METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in POPE_METRICS)


def _fields(record: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, float]:
    """The per-question fields the POPE metrics are ratios of (``label`` yes/no, ``parsed`` yes/no/unknown)."""
    label_yes, answered_yes = record["label"] == "yes", record["parsed"] == "yes"
    return {
        "correct": float(record["parsed"] == record["label"]),
        "tp": float(label_yes and answered_yes),
        "tp2": 2.0 * (label_yes and answered_yes),
        "answered_yes": float(answered_yes),
        "label_yes": float(label_yes),
        "yes_total": float(answered_yes) + float(label_yes),
        "unknown": float(record["parsed"] == "unknown"),
    }


# ---------------------------------------------------------------------------------------------
# Questions

QUESTION_TEMPLATE = "Is there {article} {name} in the image?"
"""POPE's question, with the article the official files use: "an" before a vowel letter ("an apple")."""
_ASKED_RE = re.compile(r"\b(?:is|are)\s+there\s+(?:an?|any|some)\s+(.+?)\s+in\s+(?:the|this)\s+(?:image|imange|picture|photo)\b", re.I)


def existence_question(name: str) -> str:
    """``"Is there an apple in the image?"``: the question ``hallbench data pope`` and the shapes world ask."""
    return QUESTION_TEMPLATE.format(article="an" if name[:1].lower() in "aeiou" else "a", name=name)


def asked_object(question: str) -> str | None:
    """The object a POPE question asks about (``"dining table"`` in "Is there a dining table in the image?"), or ``None``."""
    match = _ASKED_RE.search(question or "")
    return match.group(1).lower() if match else None


# ---------------------------------------------------------------------------------------------
# Parsing

# Negation words of the hallbench rule, matched as whole words after lower-casing. "nope" and
# "cannot" are additions to the four asked-for words: both are unambiguous refusals of the object.
NEGATION_WORDS = frozenset({"no", "not", "none", "never", "nope", "cannot"})
# Words: runs of letters/digits, with inner apostrophes kept ("isn't" is one word, "n't" is its end).
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_SENTENCE_END_RE = re.compile(r"[.!?\r\n]")
_LEADING_JUNK_RE = re.compile(r"^[\W_]+")


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


# Hedges and refusals: the answer says it cannot answer. Matched in the first sentence, after an
# explicit leading yes/no ("No, I'm not sure" is a no).
_HEDGE_RE = re.compile(
    r"\b(?:do\s+not|don't|dont)\s+know\b"
    r"|\b(?:not|n't)\s+(?:sure|certain)\b"
    r"|\b(?:unsure|uncertain|unclear|ambiguous|indeterminate|unknown|maybe|perhaps|possibly|might)\b"
    r"|\bmay\s+(?:or\s+may\s+not\s+)?be\b"
    r"|\b(?:cannot|can't|can\s+not|couldn't|could\s+not|unable\s+to|impossible\s+to|hard\s+to|difficult\s+to|no\s+way\s+to)"
    r"\s+(?:be\s+)?(?:tell|say|determine|determined|know|confirm|confirmed|answer|sure|verify|verified|judge)\b"
)
_CLAUSE_RE = re.compile(r"[,;:]|\b(?:but|while|whereas|although|though|however|only|just)\b")


def _is_negation(word: str) -> bool:
    return word in NEGATION_WORDS or word.endswith("n't")


def _object_pattern(asked: str) -> re.Pattern[str]:
    *head, last = asked.lower().split()
    parts = [re.escape(w) for w in head] + [re.escape(last) + r"(?:s|es)?"]
    return re.compile(r"(?<![^\W_])" + r"\s+".join(parts) + r"(?![^\W_])")


def parse_answer(text: str, rule: str = "hallbench", asked: str | None = None) -> str:
    """Read a model's answer to "Is there a X in the image?" as ``"yes"``, ``"no"`` or ``"unknown"``.

    ``hallbench`` rule, step by step (``asked`` is the object of the question, see :func:`asked_object`):

    1. Curly apostrophes (U+2019, U+2018) become ``'``; leading whitespace and punctuation are
       stripped (``"**Yes**"``, ``"\\n\\nNo."``, ``"- yes"``); a first sentence that repeats the
       question (``"Is there a dog in the image? Yes."``) is skipped.
    2. The first sentence is kept: the text up to the first ``.``, ``!``, ``?`` or line break.
    3. It is lower-cased and split into words (letters/digits, inner apostrophes kept), so matching
       is on whole words: ``"yesterday"`` is not ``yes``, ``"nothing"`` is not ``no``.
    4. A first word ``yes`` is ``"yes"`` and a first word ``no``/``nope`` is ``"no"``: a leading
       answer word is the answer, what follows qualifies it (``"Yes, but not a cat."`` -> ``"yes"``).
    5. A hedge or refusal is ``"unknown"``: ``"I don't know"``, ``"Not sure."``, ``"I cannot tell."``,
       ``"It is unclear"``, ``"Maybe"``, ``"There might be a dog"``, ``"hard to say"``.
    6. The answer is read for the asked object: the sentence is cut into clauses (at ``,;:`` and
       *but*, *while*, *only*, ...). If a clause names the object (its last word also in the plural),
       the answer is ``"no"`` when such a clause holds a negation and ``"yes"`` otherwise: ``"There is
       a dog, not a cat."`` -> ``"yes"`` for a dog and ``"no"`` for a cat; ``"I see a dog."`` -> ``"yes"``.
    7. Otherwise, any negation is ``"no"``: ``no``, ``not``, ``none``, ``never``, ``nope``,
       ``cannot`` and any word ending in ``n't`` (``"There is nothing like that, no."``).
    8. Otherwise a ``yes`` anywhere is ``"yes"`` (``"I think yes."``); else ``"unknown"``: empty text,
       ``"The image shows a cat."`` for a dog question.

    ``official`` rule: the POPE repository's ``evaluate.py`` exactly. If the text contains ``.``,
    keep what precedes the first one; remove every ``,``; split on single spaces (``str.split(' ')``);
    the answer is ``"no"`` if a word equals ``"No"``, ``"not"`` or ``"no"``, else ``"yes"``. Hence it
    never returns ``"unknown"`` (empty or unreadable text counts as ``"yes"``), it is case-sensitive
    (``"NO"``, ``"Not really"`` -> ``"yes"``), it ignores ``n't`` and ``none``/``never``
    (``"There isn't a dog."`` -> ``"yes"``), it does not split on line breaks (``"No\\nthere is"``
    -> ``"yes"``: the word is ``"No\\nthere"``), and punctuation other than ``,`` and ``.`` sticks to
    words (``"No!"`` -> ``"yes"``). ``asked`` is ignored.

    Raises:
        HallbenchError: ``rule`` is not ``"hallbench"`` or ``"official"``.
        TypeError: ``text`` is not a string.
    """
    if rule not in RULES:
        raise HallbenchError(f"unknown POPE parsing rule {rule!r}: expected one of {', '.join(RULES)}")
    if not isinstance(text, str):
        raise TypeError(f"parse_answer expects the answer text as a str, got {type(text).__name__} {shorten(text)}")
    if rule == "official":
        return _parse_official(text)
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = _LEADING_JUNK_RE.sub("", text)
    first_sentence, *rest = _SENTENCE_END_RE.split(text, maxsplit=1)
    rest = rest[0] if rest else ""
    if _ASKED_RE.match(first_sentence.strip()) and rest.strip():
        first_sentence = _SENTENCE_END_RE.split(_LEADING_JUNK_RE.sub("", rest), maxsplit=1)[0]
    first_sentence = first_sentence.lower()
    words = _words(first_sentence)
    if not words:
        return "unknown"
    if words[0] == "yes":
        return "yes"
    if words[0] in ("no", "nope"):
        return "no"
    if _HEDGE_RE.search(first_sentence):
        return "unknown"
    if asked:
        pattern = _object_pattern(asked)
        naming = [clause for clause in _CLAUSE_RE.split(first_sentence) if pattern.search(clause)]
        if naming:
            return "no" if any(_is_negation(w) for clause in naming for w in _words(clause)) else "yes"
    if any(_is_negation(w) for w in words):
        return "no"
    if "yes" in words:
        return "yes"
    return "unknown"


def _parse_official(text: str) -> str:
    # Line for line the POPE repository's evaluate.py; do not "fix" anything here.
    if text.find(".") != -1:
        text = text.split(".")[0]
    text = text.replace(",", "")
    words = text.split(" ")
    if "No" in words or "not" in words or "no" in words:
        return "no"
    return "yes"


# ---------------------------------------------------------------------------------------------
# Metrics


def _ratio(numerator: int, denominator: int) -> float:
    # Every POPE ratio goes through here: an empty denominator gives 0.0 (sklearn's zero_division=0).
    return numerator / denominator if denominator else 0.0


def pope_metrics(labels: list[str], predictions: list[str]) -> dict:
    """POPE metrics for aligned ``labels`` (``yes``/``no``) and ``predictions`` (``yes``/``no``/``unknown``).

    Returns ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio``, ``unknown_rate``,
    ``label_yes_ratio``, ``n`` and the counts ``tp``, ``fp``, ``tn``, ``fn``, ``n_unknown`` (the
    positive class is ``yes``; ``tp + fp + tn + fn + n_unknown == n``):

    - accuracy = (tp + tn) / n: an ``unknown`` answer is wrong whatever the label;
    - precision = tp / (tp + fp), over the answers that are ``yes``;
    - recall = tp / (number of ``yes`` labels) = tp / (tp + fn + unknowns on ``yes`` labels): an
      ``unknown`` on a ``yes`` question is a missed positive, not an ignored one;
    - f1 = 2 * precision * recall / (precision + recall);
    - yes_ratio = (tp + fp) / n, the share of **predictions** that are ``yes``: the model's bias to
      say yes, as in the official ``evaluate.py``. lmms-eval's ``pope_aggregate_yes_ratio`` counts
      the ground-truth labels instead, which is a bug (it always prints 0.5 on POPE). The labels'
      share is reported separately as ``label_yes_ratio``;
    - unknown_rate = n_unknown / n.

    Division guards: every ratio with a zero denominator is 0.0 (precision when nothing was answered
    ``yes``, recall when no label is ``yes``, f1 when precision + recall is 0, everything when the
    input is empty); ``n`` tells an empty input apart.

    Raises:
        HallbenchError: the lists differ in length, or an entry is not one of the allowed words
            (naming its index and value). Words must already be lower-case.
    """
    if len(labels) != len(predictions):
        raise HallbenchError(
            f"POPE metrics: expected as many predictions as labels, found {len(predictions)} predictions for {len(labels)} labels"
        )
    for i, label in enumerate(labels):
        if label not in ("yes", "no"):
            raise HallbenchError(f"POPE metrics: labels[{i}]: expected 'yes' or 'no', found {shorten(label)}")
    for i, prediction in enumerate(predictions):
        if prediction not in PREDICTIONS:
            raise HallbenchError(f"POPE metrics: predictions[{i}]: expected 'yes', 'no' or 'unknown', found {shorten(prediction)}")
    pairs = list(zip(labels, predictions, strict=True))
    tp = sum(lab == "yes" and pred == "yes" for lab, pred in pairs)
    fp = sum(lab == "no" and pred == "yes" for lab, pred in pairs)
    tn = sum(lab == "no" and pred == "no" for lab, pred in pairs)
    fn = sum(lab == "yes" and pred == "no" for lab, pred in pairs)
    n_unknown = sum(pred == "unknown" for pred in predictions)
    n = len(labels)
    values = metric_values(SPEC, [{"label": lab, "parsed": pred} for lab, pred in pairs])
    return {
        **values,
        "label_yes_ratio": _ratio(sum(lab == "yes" for lab in labels), n),
        "n": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_unknown": n_unknown,
    }


def aggregate_pope(records: list[dict]) -> dict:
    """Metrics of a POPE run: per split, their unweighted mean, and pooled over all records.

    Each record is ``{"question_id", "split", "label", "parsed", ...}`` with ``label`` in
    ``yes``/``no`` and ``parsed`` in ``yes``/``no``/``unknown``. A record whose ``error`` field is
    set (not missing, ``None``, ``""`` or ``False``) is a sample that could not be evaluated (the
    image failed to load, generation crashed): it is counted in ``n_errors`` and left out of every
    metric, so errors are visible but never scored as wrong answers; its ``parsed`` is not read.

    Returns::

        {"splits": {split: {<pope_metrics keys>, "n_errors": int}},   # random, popular, adversarial first
         "mean": {metric: float for metric in POPE_METRIC_NAMES},     # unweighted over mean_over
         "mean_over": [split, ...],                                   # splits with at least one scored record
         "pooled": {<pope_metrics keys>, "n_errors": int},            # all scored records together
         "n_errors": int}

    A split whose records are all errors is reported (with ``n == 0``) but left out of the mean,
    whose guard zeros would otherwise pull it down; with no scored split at all the mean is all 0.0.

    Raises:
        HallbenchError: a record is not a dict, misses a field, has a label or parsed answer outside
            the allowed words, or repeats a (split, question_id); the message names the record's index
            and question_id.
    """
    by_split: dict[str, list[Mapping]] = {}
    seen: dict[tuple[str, str], int] = {}
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise HallbenchError(f"POPE records[{i}]: expected a dict, found {shorten(record)}")
        needed = ("question_id", "split", "label") if is_error(record) else ("question_id", "split", "label", "parsed")
        missing = [key for key in needed if key not in record]
        if missing:
            raise HallbenchError(f"POPE records[{i}]: expected fields {list(needed)}, found {sorted(record)} (missing {missing})")
        if record["label"] not in ("yes", "no"):
            raise HallbenchError(
                f"POPE records[{i}] (question_id {record['question_id']!r}).label: expected 'yes' or 'no', found {shorten(record['label'])}"
            )
        if not is_error(record) and record["parsed"] not in PREDICTIONS:
            raise HallbenchError(
                f"POPE records[{i}] (question_id {record['question_id']!r}).parsed: expected 'yes', 'no' or 'unknown', found {shorten(record['parsed'])}"
            )
        key = (str(record["split"]), str(record["question_id"]))
        if key in seen:
            raise HallbenchError(
                f"POPE records[{i}]: expected one record per (split, question_id), found split {key[0]!r} question_id {key[1]!r} again "
                f"(first at records[{seen[key]}])"
            )
        seen[key] = i
        by_split.setdefault(key[0], []).append(record)

    order = [s for s in SPLIT_ORDER if s in by_split] + sorted(s for s in by_split if s not in SPLIT_ORDER)
    splits = {split: _score(by_split[split]) for split in order}
    mean_over = [split for split in order if splits[split]["n"] > 0]
    mean = {metric: _ratio_f(sum(splits[s][metric] for s in mean_over), len(mean_over)) for metric in POPE_METRIC_NAMES}
    pooled = _score([r for split in order for r in by_split[split]])
    return {"splits": splits, "mean": mean, "mean_over": mean_over, "pooled": pooled, "n_errors": pooled["n_errors"]}


def _ratio_f(total: float, count: int) -> float:
    return total / count if count else 0.0


def _score(records: Sequence[Mapping]) -> dict:
    scored = [r for r in records if not is_error(r)]
    metrics = pope_metrics([r["label"] for r in scored], [r["parsed"] for r in scored])
    metrics["n_errors"] = len(records) - len(scored)
    return metrics


# ---------------------------------------------------------------------------------------------
# The benchmark (generation engine interface)

SPLIT_FILE_NAMES = ("{split}.jsonl", "coco_pope_{split}.json", "coco_pope_{split}.jsonl", "{split}.json")


@dataclass(frozen=True)
class YesNoOptions:
    """The option of every yes/no benchmark (POPE, MME): how an answer is read. It only re-scores."""

    parser: Rule = "hallbench"
    """Yes/no answer parser: hallbench (strict, with an explicit unknown class) or official (the benchmark's own script: POPE's counts an answer without a negation word as yes, MME's reads the first four characters)."""


@dataclass(frozen=True)
class PopeOptions(YesNoOptions):
    """``hallbench eval --bench pope``'s own options (both only re-score: answers are never regenerated)."""

    labels: Path | None = None
    """Another label set for the same questions (RePOPE): a folder of split files or one file; questions it lacks are removed."""


class PopeBenchmark:
    """``hallbench eval --bench pope``: one sample per question, sample id ``<split>/<question_id>``.

    ``--data`` is a folder holding one file per split (``random.jsonl`` as written by
    ``hallbench data pope``, or the official ``coco_pope_random.json``...), or a single question
    file (its split is taken from ``--split``, else from its name). Labels travel with each sample,
    so predictions are joined to labels by question id by construction, never by file order.
    """

    def __init__(self, cfg: Any):
        self.cfg = cfg
        if cfg.data is None:
            raise HallbenchError("--bench pope needs --data: a folder of split files (hallbench data pope) or one POPE question file")
        if cfg.split not in ("all", *SPLIT_ORDER):
            raise HallbenchError(f"unknown --split '{cfg.split}'; choose one of all, {', '.join(SPLIT_ORDER)}")
        data = Path(cfg.data)
        self.files = self._split_files(data, "--data")
        self.images = Path(cfg.images) if cfg.images is not None else self._images_from_manifest(data)
        self.options: PopeOptions = cfg.options
        self.label_files = self._split_files(Path(self.options.labels), "--labels") if self.options.labels else None
        if self.label_files is not None and set(self.label_files) != set(self.files):
            raise HallbenchError(
                f"--labels {self.options.labels} covers the splits {sorted(self.label_files)}, --data {sorted(self.files)}"
            )
        self.n_removed = 0
        """Questions of --data that --labels removes (RePOPE drops ambiguous ones); set by samples()."""

    def _split_files(self, data: Path, option: str) -> dict[str, Path]:
        if data.is_file():
            split = self.cfg.split if self.cfg.split != "all" else next((s for s in SPLIT_ORDER if s in data.name), data.stem)
            return {split: data}
        if not data.is_dir():
            raise HallbenchError(f"{option} {data} does not exist")
        wanted = SPLIT_ORDER if self.cfg.split == "all" else (self.cfg.split,)
        files = {}
        for split in wanted:
            candidates = [data / pattern.format(split=split) for pattern in SPLIT_FILE_NAMES]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise HallbenchError(f"no {split} split in {data}: tried {', '.join(c.name for c in candidates)}")
            files[split] = found
        return files

    @staticmethod
    def _images_from_manifest(data: Path) -> Path:
        manifest = (data if data.is_dir() else data.parent) / "pope_build.json"
        if manifest.is_file():
            images = json.loads(manifest.read_text(encoding="utf-8")).get("images")
            if images:
                # Older manifests hold the path relative to where `data pope` ran.
                return next((c for c in recorded_path_candidates(images, manifest) if c.is_dir()), Path(images))
        raise HallbenchError(f"--bench pope needs --images (the folder of the images the questions name); {manifest} does not record one")

    def samples(self) -> list[Any]:
        from hallbench.data.formats import read_pope_questions
        from hallbench.eval.engine import Sample

        samples = []
        self.n_removed = 0
        for split, path in self.files.items():
            relabelled = self._labels(split, path) if self.label_files is not None else None
            for q in read_pope_questions(path):
                label = q.label
                if relabelled is not None:
                    if q.question_id not in relabelled:
                        self.n_removed += 1
                        continue
                    label = relabelled[q.question_id]
                meta = {"question_id": q.question_id, "split": split, "label": label, "question": q.text}
                samples.append(Sample(f"{split}/{q.question_id}", [self.images / q.image], q.text, meta))
        return samples

    def _labels(self, split: str, questions_path: Path) -> dict[str, str]:
        """question id -> label of ``--labels`` for one split; its questions must be those of ``--data``."""
        from hallbench.data.formats import read_pope_questions

        assert self.label_files is not None
        path = self.label_files[split]
        asked = {q.question_id: q for q in read_pope_questions(questions_path)}
        labels = {}
        for q in read_pope_questions(path):
            original = asked.get(q.question_id)
            if original is None:
                raise HallbenchError(
                    f"{path}, {q.location}: question {q.question_id} is not in {questions_path} (--labels must relabel the same questions)"
                )
            if (original.image, original.text) != (q.image, q.text):
                raise HallbenchError(
                    f"{path}, {q.location}: question {q.question_id} asks {q.text!r} about {q.image}, "
                    f"{questions_path} asks {original.text!r} about {original.image}"
                )
            labels[q.question_id] = q.label
        return labels

    def score(self, sample: Any, answer: str) -> dict[str, Any]:
        return {"parsed": parse_answer(answer, self.options.parser, asked_object(sample.meta["question"]))}

    def aggregate(self, records: list[dict]) -> dict[str, Any]:
        result = aggregate_pope(records)
        result["parser"] = self.options.parser
        if self.label_files is not None:
            result["labels"] = {split: str(path) for split, path in self.label_files.items()}
            result["n_removed"] = self.n_removed
        return result

    def describe(self) -> dict[str, Any]:
        from hallbench.provenance import sha256_file

        return {
            "splits": {s: {"file": str(p), "sha256": sha256_file(p)} for s, p in self.files.items()},
            "images": str(self.images),
            "parser": self.options.parser,
            **(
                {"labels": {s: {"file": str(p), "sha256": sha256_file(p)} for s, p in self.label_files.items()}} if self.label_files else {}
            ),
        }


SPEC = BenchmarkSpec(
    name="pope",
    title="POPE",
    version=PARSER_VERSION,  # with ``parser``: the rule the numbers come from
    metrics=POPE_METRICS,
    per_sample=_fields,
    benchmark=PopeBenchmark,
    # An answer such as "Yes, there is a dog in the image." is about 10 tokens; 32 leave room for a hedge.
    default_max_new_tokens=32,
    splits=SPLIT_ORDER,
    sample_id=lambda record: f"{record['split']}/{record['question_id']}",
    options=PopeOptions,
    scoring_options=("parser", "labels"),
    paper_metrics=("accuracy", "f1"),
    paper_always=True,
    detail=DetailTable("pope_detail", "POPE per split", rows="split"),
    headline=(("random", "accuracy"), ("adversarial", "accuracy")),
    plot_metrics=("f1", "yes_ratio"),
)
