"""`loff weights list|get|add|remove`: the backbones a user can have (loff_core.weights, .hub)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def cmd_list(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import asdict

    from ..advice import IMAGE_KINDS, advise, describe
    from ..models import resolve_device
    from ..weights import default_backbone, list_backbones, weights_dir

    try:
        gpu = resolve_device("auto").type == "cuda"
    except Exception:  # noqa: BLE001 - no torch device info: answer for the CPU
        gpu = False
    kinds = [args.images] if getattr(args, "images", None) else list(IMAGE_KINDS)
    advice = [{**asdict(a), "text": describe(a)} for a in (advise(k, gpu) for k in kinds)]
    return {"backbones": list_backbones(), "weights_dir": str(weights_dir()), "default": default_backbone(gpu),
            "advice": advice}


def _describe_list(out: dict[str, Any]) -> str:
    rows = out["backbones"]
    lines = [f"{'name':22s} {'params':>8s} {'size':>9s}  {'present':7s}  licence / source"]
    for r in rows:
        lines.append(f"{r['name']:22s} {r['params_m']:>7g}M {r['size_mb']:>7.1f}MB  {'yes' if r['present'] else 'no':7s}  "
                     f"{r['licence']}; {r['source']}" + ("; GPU only" if r.get("gpu_only") else "")
                     + (f"; trained on {r['trained_on']}" if r.get("trained_on") else ""))
    d = out["default"]
    lines.append(f"default: {d['registry_name']} ({d['name']}): {d['reason']}"
                 + (f"; `loff weights get {d['would_use']}` downloads them" if d.get("would_use") else ""))
    lines.append(f"added backbones live in {out['weights_dir']}")
    for a in out.get("advice", []):
        lines.append(f"advice {a['text']}")
    return "\n".join(lines)


def cmd_get(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import asdict

    from .terminal import run_with_progress
    from ..hub import describe_get, get_weights

    info = describe_get(args.name)
    resume = f", resuming after {info['partial_mb']:g} MB already here" if info["partial_mb"] else ""
    print(f"loff weights get: {info['name']}: {info['size_mb']:g} MB, licence {info['licence']}, from {info['source']}"
          f"{resume}", file=sys.stderr)
    token = None
    if info["gated"]:
        print(f"loff weights get: {info['name']} is gated: accept its licence ({info['licence_url'] or info['page']}) "
              f"on {info['page']} while signed in; the download needs a Hub access token, which is sent only to "
              f"the Hub", file=sys.stderr)
        if not info["token_set"]:
            token = _ask_token()
    result = run_with_progress(f"get {args.name}", args.quiet, lambda p: get_weights(args.name, p, token=token))
    out = asdict(result)
    out["path"] = str(result.path)
    out["licence"] = info["licence"]
    return out


def _ask_token() -> Any:
    """A Hub access token typed at the terminal (hidden), or None without one (no terminal:
    the Get then stops with the remedy: HF_TOKEN or `hf auth login`)."""
    import getpass

    if not sys.stdin.isatty():
        return None
    try:
        return getpass.getpass("Hugging Face access token (read; input hidden, sent only to the Hub): ").strip() or None
    except (EOFError, KeyboardInterrupt):
        return None


def _describe_get(out: dict[str, Any]) -> str:
    how = "already here" if not out["downloaded"] else (
        f"downloaded {out['downloaded'] / 1e6:.1f} MB" + (f" (resumed after {out['resumed_from'] / 1e6:.1f} MB)"
                                                           if out["resumed_from"] else ""))
    extra = f"; converted into the weights folder as {out['added']}" if out.get("added") else ""
    return f"{out['name']}: {how}, {out['checksum_kind']} checked ({out['checksum'][:16]}...), {out['path']}{extra}"


def cmd_add(args: argparse.Namespace) -> dict[str, Any]:
    from ..weights import add_weights

    model_args: dict[str, Any] = {}
    if args.heads:
        model_args["num_heads"] = args.heads
    if args.quick_gelu:
        model_args["act_layer"] = "quick_gelu"
    mean, std = _triple(args.mean, "--mean"), _triple(args.std, "--std")
    entry = add_weights(args.source, args.name, licence=args.licence or "", architecture=args.architecture,
                        model_args=model_args or None, mean=mean, std=std, native_size=args.native_size)
    card = entry.card()
    card["folder"] = str(entry.weights_file.parent)
    return card


def _triple(text: Any, option: str) -> Any:
    from ..errors import BackboneError

    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise BackboneError(f"{option} {text}: expected 1 or 3 numbers separated by commas") from None
    if len(values) not in (1, 3) or (option == "--std" and min(values) <= 0):
        raise BackboneError(f"{option} {text}: expected 1 or 3 numbers separated by commas (std > 0)")
    return tuple(values * 3 if len(values) == 1 else values)


def _describe_add(out: dict[str, Any]) -> str:
    return (f"added {out['name']}: {out['source_format']} checkpoint {out['source_file']} (sha256 "
            f"{out['source_sha256'][:16]}...) as timm {out['architecture']}, {out['params_m']:g} M parameters, "
            f"native {out['native_size']} px, licence {out['licence']}\n"
            f"use it with: loff extract PROJECT --backbone {out['name']}")


def cmd_remove(args: argparse.Namespace) -> dict[str, Any]:
    from ..weights import remove_weights

    return remove_weights(args.name)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _input_size(text: str) -> int:
    """--native-size: an input size in the declared range (settings.ExtractSettings.image_size)."""
    from ..settings import input_size_problem

    value = _positive_int(text)
    if (problem := input_size_problem(value)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `loff weights ...` to the main parser's subcommands."""
    w = sub.add_parser("weights", help="backbones: list, get (download), add your own, remove")
    wsub = w.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    w.set_defaults(describe=_describe_list)  # each action sets its own; this one satisfies the parser check

    p = wsub.add_parser("list", parents=[common], help="suggested and added backbones: size, licence, present?")
    from ..advice import IMAGE_KINDS

    p.add_argument("--images", choices=IMAGE_KINDS, help="the advice for these images only (default: all kinds, "
                                                         "for the device found)")
    p.set_defaults(func=cmd_list, describe=_describe_list, command="weights list")

    p = wsub.add_parser("get", parents=[common], help="download a suggested backbone from the Hugging Face Hub "
                                                      "(explicit only; resumable; checked against the Hub's SHA-256)")
    p.add_argument("name")
    p.set_defaults(func=cmd_get, describe=_describe_get, command="weights get")

    p = wsub.add_parser("add", parents=[common], help="bring your own checkpoint: timm, original DINOv2, "
                                                      "Hugging Face Dinov2Model (e.g. RAD-DINO) or DINOv3ViTModel, OpenCLIP ViT or "
                                                      "timm tower (BiomedCLIP)")
    p.add_argument("source", type=Path, help="weights file or a folder holding one (with its config.json)")
    p.add_argument("--name", help="name to use with --backbone (default: from the file name)")
    p.add_argument("--licence", help="the weights' licence, as you know it (written on the card)")
    p.add_argument("--architecture", help="timm model name (needed for a timm checkpoint without config.json)")
    p.add_argument("--heads", type=_positive_int, help="attention heads (default: width / 64, as DINOv2 and CLIP)")
    p.add_argument("--quick-gelu", action="store_true", help="OpenAI CLIP towers use QuickGELU")
    p.add_argument("--mean", help="input mean, e.g. 0.5,0.5,0.5 (default: from the checkpoint's config)")
    p.add_argument("--std", help="input std, e.g. 0.25,0.25,0.25")
    p.add_argument("--native-size", type=_input_size, help="native input size in pixels")
    p.set_defaults(func=cmd_add, describe=_describe_add, command="weights add")

    p = wsub.add_parser("remove", parents=[common], help="remove an added backbone")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove, describe=lambda out: f"removed {out['removed']} ({out['folder']})",
                   command="weights remove")
