"""``hallbench demo``: the whole study on the shapes world with a tiny model, on a CPU, offline.

The real study fine-tunes a pretrained VLM (Qwen3-VL, Ministral-3) into Base, +M, +M+A and Ours.
The demo does the same at small scale, each stage a call to the functions the commands use:

1. the shapes world (``hallbench data shapes``) and its POPE splits (``hallbench data pope``);
2. "pretraining": a tiny model learns to see the shapes world (a ``base`` run with a long schedule
   on the short-answer questions: object lists and yes/no; the stand-in for the pretrained
   checkpoint), saved in ``pretrained/``;
3. fine-tuning Base, +M, +M+A and Ours (and both ablations with ``--full``) from that checkpoint
   (``hallbench train``), once per fine-tuning seed (``--seeds``; default: ``--seed``), in
   ``study/runs/output_model_<model>_<variant>_seed<N>/``;
4. for every fine-tuned run: POPE (random, popular, adversarial), CHAIR with greedy, sampling and
   beam decoding, and the VQA set judged by a local OpenAI-compatible judge on 127.0.0.1 (or the
   endpoint given) with BERTScore (``hallbench eval``), in ``study/eval/``;
5. the report of ``study/`` (``hallbench report``): Table 2, decoding and POPE tables, plots.

Every stage resumes: a finished world, run or evaluation is reused, so an interrupted demo continues
where it stopped. All seeds are fixed, so two demos on one machine with the same installed versions
give the same numbers; adding seeds to ``--seeds`` later trains only the new ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError, SettingsChangedError
from hallbench.provenance import provenance, sha256_file
from hallbench.runfolder import locked_output_folder, write_json_atomic


@dataclass(frozen=True)
class DemoProfile:
    """World size, model size, schedules and evaluation sizes of one demo flavour."""

    world: dict[str, Any]
    """ShapesConfig overrides."""
    tiny_size: dict[str, Any]
    """TinySize overrides of the tiny model."""
    pretrain: dict[str, Any]
    """TrainConfig fields of the pretraining run (learning_rate, num_train_epochs, ...)."""
    pretrain_args: dict[str, Any]
    """Other TrainingArguments of the pretraining run (scheduler, warm-up, max_steps)."""
    train: dict[str, Any]
    """TrainConfig fields of the fine-tuning of each variant."""
    training_args: dict[str, Any]
    """Other TrainingArguments of the fine-tuning."""
    pope_images: int
    """Val images the POPE splits are built from (3 questions each, so 6 per image and split)."""
    chair_images: int
    """Val images captioned for CHAIR, per decoding."""
    vqa_questions: int
    """VQA questions evaluated."""
    caption_tokens: int = 48
    """max_new_tokens for CHAIR captions and VQA answers."""
    eval_batch_size: int = 64
    pretrain_save_steps: int = 200
    """Pretraining checkpoint interval: an interrupted demo resumes from the last one (200 steps: about a minute on two cores)."""
    pretrain_kinds: tuple[str, ...] = ()
    """Training-record kinds used for pretraining (``list``, ``exist``, ``caption``, ``vqa``: the part of the
    shapes ids after the image number); empty = all. Short answers (object lists, yes/no) teach a tiny
    model to see much faster than captions, whose many tokens dominate a per-token loss."""


DEFAULT = DemoProfile(
    # Chosen by pilots of the pretraining (POPE random accuracy, ~2,000 steps): 1,500 images with 90% of
    # the objects in their category's own shade 75%; 4,000 images 79%; 4,000 images with every object
    # in its own shade 85% (the 2.5M-parameter model picks colour up in ~1,000 steps, glyph shape alone
    # not in this budget). Training "no" questions ask about random absent objects only
    # (adversarial_negative_prob 0), as in instruction data that never targets absent theme-mates: the
    # theme prior stays in the model, and POPE adversarial shows it (~5 points below random).
    world={
        "n_train": 4000,
        "n_val": 400,
        "category_colour_prob": 1.0,
        "min_object_frac": 0.22,
        "max_object_frac": 0.4,
        "clutter": 1,
        "exist_questions_per_image": 4,
        "adversarial_negative_prob": 0.0,
    },
    tiny_size={"hidden_size": 256, "intermediate_size": 512, "vision_hidden_size": 128},
    pretrain={"learning_rate": 3e-4, "num_train_epochs": 20, "per_device_train_batch_size": 32, "tune_vision": True, "logging_steps": 50},
    pretrain_args={"lr_scheduler_type": "cosine", "warmup_steps": 0.05, "max_grad_norm": 1.0, "max_steps": 2200},
    pretrain_kinds=("list", "exist"),
    train={"learning_rate": 2e-4, "num_train_epochs": 1, "per_device_train_batch_size": 32, "logging_steps": 10},
    training_args={"lr_scheduler_type": "cosine", "warmup_steps": 0.1, "max_steps": 120},
    pope_images=150,
    chair_images=150,
    vqa_questions=150,
)
QUICK = DemoProfile(
    world={"n_train": 120, "n_val": 60, "category_colour_prob": 0.9},
    tiny_size={},
    pretrain={"learning_rate": 1e-3, "num_train_epochs": 1, "per_device_train_batch_size": 16, "tune_vision": True, "logging_steps": 5},
    pretrain_args={"max_steps": 10},
    pretrain_save_steps=4,
    pretrain_kinds=("list", "exist"),
    train={"learning_rate": 1e-3, "num_train_epochs": 1, "per_device_train_batch_size": 16, "logging_steps": 5},
    training_args={"max_steps": 5},
    pope_images=12,
    chair_images=16,
    vqa_questions=16,
    caption_tokens=24,
)
DECODINGS = ("greedy", "sample", "beam")


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("demo")
    """Everything goes here: shapes/, pretrained/, study/runs/, study/eval/, report/."""
    model: str = "tiny-qwen"
    """tiny-qwen or tiny-ministral."""
    quick: bool = False
    """A smaller world and a few training steps: the pipeline in about a minute (no real learning)."""
    full: bool = False
    """Also train and evaluate both ablations (9 more runs)."""
    judge_base_url: str | None = None
    """A real OpenAI-compatible judge for the VQA set (default: a local judge on 127.0.0.1 that the demo starts)."""
    judge_model: str = "local"
    """The judge's model name (with --judge-base-url)."""
    seed: int = 0
    """Seed of the world, the pretraining and the sampling decoding (and of the fine-tuning without ``seeds``)."""
    seeds: tuple[int, ...] = ()
    """Fine-tuning seeds (``--seeds 0,1,2``): every variant is fine-tuned and evaluated once per seed, from
    the one pretrained model, and the report shows mean ± standard deviation; default: ``seed`` alone."""
    profile_override: DemoProfile | None = None
    """Python API only: a custom profile (world, sizes, schedules) instead of the default or quick one."""

    def __post_init__(self) -> None:
        if self.model not in ("tiny-qwen", "tiny-ministral"):
            raise HallbenchError(f"the demo runs on tiny-qwen or tiny-ministral, got '{self.model}' (use hallbench train/eval for others)")

    @property
    def profile(self) -> DemoProfile:
        if self.profile_override is not None:
            return self.profile_override
        return QUICK if self.quick else DEFAULT

    @property
    def study(self) -> Path:
        return self.out / "study"

    @property
    def fine_tune_seeds(self) -> list[int]:
        return list(self.seeds) or [self.seed]


@dataclass
class StageTime:
    name: str
    seconds: float
    detail: str = ""


@dataclass
class DemoResult:
    out: Path
    report_index: Path
    table2_markdown: str
    table2: Any
    """The report's Table 2 (``hallbench.report.tables.Table``)."""
    stages: list[StageTime] = field(default_factory=list)
    variation: list[str] = field(default_factory=list)
    """What the table's differences can and cannot mean (:func:`variation_note`)."""


def _world(cfg: DemoConfig) -> Path:
    """The shapes world and its POPE splits; reused when the folder already holds the same world."""
    from hallbench.data.pope_build import PopeBuildConfig, build_pope
    from hallbench.data.shapes import config_from_overrides, generate_shapes

    world_cfg = config_from_overrides(**{**cfg.profile.world, "seed": cfg.seed})
    folder = cfg.out / "shapes"
    world_file = folder / "world.json"
    wanted = json.loads(json.dumps(asdict(world_cfg)))
    if not (world_file.is_file() and json.loads(world_file.read_text(encoding="utf-8")).get("config") == wanted):
        generate_shapes(world_cfg, folder)
        for derived in folder.glob("pretrain_*.json"):  # subsets of the old train.json (see _pretrain_data)
            derived.unlink()
    # The splits are reused only when built from this very world and with these settings: a world
    # regenerated in place (another profile) keeps its image names, so stale splits would ask about
    # objects of the old images.
    pope, instances = folder / "pope", folder / "annotations" / "instances_val.json"
    pope_cfg = PopeBuildConfig(n_images=cfg.profile.pope_images, per_image=3, seed=cfg.seed)
    built = pope / "pope_build.json"
    previous = json.loads(built.read_text(encoding="utf-8")) if built.is_file() else {}
    if previous.get("input", {}).get("sha256") != sha256_file(instances) or previous.get("config", {}).get("n_images") != pope_cfg.n_images:
        build_pope(instances, pope, pope_cfg, images_dir=folder / "images")
    return folder


def _common(cfg: DemoConfig, world: Path) -> dict[str, Any]:
    return {
        "data": world / "train.json",
        "images": world / "images",
        "precision": "fp32",
        "seed": cfg.seed,
        "tiny_seed": cfg.seed,
        "tiny_size": cfg.profile.tiny_size,
        "cache_data": True,
    }


def _pretrain(cfg: DemoConfig, world: Path) -> Any:
    """The tiny model learns to see the shapes world: the demo's stand-in for a pretrained VLM."""
    from hallbench.models.registry import MODEL_REGISTRY
    from hallbench.train.config import TrainConfig
    from hallbench.train.run import run_train

    profile = cfg.profile
    folder = cfg.out / "pretrained" / f"{MODEL_REGISTRY[cfg.model].display_name}-shapes"
    common = {**_common(cfg, world), "data": _pretrain_data(cfg, world)}
    # Step checkpoints and resume: an interrupted demo continues its pretraining (the longest stage).
    training_args = {"save_steps": profile.pretrain_save_steps, **profile.pretrain_args}
    pretrain = TrainConfig(
        model=cfg.model, variant="base", output_dir=folder, training_args=training_args, resume=True, **profile.pretrain, **common
    )
    return run_train(pretrain, progress=True)


def _pretrain_data(cfg: DemoConfig, world: Path) -> Path:
    """The pretraining records: train.json, or its subset of ``pretrain_kinds`` (written once per world;
    ``_world`` deletes it when it regenerates the world)."""
    kinds = cfg.profile.pretrain_kinds
    if not kinds:
        return world / "train.json"
    path = world / f"pretrain_{'_'.join(kinds)}.json"
    if not path.is_file():
        records = json.loads((world / "train.json").read_text(encoding="utf-8"))
        write_json_atomic(path, [r for r in records if str(r["id"]).split("-")[1] in kinds])
    return path


def _train(cfg: DemoConfig, world: Path, pretrained: Path, on_result: Callable[[Any], None]) -> list[Any]:
    from hallbench.train.config import TrainConfig
    from hallbench.train.presets import ABLATION_INJECTION, ABLATION_LOSS, TABLE2
    from hallbench.train.run import run_matrix

    profile = cfg.profile
    variants = list(TABLE2) + (list(ABLATION_INJECTION + ABLATION_LOSS) if cfg.full else [])
    base = TrainConfig(
        model=str(pretrained),
        variant=variants[0],
        output_root=cfg.study / "runs",
        training_args=profile.training_args,
        **profile.train,
        **_common(cfg, world),
    )
    return run_matrix(base, [str(pretrained)], variants, seeds=cfg.fine_tune_seeds, progress=True, on_result=on_result)


@contextmanager
def _judge(cfg: DemoConfig) -> Iterator[tuple[str, str]]:
    if cfg.judge_base_url:
        yield cfg.judge_base_url, cfg.judge_model
        return
    from hallbench.eval.judge_server import start_judge_server

    with start_judge_server() as server:
        yield server.base_url, "local"


def _evaluations(cfg: DemoConfig, world: Path, run: Path, judge: tuple[str, str]) -> list[Any]:
    """The EvalConfigs of one trained run: POPE, CHAIR x 3 decodings, VQA."""
    from hallbench.eval.engine import DecodingConfig
    from hallbench.eval.run import EvalConfig
    from hallbench.eval.vqa import VqaOptions

    profile = cfg.profile
    out = cfg.study / "eval" / run.name
    batch = profile.eval_batch_size
    configs = [
        EvalConfig(
            bench="pope",
            out=out / "pope",
            data=world / "pope",
            model=str(run),
            device="cpu",
            decoding=DecodingConfig(max_new_tokens=4, batch_size=batch),
        )
    ]
    for decoding in DECODINGS:
        configs.append(
            EvalConfig(
                bench="chair",
                out=out / f"chair-{decoding}",
                data=world,
                model=str(run),
                device="cpu",
                max_samples=profile.chair_images,
                decoding=DecodingConfig(decoding=decoding, max_new_tokens=profile.caption_tokens, batch_size=batch, seed=cfg.seed),
            )
        )
    configs.append(
        EvalConfig(
            bench="vqa",
            out=out / "vqa",
            data=world / "eval_vqa.json",
            images=world / "images",
            model=str(run),
            device="cpu",
            max_samples=profile.vqa_questions,
            options=VqaOptions(judge_base_url=judge[0], judge_model=judge[1]),
            decoding=DecodingConfig(max_new_tokens=profile.caption_tokens, batch_size=batch),
        )
    )
    return configs


def run_demo(cfg: DemoConfig, *, say: Callable[[str], None] = print) -> DemoResult:
    """Run (or resume) the whole demo in ``cfg.out``; ``say`` receives one line per stage event."""
    try:
        with locked_output_folder(cfg.out, "--out"):
            return _run_stages(cfg, say)
    except SettingsChangedError as err:
        # A demo folder from an older hallbench (another default profile) or other options.
        raise HallbenchError(
            f"{err.folder} was made by a demo with other settings ({err.changes}); delete {cfg.out / 'pretrained'} and "
            f"{cfg.study} to redo them with these settings (the world in {cfg.out / 'shapes'} is regenerated by itself), "
            "or choose another --out"
        ) from None


def _run_stages(cfg: DemoConfig, say: Callable[[str], None]) -> DemoResult:
    from hallbench.eval.run import run_eval
    from hallbench.report import run_report

    stages: list[StageTime] = []

    def timed(name: str, detail: str, start: float) -> None:
        stages.append(StageTime(name, time.perf_counter() - start, detail))
        say(f"[bold green]done[/] {name} in {stages[-1].seconds:.1f} s{f' ({detail})' if detail else ''}")

    start = time.perf_counter()
    say(f"[bold]1/5 world[/]: the shapes world and POPE splits in {cfg.out / 'shapes'}")
    world = _world(cfg)
    timed("world", f"{cfg.profile.world.get('n_train')} train / {cfg.profile.world.get('n_val')} val images", start)

    start = time.perf_counter()
    say(f"[bold]2/5 pretrain[/]: {cfg.model} learns to see the shapes world (the stand-in for a pretrained VLM)")
    pretrained = _pretrain(cfg, world)
    last = (pretrained.summary or {}).get("last_log") or {}
    timed("pretrain", f"{pretrained.status}, step {pretrained.summary.get('global_step')}, ce {last.get('ce', float('nan')):.3f}", start)

    start = time.perf_counter()
    variants = "Base, +M, +M+A, Ours" + (" and both ablations" if cfg.full else "")
    seeds = cfg.fine_tune_seeds
    say(f"[bold]3/5 fine-tune[/]: {variants} from {pretrained.path}, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")

    def trained(result: Any) -> None:
        terms = result.loss_terms(digits=3)
        say(f"  {result.status} {result.path.name}" + (f" ({terms})" if terms else ""))

    runs = _train(cfg, world, pretrained.path, trained)
    timed("fine-tune", f"{len(runs)} runs", start)

    start = time.perf_counter()
    say("[bold]4/5 evaluate[/]: POPE, CHAIR (greedy, sample, beam), VQA with the judge and BERTScore")
    with _judge(cfg) as judge:
        for result in runs:
            for eval_cfg in _evaluations(cfg, world, result.path, judge):
                label = eval_cfg.bench + ("" if eval_cfg.bench != "chair" else f" {eval_cfg.decoding.decoding}")
                say(f"  {result.path.name}: {label}")
                run_eval(eval_cfg, progress=True)
    timed("evaluate", f"{len(runs) * 5} evaluations", start)

    start = time.perf_counter()
    say("[bold]5/5 report[/]")
    report = run_report(cfg.study, cfg.out / "report", seed=cfg.seed)
    timed("report", f"{len(report.files)} files", start)
    table2 = (cfg.out / "report" / "table2.md").read_text(encoding="utf-8")
    write_stage_times(cfg.out / "demo_times.json", stages)
    return DemoResult(cfg.out, report.index, table2, report.tables["table2"], stages, variation_note(report.frame, seeds))


NOTE_METRICS = (("pope", "random", "accuracy", "POPE random Acc"), ("pope", "adversarial", "accuracy", "POPE adversarial Acc"),
                ("chair", "all", "chair_s", "CHAIRs"))  # fmt: skip


def variation_note(frame: Any, seeds: list[int]) -> list[str]:
    """Lines for the end of the demo: with one seed, that the table cannot tell the variants apart from
    seed noise; with several, Base and Ours as mean ± standard deviation and Ours - Base seed by seed."""
    if len(seeds) < 2:
        return [
            f"One fine-tuning seed ({seeds[0]}): a difference between two rows means something only if it exceeds the spread "
            "across seeds, which one seed cannot show. `hallbench demo --seeds 0,1,2` measures it (it reuses this seed's runs); "
            "the numbers also move with the CPU and the installed versions (README)."
        ]
    lines = [f"Across fine-tuning seeds {', '.join(map(str, seeds))} (mean ± standard deviation; Ours - Base seed by seed):"]
    greedy = frame[(frame.decoding == "greedy") & (frame.table == "table2") & (frame.scoring == "")]
    for bench, split, metric, name in NOTE_METRICS:
        rows = greedy[(greedy.bench == bench) & (greedy.split == split) & (greedy.metric == metric)]
        base, ours = rows[(rows.variant == "base") & ~rows.per_seed], rows[(rows.variant == "ours") & ~rows.per_seed]
        if base.empty or ours.empty:
            continue
        per_seed = {v: dict(zip(rows[(rows.variant == v) & rows.per_seed].seed, rows[(rows.variant == v) & rows.per_seed].value, strict=True))
                    for v in ("base", "ours")}  # fmt: skip
        deltas = [per_seed["ours"][s] - per_seed["base"][s] for s in seeds if s in per_seed["ours"] and s in per_seed["base"]]
        base_row, ours_row = base.iloc[0], ours.iloc[0]
        t_p = (
            ""
            if ours_row.seed_t_p is None or ours_row.seed_t_p != ours_row.seed_t_p
            else f", t-test over seeds p = {ours_row.seed_t_p:.2f}"
        )
        lines.append(
            f"  {name}: Base {base_row.value:.1f} ± {base_row.seed_sd:.1f}, Ours {ours_row.value:.1f} ± {ours_row.seed_sd:.1f}; "
            f"Ours - Base {', '.join(f'{d:+.1f}' for d in deltas)}{t_p}"
        )
    return lines


def write_stage_times(path: Path, stages: list[StageTime]) -> None:
    """This invocation's stage times; earlier invocations (an interrupted demo, then its resumption) are kept under ``earlier``."""
    earlier: list[dict] = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
            earlier = [*previous.get("earlier", []), {k: v for k, v in previous.items() if k != "earlier"}]
        except (ValueError, AttributeError):
            earlier = []  # a damaged file: its times are lost, not the demo
    record = {"stages": [s.__dict__ for s in stages], "total_s": sum(s.seconds for s in stages), **provenance()}
    write_json_atomic(path, {**record, "earlier": earlier} if earlier else record)
