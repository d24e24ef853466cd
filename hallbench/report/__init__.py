"""The report stage: run folders in, the paper's tables (Markdown + LaTeX), plots and an index out.

    collect.py    find training and evaluation runs, the long DataFrame (value, n, CI, paired test per cell)
    bootstrap.py  bootstrap CIs and paired significance, recomputed from predictions.jsonl
    tables.py     table2, ablation_injection, ablation_loss, each benchmark's detail table (pope_detail, decoding)
                  and re-scorings table (pope_scorings) -> Markdown and LaTeX; layouts from the benchmarks' specs
    plots.py      training curves (and the pretraining they start from), each benchmark's plot_metrics, per-seed values

:func:`run_report` is what ``hallbench report`` calls. The output is deterministic: the same runs,
seed and number of resamples give byte-identical files (no timestamps are written), so a report can
be committed and diffed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hallbench.errors import HallbenchError
from hallbench.eval.benchmark import all_specs, get_spec
from hallbench.report.collect import (
    EvalRun,
    RunSet,
    Skipped,
    TrainingRun,
    build_frame,
    discover,
    resolve_claims,
    resolve_rescored,
    scoring_label,
)
from hallbench.report.tables import Table, build_tables, legend, to_latex, to_markdown
from hallbench.runfolder import atomic_path, locked_output_folder, recorded_path_candidates, write_text_atomic

__all__ = ["ReportResult", "run_report"]


@dataclass
class ReportResult:
    out: Path
    files: list[Path]
    """Every file written, index.md last."""
    frame: pd.DataFrame
    """The long frame (also written as results.csv)."""
    tables: dict[str, Table]
    skipped: list[Skipped]
    """Folders that could not be read (path and reason)."""
    excluded: list[Skipped] = field(default_factory=list)
    """Readable runs kept out of the paper tables, with the reason."""
    warnings: list[Skipped] = field(default_factory=list)
    """Runs used, but with something to say (no CIs, a replaced cell, a bad log line)."""

    @property
    def index(self) -> Path:
        return self.out / "index.md"


def run_report(runs: Path, out: Path, *, n_resamples: int = 1000, seed: int = 0, prefer: str | None = None) -> ReportResult:
    """Write ``out/{table}.md``, ``out/{table}.tex``, ``out/*.png``, ``out/results.csv`` and ``out/index.md``.

    Raises:
        HallbenchError: ``runs`` is not a folder, ``n_resamples`` < 0, or two runs claim the same cell
            (unless ``prefer == "newest"``).
    """
    if n_resamples < 0:
        raise HallbenchError(f"--resamples must be >= 0 (0 disables the bootstrap), got {n_resamples}")
    runs, out = Path(runs), Path(out)
    found = discover(runs)
    cells = resolve_claims(found, prefer)
    rescored = resolve_rescored(found, cells)
    rel = _relative_to(runs)
    collected = build_frame(found, cells, rescored=rescored, n_resamples=n_resamples, seed=seed, relative=rel)
    tables = build_tables(collected.frame, found, cells, n_resamples=n_resamples, seed=seed, rescored=rescored)
    # One writer at a time: two reports into one folder would interleave their files.
    with locked_output_folder(out, "--out"):
        files: list[Path] = []
        warnings = list(collected.warnings) + list(found.replaced)

        for name, table in tables.items():
            runs_used = [_run_of(found, path) for path in table.runs]
            footer = _provenance(runs_used, rel)
            md = [f"# {table.title}", "", to_markdown(table), *[f"- {line}" for line in legend(table, n_resamples=n_resamples, seed=seed)]]
            md += ["", *_missing_md(table)]
            md += ["", "## Provenance", "", *footer]
            files.append(_write(out / f"{name}.md", "\n".join(md) + "\n"))
            tex = [f"% {table.title} (hallbench report; needs \\usepackage{{booktabs}})"]
            tex += [f"% {line}" for line in legend(table, n_resamples=n_resamples, seed=seed)]
            tex += [to_latex(table).rstrip("\n")]
            tex += ["% Missing cells:" if table.missing else "% Missing cells: none"]
            tex += [f"%   {' / '.join(m.row.labels)}, {m.bench} {'/'.join(m.splits)}: {' ; '.join(m.commands)}" for m in table.missing]
            tex += ["% Provenance:", *[f"% {line}" for line in footer]]
            files.append(_write(out / f"{name}.tex", "\n".join(tex) + "\n"))

        plots = _plots(found, collected.frame, out, rel, warnings)
        files += [p for p, _ in plots]
        csv = out / "results.csv"
        with atomic_path(csv) as tmp:
            collected.frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
        files.append(csv)
        result = ReportResult(out, files, collected.frame, tables, found.skipped, found.excluded, warnings)
        files.append(_write(out / "index.md", _index(result, found, plots, runs, rel, n_resamples, seed)))
        return result


# ---------------------------------------------------------------------------------------------


def _relative_to(root: Path):
    resolved = root.resolve()

    def rel(path: Path) -> str:
        # Run folders are named relative to --runs, so a moved folder gives the same report.
        try:
            return Path(path).resolve().relative_to(resolved).as_posix() or "."
        except ValueError:
            return str(path)

    return rel


def _run_of(found: RunSet, path: Path) -> EvalRun:
    return next(r for r in found.evals if r.path == path)


def _write(path: Path, text: str) -> Path:
    return write_text_atomic(path, text)


def _short(commit: str | None) -> str:
    if not commit:
        return "unknown"
    head, dirty = commit.removesuffix("-dirty"), commit.endswith("-dirty")
    return head[:12] + ("-dirty" if dirty else "")


def _provenance(runs: list[EvalRun], rel) -> list[str]:
    if not runs:
        return ["Built from no run."]
    lines = ["Built from these runs (folders relative to --runs):", ""]
    for run in sorted(runs, key=lambda r: rel(r.path)):
        line = f"- `{rel(run.path)}`: {run.bench} {run.decoding}, git {_short(run.git_commit)}, {run.created or 'date unknown'}"
        if run.training_path is not None:
            line += f"; model from training run `{rel(run.training_path)}`"
        lines.append(line)
    return lines


def _missing_md(table: Table) -> list[str]:
    if not table.missing:
        return ["No missing cells."]
    lines = ["## Missing cells", "", "Each line names the empty cells of one row and the command(s) that would fill them:", ""]
    for m in table.missing:
        where = " / ".join(m.row.labels)
        splits = [s for s in m.splits if s not in ("", "all")]
        what = get_spec(m.bench).title + (f" {', '.join(splits)}" if splits else "")
        what += f" scored as {scoring_label(m.scoring)}" if m.scoring else ""
        lines.append(f"- {where}: {what} ({', '.join(m.metrics)}): " + " then ".join(f"`{c}`" for c in m.commands))
    return lines


def _plots(found: RunSet, frame: pd.DataFrame, out: Path, rel, warnings: list[Skipped]) -> list[tuple[Path, str]]:
    from hallbench.report.collect import variant_rank
    from hallbench.report.plots import own_cells, plot_seeds, plot_split_metrics, plot_training_curves
    from hallbench.report.tables import _slug

    written: list[tuple[Path, str]] = []
    names: set[str] = set()

    def unique(stem: str) -> str:
        name, k = stem, 2
        while name in names:  # two training runs of the same variant (a re-run, another seed): keep both plots
            name, k = f"{stem}_{k}", k + 1
        names.add(name)
        return name

    trainings: list[TrainingRun] = sorted(found.trainings, key=lambda t: (t.model, variant_rank(t.variant), rel(t.path)))
    for run in trainings:
        records = _train_log(run.path, warnings)
        if records is None:
            continue
        seed = (run.config.get("train") or {}).get("seed") if (run.config.get("train") or {}).get("seed_in_folder") else None
        stem = f"train_{_slug(run.model)}_{_slug(run.variant_label)}" + (f"_seed{seed}" if seed is not None else "")
        source = f"training run {rel(run.path)} (git {_short(run.git_commit)}, {run.created or 'date unknown'})"
        path = out / f"{unique(stem)}.png"
        title = f"{run.model} / {run.variant_label}" + (f" / seed {seed}" if seed is not None else "") + ": training losses"
        if plot_training_curves(title, records, path, provenance=source):
            written.append((path, source))
    for folder, config in _starting_points(found):
        records = _train_log(folder, warnings)
        if records is None:
            continue
        source = f"the training run {folder} that the runs above start from (git {_short(config.get('git_commit'))})"
        display = (config.get("model") or {}).get("display_name") or folder.name
        path = out / f"{unique(f'pretrain_{_slug(folder.name)}')}.png"
        title = f"Starting point of the fine-tuned runs: {display} ({folder.name}), losses"
        if plot_training_curves(title, records, path, provenance=source):
            written.append((path, source))
    labels = {r.variant: r.variant_label for r in found.evals}
    cells = own_cells(frame)
    for spec in all_specs():
        greedy = cells[(cells.bench == spec.name) & (cells.decoding == "greedy")]
        source = "evaluation runs " + ", ".join(sorted({path for runs in greedy.run for path in str(runs).split(";")}))
        path = out / f"{'_'.join((spec.name, *spec.plot_metrics))}.png"
        if plot_split_metrics(frame, spec, path, labels=labels, provenance=source):
            written.append((path, source))
    several = cells[(cells.n_seeds > 1) & (cells.decoding == "greedy")]
    seed_runs = sorted({path for runs in several.run for path in str(runs).split(";")})
    source = "evaluation runs " + ", ".join(seed_runs)
    path = out / "seeds.png"
    if plot_seeds(frame, path, labels=labels, provenance=source):
        written.append((path, source))
    return written


def _train_log(folder: Path, warnings: list[Skipped]) -> list[dict] | None:
    """The records of ``folder/train_log.jsonl``, or None (with a warning) when there are none."""
    from hallbench.report.plots import read_train_log

    log = folder / "train_log.jsonl"
    if not log.is_file():
        warnings.append(Skipped(folder, "no train_log.jsonl: no training curves"))
        return None
    records, problems = read_train_log(log)
    warnings.extend(Skipped(folder, p) for p in problems)
    if not records:
        warnings.append(Skipped(folder, "train_log.jsonl has no usable record: no training curves"))
        return None
    return records


def _starting_points(found: RunSet) -> list[tuple[Path, dict]]:
    """hallbench training runs outside ``--runs`` that the training runs found were fine-tuned from (the
    demo's pretraining, or a user's own stage-1 run): the folder their ``model.path`` names, when it
    holds a ``hallbench_config.json``."""
    inside = {t.path.resolve() for t in found.trainings}
    points: dict[Path, dict] = {}
    for training in found.trainings:
        path = (training.config.get("model") or {}).get("path")
        if not path:
            continue
        candidates = recorded_path_candidates(path, training.path)
        folder = next((c for c in candidates if (c / "hallbench_config.json").is_file()), Path(path))
        config_path = folder / "hallbench_config.json"
        if folder.resolve() in inside or folder in points or not config_path.is_file():
            continue
        try:
            points[folder] = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an unreadable starting point loses its plot, not the report
    return sorted(points.items(), key=lambda item: str(item[0]))


def _index(result: ReportResult, found: RunSet, plots, runs: Path, rel, n_resamples: int, seed: int) -> str:
    lines = [
        "# hallbench report",
        "",
        f"Runs folder: `{runs.resolve()}`. Bootstrap: {n_resamples} resamples, seed {seed}. "
        "All numbers come from the run folders' summary.json; CIs and significance from their predictions.jsonl.",
        "",
        "## Tables",
        "",
    ]
    for name, table in result.tables.items():
        filled = sum(not c.missing for row in table.cells for c in row)
        total = sum(len(row) for row in table.cells)
        lines.append(f"- {table.title}: [{name}.md]({name}.md), [{name}.tex]({name}.tex) ({filled} of {total} cells filled)")
    lines += ["- Every cell in long format: [results.csv](results.csv)", "", "## Plots", ""]
    if not plots:
        lines.append("No plot: no training log and no POPE run.")
    for path, source in plots:
        lines += [f"### {path.stem}", "", f"![{path.stem}]({path.name})", "", f"From {source}.", ""]
    sections = (
        ("Skipped folders (could not be read)", result.skipped),
        ("Runs not in the paper tables", result.excluded),
        ("Warnings", result.warnings),
    )
    for title, items in sections:
        lines += ["", f"## {title}", ""]
        lines += [f"- `{rel(item.path)}`: {item.reason}" for item in items] or ["None."]
    used = {r.path for t in result.tables.values() for r in [_run_of(found, p) for p in t.runs]}
    lines += ["", "## Provenance", "", *_provenance([r for r in found.evals if r.path in used], rel)]
    from hallbench.report.collect import variant_rank

    trainings = [
        f"- `{rel(t.path)}`: {t.model} / {t.variant_label}, git {_short(t.git_commit)}, {t.created or 'date unknown'}"
        for t in sorted(found.trainings, key=lambda t: (t.model, variant_rank(t.variant), rel(t.path)))
    ]
    if trainings:
        lines += ["", "Training runs found:", "", *trainings]
    return "\n".join(lines) + "\n"
