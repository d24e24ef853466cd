"""Resuming a finished 40,000-sample evaluation: the engine's resume against the quadratic filter it replaced.

    python benchmarks/bench_resume.py [--n 40000]

A predictions.jsonl of ``--n`` records is written, then ``generate_predictions`` (the real engine)
resumes it with a backend that fails if asked to generate: the time is reading, filtering and
returning the records. The baseline is the filter of the code before commit 336d4eb, which built
``set(ids)`` once per record (``r.get("id") in set(ids)``): O(n^2). It is timed on n/16, n/8 and
n/4 records (at n it would take minutes), its exponent measured, and extrapolated to n as the
quadratic it is (exponent 2, conservative when the measured one is higher). Prints
the ratio and writes benchmarks/results/bench_resume.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path

from hallbench.eval.engine import DecodingConfig, Sample, generate_predictions

RESULTS = Path(__file__).parent / "results" / "bench_resume.json"


class NoGeneration:
    def generate(self, samples, images, chunk_seed):  # pragma: no cover - must not run
        raise AssertionError("a finished run was asked to generate")

    def describe(self):
        return {"backend": "none"}


def _records(n: int) -> list[dict]:
    return [
        {"id": f"random/{k}", "question_id": str(k), "label": "yes", "parsed": "yes", "prediction": "Yes.", "error": None} for k in range(n)
    ]


def quadratic_filter(records: list[dict], ids: list[str]) -> dict[str, dict]:
    """The resume filter before 336d4eb: one set of every id per record."""
    done: dict[str, dict] = {}
    done.update((r["id"], r) for r in records if r.get("id") in set(ids))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40_000)
    args = parser.parse_args()
    n = args.n
    records = _records(n)
    samples = [Sample(r["id"], [], "Is there a dog in the image?", {}) for r in records]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        start = time.perf_counter()
        resumed = generate_predictions(samples, NoGeneration(), DecodingConfig(), out, lambda s, a: {}, progress=False)
        engine_s = time.perf_counter() - start
    assert len(resumed) == n
    sizes = [n // 16, n // 8, n // 4]
    baseline = {}
    for size in sizes:
        ids = [r["id"] for r in records[:size]]
        start = time.perf_counter()
        quadratic_filter(records[:size], ids)
        baseline[size] = time.perf_counter() - start
    exponent = math.log(baseline[sizes[-1]] / baseline[sizes[0]]) / math.log(sizes[-1] / sizes[0])
    extrapolated = baseline[sizes[-1]] * (n / sizes[-1]) ** 2
    result = {
        "n": n,
        "engine_resume_s": round(engine_s, 3),
        "quadratic_filter_s": {str(k): round(v, 3) for k, v in baseline.items()},
        "quadratic_exponent": round(exponent, 2),
        "quadratic_extrapolated_s": round(extrapolated, 1),
        "speedup": round(extrapolated / engine_s, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "hallbench": metadata.version("hallbench"),
    }
    print(
        f"resume of {n} finished samples: engine {engine_s:.2f} s; quadratic filter {baseline[sizes[-1]]:.2f} s at {sizes[-1]} "
        f"(measured exponent {exponent:.2f}), as a quadratic {extrapolated:.0f} s at {n}: x{extrapolated / engine_s:.0f}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
