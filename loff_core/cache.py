"""The HDF5 feature cache: run the frozen backbone once per image, keep the tokens.

One file per backbone fingerprint, `caches/<fingerprint>.h5`:

    image_ids  [N]          variable-length UTF-8 strings
    cls        [N, C]       float16, one image per chunk
    tokens     [N, h, w, C] float16, one image per chunk (no compression: gzip made writes
                            13x slower here for 15% less space)
    attrs      fingerprint, backbone (JSON of FrozenBackbone.describe()), format_version,
               created, done (written last)

Crash safety. HDF5 files can be corrupted by a kill in the middle of a write, so the big
file is never written in place. The work (images not yet in the final file, in catalog
order) is cut into fixed batches; each finished batch becomes a shard file in
`caches/<fingerprint>.parts/` (written to a temporary name, then renamed). A re-run after
a kill finds the same plan, skips the batches whose shard exists and computes the others
with exactly the same batch composition, so the result is identical bit for bit to an
uninterrupted run. At the end all shards (and the previous final file, if any) are merged
into a temporary file that is renamed over `<fingerprint>.h5`, then the shards go.

Decoding and resizing run in DataLoader worker processes so the backbone does not wait
for the disk; a CUDA out-of-memory error halves the batch and retries (the user is told).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .catalog import ImportFailure
from .errors import CacheError, Remedy, UnreadableImage, is_out_of_memory
from .features import InMemoryFeatures, _IdIndex
from .fsutil import pid_alive
from .progress import Progress
from .settings import ExtractSettings

FORMAT_VERSION = 1
_STR = None  # h5py string dtype, created lazily
# Tests set this to a callable(stage, n) that raises to simulate CUDA OOM (stage "forward", n = batch
# size) or a full disk (stage "write", n = batch number).
_FAULT_INJECTOR: Optional[Callable[[str, int], None]] = None


def _h5py() -> Any:
    import h5py

    return h5py


def cache_path_for(caches_dir: Path, fingerprint: str) -> Path:
    return Path(caches_dir) / f"{fingerprint}.h5"


def summary_path_for(cache_path: Path) -> Path:
    """`<fingerprint>.json` beside the cache: what it holds, readable without h5py."""
    return Path(cache_path).with_suffix(".json")


class FeatureCache(_IdIndex):
    """A finished cache file (read side). Implements `features.FeatureSource`."""

    def __init__(self, path: Path, handle: Any):
        self.path = Path(path)
        self._h = handle
        self.fingerprint = str(handle.attrs["fingerprint"])
        from .trust import parse_json

        self.backbone = parse_json(str(handle.attrs["backbone"]))
        self.image_ids = _strings(handle["image_ids"])
        self._cls = handle["cls"]
        self._tokens = handle["tokens"]
        n, h, w, c = self._tokens.shape
        self.feature_dim = int(c)
        self.grid_hw = (int(h), int(w))
        self._build_index()

    def _check(self, expected_fingerprint: Optional[str]) -> None:
        """What the file says about itself must agree: its name, its recorded fingerprint,
        the fingerprint its recorded backbone gives, and the shapes of its datasets."""
        from .backbones import fingerprint_of, identity_of

        name = expected_fingerprint if expected_fingerprint is not None else self.path.name.split(".")[0]
        if self.fingerprint != name:
            raise CacheError(f"{self.path}: the file records fingerprint {self.fingerprint[:40]!r}, not the "
                             f"{name!r} its name says (a cache copied under another name); not used")
        b = self.backbone
        if not isinstance(b, dict) or fingerprint_of(identity_of(b)) != self.fingerprint:
            raise CacheError(f"{self.path}: the backbone recorded in the cache does not give its fingerprint "
                             f"(the file was altered); not used")
        n = len(self.image_ids)
        if (b.get("feature_dim") not in (None, self.feature_dim)
                or list(b.get("grid_hw") or self.grid_hw) != list(self.grid_hw)):
            raise CacheError(f"{self.path}: tokens are {self.feature_dim} wide on a {self.grid_hw} grid but the "
                             f"backbone {b.get('name')} gives {b.get('feature_dim')} on {b.get('grid_hw')}; not used")
        if self._tokens.shape[0] != n or tuple(self._cls.shape) != (n, self.feature_dim):
            raise CacheError(f"{self.path}: image_ids, cls and tokens have different lengths or widths "
                             f"({n}, {tuple(self._cls.shape)}, {tuple(self._tokens.shape)}); the cache is damaged")
        if len(self._row) != n:
            raise CacheError(f"{self.path}: the same image id appears twice; the cache is damaged")

    def _check_finite(self, cls: np.ndarray, tokens: np.ndarray, idx: np.ndarray) -> None:
        bad = ~(np.isfinite(cls).all(axis=1) & np.isfinite(tokens.reshape(len(tokens), -1)).all(axis=1))
        if bad.any():
            first = self.image_ids[int(idx[int(np.flatnonzero(bad)[0])])]
            raise CacheError(f"{self.path}: cached features of image {first} hold NaN or infinity; the cache is "
                             f"damaged: delete it and extract again")

    @classmethod
    def open(cls, path: Path | str, expected_fingerprint: Optional[str] = None) -> "FeatureCache":
        h5py = _h5py()
        path = Path(path)
        try:
            handle = h5py.File(path, "r", locking=False)
        except OSError as exc:
            raise CacheError(f"{path}: not a readable feature cache ({exc})") from None
        try:
            if not handle.attrs.get("done"):
                raise CacheError("feature cache is unfinished", path, Remedy.EXTRACT_AGAIN)
            if int(handle.attrs.get("format_version", 0)) > FORMAT_VERSION:
                raise CacheError(f"{path}: written by a newer LOFF Studio (cache format "
                                 f"{handle.attrs.get('format_version')})")
            cache = cls(path, handle)
            cache._check(expected_fingerprint)
            return cache
        except (KeyError, ValueError, TypeError) as exc:
            handle.close()
            raise CacheError(f"{path}: feature cache is damaged ({exc})") from None
        except CacheError:
            handle.close()
            raise

    def close(self) -> None:
        self._h.close()

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cls [B,C] and grid [B,C,h,w], float16. Reads one image at a time (h5py fancy
        indexing was 20x slower than this loop on one-image chunks)."""
        idx = np.asarray(indices, dtype=np.int64)
        h, w = self.grid_hw
        cls = np.empty((len(idx), self.feature_dim), dtype=np.float16)
        tokens = np.empty((len(idx), h, w, self.feature_dim), dtype=np.float16)
        for j, i in enumerate(idx):
            self._cls.read_direct(cls, np.s_[i:i + 1], np.s_[j:j + 1])
            self._tokens.read_direct(tokens, np.s_[i:i + 1], np.s_[j:j + 1])
        self._check_finite(cls, tokens, idx)
        return cls, tokens.transpose(0, 3, 1, 2)

    def nbytes_per_image(self) -> int:
        h, w = self.grid_hw
        return (h * w * self.feature_dim + self.feature_dim) * 2

    def nbytes(self) -> int:
        return self.nbytes_per_image() * len(self.image_ids)

    def to_memory(self) -> InMemoryFeatures:
        """The whole cache in RAM (grid as [N,C,h,w] float16)."""
        cls = self._cls[:]
        tokens = np.ascontiguousarray(self._tokens[:].transpose(0, 3, 1, 2))
        step = 64
        for s in range(0, len(cls), step):  # in steps: the boolean masks stay small
            self._check_finite(cls[s:s + step], tokens[s:s + step], np.arange(s, min(s + step, len(cls))))
        return InMemoryFeatures(self.image_ids, cls, tokens)


@dataclass
class ExtractResult:
    cache_path: Path
    extracted: int
    skipped: int
    failures: list[ImportFailure] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False
    batch_size: int = 0
    notes: list[str] = field(default_factory=list)


# -- extraction ------------------------------------------------------------------------
class _DecodeDataset:
    """(index, preprocessed image or None, reason) for items[index]; runs in workers."""

    def __init__(self, paths: list[str], preprocessor: Any):
        self.paths = paths
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Optional[np.ndarray], str]:
        from .images import decode_max_side, load_pixels

        try:
            pixels = load_pixels(Path(self.paths[index]), decode_max_side(self.preprocessor.image_size))
            return index, self.preprocessor(pixels), ""
        except UnreadableImage as exc:
            return index, None, exc.reason
        except MemoryError:
            return index, None, "image too large to decode in memory"
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - one bad file must not stop the run
            return index, None, f"could not be decoded ({type(exc).__name__}: {exc})"


def _collate(samples: list[tuple[int, Optional[np.ndarray], str]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    import torch

    good = [(i, x) for i, x, _ in samples if x is not None]
    bad = [(i, r) for i, x, r in samples if x is None]
    batch = torch.from_numpy(np.stack([x for _, x in good])) if good else None
    return [i for i, _ in good], batch, bad


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


def _write_shard(path: Path, ids: list[str], cls: np.ndarray, tokens: np.ndarray,
                 failures: list[tuple[str, str]]) -> None:
    """One finished batch: temp file + fsync + rename, so a shard exists whole or not at all."""
    h5py = _h5py()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def fill(f: Any, check: Callable[[], None]) -> None:
        f.create_dataset("image_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("cls", data=cls)
        f.create_dataset("tokens", data=tokens)
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


def _worker_init(_worker_id: int) -> None:
    """A decode worker does not keep the parent's project lock alive (see fsutil)."""
    from .fsutil import close_inherited_locks

    close_inherited_locks()


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


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) under `torchrun`; (0, 1) otherwise. Sets up the process group
    (gloo on CPU, NCCL on GPUs) the first time."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("LOFF_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def extract_features(items: list[tuple[str, Path]], spec: Any, caches_dir: Path, *, device: str = "auto",
                     batch_size: int = ExtractSettings.batch_size, num_workers: Optional[int] = None,
                     progress: Progress = Progress()) -> ExtractResult:
    """Cache CLS + token grids for every (image_id, path) not cached yet; see the module docstring."""
    import torch

    from .backbones import load_backbone

    started = time.monotonic()
    if batch_size < 1:
        raise CacheError("batch size must be at least 1")
    caches_dir = Path(caches_dir)
    try:
        caches_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"{caches_dir}: cannot create the cache folder ({exc.strerror or exc})") from None
    progress.report(0, len(items), "loading backbone")
    rank, world = distributed_rank_world()
    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    backbone = load_backbone(spec, device=device)
    final = cache_path_for(caches_dir, backbone.fingerprint)
    parts = caches_dir / f"{backbone.fingerprint}.parts"
    if rank == 0:  # only rank 0 merges; other ranks may be writing shards right now
        _remove_stale_temps(caches_dir, f".{final.name}.")
        if world == 1:
            _remove_stale_temps(parts, ".")

    done_ids: set[str] = set()
    failed_before: list[tuple[str, str]] = []
    if final.exists():
        try:
            with FeatureCache.open(final, expected_fingerprint=backbone.fingerprint) as old:
                done_ids = set(old.image_ids)
            failed_before = _read_failed(final)
        except CacheError:
            final.unlink()  # an unfinished final file can only come from a foreign writer; redo it
    # files that could not be decoded are remembered in the cache and not tried again: an
    # image id names one file content (path, size, mtime), so a fixed file gets a new id
    wanted = {image_id for image_id, _ in items}
    failed_before = [(i, r) for i, r in failed_before if i in wanted]
    work: list[tuple[str, Path]] = []
    seen: set[str] = done_ids | {i for i, _ in failed_before}
    for image_id, path in items:
        if image_id not in seen:
            seen.add(image_id)
            work.append((image_id, Path(path)))
    plan = [work[k:k + batch_size] for k in range(0, len(work), batch_size)]
    names = [_shard_name(k, [i for i, _ in batch]) for k, batch in enumerate(plan)]
    try:
        parts.mkdir(exist_ok=True)
    except OSError as exc:
        raise CacheError(f"{parts}: cannot write the cache ({exc.strerror or exc})") from None
    finished = {k for k, name in enumerate(names) if (parts / name).exists() and _read_shard(parts / name) is not None}
    # under torchrun each process takes every world-th batch of the same plan
    todo = [k for k in range(len(plan)) if k not in finished and k % world == rank]
    skipped_images = sum(len(plan[k]) for k in finished)
    total = len(work)
    done_count = skipped_images
    notes: list[str] = []
    path_of = {i: str(p) for i, p in items}
    progress.report(done_count, total, f"{len(done_ids)} images already cached; {total - done_count} to go")

    extracted, stopped = 0, False
    if todo:
        flat_paths = [str(p) for _, p in work]
        dataset = _DecodeDataset(flat_paths, backbone.preprocessor)
        batches = [[k * batch_size + j for j in range(len(plan[k]))] for k in todo]
        workers = _default_workers() if num_workers is None else max(0, num_workers)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
            pin_memory=backbone.device.type == "cuda", prefetch_factor=4 if workers else None,
            persistent_workers=False, worker_init_fn=_worker_init,
        )
        sub_batch = batch_size
        t0 = time.monotonic()
        try:
            for k, (indices, batch, bad) in zip(todo, loader):
                progress.check()
                ids = [work[i][0] for i in indices]
                bad_named = [(work[i][0], r) for i, r in bad]
                if batch is None:
                    cls = np.zeros((0, backbone.feature_dim), np.float16)
                    tokens = np.zeros((0, *backbone.grid_hw, backbone.feature_dim), np.float16)
                else:
                    cls, tokens, sub_batch = _forward_with_retry(backbone, batch, sub_batch, progress, notes)
                try:
                    if _FAULT_INJECTOR is not None:
                        _FAULT_INJECTOR("write", k)
                    _write_shard(parts / names[k], ids, cls, tokens, bad_named)
                except OSError as exc:
                    raise CacheError(
                        f"{parts}: cannot write features ({exc.strerror or exc}); the {done_count} images "
                        f"finished so far are kept; free space or choose another project folder and run "
                        f"extract again to resume") from None
                extracted += len(ids)
                done_count += len(plan[k]) * (world if world > 1 else 1)
                done_count = min(done_count, total)
                rate = extracted * world / max(time.monotonic() - t0, 1e-9)
                left = (total - done_count) / rate if rate > 0 else 0
                progress.report(done_count, total, f"{rate:.1f} img/s, {left:.0f} s left")
                if progress.stop_requested:
                    stopped = True
                    break
        finally:
            del loader

    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank != 0:  # rank 0 merges the shards of all processes into one cache
            dist.barrier()
            return ExtractResult(cache_path=final, extracted=extracted, skipped=skipped_images,
                                 seconds=time.monotonic() - started, batch_size=batch_size, notes=notes)
    present = [n for n in names if (parts / n).exists()]
    failures: list[tuple[str, str]] = list(failed_before)
    for name in present:
        got = _read_shard(parts / name)
        if got:
            failures += got[1]
    if plan and present:
        _merge(final, parts, present, backbone)
    elif not final.exists():
        _merge(final, parts, [], backbone)  # nothing readable: an empty, finished cache
    if not plan:
        shutil.rmtree(parts, ignore_errors=True)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return ExtractResult(
        cache_path=final, extracted=extracted, skipped=len(items) - len(work) + skipped_images,
        failures=[ImportFailure(path_of.get(i, i), r) for i, r in failures],
        seconds=time.monotonic() - started, stopped=stopped, batch_size=batch_size, notes=notes,
    )


def _forward_with_retry(backbone: Any, batch: Any, sub_batch: int, progress: Progress,
                        notes: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Forward a batch in pieces of `sub_batch`; on CUDA OOM halve the piece and retry."""
    import torch

    while True:
        try:
            cls_parts, grid_parts = [], []
            for s in range(0, len(batch), sub_batch):
                if _FAULT_INJECTOR is not None:
                    _FAULT_INJECTOR("forward", sub_batch)
                cls, grid = backbone.tokens(batch[s:s + sub_batch])
                cls_parts.append(cls.to(torch.float16).cpu().numpy())
                grid_parts.append(grid.permute(0, 2, 3, 1).to(torch.float16).cpu().numpy())
            return np.concatenate(cls_parts), np.ascontiguousarray(np.concatenate(grid_parts)), sub_batch
        except Exception as exc:  # noqa: BLE001
            if not is_out_of_memory(exc):
                raise
            if backbone.device.type == "cuda":
                torch.cuda.empty_cache()
            if sub_batch <= 1:
                raise CacheError("GPU out of memory even with one image per batch",
                                 remedy=Remedy.SMALLER_BACKBONE_OR_CPU) from None
            sub_batch = max(1, sub_batch // 2)
            message = f"GPU out of memory: retrying with batch size {sub_batch}"
            if message not in notes:
                notes.append(message)
                progress.notice(message)


def _merge(final: Path, parts: Path, shard_names: list[str], backbone: Any) -> None:
    """Previous final file + shards -> new final file (temp + rename), then drop the shards.

    Sources are opened one at a time (a count pass, then a copy pass): with thousands of
    shards, holding them all open ran out of file descriptors and cost ~1 GB of HDF5
    chunk caches at 20k images."""
    h5py = _h5py()
    sources: list[tuple[Path, int]] = []
    failed: list[tuple[str, str]] = []
    if final.exists():  # finished (extract removed an unfinished one): its features are kept
        with h5py.File(final, "r", locking=False) as h:
            sources.append((final, len(h["image_ids"])))
        failed += _read_failed(final)
    for name in shard_names:
        path = parts / name
        if path.exists():
            with h5py.File(path, "r", locking=False) as h:
                sources.append((path, len(h["image_ids"])))
            got = _read_shard(path)
            failed += got[1] if got else []
    n = sum(count for _, count in sources)
    c = backbone.feature_dim
    gh, gw = backbone.grid_hw
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")

    def fill(out: Any, check: Callable[[], None]) -> None:
        ids_ds = out.create_dataset("image_ids", shape=(n,), dtype=h5py.string_dtype())
        # one image per chunk; an empty cache (no readable image) cannot have chunks
        cls_ds = out.create_dataset("cls", shape=(n, c), dtype=np.float16, chunks=(1, c) if n else None)
        tok_ds = out.create_dataset("tokens", shape=(n, gh, gw, c), dtype=np.float16,
                                    chunks=(1, gh, gw, c) if n else None)
        out.create_dataset("failed_ids", data=np.array([i for i, _ in failed], dtype=object),
                           dtype=h5py.string_dtype())
        out.create_dataset("failed_reasons", data=np.array([r for _, r in failed], dtype=object),
                           dtype=h5py.string_dtype())
        row = 0
        step = max(1, min(256, (32 << 20) // max(1, gh * gw * c * 2)))  # <= 32 MB a step
        for path, count in sources:
            with h5py.File(path, "r", locking=False) as h:
                for s in range(0, count, step):
                    e = min(count, s + step)
                    ids_ds[row + s:row + e] = h["image_ids"][s:e]
                    cls_ds[row + s:row + e] = h["cls"][s:e]
                    tok_ds[row + s:row + e] = h["tokens"][s:e]
                    check()  # stop at the first failed write (full disk)
            row += count
        out.attrs["fingerprint"] = backbone.fingerprint
        out.attrs["backbone"] = json.dumps(backbone.describe(), sort_keys=True)
        out.attrs["format_version"] = FORMAT_VERSION
        out.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        out.attrs["done"] = 1
    try:
        _create_h5(tmp, fill)  # removes tmp itself on any failure
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CacheError(f"{final}: cannot write the feature cache ({exc.strerror or exc}); the finished "
                         f"batches are kept in {parts.name}/ and extract resumes from them") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    from .fsutil import atomic_write_json

    # a small summary beside the cache, so the app can show it without opening HDF5
    atomic_write_json(summary_path_for(final), {
        "fingerprint": backbone.fingerprint, "backbone": backbone.describe(), "images": n,
        "grid_hw": list(backbone.grid_hw), "feature_dim": backbone.feature_dim,
        "bytes_per_image": (gh * gw * c + c) * 2,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    shutil.rmtree(parts, ignore_errors=True)
