"""Merging an extraction's shards into the final cache file, and the torchrun rank / world
size (split out of cache.py, issue 10): under torchrun each rank computes its share of the
batches as shards; rank 0 merges them (and the previous final file) into a temporary file
renamed over `<fingerprint>.h5`."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import CacheError

from .cache_h5 import FORMAT_VERSION, _create_h5, block_datasets, _h5py, _read_failed, _read_shard, summary_path_for


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
        # LOFF_DIST_TIMEOUT (seconds): how long a rank waits for a vanished peer at the end
        # before it fails (its finished shards stay; extract again resumes); torch's default
        # otherwise (30 minutes)
        timeout = os.environ.get("LOFF_DIST_TIMEOUT")
        dist.init_process_group(backend=backend, **(
            {"timeout": _dt.timedelta(seconds=float(timeout))} if timeout else {}))
    return dist.get_rank(), dist.get_world_size()


def _merge(final: Path, parts: Path, shard_names: list[str], backbone: Any, engine: str = "") -> None:
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
    shapes = list(getattr(backbone, "block_shapes", None) or [(backbone.feature_dim, tuple(backbone.grid_hw))])
    gh, gw = backbone.grid_hw
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")

    def fill(out: Any, check: Callable[[], None]) -> None:
        ids_ds = out.create_dataset("image_ids", shape=(n,), dtype=h5py.string_dtype())
        # one image per chunk; an empty cache (no readable image) cannot have chunks
        blocks = []
        for i, (bc, (bh, bw)) in enumerate(shapes):
            cls_name, tok_name = block_datasets(i)
            blocks.append((cls_name, tok_name,
                           out.create_dataset(cls_name, shape=(n, bc), dtype=np.float16, chunks=(1, bc) if n else None),
                           out.create_dataset(tok_name, shape=(n, bh, bw, bc), dtype=np.float16,
                                              chunks=(1, bh, bw, bc) if n else None)))
        out.create_dataset("failed_ids", data=np.array([i for i, _ in failed], dtype=object),
                           dtype=h5py.string_dtype())
        out.create_dataset("failed_reasons", data=np.array([r for _, r in failed], dtype=object),
                           dtype=h5py.string_dtype())
        row = 0
        per_image = sum(bh * bw * bc * 2 for bc, (bh, bw) in shapes)
        step = max(1, min(256, (32 << 20) // max(1, per_image)))  # <= 32 MB a step
        for path, count in sources:
            with h5py.File(path, "r", locking=False) as h:
                for s in range(0, count, step):
                    e = min(count, s + step)
                    ids_ds[row + s:row + e] = h["image_ids"][s:e]
                    for cls_name, tok_name, cls_ds, tok_ds in blocks:
                        cls_ds[row + s:row + e] = h[cls_name][s:e]
                        tok_ds[row + s:row + e] = h[tok_name][s:e]
                    check()  # stop at the first failed write (full disk)
            row += count
        out.attrs["fingerprint"] = backbone.fingerprint
        out.attrs["backbone"] = json.dumps(backbone.describe(), sort_keys=True)
        out.attrs["format_version"] = FORMAT_VERSION
        if engine:  # which forward engine computed the features (not part of the fingerprint)
            out.attrs["engine"] = engine
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
        "bytes_per_image": sum((bh * bw * bc + bc) * 2 for bc, (bh, bw) in shapes), "engine": engine,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    shutil.rmtree(parts, ignore_errors=True)
