"""LOFF-TA (frozen backbone, cached features, tensor augmentations, compact head) versus
fine-tuning the whole backbone with pixel augmentations: per-epoch time, peak memory, and
the total for 30 epochs including the one-time feature extraction.

Same backbone (built by `loff_core.backbones.load_backbone`), same images, same batch size
and input size. Every variant runs in a fresh Python process (so peak memory is that
variant's alone); the variants are interleaved over the repeats and medians are reported.

    python benchmarks/loff_vs_finetune.py --quick
    python benchmarks/loff_vs_finetune.py --device cuda --backbones vit_large_patch14_dinov2.lvd142m
    python benchmarks/loff_vs_finetune.py --device cuda --configs vit_large_patch14_dinov2@224 \
        vit_large_patch14_dinov2@518 vit_base_patch14_dinov2@224   # what benchmarks/gpu_suite.sh runs
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (bench_parser, parse_bench_args, MemoryMeter, Timer, machine_block, machine_info, median, mib, peak_bf16_for,  # noqa: E402
                     run_worker, synthetic_items, table, write_json)

SCRIPT = Path(__file__).resolve()
TARGET_SPEED = 40.0
TARGET_MEMORY = 30.0
NUM_CLASSES = 8


def _spec(task: dict[str, Any]) -> Any:
    from loff_core.backbones import BackboneSpec

    return BackboneSpec(name=task["backbone"], random_init=task["random_init"], image_size=task["image_size"],
                        grid=task["grid"])


# -- workers (each in its own process) ---------------------------------------------------
def worker_extract(task: dict[str, Any]) -> dict[str, Any]:
    from loff_core.cache import extract_features
    from loff_core.cache_reader import FeatureCache

    items = [(i, Path(p)) for i, p in task["items"]]
    meter = MemoryMeter(task["device"])
    meter.start()
    with Timer(task["device"]) as t:
        res = extract_features(items, _spec(task), Path(task["caches_dir"]), device=task["device"],
                               batch_size=task["batch_size"])
    mem = meter.stop()
    with FeatureCache.open(res.cache_path) as cache:
        per_image = cache.nbytes_per_image()
        grid_hw = list(cache.grid_hw)
        dim = cache.feature_dim
    return {"seconds": t.seconds, "extracted": res.extracted, "failures": len(res.failures),
            "cache_path": str(res.cache_path), "bytes_per_image": per_image, "grid_hw": grid_hw,
            "feature_dim": dim, **mem}


def worker_finetune(task: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torchvision.transforms import v2

    from loff_core.backbones import load_backbone
    from loff_core.heads import HeadConfig, build_head

    device = task["device"]
    dev = torch.device(device)
    torch.manual_seed(0)
    size, bs = task["image_size"], task["batch_size"]
    # the image pool exists before the meter starts (a data loader would stream it); on a GPU
    # it sits on the device and the pixel augmentations run there (what a tuned fine-tuning
    # pipeline does), so the CPU never holds the GPU back and the comparison is fair to (a)
    pool = torch.rand(2 * bs, 3, int(size * 1.15), int(size * 1.15)).to(dev)
    labels = torch.randint(0, NUM_CLASSES, (2 * bs,)).to(dev)
    augment = v2.Compose([v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()])
    meter = MemoryMeter(device)
    meter.start()
    backbone = load_backbone(_spec(task), device=device)
    body = backbone.token_module()
    body.model.requires_grad_(True)
    head = build_head(HeadConfig(kind="linear", task="classification", num_classes=NUM_CLASSES,
                                 feature_dim=backbone.feature_dim, grid_hw=backbone.grid_hw)).to(dev)
    body.train()
    head.train()
    params = list(body.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    use_bf16 = dev.type == "cuda"

    def step(k: int) -> None:
        idx = torch.randint(0, len(pool), (bs,), generator=torch.Generator().manual_seed(k))
        batch = torch.stack([augment(pool[i]) for i in idx])
        y = labels[idx.to(dev)]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            cls, grid = body(batch)
            logits = head(cls.float(), grid.float())
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    flops = None
    try:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step(0)  # warm-up step, counted
        flops = int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - FLOP counting is optional
        step(0)
    if dev.type == "cuda":
        step(0)  # a second warm-up outside the FLOP counter (kernel selection, allocator)
    times = []
    for k in range(task["steps"]):
        with Timer(device) as t:
            step(k + 1)
        times.append(t.seconds)
    mem = meter.stop()
    out = {"step_seconds": times, "median_step": median(times), "flops_per_step": flops, **mem}
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        peak = peak_bf16_for(name)
        out["gpu"] = name
        out["mfu_bf16"] = (flops / out["median_step"] / peak) if (flops and peak) else None
    return out


def worker_loff(task: dict[str, Any]) -> dict[str, Any]:
    from loff_core.settings import AugmentConfig
    from loff_core.cache_reader import FeatureCache
    from loff_core.settings import TrainConfig
    from loff_core.training import train_head

    meter = MemoryMeter(task["device"])
    meter.start()
    cache = FeatureCache.open(task["cache_path"])
    ids = list(cache.image_ids)
    ys = [task["labels"][i] for i in ids]
    config = TrainConfig(head=task["head"], epochs=task["epochs"], batch_size=task["batch_size"],
                         device=task["device"], patience=10_000, augment=AugmentConfig())
    with Timer(task["device"]) as t:
        result = train_head(cache, ids, ys, [], [], config, num_classes=NUM_CLASSES)
    mem = meter.stop()
    secs = [h["seconds"] for h in result.history]
    steady = secs[1:] if len(secs) > 1 else secs
    return {"epoch_seconds": secs, "median_epoch": median(steady), "train_seconds": t.seconds, **mem}


WORKERS = {"extract": worker_extract, "finetune": worker_finetune, "loff": worker_loff}


# -- driver -----------------------------------------------------------------------------
def bench_backbone(name: str, args: argparse.Namespace, items: list, labels: list, work: Path,
                   image_size: int | None = None) -> dict[str, Any]:
    random_init = name != "tf_efficientnet_lite0" and not args.pretrained
    size = image_size or args.image_size
    base = {"backbone": name, "random_init": random_init, "image_size": size, "grid": args.grid,
            "device": args.device, "batch_size": args.batch_size}
    extract = run_worker(SCRIPT, {**base, "kind": "extract", "items": [(i, str(p)) for i, p in items],
                                  "caches_dir": str(work / f"caches-{name}-{size}")})
    ft, lo = [], []
    for r in range(args.repeats):  # interleaved, alternating which goes first
        order = ["finetune", "loff"] if r % 2 == 0 else ["loff", "finetune"]
        for kind in order:
            if kind == "finetune":
                ft.append(run_worker(SCRIPT, {**base, "kind": "finetune", "steps": args.steps}))
            else:
                lo.append(run_worker(SCRIPT, {**base, "kind": "loff", "cache_path": extract["cache_path"],
                                              "labels": dict(zip([i for i, _ in items], labels)), "epochs": args.loff_epochs, "head": args.head}))
    n = extract["extracted"]
    steps_per_epoch = math.ceil(n / args.batch_size)
    ft_epoch = median([w["median_step"] for w in ft]) * steps_per_epoch
    lo_epoch = median([w["median_epoch"] for w in lo])
    ft_peak = median([w["peak_bytes"] for w in ft])
    lo_peak = median([w["peak_bytes"] for w in lo])
    return {
        "backbone": name, "random_init": random_init, "image_size": size, "batch_size": args.batch_size,
        "images": n, "steps_per_epoch": steps_per_epoch,
        "grid_hw": extract["grid_hw"], "feature_dim": extract["feature_dim"],
        "extract_seconds": extract["seconds"], "extract_peak_bytes": extract["peak_bytes"],
        "ft_step_seconds": median([w["median_step"] for w in ft]), "ft_epoch_seconds": ft_epoch,
        "loff_epoch_seconds": lo_epoch, "ft_peak_bytes": ft_peak, "loff_peak_bytes": lo_peak,
        "ft_total_30": 30 * ft_epoch, "loff_total_30": extract["seconds"] + 30 * lo_epoch,
        "speed_ratio": ft_epoch / lo_epoch if lo_epoch else None,
        "memory_ratio": ft_peak / lo_peak if lo_peak > 0 else None,
        "flops_per_step": ft[0].get("flops_per_step"), "mfu_bf16": median([w.get("mfu_bf16") for w in ft])
        if any(w.get("mfu_bf16") for w in ft) else None,
        "peak_kind": ft[0]["peak_kind"], "raw": {"finetune": ft, "loff": lo, "extract": extract},
    }


def report(results: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    gpu = args.device.startswith("cuda")
    rows = []
    for r in results:
        rows.append([
            r["backbone"] + (" (random init)" if r["random_init"] else ""), r.get("image_size"), r["images"],
            f"{r['grid_hw'][0]}x{r['grid_hw'][1]}x{r['feature_dim']}",
            r["ft_step_seconds"], r["ft_epoch_seconds"], r["extract_seconds"], r["loff_epoch_seconds"],
            r["ft_total_30"], r["loff_total_30"],
            mib(r["ft_peak_bytes"]), mib(r["loff_peak_bytes"]), mib(r["extract_peak_bytes"]),
            f"{r['speed_ratio']:.1f}x" if r["speed_ratio"] else "n/a",
            f"{r['memory_ratio']:.1f}x" if r["memory_ratio"] else "n/a",
            f"{100 * r['mfu_bf16']:.1f}%" if r.get("mfu_bf16") else "n/a (CPU)" if not gpu else "n/a",
        ])
    headers = ["backbone", "input px", "images/epoch", "grid", "(a) FT s/step", "(a) FT s/epoch*", "(b) extract s (once)",
               "(b) LOFF s/epoch", "(a) 30 ep s", "(b) extract+30 ep s", "(a) peak MiB", "(b) train peak MiB",
               "(b) extract peak MiB", "speed (a)/(b)", "memory (a)/(b)", "FT MFU bf16"]
    mem_kind = results[0]["peak_kind"] if results else ""
    notes = [
        f"(a) fine-tune whole backbone + linear head, RandomResizedCrop+flip (torchvision v2), AdamW, train mode. "
        f"(b) LOFF-TA: extract_features once, then train_head(head={args.head}) on the cache with tensor augmentations.",
        f"* (a) s/epoch is extrapolated: median step time over {args.steps} timed steps x steps/epoch "
        f"(batch {args.batch_size}). (b) s/epoch is the median measured train_head epoch "
        f"(first epoch dropped) over {args.loff_epochs} epochs. Medians of {args.repeats} interleaved repeats.",
        f"Peak memory: {mem_kind}, each variant in a fresh process.",
        f"Targets (GPU, ViT-L): speed ratio >= {TARGET_SPEED:.0f}x, memory ratio >= {TARGET_MEMORY:.0f}x."
        + ("" if gpu else " These are CPU numbers with small backbones: not comparable to the GPU targets."),
    ]
    for r in results:
        verdict_s = "meets" if (r["speed_ratio"] or 0) >= TARGET_SPEED else "below"
        verdict_m = "meets" if (r["memory_ratio"] or 0) >= TARGET_MEMORY else "below"
        notes.append(f"{r['backbone']} {r.get('image_size')} px: speed {r['speed_ratio']:.1f}x ({verdict_s} {TARGET_SPEED:.0f}x), "
                     f"memory {r['memory_ratio']:.1f}x ({verdict_m} {TARGET_MEMORY:.0f}x), "
                     f"30-epoch total {r['ft_total_30'] / r['loff_total_30']:.1f}x")
    return (f"## LOFF-TA vs fine-tuning\n\n{machine_block(info)}\n\n" + table(headers, rows) + "\n\n"
            + "\n".join(f"- {n}" for n in notes))


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--backbones", nargs="+", default=None)
    p.add_argument("--configs", nargs="+", default=None, metavar="NAME@SIZE",
                   help="backbone@input-size pairs measured on the same images (instead of --backbones "
                        "and --image-size), e.g. vit_large_patch14_dinov2@224 vit_large_patch14_dinov2@518")
    p.add_argument("--pretrained", action="store_true", help="real weights for every backbone (from the timm cache)")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed fine-tuning steps per repeat")
    p.add_argument("--loff-epochs", type=int, default=None)
    p.add_argument("--head", default="vit", choices=["linear", "attention", "vit"])
    p.add_argument("--repeats", type=int, default=None)
    args = parse_bench_args(p, argv, lambda task: WORKERS[task["kind"]](task))
    if args is None:
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    defaults = {
        "full": dict(images=128, image_size=224, batch_size=16, steps=3, loff_epochs=5, repeats=3,
                     backbones=["vit_small_patch14_dinov2", "tf_efficientnet_lite0"]),
        "quick": dict(images=32, image_size=112, batch_size=8, steps=2, loff_epochs=3, repeats=2,
                      backbones=["vit_small_patch14_dinov2", "tf_efficientnet_lite0"]),
        "smoke": dict(images=16, image_size=64, batch_size=8, steps=1, loff_epochs=2, repeats=1,
                      backbones=["tf_efficientnet_lite0"]),
    }[mode]
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    info = machine_info(args.device)
    with tempfile.TemporaryDirectory(prefix="loff-bench-") as tmp:
        work = Path(tmp)
        items, labels = synthetic_items(work / "images", args.images, (256, 208))
        if args.configs:
            pairs = [(c.rsplit("@", 1)[0], int(c.rsplit("@", 1)[1])) for c in args.configs]
        else:
            pairs = [(name, args.image_size) for name in args.backbones]
        results = [bench_backbone(name, args, items, labels, work, size) for name, size in pairs]
    print(report(results, info, args))
    write_json(args.json, {"benchmark": "loff_vs_finetune", "mode": mode, "machine": info,
                           "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                           "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
