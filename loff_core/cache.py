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

This module plans and runs an extraction (`extract_features`: the batch plan, decoding in
worker processes, the forward pass with out-of-memory retry). The reader is in
`cache_reader.py`, the crash-safe HDF5 layer in `cache_h5.py`, the merge and torchrun
ranks in `cache_merge.py`; their public and test-visible names are re-exported here, so
`from loff_core.cache import FeatureCache, extract_features, distributed_rank_world` works
as before.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .catalog import ImportFailure
from .errors import CacheError, Remedy, UnreadableImage, is_out_of_memory
from .progress import Progress
from .settings import ExtractSettings
# re-exported: the old import paths keep working (tests wrap cache._write_shard)
from .cache_h5 import (FORMAT_VERSION, _create_h5, _defer_signals, _failures, _h5py, _pid_alive,  # noqa: F401
                       _read_failed, _read_shard, _remove_stale_temps, _shard_name, _strings, _TempTarget,
                       _write_shard, cache_path_for, summary_path_for)
from .cache_merge import _merge, distributed_rank_world  # noqa: F401
from .cache_reader import FeatureCache  # noqa: F401


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


def _worker_init(_worker_id: int) -> None:
    """A decode worker does not keep the parent's project lock alive (see fsutil)."""
    from .fsutil import close_inherited_locks

    close_inherited_locks()


def _default_workers(device_type: str = "cuda") -> int:
    """Decode worker processes. On a GPU up to 4 (the GPU waits for the disk otherwise); on
    the CPU the forward pass takes all the cores (engines.cpu_threads) and decoding is ~10 %
    of its time, so one worker when there are 2+ cores, none on 1 core (no oversubscription)."""
    from .engines import available_cores

    cores = available_cores()
    if device_type == "cpu":
        return 1 if cores >= 2 else 0
    return max(0, min(4, cores - 1))


#: an extraction whose estimate (from the timed first batch) is longer than this says so up front
ESTIMATE_NOTICE_SECONDS = 60.0


def extract_features(items: list[tuple[str, Path]], spec: Any, caches_dir: Path, *, device: str = "auto",
                     batch_size: int = ExtractSettings.batch_size, num_workers: Optional[int] = None,
                     engine: str = ExtractSettings.engine, progress: Progress = Progress()) -> ExtractResult:
    """Cache CLS + token grids for every (image_id, path) not cached yet; see the module docstring."""
    import torch

    from .backbones import load_backbone
    from .engines import choose_engine
    from .progress import TimeLeft, format_duration

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
    engine_label = ""
    if todo:
        # decided on the whole plan, not on what is left: a resumed run uses the same engine
        forward = choose_engine(backbone, engine, notes, images=total)
        engine_label = forward.label
        flat_paths = [str(p) for _, p in work]
        dataset = _DecodeDataset(flat_paths, backbone.preprocessor)
        batches = [[k * batch_size + j for j in range(len(plan[k]))] for k in todo]
        workers = _default_workers(backbone.device.type) if num_workers is None else max(0, num_workers)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
            pin_memory=backbone.device.type == "cuda", prefetch_factor=4 if workers else None,
            persistent_workers=False, worker_init_fn=_worker_init,
        )
        sub_batch = batch_size
        t0 = time.monotonic()
        to_do = total - done_count
        clock = TimeLeft(to_do, t0)
        try:
            for k, (indices, batch, bad) in zip(todo, loader):
                progress.check()
                ids = [work[i][0] for i in indices]
                bad_named = [(work[i][0], r) for i, r in bad]
                if batch is None:
                    blocks = [(np.zeros((0, dim), np.float16), np.zeros((0, *hw, dim), np.float16))
                              for dim, hw in backbone.block_shapes]
                else:
                    blocks, sub_batch = _forward_with_retry(backbone, batch, sub_batch, progress, notes, forward)
                try:
                    _write_shard(parts / names[k], ids, blocks[0][0], blocks[0][1], bad_named, tuple(blocks[1:]))
                except OSError as exc:
                    raise CacheError(
                        f"{parts}: cannot write features ({exc.strerror or exc}); the {done_count} images "
                        f"finished so far are kept; free space or choose another project folder and run "
                        f"extract again to resume") from None
                extracted += len(ids)
                done_count += len(plan[k]) * (world if world > 1 else 1)
                done_count = min(done_count, total)
                now = time.monotonic()
                clock.update(extracted * world, now)
                left = clock.seconds_left() or 0.0
                if clock.batches == 1 and to_do > len(ids) * world:  # the first batch, timed: say the cost
                    estimate = (now - t0) / max(1, extracted * world) * to_do
                    message = (f"first batch: {now - t0:.1f} s for {extracted * world} images ({engine_label}); "
                               f"about {format_duration(estimate)} for the {to_do} images")
                    if estimate >= ESTIMATE_NOTICE_SECONDS:
                        notes.append(message)
                        progress.notice(message)
                    else:
                        progress.report(done_count, total, message)
                else:
                    progress.report(done_count, total, f"{clock.rate:.1f} img/s, {format_duration(left)} left")
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
        _merge(final, parts, present, backbone, engine_label)
    elif not final.exists():
        _merge(final, parts, [], backbone, engine_label)  # nothing readable: an empty, finished cache
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
                        notes: list[str], forward: Any = None) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Forward a batch in pieces of `sub_batch` with `forward` (an engine; default: the
    backbone's own torch forward): [(cls [B,C], tokens [B,h,w,C]) float16 per block]; on CUDA
    OOM halve the piece and retry."""
    import torch

    forward = forward or backbone.blocks_tokens
    while True:
        try:
            parts: list[list[tuple[np.ndarray, np.ndarray]]] = []
            for s in range(0, len(batch), sub_batch):
                parts.append([(cls.to(torch.float16).cpu().numpy(),
                               grid.permute(0, 2, 3, 1).to(torch.float16).cpu().numpy())
                              for cls, grid in forward(batch[s:s + sub_batch])])
            blocks = [(np.concatenate([p[i][0] for p in parts]),
                       np.ascontiguousarray(np.concatenate([p[i][1] for p in parts])))
                      for i in range(len(parts[0]))]
            return blocks, sub_batch
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
