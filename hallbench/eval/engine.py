"""The generation engine: batched, resumable, data-parallel generation into a predictions JSONL.

Invariants:
- Samples are cut into fixed chunks of ``batch_size`` by their position in the benchmark's sample
  list, and chunk ``k`` is always generated with the RNG seeded from ``(seed, k)``. A resumed run
  regenerates only the chunks with missing ids, with the same inputs and the same RNG, so it ends
  with exactly the records an uninterrupted run writes (greedy decoding is also independent of the
  batch composition, which the tests check).
- Each chunk's records are appended with one ``write`` and flushed before the next chunk starts: a
  SIGKILL loses at most the chunk in flight, and at most a torn last line, which the reader drops.
- With ``WORLD_SIZE`` > 1 (``torchrun`` / ``accelerate launch``), rank ``r`` generates chunks
  ``r, r + W, ...`` into ``predictions.rank{r}.jsonl``; rank 0 merges all shards into
  ``predictions.jsonl`` in sample order once every rank is done.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from hallbench.errors import HallbenchError
from hallbench.eval.openai_api import backoff_delay, classify, scrub

Decoding = Literal["greedy", "sample", "beam"]
DECODINGS: tuple[str, ...] = get_args(Decoding)


@dataclass
class Sample:
    """One generation request of a benchmark."""

    id: str
    """Unique within the run (POPE question id, CHAIR image id, VQA id)."""
    images: list[Path]
    """Image files, in the order the prompt refers to them."""
    prompt: str
    """The user turn's text; ``<image>`` placeholders are removed (the chat template places images)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable fields copied into the prediction record (label, split, image id...)."""


@dataclass(frozen=True)
class DecodingConfig:
    """How answers are generated. Resolved values are saved in every run's ``config.json``."""

    decoding: Decoding = "greedy"
    """``greedy``, ``sample`` (temperature / top-p) or ``beam`` (num_beams)."""
    max_new_tokens: int | None = None
    """Longest answer in tokens (default: the benchmark's ``default_max_new_tokens``: short for yes/no
    answers, long enough for captions and reasoning to finish)."""
    temperature: float = 1.0
    """Sampling temperature (``sample`` only)."""
    top_p: float = 1.0
    """Nucleus sampling mass (``sample`` only)."""
    num_beams: int = 3
    """Beams (``beam`` only)."""
    seed: int = 0
    """Seed of the per-chunk RNG; with ``sample`` the same seed gives the same answers."""
    batch_size: int = 8
    """Samples per forward pass (per rank)."""

    def __post_init__(self) -> None:
        if self.decoding not in DECODINGS:
            raise HallbenchError(f"--decoding must be one of {', '.join(DECODINGS)}, got '{self.decoding}'")
        if (self.max_new_tokens is not None and self.max_new_tokens < 1) or self.batch_size < 1:
            raise HallbenchError("--max-new-tokens and --batch-size must be >= 1")
        if self.decoding == "sample" and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise HallbenchError(f"sampling needs --temperature > 0 and 0 < --top-p <= 1, got {self.temperature}, {self.top_p}")
        if self.decoding == "beam" and self.num_beams < 2:
            raise HallbenchError(f"--decoding beam needs --num-beams >= 2, got {self.num_beams}")
        if self.decoding != "sample" and (self.temperature != 1.0 or self.top_p != 1.0):
            raise HallbenchError(f"--temperature/--top-p only apply to --decoding sample (got --decoding {self.decoding})")

    def generate_kwargs(self) -> dict[str, Any]:
        """Arguments for ``model.generate`` (transformers).

        Every sampling setting is given explicitly, so a checkpoint's ``generation_config.json`` never
        changes the decoding: Qwen3-VL's samples by default (temperature 0.7, top_p 0.8, top_k 20),
        which would otherwise turn "greedy" into sampling or narrow the "sample" distribution.
        """
        if self.max_new_tokens is None:
            raise HallbenchError("max_new_tokens is unresolved (EvalConfig fills in the benchmark's default)")
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": 1.0}
        if self.decoding == "greedy":
            kwargs.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
        elif self.decoding == "sample":
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0, num_beams=1)
        else:
            kwargs.update(do_sample=False, num_beams=self.num_beams, temperature=None, top_p=None, top_k=None)
        return kwargs


class Backend(Protocol):
    """Turns a batch of samples with loaded images into answers (same order)."""

    def generate(self, samples: list[Sample], images: list[list[Any]], chunk_seed: int) -> list[str]: ...

    def describe(self) -> dict[str, Any]: ...


def chat_messages(n_images: int, prompt: str, system_prompt: str | None = None) -> list[dict]:
    """The one user turn of a benchmark sample (images first, then the text), after an optional system
    turn: :func:`hallbench.models.families.conversation_messages`, which training uses too."""
    from hallbench.models.families import conversation_messages

    return conversation_messages([("user", prompt)], n_images, system_prompt)


class HFBackend:
    """A transformers model (registry name, folder, cached hub id) generating with the KV cache."""

    def __init__(
        self,
        model: str,
        decoding: DecodingConfig,
        *,
        device: str | None = None,
        dtype: str = "auto",
        loaded: Any = None,
        system_prompt: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ):
        from hallbench.models import load_model

        self.decoding, self.system_prompt = decoding, system_prompt
        self.loaded = loaded if loaded is not None else load_model(model, device=device, dtype=dtype)
        self.image_size = self.loaded.family.set_pixel_budget(self.loaded.processor, min_pixels, max_pixels)

    def describe(self) -> dict[str, Any]:
        resolved = self.loaded.resolved
        return {
            "backend": "hf",
            "model": resolved.spec.name if resolved.spec else str(resolved.path),
            "display_name": resolved.display_name,
            "source": resolved.source,
            "path": str(Path(resolved.path).resolve()) if resolved.path else None,
            "dtype": str(next(self.loaded.model.parameters()).dtype).replace("torch.", ""),
            "image_size": self.image_size,
            **({"training_run": self.loaded.training_run} if self.loaded.training_run else {}),
        }

    def generate(self, samples: list[Sample], images: list[list[Any]], chunk_seed: int) -> list[str]:
        import torch

        processor, model = self.loaded.processor, self.loaded.model
        texts = [
            processor.apply_chat_template(chat_messages(len(imgs), s.prompt, self.system_prompt), add_generation_prompt=True)
            for s, imgs in zip(samples, images, strict=True)
        ]
        processor.tokenizer.padding_side = "left"  # generation appends on the right
        inputs = processor(text=texts, images=images, padding=True, return_tensors="pt").to(model.device)
        torch.manual_seed(chunk_seed)
        with torch.inference_mode():
            output = model.generate(**inputs, **self.decoding.generate_kwargs())
        return processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint (vLLM, SGLang, OpenAI...); images go as base64 data URLs.

    The API key is read from the environment variable named by ``key_env``; it is never stored in
    the config, the predictions or any message. Requests go through :mod:`hallbench.eval.openai_api`
    as the judge's do: a retryable failure (429, 5xx, timeout, connection, a non-JSON 200) is retried
    up to ``ATTEMPTS`` times with the same capped, jittered backoff (a server's ``Retry-After``
    honoured); the last failure, or a non-retryable one (401, 400, ...), stops the run with one
    scrubbed line, and the answers written so far are kept for the resume.
    """

    ATTEMPTS = 6
    TIMEOUT_S = 120.0
    BACKOFF_BASE_S = 1.0
    BACKOFF_MAX_S = 30.0

    def __init__(
        self,
        base_url: str,
        api_model: str,
        decoding: DecodingConfig,
        *,
        key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        system_prompt: str | None = None,
    ):
        from hallbench.eval.openai_api import make_client

        self.system_prompt = system_prompt
        if decoding.decoding == "beam":
            raise HallbenchError("the openai backend does not support --decoding beam (chat endpoints have no beam search)")
        self.base_url, self.api_model, self.decoding, self.key_env = base_url, api_model, decoding, key_env
        key = os.environ.get(key_env)
        if not key:
            raise HallbenchError(f"the openai backend needs an API key in the environment variable {key_env} (it is empty or unset)")
        self._secret = key  # in memory only: never in describe(), a record or a message (scrubbed)
        self.client = make_client(base_url, key, timeout_s=self.TIMEOUT_S)
        self.concurrency = concurrency

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "openai",
            "model": self.api_model,
            "display_name": self.api_model,
            "base_url": self.base_url,
            "key_env": self.key_env,
        }

    @staticmethod
    def _data_url(image: Any) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def request_messages(self, sample: Sample, images: list[Any]) -> list[dict]:
        """The ``messages`` of the chat request for ``sample``: :func:`chat_messages` with each image as a PNG data URL."""
        messages = chat_messages(len(images), sample.prompt, self.system_prompt)
        parts = iter(images)
        for message in messages:
            message["content"] = [
                {"type": "image_url", "image_url": {"url": self._data_url(next(parts))}} if part["type"] == "image" else part
                for part in message["content"]
            ]
        return messages

    def _one(self, sample: Sample, images: list[Any], seed: int) -> str:
        messages = self.request_messages(sample, images)
        greedy = self.decoding.decoding == "greedy"
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                response = self.client.chat.completions.create(
                    model=self.api_model,
                    messages=messages,
                    max_tokens=self.decoding.max_new_tokens,
                    temperature=0.0 if greedy else self.decoding.temperature,
                    top_p=1.0 if greedy else self.decoding.top_p,
                    seed=seed,
                )
                try:
                    content = response.choices[0].message.content
                except (AttributeError, IndexError, TypeError):
                    # A 200 that is not a chat completion (a proxy's HTML page, no choices): malformed, retried.
                    raise ValueError(f"the response holds no choices[0].message.content (got {type(response).__name__})") from None
                return content or ""
            except Exception as err:  # noqa: BLE001 - classify() names the SDK's failures; anything else propagates
                failure = classify(err, timeout_s=self.TIMEOUT_S)
                if failure is None:
                    raise
                if not failure.retryable or attempt == self.ATTEMPTS:
                    tried = "not retried" if not failure.retryable else f"gave up after {attempt} attempts"
                    raise HallbenchError(
                        scrub(
                            f"the openai backend at {self.base_url} (model {self.api_model}) failed on sample {sample.id}: "
                            f"{failure.kind}: {failure.detail} ({tried}); the answers written so far are kept: run again to resume",
                            self._secret,
                        )
                    ) from None
                self._sleep(backoff_delay(attempt, base_s=self.BACKOFF_BASE_S, max_s=self.BACKOFF_MAX_S, server_s=failure.retry_after_s))
        raise AssertionError("unreachable")

    @staticmethod
    def _sleep(seconds: float) -> None:
        time.sleep(seconds)

    def generate(self, samples: list[Sample], images: list[list[Any]], chunk_seed: int) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, samples, images, [chunk_seed + i for i in range(len(samples))]))


# ---------------------------------------------------------------------------------------------
# Predictions file


def read_predictions(path: Path) -> list[dict]:
    """Records of a predictions JSONL; a torn last line (killed mid-write) is dropped, any other bad line is an error."""
    from hallbench.runfolder import read_appended_jsonl

    return read_appended_jsonl(path, "prediction record")


def write_records(path: Path, records: list[dict]) -> None:
    """Make ``path`` hold exactly ``records`` (atomically; untouched when it already does)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
        from hallbench.runfolder import write_text_atomic

        write_text_atomic(path, text)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


_OWN_PROCESS_GROUP = False  # True when the engine created the process group (and so must destroy it)


def _barrier(dist: DistInfo) -> None:
    global _OWN_PROCESS_GROUP
    if dist.world_size == 1:
        return
    import torch.distributed as tdist

    if not tdist.is_initialized():
        import torch

        tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        _OWN_PROCESS_GROUP = True
    tdist.barrier()


def _release_process_group() -> None:
    global _OWN_PROCESS_GROUP
    if _OWN_PROCESS_GROUP:
        import torch.distributed as tdist

        tdist.destroy_process_group()
        _OWN_PROCESS_GROUP = False


ScoreFn = Callable[[Sample, str], dict[str, Any]]


def _chunks(samples: list[Sample], size: int) -> Iterator[tuple[int, list[Sample]]]:
    for k, start in enumerate(range(0, len(samples), size)):
        yield k, samples[start : start + size]


def _load_images(sample: Sample) -> list[Any]:
    from hallbench.data.formats import load_image

    return [load_image(path, f"sample {sample.id}") for path in sample.images]


def generate_predictions(
    samples: list[Sample],
    backend: Backend,
    decoding: DecodingConfig,
    out_dir: Path,
    score: ScoreFn,
    *,
    strict: bool = False,
    progress: bool = True,
    dist: DistInfo | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> list[dict]:
    """Generate and score every sample not yet in ``out_dir/predictions.jsonl``; return all records in sample order.

    ``score(sample, answer)`` adds the benchmark's per-sample fields. A sample whose images cannot be
    read is recorded with ``error`` (or, with ``strict``, stops the run); nothing written is lost.
    """
    dist = dist or DistInfo.from_env()
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise HallbenchError(f"duplicated sample id '{dup}': every question/image id must be unique within a run")
    final_path = out_dir / "predictions.jsonl"
    shard_path = final_path if dist.world_size == 1 else out_dir / f"predictions.rank{dist.rank}.jsonl"
    done: dict[str, dict] = {}
    wanted = set(ids)
    for path in {final_path, shard_path}:
        records = read_predictions(path)
        if path == shard_path:
            write_records(path, records)
        done.update((r["id"], r) for r in records if r.get("id") in wanted)

    my_chunks = [(k, chunk) for k, chunk in _chunks(samples, decoding.batch_size) if k % dist.world_size == dist.rank]
    todo = [(k, chunk) for k, chunk in my_chunks if any(s.id not in done for s in chunk)]
    n_todo = sum(sum(s.id not in done for s in chunk) for _, chunk in todo)
    with (
        _progress(progress and dist.rank == 0, n_todo, f"generating ({len(done)} already done)") as advance,
        shard_path.open("a", encoding="utf-8") as out,
    ):
        for k, chunk in todo:
            ready: list[Sample] = []
            images: list[list[Any]] = []
            records: dict[str, dict] = {}
            for sample in chunk:
                try:
                    images.append(_load_images(sample))
                    ready.append(sample)
                except HallbenchError as err:
                    if strict:
                        raise
                    records[sample.id] = _record(sample, None, error=str(err))
            if ready:
                answers = backend.generate(ready, images, chunk_seed=decoding.seed * 1_000_003 + k)
                for sample, answer in zip(ready, answers, strict=True):
                    record = _record(sample, answer)
                    try:
                        record.update(score(sample, answer))
                    except HallbenchError as err:
                        if strict:
                            raise
                        record["error"] = str(err)
                    records[sample.id] = record
            new = [records[s.id] for s in chunk if s.id not in done]
            out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
            out.flush()
            done.update((r["id"], r) for r in new)
            advance(len(new))
            if on_chunk is not None:
                on_chunk(k)

    if dist.world_size > 1:
        _barrier(dist)
        if dist.rank == 0:
            for r in range(dist.world_size):
                done.update((rec["id"], rec) for rec in read_predictions(out_dir / f"predictions.rank{r}.jsonl"))
            merged = [done[i] for i in ids if i in done]
            write_records(final_path, merged)
        _barrier(dist)
        done.update((r["id"], r) for r in read_predictions(final_path))
        _release_process_group()
    return [done[i] for i in ids if i in done]


def _record(sample: Sample, answer: str | None, error: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"id": sample.id, **sample.meta, "images": [p.name for p in sample.images], "prompt": sample.prompt}
    record["prediction"] = answer
    record["error"] = error
    return record


class _progress:
    """A rich progress bar with samples/s and ETA (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, description: str):
        self.enabled, self.total, self.description = enabled, total, description

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled or self.total == 0:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        self.bar.start()
        self.task = self.bar.add_task(self.description, total=self.total, rate="")
        self.start = time.perf_counter()
        self.count = 0

        def advance(n: int) -> None:
            self.count += n
            rate = self.count / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(self.task, advance=n, rate=f"{rate:.1f} samples/s")

        return advance

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "bar", None) is not None:
            self.bar.stop()
