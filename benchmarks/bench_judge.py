"""LLM judge throughput: concurrency 1 vs 16 against the local judge server with a fixed latency, and a cached rerun.

    python benchmarks/bench_judge.py [--n 500] [--latency-s 0.05] [--concurrency 16]

The judge server (``python -m hallbench.eval.judge_server``) runs in its own process, as a remote
endpoint would, and adds ``--latency-s`` to every answer. Each timed run judges ``--n`` distinct
items with a fresh SQLite cache (caching on, as in real use), through the real openai client;
the verdicts are checked against the server's rule. Then the concurrent run is repeated on its
warm cache, which must make no request. Prints the speed-up and writes
benchmarks/results/bench_judge.json. Target: >= 10x at concurrency 16 with 50 ms latency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from hallbench.eval.judge import JudgeConfig, JudgeItem, judge_many
from hallbench.eval.judge_server import normalize_answer

RESULTS = Path(__file__).parent / "results" / "bench_judge.json"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_items(n: int) -> list[JudgeItem]:
    """n distinct items: predictions as digits, number words or wrong numbers (about 2 in 3 equivalent)."""
    items = []
    for k in range(n):
        reference = str(k % 10)
        prediction = [reference, WORDS[k % 10].capitalize() + ".", str((k + 1) % 10)][k % 3]
        items.append(JudgeItem(f"v{k}", f"How many shapes are in image {k}?", reference, prediction))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="judgements per run")
    parser.add_argument("--latency-s", type=float, default=0.05, help="server latency per request")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_judge_"))
    items = make_items(args.n)
    expected = [normalize_answer(it.prediction) == normalize_answer(it.reference) for it in items]
    server = subprocess.Popen(
        [sys.executable, "-m", "hallbench.eval.judge_server", "--port", "0", "--latency-s", str(args.latency_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().strip()  # the server prints its URL once it listens
        if not base_url.startswith("http://127.0.0.1:"):
            raise SystemExit(f"the judge server did not start (printed {base_url!r})")
        runs = {}
        for concurrency in (1, args.concurrency):
            cfg = JudgeConfig(base_url=base_url, model="bench-judge", concurrency=concurrency, cache_path=work / f"c{concurrency}.sqlite")
            judgements, stats = judge_many(items, cfg)
            correct = [j.verdict for j in judgements] == expected
            runs[concurrency] = {
                "wall_s": stats["wall_s"],
                "judgements_per_s": args.n / stats["wall_s"],
                "requests": stats["requests"],
                "judge_errors": stats["judge_errors"],
                "verdicts_correct": correct,
            }
            print(
                f"concurrency {concurrency:2d}: {stats['wall_s']:6.2f} s  {args.n / stats['wall_s']:6.1f} judgements/s  verdicts correct: {correct}"
            )
        speedup = runs[1]["wall_s"] / runs[args.concurrency]["wall_s"]
        print(f"speed-up x{speedup:.2f} (target >= 10)")

        cfg = JudgeConfig(
            base_url=base_url, model="bench-judge", concurrency=args.concurrency, cache_path=work / f"c{args.concurrency}.sqlite"
        )
        judgements, stats = judge_many(items, cfg)
        cached = {
            "wall_s": stats["wall_s"],
            "requests": stats["requests"],
            "cache_hits": stats["cache_hits"],
            "verdicts_correct": [j.verdict for j in judgements] == expected,
        }
        print(f"cached rerun: {stats['wall_s'] * 1000:.1f} ms, {stats['requests']} requests, {stats['cache_hits']} cache hits")
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    results = {
        "n": args.n,
        "latency_s": args.latency_s,
        "runs": {str(c): r for c, r in runs.items()},
        "speedup": speedup,
        "cached_rerun": cached,
        "target": f"concurrency {args.concurrency} >= 10x concurrency 1; cached rerun makes 0 requests",
        "target_met": speedup >= 10 and cached["requests"] == 0,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "openai": metadata.version("openai"),
            "platform": platform.platform(),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
