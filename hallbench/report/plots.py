"""Plots (matplotlib, Agg backend, PNG): training curves per run (and of the pretraining a run started
from, when that is a hallbench run too), each benchmark's ``plot_metrics`` per variant (POPE: F1 and
yes ratio), per-seed values.

Each PNG carries its provenance in its metadata (``Description``: the runs it was drawn from), and
``index.md`` lists the same under the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from hallbench.eval.benchmark import BenchmarkSpec, all_specs
from hallbench.report.collect import variant_rank
from hallbench.runfolder import atomic_path

LOSSES = (("ce", "CE"), ("l_orth", "L_orth"), ("l_ctr", "L_ctr"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: the report runs on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def read_train_log(path: Path) -> tuple[list[dict], list[str]]:
    """The log's records and one problem per unreadable line (a line cut by a crash is skipped, not fatal)."""
    records, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{path}, line {number}: not JSON ({err.msg}); line skipped")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            problems.append(f"{path}, line {number}: expected an object with an integer 'step'; line skipped")
            continue
        records.append(record)
    return records, problems


def plot_training_curves(title: str, records: list[dict], out: Path, *, provenance: str) -> bool:
    """One panel per loss term the run logged (CE, L_orth, L_ctr: their scales differ by orders of
    magnitude) against the step; a term a variant does not use (null in every record) gets no panel.
    Returns False (no file) when no record has any loss."""
    present = [(key, name) for key, name in LOSSES if any(isinstance(r.get(key), int | float) for r in records)]
    if not present:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.4), squeeze=False, constrained_layout=True)
    for ax, (key, name) in zip(axes[0], present, strict=True):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="." if len(points) < 30 else None, color="C0")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    import textwrap

    fig.suptitle(textwrap.fill(title, 45 * len(present)), fontsize=10)  # a one-panel figure is 400 pixels wide
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Title": title, "Description": provenance})
    plt.close(fig)
    return True


def zoomed_limits(
    lows: list[float], highs: list[float], *, also: tuple[float, ...] = (), floor: float = 0.0, ceiling: float = 100.0
) -> tuple[float, float]:
    """A value axis around the data (interval ends and reference lines) with a 15% margin, within [floor, ceiling]:
    differences of a point or two between variants must be visible, not flattened against a 0-100 axis."""
    points = [*lows, *highs, *also]
    low, high = min(points), max(points)
    margin = max(0.15 * (high - low), 1.0)
    return max(floor, low - margin), min(ceiling, high + margin)


def plot_split_metrics(frame: pd.DataFrame, spec: BenchmarkSpec, out: Path, *, labels: dict[str, str], provenance: str) -> bool:
    """The benchmark's ``plot_metrics`` (POPE: F1 and yes ratio) per variant: points per split with their
    95% CI or, over several seeds, ± the standard deviation across seeds, one row of panels per model,
    the value axis zoomed to the data. Greedy decoding only, as in the paper's tables. Returns False
    (no file) when there is no number to draw.
    """
    metrics = [spec.metric(name) for name in spec.plot_metrics]
    data = own_cells(frame)
    data = data[(data.bench == spec.name) & (data.decoding == "greedy") & data.metric.isin([m.name for m in metrics])]
    if data.empty or not metrics:
        return False
    plt = _pyplot()
    models = sorted(data.model.unique())
    splits = spec.split_names
    fig, axes = plt.subplots(len(models), len(metrics), figsize=(6 * len(metrics), 3.6 * len(models)), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    for row, model in zip(axes, models, strict=True):
        subset = data[data.model == model]
        variants = sorted(subset.variant.unique(), key=lambda v: (variant_rank(v), v))
        offset = 0.6 / len(splits)
        for ax, metric in zip(row, metrics, strict=True):
            lows, highs = [], []
            for k, split in enumerate(splits):
                xs, values, errors = [], [], [[], []]
                for i, variant in enumerate(variants):
                    hit = subset[(subset.variant == variant) & (subset.split == split) & (subset.metric == metric.name)]
                    if hit.empty or pd.isna(hit.value.iloc[0]):
                        continue
                    entry = hit.iloc[0]
                    low, high = _error_bounds(entry)
                    xs.append(i + (k - (len(splits) - 1) / 2) * offset)
                    values.append(entry.value)
                    errors[0].append(entry.value - low)
                    errors[1].append(high - entry.value)
                    lows.append(low)
                    highs.append(high)
                if xs:
                    ax.errorbar(xs, values, yerr=errors, fmt="o", capsize=3, label=split, color=f"C{k}")
            reference = () if metric.reference is None else (metric.reference,)
            if metric.reference is not None:
                ax.axhline(metric.reference, color="0.3", linestyle="--", linewidth=1, label=metric.reference_label)
            if lows:
                ax.set_ylim(*zoomed_limits(lows, highs, also=reference))
            ax.set_xticks(range(len(variants)), [labels.get(v, v) for v in variants], rotation=20, ha="right")
            ax.set_xlim(-0.6, len(variants) - 0.4)
            ax.set_ylabel(f"{metric.header} ({metric.unit})")
            ax.set_title(f"{model}: {spec.title} {metric.header}")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8, loc="best", ncol=2, frameon=True, framealpha=0.8)
    title = f"{spec.title} {' and '.join(m.header for m in metrics)} per variant"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Title": title, "Description": provenance})
    plt.close(fig)
    return True


def own_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame's rows of the cells themselves: not the per-seed rows, not the re-scorings."""
    return frame[~frame.per_seed.astype(bool) & (frame.scoring == "")]


def _error_bounds(entry: object) -> tuple[float, float]:
    """The whisker of a frame row: ± the seeds' standard deviation over several seeds, else its 95% CI
    (the value itself when there is neither)."""
    value = float(entry.value)  # type: ignore[attr-defined]
    sd = getattr(entry, "seed_sd", None)
    if getattr(entry, "n_seeds", 1) and int(entry.n_seeds) > 1 and sd is not None and not pd.isna(sd):  # type: ignore[attr-defined]
        return value - float(sd), value + float(sd)
    low, high = entry.ci_low, entry.ci_high  # type: ignore[attr-defined]
    return (value if pd.isna(low) else min(value, float(low))), (value if pd.isna(high) else max(value, float(high)))


def headline_metrics() -> list[tuple[str, str, str, str]]:
    """``(bench, split, metric, name)`` of every benchmark's ``headline`` values (the per-seed plot's panels)."""
    return [
        (spec.name, split, name, f"{spec.title} {split} {spec.metric(name).header}" if spec.splits else spec.metric(name).header)
        for spec in all_specs()
        for split, name in spec.headline
    ]


def plot_seeds(frame: pd.DataFrame, out: Path, *, labels: dict[str, str], provenance: str) -> bool:
    """Per-seed values (dots) and their mean (bar) per variant for the paper's main metrics, greedy
    decoding, one row of panels per model. Returns False (no file) when no cell has several seeds."""
    greedy = frame[(frame.decoding == "greedy") & (frame.scoring == "")]
    several = greedy[(greedy.n_seeds > 1) & ~greedy.per_seed.astype(bool)]
    if several.empty:
        return False
    plt = _pyplot()
    models = sorted(several.model.unique())
    # Only the metrics some several-seed cell has: no empty panel.
    shown = [
        m for m in headline_metrics() if not several[(several.bench == m[0]) & (several.split == m[1]) & (several.metric == m[2])].empty
    ]
    if not shown:
        return False
    fig, axes = plt.subplots(len(models), len(shown), figsize=(4 * len(shown), 3.4 * len(models)), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    for row, model in zip(axes, models, strict=True):
        for ax, (bench, split, metric, name) in zip(row, shown, strict=True):
            cells = several[(several.model == model) & (several.bench == bench) & (several.split == split) & (several.metric == metric)]
            variants = sorted(cells.variant.unique(), key=lambda v: (variant_rank(v), v))
            points: list[float] = []
            for i, variant in enumerate(variants):
                per_seed = greedy[(greedy.model == model) & (greedy.variant == variant) & (greedy.bench == bench)
                                  & (greedy.split == split) & (greedy.metric == metric) & greedy.per_seed.astype(bool)]  # fmt: skip
                values = [float(v) for v in per_seed.value if not pd.isna(v)]
                mean = cells[cells.variant == variant].value.iloc[0]
                if not pd.isna(mean):
                    ax.hlines(float(mean), i - 0.3, i + 0.3, color="C0", linewidth=2)
                ax.scatter([i] * len(values), values, color="C1", zorder=3, s=18)
                points += values
            ax.set_xticks(range(len(variants)), [labels.get(v, v) for v in variants], rotation=20, ha="right")
            if points:
                ax.set_ylim(*zoomed_limits(points, points))
            ax.set_title(f"{model}: {name} (%)", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Per-seed values (dots) and their mean (line)")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Title": "per-seed values", "Description": provenance})
    plt.close(fig)
    return True
