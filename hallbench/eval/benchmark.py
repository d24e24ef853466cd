"""The benchmark contract: what each benchmark declares once, read by ``eval``, ``report`` and the CLI.

A benchmark module (``pope.py``, ``chair.py``, ``vqa.py``, ``mme.py``) defines one
:class:`BenchmarkSpec` named ``SPEC`` and the class that generates and scores its samples. The spec
holds everything the other stages need to know about it:

- its **metrics**, each a ratio of sums of per-sample fields (:class:`Metric`): the evaluation's
  ``summary.json`` values are :func:`metric_values` of the scored records, and the report's
  confidence intervals and paired tests resample the same fields (:func:`sample_table`), so the two
  cannot define a metric differently;
- its **splits** (POPE's random/popular/adversarial, MME's subsets; none: one split ``all``), how a
  record names its sample and its image (the unit of resampling), its version and default answer
  length;
- its **options** (:attr:`BenchmarkSpec.options`): a small dataclass whose documented fields are the
  benchmark's ``hallbench eval`` flags, in a help panel of their own (:func:`option_flags`);
- its **tables** as data: the metrics Table 2 and the ablations show (:attr:`BenchmarkSpec.paper_metrics`),
  its detail table (:class:`DetailTable`), and what a command that produces a missing cell needs.

Adding a benchmark is one module with a ``SPEC`` and one line in :data:`BENCHMARKS`
(``docs/adding_a_benchmark.md``). This module imports neither torch nor any benchmark module until
one is asked for, so that ``hallbench report`` stays light.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, fields
from typing import Any

import numpy as np

ALL = "all"
"""The split of a benchmark that has none (CHAIR, VQA), and ``--split``'s value for every split."""

BENCHMARKS: dict[str, str] = {
    "pope": "hallbench.eval.pope",
    "chair": "hallbench.eval.chair",
    "vqa": "hallbench.eval.vqa",
    "mme": "hallbench.eval.mme",
}
"""Benchmark name -> the module that defines its ``SPEC`` (imported when first needed)."""


@dataclass(frozen=True)
class Metric:
    """``sum(numerator) / sum(denominator)`` over the scored samples of a split (``scale`` x that when shown).

    ``numerator`` and ``denominator`` name per-sample fields that the benchmark's
    :attr:`BenchmarkSpec.per_sample` returns (``one`` is always 1). With ``per_group`` the unit is
    the group (the image) instead: a group counts 1 in the denominator and 1 in the numerator when
    every one of its scored samples has numerator 1 (MME's acc+: both questions of an image right).
    """

    name: str
    numerator: str = ""
    denominator: str = "one"
    label: str = ""
    """Column header in the report's tables (``Acc``); default: the name."""
    description: str = ""
    higher_is_better: bool | None = True
    """``None`` for neutral quantities (yes ratio, caption length): shown, never ranked or tested."""
    scale: float = 100.0
    """Displayed value = scale x ratio (percent by default; 1 for a mean count such as words)."""
    unit: str = "%"
    """What a displayed value is in (the tables' legend names every unit that is not %)."""
    empty: float | None = None
    """The value when the denominator is 0: POPE's guards give 0.0; None = undefined (CHAIRi without a mention)."""
    per_group: bool = False
    sum_of: tuple[Metric, ...] = ()
    """A metric that is the sum of other metrics' displayed values (MME's score = acc + acc+); its
    own numerator and denominator are unused. Intervals and tests resample the sum."""
    reference: float | None = None
    """A displayed value the plots mark with a line (POPE's yes ratio: 50, the labels' own share)."""
    reference_label: str = ""

    def fields(self) -> list[str]:
        """The table components this metric reads (a sum: those of its parts)."""
        return [c for part in self.sum_of for c in part.fields()] if self.sum_of else [self.num, self.den]

    @property
    def num(self) -> str:
        """The component of a :class:`SampleTable` that holds the numerator."""
        return f"{self.numerator}@group" if self.per_group else self.numerator

    @property
    def den(self) -> str:
        return f"{self.denominator}@group" if self.per_group else self.denominator

    @property
    def header(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class DetailTable:
    """A benchmark's own table in the report: every metric (or ``metrics``) of every run of the benchmark."""

    name: str
    """File name in the report (``pope_detail``, ``decoding``)."""
    title: str
    rows: str
    """What the rows enumerate besides model and variant: ``split`` (one block per split, the runs'
    decodings) or ``decoding`` (every decoding of each model and variant that has a run)."""
    metrics: tuple[str, ...] = ()
    """The columns; empty: every metric of the benchmark."""


def _image_of(record: Mapping[str, Any]) -> str:
    # A record's resampling unit: its image (records name their image files), else the record itself.
    images = record.get("images")
    return "|".join(map(str, images)) if images else f"id:{record.get('id')}"


def _id_of(record: Mapping[str, Any]) -> str:
    return str(record["id"])


@dataclass(frozen=True)
class NoOptions:
    """The options of a benchmark that has none of its own."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything about a benchmark that more than its own module needs (see the module docstring)."""

    name: str
    """``hallbench eval --bench`` value."""
    title: str
    """Display name (table headers, messages)."""
    version: str
    """The scoring rules the numbers come from, recorded in every summary.json; bumped when they change."""
    metrics: tuple[Metric, ...]
    per_sample: Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, float]]
    """``(record, options) -> {field: number}`` for one scored record of predictions.jsonl; ``options``
    are the run's summary.json (or, in the evaluation, the values it will hold), for fields that depend
    on a scoring option (VQA's ``require_marker``)."""
    benchmark: Any
    """The class ``hallbench eval`` instantiates with the EvalConfig (samples, score, aggregate, describe)."""
    default_max_new_tokens: int
    """Answer length in tokens when ``--max-new-tokens`` is not given."""
    splits: tuple[str, ...] = ()
    """The splits in their display order; empty: one split, ``all``. With splits, summary.json holds
    ``splits.<split>.<metric>`` and records a ``split`` field; without, ``metrics.<metric>``."""
    sample_id: Callable[[Mapping[str, Any]], str] = _id_of
    """A record's id, unique within a split: how two runs' answers are paired."""
    group: Callable[[Mapping[str, Any]], str] | None = _image_of
    """A record's unit of resampling (its image); None: every sample is its own unit (one caption per image)."""
    options: type = NoOptions
    """The benchmark's own ``hallbench eval`` options: a frozen dataclass whose fields (typed, with a
    default, each documented by the string literal under it) are the ``--flags`` of the benchmark's
    help panel; ``EvalConfig.options`` holds an instance. A ``Literal`` type lists the choices."""
    scoring_options: tuple[str, ...] = ()
    """Options that only change how answers are scored: changing them re-scores, never regenerates."""
    free_options: tuple[str, ...] = ()
    """Options that may change between a run and its resumption: they change no answer and are not
    part of the run's identity (the judge's endpoint and retries, the BERTScore model)."""
    paper_metrics: tuple[str, ...] = ()
    """The metrics Table 2 and the ablation tables show, for each split."""
    paper_always: bool = False
    """Show the paper columns even when no run of the table has this benchmark (listed as missing);
    False: only where some run of the table has numbers for it."""
    detail: DetailTable | None = None
    headline: tuple[tuple[str, str], ...] = ()
    """``(split, metric)`` pairs that summarise a run (the report's per-seed plot)."""
    plot_metrics: tuple[str, ...] = ()
    """Metrics drawn per split with their intervals in ``<name>_<metric>_....png`` (POPE: F1 and yes ratio)."""
    command_flags: tuple[str, ...] = ()
    """Flags a ``hallbench eval`` command for this benchmark always needs besides ``--data`` (placeholders)."""

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: metric names repeat: {names}")
        for name in (*self.paper_metrics, *(self.detail.metrics if self.detail else ()), *(m for _s, m in self.headline)):
            if name not in names:
                raise ValueError(f"{self.name}: {name!r} is not one of its metrics {names}")
        options = {f.name for f in fields(self.options)}
        for name in (*self.scoring_options, *self.free_options):
            if name not in options:
                raise ValueError(f"{self.name}: {name!r} is not one of its options {sorted(options)}")

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    @property
    def split_names(self) -> tuple[str, ...]:
        return self.splits or (ALL,)

    # -- summary.json ----------------------------------------------------------------------------

    def summary_values(self, summary: Mapping[str, Any], split: str) -> Mapping[str, Any]:
        """The metric values of ``split`` as summary.json holds them (ratios, not scaled)."""
        return summary["splits"][split] if self.splits else summary["metrics"]

    def summary_value(self, summary: Mapping[str, Any], split: str, metric: str) -> float | None:
        """A metric as summary.json reports it, in displayed units (``scale`` x the ratio)."""
        value = self.summary_values(summary, split).get(metric)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        return float(value) * self.metric(metric).scale

    def summary_n(self, summary: Mapping[str, Any], split: str) -> int | None:
        """Scored samples behind a split's values."""
        values = self.summary_values(summary, split)
        return values.get("n", summary.get("n_samples"))

    def summary_splits(self, summary: Mapping[str, Any]) -> list[str]:
        """The splits a summary has numbers for (with at least one scored sample)."""
        if not self.splits:
            return [ALL]
        return [s for s, values in summary["splits"].items() if values.get("n", 1) > 0]

    def summary_problem(self, summary: object) -> str | None:
        """Why a summary.json cannot be read as this benchmark's, or None."""
        if not isinstance(summary, dict):
            return "summary.json is not a JSON object"
        if self.splits:
            splits = summary.get("splits")
            if not isinstance(splits, dict) or not all(isinstance(v, dict) for v in splits.values()):
                return f"summary.json has no 'splits' object (expected {self.title} metrics per split)"
            for split, values in splits.items():
                missing = [m.name for m in self.metrics if m.name not in values]
                if missing:
                    return f"summary.json: splits.{split} lacks {', '.join(missing)}"
        elif not isinstance(summary.get("metrics"), dict):
            return f"summary.json has no 'metrics' object (expected the {self.name} metrics)"
        return None

    def metrics_info(self) -> dict[str, dict[str, Any]]:
        """What summary.json records about each metric (direction and meaning)."""
        return {m.name: {"higher_is_better": m.higher_is_better, "description": m.description} for m in self.metrics}


# ---------------------------------------------------------------------------------------------
# Per-sample components -> metrics


@dataclass
class SampleTable:
    """Per-sample components of one run on one benchmark and split, one row per sample id."""

    ids: list[str]
    components: dict[str, np.ndarray]
    groups: list[str] | None = None
    """The resampling unit of each row (its image); ``None``: every sample is its own unit."""

    def __post_init__(self) -> None:
        # Invariant: every component has one entry per id, and ids are unique (pairing relies on it).
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("sample ids must be unique within a run and split")
        for name, values in self.components.items():
            if values.shape != (len(self.ids),):
                raise ValueError(f"component {name!r} has shape {values.shape}, expected ({len(self.ids)},)")
        if self.groups is not None and len(self.groups) != len(self.ids):
            raise ValueError(f"{len(self.groups)} groups for {len(self.ids)} samples")

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_groups(self) -> int:
        return len(set(self.groups)) if self.groups is not None else self.n

    def subset(self, ids: list[str]) -> SampleTable:
        """The rows of ``ids`` in that order (each must be present)."""
        position = {sid: i for i, sid in enumerate(self.ids)}
        rows = np.fromiter((position[sid] for sid in ids), dtype=np.int64, count=len(ids))
        groups = [self.groups[i] for i in rows] if self.groups is not None else None
        return SampleTable(list(ids), {name: values[rows] for name, values in self.components.items()}, groups)

    def group_sums(self, names: list[str]) -> np.ndarray:
        """``G x len(names)``: each component summed over the rows of each group (groups in first-seen order)."""
        matrix = np.stack([self.components[c].astype(np.float64) for c in names], axis=1) if names else np.zeros((self.n, 0))
        if self.groups is None:
            return matrix
        index = {g: i for i, g in enumerate(dict.fromkeys(self.groups))}
        sums = np.zeros((len(index), matrix.shape[1]))
        np.add.at(sums, np.fromiter((index[g] for g in self.groups), dtype=np.int64, count=self.n), matrix)
        return sums


def is_error(record: Mapping[str, Any]) -> bool:
    """A sample that could not be evaluated (its ``error`` holds something): counted, never scored."""
    return record.get("error") not in (None, "", False)


def scored_records(spec: BenchmarkSpec, records: list[Mapping[str, Any]], split: str = ALL) -> list[Mapping[str, Any]]:
    """The records every metric of ``split`` is computed over: those without an error, of that split."""
    rows = [r for r in records if not is_error(r)]
    return [r for r in rows if str(r.get("split")) == split] if spec.splits else rows


def sample_table(spec: BenchmarkSpec, records: list[Mapping[str, Any]], split: str, options: Mapping[str, Any]) -> SampleTable:
    """The per-sample components of ``split``'s scored records (what intervals and tests resample)."""
    rows = scored_records(spec, records, split)
    groups = [spec.group(r) for r in rows] if spec.group is not None else None
    return SampleTable([spec.sample_id(r) for r in rows], components(spec, rows, options), groups)


def components(spec: BenchmarkSpec, rows: list[Mapping[str, Any]], options: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Each metric's numerator and denominator field, one entry per row (``rows`` already scored, one split).

    A ``per_group`` metric's components sit on the first row of each group (zero elsewhere), so that
    summing them, over all rows or over a resample of groups, counts groups exactly as the metric does.
    """
    fields = [spec.per_sample(r, options) for r in rows]
    ratios = _ratio_metrics(spec.metrics)
    names = sorted({c for m in ratios if not m.per_group for c in (m.numerator, m.denominator)} - {"one"})
    result = {name: np.array([float(f[name]) for f in fields], dtype=np.float64) for name in names}
    result["one"] = np.ones(len(rows))
    grouped = [m for m in ratios if m.per_group]
    if grouped:
        keys = [spec.group(r) if spec.group is not None else spec.sample_id(r) for r in rows]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}
        for metric in grouped:
            all_right: dict[str, bool] = {}
            for key, f in zip(keys, fields, strict=True):
                all_right[key] = all_right.get(key, True) and float(f[metric.numerator]) == 1.0
            num, den = np.zeros(len(rows)), np.zeros(len(rows))
            for key, i in first.items():
                den[i], num[i] = 1.0, 1.0 if all_right[key] else 0.0
            result[metric.num], result[metric.den] = num, den
    return result


def _ratio_metrics(metrics: tuple[Metric, ...]) -> list[Metric]:
    """The ratio metrics among ``metrics`` and the parts of their sums (each once)."""
    found: dict[str, Metric] = {}
    for metric in metrics:
        for ratio_metric in _ratio_metrics(metric.sum_of) if metric.sum_of else [metric]:
            found.setdefault(ratio_metric.name, ratio_metric)
    return list(found.values())


def ratio(numerator: float, denominator: float, metric: Metric) -> float | None:
    """``numerator / denominator`` (not scaled), or the metric's ``empty`` value when the denominator is 0."""
    if denominator == 0:
        return metric.empty
    return numerator / denominator


def metric_values(spec: BenchmarkSpec, rows: list[Mapping[str, Any]], options: Mapping[str, Any] | None = None) -> dict[str, float | None]:
    """Every metric over ``rows`` (scored records of one split): ratios, not scaled, ``empty`` where
    undefined. What summary.json holds, and what the report recomputes its intervals from."""
    sums = {name: float(values.sum()) for name, values in components(spec, rows, options or {}).items()}

    def value(metric: Metric) -> float | None:
        if metric.sum_of:
            parts = [value(part) for part in metric.sum_of]
            return (
                None
                if any(p is None for p in parts)
                else sum(p * part.scale for p, part in zip(parts, metric.sum_of, strict=True)) / metric.scale
            )  # type: ignore[operator]
        return ratio(sums[metric.num], sums[metric.den], metric)

    return {m.name: value(m) for m in spec.metrics}


def point(table: SampleTable, metric: Metric) -> float:
    """The metric on the full sample in displayed units (NaN where undefined)."""
    if metric.sum_of:
        return float(sum(point(table, part) for part in metric.sum_of))
    value = ratio(float(table.components[metric.num].sum()), float(table.components[metric.den].sum()), metric)
    return math.nan if value is None else metric.scale * value


# ---------------------------------------------------------------------------------------------
# The registry


def get_spec(name: str) -> BenchmarkSpec:
    """The spec of benchmark ``name`` (imports its module).

    Raises:
        KeyError: ``name`` is not in :data:`BENCHMARKS` (callers word the error for their option).
    """
    return importlib.import_module(BENCHMARKS[name]).SPEC


def all_specs() -> list[BenchmarkSpec]:
    """Every benchmark's spec, in :data:`BENCHMARKS` order (the order of the report's columns)."""
    return [get_spec(name) for name in BENCHMARKS]


def option_flags() -> dict[str, list[tuple[BenchmarkSpec, Field]]]:
    """Every benchmark option by name (its ``--flag``) -> the benchmarks that declare it, with their field.

    Benchmarks may share an option (POPE's and MME's yes/no ``parser``): one flag then serves both, so
    its type and default must agree (``tests/test_cli.py``).
    """
    flags: dict[str, list[tuple[BenchmarkSpec, Field]]] = {}
    for spec in all_specs():
        for option in fields(spec.options):
            flags.setdefault(option.name, []).append((spec, option))
    return flags
