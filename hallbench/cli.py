"""The ``hallbench`` command line: thin Typer commands over plain Python functions.

Every command parses its options and calls one function that is usable from Python too. Heavy
imports (torch, transformers) happen inside those functions, so ``hallbench --help`` stays instant.
User errors (``HallbenchError``) are printed as one red line without a traceback and exit with 1.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal, get_type_hints

import typer
from rich.console import Console
from rich.markup import escape

from hallbench.errors import HallbenchError
from hallbench.eval.benchmark import BENCHMARKS
from hallbench.eval.engine import Decoding
from hallbench.eval.run import Backend, DType
from hallbench.models.registry import MODEL_REGISTRY

app = typer.Typer(
    name="hallbench",
    help="Train hallucination-mitigating VLMs, evaluate them (POPE, CHAIR, VQA) and regenerate the paper's tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Build and check datasets: the shapes world, and validation of your own files.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

MODEL_NAMES = ", ".join(MODEL_REGISTRY)


def _benchmark_answer_lengths() -> str:
    from hallbench.eval.benchmark import all_specs

    return "Per benchmark: " + ", ".join(f"{spec.title} {spec.default_max_new_tokens}" for spec in all_specs()) + "."


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ``HallbenchError`` (or an ``OSError`` of the machine: full disk, permissions) into one red line on stderr and exit code 1."""
    try:
        yield
    except HallbenchError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(1) from None
    except OSError as err:
        # The machine, not the input: a full disk, a lost mount, a permission; one line says which.
        where = f" ({err.filename})" if err.filename else ""
        err_console.print(f"[bold red]error:[/] {escape(err.strerror or str(err))}{escape(where)}", soft_wrap=True)
        raise typer.Exit(1) from None


def _parse_sets(pairs: list[str] | None) -> dict[str, object]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; values are parsed as JSON when they can be."""
    import json

    result: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise HallbenchError(f"--set expects KEY=VALUE, got '{pair}'")
        try:
            result[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            result[key.strip().replace("-", "_")] = value
    return result


# ---------------------------------------------------------------------------------------------
# Training

# CLI option -> (TrainConfig field or evidence flag). Only options given on the command line
# override the recipe (--config) and the preset.
_EVIDENCE_OPTIONS = (
    "enable_evidence", "inject_position", "inject_op", "use_utilization", "evidence_source", "evidence_dim",
    "evidence_topk", "inject_layers", "aux_layers", "lambda_orth", "lambda_ctr", "tau", "ctr_queue",
)  # fmt: skip
_TRAIN_OPTIONS = {
    "data": "data", "images": "images", "output_root": "output_root", "output_dir": "output_dir", "learning_rate": "learning_rate",
    "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
    "max_length": "max_length", "min_pixels": "min_pixels", "max_pixels": "max_pixels", "precision": "precision", "save_total_limit": "save_total_limit", "logging_steps": "logging_steps",
    "seed": "seed", "tune_vision": "tune_vision", "lora_rank": "lora_rank", "lora_alpha": "lora_alpha",
    "gradient_checkpointing": "gradient_checkpointing", "deepspeed": "deepspeed", "resume": "resume", "cache_data": "cache_data",
}  # fmt: skip


def _train_help(field: str) -> str:
    from hallbench.fielddocs import field_help
    from hallbench.train.config import TrainConfig

    return field_help(TrainConfig, field)


def _evidence_help(field: str) -> str:
    from hallbench.fielddocs import field_help
    from hallbench.train.method import EvidenceConfig

    return field_help(EvidenceConfig, field, default="the preset's")


@app.command()
def train(
    model: Annotated[str | None, typer.Option(help=f"{MODEL_NAMES}, a model folder, 'all' (the paper's three) or a comma list.")] = None,
    variant: Annotated[
        str | None,
        typer.Option(
            help="base, m (+M), ma (+M+A), ours (Ours), abl-*, loss-*; or all (Table 2), ablations, ablation_injection, ablation_loss; or a comma list."
        ),
    ] = None,
    data: Annotated[Path | None, typer.Option(help=_train_help("data"))] = None,
    images: Annotated[Path | None, typer.Option(help="Image folder (default: images/ or img/ beside --data).")] = None,
    output_root: Annotated[Path | None, typer.Option(help=_train_help("output_root"))] = None,
    output_dir: Annotated[Path | None, typer.Option(help=_train_help("output_dir"))] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML recipe (TrainConfig keys, 'evidence:' and 'set:' mappings); flags override it.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Other TrainingArguments as KEY=VALUE (e.g. max_steps=20, warmup_steps=0.03).")
    ] = None,
    learning_rate: Annotated[float | None, typer.Option(help=_train_help("learning_rate"))] = None,
    epochs: Annotated[float | None, typer.Option(help=_train_help("num_train_epochs"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=_train_help("per_device_train_batch_size"))] = None,
    grad_accum: Annotated[int | None, typer.Option(help=_train_help("gradient_accumulation_steps"))] = None,
    max_length: Annotated[int | None, typer.Option(help=_train_help("max_length"))] = None,
    min_pixels: Annotated[int | None, typer.Option(help=_train_help("min_pixels"))] = None,
    max_pixels: Annotated[int | None, typer.Option(help=_train_help("max_pixels"))] = None,
    precision: Annotated[str | None, typer.Option(help=_train_help("precision"))] = None,
    save_total_limit: Annotated[int | None, typer.Option(help=_train_help("save_total_limit"))] = None,
    logging_steps: Annotated[int | None, typer.Option(help=_train_help("logging_steps"))] = None,
    seed: Annotated[int | None, typer.Option(help=_train_help("seed"))] = None,
    seeds: Annotated[
        str | None, typer.Option(help="One run per seed, e.g. 0,1,2, in folders named ..._seed<N> (instead of --seed).")
    ] = None,
    tune_vision: Annotated[bool | None, typer.Option("--tune-vision/--freeze-vision", help=_train_help("tune_vision"))] = None,
    lora_rank: Annotated[int | None, typer.Option(help=_train_help("lora_rank"))] = None,
    lora_alpha: Annotated[float | None, typer.Option(help=_train_help("lora_alpha"))] = None,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing", help=_train_help("gradient_checkpointing"))
    ] = None,
    deepspeed: Annotated[str | None, typer.Option(help=_train_help("deepspeed"))] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help=_train_help("resume"))] = None,
    cache_data: Annotated[bool | None, typer.Option("--cache-data", help=_train_help("cache_data"))] = None,
    enable_evidence: Annotated[
        bool | None, typer.Option("--enable-evidence/--no-enable-evidence", help=_evidence_help("enable_evidence"))
    ] = None,
    inject_position: Annotated[str | None, typer.Option(help=_evidence_help("inject_position"))] = None,
    inject_op: Annotated[str | None, typer.Option(help=_evidence_help("inject_op"))] = None,
    use_utilization: Annotated[
        bool | None, typer.Option("--use-utilization/--no-use-utilization", help=_evidence_help("use_utilization"))
    ] = None,
    evidence_source: Annotated[str | None, typer.Option(help=_evidence_help("evidence_source"))] = None,
    evidence_dim: Annotated[int | None, typer.Option(help=_evidence_help("evidence_dim"))] = None,
    evidence_topk: Annotated[int | None, typer.Option(help=_evidence_help("evidence_topk"))] = None,
    inject_layers: Annotated[str | None, typer.Option(help=_evidence_help("inject_layers"))] = None,
    aux_layers: Annotated[str | None, typer.Option(help=_evidence_help("aux_layers"))] = None,
    lambda_orth: Annotated[float | None, typer.Option(help=_evidence_help("lambda_orth"))] = None,
    lambda_ctr: Annotated[float | None, typer.Option(help=_evidence_help("lambda_ctr"))] = None,
    tau: Annotated[float | None, typer.Option(help=_evidence_help("tau"))] = None,
    ctr_queue: Annotated[int | None, typer.Option(help=_evidence_help("ctr_queue"))] = None,
    local_rank: Annotated[
        int | None, typer.Option("--local_rank", "--local-rank", hidden=True, help="Set by the deepspeed launcher.")
    ] = None,
) -> None:
    """Train an evidence-injected VLM (Base, +M, +M+A, Ours, ablations); several models/variants run in sequence."""
    values = locals()
    with user_errors():
        from hallbench.train.config import TrainConfig, load_recipe, merge_settings
        from hallbench.train.presets import expand_variants
        from hallbench.train.run import TrainResult, expand_models, parse_seeds, run_matrix

        flags: dict[str, object] = {field: values[option] for option, field in _TRAIN_OPTIONS.items() if values[option] is not None}
        flags["evidence_overrides"] = {k: values[k] for k in _EVIDENCE_OPTIONS if values[k] is not None}
        flags["training_args"] = _parse_sets(set_)
        for key in ("model", "variant"):
            if values[key] is not None:
                flags[key] = values[key]
        settings = merge_settings(load_recipe(config) if config else {}, flags)
        missing = [f"--{k}" for k in ("model", "variant", "data") if settings.get(k) is None]
        if missing:
            raise HallbenchError(f"missing {', '.join(missing)} (give them as options or in the --config recipe)")
        settings["data"] = Path(settings["data"])
        if settings.get("images") is None:
            settings["images"] = _default_images(settings["data"])
        models_, variants = expand_models(str(settings.pop("model"))), expand_variants(str(settings.pop("variant")))
        if seeds is not None and seed is not None:
            raise HallbenchError("give --seed (one run) or --seeds (one run per seed), not both")
        seed_list = parse_seeds(seeds) if seeds is not None else None
        base = TrainConfig(model=models_[0], variant=variants[0], **settings)

        def announce(result: TrainResult) -> None:
            if int(os.environ.get("RANK", "0")) == 0:
                terms = result.loss_terms()
                console.print(f"[green]{result.status}[/] {result.path}" + (f"  ({terms})" if terms else ""))

        run_matrix(base, models_, variants, seeds=seed_list, on_result=announce)


def _default_images(data: Path) -> Path:
    for name in ("images", "img"):
        if (data.parent / name).is_dir():
            return data.parent / name
    raise HallbenchError(f"--images not given and neither images/ nor img/ exists beside {data}")


@app.command()
def report(
    runs: Annotated[Path, typer.Option(help="Folder searched recursively for training runs and evaluation runs.")],
    out: Annotated[Path, typer.Option(help="Folder for the tables (.md, .tex), plots (.png), results.csv and index.md.")],
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples per confidence interval and paired test (0: no CIs).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap (same runs and seed: identical files).")] = 0,
    prefer: Annotated[
        str | None, typer.Option(help="When two runs claim the same table cell: 'newest' keeps the newer one (default: error).")
    ] = None,
) -> None:
    """Regenerate Table 2, both ablation tables, the decoding and POPE tables (Markdown + LaTeX, with CIs) and plots from run folders."""
    from hallbench.report import run_report

    with user_errors():
        result = run_report(runs, out, n_resamples=resamples, seed=seed, prefer=prefer)
    for item in result.skipped:
        err_console.print(f"[yellow]skipped[/] {escape(str(item.path))}: {escape(item.reason)}", soft_wrap=True)
    for item in result.excluded:
        console.print(f"[dim]not in the paper tables[/] {escape(str(item.path))}: {escape(item.reason)}", soft_wrap=True)
    for item in result.warnings:
        err_console.print(f"[yellow]warning[/] {escape(str(item.path))}: {escape(item.reason)}", soft_wrap=True)
    for name, table in result.tables.items():
        filled = sum(not c.missing for row in table.cells for c in row)
        total = sum(len(row) for row in table.cells)
        console.print(f"{name}: {filled} of {total} cells filled")
    console.print(f"wrote {len(result.files)} files to [bold]{escape(str(out))}[/]; start with {escape(str(result.index))}", soft_wrap=True)


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for everything: shapes/, pretrained/, study/runs/, study/eval/, report/. Re-running resumes.")
    ] = Path("demo"),
    model: Annotated[str, typer.Option(help="tiny-qwen or tiny-ministral.")] = "tiny-qwen",
    quick: Annotated[bool, typer.Option("--quick", help="A small world and a few steps: the whole pipeline in about a minute.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Also train and evaluate both ablations (9 more runs).")] = False,
    judge_base_url: Annotated[
        str | None, typer.Option(help="A real OpenAI-compatible judge for the VQA set (default: a local judge on 127.0.0.1).")
    ] = None,
    judge_model: Annotated[str, typer.Option(help="The judge's model name (with --judge-base-url).")] = "local",
    seed: Annotated[int, typer.Option(help="Seed of the world, pretraining and sampling (and of the fine-tuning without --seeds).")] = 0,
    seeds: Annotated[
        str | None,
        typer.Option(help="Fine-tuning seeds, e.g. 0,1,2: each variant trained and evaluated per seed; mean ± sd in the report."),
    ] = None,
) -> None:
    """Run the whole study on the shapes world with a tiny model, on a CPU, offline: train, evaluate, report."""
    with user_errors():
        from hallbench.demo import DemoConfig, run_demo
        from hallbench.report.tables import cell_plain
        from hallbench.train.run import parse_seeds

        cfg = DemoConfig(
            out=out, model=model, quick=quick, full=full, judge_base_url=judge_base_url, judge_model=judge_model, seed=seed,
            seeds=tuple(parse_seeds(seeds)) if seeds is not None else (),
        )  # fmt: skip
        result = run_demo(cfg, say=console.print)
        table2 = result.table2
        columns = [f"{c.group} {c.label}" if c.group not in ("", c.label) else c.label for c in table2.columns]
        rows = [(row.labels[-1], [cell_plain(cell) for cell in cells]) for row, cells in zip(table2.rows, table2.cells, strict=True)]
        spread = (
            f"± = standard deviation across the {len(cfg.fine_tune_seeds)} seeds"
            if len(cfg.fine_tune_seeds) > 1
            else "± = half-width of the 95% bootstrap CI over images"
        )
        caption = f"greedy decoding; {spread}; † = differs from Base (Holm-corrected, see the legend)"
        _print_grid(table2.title, "Variant", columns, rows, caption)
        for line in result.variation:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        total = sum(s.seconds for s in result.stages)
        console.print(
            f"[bold]demo finished in {total / 60:.1f} min[/]: report {result.report_index}, runs {cfg.study / 'runs'}, evaluations {cfg.study / 'eval'}"
        )


# ---------------------------------------------------------------------------------------------
# Evaluation


# `hallbench eval --help` groups its options by what they belong to; each benchmark's own options
# (BenchmarkSpec.options) get a panel of their own, added by _with_benchmark_options.
_RUN = "Benchmark and run"
_DECODING = "Decoding and prompt"
_BACKEND = "Model and backend"


def _eval_help(field: str) -> str:
    from hallbench.eval.run import EvalConfig
    from hallbench.fielddocs import option_help

    return option_help(EvalConfig, field)


def _decoding_help(field: str) -> str:
    from hallbench.eval.engine import DecodingConfig
    from hallbench.fielddocs import option_help

    return option_help(DecodingConfig, field)


def _with_benchmark_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with one ``--flag`` per benchmark option (the fields of every ``BenchmarkSpec.options``,
    see ``option_flags``), typed, defaulted and documented by its field, in its benchmark's help panel;
    the values reach ``command`` as ``**bench_options``. A new benchmark's options need no change here."""
    from hallbench.eval.benchmark import option_flags
    from hallbench.fielddocs import option_help

    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    common = {p.name for p in params}
    for name, declared in option_flags().items():
        spec, option = declared[0]
        if name in common:
            raise ValueError(f"{spec.name}'s option {name!r} is already a hallbench eval flag for every benchmark; rename it")
        # A shared option (POPE's and MME's --parser) is one flag: its panel names every benchmark.
        panel = " and ".join(s.title for s, _ in declared) + " options"
        helps = list(dict.fromkeys(option_help(s.options, name) for s, _ in declared))
        text = helps[0] if len(helps) == 1 else " ".join(f"{s.title}: {option_help(s.options, name)}" for s, _ in declared)
        kind = get_type_hints(spec.options)[name]
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=option.default,
                annotation=Annotated[kind, typer.Option(help=text, rich_help_panel=panel)],
            )
        )

    @functools.wraps(command)
    def with_options(**flags: object) -> None:
        command(**flags)

    with_options.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return with_options


@app.command(name="eval")
@_with_benchmark_options
def eval_(
    bench: Annotated[Literal[tuple(BENCHMARKS)], typer.Option(rich_help_panel=_RUN, help=_eval_help("bench"))],  # type: ignore[valid-type]
    out: Annotated[Path, typer.Option(rich_help_panel=_RUN, help=_eval_help("out"))],
    data: Annotated[Path | None, typer.Option(rich_help_panel=_RUN, help=_eval_help("data"))] = None,
    images: Annotated[Path | None, typer.Option(rich_help_panel=_RUN, help=_eval_help("images"))] = None,
    split: Annotated[str, typer.Option(rich_help_panel=_RUN, help=_eval_help("split"))] = "all",
    max_samples: Annotated[int | None, typer.Option(rich_help_panel=_RUN, help=_eval_help("max_samples"))] = None,
    strict: Annotated[bool, typer.Option(rich_help_panel=_RUN, help=_eval_help("strict"))] = False,
    model: Annotated[str, typer.Option(rich_help_panel=_BACKEND, help=f"{_eval_help('model')} Registry: {MODEL_NAMES}.")] = "tiny-qwen",
    backend: Annotated[Backend, typer.Option(rich_help_panel=_BACKEND, help=_eval_help("backend"))] = "hf",
    base_url: Annotated[str | None, typer.Option(rich_help_panel=_BACKEND, help=_eval_help("base_url"))] = None,
    api_model: Annotated[str | None, typer.Option(rich_help_panel=_BACKEND, help=_eval_help("api_model"))] = None,
    api_key_env: Annotated[str, typer.Option(rich_help_panel=_BACKEND, help=_eval_help("api_key_env"))] = "OPENAI_API_KEY",
    device: Annotated[str | None, typer.Option(rich_help_panel=_BACKEND, help=_eval_help("device"))] = None,
    dtype: Annotated[DType, typer.Option(rich_help_panel=_BACKEND, help=_eval_help("dtype"))] = "auto",
    min_pixels: Annotated[int | None, typer.Option(rich_help_panel=_BACKEND, help=_eval_help("min_pixels"))] = None,
    max_pixels: Annotated[int | None, typer.Option(rich_help_panel=_BACKEND, help=_eval_help("max_pixels"))] = None,
    decoding: Annotated[Decoding, typer.Option(rich_help_panel=_DECODING, help=_decoding_help("decoding"))] = "greedy",
    max_new_tokens: Annotated[
        int | None, typer.Option(rich_help_panel=_DECODING, help=f"{_decoding_help('max_new_tokens')} {_benchmark_answer_lengths()}")
    ] = None,
    temperature: Annotated[float, typer.Option(rich_help_panel=_DECODING, help=_decoding_help("temperature"))] = 1.0,
    top_p: Annotated[float, typer.Option(rich_help_panel=_DECODING, help=_decoding_help("top_p"))] = 1.0,
    num_beams: Annotated[int, typer.Option(rich_help_panel=_DECODING, help=_decoding_help("num_beams"))] = 3,
    seed: Annotated[int, typer.Option(rich_help_panel=_DECODING, help=_decoding_help("seed"))] = 0,
    batch_size: Annotated[int, typer.Option(rich_help_panel=_DECODING, help=_decoding_help("batch_size"))] = 8,
    system_prompt: Annotated[str | None, typer.Option(rich_help_panel=_DECODING, help=_eval_help("system_prompt"))] = None,
    prompt_suffix: Annotated[str | None, typer.Option(rich_help_panel=_DECODING, help=_eval_help("prompt_suffix"))] = None,
    **bench_options: object,
) -> None:
    """Evaluate a model on one benchmark: batched generation, incremental predictions, resumable, multi-GPU with torchrun."""
    from hallbench.eval.run import EvalConfig, run_eval

    with user_errors():
        cfg = EvalConfig.from_flags(
            bench=bench, out=out, data=data, images=images, split=split, max_samples=max_samples, strict=strict,
            model=model, backend=backend, base_url=base_url, api_model=api_model, api_key_env=api_key_env, device=device,
            dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels, decoding=decoding, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, num_beams=num_beams, seed=seed, batch_size=batch_size,
            system_prompt=system_prompt, prompt_suffix=prompt_suffix, **bench_options,
        )  # fmt: skip
        _notice_untrained(cfg)
        summary = run_eval(cfg)
    if os.environ.get("RANK", "0") == "0":
        print_summary(summary, out)
    if summary["n_samples"] and summary["n_errors"] == summary["n_samples"]:
        first = summary["errors"][0]["error"] if summary["errors"] else "see predictions.jsonl"
        err_console.print(
            f"[bold red]error:[/] every one of the {summary['n_samples']} samples failed; the first: {escape(first)}", soft_wrap=True
        )
        raise typer.Exit(1)
    if summary.get("judge_failed"):
        err_console.print(
            f"[bold red]error:[/] {summary['judge_errors']} of {summary['n_closed']} CLOSED judgements failed "
            f"({escape(_error_kinds(summary))}), more than --judge-max-error-rate {cfg.options.judge_max_error_rate:g}; closed_accuracy "
            "covers the judged ones only. Run the same command again to retry them (cached verdicts are reused).",
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _notice_untrained(cfg: object) -> None:
    """Say so when ``--model`` is a built-in tiny model: its weights are random, its metrics meaningless."""
    from hallbench.models.registry import MODEL_REGISTRY

    spec = MODEL_REGISTRY.get(getattr(cfg, "model", ""))
    if getattr(cfg, "backend", "hf") == "hf" and spec is not None and spec.tiny and os.environ.get("RANK", "0") == "0":
        err_console.print(
            f"[bold yellow]note:[/] --model {spec.name} is a built-in tiny model with random weights (the default, for trying the "
            "pipeline): its numbers say nothing. Pass --model a training run folder, a model folder or qwen2b / qwen4b / ministral3b.",
            soft_wrap=True,
        )


def _error_kinds(summary: dict) -> str:
    kinds = (summary.get("judge") or {}).get("errors_by_kind") or {}
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "see judge_error_ids in summary.json"


def format_grid(title: str, index_name: str, columns: list[str], rows: list[tuple[str, list[str]]], width: int) -> list[str]:
    """Plain-text lines of a table that stay readable at ``width`` columns and in a log file.

    One line per row when the whole table fits ``width``; otherwise one block per row with a
    ``column: value`` line per cell. Headers are never cut and cells never wrapped.
    """
    widths = [max([len(index_name)] + [len(label) for label, _ in rows])]
    widths += [max([len(name)] + [len(cells[j]) for _, cells in rows]) for j, name in enumerate(columns)]
    lines = [title]
    if sum(widths) + 2 * len(columns) <= width:
        header = [index_name.ljust(widths[0]), *(name.rjust(w) for name, w in zip(columns, widths[1:], strict=True))]
        lines += ["  ".join(header).rstrip(), "  ".join("-" * w for w in widths)]
        for label, cells in rows:
            lines.append("  ".join([label.ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells, widths[1:], strict=True))]).rstrip())
        return lines
    name_width = max(len(name) for name in columns)
    for label, cells in rows:
        lines.append(f"{index_name} {label}")
        lines += [f"  {name.ljust(name_width)}  {cell}" for name, cell in zip(columns, cells, strict=True)]
    return lines


def _print_grid(title: str, index_name: str, columns: list[str], rows: list[tuple[str, list[str]]], caption: str = "") -> None:
    for line in format_grid(title, index_name, columns, rows, console.width):
        console.print(escape(line), soft_wrap=True, highlight=False)
    if caption:
        console.print(escape(caption), soft_wrap=True, highlight=False)


def print_summary(summary: dict, out: Path) -> None:
    """The headline numbers of an evaluation summary (readable at 80 columns and in logs)."""
    rows = dict(summary.get("splits") or {"all": summary.get("metrics", {})})
    for extra in ("mean", "pooled"):
        if extra in summary:
            rows[extra] = summary[extra]
    names = [m for m in summary.get("metrics_info", {}) if any(m in r for r in rows.values())]
    title = f"{summary['bench']} - {summary.get('model')} ({summary.get('decoding')})"
    _print_grid(title, "split", names, [(split, [_fmt(metrics.get(n)) for n in names]) for split, metrics in rows.items()])
    if summary.get("n_errors"):
        console.print(f"[yellow]{summary['n_errors']} sample(s) could not be evaluated[/]; see errors in summary.json")
    if summary.get("judge_errors"):
        console.print(
            f"[yellow]judge: {summary['judge_errors']} of {summary['n_closed']} CLOSED judgements failed[/] "
            f"({escape(_error_kinds(summary))}); ids in summary.json (judge_error_ids)"
        )
    if summary.get("rescored_from"):
        console.print(f"re-scored the answers of {escape(str(out))} without generating: [bold]{escape(str(summary['scored_into']))}[/]")
    else:
        console.print(f"predictions and summary in [bold]{escape(str(out))}[/]")


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


# ---------------------------------------------------------------------------------------------
# Data


def _shapes_help(field: str) -> str:
    from hallbench.data.shapes import ShapesConfig
    from hallbench.fielddocs import option_help

    return option_help(ShapesConfig, field)


def _pope_build_help(field: str) -> str:
    from hallbench.data.pope_build import PopeBuildConfig
    from hallbench.fielddocs import option_help

    return option_help(PopeBuildConfig, field)


@data_app.command("shapes")
def data_shapes(
    out: Annotated[Path, typer.Option(help="Folder to write the world into (created if missing).")],
    seed: Annotated[int, typer.Option(help=_shapes_help("seed"))] = 0,
    n_train: Annotated[int, typer.Option(help=_shapes_help("n_train"))] = 2000,
    n_val: Annotated[int, typer.Option(help=_shapes_help("n_val"))] = 500,
    image_size: Annotated[int, typer.Option(help=_shapes_help("image_size"))] = 128,
    theme_prob: Annotated[float, typer.Option(help=_shapes_help("theme_prob"))] = 0.85,
    max_objects: Annotated[int, typer.Option(help=_shapes_help("max_objects"))] = 4,
    clutter: Annotated[int, typer.Option(help=_shapes_help("clutter"))] = 3,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any other ShapesConfig field as KEY=VALUE (see docs/data_formats.md); repeatable."),
    ] = None,
) -> None:
    """Generate the shapes world: COCO-format images, instances, captions, synonyms, training and VQA data."""
    import time

    from hallbench.data.shapes import config_from_overrides, generate_shapes

    with user_errors():
        overrides = {
            "seed": seed, "n_train": n_train, "n_val": n_val, "image_size": image_size,
            "theme_prob": theme_prob, "max_objects": max_objects, "clutter": clutter,
        }  # fmt: skip
        overrides.update(_parse_sets(set_))
        cfg = config_from_overrides(**overrides)
        start = time.perf_counter()
        generate_shapes(cfg, out, progress=True)
    console.print(
        f"wrote the shapes world ({cfg.n_train} train + {cfg.n_val} val images, seed {cfg.seed}) "
        f"to [bold]{escape(str(out))}[/] in {time.perf_counter() - start:.1f} s"
    )


@data_app.command("pope")
def data_pope(
    instances: Annotated[Path, typer.Option(help="COCO-format instances file (e.g. instances_val2014.json, or a shapes world's).")],
    images: Annotated[Path, typer.Option(help="Folder of the images it describes (recorded, so that eval finds them).")],
    out: Annotated[Path, typer.Option(help="Folder for random.jsonl, popular.jsonl, adversarial.jsonl, image_ids.json, pope_build.json.")],
    n_images: Annotated[int | None, typer.Option(help=_pope_build_help("n_images"))] = 500,
    all_images: Annotated[bool, typer.Option(help="Use every eligible image instead of --n-images.")] = False,
    per_image: Annotated[int, typer.Option(help=_pope_build_help("per_image"))] = 3,
    min_objects: Annotated[int | None, typer.Option(help=_pope_build_help("min_objects"))] = None,
    seed: Annotated[int, typer.Option(help=_pope_build_help("seed"))] = 0,
) -> None:
    """Build POPE random/popular/adversarial question files from a COCO instances file, as in the POPE paper."""
    from hallbench.data.pope_build import PopeBuildConfig, build_pope

    with user_errors():
        cfg = PopeBuildConfig(n_images=None if all_images else n_images, per_image=per_image, seed=seed, min_objects=min_objects)
        manifest = build_pope(instances, out, cfg, images_dir=images)
    stats = manifest["stats"]
    console.print(
        f"wrote POPE splits for {stats['n_images']} of {stats['n_eligible']} eligible images "
        f"({stats['random']['n_questions']} questions per split) to [bold]{escape(str(out))}[/]"
    )


@data_app.command("mme")
def data_mme(
    instances: Annotated[Path, typer.Option(help="COCO-format instances file (a shapes world's annotations/instances_val.json).")],
    images: Annotated[Path, typer.Option(help="Folder of the images it describes (copied into each subset folder).")],
    out: Annotated[Path, typer.Option(help="Folder for existence/, count/, position/, color/ (MME's layout) and mme_build.json.")],
    seed: Annotated[int, typer.Option(help="Seed of every random choice; same input and seed give byte-identical files.")] = 0,
) -> None:
    """Build MME's hallucination subsets (existence, count, position, color: a Yes and a No question per image)."""
    from hallbench.data.mme_build import build_mme

    with user_errors():
        manifest = build_mme(instances, images, out, seed=seed)
    per_subset = ", ".join(f"{subset} {n}" for subset, n in manifest["images_per_subset"].items())
    console.print(f"wrote MME subsets (images: {per_subset}; two questions each) to [bold]{escape(str(out))}[/]")


FORMAT_READERS = {
    "coco-instances": "read_coco_instances",
    "coco-captions": "read_coco_captions",
    "conversations": "read_conversations",
    "vqa": "read_vqa",
    "pope": "read_pope_questions",
    "synonyms": "read_synonyms",
}


@data_app.command("check")
def data_check(
    file: Annotated[Path, typer.Argument(help="The file to check.")],
    kind: Annotated[str, typer.Option(help=f"Its format: {', '.join(FORMAT_READERS)}.")],
    images: Annotated[Path | None, typer.Option(help="Image folder: also check that every referenced image exists and decodes.")] = None,
) -> None:
    """Validate a data file with the same reader the pipeline uses; print the first problem or a count."""
    from hallbench.data import formats

    with user_errors():
        if kind not in FORMAT_READERS:
            raise HallbenchError(f"unknown --kind '{kind}'; choose one of {', '.join(FORMAT_READERS)}")
        records = getattr(formats, FORMAT_READERS[kind])(file)
        n_images = 0
        if images is not None:
            for where, name in formats.referenced_images(kind, records):
                formats.load_image(formats.resolve_image(images, name, where))
                n_images += 1
    size = len(records) if hasattr(records, "__len__") else 0
    checked = f", {n_images} images decoded" if images is not None else ""
    console.print(f"[green]ok[/]: {escape(str(file))} is valid {kind} ({size} entries{checked})")


# ---------------------------------------------------------------------------------------------
# Models


@app.command()
def models() -> None:
    """List the model registry and where each model's weights would be loaded from."""
    from rich.table import Table

    from hallbench.models.registry import resolve_model

    table = Table("name", "display name", "family", "hub id", "found at")
    for spec in MODEL_REGISTRY.values():
        try:
            resolved = resolve_model(spec.name)
            where = "built in code" if resolved.path is None else f"{resolved.path} ({resolved.source})"
        except HallbenchError:
            where = "[yellow]not on this machine[/]"
        table.add_row(spec.name, spec.display_name, spec.family, spec.hub_id or "-", where)
    console.print(table)


@app.command()
def ask(
    image: Annotated[list[Path], typer.Option(help="Image file(s); one answer per image.")],
    model: Annotated[str, typer.Option(help=f"Registry name ({MODEL_NAMES}), a model folder, or a cached hub id.")] = "tiny-qwen",
    prompt: Annotated[str, typer.Option(help="The question or instruction.")] = "Please describe this image in detail.",
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 32,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1...; default: GPU if available.")] = None,
) -> None:
    """Ask a model one question about one or more images (greedy decoding): a quick check that a model loads and answers."""
    from hallbench.models.loading import answer_questions

    with user_errors():
        answers = answer_questions(model, image, prompt, max_new_tokens=max_new_tokens, device=device)
    for path, answer in zip(image, answers, strict=True):
        console.print(f"[bold]{escape(str(path))}[/]: {escape(answer)}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
