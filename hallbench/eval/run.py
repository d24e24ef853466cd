"""``hallbench eval``: one benchmark, one model, one output folder.

The output folder is self-describing:

    OUT/
      config.json        resolved EvalConfig, backend description, package versions, git commit
      predictions.jsonl  one record per sample: prompt, prediction, the benchmark's per-sample fields
      summary.json       the benchmark's metrics (written last: its presence means the run finished)
      scores/<options>/  the same answers scored with other scoring options (see ``_rescore``)

Re-running the same command resumes: samples already in ``predictions.jsonl`` are skipped. Re-using
a folder with a different configuration (another model, decoding, split...) is an error, so that
one folder never mixes answers from two settings; changing only a benchmark's ``scoring_options``
re-scores the answers without generating. The folder is locked while a process writes into it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, get_origin, get_type_hints

from hallbench.errors import HallbenchError, SettingsChangedError
from hallbench.eval.benchmark import BENCHMARKS, get_spec, option_flags
from hallbench.eval.engine import DecodingConfig, Sample, generate_predictions, read_predictions, write_records
from hallbench.provenance import identity_changes, provenance
from hallbench.runfolder import SCORES_FOLDER, folder_content, locked_output_folder, make_output_folder, write_json_atomic


class Benchmark(Protocol):
    """What a benchmark's class provides (``BenchmarkSpec.benchmark``; see ``pope.py``, ``chair.py``)."""

    def samples(self) -> list[Sample]: ...

    def score(self, sample: Sample, answer: str) -> dict[str, Any]: ...

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]: ...

    def describe(self) -> dict[str, Any]: ...

    # Optional: ``prepare(samples)`` runs before any generation (checks that need no answers, such as
    # probing the VQA judge); ``finalize(records)`` scores with every answer at hand.


Backend = Literal["hf", "openai"]
DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class EvalConfig:
    """Everything that defines an evaluation run. Identity fields must match to resume into a folder.

    The fields here apply to every benchmark; a benchmark's own settings are ``options``, an instance
    of its ``BenchmarkSpec.options`` dataclass (``PopeOptions``, ``ChairOptions``...).
    :meth:`from_flags` builds one from flat keyword arguments, as the CLI has them.
    """

    bench: str
    """The benchmark to evaluate (``BENCHMARKS``)."""
    out: Path
    """Output folder: config.json, predictions.jsonl, summary.json (created; re-running the same command resumes)."""
    data: Path | None = None
    """The benchmark's data: POPE a folder of split files or one question file, CHAIR a shapes-world or COCO-style folder, VQA a question file, MME a folder of subsets."""
    images: Path | None = None
    """Image folder (default: found from ``data`` when it is a hallbench-built folder)."""
    model: str = "tiny-qwen"
    """hf backend: registry name, model folder, cached hub id, or training run folder."""
    split: str = "all"
    """The benchmark's split to evaluate (POPE: random, popular, adversarial; MME: a subset), or ``all`` (every split)."""
    max_samples: int | None = None
    """Evaluate only the first N samples (in the benchmark's order); default: every sample."""
    strict: bool = False
    """Stop at the first sample that cannot be evaluated instead of recording it as an error."""
    backend: Backend = "hf"
    """``hf`` (transformers) or ``openai`` (an OpenAI-compatible endpoint such as vLLM)."""
    base_url: str | None = None
    """openai backend: endpoint URL, e.g. http://127.0.0.1:8000/v1 for a vLLM server."""
    api_model: str | None = None
    """openai backend: the model name the endpoint serves."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai backend: the environment variable that holds the key (the key itself is never a flag)."""
    device: str | None = None
    """hf backend: cpu, cuda, cuda:1...; default: the rank's GPU if any, else CPU."""
    dtype: DType = "auto"
    """hf backend: the weights' dtype; auto: the checkpoint's (float32 on CPU)."""
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    """How answers are generated (``max_new_tokens`` None = the benchmark's ``default_max_new_tokens``)."""
    system_prompt: str | None = None
    """A system turn before every question (default: none, so the chat template's own default applies)."""
    prompt_suffix: str | None = None
    """Text appended to every prompt after a newline, e.g. "Answer the question using a single word or phrase." (lmms-eval's); default: none."""
    min_pixels: int | None = None
    """hf backend: smallest image area after resizing (Qwen3-VL); default: the checkpoint's (65536 for the published ones)."""
    max_pixels: int | None = None
    """hf backend: largest image area (Pixtral: longest edge = its square root); default: the checkpoint's."""
    options: Any = None
    """The benchmark's own options (its ``BenchmarkSpec.options`` dataclass); None: that class's defaults."""

    # Fields that may change between a run and its resumption without changing any answer; so may
    # the benchmark's ``free_options`` (judge, BERTScore: a re-run re-scores the same answers).
    NON_IDENTITY = ("out", "strict", "device", "max_samples")

    def __post_init__(self) -> None:
        if self.bench not in BENCHMARKS:
            raise HallbenchError(f"unknown --bench '{self.bench}'; choose one of {', '.join(BENCHMARKS)}")
        spec = get_spec(self.bench)
        if self.options is None:
            object.__setattr__(self, "options", spec.options())
        elif not isinstance(self.options, spec.options):
            raise HallbenchError(f"--bench {self.bench} takes {spec.options.__name__} options, got {type(self.options).__name__}")
        check_choices(self)
        check_choices(self.options)
        if self.backend == "openai" and not (self.base_url and self.api_model):
            raise HallbenchError("--backend openai needs --base-url and --api-model")
        if self.max_samples is not None and self.max_samples < 1:
            raise HallbenchError("--max-samples must be >= 1")
        if self.backend == "openai" and (self.min_pixels is not None or self.max_pixels is not None):
            raise HallbenchError(
                "--min-pixels/--max-pixels apply to the hf backend; an OpenAI-compatible server resizes images itself "
                '(vLLM: --mm-processor-kwargs \'{"min_pixels": ..., "max_pixels": ...}\')'
            )
        from hallbench.provenance import check_env_name, check_url_has_no_credentials

        check_env_name(self.api_key_env, "--api-key-env")
        check_url_has_no_credentials(self.base_url, "--base-url")
        if self.device is not None:
            import torch

            try:
                torch.device(self.device)
            except RuntimeError:
                raise HallbenchError(f"--device {self.device!r} is not a device: use cpu, cuda, cuda:1, ...") from None
        if self.decoding.max_new_tokens is None:
            object.__setattr__(self, "decoding", replace(self.decoding, max_new_tokens=spec.default_max_new_tokens))

    @classmethod
    def from_flags(cls, **flags: Any) -> EvalConfig:
        """An EvalConfig from flat keyword arguments: its own fields, ``DecodingConfig`` fields, and the
        options of the benchmark ``bench`` by name (``parser="official"``), as ``hallbench eval`` has them.

        An option of another benchmark is an error unless it has its default (the CLI passes every
        flag), so that ``--labels`` given to ``--bench chair`` is refused instead of ignored.
        """
        bench = flags.get("bench")
        if bench not in BENCHMARKS:
            raise HallbenchError(f"unknown --bench '{bench}'; choose one of {', '.join(BENCHMARKS)}")
        owners = flag_fields(bench)
        others = option_flags()
        values: dict[str, Any] = {}
        decoding: dict[str, Any] = {}
        options: dict[str, Any] = {}
        # ``decoding`` is a DecodingConfig (EvalConfig's field) or the strategy's name (the CLI's flag).
        base = flags.pop("decoding") if isinstance(flags.get("decoding"), DecodingConfig) else DecodingConfig()
        for name, value in flags.items():
            owner = owners.get(name)
            if owner is cls:
                values[name] = value
            elif owner is DecodingConfig:
                decoding[name] = value
            elif owner is not None:
                options[name] = value
            elif name in others:
                declared = others[name]
                if any(value != option.default for _, option in declared):
                    users = " and ".join(s.name for s, _ in declared)
                    raise HallbenchError(f"--{name.replace('_', '-')} applies to --bench {users}, not --bench {bench}")
            else:
                raise HallbenchError(f"hallbench eval has no option {name!r}")
        return cls(**values, decoding=replace(base, **decoding), options=get_spec(bench).options(**options))

    def identity(self) -> dict[str, Any]:
        """What the answers depend on, flat (one key per flag): every field but ``NON_IDENTITY``, and
        the benchmark's options but its ``scoring_options`` and ``free_options``."""
        spec = get_spec(self.bench)
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in (*self.NON_IDENTITY, "options")}
        skip = {*spec.scoring_options, *spec.free_options}
        values.update({f.name: getattr(self.options, f.name) for f in fields(self.options) if f.name not in skip})
        values["decoding"] = asdict(self.decoding)
        return json.loads(json.dumps(values, default=str))

    def scoring(self) -> dict[str, Any]:
        """The benchmark's scoring options (``scoring_options``) as JSON values."""
        return json.loads(json.dumps({name: getattr(self.options, name) for name in scoring_options(self.bench)}, default=str))


def flag_fields(bench: str) -> dict[str, type]:
    """Every setting of ``hallbench eval --bench <bench>`` by flag name -> the dataclass that declares
    it: ``EvalConfig`` (common to every benchmark), ``DecodingConfig`` (``decoding`` is its strategy),
    or the benchmark's options class."""
    options = get_spec(bench).options
    owners: dict[str, type] = {f.name: EvalConfig for f in fields(EvalConfig) if f.name not in ("options", "decoding")}
    owners |= {f.name: DecodingConfig for f in fields(DecodingConfig)}
    owners |= {f.name: options for f in fields(options)}
    return owners


def check_choices(config: Any) -> None:
    """A clear error for a field of a configuration dataclass whose value is not one of its ``Literal`` choices
    (the CLI checks them itself; this is for Python callers and recipes)."""
    for name, kind in get_type_hints(type(config)).items():
        if get_origin(kind) is Literal and getattr(config, name) not in get_args(kind):
            choices = ", ".join(map(str, get_args(kind)))
            raise HallbenchError(f"unknown --{name.replace('_', '-')} {getattr(config, name)!r}; choose one of {choices}")


def scoring_options(bench: str) -> tuple[str, ...]:
    """Options of ``bench`` that only change how answers are scored (POPE: parser, labels): changing them re-scores."""
    return get_spec(bench).scoring_options


def load_benchmark(cfg: EvalConfig) -> Benchmark:
    return get_spec(cfg.bench).benchmark(cfg)


def make_backend(cfg: EvalConfig) -> Any:
    from hallbench.eval.engine import HFBackend, OpenAIBackend

    if cfg.backend == "openai":
        assert cfg.base_url and cfg.api_model
        return OpenAIBackend(cfg.base_url, cfg.api_model, cfg.decoding, key_env=cfg.api_key_env, system_prompt=cfg.system_prompt)
    device = cfg.device
    if device is None:
        import torch

        from hallbench.eval.engine import DistInfo

        device = f"cuda:{DistInfo.from_env().local_rank}" if torch.cuda.is_available() else "cpu"
    return HFBackend(
        cfg.model, cfg.decoding, device=device, dtype=cfg.dtype, system_prompt=cfg.system_prompt,
        min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
    )  # fmt: skip


def _check_resume(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The folder's ``config.json`` (``{}`` for a new folder); a run with another identity is an error."""
    path = out / "config.json"
    if not path.is_file():
        # Rank 0 only: the other ranks' shards may already exist when it looks.
        if folder_content(out) and int(os.environ.get("RANK", "0")) == 0:
            raise HallbenchError(f"--out {out} is not empty and holds no hallbench evaluation (no config.json); choose another --out")
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise HallbenchError(f"{path} is corrupt; move the folder away or choose another --out") from None
    # Folders of older versions recorded scoring options (the parser) in the identity, and every
    # benchmark's options in every run (a POPE run's CHAIR prompt): neither changed an answer.
    foreign = set(option_flags()) - set(identity)
    previous = {k: v for k, v in config.get("eval", {}).items() if k not in scoring_options(identity["bench"]) and k not in foreign}
    details = identity_changes(previous, identity)
    if details:
        raise SettingsChangedError(out, details, "choose another --out")
    return config


def evaluation_samples(cfg: EvalConfig, bench: Benchmark) -> list[Sample]:
    """The samples a run of ``cfg`` asks, with their final prompts (``--max-samples``, ``--prompt-suffix`` applied)."""
    samples = bench.samples()
    if cfg.max_samples is not None:
        samples = samples[: cfg.max_samples]
    if cfg.prompt_suffix:
        samples = [replace(s, prompt=f"{s.prompt}\n{cfg.prompt_suffix}") for s in samples]
    if not samples:
        raise HallbenchError(f"the {cfg.bench} data has no samples to evaluate")
    return samples


def run_eval(cfg: EvalConfig, *, progress: bool = True, backend: Any = None, on_chunk: Any = None) -> dict[str, Any]:
    """Run one evaluation (resuming if possible); return the summary that is also written to ``summary.json``.

    The output folder is locked for the run (see ``hallbench.runfolder.FolderLock``): a second
    evaluation into the same ``--out`` stops with the holder's pid and command.
    """
    bench = load_benchmark(cfg)
    samples = evaluation_samples(cfg, bench)
    with locked_output_folder(cfg.out, "--out"):
        return _run_locked(cfg, bench, samples, progress=progress, backend=backend, on_chunk=on_chunk)


def _run_locked(cfg: EvalConfig, bench: Benchmark, samples: list[Sample], *, progress: bool, backend: Any, on_chunk: Any) -> dict[str, Any]:
    from hallbench.eval.engine import DistInfo

    identity = cfg.identity()
    previous = _check_resume(cfg.out, identity)
    dist = DistInfo.from_env()
    scoring, main_scoring = cfg.scoring(), _main_scoring(cfg, previous)
    if previous and scoring != main_scoring:
        # Only the scoring changed: the answers on disk are re-scored; no model is loaded.
        return _rescore(cfg, bench, samples, previous, scoring, main_scoring) if dist.rank == 0 else {}
    prepare = getattr(bench, "prepare", None)
    if prepare is not None and dist.rank == 0:
        prepare(samples)  # before the (slow) model load and generation: a broken judge costs one request
    backend = backend if backend is not None else make_backend(cfg)
    if dist.rank == 0:
        config = {
            "eval": identity, "scoring": scoring, "backend": backend.describe(), "data": bench.describe(),
            "n_samples": len(samples), **provenance(),
        }  # fmt: skip
        if previous.get("created"):
            # A resumed run keeps the date it was started; the report's provenance then does not change.
            config["created"] = previous["created"]
        write_json_atomic(cfg.out / "config.json", config)
    records = generate_predictions(
        samples, backend, cfg.decoding, cfg.out, bench.score, strict=cfg.strict, progress=progress, on_chunk=on_chunk
    )
    finalize = getattr(bench, "finalize", None)
    if finalize is not None and dist.rank == 0:
        # Scoring that needs every answer (LLM judge, BERTScore): the records gain their scores and
        # predictions.jsonl is replaced atomically, so a crash here leaves the generations intact.
        records = finalize(records)
        # Records of samples outside this run's bounds (a rerun with a smaller --max-samples) are
        # finished work: kept after this run's, never deleted.
        covered = {r["id"] for r in records}
        kept = [r for r in read_predictions(cfg.out / "predictions.jsonl") if r.get("id") not in covered]
        write_records(cfg.out / "predictions.jsonl", records + kept)
    summary = _summary(cfg, bench, samples, records, backend.describe().get("display_name"))
    if dist.rank == 0:
        write_json_atomic(cfg.out / "summary.json", summary)
    return summary


def _summary(cfg: EvalConfig, bench: Benchmark, samples: list[Sample], records: list[dict], model: str | None) -> dict[str, Any]:
    return {
        "bench": cfg.bench,
        "bench_version": get_spec(cfg.bench).version,
        "model": model,
        "decoding": cfg.decoding.decoding,
        "n_samples": len(samples),
        "max_samples": cfg.max_samples,
        "scoring": cfg.scoring(),
        "n_errors": sum(1 for r in records if r.get("error")),
        "errors": [{"id": r["id"], "error": r["error"]} for r in records if r.get("error")][:100],
        "metrics_info": get_spec(cfg.bench).metrics_info(),
        **bench.aggregate(records),
    }


def _main_scoring(cfg: EvalConfig, previous: dict[str, Any]) -> dict[str, Any]:
    """The scoring of the folder's own summary.json: recorded in config.json (older folders: in its identity)."""
    if not previous:
        return cfg.scoring()
    if "scoring" in previous:
        return previous["scoring"]
    defaults = {f.name: f.default for f in fields(get_spec(cfg.bench).options)}
    recorded = previous.get("eval", {})
    return json.loads(json.dumps({k: recorded.get(k, defaults[k]) for k in scoring_options(cfg.bench)}, default=str))


def scores_folder(out: Path, scoring: dict[str, Any], main_scoring: dict[str, Any]) -> Path:
    """``OUT/scores/parser-official``, ``OUT/scores/labels-repope+parser-official``: named by what differs."""
    import re

    parts = []
    for key in sorted(scoring):
        if scoring[key] != main_scoring.get(key):
            value = scoring[key]
            text = Path(value).name if isinstance(value, str) and ("/" in value or Path(value).suffix) else str(value)
            parts.append(f"{key}-{re.sub(r'[^A-Za-z0-9._-]+', '_', text)}")
    return Path(out) / SCORES_FOLDER / "+".join(parts)


def _rescore(
    cfg: EvalConfig, bench: Benchmark, samples: list[Sample], previous: dict, scoring: dict[str, Any], main_scoring: dict[str, Any]
) -> dict[str, Any]:
    """Score the answers of ``cfg.out`` with other scoring options into ``scores_folder``; the run itself is untouched."""
    records = {r["id"]: r for r in read_predictions(cfg.out / "predictions.jsonl")}
    missing = [s.id for s in samples if s.id not in records]
    if missing:
        raise HallbenchError(
            f"--out {cfg.out}: {len(missing)} of {len(samples)} samples have no answer yet (first: {missing[0]}); re-scoring "
            f"never generates: finish the run with its own scoring options ({main_scoring}) first"
        )
    rescored = []
    for sample in samples:
        record = {**records[sample.id], **sample.meta}  # the labels of the label set being scored against
        if not record.get("error"):
            try:
                record.update(bench.score(sample, record["prediction"]))
            except HallbenchError as err:
                record["error"] = str(err)
        rescored.append(record)
    folder = scores_folder(cfg.out, scoring, main_scoring)
    make_output_folder(folder, "--out")
    summary = _summary(cfg, bench, samples, rescored, previous.get("backend", {}).get("display_name"))
    summary["rescored_from"] = str(cfg.out)
    summary["scored_into"] = str(folder)
    write_records(folder / "predictions.jsonl", rescored)
    write_json_atomic(
        folder / "scoring.json",
        {"scoring": scoring, "run_scoring": main_scoring, "run": str(cfg.out), "data": bench.describe(), **provenance()},
    )
    write_json_atomic(folder / "summary.json", summary)
    return summary
