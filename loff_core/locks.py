"""The project's reader / writer locks (issue 10, point 4).

Two lock files in the project folder:

* `.lock` - the **writer** lock (`Project.lock`): one process at a time changes the
  project (import, extract, train, calibrate, cv, tune). A second writer is refused at
  once with the owner's name. It is held for the whole job, hours for a long training.
* `.lock-readers` - the **commit** lock, a reader / writer lock (`filelock.ReadWriteLock`,
  SQLite transactions: Linux, macOS and Windows). Readers (`evaluate` of an existing run,
  `info`, `predict`, `export`, the viewer's explanations) hold it *shared* for as long as
  they read; a writer holds it *exclusively* only for the moments it replaces files readers
  read (the import's commit of catalog + settings, a settings save, a run folder appearing,
  a run's operating point). So a reader never waits for a long training (the writer lock
  is not involved), never sees an import half moved into place, and a writer's commit
  waits for the readers of that moment to finish (seconds), never the other way round for
  long.

What a reader writes itself (`eval-SPLIT.json`, `predictions-SPLIT.csv`, an export folder)
is written by temporary file + rename under the shared lock: two readers evaluating the
same run and split write the same numbers (fixed bootstrap seed), so whichever rename comes
last leaves a complete, correct file; no reader writes a file a writer reads.

A project on a read-only medium cannot hold the commit lock; nobody can change such a
project either, so readers then read without it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import ProjectError

COMMIT_LOCK_FILE = ".lock-readers"
#: how long a reader waits for a writer's commit (short: files being renamed into place)
READ_WAIT_S = 600.0

_local = threading.local()  # per thread: {lock path: [mode, depth, lock]}


def _held() -> dict[str, list[Any]]:
    held = getattr(_local, "held", None)
    if held is None:
        held = _local.held = {}
    return held


@contextmanager
def _hold(root: Path, mode: str, timeout: float) -> Iterator[bool]:
    """Hold the commit lock of `root` in `mode` ("read" / "write") in this thread; nested
    holds of the same mode in one thread are counted. Yields False when the lock could not
    be made (read-only location; readers only)."""
    path = str(Path(root) / COMMIT_LOCK_FILE)
    held = _held()
    mine = held.get(path)
    if mine is not None:
        if mine[0] != mode and mine[0] != "write":
            raise RuntimeError(f"{path}: a writer's commit inside a read of the same project in one thread")
        # the same mode again, or a reader inside a writer's commit: covered by the hold taken
        mine[1] += 1
        try:
            yield True
        finally:
            mine[1] -= 1
        return
    from filelock import ReadWriteLock, Timeout

    lock: Any = None
    try:
        lock = ReadWriteLock(path, timeout=-1, is_singleton=False)
        if mode == "read":
            lock.acquire_read(timeout)
        else:
            lock.acquire_write(timeout)
    except Timeout:
        _close(lock)
        raise ProjectError(f"{root}: the project is still being changed by another process after "
                           f"{timeout:.0f} s; try again when it has finished") from None
    except Exception as exc:  # noqa: BLE001 - sqlite3 / OS errors: a location nobody can write
        _close(lock)
        if mode != "read":
            raise ProjectError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
        lock = None  # a read-only location: nobody changes it, readers read without the lock
    if lock is None:
        yield False
        return
    held[path] = [mode, 1, lock]
    try:
        yield True
    finally:
        del held[path]
        try:
            lock.release()
        finally:
            _close(lock)


def _close(lock: Any) -> None:
    if lock is not None:
        try:
            lock.close()
        except Exception:  # noqa: BLE001 - closing a lock that was never taken
            pass


@contextmanager
def reading(root: Path, timeout: float = READ_WAIT_S) -> Iterator[bool]:
    """Hold the shared (reader) lock of the project at `root`; waits for a writer's commit
    in progress (never for a writer's job), up to `timeout` seconds."""
    with _hold(root, "read", timeout) as locked:
        yield locked


@contextmanager
def committing(root: Path) -> Iterator[None]:
    """Hold the commit lock of `root` exclusively while replacing files readers read;
    waits for the readers of this moment to finish."""
    with _hold(root, "write", -1):
        yield
