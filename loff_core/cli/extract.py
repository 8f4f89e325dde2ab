"""`loff extract`: the frozen backbone over a project's images into the feature cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .terminal import print_notes, run_with_progress

def backbone_spec_from_args(args: argparse.Namespace) -> Any:
    from ..backbones import BackboneSpec, default_backbone_name
    from ..settings import ExtractSettings

    name = args.backbone or default_backbone_name(args.device)
    return BackboneSpec(name=name, weights=args.weights, random_init=args.random_init, seed=args.weights_seed,
                        image_size=args.image_size, grid=args.grid, layers=args.layers or ExtractSettings.layers,
                        crop=getattr(args, "crop", None) or ExtractSettings.crop)



def cmd_extract(args: argparse.Namespace) -> Any:
    from .. import steps  # every command runs a step (loff_core/steps.py), as the app does
    from ..cache_merge import distributed_rank_world
    from ..project import Project
    from ..settings import ExtractSettings

    project = Project.open(args.project)
    spec = backbone_spec_from_args(args)
    rank, _ = distributed_rank_world()  # under torchrun: N processes, one cache; rank 0 reports
    if rank == 0 and not args.quiet:
        print_default_reason(args, project, spec)
    settings = ExtractSettings(device=args.device, batch_size=args.batch_size, workers=args.workers,
                               engine=args.engine)
    result = run_with_progress("extract", args.quiet or rank != 0,
                                lambda p: steps.extract(project, spec, settings, progress=p))
    if rank == 0:
        print_notes("extract", result.notes)
    return result


def print_default_reason(args: argparse.Namespace, project: Any, spec: Any) -> None:
    """Which defaults this extraction uses and why, in one line on stderr (none: all chosen)."""
    import sys

    from ..advice import default_reason, image_kind
    from ..weights import default_backbone

    gpu = args.backbone is None and spec.name != default_backbone(gpu=False)["name"]  # the GPU rule chose it
    line = default_reason(image_kind(project.catalog().entries if project.has_catalog() else []), gpu,
                          backbone=args.backbone, image_size=args.image_size, layers=args.layers,
                          default_crop=getattr(args, "crop", None) is None)
    if line:
        print(f"loff extract: {line}", file=sys.stderr)



def _crop_words(backbone: dict[str, Any]) -> str:
    crop = backbone.get("crop") or "none"
    return "" if crop == "none" else f" (crop {crop})"


def _describe_extract(out: dict[str, Any]) -> str:
    if "rank" in out:  # a torchrun rank other than 0: rank 0 prints the summary
        return f"rank {out['rank']} of {out['world_size']}: extracted {out['extracted']} images"
    b = out["backbone"]
    h, w = b.get("grid_hw", ("?", "?"))
    state = "stopped early (run extract again to resume)" if out["stopped"] else "complete"
    lines = [f"cache {out['cache']} ({state}): {out['images']} images, backbone {b.get('name')} at "
             f"{b.get('image_size')} px{_crop_words(b)}, {h} x {w} tokens of {b.get('feature_dim')}, "
             f"{out['bytes_per_image'] / 1024:.0f} KiB per image",
             f"extracted {out['extracted']}, reused {out['skipped']}, failed {len(out['failed'])} "
             f"in {out['seconds']:.1f} s"]
    if b.get("blocks"):  # several blocks from one forward pass; training uses the first unless --block
        lines.insert(1, "blocks: " + ", ".join(f"{e['layers']} ({e['grid_hw'][0]} x {e['grid_hw'][1]} x "
                                               f"{e['feature_dim']})" for e in b["blocks"])
                     + f"; train, cv and tune use {b['blocks'][0]['layers']} unless --block says another")
    lines += [f"  {f['path']}: {f['reason']}" for f in out["failed"][:20]]
    if len(out["failed"]) > 20:
        lines.append(f"  ... and {len(out['failed']) - 20} more")
    return "\n".join(lines)



def add_extract(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff extract PROJECT`."""
    from ..settings import ExtractSettings, add_options

    p = sub.add_parser("extract", parents=[common], help="run the frozen backbone once per image into the HDF5 cache")
    p.add_argument("project", type=Path)
    p.add_argument("--backbone", help="a name from `loff weights list`, an added backbone or a timm model name "
                                      "(default: the best DINOv2 present on a GPU, else the best shipped "
                                      "EfficientNet-Lite; see `loff weights list`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", help="local weights file (.safetensors or .pth, loaded without running code)")
    g.add_argument("--random-init", action="store_true", help="seeded random weights (tests, speed checks)")
    p.add_argument("--weights-seed", type=int, default=0, help="seed of --random-init weights")
    add_options(p, ExtractSettings)
    # None: not typed (ExtractSettings.crop is used, and the defaults line names it)
    p.set_defaults(func=cmd_extract, describe=_describe_extract, crop=None)

