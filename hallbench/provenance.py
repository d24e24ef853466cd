"""What a run folder records about where its numbers came from: versions, git commit, command line."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "hallbench",
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "deepspeed",
    "peft",
    "pycocotools",
    "lemminflect",
    "openai",
    "bert-score",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that can change a result (``None`` if not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the hallbench checkout (with ``-dirty`` if it has changes), or ``None`` outside git."""
    cwd = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty.strip() else "")


def provenance() -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "pid": os.getpid(),
    }


def identity_changes(previous: dict[str, Any], current: dict[str, Any]) -> str:
    """``"key: old -> new; ..."`` for every key whose value differs between two run identities; ``""`` when equal."""
    changed = [k for k in sorted(set(current) | set(previous)) if current.get(k) != previous.get(k)]
    return "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks (annotation files can be hundreds of MB)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and ``os.replace``, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
