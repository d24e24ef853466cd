"""The README's tour runs verbatim on a fresh install: every command of its bash block, in an empty folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def tour_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## A tour of the commands") :]
    start = section.index("```bash\n") + len("```bash\n")
    return section[start : section.index("```", start)]


def test_the_readme_tour_runs_verbatim(tmp_path):
    block = tour_block()
    assert "hallbench train" in block and "hallbench report" in block and "hallbench ask" in block
    # Background jobs (the local judge) are stopped when the script ends, however it ends.
    # (The VQA eval's judge probe retries while the judge server is still starting.)
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + block
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "100"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    for bench in ("pope", "chair", "vqa", "pope-ours"):
        summary = json.loads((tmp_path / "runs" / "eval" / bench / "summary.json").read_text())
        assert summary["n_errors"] == 0, (bench, summary["errors"])
    assert (tmp_path / "report" / "table2.md").is_file() and (tmp_path / "report" / "index.md").is_file()
    assert "is valid conversations" in " ".join(result.stdout.split())
