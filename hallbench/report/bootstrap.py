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

- **Units of resampling**: the *images*. POPE asks several questions about one image and the VQA
  set several per image; their answers are correlated (one image the model misreads makes several
  wrong answers), so resampling questions as if independent gives intervals that are too narrow.
  A :class:`SampleTable` carries each row's ``group`` (its image); every resample draws images with
  replacement and takes all their questions. CHAIR has one caption per image, so its groups are
  its samples.
- **CI of a cell**: nonparametric cluster bootstrap: ``n_resamples`` (default 1,000) resamples of
  the ``G`` images drawn with replacement; the 95% interval is the 2.5th and 97.5th percentile of
  the resampled metric (percentile method, numpy's linear interpolation). A resample whose
  denominator is 0 (no object mention in any drawn caption, say) has no value and is left out.
- **Paired comparison vs Base**: the two runs' samples are paired by sample id (only ids present,
  and not errors, in both runs count). The difference ``variant - base`` gets a cluster-bootstrap
  95% interval (the same images drawn for both runs), and a **test of the null hypothesis that the
  two runs are exchangeable**: a paired permutation test at the image level (for each image, the
  two runs' answers are swapped or not with probability 1/2, ``max(n_resamples, 9999)`` times; two-sided
  p = (1 + #{|d*| >= |d|}) / (1 + permutations)). It works for every ratio metric (accuracy, F1,
  CHAIRs, CHAIRi). For a metric that is a proportion of 0/1 outcomes over all samples (POPE
  accuracy, CHAIRs) the exact McNemar test on the discordant samples (``scipy.stats.binomtest``) is
  reported too; it assumes independent samples, which POPE's several questions per image are not,
  so the marks use the permutation test.
- **Multiplicity**: the tables mark a cell when its permutation p-value stays below 0.05 after the
  Holm correction over every cell of that table that is tested against Base (:func:`holm`).
- **Several training seeds** in one cell: the value is the mean over the seeds' runs; its interval
  is the cluster bootstrap of that mean (the same images drawn for every seed: the uncertainty from
  the choice of images, not from the seeds, whose spread is the standard deviation reported beside
  it). The paired test pools the seed pairs (seed s of the variant against seed s of Base): each
  (seed, image) is one unit of the permutation, and the statistic is the metric over the pooled
  pairs (for accuracy and CHAIRs, exactly the mean over seeds). It asks whether these trained
  models differ on these images; whether the method's effect exceeds the seed-to-seed spread is
  the one-sample t-test over the per-seed differences (``seed_t_p``), which with three seeds can
  only find a large and consistent effect.
- **Seeds of the resampling**: each computation gets its own ``numpy.random.Generator`` seeded from the user's seed and
  a stable hash of what is being resampled (model, variant, bench, split, decoding), so a number does
  not change when other runs are added to the folder or the folder is moved.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from hallbench.eval.benchmark import Metric, SampleTable, point

CONFIDENCE = 0.95
ALPHA = 0.05
"""Family-wise level of the tables' significance marks (after Holm)."""
MIN_PERMUTATIONS = 9999
"""The permutation test's smallest p-value is 1 / (1 + permutations): 1e-4 lets Holm reach 0.05 over
hundreds of cells (1,000 permutations would cap a table at 50 tested cells)."""
# Resamples per block: bounds the count matrix at block x n integers (250 x 3,000 POPE questions = 6 MB).
_BLOCK = 250


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
    """The cluster-bootstrap 95% interval of the difference."""
    p_value: float | None
    """Two-sided p-value of the image-level paired permutation test (before any multiplicity correction)."""
    n_paired: int
    n_groups: int | None = None
    """Images the paired samples come from (the resampling units)."""
    mcnemar_p: float | None = None
    """Exact McNemar p-value, for a proportion of 0/1 outcomes (POPE accuracy, CHAIRs); ``None`` otherwise."""

    @property
    def significant(self) -> bool:
        """p < 0.05 for this comparison alone (the tables apply :func:`holm` across their cells)."""
        return self.p_value is not None and self.p_value < ALPHA


def stable_seed(seed: int, key: str) -> np.random.SeedSequence:
    """A seed sequence from the user's seed and a string key (crc32: stable across processes and Python versions)."""
    return np.random.SeedSequence([int(seed), zlib.crc32(key.encode("utf-8"))])


def _ratio(num: np.ndarray, den: np.ndarray, metric: Metric) -> np.ndarray:
    # Vectorised :func:`hallbench.eval.benchmark.ratio` in displayed units (NaN where undefined).
    with np.errstate(divide="ignore", invalid="ignore"):
        values = metric.scale * num / den
    return np.where(den == 0, np.nan if metric.empty is None else metric.scale * metric.empty, values)


def _resampled(tables: list[SampleTable], metrics: dict[str, Metric], n_resamples: int, rng: np.random.Generator) -> list[dict]:
    """For each table, ``{metric: array of n_resamples values}``; all tables share the same draws (paired).

    The draws are of groups (images): tables resampled together have the same rows and groups.
    """
    names = _fields(metrics)
    matrices = [t.group_sums(names) for t in tables]  # G x k each
    n = matrices[0].shape[0]
    sums = [np.empty((n_resamples, len(names))) for _ in tables]
    done = 0
    while done < n_resamples:
        block = min(_BLOCK, n_resamples - done)
        # Counts of each group in each resample: a multinomial draw of G out of G equally likely groups.
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=block).astype(np.float64)
        for matrix, total in zip(matrices, sums, strict=True):
            total[done : done + block] = counts @ matrix
        done += block
    column = {c: i for i, c in enumerate(names)}
    return [{name: _value(total, column, m) for name, m in metrics.items()} for total in sums]


def _fields(metrics: dict[str, Metric]) -> list[str]:
    return sorted({c for m in metrics.values() for c in m.fields()})


def _value(totals: np.ndarray, column: dict[str, int], metric: Metric) -> np.ndarray:
    """The metric of each row of ``totals`` (summed components, columns named by ``column``), displayed units."""
    if metric.sum_of:
        return np.sum([_value(totals, column, part) for part in metric.sum_of], axis=0)
    return _ratio(totals[:, column[metric.num]], totals[:, column[metric.den]], metric)


def _permutation_p(
    variant: np.ndarray, base: np.ndarray, column: dict[str, int], metric: Metric, n_resamples: int, rng: np.random.Generator
) -> float | None:
    """Two-sided p-value of the paired permutation test: per group, the two runs swapped with probability 1/2."""
    observed = _value(variant.sum(0)[None, :], column, metric)[0] - _value(base.sum(0)[None, :], column, metric)[0]
    if np.isnan(observed):
        return None
    extreme, done = 0, 0
    while done < n_resamples:
        block = min(_BLOCK, n_resamples - done)
        swap = rng.integers(0, 2, size=(block, variant.shape[0])).astype(np.float64)
        keep = 1.0 - swap
        v = keep @ variant + swap @ base
        b = swap @ variant + keep @ base
        d = _value(v, column, metric) - _value(b, column, metric)
        # A tolerance so that a permutation equal to the observed difference counts as extreme (ties).
        extreme += int(np.sum(np.abs(np.nan_to_num(d, nan=0.0)) >= abs(observed) - 1e-9))
        done += block
    return (1 + extreme) / (1 + n_resamples)


def _mcnemar_p(variant: SampleTable, base: SampleTable, metric: Metric) -> float | None:
    """Exact McNemar test when the metric is a share of 0/1 outcomes over every sample; else ``None``."""
    from scipy.stats import binomtest

    if metric.sum_of:
        return None
    v, b = variant.components[metric.num], base.components[metric.num]
    binary = np.isin(v, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()
    if not binary or not (variant.components[metric.den] == 1).all() or not (base.components[metric.den] == 1).all():
        return None
    only_variant, only_base = int(np.sum((v == 1) & (b == 0))), int(np.sum((v == 0) & (b == 1)))
    discordant = only_variant + only_base
    return 1.0 if discordant == 0 else float(binomtest(only_variant, discordant, 0.5).pvalue)


def n_permutations(n_resamples: int) -> int:
    """Permutations of the paired test for a report with ``n_resamples`` bootstrap resamples."""
    return max(n_resamples, MIN_PERMUTATIONS)


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); ``None`` entries stay ``None`` and do not count."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running, m = 0.0, len(present)
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def _interval(values: np.ndarray) -> Interval:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return Interval(None, None)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def stack_tables(tables: dict[str, SampleTable]) -> SampleTable:
    """One table of several runs' rows (one per seed): ids and groups prefixed ``<label>/``, so that
    a resample or permutation unit is one image of one run."""
    ids, groups, components = [], [], {}
    for label, table in tables.items():
        ids += [f"{label}/{sid}" for sid in table.ids]
        groups += [f"{label}/{g}" for g in (table.groups if table.groups is not None else table.ids)]
    for name in next(iter(tables.values())).components:
        components[name] = np.concatenate([t.components[name] for t in tables.values()])
    return SampleTable(ids, components, groups)


def bootstrap_ci_of_mean(
    tables: list[SampleTable], metrics: dict[str, Metric], *, n_resamples: int, seed: np.random.SeedSequence
) -> dict[str, Interval]:
    """95% interval of the mean over ``tables`` (several seeds' runs on the same samples), resampling
    the samples they share with the same draws for every table."""
    others = [set(t.ids) for t in tables[1:]]
    shared = [sid for sid in tables[0].ids if all(sid in ids for ids in others)] if tables else []
    if not shared or n_resamples < 1:
        return {name: Interval(None, None) for name in metrics}
    aligned = [t.subset(shared) for t in tables]
    aligned = [SampleTable(t.ids, t.components, aligned[0].groups) for t in aligned]
    draws = _resampled(aligned, metrics, n_resamples, np.random.default_rng(seed))
    return {name: _interval(np.mean([d[name] for d in draws], axis=0)) for name in metrics}


def bootstrap_ci(table: SampleTable, metrics: dict[str, Metric], *, n_resamples: int, seed: np.random.SeedSequence) -> dict[str, Interval]:
    """95% percentile interval of each metric over ``n_resamples`` resamples of the table's samples."""
    if table.n == 0 or n_resamples < 1:
        return {name: Interval(None, None) for name in metrics}
    (draws,) = _resampled([table], metrics, n_resamples, np.random.default_rng(seed))
    return {name: _interval(values) for name, values in draws.items()}


def paired_test(
    variant: SampleTable, base: SampleTable, metrics: dict[str, Metric], *, n_resamples: int, seed: np.random.SeedSequence
) -> dict[str, PairedResult]:
    """``variant - base`` over the sample ids the two tables share: its cluster-bootstrap interval,
    the image-level paired permutation p-value and, where it applies, the exact McNemar p-value."""
    base_ids = set(base.ids)
    shared = [sid for sid in variant.ids if sid in base_ids]
    if not shared or n_resamples < 1:
        return {name: PairedResult(None, None, None, None, len(shared)) for name in metrics}
    v, b = variant.subset(shared), base.subset(shared)
    b = SampleTable(b.ids, b.components, v.groups)  # one grouping for both (the same questions)
    boot_rng, perm_rng = (np.random.default_rng(s) for s in seed.spawn(2))
    draws_v, draws_b = _resampled([v, b], metrics, n_resamples, boot_rng)
    names = _fields(metrics)
    column = {c: i for i, c in enumerate(names)}
    groups_v, groups_b = v.group_sums(names), b.group_sums(names)
    results = {}
    for name, metric in metrics.items():
        observed = point(v, metric) - point(b, metric)
        delta = draws_v[name] - draws_b[name]
        interval = _interval(delta[~np.isnan(delta)])
        p_value = _permutation_p(groups_v, groups_b, column, metric, n_permutations(n_resamples), perm_rng)
        results[name] = PairedResult(
            None if np.isnan(observed) else observed,
            interval.low,
            interval.high,
            p_value,
            len(shared),
            v.n_groups,
            _mcnemar_p(v, b, metric),
        )
    return results
