"""How hallbench writes into a folder: one writer at a time, atomic files, appended JSONL read back safely.

Every stage (``train``, ``eval``, ``report``, ``demo``) writes through these helpers, so three
invariants hold everywhere:

- **One writer per folder.** :class:`FolderLock` is an advisory POSIX record lock on
  ``.hallbench.lock`` held for the whole run. A second process gets one line naming the holder's
  pid, host and command. The kernel drops the lock when its process dies (SIGKILL included), so a
  stale lock is taken over without anyone deleting a file. Ranks of one distributed launch lock
  byte ``rank`` of the same file, so a second launch collides with the first rank for rank.
- **No half-written file is ever visible.** :func:`atomic_path` writes a temporary sibling and
  renames it over the target: a kill or a full disk leaves the previous good copy and no debris.
- **An appended JSONL survives a torn tail.** :func:`read_appended_jsonl` reads bytes and drops
  a last line cut by a crash (also inside a multi-byte UTF-8 character); a damaged line elsewhere
  is an error naming the file and line, never silently skipped.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError

LOCK_FILE = ".hallbench.lock"
"""The lock file every stage holds while it writes into a folder; never counts as the folder's content."""
SCORES_FOLDER = "scores"
"""``EVAL_RUN/scores/<what differs>/``: an evaluation's answers re-scored with other scoring options
(summary.json, predictions.jsonl, scoring.json); written by ``hallbench eval``, read by the report."""


def recorded_path_candidates(recorded: str | Path, near: Path) -> list[Path]:
    """Where a path that a run recorded may be now: itself (absolute, or relative to the current folder),
    then, when it is relative, the same path under each folder above ``near``, nearest first. Older run
    folders recorded paths as given, relative to wherever that command ran, which nobody recorded."""
    path = Path(recorded)
    return [path] if path.is_absolute() else [path, *(parent / path for parent in Path(near).resolve().parents)]


class FolderLockedError(HallbenchError):
    """Another live process holds the folder's lock."""


def folder_content(folder: Path) -> list[Path]:
    """The entries of ``folder`` that are not hallbench's own bookkeeping (the lock file)."""
    return [p for p in Path(folder).iterdir() if p.name != LOCK_FILE] if Path(folder).is_dir() else []


class FolderLock:
    """An exclusive, non-blocking advisory lock on ``folder`` for this process (rank ``rank``).

    Re-entrant within a process (the demo's stages nest); released on :meth:`release`, on exit and,
    by the kernel, when the process dies. POSIX locks (``lockf``) rather than ``flock``: they belong
    to the process, so a forked data-loader worker that outlives a killed trainer does not keep the
    folder locked, and they work on NFS mounts with a lock manager.
    """

    _held: dict[tuple[str, int], tuple[Any, int]] = {}
    """(real path, rank) -> (open lock file, nesting depth) of the locks this process holds. One
    open file per lock: closing any descriptor of a POSIX-locked file releases the lock."""

    def __init__(self, folder: Path, *, option: str = "the output folder", rank: int | None = None):
        self.folder = Path(folder)
        self.option = option
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self._key = (os.path.realpath(self.folder / LOCK_FILE), self.rank)

    def acquire(self) -> FolderLock:
        held = self._held.get(self._key)
        if held is not None:
            self._held[self._key] = (held[0], held[1] + 1)
            return self
        path = self.folder / LOCK_FILE
        try:
            handle = open(path, "a+b")  # noqa: SIM115 - kept open for the life of the lock
        except OSError as err:
            raise HallbenchError(f"{self.option} {self.folder}: cannot create {LOCK_FILE} ({err.strerror or err})") from None
        try:
            # Byte ``rank`` of the file: ranks of one launch do not exclude each other.
            os.lseek(handle.fileno(), self.rank, os.SEEK_SET)
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self.rank, os.SEEK_SET)
        except OSError:
            holder = _describe_holder(path)
            handle.close()
            raise FolderLockedError(
                f"{self.option} {self.folder} is in use by another hallbench process ({holder}); "
                "wait for it to finish, stop it, or choose another folder"
            ) from None
        if self.rank == 0:
            from hallbench.provenance import command_line

            holder = {
                "pid": os.getpid(),
                "host": platform.node(),
                "command": command_line(),
                "since": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            handle.truncate(0)
            handle.write((json.dumps(holder) + "\n").encode("utf-8"))
            handle.flush()
        self._held[self._key] = (handle, 1)
        return self

    def release(self) -> None:
        held = self._held.get(self._key)
        if held is None:
            return
        handle, depth = held
        if depth > 1:
            self._held[self._key] = (handle, depth - 1)
            return
        del self._held[self._key]
        if self.rank == 0:
            handle.truncate(0)  # the file stays (unlinking a lock file races with the next locker)
        handle.close()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_bytes().decode("utf-8"))
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is starting"


def make_output_folder(folder: Path, option: str) -> None:
    """Create a run's output folder, or say in one line why it cannot be used (a file, under a file, not writable)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HallbenchError(f"{option} {folder}: cannot create the folder ({err.strerror or err}); choose another {option}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise HallbenchError(f"{option} {folder}: the folder is not writable; choose another {option}")


@contextmanager
def locked_output_folder(folder: Path, option: str) -> Iterator[FolderLock]:
    """Create ``folder`` (see :func:`make_output_folder`) and hold its lock for the block."""
    make_output_folder(folder, option)
    with FolderLock(folder, option=option) as lock:
        yield lock


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write into; it replaces ``path`` only if the block succeeds.

    So a reader (or a kill, or a full disk) never sees a half-written file, the previous good copy
    survives any failure, and no temporary file is left behind after an error.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and ``os.replace``, so a reader never sees half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def read_appended_jsonl(path: Path, what: str = "record") -> list[dict]:
    """The JSON objects of a file that hallbench appends to (predictions, training log, judge output).

    A missing file has no records. A torn last line (a kill or a full disk mid-write, possibly
    inside a multi-byte character) is dropped: the writer appends it again. Any other line that is
    not a JSON object is an error naming the file and line (a damaged file is not a torn write).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise HallbenchError(f"{path}: cannot read ({err.strerror or err})") from None
    lines = data.split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
            if index == last:
                break
        if not isinstance(record, dict):
            raise HallbenchError(
                f"{path}, line {index + 1}: corrupt {what} (not a JSON object, and not the last line, so not a torn write)"
            )
        records.append(record)
    return records
