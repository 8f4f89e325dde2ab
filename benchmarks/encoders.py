"""Cost of the advised encoders (issue 27): forward FLOPs per image (counted with
`torch.utils.flop_counter`) and CPU images/s of `FrozenBackbone.tokens` (random weights: the
time does not depend on the values), interleaved repeats, medians. The figures behind
`loff_core.advice`'s CPU rows. On the CPU the large models get FLOPs only; with `--device
cuda` every row is timed (bf16 autocast, as extraction runs), which would turn the advice's
GPU estimates into measurements.

    python benchmarks/encoders.py --threads 1          # the table in docs/benchmarks.md
    python benchmarks/encoders.py --device cuda        # every row timed on the GPU
    python benchmarks/encoders.py --smoke              # two small rows (tests)
"""

from __future__ import annotations

import json
import statistics
import time

# (label, timm architecture, model args, input px, time it on the CPU)
CASES = [
    ("efficientnet-lite2", "tf_efficientnet_lite2", {}, 260, True),
    ("efficientnet-lite2", "tf_efficientnet_lite2", {}, 512, True),
    ("dinov3-vits16", "vit_small_patch16_dinov3_qkvb", {"global_pool": "token"}, 256, True),
    ("dinov3-vits16", "vit_small_patch16_dinov3_qkvb", {"global_pool": "token"}, 512, True),
    ("dinov3-vitb16", "vit_base_patch16_dinov3_qkvb", {"global_pool": "token"}, 256, True),
    ("rad-dino", "vit_base_patch14_dinov2", {}, 224, True),
    ("rad-dino", "vit_base_patch14_dinov2", {}, 518, False),
    ("biomedclip-vitb16", "vit_base_patch16_224", {}, 224, True),
    ("dinov3-vitb16", "vit_base_patch16_dinov3_qkvb", {"global_pool": "token"}, 512, False),
    ("dinov3-vitl16", "vit_large_patch16_dinov3_qkvb", {"global_pool": "token"}, 256, False),
    ("dinov3-vitl16", "vit_large_patch16_dinov3_qkvb", {"global_pool": "token"}, 512, False),
    ("dinov3-vith16plus", "vit_huge_plus_patch16_dinov3_qkvb", {"global_pool": "token"}, 512, False),
]


def main(argv=None) -> None:
    import sys
    from pathlib import Path

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import bench_parser, parse_bench_args  # noqa: E402

    from loff_core.backbones import FrozenBackbone, BackboneSpec, _token_module_class
    from loff_core.models import create_model

    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    args = parse_bench_args(parser, argv)
    device = torch.device(args.device)
    cases = CASES[:1] + CASES[2:3] if args.smoke else [c for c in CASES if c[4]] if args.quick else CASES
    repeats = 1 if args.smoke else args.repeats
    built = {}
    rows = []
    for label, arch, margs, size, timed in cases:
        with torch.device("meta"):  # FLOPs counted without computing (and without the memory)
            meta, _ = create_model(arch, margs, size, 0)
            module = _token_module_class()(meta.eval(), 16)
            with FlopCounterMode(display=False) as counter:
                cls, grid = module(torch.zeros(1, 3, size, size))
        params = sum(p.numel() for p in meta.parameters()) / 1e6
        rows.append({"label": label, "architecture": arch, "size": size, "params_m": round(params, 1),
                     "gflops": round(counter.get_total_flops() / 1e9, 2), "feature_dim": int(cls.shape[1]),
                     "grid": [int(grid.shape[2]), int(grid.shape[3])], "times": [], "device": str(device)})
        del meta, module
        if timed or device.type == "cuda":
            model, _ = create_model(arch, margs, size, 0)
            model.eval().requires_grad_(False)
            built[len(rows) - 1] = FrozenBackbone(BackboneSpec(name=arch, random_init=True, image_size=size, grid=16),
                                                  model, device, size, (0.5,) * 3, (0.5,) * 3, "random-init")
    x = {}
    for r in range(repeats):
        order = list(built) if r % 2 == 0 else list(reversed(built))  # interleaved, alternating first
        for i in order:
            size = rows[i]["size"]
            x.setdefault(size, torch.randn(args.batch, 3, size, size))
            if device.type == "cuda":
                built[i].tokens(x[size])  # warm-up (kernels, autotuning) outside the timing
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            built[i].tokens(x[size])
            if device.type == "cuda":
                torch.cuda.synchronize()
            rows[i]["times"].append(time.perf_counter() - t0)
    print(f"| encoder | input px | params M | GFLOPs / image | token grid (cached, grid 16) | "
          f"{'GPU' if device.type == 'cuda' else 'CPU'} images/s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ips = args.batch / statistics.median(row["times"]) if row["times"] else None
        row["images_per_s"] = round(ips, 2) if ips else None
        print(f"| {row['label']} | {row['size']} | {row['params_m']} | {row['gflops']} | "
              f"{row['grid'][0]} x {row['grid'][1]} x {row['feature_dim']} | {f'{ips:.2f}' if ips else 'not timed'} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
