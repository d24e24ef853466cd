"""Slow checks at full size (off by default): ``pytest -m slow tests/test_slow.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_train.py"


@pytest.mark.slow
def test_one_lora_ours_step_on_the_full_width_2b_fits_24_gib(tmp_path):
    """The full-width, full-depth Qwen3-VL-2B shape (2.1B parameters, random weights) trains one LoRA
    step as Base and as Ours on the CPU within this machine's 24 GiB; peak RSS and step time are
    recorded side by side (benchmarks/bench_train.py, each variant in its own process)."""
    out = tmp_path / "bench.json"
    command = [sys.executable, str(BENCH), "--model", "qwen2b-shape", "--lora-rank", "16", "--variants", "base,ours",
               "--batch-size", "1", "--steps", "1", "--warmup", "0", "--rounds", "1", "--device", "cpu", "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True, timeout=3600)
    variants = json.loads(out.read_text())["variants"]
    for name in ("base", "ours"):
        result = variants[name]
        assert result["parameters"] > 2.1e9
        assert result["trainable_parameters"] < 0.02 * result["parameters"]  # LoRA adapters (+ evidence for Ours)
        assert 0 < result["peak_rss_gb"] < 24.0
        assert result["step_time_s"] > 0
    assert variants["ours"]["evidence_parameters"] > 0 and variants["base"]["evidence_parameters"] == 0
