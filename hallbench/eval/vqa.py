"""``hallbench eval --bench vqa``: open and closed questions in the seed-001 format.

The model answers with reasoning followed by a marker (default ``### The final answer is:``) and
the final answer. CLOSED questions are judged by an LLM (``hallbench/eval/judge.py``): is the final
answer semantically equivalent to the reference? OPEN questions are scored with BERTScore
(``hallbench/eval/bertscore.py``).

What the seed's ``eval.py`` got wrong and hallbench does instead:
- an answer without the marker was silently skipped (``continue``), inflating or deflating the
  score; here it is never dropped: by default the whole answer is used as the final answer and the
  sample is flagged (``missing_marker``); with ``--require-marker`` it counts as wrong. Either way
  ``n_missing_marker`` is in the summary;
- a failed or unparseable judgement is never counted as correct: it is excluded from the accuracy
  denominator, counted in ``judge_errors`` and listed by id, and a re-run judges only those (the
  judge cache holds every successful verdict).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError
from hallbench.eval.benchmark import BenchmarkSpec, Metric, is_error, metric_values

DEFAULT_MARKER = "### The final answer is:"


@functools.cache
def _marker_pattern(marker: str) -> re.Pattern[str]:
    pieces = re.findall(r"\w+|[^\w\s]", marker)
    return re.compile(r"\s*".join(re.escape(p) for p in pieces), re.IGNORECASE)


def extract_final_answer(text: str, marker: str = DEFAULT_MARKER) -> tuple[str, str, bool]:
    """Split an answer into ``(reasoning, final_answer, has_marker)``.

    The last occurrence of ``marker`` counts (a model may quote the format before answering). The
    marker matches case-insensitively and with any whitespace (or none) between its words and
    punctuation, so ``### the final answer is : 2`` (a tokenizer that spaces out punctuation)
    counts as the marker. The final answer is stripped of surrounding whitespace and of one
    trailing period. Without the marker, the reasoning is empty and the final answer is the whole
    (stripped) text.
    """
    matches = list(_marker_pattern(marker).finditer(text))
    if not matches:
        return "", text.strip(), False
    last = matches[-1]
    reasoning = text[: last.start()].strip()
    final = text[last.end() :].strip()
    if final.endswith(".") and not final.endswith(".."):
        final = final[:-1].rstrip()
    return reasoning, final, True


@dataclass(frozen=True)
class VqaOptions:
    """``hallbench eval --bench vqa``'s own options: the final-answer format, the LLM judge of CLOSED
    questions and the BERTScore of OPEN ones. The judge's and BERTScore's settings may change when a
    run is resumed (cached verdicts are reused where the judge is the same)."""

    marker: str = "### The final answer is:"
    """The text that precedes the final answer."""
    require_marker: bool = False
    """Count an answer without the marker as wrong (default: use the whole answer and flag it)."""
    judge_base_url: str | None = None
    """OpenAI-compatible endpoint of the LLM judge for CLOSED questions (e.g. https://api.deepseek.com)."""
    judge_model: str = "deepseek-chat"
    """The judge's model name."""
    judge_key_env: str | None = None
    """Environment variable with the judge's API key (default: DEEPSEEK_API_KEY, then OPENAI_API_KEY); the key itself is never a flag."""
    judge_concurrency: int = 8
    """Judge requests in flight at once."""
    judge_timeout: float = 60.0
    """Seconds one judge request may take before it is retried."""
    judge_attempts: int = 6
    """Requests per judgement at most (the first included; backoff between them)."""
    judge_max_tokens: int = 16
    """The judge's completion budget (raise it, e.g. to 4096, for a reasoning model that thinks in its reply)."""
    judge_max_error_rate: float = 0.0
    """Fraction of CLOSED judgements that may fail (after every attempt) before the run exits with status 1."""
    bertscore_model: str | None = None
    """BERTScore model (default: roberta-large when available offline, else the bundled all-MiniLM-L6-v2)."""
    bertscore_layers: int | None = None
    """BERTScore layer (default: 17 for roberta-large, 6 for MiniLM)."""
    bertscore_baseline: Path | None = None
    """Baseline file for BERTScore rescaling (needed to rescale a local model)."""

    def __post_init__(self) -> None:
        from hallbench.provenance import check_env_name, check_url_has_no_credentials

        check_env_name(self.judge_key_env, "--judge-key-env")
        check_url_has_no_credentials(self.judge_base_url, "--judge-base-url")
        if not 0.0 <= self.judge_max_error_rate <= 1.0:
            raise HallbenchError(f"--judge-max-error-rate must be a fraction from 0 to 1, got {self.judge_max_error_rate}")


class VqaBenchmark:
    """One sample per question; judge verdicts and BERTScores are added once generation is done."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.options: VqaOptions = cfg.options
        if cfg.data is None:
            raise HallbenchError(
                "--bench vqa needs --data: a question file in the seed-001 format (id, img_name, question, answer, answer_type)"
            )
        if cfg.images is None:
            raise HallbenchError("--bench vqa needs --images: the folder that img_name is relative to")
        self.data, self.images = Path(cfg.data), Path(cfg.images)
        self.marker = self.options.marker

    def samples(self) -> list[Any]:
        from hallbench.data.formats import read_vqa
        from hallbench.eval.engine import Sample

        return [
            Sample(
                item.id,
                [self.images / name for name in item.images],
                item.question,
                {"answer_type": item.answer_type, "reference": item.answer, "question": item.question},
            )
            for item in read_vqa(self.data)
        ]

    def score(self, sample: Any, answer: str) -> dict[str, Any]:
        reasoning, final, has_marker = extract_final_answer(answer, self.marker)
        return {"reasoning": reasoning, "final_answer": final, "missing_marker": not has_marker}

    def describe(self) -> dict[str, Any]:
        from hallbench.provenance import sha256_file

        return {
            "questions": {"file": str(self.data), "sha256": sha256_file(self.data)},
            "images": str(self.images),
            "marker": self.marker,
            "require_marker": self.options.require_marker,
        }

    # -- scoring that needs every answer -------------------------------------------------------

    def _closed_verdicts(self, closed: list[dict]) -> tuple[dict[str, dict], dict[str, Any]]:
        """Judge verdicts by record id, and the judge's request statistics."""
        if not closed:
            return {}, {}
        from hallbench.eval.judge import JudgeItem, judge_many

        items = [JudgeItem(r["id"], r["question"], r["reference"], r["final_answer"]) for r in closed]
        judgements, stats = judge_many(items, self._judge_config())
        return {item.id: _as_dict(j) for item, j in zip(items, judgements, strict=True)}, stats

    def _judge_config(self) -> Any:
        from hallbench.eval.judge import JudgeConfig

        if not self.options.judge_base_url:
            raise HallbenchError(
                "--bench vqa has CLOSED questions: it needs an LLM judge (--judge-base-url, --judge-model, key in DEEPSEEK_API_KEY or "
                "--judge-key-env); for a local judge without a key run `python -m hallbench.eval.judge_server --port 8765`"
            )
        return JudgeConfig(
            base_url=self.options.judge_base_url,
            model=self.options.judge_model,
            key_env=self.options.judge_key_env,
            concurrency=self.options.judge_concurrency,
            timeout_s=self.options.judge_timeout,
            max_attempts=self.options.judge_attempts,
            max_tokens=self.options.judge_max_tokens,
            cache_path=Path(self.cfg.out) / "judge_cache.sqlite",
        )

    def _bertscore_config(self) -> Any:
        from hallbench.eval.bertscore import BertScoreConfig

        return BertScoreConfig(
            model=self.options.bertscore_model, num_layers=self.options.bertscore_layers, baseline_path=self.options.bertscore_baseline
        )

    def prepare(self, samples: list[Any]) -> None:
        """Before generation: the judge answers one probe request and the BERTScore model is found offline."""
        kinds = {s.meta["answer_type"] for s in samples}
        if "CLOSED" in kinds:
            from hallbench.eval.judge import probe_judge

            probe_judge(self._judge_config())
        if "OPEN" in kinds:
            from hallbench.eval.bertscore import resolve_bertscore

            resolve_bertscore(self._bertscore_config())

    def finalize(self, records: list[dict]) -> list[dict]:
        """Add judge verdicts (CLOSED) and BERTScores (OPEN) to the records."""
        usable = [r for r in records if not r.get("error")]
        closed = [r for r in usable if r["answer_type"] == "CLOSED" and not (self.options.require_marker and r["missing_marker"])]
        verdicts, self.judge_stats = self._closed_verdicts(closed)
        opened = [r for r in usable if r["answer_type"] == "OPEN" and not (self.options.require_marker and r["missing_marker"])]
        self.bertscore_info: dict[str, Any] | None = None
        scores: dict[str, tuple[float, float, float]] = {}
        if opened:
            from hallbench.eval.bertscore import BertScorer

            scorer = BertScorer(self._bertscore_config())
            triples = scorer.score([r["final_answer"] for r in opened], [r["reference"] for r in opened])
            scores = {r["id"]: t for r, t in zip(opened, triples, strict=True)}
            self.bertscore_info = scorer.description()
        enriched = []
        for record in records:
            record = dict(record)
            for key in ("judge", "correct", "bertscore"):
                record.pop(key, None)
            if record["id"] in verdicts:
                judgement = verdicts[record["id"]]
                record["judge"] = judgement
                record["correct"] = judgement.get("verdict")  # None = judge error: never counted correct
            elif record.get("answer_type") == "CLOSED" and not record.get("error"):
                record["correct"] = False  # --require-marker and no marker
            if record["id"] in scores:
                p, r, f = scores[record["id"]]
                record["bertscore"] = {
                    "precision": p,
                    "recall": r,
                    "f1": f,
                    "hash": self.bertscore_info["hash"] if self.bertscore_info else None,
                }
            enriched.append(record)
        return enriched

    def aggregate(self, records: list[dict]) -> dict[str, Any]:
        usable = [r for r in records if not is_error(r)]
        closed = [r for r in usable if r["answer_type"] == "CLOSED"]
        opened = [r for r in usable if r["answer_type"] == "OPEN"]
        judged = [r for r in closed if r.get("correct") is not None]
        judge_errors = [r["id"] for r in closed if "judge" in r and r["judge"].get("verdict") is None]
        n_open_scored = sum(1 for r in opened if "bertscore" in r)
        return {
            "metrics": {**metric_values(SPEC, usable, {"require_marker": self.options.require_marker}), "n": len(usable)},
            "n_closed": len(closed),
            "n_closed_judged": len(judged),
            "n_open": len(opened),
            "n_open_scored": n_open_scored,
            "n_open_excluded": len(opened) - n_open_scored,
            "n_missing_marker": sum(1 for r in usable if r["missing_marker"]),
            "require_marker": self.options.require_marker,
            "judge_errors": len(judge_errors),
            "judge_error_ids": judge_errors,
            "judge_error_rate": len(judge_errors) / len(closed) if closed else 0.0,
            "judge_failed": bool(closed) and len(judge_errors) / len(closed) > self.options.judge_max_error_rate,
            "judge": {"base_url": self.options.judge_base_url, "model": self.options.judge_model, **getattr(self, "judge_stats", {})},
            "bertscore": getattr(self, "bertscore_info", None),
        }


def _as_dict(judgement: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(judgement) if is_dataclass(judgement) else dict(judgement)


# The metrics, declared once (hallbench/eval/benchmark.py). Closed accuracy is over the judged CLOSED
# questions (a judge error is not counted); the open BERTScores are means over the scored OPEN answers,
# or over every OPEN answer (unscored = 0, like a wrong closed answer) with --require-marker.
VQA_METRICS: tuple[Metric, ...] = (
    Metric("closed_accuracy", "correct", "judged", label="Closed Acc",
           description="CLOSED questions judged equivalent to the reference / CLOSED questions judged"),
    Metric("open_bertscore_precision", "open_precision", "open_scored", label="Open BERTScore-P",
           description="mean BERTScore precision of OPEN answers"),
    Metric("open_bertscore_recall", "open_recall", "open_scored", label="Open BERTScore-R",
           description="mean BERTScore recall of OPEN answers"),
    Metric("open_bertscore_f1", "open_f1", "open_scored", label="Open BERTScore-F1",
           description="mean BERTScore F1 of OPEN final answers against the references"),
    Metric("missing_marker_rate", "missing_marker", label="No marker", higher_is_better=False,
           description="answers without the final-answer marker / answers"),
)  # fmt: skip


def _fields(record: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, float]:
    """The per-question fields of the VQA metrics (``options``: the run's ``require_marker``)."""
    judged = record.get("answer_type") == "CLOSED" and record.get("correct") is not None
    opened = record.get("answer_type") == "OPEN"
    scores = record.get("bertscore") if opened else None
    return {
        "correct": 1.0 if judged and record["correct"] else 0.0,
        "judged": float(judged),
        **{f"open_{k}": float(scores[k]) if scores else 0.0 for k in ("precision", "recall", "f1")},
        "open_scored": float(opened if options.get("require_marker") else scores is not None),
        "missing_marker": float(bool(record.get("missing_marker"))),
    }


SPEC = BenchmarkSpec(
    name="vqa",
    title="VQA",
    version="vqa-1",  # with the judge's prompt_id: the final-answer extraction rule
    metrics=VQA_METRICS,
    per_sample=_fields,
    benchmark=VqaBenchmark,
    # Room for the reasoning before the final-answer marker (64 tokens cut most of it off).
    default_max_new_tokens=1024,
    options=VqaOptions,
    # The judge's and BERTScore's settings: a resumed run may use another endpoint or scorer.
    free_options=tuple(f.name for f in fields(VqaOptions) if f.name.startswith(("judge_", "bertscore_"))),
    paper_metrics=("closed_accuracy", "open_bertscore_f1"),
    command_flags=("--judge-base-url <judge endpoint>",),
)
