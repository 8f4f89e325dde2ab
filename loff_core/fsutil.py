"""Crash-safe file writes: write to a temporary file beside the target, fsync, rename; and the
two small helpers every record written to a project uses (a UTC time stamp, a relative path)."""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


@contextmanager
def atomic_path(target: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces the target.

    A crash or an exception leaves the old target untouched and removes the temporary.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    except OSError as exc:
        raise _naming(exc, target, None) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        named = _naming(exc, target, tmp_path)
        if named is exc:
            raise
        raise named from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # "cannot write" errors


def _naming(exc: OSError, target: Path, tmp: Path | None) -> OSError:
    """The error as the user should read it: about the target, not the hidden temporary
    (a full disk on write() names no file at all)."""
    name = exc.filename
    if name is not None:
        about_tmp = tmp is not None and os.fsdecode(name) == str(tmp)
        if tmp is None:  # mkstemp names the temporary it tried to create
            base = os.path.basename(os.fsdecode(name))
            about_tmp = base.startswith(f".{target.name}.") and base.endswith(".tmp")
    else:
        about_tmp = tmp is None or exc.errno in WRITE_ERRNOS
    if about_tmp:
        return OSError(exc.errno, exc.strerror or str(exc), str(target)) if exc.errno is not None else exc
    return exc


def atomic_write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: Path | str, data: Any) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: file descriptors of the project locks this process holds (`Project.lock`). Processes
#: forked while one is held (decode workers) share the lock; they close their copies at
#: start (`close_inherited_locks`), so a killed parent's lock ends with it, not seconds
#: later with its orphaned workers.
HELD_LOCK_FDS: set[int] = set()


def close_inherited_locks() -> None:
    """In a forked child: drop the copies of the parent's lock descriptors (the parent
    keeps its lock; a flock ends when its last descriptor is closed)."""
    for fd in list(HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    HELD_LOCK_FDS.clear()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id is running (a writer that may still use its temporary
    files). Portable: on Windows `os.kill(pid, 0)` would terminate the process, so the
    process is opened and its exit code asked instead."""
    if pid == os.getpid():
        return True
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: exists, another user's
        try:
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def utc_now() -> str:
    """The time stamp records carry ("started", "finished", "date"): UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def relative_or_none(path: Path, start: Path) -> Optional[str]:
    """`path` relative to `start` as a POSIX string, or None (another drive on Windows)."""
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return None


def sha256_file(path: Path | str, report: Optional[Callable[[int, int], None]] = None) -> str:
    """The SHA-256 of a file as hex, read 1 MiB at a time; `report(done, total)` after each block."""
    digest = hashlib.sha256()
    total, done = os.stat(path).st_size if report else 0, 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            if report is not None:
                done += len(block)
                report(done, total)
    return digest.hexdigest()
