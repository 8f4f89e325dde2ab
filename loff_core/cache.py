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

Decoding, cropping and resizing run in DataLoader worker processes so the backbone does not
wait for the disk; a worker hands over the one-channel canvas and the batch is normalised to
the model's three channels where the forward runs (`Preprocessor.gray` / `normalize_batch`:
the same values as `Preprocessor.__call__`, a third of the bytes). On the CPU the forwards run
one batch ahead of the shard writes, ONNX Runtime after one warm-up run of the shape its runs
get. A CUDA out-of-memory error halves the batch and retries (the user is told).

This module plans and runs an extraction (`extract_features`: the batch plan, decoding in
worker processes, the forward pass with out-of-memory retry). The reader is in
`cache_reader.py` (`FeatureCache`), the crash-safe HDF5 layer in `cache_h5.py`, the merge
and torchrun ranks in `cache_merge.py` (`distributed_rank_world`); import each from its own
module.
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
from .cache_h5 import _read_failed, _read_shard, _remove_stale_temps, _shard_name, _write_shard, cache_path_for
from .cache_merge import _merge, distributed_rank_world
from .cache_reader import FeatureCache


@dataclass
class Extraction:
    """What `extract_features` did (the step's record is `results.ExtractResult`)."""

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
    """(index, the (S, S) canvas or None, reason) for items[index]; runs in workers."""

    def __init__(self, paths: list[str], preprocessor: Any):
        self.paths = paths
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Optional[np.ndarray], str]:
        from .images import decode_max_side, load_pixels

        try:
            pixels = load_pixels(Path(self.paths[index]), decode_max_side(self.preprocessor.image_size))
            # the canvas before normalisation (a third of the bytes to hand over; issue 20):
            # `_run_batches` normalises the batch where the forward runs
            return index, self.preprocessor.gray(pixels), ""
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


def decode_loader(paths: list[str], preprocessor: Any, batches: list[list[int]], workers: int, *,
                  pin_memory: bool = False) -> Any:
    """The DataLoader an extraction decodes with: batches of (indices, canvases, failures) of
    `paths`, decoded by `workers` processes (none: in this one). benchmarks/extraction.py
    times the same loader alone."""
    import torch

    return torch.utils.data.DataLoader(
        _DecodeDataset(paths, preprocessor), batch_sampler=batches, num_workers=workers, collate_fn=_collate,
        # batches in flight: 4 per worker for one or two, 2 each beyond (RAM: canvases of S x S)
        pin_memory=pin_memory, prefetch_factor=(4 if workers <= 2 else 2) if workers else None,
        persistent_workers=False,
        worker_init_fn=_worker_init,
    )


#: at most this many decode workers on the CPU (each holds one image's decode at its peak)
CPU_DECODE_WORKERS_MAX = 8


def _default_workers(device_type: str = "cuda") -> int:
    """Decode worker processes. On a GPU up to 4 (the GPU waits for the disk otherwise).

    On the CPU the forward's threads take every core (engines.cpu_threads) and one worker per
    core beside them, up to CPU_DECODE_WORKERS_MAX, decodes: one worker caps an extraction at
    1 / (its time per image) whatever the cores, 190 images/s for the benchmark's small DICOMs
    (5.3 ms each) and 7-15 for full-size mammograms (65-140 ms), while the forward alone runs
    far faster on many cores (docs/benchmarks.md, section 2). More workers add no decoding,
    they spread it: each image is decoded once, and a worker whose batches wait in the queue
    (`decode_loader`'s prefetch) sleeps, so cheap decoding leaves the cores to the forward.
    2 cores: one worker (a second was not faster on mini-MIAS: 8.8 against 8.0 s); 1 core:
    none (decoding runs between the forwards)."""
    from .engines import available_cores

    cores = available_cores()
    if device_type == "cpu":
        return max(0, min(CPU_DECODE_WORKERS_MAX, cores - 1))
    return max(0, min(4, cores - 1))


#: the CPU's warm-up forward (`_Pipeline.warm_up`) runs for extractions of at least this many batches
WARM_UP_MIN_BATCHES = 4
#: an extraction whose estimate (from the timed first batch) is longer than this says so up front
ESTIMATE_NOTICE_SECONDS = 60.0


def extract_features(items: list[tuple[str, Path]], spec: Any, caches_dir: Path, *, device: str = "auto",
                     batch_size: int = ExtractSettings.batch_size, num_workers: Optional[int] = None,
                     engine: str = ExtractSettings.engine, progress: Progress = Progress()) -> Extraction:
    """Cache CLS + token grids for every (image_id, path) not cached yet; see the module docstring."""
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
    backbone = _load_for_rank(spec, device, rank, world)
    final = cache_path_for(caches_dir, backbone.fingerprint)
    parts = caches_dir / f"{backbone.fingerprint}.parts"
    if rank == 0:  # only rank 0 merges; other ranks may be writing shards right now
        _remove_stale_temps(caches_dir, f".{final.name}.")
        if world == 1:
            _remove_stale_temps(parts, ".")
    plan = _Plan.make(items, final, parts, backbone.fingerprint, batch_size, rank, world)
    progress.report(plan.skipped_images, len(plan.work),
                    f"{plan.cached} images already cached; {len(plan.work) - plan.skipped_images} to go")
    notes: list[str] = []
    engine_label = ""
    extracted, stopped = 0, False
    if plan.todo:
        from .engines import choose_engine

        # decided on the whole plan, not on what is left: a resumed run uses the same engine
        def make_forward() -> Any:
            return choose_engine(backbone, engine, notes, images=len(plan.work))

        extracted, stopped, engine_label = _run_batches(plan, backbone, make_forward, num_workers, world, progress,
                                                        notes)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank != 0:  # rank 0 merges the shards of all processes into one cache
            dist.barrier()
            return Extraction(cache_path=final, extracted=extracted, skipped=plan.skipped_images,
                              seconds=time.monotonic() - started, batch_size=batch_size, notes=notes)
    failures = _finish(plan, final, backbone, engine_label)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    path_of = {i: str(p) for i, p in items}
    return Extraction(
        cache_path=final, extracted=extracted, skipped=len(items) - len(plan.work) + plan.skipped_images,
        failures=[ImportFailure(path_of.get(i, i), r) for i, r in failures],
        seconds=time.monotonic() - started, stopped=stopped, batch_size=batch_size, notes=notes,
    )


def _load_for_rank(spec: Any, device: str, rank: int, world: int) -> Any:
    """The frozen backbone; under torchrun each process on its own GPU (LOCAL_RANK)."""
    import torch

    from .backbones import load_backbone

    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    return load_backbone(spec, device=device)


@dataclass
class _Plan:
    """What an extraction does: the images not cached yet (`work`) in fixed batches (`batches`,
    shard `names`), which of them earlier runs finished, and this process's share (`todo`)."""

    work: list[tuple[str, Path]]
    batches: list[list[tuple[str, Path]]]
    names: list[str]
    finished: set[int]
    todo: list[int]
    failed_before: list[tuple[str, str]]
    cached: int  # images already in the final cache
    batch_size: int
    parts: Path  # the shards' folder

    @property
    def skipped_images(self) -> int:
        return sum(len(self.batches[k]) for k in self.finished)

    @classmethod
    def make(cls, items: list[tuple[str, Path]], final: Path, parts: Path, fingerprint: str, batch_size: int,
             rank: int, world: int) -> "_Plan":
        done_ids: set[str] = set()
        failed_before: list[tuple[str, str]] = []
        if final.exists():
            try:
                with FeatureCache.open(final, expected_fingerprint=fingerprint) as old:
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
        batches = [work[k:k + batch_size] for k in range(0, len(work), batch_size)]
        names = [_shard_name(k, [i for i, _ in batch]) for k, batch in enumerate(batches)]
        try:
            parts.mkdir(exist_ok=True)
        except OSError as exc:
            raise CacheError(f"{parts}: cannot write the cache ({exc.strerror or exc})") from None
        finished = {k for k, name in enumerate(names) if (parts / name).exists() and _read_shard(parts / name) is not None}
        # under torchrun each process takes every world-th batch of the same plan
        todo = [k for k in range(len(batches)) if k not in finished and k % world == rank]
        return cls(work, batches, names, finished, todo, failed_before, len(done_ids), batch_size, parts)


def _run_batches(plan: _Plan, backbone: Any, make_forward: Any, num_workers: Optional[int], world: int,
                 progress: Progress, notes: list[str]) -> tuple[int, bool, str]:
    """Decode (DataLoader workers), forward (the engine `make_forward()` prepares) and write
    one shard per batch of `plan.todo`; the cost said from the first batch, then a steady time
    left; returns (images extracted, stopped early, the engine's label). The decode workers
    start before the engine is prepared (ONNX Runtime: an export of about a second), so the
    first batches are decoded meanwhile (issue 20: fixed costs count on small sets)."""
    from .progress import TimeLeft

    total, done_count = len(plan.work), plan.skipped_images
    batches = [[k * plan.batch_size + j for j in range(len(plan.batches[k]))] for k in plan.todo]
    # by default no more workers than batches: each one's start (imports, ~0.3 s of CPU) is
    # wasted on a worker that gets nothing to decode
    workers = (min(_default_workers(backbone.device.type), len(batches)) if num_workers is None
               else max(0, num_workers))
    loader = decode_loader([str(p) for _, p in plan.work], backbone.preprocessor, batches, workers,
                           pin_memory=backbone.device.type == "cuda")
    extracted = 0
    sub_batch = [plan.batch_size]  # halved by a CUDA out-of-memory retry, for the batches after
    decoded = iter(loader)  # forks the workers, which start decoding now
    try:
        forward = make_forward()

        def compute(batch: Any) -> list[tuple[np.ndarray, np.ndarray]]:
            if batch is None:
                return [(np.zeros((0, dim), np.float16), np.zeros((0, *hw, dim), np.float16))
                        for dim, hw in backbone.block_shapes]
            batch = backbone.preprocessor.normalize_batch(batch.to(backbone.device, non_blocking=True))
            blocks, sub_batch[0] = _forward_with_retry(backbone, batch, sub_batch[0], progress, notes, forward)
            return blocks

        t0 = time.monotonic()  # the estimate times the forward passes, not the engine's preparation
        to_do = total - done_count
        clock = TimeLeft(to_do, t0)

        def write(k: int, indices: list[int], bad: list[tuple[int, str]], blocks: Any) -> None:
            nonlocal extracted, done_count
            ids = [plan.work[i][0] for i in indices]
            bad_named = [(plan.work[i][0], r) for i, r in bad]
            try:
                _write_shard(plan.parts / plan.names[k], ids, blocks[0][0], blocks[0][1], bad_named,
                             tuple(blocks[1:]))
            except OSError as exc:
                raise CacheError(
                    f"{plan.parts}: cannot write features ({exc.strerror or exc}); the {done_count} images "
                    f"finished so far are kept; free space or choose another project folder and run "
                    f"extract again to resume") from None
            extracted += len(ids)
            done_count = min(done_count + len(plan.batches[k]) * (world if world > 1 else 1), total)
            clock.update(extracted * world, time.monotonic())
            _report_batch(progress, clock, t0, extracted * world, to_do, len(ids) * world, done_count, total,
                          forward.label, notes)

        with _Pipeline(backbone.device.type == "cpu") as pipeline:
            if getattr(forward, "name", "") == "onnxruntime" and len(plan.todo) >= WARM_UP_MIN_BATCHES:
                pipeline.warm_up(forward, backbone.preprocessor.image_size, plan.batch_size)
            for k, (indices, batch, bad) in zip(plan.todo, decoded):
                progress.check()
                # on the CPU the next batch's forward runs while this one's shard is written
                for done in pipeline.push((k, indices, bad), compute, batch):
                    write(*done)
                if progress.stop_requested:
                    break
            for done in pipeline.drain():
                write(*done)
        if progress.stop_requested:
            return extracted, True, forward.label
    finally:
        del decoded, loader
    return extracted, False, forward.label


class _Pipeline:
    """The forward passes one batch ahead of the shard writes (CPU): `push` starts a batch's
    forward in a thread of its own and gives back the batch before it, computed, to write;
    `drain` the last one. Without `ahead` (CUDA: its out-of-memory retry halves the batches
    that follow) each forward ends before `push` returns."""

    def __init__(self, ahead: bool):
        self.pending: Optional[tuple[tuple[int, list[int], list[tuple[int, str]]], Any]] = None
        self.pool = None
        if ahead:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="loff-forward")

    def __enter__(self) -> "_Pipeline":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def warm_up(self, forward: Any, size: int, batch: int) -> None:
        """The engine's warm-up (`OnnxRuntimeEngine.warm_up`: one run of a black input of the
        shape its runs will get) while the decode workers make the first real batch: ONNX
        Runtime's first run of a shape is slower; the real forwards queue behind it in the
        same thread. Lite0, 1 thread, 320 images: 5.65 s instead of 6.34 s (medians of 6
        alternating runs)."""
        if self.pool is None:
            return
        self.pool.submit(forward.warm_up, batch, size)

    def push(self, key: tuple[int, list[int], list[tuple[int, str]]], compute: Any, batch: Any) -> list[Any]:
        if self.pool is None:
            return [(*key, compute(batch))]
        before = self.drain()
        self.pending = (key, self.pool.submit(compute, batch))
        return before

    def drain(self) -> list[Any]:
        if self.pending is None:
            return []
        key, future = self.pending
        self.pending = None
        return [(*key, future.result())]


def _report_batch(progress: Progress, clock: Any, t0: float, extracted: int, to_do: int, batch: int,
                  done_count: int, total: int, engine_label: str, notes: list[str]) -> None:
    """After the first batch, what the whole extraction will cost (a notice when it is long);
    then the rate and a steady time left."""
    from .progress import format_duration

    now = time.monotonic()
    if clock.batches == 1 and to_do > batch:  # the first batch, timed: say the cost
        estimate = (now - t0) / max(1, extracted) * to_do
        message = (f"first batch: {now - t0:.1f} s for {extracted} images ({engine_label}); "
                   f"about {format_duration(estimate)} for the {to_do} images")
        if estimate >= ESTIMATE_NOTICE_SECONDS:
            notes.append(message)
            progress.inform(message)
        else:
            progress.report(done_count, total, message)
    else:
        left = clock.seconds_left() or 0.0
        progress.report(done_count, total, f"{clock.rate:.1f} img/s, {format_duration(left)} left")


def _finish(plan: _Plan, final: Path, backbone: Any, engine_label: str = "") -> list[tuple[str, str]]:
    """Merge the shards into the final cache (rank 0); returns every (image id, reason) that
    could not be decoded, earlier runs' included."""
    parts = plan.parts
    present = [n for n in plan.names if (parts / n).exists()]
    failures: list[tuple[str, str]] = list(plan.failed_before)
    for name in present:
        got = _read_shard(parts / name)
        if got:
            failures += got[1]
    if plan.batches and present:
        _merge(final, parts, present, backbone, engine_label)
    elif not final.exists():
        _merge(final, parts, [], backbone, engine_label)  # nothing readable: an empty, finished cache
    if not plan.batches:
        shutil.rmtree(parts, ignore_errors=True)
    return failures


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
