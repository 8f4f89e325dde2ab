"""Extraction end to end against the forward pass on the device (the GPU suite's section 2,
issue 26; the CPU comparison against the fastest engine is benchmarks/extraction.py), and
DICOM decode throughput.

Part 1: images/s of `loff_core.cache.extract_features` end to end (decode + preprocess in
DataLoader workers, backbone, HDF5 shards + merge, backbone loading included) versus the
backbone's forward pass alone (`FrozenBackbone.tokens`) on the same images already
preprocessed in memory, same batch size; interleaved repeats, medians. Target ratio 0.8.

Part 2: DICOM decode throughput on one core for 16-bit (12 stored) RLE Lossless and JPEG 2000
Lossless 512x416 synthetic mammograms: pydicom + pylibjpeg, pydicom + GDCM, SimpleITK;
decoded arrays are checked against the same images written uncompressed.

    python benchmarks/extraction_gpu.py --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (bench_parser, parse_bench_args, Timer, machine_block, machine_info, median, synthetic_items, table,  # noqa: E402
                     write_json)

TARGET_RATIO = 0.8
TARGET_RATIO_GPU = 0.9  # issue 26: end to end against the forward pass on device tensors


def bench_extract(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from loff_core.backbones import BackboneSpec, load_backbone
    from loff_core.cache import extract_features
    from loff_core.images import load_pixels

    spec = BackboneSpec(name=args.backbone, random_init=args.backbone != "tf_efficientnet_lite0",
                        image_size=args.image_size, grid=args.grid)
    items, _ = synthetic_items(work / "extract-images", args.images, (256, 208))
    with Timer(args.device) as load:
        backbone = load_backbone(spec, device=args.device)
    images = torch.from_numpy(np.stack([backbone.preprocessor(load_pixels(p)) for _, p in items]))
    if args.device.startswith("cuda"):  # forward-only: the tensors already on the device (no copy timed)
        images = images.to(backbone.device)
    bs = args.batch_size
    backbone.tokens(images[:bs])  # warm-up
    # end to end with the engine's default loader workers, and (--compare-workers) with more
    variants: list[Any] = [args.workers] + [w for w in (args.compare_workers or []) if w != args.workers]
    e2e: dict[str, list[float]] = {str(w): [] for w in variants}
    e2e_no_load: dict[str, list[float]] = {str(w): [] for w in variants}
    fwd: list[float] = []
    for r in range(args.repeats):
        def run_e2e(w: Any) -> None:
            with Timer(args.device) as t:
                res = extract_features(items, spec, work / f"caches-{r}-{w}", device=args.device, batch_size=bs,
                                       num_workers=w)
            assert res.extracted == len(items) and not res.failures, res
            e2e[str(w)].append(len(items) / t.seconds)
            e2e_no_load[str(w)].append(len(items) / max(t.seconds - load.seconds, 1e-9))

        def run_fwd() -> None:
            with Timer(args.device) as t:
                for s in range(0, len(images), bs):
                    backbone.tokens(images[s:s + bs])
            fwd.append(len(images) / t.seconds)

        jobs = [lambda w=w: run_e2e(w) for w in variants] + [run_fwd]
        for f in (jobs if r % 2 == 0 else list(reversed(jobs))):
            f()
    first = str(variants[0])
    ratio = median(e2e[first]) / median(fwd)
    return {"backbone": args.backbone, "image_size": backbone.preprocessor.image_size, "grid": args.grid,
            "grid_hw": list(backbone.grid_hw), "images": len(items), "device": args.device,
            "batch_size": bs, "workers": args.workers, "e2e_img_s": e2e[first], "forward_img_s": fwd,
            "e2e_median": median(e2e[first]), "forward_median": median(fwd), "ratio": ratio,
            "backbone_load_seconds": load.seconds,
            "e2e_median_without_load": median(e2e_no_load[first]),
            "ratio_without_load": median(e2e_no_load[first]) / median(fwd),
            "variants": [{"workers": w, "e2e_median": median(e2e[str(w)]),
                          "e2e_median_without_load": median(e2e_no_load[str(w)]),
                          "ratio": median(e2e[str(w)]) / median(fwd),
                          "ratio_without_load": median(e2e_no_load[str(w)]) / median(fwd)} for w in variants]}


def report(ext: dict[str, Any], dec: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    target = TARGET_RATIO_GPU if ext["device"].startswith("cuda") else TARGET_RATIO
    verdict = "meets" if ext["ratio"] >= target else "below"
    t1 = table(["backbone", "input", "images", "batch", "loader workers", "extract_features img/s (end to end)",
                "tokens() forward-only img/s", "ratio", "target"],
               [[ext["backbone"], ext["image_size"], ext["images"], ext["batch_size"],
                 ext["workers"] if ext["workers"] is not None else "default",
                 ext["e2e_median"], ext["forward_median"], f"{ext['ratio']:.2f}", f">= {target} ({verdict})"]])
    t2_rows = []
    for syntax in sorted({r["syntax"] for r in dec}):
        rows = [r for r in dec if r["syntax"] == syntax]
        ok = [r for r in rows if r["img_s"] and r["equal"]]
        best = max(ok, key=lambda r: r["img_s"])["decoder"] if ok else None
        for r in rows:
            t2_rows.append([syntax, r["decoder"], r["mb_per_file"], r["img_s"],
                            {True: "yes", False: "NO", None: "n/a"}[r["equal"]],
                            "fastest correct" if r["decoder"] == best else r["note"]])
    t2 = table(["transfer syntax", "decoder", "MB/file", "images/s on 1 core", "equals uncompressed", "note"], t2_rows)
    t1b = table(["loader workers", "end to end img/s", "ratio", "without the backbone load: img/s", "ratio"],
                [[v["workers"] if v["workers"] is not None else "default", v["e2e_median"], f"{v['ratio']:.2f}",
                  v["e2e_median_without_load"], f"{v['ratio_without_load']:.2f}"] for v in ext["variants"]])
    where = "on the device" if ext["device"].startswith("cuda") else "in RAM"
    head = (f"## Extraction throughput\n\n{machine_block(info)}\n\n{t1}\n\n{t1b}\n\n"
            f"- End to end = backbone load + DataLoader decode/preprocess + forward + HDF5 shards + merge; "
            f"forward-only = FrozenBackbone.tokens on preprocessed tensors {where}, same batches. "
            f"'Without the backbone load' subtracts the load time measured once in the same process "
            f"({ext['backbone_load_seconds']:.2f} s). Medians of {args.repeats} interleaved repeats.")
    if not dec:
        return head
    return (head + "\n\n"
            f"## DICOM decode, 512x416, 12 bits stored in 16, one thread\n\n{t2}\n\n"
            f"- {args.decode_images} files per syntax, medians of {args.repeats} interleaved passes; "
            f"decoded arrays compared with the same images written uncompressed (half the files are MONOCHROME1; "
            f"SimpleITK returns those inverted to MONOCHROME2, so its arrays are compared with max - stored value). "
            f"gdcm direct: gdcm.ImageReader + GetBuffer, without pydicom (pydicom 3 has no GDCM plugin for RLE).")


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the engine's)")
    p.add_argument("--decode-images", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--grid", type=int, default=16, help="token grid pooled to at most GRID x GRID")
    p.add_argument("--compare-workers", type=int, nargs="+", default=None, metavar="N",
                   help="also time end to end with N loader workers (before / after in the same run)")
    p.add_argument("--no-decode", action="store_true", help="skip part 2 (DICOM decoders)")
    args = parse_bench_args(p, argv)
    assert args is not None
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    d = {"full": dict(images=256, image_size=224, decode_images=48, repeats=3),
         "quick": dict(images=64, image_size=224, decode_images=12, repeats=2),
         "smoke": dict(images=16, image_size=128, decode_images=4, repeats=1)}[mode]
    for k, v in d.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    info = machine_info(args.device)
    with tempfile.TemporaryDirectory(prefix="loff-bench-") as tmp:
        ext = bench_extract(args, Path(tmp))
        from extraction import bench_decode  # part 2 is the CPU benchmark's own (benchmarks/extraction.py)

        dec = [] if args.no_decode else bench_decode(args, Path(tmp))
    print(report(ext, dec, info, args))
    write_json(args.json, {"benchmark": "extraction", "mode": mode, "machine": info, "extract": ext, "decode": dec})
    return 0


if __name__ == "__main__":
    sys.exit(main())
