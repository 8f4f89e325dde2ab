"""Scaling with the number of images: extraction and head-training time and peak memory at
N images (tiny synthetic 64x52 DICOMs, vit_tiny_patch16_224 with random weights at 32 px), so
that the pipeline's overheads (decode, HDF5 shards + merge, cache reads) dominate. Each N runs
in a fresh process; peak RSS must stay bounded as N grows (the cache is written shard by shard
and merged in 256-row blocks; training copies it into RAM only below 2 GiB).

    python benchmarks/scale.py --quick
"""

from __future__ import annotations

import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (bench_parser, parse_bench_args, MemoryMeter, Timer, machine_block, machine_info, mib, run_worker,  # noqa: E402
                     synthetic_items, table, write_json)

SCRIPT = Path(__file__).resolve()
NUM_CLASSES = 8


def worker(task: dict[str, Any]) -> dict[str, Any]:
    from loff_core.settings import AugmentConfig
    from loff_core.backbones import BackboneSpec
    from loff_core.cache import extract_features
    from loff_core.cache_reader import FeatureCache
    from loff_core.settings import TrainConfig
    from loff_core.training import train_head

    from _common import peak_rss

    device = task["device"]
    items = [(i, Path(p)) for i, p in task["items"]]
    labels = dict(zip([i for i, _ in items], task["labels"]))
    spec = BackboneSpec(name="vit_tiny_patch16_224", random_init=True, image_size=32, grid=16)
    meter = MemoryMeter(device)
    meter.start()
    with Timer(device) as t_ext:
        res = extract_features(items, spec, Path(task["caches_dir"]), device=device, batch_size=task["batch"])
    ext_mem = meter.stop()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    meter.start()
    with Timer(device) as t_train:
        cache = FeatureCache.open(res.cache_path)
        ids = list(cache.image_ids)
        n_val = max(1, len(ids) // 10)
        tr, va = ids[n_val:], ids[:n_val]
        config = TrainConfig(head="attention", epochs=task["epochs"], batch_size=64, device=device,
                             augment=AugmentConfig(), patience=10_000)
        result = train_head(cache, tr, [labels[i] for i in tr], va, [labels[i] for i in va], config,
                            num_classes=NUM_CLASSES)
        cache.close()
    train_mem = meter.stop()
    return {"n": len(items), "extracted": res.extracted, "failures": len(res.failures),
            "extract_s": t_ext.seconds, "train_s": t_train.seconds,
            "epoch_s": [h["seconds"] for h in result.history], "extract_peak": ext_mem["peak_bytes"],
            "train_peak": train_mem["peak_bytes"], "process_peak": peak_rss(), "loader_worker_maxrss": children,
            "cache_bytes": Path(res.cache_path).stat().st_size, "peak_kind": ext_mem["peak_kind"]}


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=16,
                   help="extraction batch size (16, the engine default: one shard file per batch)")
    args = parse_bench_args(p, argv, worker)
    if args is None:
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = args.sizes or {"full": [1000, 5000, 20000], "quick": [200, 1000], "smoke": [50, 200]}[mode]
    info = machine_info(args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="loff-bench-") as tmp:
        work = Path(tmp)
        with Timer() as t_gen:
            items, labels = synthetic_items(work / "images", max(sizes), (64, 52))
        for n in sizes:
            r = run_worker(SCRIPT, {"kind": "scale", "device": args.device, "epochs": args.epochs, "batch": args.batch,
                                    "items": [(i, str(pth)) for i, pth in items[:n]], "labels": labels[:n],
                                    "caches_dir": str(work / f"caches-{n}")}, timeout=7200)
            rows.append(r)
    base = rows[0]
    out_rows = [[r["n"], r["extract_s"], r["n"] / r["extract_s"], r["train_s"], r["n"] * args.epochs / r["train_s"],
                 mib(r["extract_peak"]), mib(r["train_peak"]), mib(r["process_peak"]), mib(r["loader_worker_maxrss"]),
                 r["cache_bytes"] / r["n"], f"{r['extract_peak'] / max(base['extract_peak'], 1):.2f}x / "
                 f"{r['n'] / base['n']:.0f}x"] for r in rows]
    text = (f"## Scale: time and memory vs number of images\n\n{machine_block(info)}\n\n"
            + table(["N images", "extract s", "extract img/s", f"train s ({args.epochs} ep, attention)",
                     "train img-epochs/s", "extract peak MiB", "train peak MiB", "process VmHWM MiB",
                     "loader worker max RSS MiB", "cache bytes/image", "extract peak growth / N growth"], out_rows)
            + f"\n\n- 64x52 synthetic DICOMs (transfer syntaxes cycling), vit_tiny_patch16_224 random init at 32 px "
            f"(2x2x192 grid), extraction batch {args.batch} ({-(-max(sizes) // args.batch)} shard files at the largest N); synthetic data written in {t_gen.seconds:.0f} s (not counted). "
            f"Peak = {base['peak_kind']} of the main process over that phase (fresh process per N); "
            f"DataLoader worker processes are reported separately (RUSAGE_CHILDREN max RSS).")
    print(text)
    write_json(args.json, {"benchmark": "scale", "mode": mode, "machine": info, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
