"""What a run folder records about where its numbers came from: versions, git commit, command line."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError

PACKAGES = (
    "hallbench",
    "torch",
    "torchvision",
    "transformers",
    "tokenizers",
    "accelerate",
    "deepspeed",
    "peft",
    "pycocotools",
    "lemminflect",
    "openai",
    "bert-score",
    "scipy",
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


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""What an environment variable's name looks like; an API key (``sk-...``, 30+ characters) does not."""
_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


def check_env_name(value: str | None, option: str) -> None:
    """Refuse an option that should name an environment variable but holds something else (typically the key).

    The value is never echoed: the usual mistake is pasting the key itself.
    """
    if value is not None and not ENV_NAME.fullmatch(value):
        raise HallbenchError(
            f"{option} must be the NAME of an environment variable (letters, digits and underscores, at most 64, "
            "e.g. OPENAI_API_KEY), not the key itself; the value given is not shown"
        )


def check_url_has_no_credentials(url: str | None, option: str) -> None:
    """Credentials in a URL would be stored in config files and logs; keys go in the environment."""
    from urllib.parse import urlsplit

    if url is not None and (urlsplit(url).username or urlsplit(url).password):
        raise HallbenchError(f"{option} must not contain credentials (user:password@); put the API key in an environment variable")


def scrubbed_command(argv: list[str]) -> str:
    """The command line as recorded: credentials in URLs and values of ``--*-key-env`` that are not
    variable names (a pasted key) are replaced by ``***``."""
    out: list[str] = []
    previous = ""
    for arg in argv:
        name, eq, value = arg.partition("=")
        if eq and name.startswith("--") and name.endswith("key-env") and not ENV_NAME.fullmatch(value):
            arg = f"{name}=***"
        elif previous.startswith("--") and previous.endswith("key-env") and not ENV_NAME.fullmatch(arg):
            arg = "***"
        out.append(_URL_CREDENTIALS.sub(r"\1***@", arg))
        previous = arg if not eq else ""
    return " ".join(out)


def command_line() -> str:
    """This process's command line as recorded (program name, arguments; see :func:`scrubbed_command`)."""
    return scrubbed_command([Path(sys.argv[0]).name, *sys.argv[1:]])


def provenance() -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": command_line(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "pid": os.getpid(),
    }


def identity_changes(previous: dict[str, Any], current: dict[str, Any], prefix: str = "") -> str:
    """``"key: old -> new; ..."`` for every value that differs between two run identities; ``""`` when equal.

    Nested settings are compared key by key, so a changed decoding reads ``decoding.max_new_tokens: 32 -> 8``,
    not two whole dicts.
    """
    changed = []
    for key in sorted(set(current) | set(previous)):
        old, new = previous.get(key), current.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed.append(identity_changes(old, new, f"{prefix}{key}."))
        else:
            changed.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return "; ".join(changed)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks (annotation files can be hundreds of MB)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
