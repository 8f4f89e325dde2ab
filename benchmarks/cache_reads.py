"""Feature-cache reads: one `train_head` epoch reading the HDF5 cache batch by batch versus
the same epoch on the features in RAM (`FeatureCache.to_memory()`); cache bytes per image
for backbones / input sizes / grids (`FeatureCache.nbytes_per_image`); and what pooling the
token grid (16 / 8 / 4) does to the head's step time.

`train_head` copies a cache into RAM by itself when it fits in 2 GiB; to force the HDF5
path it is given a thin wrapper that has the FeatureCache read API but no `to_memory`.

    python benchmarks/cache_reads.py --quick
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (bench_parser, parse_bench_args, Timer, machine_block, machine_info, median, synthetic_items, table,  # noqa: E402
                     write_json)

TARGET_RATIO = 0.9
NUM_CLASSES = 8


class HDF5Only:
    """The FeatureCache API without `to_memory`, so train_head reads the HDF5 file per batch."""

    def __init__(self, cache: Any):
        self._cache = cache
        self.image_ids = cache.image_ids
        self.feature_dim = cache.feature_dim
        self.grid_hw = cache.grid_hw

    def indices(self, image_ids: Any) -> Any:
        return self._cache.indices(image_ids)

    def read(self, indices: Any) -> Any:
        return self._cache.read(indices)

    def nbytes_per_image(self) -> int:
        return self._cache.nbytes_per_image()


def _extract(items: list, name: str, size: int, grid: int | None, work: Path, device: str,
             random_init: bool) -> Path:
    from loff_core.backbones import BackboneSpec
    from loff_core.cache import extract_features

    spec = BackboneSpec(name=name, random_init=random_init, image_size=size, grid=grid)
    res = extract_features(items, spec, work / "caches", device=device, batch_size=16)
    return res.cache_path


def _epoch(source: Any, ids: list, ys: list, head: str, args: argparse.Namespace) -> float:
    from loff_core.settings import AugmentConfig
    from loff_core.settings import TrainConfig
    from loff_core.training import train_head

    config = TrainConfig(head=head, epochs=1, batch_size=args.batch_size, device=args.device,
                         augment=AugmentConfig())
    result = train_head(source, ids, ys, [], [], config, num_classes=NUM_CLASSES)
    return float(result.history[0]["seconds"])  # the epoch itself, without building the head


def bench_reads(args: argparse.Namespace, items: list, ys: list, work: Path) -> dict[str, Any]:
    from loff_core.cache_reader import FeatureCache

    path = _extract(items, args.backbone, args.image_size, args.grid, work, args.device, args.random_init)
    cache = FeatureCache.open(path)
    ids = list(cache.image_ids)
    label = dict(zip([i for i, _ in items], ys))
    y = [label[i] for i in ids]
    with Timer() as t_load:
        mem = cache.to_memory()
    hdf5 = HDF5Only(cache)
    _epoch(mem, ids, y, args.head, args)  # warm-up (and page cache)
    _epoch(hdf5, ids, y, args.head, args)
    t_h5, t_ram = [], []
    for r in range(args.repeats):
        for which in (("h5", "ram") if r % 2 == 0 else ("ram", "h5")):
            if which == "h5":
                t_h5.append(_epoch(hdf5, ids, y, args.head, args))
            else:
                t_ram.append(_epoch(mem, ids, y, args.head, args))
    out = {"backbone": args.backbone, "image_size": args.image_size, "grid_hw": list(cache.grid_hw),
           "feature_dim": cache.feature_dim, "images": len(ids), "head": args.head,
           "bytes_per_image": cache.nbytes_per_image(), "to_memory_seconds": t_load.seconds,
           "hdf5_epoch_s": t_h5, "ram_epoch_s": t_ram, "hdf5_median": median(t_h5), "ram_median": median(t_ram)}
    out["ratio"] = out["ram_median"] / out["hdf5_median"]  # HDF5 throughput relative to RAM
    cache.close()
    return out


def bench_grids(args: argparse.Namespace, items: list, ys: list, work: Path) -> list[dict[str, Any]]:
    from loff_core.cache_reader import FeatureCache

    sources = {}
    for g in args.grids:
        path = _extract(items, args.backbone, args.image_size, g, work, args.device, args.random_init)
        with FeatureCache.open(path) as cache:
            label = dict(zip([i for i, _ in items], ys))
            sources[g] = (cache.to_memory(), cache.nbytes_per_image(), tuple(cache.grid_hw))
    times: dict[tuple[int, str], list[float]] = {(g, h): [] for g in args.grids for h in args.grid_heads}
    for r in range(args.repeats):
        keys = list(times) if r % 2 == 0 else list(reversed(times))
        for g, h in keys:
            mem = sources[g][0]
            ids = list(mem.image_ids)
            times[(g, h)].append(_epoch(mem, ids, [label[i] for i in ids], h, args))
    steps = math.ceil(len(items) / args.batch_size)
    rows = []
    for (g, h), ts in times.items():
        rows.append({"grid": g, "grid_hw": list(sources[g][2]), "head": h, "bytes_per_image": sources[g][1],
                     "epoch_s": ts, "step_ms": 1000 * median(ts) / steps})
    return rows


def bench_sizes(args: argparse.Namespace, items: list, work: Path) -> list[dict[str, Any]]:
    from loff_core.cache_reader import FeatureCache

    rows = []
    for name, size, grid in args.size_table:
        random_init = name != "tf_efficientnet_lite0"
        path = _extract(items[:2], name, size, grid, work / f"sizes-{name}-{size}-{grid}", args.device, random_init)
        with FeatureCache.open(path) as cache:
            rows.append({"backbone": name, "image_size": size, "grid": grid, "grid_hw": list(cache.grid_hw),
                         "feature_dim": cache.feature_dim, "bytes_per_image": cache.nbytes_per_image()})
    return rows


def report(reads: dict, grids: list, sizes: list, info: dict, args: argparse.Namespace) -> str:
    verdict = "meets" if reads["ratio"] >= TARGET_RATIO else "below"
    t1 = table(["features", "images", "head", "KiB/image", "HDF5 epoch s", "RAM epoch s", "RAM/HDF5 time ratio",
                "target", "to_memory() s"],
               [[f"{reads['backbone']} {reads['image_size']}px {reads['grid_hw'][0]}x{reads['grid_hw'][1]}x"
                 f"{reads['feature_dim']}", reads["images"], reads["head"], reads["bytes_per_image"] / 1024,
                 reads["hdf5_median"], reads["ram_median"], f"{reads['ratio']:.2f}", f">= {TARGET_RATIO} ({verdict})",
                 reads["to_memory_seconds"]]])
    t2 = table(["backbone", "input", "grid arg", "grid", "dim", "bytes/image", "GiB per 100k images"],
               [[r["backbone"], r["image_size"], r["grid"], f"{r['grid_hw'][0]}x{r['grid_hw'][1]}", r["feature_dim"],
                 r["bytes_per_image"], r["bytes_per_image"] * 1e5 / 2**30] for r in sizes])
    t3 = table(["grid", "head", "KiB/image", "head step ms (batch %d, fwd+bwd+augment)" % args.batch_size],
               [[f"{r['grid_hw'][0]}x{r['grid_hw'][1]}", r["head"], r["bytes_per_image"] / 1024, r["step_ms"]]
                for r in grids])
    return (f"## Cache reads\n\n{machine_block(info)}\n\n### One train_head epoch: HDF5 batch reads vs RAM\n\n{t1}\n\n"
            f"- ratio = RAM epoch time / HDF5 epoch time (1.0 = reading the HDF5 file costs nothing). "
            f"Medians of {args.repeats} interleaved repeats after one warm-up each; file in the OS page cache.\n\n"
            f"### Cache size per image\n\n{t2}\n\n### Grid pooling and head step time (features in RAM)\n\n{t3}\n\n"
            f"- {args.backbone} at {args.image_size}px, {reads['images']} images; "
            f"step = one train_head epoch / steps. Medians of {args.repeats} interleaved repeats.")


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--backbone", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--head", default="vit")
    p.add_argument("--repeats", type=int, default=None)
    args = parse_bench_args(p, argv)
    assert args is not None
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    d = {
        "full": dict(images=512, backbone="vit_small_patch14_dinov2", image_size=224, repeats=3,
                     size_table=[("tf_efficientnet_lite0", 224, 16), ("tf_efficientnet_lite0", 512, 16),
                                 ("vit_small_patch14_dinov2", 224, 16), ("vit_small_patch14_dinov2", 518, 16),
                                 ("vit_small_patch14_dinov2", 518, None), ("vit_base_patch14_dinov2", 518, 16),
                                 ("vit_large_patch14_dinov2", 518, 16), ("vit_large_patch14_dinov2", 518, 8)]),
        "quick": dict(images=96, backbone="vit_tiny_patch16_224", image_size=256, repeats=2,
                      size_table=[("tf_efficientnet_lite0", 224, 16), ("tf_efficientnet_lite0", 512, 16),
                                  ("vit_small_patch14_dinov2", 224, 16), ("vit_small_patch14_dinov2", 224, 8)]),
        "smoke": dict(images=32, backbone="vit_tiny_patch16_224", image_size=128, repeats=1,
                      size_table=[("vit_tiny_patch16_224", 128, 16)]),
    }[mode]
    for k, v in d.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.random_init = args.backbone != "tf_efficientnet_lite0"
    args.grids = [16, 8, 4] if mode != "smoke" else [8, 4]
    args.grid_heads = {"full": ["vit", "attention", "linear"], "quick": ["attention", "linear"],
                       "smoke": ["attention"]}[mode]
    info = machine_info(args.device)
    with tempfile.TemporaryDirectory(prefix="loff-bench-") as tmp:
        work = Path(tmp)
        items, ys = synthetic_items(work / "images", args.images, (256, 208))
        reads = bench_reads(args, items, ys, work)
        grids = bench_grids(args, items, ys, work)
        sizes = bench_sizes(args, items, work)
    print(report(reads, grids, sizes, info, args))
    write_json(args.json, {"benchmark": "cache_reads", "mode": mode, "machine": info, "reads": reads,
                           "grids": grids, "sizes": sizes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
