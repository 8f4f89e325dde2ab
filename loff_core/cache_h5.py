"""The feature cache's crash-safe HDF5 layer (split out of cache.py, issue 10): files are
written through a Python file object that records the first OS error and never hands it
back into HDF5 (a full disk ends with a clear CacheError, not a crash in HDF5's close);
signals are deferred while HDF5 runs; shards are written to a temporary name and renamed;
merge temps of killed runs are removed."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .fsutil import pid_alive


FORMAT_VERSION = 1
_STR = None  # h5py string dtype, created lazily


def _h5py() -> Any:
    import h5py

    return h5py


def _shard_name(k: int, ids: list[str]) -> str:
    digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:10]
    return f"{k:06d}-{digest}.h5"


class _TempTarget:
    """The file under a new HDF5 file (h5py's 'fileobj' driver), so that a full disk can
    never leave HDF5 with a file it cannot close.

    With HDF5's own driver a write error (ENOSPC, EFBIG) also fails the flush when the file
    closes; HDF5 keeps half-closed datasets, touches them again when Python frees them
    (traceback frames, interpreter exit) and the process segfaults. Here no call ever fails
    towards HDF5 (h5py's driver cannot pass a Python exception through HDF5 either): the
    first OS error is kept in `error`, and from then on writes go to a small in-memory
    overlay (reads see it), so HDF5 closes cleanly; the writer checks `error` after each
    step, stops, and the temp file is deleted."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.pos = 0
        self.size = 0  # logical end of file (the disk file can be shorter after an error)
        self.error: Optional[OSError] = None
        self.overlay: list[tuple[int, bytes]] = []

    def check(self) -> None:
        if self.error is not None:
            raise OSError(self.error.errno, self.error.strerror)

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = self.size if whence == 2 else pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as exc:
                self.error = exc
        if self.error is not None:
            self.overlay.append((self.pos, bytes(view)))
        self.pos += len(view)
        self.size = max(self.size, self.pos)
        return len(view)

    def read(self, size: int) -> bytes:
        buf = bytearray()
        if self.pos < self.size:
            try:
                buf += os.pread(self.fd, size, self.pos)
            except OSError as exc:
                self.error = self.error or exc
        buf += bytes(size - len(buf))  # past the end reads as zeros, as with HDF5's sec2 driver
        for off, b in self.overlay:
            lo, hi = max(off, self.pos), min(off + len(b), self.pos + size)
            if lo < hi:
                buf[lo - self.pos:hi - self.pos] = b[lo - off:hi - off]
        self.pos += size
        return bytes(buf)

    def truncate(self, size: int) -> int:
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self.error = exc
        self.size = size
        return size

    def flush(self) -> None:
        pass


def _defer_signals(pending: list[tuple[int, Any]]) -> dict[int, Any]:
    """Python signal handlers (Ctrl-C's KeyboardInterrupt) would raise inside _TempTarget's
    callbacks, i.e. inside HDF5, with the same crash as above. Until restored, signals are
    only recorded in `pending`; returns the handlers to call later. Main thread only (no
    other thread runs Python signal handlers)."""
    old: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return old
    for sig in [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]:
        handler = signal.getsignal(sig)
        if callable(handler):
            old[sig] = handler
            signal.signal(sig, lambda s, frame: pending.append((s, frame)))
    return old


def _create_h5(tmp: Path, fill: Callable[[Any, Callable[[], None]], None]) -> None:
    """Write a new HDF5 file `tmp` with fill(file, check) and fsync it; fill calls check()
    after each large write. On an OS error (full disk) HDF5 still closes cleanly, `tmp` is
    removed and the first OSError raised."""
    h5py = _h5py()
    pending: list[tuple[int, Any]] = []
    handlers = _defer_signals(pending)

    def deliver() -> None:  # the deferred signals, raised here in Python, outside HDF5
        while pending:
            sig, frame = pending.pop(0)
            handlers[sig](sig, frame)

    def check() -> None:
        deliver()
        target.check()
    try:
        target = _TempTarget(tmp)
        try:
            try:
                with h5py.File(target, "w") as f:
                    fill(f, check)
            except Exception:
                if target.error is None:
                    raise
            target.check()
            os.fsync(target.fd)
        except BaseException:
            os.close(target.fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(target.fd)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    deliver()  # a signal that came while the file closed


def block_datasets(i: int) -> tuple[str, str]:
    """The (cls, tokens) dataset names of a cache's i-th block: the first (the default block)
    in `cls` / `tokens`, where caches of one block always kept them (so readers of one block
    read it as before), the others in `blocks/<i>/`."""
    return ("cls", "tokens") if i == 0 else (f"blocks/{i}/cls", f"blocks/{i}/tokens")


def _write_shard(path: Path, ids: list[str], cls: np.ndarray, tokens: np.ndarray,
                 failures: list[tuple[str, str]], extra: tuple[tuple[np.ndarray, np.ndarray], ...] = ()) -> None:
    """One finished batch: temp file + fsync + rename, so a shard exists whole or not at all.
    `extra`: (cls, tokens) of the blocks after the first."""
    h5py = _h5py()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def fill(f: Any, check: Callable[[], None]) -> None:
        f.create_dataset("image_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("cls", data=cls)
        f.create_dataset("tokens", data=tokens)
        for i, (c, t) in enumerate(extra, start=1):
            f.create_dataset(block_datasets(i)[0], data=c)
            f.create_dataset(block_datasets(i)[1], data=t)
        f.create_dataset("failed_ids", data=np.array([i for i, _ in failures], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("failed_reasons", data=np.array([r for _, r in failures], dtype=object),
                         dtype=h5py.string_dtype())
        f.attrs["done"] = 1
    try:
        _create_h5(tmp, fill)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_shard(path: Path) -> Optional[tuple[list[str], list[tuple[str, str]]]]:
    h5py = _h5py()
    try:
        with h5py.File(path, "r", locking=False) as f:
            if not f.attrs.get("done"):
                return None
            return _strings(f["image_ids"]), _failures(f)
    except (OSError, KeyError):
        return None


def _read_failed(final: Path) -> list[tuple[str, str]]:
    """(image id, reason) of the files a finished cache could not decode (none for caches
    written before they were recorded)."""
    h5py = _h5py()
    with h5py.File(final, "r", locking=False) as f:
        return _failures(f) if "failed_ids" in f else []


def _strings(dataset: Any) -> list[str]:
    """An HDF5 string dataset as Python strings (h5py gives bytes)."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in dataset[:]]


def _failures(f: Any) -> list[tuple[str, str]]:
    """(image id, reason) pairs stored in a shard or a finished cache."""
    return list(zip(_strings(f["failed_ids"]), _strings(f["failed_reasons"])))


_pid_alive = pid_alive  # (portable: see fsutil)


def _remove_stale_temps(folder: Path, prefix: str) -> None:
    """Delete `<prefix>...<pid>.tmp` files left by a killed writer (a SIGKILL during the merge
    leaves a temp file as big as the cache, which nothing else removes). Files of a live
    process are kept: that process may still be writing them."""
    try:
        names = [p for p in Path(folder).iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return
    for path in names:
        pid = path.name[:-len(".tmp")].rpartition(".")[2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            try:
                path.unlink()
            except OSError:
                pass


def cache_path_for(caches_dir: Path, fingerprint: str) -> Path:
    return Path(caches_dir) / f"{fingerprint}.h5"


def summary_path_for(cache_path: Path) -> Path:
    """`<fingerprint>.json` beside the cache: what it holds, readable without h5py."""
    return Path(cache_path).with_suffix(".json")
