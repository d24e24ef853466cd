"""Bootstrap confidence intervals and paired significance tests, recomputed from per-sample records.

Every metric hallbench reports is a **ratio of sums over samples**: POPE accuracy is
``sum(correct) / sum(1)``, precision ``sum(tp) / sum(answered yes)``, F1 ``sum(2 tp) / (sum(answered
yes) + sum(label yes))``; CHAIRi is ``sum(hallucinated mentions) / sum(mentions)``; the VQA closed
accuracy is ``sum(correct) / sum(judged)``. So a run's samples become a matrix of per-sample
*components* (one row per question or caption), and any resample of the samples is a vector of
counts ``w`` (how often each sample was drawn): the metric of that resample is ``(w @ num) / (w @ den)``.
One count matrix serves every metric of a cell, and ratios of sums reproduce the benchmark's own
aggregate exactly on the full sample (``w = 1``), which :func:`point` checks against ``summary.json``.

Method (documented in ``docs/report.md``):

- **CI of a cell**: nonparametric bootstrap over the samples of that run and split: ``n_resamples``
  (default 1,000) resamples of ``n`` samples drawn with replacement; the 95% interval is the 2.5th
  and 97.5th percentile of the resampled metric (percentile method, numpy's linear interpolation).
  A resample whose denominator is 0 (no object mention in any drawn caption, say) has no value and is
  left out of the percentiles.
- **Paired test vs Base**: the two runs' samples are paired by sample id (only ids present, and not
  errors, in both runs count); each resample draws the *same* ids for both runs, and the statistic is
  the difference ``variant - base``. The difference is significant at the 5% level when its 95%
  percentile interval excludes 0. A two-sided bootstrap p-value, ``2 * min(P(d <= 0), P(d >= 0))``,
  is reported alongside (capped at 1).
- **Seeds**: each computation gets its own ``numpy.random.Generator`` seeded from the user's seed and
  a stable hash of what is being resampled (model, variant, bench, split, decoding), so a number does
  not change when other runs are added to the folder or the folder is moved.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
# Resamples per block: bounds the count matrix at block x n integers (250 x 3,000 POPE questions = 6 MB).
_BLOCK = 250


@dataclass(frozen=True)
class RatioMetric:
    """``scale * sum(num) / sum(den)``; ``empty`` is the value when ``sum(den) == 0``."""

    num: str
    den: str
    scale: float = 100.0
    empty: float = float("nan")
    """POPE's guards give 0.0 for an empty denominator; CHAIR and VQA leave the metric undefined (NaN)."""


@dataclass
class SampleTable:
    """Per-sample components of one run on one bench and split, one row per sample id."""

    ids: list[str]
    components: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        # Invariant: every component has one entry per id, and ids are unique (pairing relies on it).
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("sample ids must be unique within a run and split")
        for name, values in self.components.items():
            if values.shape != (len(self.ids),):
                raise ValueError(f"component {name!r} has shape {values.shape}, expected ({len(self.ids)},)")

    @property
    def n(self) -> int:
        return len(self.ids)

    def subset(self, ids: list[str]) -> SampleTable:
        """The rows of ``ids`` in that order (each must be present)."""
        position = {sid: i for i, sid in enumerate(self.ids)}
        rows = np.fromiter((position[sid] for sid in ids), dtype=np.int64, count=len(ids))
        return SampleTable(list(ids), {name: values[rows] for name, values in self.components.items()})


@dataclass(frozen=True)
class Interval:
    low: float | None
    high: float | None


@dataclass(frozen=True)
class PairedResult:
    delta: float | None
    """Observed ``variant - base`` on the paired samples."""
    low: float | None
    high: float | None
    p_value: float | None
    n_paired: int

    @property
    def significant(self) -> bool:
        # Significant when the 95% interval of the difference excludes 0 (None when untestable).
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def stable_seed(seed: int, key: str) -> np.random.SeedSequence:
    """A seed sequence from the user's seed and a string key (crc32: stable across processes and Python versions)."""
    return np.random.SeedSequence([int(seed), zlib.crc32(key.encode("utf-8"))])


def _ratio(num: np.ndarray, den: np.ndarray, metric: RatioMetric) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        values = metric.scale * num / den
    return np.where(den == 0, metric.empty, values)


def point(table: SampleTable, metric: RatioMetric) -> float:
    """The metric on the full sample (what the benchmark's aggregate reports)."""
    num = np.array([table.components[metric.num].sum()])
    den = np.array([table.components[metric.den].sum()])
    return float(_ratio(num, den, metric)[0])


def _resampled(tables: list[SampleTable], metrics: dict[str, RatioMetric], n_resamples: int, rng: np.random.Generator) -> list[dict]:
    """For each table, ``{metric: array of n_resamples values}``; all tables share the same draws (paired)."""
    n = tables[0].n
    names = sorted({c for m in metrics.values() for c in (m.num, m.den)})
    matrices = [np.stack([t.components[c].astype(np.float64) for c in names], axis=1) for t in tables]  # n x k each
    sums = [np.empty((n_resamples, len(names))) for _ in tables]
    done = 0
    while done < n_resamples:
        block = min(_BLOCK, n_resamples - done)
        # Counts of each sample in each resample: a multinomial draw of n out of n equally likely samples.
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=block).astype(np.float64)
        for matrix, total in zip(matrices, sums, strict=True):
            total[done : done + block] = counts @ matrix
        done += block
    column = {c: i for i, c in enumerate(names)}
    return [{name: _ratio(total[:, column[m.num]], total[:, column[m.den]], m) for name, m in metrics.items()} for total in sums]


def _interval(values: np.ndarray) -> Interval:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return Interval(None, None)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def bootstrap_ci(
    table: SampleTable, metrics: dict[str, RatioMetric], *, n_resamples: int, seed: np.random.SeedSequence
) -> dict[str, Interval]:
    """95% percentile interval of each metric over ``n_resamples`` resamples of the table's samples."""
    if table.n == 0 or n_resamples < 1:
        return {name: Interval(None, None) for name in metrics}
    (draws,) = _resampled([table], metrics, n_resamples, np.random.default_rng(seed))
    return {name: _interval(values) for name, values in draws.items()}


def paired_test(
    variant: SampleTable, base: SampleTable, metrics: dict[str, RatioMetric], *, n_resamples: int, seed: np.random.SeedSequence
) -> dict[str, PairedResult]:
    """Paired bootstrap of ``variant - base`` over the sample ids the two tables share."""
    base_ids = set(base.ids)
    shared = [sid for sid in variant.ids if sid in base_ids]
    if not shared or n_resamples < 1:
        return {name: PairedResult(None, None, None, None, len(shared)) for name in metrics}
    v, b = variant.subset(shared), base.subset(shared)
    draws_v, draws_b = _resampled([v, b], metrics, n_resamples, np.random.default_rng(seed))
    results = {}
    for name, metric in metrics.items():
        observed = point(v, metric) - point(b, metric)
        delta = draws_v[name] - draws_b[name]
        delta = delta[~np.isnan(delta)]
        interval = _interval(delta)
        p_value = float(min(1.0, 2 * min(np.mean(delta <= 0), np.mean(delta >= 0)))) if delta.size else None
        results[name] = PairedResult(None if np.isnan(observed) else observed, interval.low, interval.high, p_value, len(shared))
    return results
