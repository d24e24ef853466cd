"""The ``hallbench`` command line: thin Typer commands over plain Python functions.

Every command parses its options and calls one function that is usable from Python too. Heavy
imports (torch, transformers) happen inside those functions, so ``hallbench --help`` stays instant.
User errors (``HallbenchError``) are printed as one red line without a traceback and exit with 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from hallbench.errors import HallbenchError
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
# Commands whose stage is not built yet accept any arguments, so that they can say so instead of
# complaining about an option.
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ``HallbenchError`` into one red line on stderr and exit code 1."""
    try:
        yield
    except HallbenchError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
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
# Stages that later issues build. Each says so and exits non-zero.


def _not_built(stage: str, issue: str) -> None:
    from hallbench.errors import NotBuiltError

    with user_errors():
        raise NotBuiltError(f"`hallbench {stage}` is not built yet (tracked in {issue}); nothing was run.")


@app.command(context_settings=_PASSTHROUGH)
def train(ctx: typer.Context) -> None:
    """Train an evidence-injected VLM (Base, +M, +M+A, Ours, ablations) under DeepSpeed. (not built yet)"""
    _not_built("train", "the training-stage issue")


@app.command(name="eval", context_settings=_PASSTHROUGH)
def eval_(ctx: typer.Context) -> None:
    """Evaluate a model on POPE, CHAIR or the VQA bench (LLM judge + BERTScore). (not built yet)"""
    _not_built("eval", "the evaluation-stage issues")


@app.command(context_settings=_PASSTHROUGH)
def report(ctx: typer.Context) -> None:
    """Regenerate Table 2, the ablation tables and plots from run folders. (not built yet)"""
    _not_built("report", "the report-stage issue")


@app.command(context_settings=_PASSTHROUGH)
def demo(ctx: typer.Context) -> None:
    """Run the whole study on the shapes world with tiny models, on a CPU, offline. (not built yet)"""
    _not_built("demo", "the demo issue")


# ---------------------------------------------------------------------------------------------
# Data


@data_app.command("shapes")
def data_shapes(
    out: Annotated[Path, typer.Option(help="Folder to write the world into (created if missing).")],
    seed: Annotated[int, typer.Option(help="Master seed: the same options and seed give byte-identical files.")] = 0,
    n_train: Annotated[int, typer.Option(help="Number of training images.")] = 2000,
    n_val: Annotated[int, typer.Option(help="Number of validation images (POPE, CHAIR and VQA are built from these).")] = 500,
    image_size: Annotated[int, typer.Option(help="Side of the square PNG images in pixels.")] = 128,
    theme_prob: Annotated[float, typer.Option(help="Probability that an object comes from the image's theme (co-occurrence bias).")] = 0.85,
    max_objects: Annotated[int, typer.Option(help="Most objects per image.")] = 4,
    clutter: Annotated[int, typer.Option(help="Grey distractor strokes per image.")] = 3,
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
