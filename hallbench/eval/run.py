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
from typing import Any, Protocol

from hallbench.errors import HallbenchError, SettingsChangedError
from hallbench.eval.benchmark import BENCHMARKS, get_spec
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


@dataclass(frozen=True)
class EvalConfig:
    """Everything that defines an evaluation run. Identity fields must match to resume into a folder."""

    bench: str
    """Benchmark name: one of ``BENCHMARKS``."""
    out: Path
    """Output folder (created; resumed if it holds a run with the same configuration)."""
    data: Path | None = None
    """POPE: a folder of split files or one question file. CHAIR: a shapes-world or COCO-style folder."""
    images: Path | None = None
    """Image folder; default: found from ``data`` when it is a hallbench-built folder."""
    model: str = "tiny-qwen"
    """hf backend: registry name, model folder, cached hub id, or training run folder."""
    split: str = "all"
    """The benchmark's split to evaluate (POPE: random, popular, adversarial), or ``all`` (every split)."""
    parser: str = "hallbench"
    """Yes/no answer parser (POPE and the other yes/no benchmarks): ``hallbench`` (explicit unknown class) or ``official`` (the benchmark's own script's rule)."""
    prompt: str | None = None
    """CHAIR captioning prompt (default: "Please describe this image in detail.")."""
    drop_incomplete: bool = False
    """CHAIR: drop a trailing sentence cut off by max_new_tokens before scoring."""
    instances: Path | None = None
    """CHAIR: COCO instances file (default: from ``data``)."""
    captions: Path | None = None
    """CHAIR: COCO captions file whose objects also count as ground truth (default: from ``data``)."""
    synonyms: Path | None = None
    """CHAIR: synonym table (default: the shapes world's, or the packaged COCO table)."""
    marker: str = "### The final answer is:"
    """VQA: the text that precedes the final answer."""
    require_marker: bool = False
    """VQA: count an answer without the marker as wrong (default: use the whole answer and flag it)."""
    judge_base_url: str | None = None
    """VQA: OpenAI-compatible endpoint of the LLM judge for CLOSED questions (e.g. https://api.deepseek.com)."""
    judge_model: str = "deepseek-chat"
    """VQA: the judge's model name."""
    judge_key_env: str | None = None
    """VQA: environment variable with the judge's API key (default: DEEPSEEK_API_KEY, then OPENAI_API_KEY)."""
    judge_concurrency: int = 8
    """VQA: judge requests in flight at once."""
    judge_timeout: float = 60.0
    """VQA: seconds one judge request may take before it is retried."""
    judge_attempts: int = 6
    """VQA: requests per judgement at most (the first included; backoff between them)."""
    judge_max_tokens: int = 16
    """VQA: the judge's completion budget (raise it, e.g. to 4096, for a reasoning model that thinks in its reply)."""
    judge_max_error_rate: float = 0.0
    """VQA: fraction of CLOSED judgements that may fail (after every attempt) before the run exits non-zero."""
    bertscore_model: str | None = None
    """VQA: BERTScore model (default: roberta-large when available offline, else the bundled all-MiniLM-L6-v2)."""
    bertscore_layers: int | None = None
    """VQA: BERTScore layer (default: 17 for roberta-large, 6 for MiniLM)."""
    bertscore_baseline: Path | None = None
    """VQA: baseline file for BERTScore rescaling (needed to rescale a local model)."""
    max_samples: int | None = None
    """Evaluate only the first N samples (in the benchmark's order)."""
    strict: bool = False
    """Stop at the first sample that cannot be evaluated instead of recording it as an error."""
    backend: str = "hf"
    """``hf`` (transformers) or ``openai`` (an OpenAI-compatible endpoint)."""
    base_url: str | None = None
    """openai backend: endpoint URL, e.g. http://127.0.0.1:8000/v1 for a vLLM server."""
    api_model: str | None = None
    """openai backend: the model name the endpoint serves."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai backend: the environment variable that holds the key (the key itself is never a flag)."""
    device: str | None = None
    """hf backend: cpu, cuda, cuda:1...; default: the rank's GPU if any, else CPU."""
    dtype: str = "auto"
    """hf backend: auto, float32, bfloat16 or float16."""
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    """How answers are generated (``max_new_tokens`` None = the benchmark's ``default_max_new_tokens``)."""
    system_prompt: str | None = None
    """A system turn before every question (default: none, so the chat template's own default applies)."""
    prompt_suffix: str | None = None
    """Text appended to every prompt after a newline, e.g. "Answer the question using a single word or phrase." (lmms-eval's)."""
    min_pixels: int | None = None
    """hf backend: smallest image area after resizing (Qwen3-VL); default: the checkpoint's."""
    max_pixels: int | None = None
    """hf backend: largest image area (Pixtral: longest edge = its square root); default: the checkpoint's."""
    image_ids: Path | None = None
    """CHAIR: a JSON list (or one id per line) of the image ids to caption, e.g. a published 500-image subset."""
    labels: Path | None = None
    """POPE: another label set for the same questions (RePOPE), a folder of split files or one file; questions it lacks are removed."""

    # Fields that may change between a run and its resumption without changing any answer.
    # Scoring settings (judge, BERTScore) may change too: a re-run re-scores the same answers.
    NON_IDENTITY = (
        "out", "strict", "device", "max_samples", "judge_base_url", "judge_model", "judge_key_env", "judge_concurrency",
        "judge_timeout", "judge_attempts", "judge_max_tokens", "judge_max_error_rate", "bertscore_model", "bertscore_layers", "bertscore_baseline",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.bench not in BENCHMARKS:
            raise HallbenchError(f"unknown --bench '{self.bench}'; choose one of {', '.join(BENCHMARKS)}")
        spec = get_spec(self.bench)
        if self.backend not in ("hf", "openai"):
            raise HallbenchError(f"unknown --backend '{self.backend}'; choose hf or openai")
        if self.backend == "openai" and not (self.base_url and self.api_model):
            raise HallbenchError("--backend openai needs --base-url and --api-model")
        if self.parser not in ("hallbench", "official"):
            raise HallbenchError(f"unknown --parser '{self.parser}'; choose hallbench or official")
        if self.max_samples is not None and self.max_samples < 1:
            raise HallbenchError("--max-samples must be >= 1")
        if self.backend == "openai" and (self.min_pixels is not None or self.max_pixels is not None):
            raise HallbenchError(
                "--min-pixels/--max-pixels apply to the hf backend; an OpenAI-compatible server resizes images itself "
                '(vLLM: --mm-processor-kwargs \'{"min_pixels": ..., "max_pixels": ...}\')'
            )
        from hallbench.provenance import check_env_name, check_url_has_no_credentials

        check_env_name(self.api_key_env, "--api-key-env")
        check_env_name(self.judge_key_env, "--judge-key-env")
        check_url_has_no_credentials(self.base_url, "--base-url")
        check_url_has_no_credentials(self.judge_base_url, "--judge-base-url")
        if self.device is not None:
            import torch

            try:
                torch.device(self.device)
            except RuntimeError:
                raise HallbenchError(f"--device {self.device!r} is not a device: use cpu, cuda, cuda:1, ...") from None
        if not 0.0 <= self.judge_max_error_rate <= 1.0:
            raise HallbenchError(f"--judge-max-error-rate must be a fraction from 0 to 1, got {self.judge_max_error_rate}")
        if self.image_ids is not None and self.bench != "chair":
            raise HallbenchError("--image-ids applies to --bench chair only")
        if self.decoding.max_new_tokens is None:
            object.__setattr__(self, "decoding", replace(self.decoding, max_new_tokens=spec.default_max_new_tokens))

    def identity(self) -> dict[str, Any]:
        """What the answers depend on: every field but ``NON_IDENTITY`` and the benchmark's ``scoring_options``."""
        skip = {*self.NON_IDENTITY, *scoring_options(self.bench)}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        values["decoding"] = asdict(self.decoding)
        return json.loads(json.dumps(values, default=str))

    def scoring(self) -> dict[str, Any]:
        """The benchmark's scoring options (``scoring_options``) as JSON values."""
        return json.loads(json.dumps({name: getattr(self, name) for name in scoring_options(self.bench)}, default=str))


def scoring_options(bench: str) -> tuple[str, ...]:
    """EvalConfig fields that only change how answers are scored (POPE: parser, labels): changing them re-scores."""
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
    # Folders of older versions recorded scoring options (the parser) in the identity.
    previous = {k: v for k, v in config.get("eval", {}).items() if k not in scoring_options(identity["bench"])}
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
    defaults = {f.name: f.default for f in fields(EvalConfig)}
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
