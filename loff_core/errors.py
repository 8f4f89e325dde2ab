"""Errors meant for the user: each names the file (when there is one) and the reason.

The CLI prints `str(error)` as a one-line reason and exits non-zero; the app shows it in a
copyable list. Nothing here carries patient data: callers must never put DICOM header
values other than technical ones (sizes, syntaxes) into a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional


class LoffError(Exception):
    """Base class for every error the user is meant to read."""


class UnreadableImage(LoffError):
    def __init__(self, path: Path | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ProjectError(LoffError):
    """A project folder that is missing, locked, from a newer version, or inconsistent."""


class BackboneError(LoffError):
    """A backbone that cannot be created or whose weights cannot be loaded."""


class CacheError(LoffError):
    """A feature cache that is missing, incomplete, corrupt or from another backbone."""


class TrainingError(LoffError):
    """Training that cannot start (no labels, one class, no cache) or that failed."""


class ExportError(LoffError):
    """An exported head that cannot be written or that is refused on load."""

    def __init__(self, message: str, path: Optional[Path | str] = None):
        self.path = None if path is None else str(path)
        super().__init__(message if path is None else f"{path}: {message}")


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (torch.cuda.OutOfMemoryError or the older RuntimeError),
    recognised without importing torch."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
