"""The report's tables: one matrix per table, rendered to Markdown and to LaTeX (pandas Styler, booktabs).

A :class:`Table` is a list of rows (model x variant, plus decoding or split where the table needs
them) and columns (bench, split, metric); each cell is looked up in the long frame by its key
``(model, variant, bench, split, decoding)``. Both renderings are produced from the same matrix of
:class:`Cell` objects, so the Markdown and the LaTeX of a table cannot disagree.

Cell text: ``86.2 ± 1.1`` is the value and half the width of its 95% bootstrap interval (the exact,
possibly asymmetric, bounds are in ``results.csv``); ``†`` marks a significant difference from Base
of the same model (image-level paired permutation test, Holm-corrected over the table's tested cells); ``–`` is a missing cell (listed under the table with the command that would
produce it); ``n/a`` is a cell whose run exists but whose metric is undefined (CHAIRi without any
object mention). The best value of a column is bold within each group of rows (see
``Table.group_levels``), comparing the values as displayed (one decimal), lower first for
lower-is-better metrics (CHAIR), and not at all for neutral ones (yes ratio, caption length) or
when the group has fewer than two values.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hallbench.eval.benchmark import ALL, BENCHMARKS, BenchmarkSpec, all_specs, get_spec
from hallbench.report.bootstrap import ALPHA, holm, n_permutations
from hallbench.report.collect import (
    DECODINGS,
    PRETRAINED,
    RunSet,
    most_common,
    scoring_keys,
    scoring_label,
    variant_rank,
)

MISSING_MD = "–"
MISSING_TEX = "--"
UNDEFINED = "n/a"
MARK = "†"
DECODING_NAMES = {"sample": "Sampling", "greedy": "Greedy", "beam": "Beam"}
PAPER_DECODING = "greedy"
"""Table 2 and the ablations use greedy decoding; other decodings appear in ``decoding`` and ``pope_detail``."""


@dataclass(frozen=True)
class Column:
    bench: str
    split: str
    metric: str
    group: str
    """Upper header (``POPE random``)."""
    label: str
    """Lower header (``Acc``)."""
    scoring: str = ""
    """``""``: the runs' own scoring; else a ``scores/`` folder name (``labels-repope``)."""


@dataclass(frozen=True)
class Row:
    labels: tuple[str, ...]
    model: str
    variant: str
    decoding: str
    split: str | None = None
    """Overrides the columns' split (``pope_detail`` has one row per split)."""


@dataclass
class Cell:
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    significant: bool | None = None
    """Holm-adjusted p < 0.05 among the table's tested cells (``None``: not tested)."""
    missing: bool = True
    bold: bool = False
    p_value: float | None = None
    """The paired permutation p-value against Base, before the correction."""
    n_seeds: int = 1
    """Training seeds behind the cell: with more than one, ``value`` is their mean."""
    seed_sd: float | None = None
    """Standard deviation of the value across the seeds (several seeds only): what ``±`` shows then."""


@dataclass
class Missing:
    row: Row
    bench: str
    splits: list[str]
    metrics: list[str]
    commands: list[str]
    scoring: str = ""


@dataclass
class Table:
    name: str
    title: str
    index_names: list[str]
    group_levels: int
    """Rows sharing their first ``group_levels`` labels are compared with each other for bold."""
    columns: list[Column]
    rows: list[Row]
    cells: list[list[Cell]] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    """Evaluation runs that provided at least one cell."""
    notes: list[str] = field(default_factory=list)
    n_tested: int = 0
    """Cells tested against Base: the family of the Holm correction."""

    def matrix(self, what: str = "value") -> pd.DataFrame:
        """The cells' ``value`` (or ``ci_low``, ``ci_high``, ``significant``, ``bold``, ``missing``) as a DataFrame."""
        index = pd.MultiIndex.from_tuples([r.labels for r in self.rows], names=self.index_names)
        columns = pd.MultiIndex.from_tuples([(c.group, c.label) for c in self.columns])
        return pd.DataFrame([[getattr(cell, what) for cell in row] for row in self.cells], index=index, columns=columns, dtype=object)


# ---------------------------------------------------------------------------------------------
# Building


def spec_columns(
    spec: BenchmarkSpec, metrics: tuple[str, ...], *, scoring: str = "", splits: tuple[str, ...] | None = None
) -> list[Column]:
    """One column per split (of ``splits``, default every split) and metric, headed ``POPE random`` / ``Acc``
    (under a re-scoring, the scoring's label instead of the benchmark's title)."""
    title = scoring_label(scoring) if scoring else spec.title
    return [
        Column(spec.name, split, name, f"{title} {split}" if spec.splits else title, spec.metric(name).header, scoring)
        for split in (splits if splits is not None else spec.split_names)
        for name in metrics
    ]


class Builder:
    """Builds every table from the long frame and the run set (which knows the training runs)."""

    def __init__(self, frame: pd.DataFrame, found: RunSet, cells: dict, *, n_resamples: int, seed: int, rescored: dict | None = None):
        self.frame = frame
        self.found = found
        self.cells = cells
        self.rescored = rescored or {}
        self.n_resamples = n_resamples
        self.seed = seed
        self.by_key = {
            (r.model, r.variant, r.bench, r.split, r.decoding, r.metric, r.scoring or ""): r
            for r in frame.itertuples(index=False)
            if not r.per_seed
        }
        self.labels: dict[str, str] = {}
        for run in [*found.trainings, *found.evals]:
            self.labels.setdefault(run.variant, run.variant_label)
        self.training_of: dict[tuple[str, str], Path] = {}
        for training in found.trainings:
            self.training_of.setdefault((training.model, training.variant), training.path)
        for run in found.evals:
            if run.training_path is not None:
                self.training_of.setdefault((run.model, run.variant), run.training_path)
        self.model_names = {}
        for run in [*found.trainings, *found.evals]:
            if run.model_name and run.variant != PRETRAINED:
                self.model_names.setdefault(run.model, run.model_name)

    def label(self, variant: str) -> str:
        if variant in self.labels:
            return self.labels[variant]
        from hallbench.train.presets import PRESETS

        return PRESETS[variant].label if variant in PRESETS else variant

    def _models(self, table: str) -> list[str]:
        models = {t.model for t in self.found.trainings if t.table == table}
        models |= {r.model for r in self.found.evals if r.table == table}
        if not models:
            # Nothing of this table was run yet: show it for every trained model, so that its
            # missing-cell list says how to produce it.
            models = {t.model for t in self.found.trainings} | {r.model for r in self.found.evals if r.variant != PRETRAINED}
        return sorted(models)

    def _has(self, bench: str, table: str | None = None) -> bool:
        return any(r.bench == bench and (table is None or r.table == table) for runs in self.cells.values() for r in runs)

    def paper_table(self, name: str, title: str, variants: tuple[str, ...]) -> Table:
        columns = [
            column
            for spec in all_specs()
            if spec.paper_always or self._has(spec.name, name)  # else "where present": once some run of the table has numbers
            for column in spec_columns(spec, spec.paper_metrics)
        ]
        rows = [Row((model, self.label(v)), model, v, PAPER_DECODING) for model in self._models(name) for v in variants]
        return self._fill(Table(name, title, ["Model", "Variant"], 1, columns, rows))

    def detail_table(self, spec: BenchmarkSpec) -> Table:
        """The benchmark's own table (``spec.detail``): every metric of every run of the benchmark."""
        assert spec.detail is not None
        detail, metrics = spec.detail, spec.detail.metrics or tuple(m.name for m in spec.metrics)
        if detail.rows == "decoding":
            pairs = sorted({(m, v) for (m, v, b, _s, _d) in self.cells if b == spec.name}, key=lambda p: (p[0], variant_rank(p[1]), p[1]))
            rows = [Row((m, self.label(v), DECODING_NAMES[d]), m, v, d) for m, v in pairs for d in DECODINGS]
            table = Table(detail.name, detail.title, ["Model", "Variant", "Decoding"], 2, spec_columns(spec, metrics), rows)
            return self._fill(table)
        triples = {(m, v, d) for (m, v, b, _s, d) in self.cells if b == spec.name}
        order = sorted(triples, key=lambda t: (t[0], variant_rank(t[1]), t[1], _decoding_rank(t[2])))
        rows = [Row((s, m, self.label(v), DECODING_NAMES.get(d, d)), m, v, d, split=s) for s in spec.split_names for m, v, d in order]
        columns = [Column(spec.name, "", name, spec.title, spec.metric(name).header) for name in metrics]
        return self._fill(Table(detail.name, detail.title, ["Split", "Model", "Variant", "Decoding"], 2, columns, rows))

    def scorings_table(self, spec: BenchmarkSpec) -> Table | None:
        """The paper metrics under the runs' own scoring beside each re-scoring (RePOPE labels, another
        parser, another synonym table); None when no run of the benchmark was re-scored."""
        scorings = sorted({scoring for (key, scoring) in self.rescored if key[2] == spec.name})
        if not scorings:
            return None
        triples = {(k[0], k[1], k[4]) for (k, _s) in self.rescored if k[2] == spec.name}
        order = sorted(triples, key=lambda t: (t[0], variant_rank(t[1]), t[1], _decoding_rank(t[2])))
        splits = tuple(s for s in spec.split_names if any(k[2] == spec.name and k[3] == s for (k, _s) in self.rescored))
        columns = [c for scoring in ("", *scorings) for c in spec_columns(spec, spec.paper_metrics, scoring=scoring, splits=splits)]
        rows = [Row((m, self.label(v), DECODING_NAMES.get(d, d)), m, v, d) for m, v, d in order]
        title = f"{spec.title} re-scored: the runs' own scoring beside each other scoring"
        table = self._fill(Table(f"{spec.name}_scorings", title, ["Model", "Variant", "Decoding"], 1, columns, rows))
        for scoring in scorings:
            table.notes.append(self._scoring_note(spec, scoring))
        return table

    def _scoring_note(self, spec: BenchmarkSpec, scoring: str) -> str:
        runs = [r for (k, s), rs in self.rescored.items() if s == scoring and k[2] == spec.name for r in rs]
        options = runs[0].summary.get("scoring") or {}
        removed = {id(r): r.summary.get("n_removed") for r in runs if isinstance(r.summary.get("n_removed"), int)}
        changed = ", ".join(f"{k} {v}" for k, v in options.items() if v is not None and k in scoring_keys(scoring))
        text = f"{scoring_label(scoring)}: the same answers scored with {changed or scoring} (each run's scores/{scoring}/)"
        if removed:
            low, high = min(removed.values()), max(removed.values())
            text += f"; {low if low == high else f'{low} to {high}'} questions of each run removed by that label set"
        return text + "."

    # -- cells ---------------------------------------------------------------------------------

    def _fill(self, table: Table) -> Table:
        runs: dict[Path, None] = {}
        for row in table.rows:
            cells = []
            for column in table.columns:
                split = row.split if row.split is not None else column.split
                key = (row.model, row.variant, column.bench, split, row.decoding)
                entry = self.by_key.get((*key, column.metric, column.scoring))
                if entry is None:
                    cells.append(Cell())
                    continue
                for run in self.rescored[(key, column.scoring)] if column.scoring else self.cells[key]:
                    runs[(run.rescored_of or run).path] = None
                cells.append(
                    Cell(
                        value=_num(entry.value),
                        ci_low=_num(entry.ci_low),
                        ci_high=_num(entry.ci_high),
                        missing=False,
                        p_value=_num(entry.p_value),
                        n_seeds=int(entry.n_seeds),
                        seed_sd=_num(entry.seed_sd),
                    )
                )
            table.cells.append(cells)
        # Multiplicity: every tested cell of the table is one comparison of the family (Holm). Neutral
        # metrics (yes ratio, caption length) describe the answers and are not tested.
        directed = [self._higher_is_better(column) is not None for column in table.columns]
        tested = [cell for cells in table.cells for cell, d in zip(cells, directed, strict=True) if d and cell.p_value is not None]
        for cell, adjusted in zip(tested, holm([cell.p_value for cell in tested]), strict=True):
            cell.significant = adjusted is not None and adjusted < ALPHA
        table.n_tested = len(tested)
        table.runs = list(runs)
        self._bold(table)
        table.missing = self._missing(table)
        bases = {(r.model, r.decoding) for r in table.rows}
        no_base = sorted(
            m
            for m, d in bases
            if not any(k[0] == m and k[1] == "base" and k[4] == d for k in self.cells)
            and any(k[0] == m and k[4] == d and k[1] != "base" for k in self.cells)
        )
        if no_base:
            table.notes.append(f"No Base run for {', '.join(no_base)}: significance not tested there.")
        return table

    def _bold(self, table: Table) -> None:
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, row in enumerate(table.rows):
            groups.setdefault(row.labels[: table.group_levels], []).append(i)
        for j, column in enumerate(table.columns):
            hib = self._higher_is_better(column)
            if hib is None:
                continue
            for members in groups.values():
                shown = {i: round(table.cells[i][j].value, 1) for i in members if table.cells[i][j].value is not None}
                if len(shown) < 2:
                    continue
                best = max(shown.values()) if hib else min(shown.values())
                for i, value in shown.items():
                    table.cells[i][j].bold = value == best

    def _higher_is_better(self, column: Column) -> bool | None:
        rows = self.frame[(self.frame.bench == column.bench) & (self.frame.metric == column.metric)]
        values = {v for v in rows.higher_is_better if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(values) == 1:
            return bool(values.pop())
        return get_spec(column.bench).metric(column.metric).higher_is_better

    # -- missing cells -------------------------------------------------------------------------

    def _missing(self, table: Table) -> list[Missing]:
        result = []
        for row, cells in zip(table.rows, table.cells, strict=True):
            by_bench: dict[str, tuple[list[str], list[str]]] = {}
            for column, cell in zip(table.columns, cells, strict=True):
                if cell.missing:
                    split = row.split if row.split is not None else column.split
                    splits, labels = by_bench.setdefault((column.bench, column.scoring), ([], []))
                    if split not in splits:
                        splits.append(split)
                    if column.label not in labels:
                        labels.append(column.label)
            for (bench, scoring), (splits, labels) in by_bench.items():
                result.append(Missing(row, bench, splits, labels, self.commands(row, bench, splits, scoring), scoring))
        return result

    def commands(self, row: Row, bench: str, splits: list[str], scoring: str = "") -> list[str]:
        """The commands that would produce the missing cells of ``row`` on ``bench`` (under ``scoring``:
        the same evaluation with that scoring's options, which re-scores an existing run)."""
        if scoring:
            rescore = self._rescore_commands(row, bench, splits, scoring)
            if rescore:
                return rescore
        commands = []
        root = self.found.root
        training = self.training_of.get((row.model, row.variant))
        if row.variant == PRETRAINED:
            model_ref = (
                most_common([r.model_ref for r in self.found.evals if r.model == row.model and r.variant == PRETRAINED]) or "<model>"
            )
        elif training is not None:
            model_ref = str(training)
        else:
            output_root = most_common([str(t.path.parent) for t in self.found.trainings]) or "<output root>"
            model_name = self.model_names.get(row.model, "<model>")
            commands.append(
                f"hallbench train --model {shlex.quote(model_name)} --variant {shlex.quote(row.variant)} "
                f"--data <train.json> --images <image folder> --output-root {shlex.quote(output_root)}"
            )
            model_ref = str(Path(output_root) / f"output_model_{row.model}_{self.label(row.variant)}")
        spec = get_spec(bench)
        same_bench = [r for r in self.found.evals if r.bench == bench]
        data = most_common([r.config["eval"].get("data") for r in same_bench]) or f"<{spec.title} data>"
        images = most_common([r.config["eval"].get("images") for r in same_bench])
        every_split = not spec.splits or set(splits) == set(spec.splits)  # one command evaluates them all
        for split in [ALL] if every_split else splits:
            parts = ["hallbench eval", f"--bench {bench}", f"--model {shlex.quote(model_ref)}", f"--data {shlex.quote(str(data))}"]
            if images:
                parts.append(f"--images {shlex.quote(str(images))}")
            if split != ALL:
                parts.append(f"--split {split}")
            if row.decoding != "greedy":
                parts.append(f"--decoding {row.decoding}")
            parts += spec.command_flags
            parts += self._scoring_flags(scoring) if scoring else []
            name = "_".join(_slug(p) for p in (row.model, self.label(row.variant), bench, "" if split == ALL else split, row.decoding) if p)
            parts.append(f"--out {shlex.quote(str(root / 'eval' / name))}")
            commands.append(" ".join(parts))
        return commands

    def _scoring_flags(self, scoring: str) -> list[str]:
        options = next((r.summary.get("scoring") or {} for (_k, s), rs in self.rescored.items() if s == scoring for r in rs), {})
        return [f"--{k} {shlex.quote(str(v))}" for k, v in options.items() if v is not None and k in scoring_keys(scoring)]

    def _rescore_commands(self, row: Row, bench: str, splits: list[str], scoring: str) -> list[str]:
        """Re-scoring the evaluation runs that already provide the row's cells: their own settings (every
        recorded one that is not the default: a changed one would be refused as another experiment),
        the scoring's options and their own ``--out``, so nothing is generated again."""
        commands: dict[str, None] = {}
        for split in splits:
            for run in self.cells.get((row.model, row.variant, bench, split, row.decoding), []):
                parts = ["hallbench eval", *_identity_flags(run.config["eval"], run.summary.get("max_samples"))]
                commands[" ".join([*parts, *self._scoring_flags(scoring), f"--out {shlex.quote(str(run.path))}"])] = None
        return list(commands)


def _identity_flags(recorded: dict, max_samples: object) -> list[str]:
    """The ``hallbench eval`` flags that give a run's recorded identity (``config.json`` ``eval``): every
    setting that differs from its default, the decoding's included, and ``--max-samples``."""
    from hallbench.eval.engine import DecodingConfig
    from hallbench.eval.run import EvalConfig, flag_fields
    from hallbench.fielddocs import field_default

    def flag(name: str, value: object) -> list[str]:
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            return [option] if value else [f"--no-{name.replace('_', '-')}"]
        return [f"{option} {shlex.quote(str(value))}"]

    flags = []
    for name in ("bench", "model", "data"):  # always: they say what the run is
        if recorded.get(name) is not None:
            flags += flag(name, recorded[name])
    # The common fields and the benchmark's own options; another benchmark's options (older folders
    # recorded them for every run) never changed an answer. The decoding's fields are read below.
    if recorded.get("bench") in BENCHMARKS:
        owners = flag_fields(recorded["bench"])
    else:
        owners = {name: EvalConfig for name in EvalConfig.__dataclass_fields__ if name != "options"}
    for name, value in recorded.items():
        if name in ("bench", "model", "data", "decoding") or name not in owners or value is None:
            continue
        default = field_default(owners[name], name)
        if value != default and str(value) != str(default):
            flags += flag(name, value)
    decoding = recorded.get("decoding") if isinstance(recorded.get("decoding"), dict) else {}
    for name, value in decoding.items():
        if (
            name in DecodingConfig.__dataclass_fields__
            and value is not None
            and (name == "max_new_tokens" or value != field_default(DecodingConfig, name))
        ):
            flags += flag(name, value)  # max_new_tokens always: the run holds the resolved value
    if isinstance(max_samples, int):
        flags += flag("max_samples", max_samples)
    return flags


def _num(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def _decoding_rank(decoding: str) -> int:
    return DECODINGS.index(decoding) if decoding in DECODINGS else len(DECODINGS)


def build_tables(
    frame: pd.DataFrame, found: RunSet, cells: dict, *, n_resamples: int, seed: int, rescored: dict | None = None
) -> dict[str, Table]:
    """The paper's three tables, then each benchmark's detail table (always for a benchmark of the
    paper's own columns, else when it has runs) and its re-scorings table when some run was re-scored."""
    from hallbench.train.presets import ABLATION_INJECTION, ABLATION_LOSS, TABLE2

    builder = Builder(frame, found, cells, n_resamples=n_resamples, seed=seed, rescored=rescored)
    tables = {
        "table2": builder.paper_table("table2", "Table 2: Base, +M, +M+A and Ours", TABLE2),
        "ablation_injection": builder.paper_table(
            "ablation_injection", "Ablation 4.1: injection position and operator", ABLATION_INJECTION
        ),
        "ablation_loss": builder.paper_table("ablation_loss", "Ablation 4.3: loss components", ABLATION_LOSS),
    }
    for spec in all_specs():
        if spec.detail is not None and (spec.paper_always or builder._has(spec.name)):
            tables[spec.detail.name] = builder.detail_table(spec)
    for spec in all_specs():
        scorings = builder.scorings_table(spec)
        if scorings is not None:
            tables[scorings.name] = scorings
    return tables


# ---------------------------------------------------------------------------------------------
# Rendering


def cell_text(cell: Cell, *, latex: bool) -> str:
    """``86.2 ± 1.1†`` (Markdown) or ``86.2 $\\pm$ 1.1$^{\\dagger}$`` (LaTeX); bold is added by the renderer."""
    if cell.missing:
        return MISSING_TEX if latex else MISSING_MD
    if cell.value is None:
        return UNDEFINED
    text = f"{cell.value:.1f}"
    if cell.n_seeds > 1:
        if cell.seed_sd is not None:
            text += (r" $\pm$ " if latex else " ± ") + f"{cell.seed_sd:.1f}"
    elif cell.ci_low is not None and cell.ci_high is not None:
        half = (cell.ci_high - cell.ci_low) / 2
        text += (r" $\pm$ " if latex else " ± ") + f"{half:.1f}"
    return text


def cell_plain(cell: Cell) -> str:
    """``86.2 ± 1.1†`` without bold (for terminals)."""
    return cell_text(cell, latex=False) + _mark(cell, False)


def _mark(cell: Cell, latex: bool) -> str:
    return (r"$^{\dagger}$" if latex else MARK) if cell.significant else ""


def legend(table: Table, *, n_resamples: int, seed: int) -> list[str]:
    units = dict.fromkeys(
        f"{c.label}: {get_spec(c.bench).metric(c.metric).unit}" for c in table.columns if get_spec(c.bench).metric(c.metric).unit != "%"
    )
    values_in = "Values in %" + (f" ({', '.join(units)})" if units else "") + "."
    lower = [c.label for c in table.columns if get_spec(c.bench).metric(c.metric).higher_is_better is False]
    neutral = [c.label for c in table.columns if get_spec(c.bench).metric(c.metric).higher_is_better is None]
    ranking = "; ".join(
        part for part in (f"{_and(list(dict.fromkeys(lower)))}: lower is better" if lower else "",
                          f"{_and(list(dict.fromkeys(neutral)))}: not ranked" if neutral else "") if part
    )  # fmt: skip
    lines = [
        f"{values_in} ± is half the width of the 95% bootstrap percentile interval, resampling images "
        f"(all the questions of a drawn image; {n_resamples} resamples, seed {seed}); exact bounds in results.csv.",
        "Bold: best in its column among rows of the same "
        + _and([name.lower() for name in table.index_names[: table.group_levels]])
        + (f" ({ranking})." if ranking else "."),
        f"{MARK}: differs from Base of the same model (same bench, split and decoding): paired permutation test over images "
        f"({n_permutations(n_resamples)} permutations), p < 0.05 after the Holm correction over the {table.n_tested} cells of this table tested "
        "against Base (ranked metrics only); raw p-values (and exact McNemar for accuracy and CHAIRs) in results.csv.",
        f"{MISSING_MD}: no run provides the cell (see the list below); {UNDEFINED}: the run exists but the metric is undefined.",
    ]
    present = [c for cells in table.cells for c in cells if not c.missing]
    seeds = sorted({c.n_seeds for c in present if c.n_seeds > 1})
    if seeds:
        text = (
            f"Cells over {'/'.join(map(str, seeds))} training seeds: the mean over the seeds ± their standard deviation (not an "
            f"interval); {MARK} there pools the seed pairs (seed s against Base's seed s); per-seed values, the bootstrap "
            "interval of the mean and seed_t_p (t-test of the per-seed differences from Base) are in results.csv."
        )
        if any(c.n_seeds == 1 for c in present):
            lines.insert(1, text)
        else:  # every cell is a mean over seeds: no cell shows a bootstrap half-width
            lines[0] = f"{values_in} {text}"
    if table.name in ("table2", "ablation_injection", "ablation_loss"):
        lines.insert(0, "Greedy decoding.")
    if table.name == "ablation_injection":
        lines.append(
            "First-layer add is the seed's run, with +M's candidate evidence source; the all-layer rows use the aligned source, "
            "so First-layer add vs All-layer add changes the position and the source at once. First-layer add (aligned) "
            "changes the position alone: compare it with All-layer add for the effect of the position."
        )
    return lines + table.notes


def _and(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1] if names else ""


def _escape_md(text: str) -> str:
    return text.replace("|", r"\|")


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured pipe table (pandas' to_markdown needs tabulate, which hallbench does not depend on)."""
    header = [*table.index_names, *(f"{c.group} {c.label}" if c.group not in ("", c.label) else c.label for c in table.columns)]
    align = [":--"] * len(table.index_names) + ["--:"] * len(table.columns)
    lines = ["| " + " | ".join(_escape_md(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    for row, cells in zip(table.rows, table.cells, strict=True):
        texts = []
        for cell in cells:
            text = cell_text(cell, latex=False)
            texts.append((f"**{text}**" if cell.bold else text) + _mark(cell, False))
        lines.append("| " + " | ".join(_escape_md(t) for t in [*row.labels, *texts]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` from pandas' Styler: labels escaped, ``$...$`` kept as math, bold via ``\\bfseries``."""
    n_labels = len(table.index_names)
    label_columns = [("", name) for name in table.index_names]
    data_columns = [(c.group, c.label) for c in table.columns]
    rows = []
    previous: tuple[str, ...] | None = None
    for row, cells in zip(table.rows, table.cells, strict=True):
        labels = list(row.labels)
        if previous is not None and previous[0] == labels[0]:
            labels[0] = ""  # the first label is printed once per block of rows, as papers do
        previous = row.labels
        rows.append([*labels, *(cell_text(c, latex=True) + _mark(c, True) for c in cells)])
    columns = pd.MultiIndex.from_tuples([*label_columns, *data_columns])
    frame = pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    bold = pd.DataFrame(
        [[""] * n_labels + ["font-weight: bold;" if c.bold else "" for c in cells] for cells in table.cells], columns=columns
    )
    styler = frame.style.hide(axis="index")
    styler = styler.format(escape="latex", subset=label_columns).format(escape="latex-math", subset=data_columns)
    styler = styler.format_index(escape="latex", axis=1)
    if rows:
        styler = styler.apply(lambda _: bold, axis=None)
    return styler.to_latex(hrules=True, convert_css=True, multicol_align="c", column_format="l" * n_labels + "r" * len(table.columns))
