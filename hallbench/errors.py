"""User-facing errors.

Every error a user can fix (a missing file, a malformed line, an unknown model name) is raised as a
``HallbenchError`` subclass whose message names the place (file, line or JSON path, id), what was
expected and what was found. The CLI prints these messages without a traceback; anything else is a
bug in hallbench and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class HallbenchError(Exception):
    """An error caused by the user's input or environment, with an actionable message."""


class DataFormatError(HallbenchError, ValueError):
    """A data file does not have the expected format.

    Attributes:
        path: the file that is wrong.
        location: where in the file (``line 12``, ``$.images[3].id``, ``id 'q17'``), or ``None``
            when the whole file is wrong (for example, it is not JSON at all).
        expected: what hallbench needed there.
        found: what was actually there (shortened).
    """

    def __init__(self, path: str | Path, location: str | None, expected: str, found: str):
        self.path = Path(path)
        self.location = location
        self.expected = expected
        self.found = found
        where = f"{self.path}" + (f", {location}" if location else "")
        super().__init__(f"{where}: expected {expected}, found {found}")


class ModelNotFoundError(HallbenchError, FileNotFoundError):
    """A model name or path could not be resolved to weights on this machine."""


def shorten(value: object, limit: int = 80) -> str:
    """A repr of ``value`` cut to ``limit`` characters, for 'found ...' parts of messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SettingsChangedError(HallbenchError):
    """An output folder already holds a run (training or evaluation) made with other settings.

    Attributes:
        folder: the output folder.
        changes: what differs, as ``key: old -> new`` pairs.
    """

    def __init__(self, folder: str | Path, changes: str, advice: str):
        self.folder = Path(folder)
        self.changes = changes
        super().__init__(f"{self.folder} holds a run with other settings ({changes}); {advice}")
