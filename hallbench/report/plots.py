"""Plots (matplotlib, Agg backend, PNG): training curves per run, POPE F1 and yes ratio per variant.

Each PNG carries its provenance in its metadata (``Description``: the runs it was drawn from), and
``index.md`` lists the same under the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from hallbench.report.collect import POPE_SPLITS, TrainingRun, variant_rank
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


def plot_training_curves(run: TrainingRun, records: list[dict], out: Path, *, provenance: str) -> None:
    """CE, L_orth and L_ctr against the step, one panel each (their scales differ by orders of magnitude)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(LOSSES), figsize=(12, 3.4), constrained_layout=True)
    for ax, (key, name) in zip(axes, LOSSES, strict=True):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="." if len(points) < 30 else None, color="C0")
        else:
            # null in every record: the variant has no such term (lambda = 0), which is information, not an error.
            ax.text(0.5, 0.5, f"no {name}\n(not used by this variant)", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.model} / {run.variant_label}: training losses")
    with atomic_path(out) as tmp:
        fig.savefig(
            tmp, format="png", dpi=100, metadata={"Title": f"training curves {run.model} {run.variant_label}", "Description": provenance}
        )
    plt.close(fig)


def plot_pope(frame: pd.DataFrame, out: Path, *, labels: dict[str, str], provenance: str) -> bool:
    """POPE F1 and yes ratio per variant (bars per split, 95% CI whiskers), one row of panels per model.

    Greedy decoding only, as in the paper's tables. Returns False (no file) when there is no POPE number.
    """
    data = frame[(frame.bench == "pope") & (frame.decoding == "greedy") & frame.metric.isin(["f1", "yes_ratio"])]
    if data.empty:
        return False
    plt = _pyplot()
    models = sorted(data.model.unique())
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.6 * len(models)), squeeze=False, constrained_layout=True)
    for row, model in zip(axes, models, strict=True):
        subset = data[data.model == model]
        variants = sorted(subset.variant.unique(), key=lambda v: (variant_rank(v), v))
        width = 0.8 / len(POPE_SPLITS)
        for ax, metric, name in ((row[0], "f1", "F1 (%)"), (row[1], "yes_ratio", "Yes ratio (%)")):
            for k, split in enumerate(POPE_SPLITS):
                xs, heights, errors = [], [], [[], []]
                for i, variant in enumerate(variants):
                    hit = subset[(subset.variant == variant) & (subset.split == split) & (subset.metric == metric)]
                    if hit.empty or pd.isna(hit.value.iloc[0]):
                        continue
                    value, low, high = hit.value.iloc[0], hit.ci_low.iloc[0], hit.ci_high.iloc[0]
                    xs.append(i + (k - 1) * width)
                    heights.append(value)
                    errors[0].append(0.0 if pd.isna(low) else max(0.0, value - low))
                    errors[1].append(0.0 if pd.isna(high) else max(0.0, high - value))
                if xs:
                    ax.bar(xs, heights, width, yerr=errors, capsize=3, label=split, color=f"C{k}")
            if metric == "yes_ratio":
                ax.axhline(50, color="0.3", linestyle="--", linewidth=1, label="50% (POPE labels)")
            ax.set_xticks(range(len(variants)), [labels.get(v, v) for v in variants], rotation=20, ha="right")
            ax.set_ylim(0, 118)  # headroom above 100% for the legend, which must not hide a bar
            ax.set_ylabel(name)
            ax.set_title(f"{model}: POPE {name.split(' (')[0]}")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8, loc="upper center", ncol=4, frameon=False)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Title": "POPE F1 and yes ratio per variant", "Description": provenance})
    plt.close(fig)
    return True
