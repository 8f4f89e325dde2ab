"""Errors meant for the user: what went wrong, the file (when there is one) and a remedy.

A `LoffError` carries three things:

* `reason`: what went wrong, in plain words that name no front end (no `loff` command,
  no command-line option, no window control);
* `path`: the file or folder it is about (optional);
* `remedy`: a `Remedy` key saying what the user can do, with its parameters (`params`,
  e.g. the project folder), or None.

Each front end words the remedy its own way, at its edge: the terminal's table is
`loff_core.cli.remedies.TERMINAL` ("run `loff extract PROJECT`"), the window's is
`app.remedies.WINDOW` ("run Extract on the Cache page"); `error.message(TABLE)` is
"PATH: REASON; REMEDY" in that table's words. `str(error)` is "PATH: REASON", the engine's
own words (logs, records), and depends on no front end.

`explain_file_error` turns a file-system error (full or read-only disk, permission, ...)
into a `LoffError` naming the file; the CLI and the app's workers both use it.

Nothing here carries patient data: callers must never put DICOM header values other than
technical ones (sizes, syntaxes) into a message.
"""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional


class Remedy(str, enum.Enum):
    """What the user can do about an error; each front end has a wording for every key."""

    CREATE_PROJECT = "create_project"  # the folder is no project: create one
    IMPORT_IMAGES = "import_images"  # params: project
    EXTRACT = "extract"  # no feature cache yet; params: project
    EXTRACT_AGAIN = "extract_again"  # an unfinished cache: extract again to finish it; params: project (optional)
    TRAIN = "train"  # no training runs yet; params: project
    CHOOSE_WEIGHTS_OR_RANDOM = "choose_weights_or_random"  # no weights here; params: download, size_mb, licence (optional)
    SAME_WEIGHTS_FILE = "same_weights_file"  # an exported head trained on a weights file's features
    RANDOM_INIT = "random_init"  # an exported head trained on randomly initialised features
    DEVICE_CPU = "device_cpu"  # no CUDA GPU here
    HEAD_LINEAR = "head_linear"  # training out of GPU memory: a smaller head, grid, or the CPU
    SMALLER_BACKBONE_OR_CPU = "smaller_backbone_or_cpu"  # extraction out of GPU memory
    CHOOSE_FILE_COLUMN = "choose_file_column"  # a labels CSV without a recognisable file column
    CHOOSE_LABEL_COLUMN = "choose_label_column"  # a labels CSV without a recognisable label column
    CHOOSE_PATIENT_OVERLAP = "choose_patient_overlap"  # a given split puts patients on two sides
    WEIGHTS_GET = "weights_get"  # a suggested backbone not on this machine; params: name, size_mb, licence
    WEIGHTS_ADD_AGAIN = "weights_add_again"  # an added backbone whose weights file is gone
    WEIGHTS_COPY_AND_ADD = "weights_copy_and_add"  # no network: copy the file here and add it; params: name
    HUB_TOKEN = "hub_token"  # a gated Hub repo: accept its licence there, give a token; params: name, repo
    SUGGESTED_BACKBONES = "suggested_backbones"  # not a suggested backbone; params: own (bool, optional)
    ADDED_BACKBONES = "added_backbones"  # not an added backbone: see the list
    ANOTHER_NAME = "another_name"  # a backbone of that name is already added
    BACKBONE = "backbone"  # weights that fit another backbone; params: backbone
    HEAD_OR_PROJECT = "head_or_project"  # predict from a folder that is neither an exported head nor a project


class LoffError(Exception):
    """Base class for every error the user is meant to read.

    `LoffError("REASON")` (the old shape, a whole message) still works; new code passes
    the parts: `LoffError("no feature cache yet", path=root, remedy=Remedy.EXTRACT, project=root)`."""

    def __init__(self, reason: str, path: Optional[Path | str] = None, remedy: Optional[Remedy | str] = None,
                 **params: Any):
        self.reason = str(reason)
        self.path = None if path is None else os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        self.remedy = None if remedy is None else Remedy(remedy)
        self.params: dict[str, Any] = dict(params)
        super().__init__(self.reason)

    def message(self, wordings: Optional[Mapping[Remedy, Any]] = None) -> str:
        """"PATH: REASON; REMEDY", the remedy worded from one front end's `wordings`
        ("PATH: REASON" when None). A wording is a format string over `params` or a
        function of them."""
        text = self.reason if self.path is None else f"{self.path}: {self.reason}"
        remedy = "" if wordings is None else word_remedy(self.remedy, self.params, wordings)
        return f"{text}; {remedy}" if remedy else text

    def __str__(self) -> str:
        return self.message()

    def __reduce__(self) -> Any:  # survives pickling (worker processes) with its parts
        return (_rebuild, (type(self), self.reason, self.path, self.remedy, self.params))


def _rebuild(cls: type, reason: str, path: Optional[str], remedy: Optional[Remedy], params: dict) -> LoffError:
    error = cls.__new__(cls)
    LoffError.__init__(error, reason, path, remedy, **params)
    return error


def word_remedy(remedy: Optional[Remedy], params: Mapping[str, Any], wordings: Mapping[Remedy, Any]) -> str:
    """A remedy in one front end's words ("" for none)."""
    if remedy is None:
        return ""
    wording = wordings[remedy]
    return wording(dict(params)) if callable(wording) else wording.format(**params)


class UnreadableImage(LoffError):
    def __init__(self, path: Path | str, reason: str, remedy: Optional[Remedy | str] = None, **params: Any):
        super().__init__(reason, path=path, remedy=remedy, **params)


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


class SettingError(LoffError, ValueError):
    """A setting out of its declared range (loff_core.settings checks every setting object
    when it is built)."""


class FileSystemError(LoffError):
    """A file that cannot be written or read: a full or read-only disk, no permission, ...
    (`explain_file_error`). `errno` is the OS error number, or None."""


_SAFETENSORS_IO = re.compile(r"I/O error: (?P<reason>.*?) \(os error (?P<errno>\d+)\)(?: at path \"(?P<path>.*)\")?")


def explain_file_error(exc: BaseException, where: Optional[Path | str] = None) -> Optional[FileSystemError]:
    """A file-system error (read-only or full disk, permission, ...) as a `LoffError` whose
    text is one line, "cannot write FILE: No space left on device". None when `exc` is no
    such error.

    Besides OSError this recognises safetensors' I/O errors (a Rust error type whose text
    carries the OS error). An error that names no file is said to be about `where` (the
    folder or file being written). Every write in the engine goes through a temporary file
    renamed over its target, so such an error leaves the files already written as they were."""
    if isinstance(exc, OSError):
        code, reason = exc.errno, exc.strerror
        filename = exc.filename if exc.filename is not None else exc.filename2
    else:
        match = _SAFETENSORS_IO.search(str(exc)) if type(exc).__name__ == "SafetensorError" else None
        if match is None:
            return None
        code, reason, filename = int(match["errno"]), match["reason"], match["path"]
    if not reason:  # e.g. h5py: an OSError with only a message
        reason = one_line(str(exc)) or type(exc).__name__
    from .fsutil import WRITE_ERRNOS

    verb = "cannot write" if code in WRITE_ERRNOS else "cannot access"
    if filename is None:
        if code is None:
            error = FileSystemError(one_line(reason))
        else:
            error = FileSystemError(f"{verb} {'in ' + str(where) if where is not None else 'a file'}: {reason}")
    else:
        error = FileSystemError(one_line(f"{verb} {os.fsdecode(filename)}: {reason}"))
    error.errno = code
    return error


def one_line(text: str) -> str:
    """A message on one line (the CLI prints one line per error)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())



def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (torch.cuda.OutOfMemoryError or the older RuntimeError),
    recognised without importing torch."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
