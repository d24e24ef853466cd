"""Find the run folders under ``--runs`` and turn them into one long-format DataFrame.

Two kinds of folder are recognised by their files, never by their names (walked recursively, in
sorted order, symlinks not followed):

- a **training run** holds ``hallbench_config.json`` (``{"format": "hallbench-run/1", "model":
  {...}, "variant": {"name", "label", "table"}, ...}``) and usually ``train_log.jsonl``;
- an **evaluation run** holds ``config.json`` with an ``eval`` key (written first by ``hallbench
  eval``) and ``summary.json`` (written last: its presence means the run finished). A folder whose
  ``config.json`` has no ``eval`` key is something else (a saved model's config) and is ignored.

What an evaluation run measured comes from its ``config.json``: the bench and decoding from
``eval``, the model and variant from ``backend.training_run`` (present when the evaluated model is a
hallbench training run). A run without ``training_run`` evaluated a pretrained model: its variant is
``pretrained``; it appears in the ``decoding`` and ``pope_detail`` tables but not in the paper's
tables (Table 2 and the ablations), and the report lists it with that reason.

A folder that cannot be read (a missing or corrupt ``summary.json``, a corrupt config) is listed in
``skipped`` with the reason and left out; it never stops the report.

A cell (model, variant, bench, split, decoding) holds one run per **training seed**: the runs of
``hallbench train --seeds 0,1,2`` share their cells, and the report shows their mean and standard
deviation (``bootstrap.py`` says how intervals and tests treat seeds). Two runs of the same seed
claiming one cell are an error naming both, unless ``prefer="newest"``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hallbench.errors import HallbenchError
from hallbench.eval.benchmark import ALL, BENCHMARKS, BenchmarkSpec, Metric, SampleTable, get_spec, point, sample_table
from hallbench.eval.engine import DECODINGS as ENGINE_DECODINGS
from hallbench.report.bootstrap import (
    bootstrap_ci,
    bootstrap_ci_of_mean,
    paired_test,
    stable_seed,
    stack_tables,
)
from hallbench.runfolder import SCORES_FOLDER, read_appended_jsonl, recorded_path_candidates

PRETRAINED = "pretrained"
"""Variant key of an evaluation whose model is not a hallbench training run."""
PAPER_TABLES = ("table2", "ablation_injection", "ablation_loss")
DECODINGS = ENGINE_DECODINGS
"""Greedy, Sampling, Beam: the decodings in the order the engine declares them (rows of the decoding table)."""
# Summary values equal to the recomputed ones within this tolerance (in displayed units: % or words).
_TOLERANCE = 1e-6


@dataclass
class TrainingRun:
    path: Path
    model: str
    """Display name (``Qwen3-VL-2B``)."""
    model_name: str | None
    """Registry name (``qwen2b``), for the commands that would produce missing cells."""
    variant: str
    """Preset name (``ma``)."""
    variant_label: str
    table: str | None
    git_commit: str | None
    created: str | None
    config: dict[str, Any]


@dataclass
class EvalRun:
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    bench: str
    model: str
    model_name: str | None
    model_ref: str
    """What ``hallbench eval --model`` was given (registry name, folder or training run)."""
    variant: str
    """Preset name, or ``pretrained``."""
    variant_label: str
    table: str | None
    """``table2``, ``ablation_injection``, ``ablation_loss``, or None (pretrained or unknown variant)."""
    decoding: str
    splits: list[str]
    """The splits this run has numbers for (POPE: those with scored questions; others: ``all``)."""
    training_path: Path | None
    git_commit: str | None
    created: str | None
    seed: int | None = None
    """The training seed of the evaluated run (None: a pretrained model, or a run that does not record it)."""
    scoring: str = ""
    """``""``: the run's own summary; else the ``scores/`` folder the answers were re-scored into
    (``labels-repope``, ``parser-official``), whose summary and predictions this is."""
    rescored_of: EvalRun | None = None
    """The evaluation run whose answers a re-scored one scores."""


CellKey = tuple[str, str, str, str, str]
"""``(model, variant, bench, split, decoding)``."""
Cells = dict[CellKey, list[EvalRun]]
"""Each cell's runs, one per training seed, in seed order."""


@dataclass
class Skipped:
    path: Path
    reason: str


@dataclass
class RunSet:
    root: Path
    evals: list[EvalRun] = field(default_factory=list)
    trainings: list[TrainingRun] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    """Folders that could not be read: left out of everything."""
    excluded: list[Skipped] = field(default_factory=list)
    """Readable runs kept out of the paper tables (pretrained models, unknown variants), with the reason."""
    replaced: list[Skipped] = field(default_factory=list)
    """Runs that lost a cell to a newer run under ``prefer="newest"``."""
    rescored: list[EvalRun] = field(default_factory=list)
    """The ``scores/<options>/`` summaries of the evaluation runs (``scoring`` set): POPE against RePOPE labels, ..."""


# ---------------------------------------------------------------------------------------------
# Discovery


def _read_json(path: Path) -> tuple[Any, str | None]:
    """``(value, None)`` or ``(None, reason)`` for a missing, unreadable or corrupt JSON file."""
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{path.name} cannot be read ({err})"
    except json.JSONDecodeError as err:
        return None, f"{path.name} is corrupt (not JSON: {err.msg} at line {err.lineno} column {err.colno})"


def discover(runs: Path) -> RunSet:
    """Every training and evaluation run under ``runs``, plus the folders that had to be skipped."""
    runs = Path(runs)
    if not runs.is_dir():
        raise HallbenchError(f"--runs {runs} is not a folder")
    found = RunSet(root=runs)
    for folder, dirnames, filenames in os.walk(runs):
        dirnames.sort()  # deterministic order: the report must not depend on the file system's listing order
        here = Path(folder)
        names = set(filenames)
        if "hallbench_config.json" in names:
            _add_training(found, here)
        if "config.json" in names:
            _add_eval(found, here, names)
    return found


def _add_training(found: RunSet, folder: Path) -> None:
    config, problem = _read_json(folder / "hallbench_config.json")
    if problem is None and not (
        isinstance(config, dict) and isinstance(config.get("model"), dict) and isinstance(config.get("variant"), dict)
    ):
        problem = "hallbench_config.json has no 'model' and 'variant' objects"
    if problem is None and not config["variant"].get("name"):
        problem = "hallbench_config.json: variant.name is empty"
    if problem is not None:
        found.skipped.append(Skipped(folder, f"training run: {problem}"))
        return
    model, variant = config["model"], config["variant"]
    found.trainings.append(
        TrainingRun(
            path=folder,
            model=str(model.get("display_name") or model.get("name") or "?"),
            model_name=model.get("name"),
            variant=str(variant["name"]),
            variant_label=str(variant.get("label") or _preset_label(variant["name"])),
            table=variant.get("table") or _preset_table(variant["name"]),
            git_commit=config.get("git_commit"),
            created=config.get("created"),
            config=config,
        )
    )


def _preset_label(name: str) -> str:
    from hallbench.train.presets import PRESETS

    return PRESETS[name].label if name in PRESETS else name


def _preset_table(name: str) -> str | None:
    from hallbench.train.presets import PRESETS

    return PRESETS[name].table if name in PRESETS else None


def _add_eval(found: RunSet, folder: Path, names: set[str]) -> None:
    config, problem = _read_json(folder / "config.json")
    if problem is not None:
        # A corrupt config.json is only ours to report when the folder looks like an evaluation.
        if names & {"summary.json", "predictions.jsonl"}:
            found.skipped.append(Skipped(folder, f"evaluation run: {problem}"))
        return
    if not isinstance(config, dict) or not isinstance(config.get("eval"), dict):
        return  # a model's config.json, or any other JSON: not an evaluation run
    summary, problem = _read_json(folder / "summary.json")
    if problem == "no summary.json":
        problem = "no summary.json (the evaluation did not finish; re-run the same command to resume it)"
    bench = config["eval"].get("bench")
    if problem is None:
        problem = _summary_problem(bench, summary)
    if problem is not None:
        found.skipped.append(Skipped(folder, f"evaluation run: {problem}"))
        return
    backend = config.get("backend") if isinstance(config.get("backend"), dict) else {}
    training = backend.get("training_run") if isinstance(backend.get("training_run"), dict) else None
    decoding = config["eval"].get("decoding")
    decoding = decoding.get("decoding") if isinstance(decoding, dict) else summary.get("decoding")
    if training is not None:
        model = training.get("model") or {}
        variant = training.get("variant") or {}
        variant_name = str(variant.get("name") or "?")
        run = EvalRun(
            path=folder,
            config=config,
            summary=summary,
            bench=bench,
            model=str(model.get("display_name") or backend.get("display_name") or summary.get("model") or "?"),
            model_name=model.get("name"),
            model_ref=str(training.get("path") or config["eval"].get("model")),
            variant=variant_name,
            variant_label=str(variant.get("label") or _preset_label(variant_name)),
            table=variant.get("table") or _preset_table(variant_name),
            decoding=str(decoding or "greedy"),
            splits=_splits(bench, summary),
            training_path=Path(training["path"]) if training.get("path") else None,
            git_commit=config.get("git_commit"),
            created=config.get("created"),
            seed=_training_seed(training, folder),
        )
        if run.table not in PAPER_TABLES:
            found.excluded.append(Skipped(folder, f"variant {variant_name!r} belongs to no paper table (table {run.table!r})"))
    else:
        run = EvalRun(
            path=folder,
            config=config,
            summary=summary,
            bench=bench,
            model=str(backend.get("display_name") or summary.get("model") or config["eval"].get("model") or "?"),
            model_name=config["eval"].get("model"),
            model_ref=str(config["eval"].get("model")),
            variant=PRETRAINED,
            variant_label=PRETRAINED,
            table=None,
            decoding=str(decoding or "greedy"),
            splits=_splits(bench, summary),
            training_path=None,
            git_commit=config.get("git_commit"),
            created=config.get("created"),
        )
        found.excluded.append(
            Skipped(
                folder,
                f"the evaluated model ({run.model_ref}) is not a hallbench training run (config.json has no backend.training_run): "
                + (
                    f"shown in the {detail.name} table only"
                    if (detail := get_spec(bench).detail)
                    else "in results.csv only (no table shows it)"
                ),
            )
        )
    found.evals.append(run)
    _add_rescored(found, run)


def _add_rescored(found: RunSet, run: EvalRun) -> None:
    """The run's answers re-scored with other options (``hallbench eval`` with only ``--labels`` or
    ``--parser`` changed writes ``RUN/scores/<what differs>/``): one more EvalRun each."""
    scores = run.path / SCORES_FOLDER
    if not scores.is_dir():
        return
    for folder in sorted(p for p in scores.iterdir() if p.is_dir()):
        summary, problem = _read_json(folder / "summary.json")
        if problem is None:
            problem = _summary_problem(run.bench, summary)
        if problem is not None:
            found.skipped.append(Skipped(folder, f"re-scored evaluation: {problem}"))
            continue
        found.rescored.append(
            replace(run, path=folder, summary=summary, splits=_splits(run.bench, summary), scoring=folder.name, rescored_of=run)
        )


def scoring_keys(scoring: str) -> list[str]:
    """The options a ``scores/`` folder name says differ: ``labels-repope+parser-official`` -> ``[labels, parser]``."""
    return [part.partition("-")[0] for part in scoring.split("+") if part]


def scoring_label(scoring: str) -> str:
    """A column title for a ``scores/`` folder name: ``labels-repope`` -> ``repope``, ``parser-official``
    -> ``parser official``, ``labels-repope+parser-official`` -> ``repope, parser official``."""
    parts = []
    for part in scoring.split("+"):
        key, _, value = part.partition("-")
        parts.append(Path(value).stem if key == "labels" and value else f"{key} {value}".strip())
    return ", ".join(parts)


def _training_seed(training: dict, eval_folder: Path) -> int | None:
    """``training_run.seed`` (recorded since seeds became a dimension), else the training run's own config
    (older evaluations recorded its path as given, relative to where they ran: looked for above the
    evaluation folder too)."""
    seed = training.get("seed")
    if seed is None and training.get("path"):
        for base in recorded_path_candidates(training["path"], eval_folder):
            configs = [_read_json(folder / "hallbench_config.json") for folder in (base, base.parent)]  # a run, or its checkpoint-N
            config = next((c for c, problem in configs if problem is None and isinstance(c, dict)), None)
            if config is not None:
                seed = (config.get("train") or {}).get("seed")
                break
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _summary_problem(bench: object, summary: object) -> str | None:
    """Why a summary cannot be used, or None."""
    if bench not in BENCHMARKS:
        return f"config.json names an unknown bench {bench!r} (expected one of {', '.join(BENCHMARKS)})"
    return get_spec(str(bench)).summary_problem(summary)


def _splits(bench: str, summary: dict) -> list[str]:
    return get_spec(bench).summary_splits(summary)


# ---------------------------------------------------------------------------------------------
# Cells: who claims what


def cell_key(run: EvalRun, split: str) -> CellKey:
    return (run.model, run.variant, run.bench, split, run.decoding)


def resolve_claims(found: RunSet, prefer: str | None = None) -> Cells:
    """The runs that provide each cell, one per training seed; two runs of one seed are an error unless
    ``prefer == "newest"``.

    Newest is by the ``created`` time in ``config.json`` (ISO 8601, so string order is time order),
    then by the modification time of ``summary.json``. A run that loses every cell it claimed is
    recorded in ``found.replaced``.
    """
    if prefer not in (None, "newest"):
        raise HallbenchError(f"unknown --prefer {prefer!r}; the only choice is 'newest'")
    owner: dict[tuple[CellKey, int | None], EvalRun] = {}
    for run in found.evals:
        for split in run.splits:
            claim = (cell_key(run, split), run.seed)
            other = owner.get(claim)
            if other is None:
                owner[claim] = run
                continue
            if prefer is None:
                model, variant, bench, split_name, decoding = claim[0]
                where = f"{bench}" + (f" {split_name}" if split_name != ALL else "")
                seed = f" / seed {run.seed}" if run.seed is not None else ""
                raise HallbenchError(
                    f"two runs claim the same cell ({model} / {variant} / {where} / {decoding}{seed}): {other.path} and {run.path}; "
                    "move one out of --runs, or pass --prefer newest"
                )
            owner[claim] = max((other, run), key=_age)
    kept = {id(r) for r in owner.values()}
    found.replaced.extend(
        Skipped(r.path, "every cell it claims comes from a newer run (--prefer newest)") for r in found.evals if id(r) not in kept
    )
    cells: Cells = {}
    for (key, _seed), run in sorted(owner.items(), key=lambda item: (item[0][0], _seed_order(item[0][1]))):
        cells.setdefault(key, []).append(run)
    return cells


def _seed_order(seed: int | None) -> tuple[bool, int]:
    return (seed is not None, seed or 0)


RescoredCells = dict[tuple[CellKey, str], list[EvalRun]]
"""``(cell key, scoring)`` -> the re-scored runs of that scoring whose evaluation runs provide the cell."""


def resolve_rescored(found: RunSet, cells: Cells) -> RescoredCells:
    """The re-scored summaries of the runs that provide each cell, by scoring (one per seed, like the cell)."""
    providing = {(id(r), key) for key, runs in cells.items() for r in runs}
    rescored: RescoredCells = {}
    for run in found.rescored:
        for split in run.splits:
            key = cell_key(run, split)
            if (id(run.rescored_of), key) in providing:
                rescored.setdefault((key, run.scoring), []).append(run)
    return {k: sorted(v, key=lambda r: _seed_order(r.seed)) for k, v in sorted(rescored.items())}


def seed_pairs(runs: list[EvalRun], base_runs: list[EvalRun] | None) -> list[tuple[EvalRun, EvalRun]]:
    """The (variant run, Base run) pairs a paired test compares: runs of the same training seed; one run
    on each side is a pair whatever its seeds (a single comparison, as before seeds were a dimension)."""
    if not base_runs:
        return []
    if len(runs) == 1 and len(base_runs) == 1:
        return [(runs[0], base_runs[0])]
    by_seed = {b.seed: b for b in base_runs}
    return [(r, by_seed[r.seed]) for r in runs if r.seed in by_seed]


def _age(run: EvalRun) -> tuple[str, float]:
    summary = run.path / "summary.json"
    return (run.created or "", summary.stat().st_mtime if summary.exists() else 0.0)


# ---------------------------------------------------------------------------------------------
# What a run's summary says (every benchmark through its spec: hallbench/eval/benchmark.py)


def spec_of(run: EvalRun) -> BenchmarkSpec:
    return get_spec(run.bench)


def metrics_of(bench: str) -> dict[str, Metric]:
    return {m.name: m for m in get_spec(bench).metrics}


def summary_value(run: EvalRun, split: str, metric: str) -> float | None:
    """The metric as the run's summary.json reports it, in displayed units (percent; Len in words)."""
    return spec_of(run).summary_value(run.summary, split, metric)


def higher_is_better(run: EvalRun, metric: str) -> bool | None:
    info = run.summary.get("metrics_info")
    if isinstance(info, dict) and isinstance(info.get(metric), dict) and "higher_is_better" in info[metric]:
        return info[metric]["higher_is_better"]
    return spec_of(run).metric(metric).higher_is_better  # an older run without metrics_info


def summary_n(run: EvalRun, split: str) -> int | None:
    return spec_of(run).summary_n(run.summary, split)


# ---------------------------------------------------------------------------------------------
# The long frame

FRAME_COLUMNS = [
    "run", "model", "variant", "variant_label", "table", "bench", "split", "decoding", "metric", "value", "n", "ci_low", "ci_high",
    "higher_is_better", "base_run", "n_paired", "n_images", "delta", "delta_low", "delta_high", "p_value", "mcnemar_p", "significant",
    "seed", "n_seeds", "seed_sd", "seed_t_p", "per_seed", "scoring", "git_commit", "created",
]  # fmt: skip
"""``seed``: the training seed of a one-run cell or of a per-seed row; ``n_seeds``, ``seed_sd`` (standard
deviation across seeds) and ``seed_t_p`` (t-test of the per-seed differences from Base) on a cell's
row; ``per_seed``: True for the rows of each seed of a several-seed cell, whose own row holds the mean;
``scoring``: empty for the runs' own summaries, else the ``scores/`` folder of a re-scoring (``labels-repope``)."""


@dataclass
class Collected:
    frame: pd.DataFrame
    """One row per (cell, metric), plus one per seed of each several-seed cell; see FRAME_COLUMNS."""
    cells: Cells
    warnings: list[Skipped]


def build_frame(
    found: RunSet,
    cells: Cells,
    *,
    rescored: RescoredCells | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    relative: Callable[[Path], str] | None = None,
) -> Collected:
    """Values from each cell's summary.json, CIs and paired tests vs Base from its predictions.jsonl;
    then the same for each re-scored cell (``rescored``), tested against Base under the same scoring."""
    relative = relative or (lambda p: str(p))
    warnings: list[Skipped] = []
    records: dict[int, list[dict] | None] = {}

    def records_of(run: EvalRun) -> list[dict] | None:
        if id(run) not in records:
            path = run.path / "predictions.jsonl"
            try:
                records[id(run)] = read_appended_jsonl(path, "prediction record") if path.is_file() else None
                if records[id(run)] is None:
                    warnings.append(Skipped(run.path, "no predictions.jsonl: values shown without confidence intervals"))
            except HallbenchError as err:
                records[id(run)] = None
                warnings.append(Skipped(run.path, f"{err}: values shown without confidence intervals"))
        return records[id(run)]

    tables: dict[tuple[int, str], SampleTable | None] = {}

    def table_of(run: EvalRun, split: str) -> SampleTable | None:
        # The samples behind a run's cell, or None when they are unavailable or do not reproduce
        # summary.json (then a CI would describe other numbers than those shown).
        if (id(run), split) not in tables:
            recs = records_of(run)
            table = None
            if recs is not None:
                try:
                    table = sample_table(spec_of(run), recs, split, run.summary)
                except (KeyError, TypeError, ValueError) as err:
                    warnings.append(Skipped(run.path, f"predictions.jsonl lacks a per-sample field ({err!r}): no confidence intervals"))
                if table is not None:
                    for metric, declared in metrics_of(run.bench).items():
                        shown, recomputed = summary_value(run, split, metric), point(table, declared)
                        same = (shown is None and np.isnan(recomputed)) or (shown is not None and abs(shown - recomputed) <= _TOLERANCE)
                        if not same:
                            warnings.append(
                                Skipped(
                                    run.path,
                                    f"predictions.jsonl gives {metric} = {recomputed:.4f} on {split}, summary.json says {shown}: "
                                    "no confidence intervals for this run (re-run the evaluation to re-score it)",
                                )
                            )
                            table = None
                            break
            tables[(id(run), split)] = table
        return tables[(id(run), split)]

    def paired(pairs: list[tuple[EvalRun, EvalRun]], split: str, metrics: dict[str, Metric], name: str) -> dict:
        sides = [(table_of(v, split), table_of(b, split)) for v, b in pairs]
        if not pairs or any(v is None or b is None for v, b in sides):
            return {}
        if len(pairs) == 1:
            variant_table, base_table = sides[0]
        else:
            labels = [f"seed{v.seed}" for v, _ in pairs]
            variant_table = stack_tables({label: v for label, (v, _) in zip(labels, sides, strict=True)})
            base_table = stack_tables({label: b for label, (_, b) in zip(labels, sides, strict=True)})
        return paired_test(variant_table, base_table, metrics, n_resamples=n_resamples, seed=stable_seed(seed, "paired|" + name))

    rows: list[dict[str, Any]] = []

    def add_cell(key: CellKey, runs: list[EvalRun], base_runs: list[EvalRun] | None, scoring: str) -> None:
        model, variant, bench, split, decoding = key
        metrics = metrics_of(bench)
        pairs = seed_pairs(runs, base_runs if variant != "base" else None)  # per seed
        cell_pairs = pairs
        if base_runs and variant != "base" and len(pairs) < len(runs):
            # A test of some of the seeds would be shown as the cell's: none, and the reason in the warnings.
            unpaired = ", ".join(str(r.seed) for r in runs if all(p[0] is not r for p in pairs))
            warnings.append(
                Skipped(runs[0].path, f"{model} / {variant} / {bench} {split}: seed(s) {unpaired} have no Base run of the same seed, so the "
                        "cell is not tested against Base (train and evaluate Base with the same --seeds)")
            )  # fmt: skip
            cell_pairs = []
        name = _seed_key(runs, key) + (f"|{scoring}" if scoring else "")
        common = {"model": model, "variant": variant, "variant_label": runs[0].variant_label, "table": runs[0].table,
                  "bench": bench, "split": split, "decoding": decoding, "scoring": scoring}  # fmt: skip
        per_run_values = [{m: summary_value(r, split, m) for m in metrics} for r in runs]
        if len(runs) > 1:
            for run, values in zip(runs, per_run_values, strict=True):
                table = table_of(run, split)
                run_name = _seed_key([run], key) + (f"|{scoring}" if scoring else "")
                cis = (
                    bootstrap_ci(table, metrics, n_resamples=n_resamples, seed=stable_seed(seed, "ci|" + run_name))
                    if table is not None
                    else {}
                )
                own_pair = [p for p in pairs if p[0] is run]
                tests = paired(own_pair, split, metrics, run_name)
                for metric in metrics:
                    rows.append(
                        _frame_row(
                            common,
                            metric,
                            values[metric],
                            summary_n(run, split),
                            cis.get(metric),
                            tests.get(metric),
                            [run],
                            own_pair,
                            relative,
                            per_seed=True,
                        )  # fmt: skip
                    )
        available = [table_of(r, split) for r in runs]
        if len(runs) == 1:
            table = available[0]
            cis = bootstrap_ci(table, metrics, n_resamples=n_resamples, seed=stable_seed(seed, "ci|" + name)) if table is not None else {}
        elif all(t is not None for t in available):
            cis = bootstrap_ci_of_mean(available, metrics, n_resamples=n_resamples, seed=stable_seed(seed, "ci|" + name))  # type: ignore[arg-type]
        else:
            cis = {}
        tests = paired(cell_pairs, split, metrics, name)
        for metric in metrics:
            values = [v[metric] for v in per_run_values if v[metric] is not None]
            value = float(np.mean(values)) if len(values) == len(runs) else None
            row = _frame_row(
                common,
                metric,
                value,
                summary_n(runs[0], split),
                cis.get(metric),
                tests.get(metric),
                runs,
                cell_pairs,
                relative,
                per_seed=False,
            )
            if len(runs) > 1:
                row["seed_sd"] = float(np.std(values, ddof=1)) if value is not None else None
                row["seed_t_p"] = _seed_t_p([(summary_value(v, split, metric), summary_value(b, split, metric)) for v, b in cell_pairs])
            rows.append(row)

    for key in sorted(cells, key=_cell_order):
        add_cell(key, cells[key], cells.get((key[0], "base", *key[2:])), "")
    for key, scoring in sorted(rescored or {}, key=lambda ks: (_cell_order(ks[0]), ks[1])):
        add_cell(key, rescored[(key, scoring)], (rescored or {}).get(((key[0], "base", *key[2:]), scoring)), scoring)  # type: ignore[index]
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    return Collected(frame=frame, cells=cells, warnings=_dedupe(warnings))


def _frame_row(
    common: dict, metric: str, value: float | None, n: int | None, ci: Any, test: Any, runs: list[EvalRun],
    pairs: list[tuple[EvalRun, EvalRun]], relative: Callable[[Path], str], *, per_seed: bool,
) -> dict[str, Any]:  # fmt: skip
    first = runs[0]
    return {
        **common,
        "run": ";".join(relative(r.path) for r in runs),
        "metric": metric,
        "value": value,
        "n": n,
        "ci_low": ci.low if ci else None,
        "ci_high": ci.high if ci else None,
        "higher_is_better": higher_is_better(first, metric),
        "base_run": ";".join(relative(b.path) for _, b in pairs) or None,
        "n_paired": test.n_paired if test else None,
        "n_images": test.n_groups if test else None,
        "delta": test.delta if test else None,
        "delta_low": test.low if test else None,
        "delta_high": test.high if test else None,
        "p_value": test.p_value if test else None,
        "mcnemar_p": test.mcnemar_p if test else None,
        "significant": test.significant if test else None,
        "seed": first.seed if len(runs) == 1 else None,
        "n_seeds": len(runs),
        "seed_sd": None,
        "seed_t_p": None,
        "per_seed": per_seed,
        "git_commit": most_common([r.git_commit for r in runs]),
        "created": max((r.created for r in runs if r.created), default=None),
    }


def _seed_t_p(pairs: list[tuple[float | None, float | None]]) -> float | None:
    """Two-sided one-sample t-test that the per-seed differences from Base have mean 0 (scipy.stats)."""
    from scipy.stats import ttest_1samp

    deltas = [v - b for v, b in pairs if v is not None and b is not None]
    if len(deltas) < 2:
        return None
    if np.ptp(deltas) == 0:  # no spread: t is undefined (0/0 when every difference is 0)
        return 1.0 if deltas[0] == 0 else 0.0
    return float(ttest_1samp(deltas, 0.0).pvalue)


def _seed_key(runs: list[EvalRun], key: CellKey) -> str:
    """What a cell's bootstrap is seeded from: its runs' identity (model, method settings, training
    seeds, bench, split, decoding), not its row label, so that two presets with one configuration
    (``ma`` and ``abl-all-ours``) get the same intervals from the same answers."""
    model, variant, bench, split, decoding = key
    run = runs[0]
    training = run.config.get("backend", {}).get("training_run") if isinstance(run.config.get("backend"), dict) else None
    evidence = training.get("evidence") if isinstance(training, dict) else None
    method = evidence if evidence is not None else {"variant": variant, "model": run.model_ref}
    identity = {"model": model, "method": method, "bench": bench, "split": split, "decoding": decoding}
    if len(runs) > 1 or run.seed is not None:
        identity["seeds"] = [r.seed for r in runs]
    return json.dumps(identity, sort_keys=True)


def _dedupe(items: list[Skipped]) -> list[Skipped]:
    seen, out = set(), []
    for item in items:
        if (item.path, item.reason) not in seen:
            seen.add((item.path, item.reason))
            out.append(item)
    return out


def _cell_order(key: CellKey) -> tuple:
    model, variant, bench, split, decoding = key
    return (
        model,
        variant_rank(variant),
        variant,
        bench,
        split_rank(bench, split),
        DECODINGS.index(decoding) if decoding in DECODINGS else 9,
    )


def variant_rank(variant: str) -> int:
    """Position of a variant in the paper's order (Table 2, then ablation 4.1, 4.3), pretrained and unknown last."""
    from hallbench.train.presets import ABLATION_INJECTION, ABLATION_LOSS, TABLE2

    order = (*TABLE2, *ABLATION_INJECTION, *ABLATION_LOSS, PRETRAINED)
    return order.index(variant) if variant in order else len(order)


def split_rank(bench: str, split: str) -> int:
    """Position of a split in its benchmark's declared order; others (a file named otherwise) after them."""
    splits = get_spec(bench).splits if bench in BENCHMARKS else ()
    return splits.index(split) if split in splits else len(splits)


def most_common(values: list[Any]) -> Any:
    """The most frequent non-None value (first seen on ties), or None."""
    counts = Counter(v for v in values if v is not None)
    return max(counts, key=lambda v: (counts[v], -values.index(v))) if counts else None
