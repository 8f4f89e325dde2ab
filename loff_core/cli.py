"""The `loff` command: the whole engine from a terminal, headless.

Progress goes to stderr (a bar on long steps); with `--json` one JSON document goes to
stdout, else a short human summary. Exit status 0 on success; 1 with a one-line reason
for a problem the user can fix; 130 when interrupted (work already done is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import LoffError, ProjectError, TrainingError
from .progress import Cancelled, Progress


# -- progress on the terminal ------------------------------------------------------------
class TerminalProgress:
    """A tqdm bar on stderr fed by a `Progress`. When stderr is not a terminal (a log file,
    CI), no bar: one plain line at most every 10 seconds and at the end, so logs stay
    readable."""

    LOG_INTERVAL = 10.0

    def __init__(self, desc: str, quiet: bool = False):
        import time

        self.desc, self.quiet = desc, quiet
        self._bar = None
        self._tty = sys.stderr.isatty()
        self._clock = time.monotonic
        self._last_line = -1e9
        self._last: tuple[int, int, str] = (0, 0, "")
        self.progress = Progress(on_report=self._on_report)

    def _on_report(self, done: int, total: int, message: str) -> None:
        if self.quiet:
            return
        self._last = (done, total, message)
        if not self._tty:
            now = self._clock()
            if now - self._last_line >= self.LOG_INTERVAL:
                self._last_line = now
                self._print_line()
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total or None, desc=self.desc, file=sys.stderr, leave=True,
                             dynamic_ncols=True, mininterval=0.5)
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def _print_line(self) -> None:
        done, total, message = self._last
        count = f"{done}/{total}" if total else str(done)
        print(f"{self.desc}: {count} {message}".rstrip(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self.quiet and not self._tty and self._last != (0, 0, ""):
            self._print_line()


def _run_with_progress(desc: str, quiet: bool, fn: Callable[[Progress], Any]) -> Any:
    terminal = TerminalProgress(desc, quiet)
    try:
        return fn(terminal.progress)
    except KeyboardInterrupt:
        terminal.progress.cancel()
        raise
    finally:
        terminal.close()


# -- commands ----------------------------------------------------------------------------
def cmd_import(args: argparse.Namespace) -> dict[str, Any]:
    from .project import Project

    if not args.images_dir.is_dir():  # before a project is created for nothing
        raise ProjectError(f"{args.images_dir}: not a folder")
    project = Project.open_or_create(args.project)
    with project.lock():
        classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
        summary = _run_with_progress("import", args.quiet, lambda p: project.import_images(
            args.images_dir, labels_csv=args.labels, label_column=args.label_column,
            file_column=args.file_column, patient_column=args.patient_column, classes=classes,
            task=args.task, progress=p))
    out = asdict(summary)
    out["failed"] = out.pop("failures")
    out["project"] = str(project.root)
    return out


def _describe_import(out: dict[str, Any]) -> str:
    lines = [f"imported {out['imported']} images ({out['labelled']} labelled) into {out['project']}",
             "classes: " + (", ".join(f"{c} ({n})" for c, n in out["per_class"].items()) or "none"),
             "split: " + ", ".join(f"{k} {v}" for k, v in sorted(out["splits"].items()))]
    if out["failed"]:
        lines.append(f"{len(out['failed'])} files could not be read:")
        lines += [f"  {f['path']}: {f['reason']}" for f in out["failed"][:50]]
        if len(out["failed"]) > 50:
            lines.append(f"  ... and {len(out['failed']) - 50} more (see import-report.json)")
    lines += [f"warning: {w}" for w in out["warnings"][:20]]
    return "\n".join(lines)


def backbone_spec_from_args(args: argparse.Namespace) -> Any:
    from .backbones import BackboneSpec, default_backbone_name

    name = args.backbone or default_backbone_name(args.device)
    return BackboneSpec(name=name, weights=args.weights, random_init=args.random_init, seed=args.weights_seed,
                        image_size=args.image_size, grid=args.grid)


def cmd_extract(args: argparse.Namespace) -> dict[str, Any]:
    from .project import Project

    from contextlib import nullcontext

    from .cache import distributed_rank_world

    project = Project.open(args.project)
    spec = backbone_spec_from_args(args)
    rank, world = distributed_rank_world()  # under torchrun: N processes, one cache
    with project.lock() if rank == 0 else nullcontext():
        result = _run_with_progress("extract", args.quiet or rank != 0, lambda p: project.extract(
            spec, device=args.device, batch_size=args.batch_size, num_workers=args.workers, progress=p))
    if rank != 0:
        return {"rank": rank, "world_size": world, "extracted": result.extracted}
    _print_notes("extract", result.notes)
    project = Project.open(args.project)
    cache = project.open_cache()
    return {
        "cache": str(Path(result.cache_path).relative_to(project.root)),
        "fingerprint": cache.fingerprint,
        "backbone": cache.backbone,
        "images": len(cache.image_ids),
        "extracted": result.extracted,
        "skipped": result.skipped,
        "failed": [{"path": project.relative(f.path), "reason": f.reason} for f in result.failures],
        "seconds": round(result.seconds, 2),
        "bytes_per_image": cache.nbytes_per_image(),
        "notes": result.notes,
        "stopped": result.stopped,
        "world_size": world,
    }


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from .augment import AugmentConfig
    from .project import Project
    from .training import TrainConfig

    project = Project.open(args.project)
    task = args.task or project.settings.task
    defaults = TrainConfig(head=args.head, task=task)
    config = replace(
        defaults,
        epochs=args.epochs if args.epochs is not None else defaults.epochs,
        seed=args.seed,
        device=args.device,
        lr=args.lr if args.lr is not None else defaults.lr,
        batch_size=args.batch_size if args.batch_size is not None else defaults.batch_size,
        patience=args.patience if args.patience is not None else defaults.patience,
        augment=AugmentConfig.off() if args.no_augment else _augment_from_args(args.augment, defaults.augment),
    )
    curves: list[dict[str, Any]] = []
    with project.lock():
        run = _run_with_progress("train", args.quiet, lambda p: project.train(config, progress=p, on_epoch=curves.append))
    r = run.record
    _print_notes("train", r.get("notes", []))
    return {"run": run.run_id, "head": r["head_config"]["kind"], "task": r["task"], "classes": r["classes"],
            "best_epoch": r["best_epoch"], "monitor": r["monitor"], "best_score": r["best_score"],
            "stopped": r["stopped"], "epochs": len(r["history"]), "n_train": r["n_train"], "n_val": r["n_val"],
            "notes": list(r.get("notes", []))}


#: the tensor augmentations and their defaults, as `loff train --help` shows them; a test
#: checks them against `AugmentConfig()` (kept here so that --help never imports torch)
AUGMENT_HELP = {
    "hflip": ("0.5", "probability of a horizontal flip of the token grid"),
    "crop_prob": ("0.5", "probability of a random resized crop of the grid"),
    "crop_scale": ("0.6,1.0", "area range of that crop"),
    "noise_std": ("0.05", "std of Gaussian noise added to the tokens (in units of their std)"),
    "token_dropout": ("0.1", "share of grid tokens zeroed"),
    "mixup_alpha": ("0.2", "Beta(alpha, alpha) of mixup"),
    "mixup_prob": ("0.5", "probability that a batch is mixed"),
}


def _augment_from_args(pairs: Optional[list[str]], base: Any) -> Any:
    from dataclasses import replace


    changes: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in AUGMENT_HELP:
            raise TrainingError(f"--augment {pair}: expected NAME=VALUE with NAME one of {', '.join(AUGMENT_HELP)}")
        try:
            numbers = tuple(float(v) for v in value.split(","))
        except ValueError:
            raise TrainingError(f"--augment {pair}: {value!r} is not a number") from None
        if key == "crop_scale":
            if len(numbers) != 2 or not 0 < numbers[0] <= numbers[1] <= 1:
                raise TrainingError(f"--augment {pair}: expected two numbers LOW,HIGH with 0 < LOW <= HIGH <= 1")
            changes[key] = numbers
        elif len(numbers) != 1 or numbers[0] < 0 or (key != "mixup_alpha" and numbers[0] > 1):
            raise TrainingError(f"--augment {pair}: expected one number in [0, 1]"
                                + (" (mixup_alpha: >= 0)" if key == "mixup_alpha" else ""))
        else:
            changes[key] = numbers[0]
    return replace(base, **changes) if changes else base


def _print_notes(command: str, notes: list[str]) -> None:
    """What a step did differently (e.g. a smaller batch after a GPU out-of-memory): on
    stderr even with --quiet, since it can change results and speed."""
    for note in notes:
        print(f"loff {command}: note: {note}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from .project import Project

    project = Project.open(args.project)
    with project.lock():
        return project.evaluate(args.run, args.split, n_bootstrap=args.bootstrap)


def _describe_evaluate(out: dict[str, Any]) -> str:
    lines = [f"run {out['run']} on the {out['split']} split ({out['n']} images)"]
    for name, value in out["metrics"].items():
        ci = out.get("ci", {}).get(name)
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(f"  {name:22s} {shown}" + (f"  [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    lines.append("confusion matrix (rows true, columns predicted): " + " ".join(out["classes"]))
    lines += ["  " + " ".join(f"{v:4d}" for v in row) for row in out["confusion_matrix"]]
    lines += [f"warning: stale head: {s}" for s in out.get("stale", [])]
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from .export import export_head
    from .project import Project

    project = Project.open(args.project)
    out = _run_with_progress("export", args.quiet,
                             lambda p: export_head(project, args.out_dir, run_id=args.run, onnx=args.onnx, progress=p))
    return {k: v for k, v in out.items() if k != "card"} | {"onnx": out["card"].get("onnx")}


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    from .export import predict_files

    out = _run_with_progress("predict", args.quiet, lambda p: predict_files(
        args.head_dir, args.files, weights=args.weights, random_init=True if args.random_init else None,
        device=args.device, batch_size=args.batch_size, progress=p))
    if not out["predictions"]:
        failed = out.get("failed", [])
        first = f"; {failed[0]['path']}: {failed[0]['reason']}" if failed else ""
        raise LoffError(f"no predictions: none of the {len(failed)} files could be read{first}")
    if args.csv:
        from .project import write_predictions_csv

        write_predictions_csv(Path(args.csv), out, with_failed=False)
    return out


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from .demo import create_demo_project

    project = _run_with_progress("demo", args.quiet, lambda p: create_demo_project(
        args.project, n_patients=args.patients, progress=p))
    summary = project.import_summary()
    return {"project": str(project.root), "imported": summary.imported, "classes": summary.classes,
            "task": project.settings.task, "synthetic": True, "splits": summary.splits}


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    from .project import Project

    project = Project.open(args.project)
    out: dict[str, Any] = {"project": str(project.root), "name": project.settings.name,
                           "task": project.settings.task, "classes": project.settings.classes,
                           "synthetic": project.settings.synthetic}
    if project.has_catalog():
        s = project.import_summary()
        out |= {"images": s.imported, "labelled": s.labelled, "splits": s.splits, "failed": len(s.failures)}
    out["caches"] = [str(p.relative_to(project.root)) for p in project.cache_paths()]
    out["active_cache"] = project.settings.active_cache
    out["runs"] = [{"run": r.run_id, "head": r.record["head_config"]["kind"], "task": r.record["task"],
                    "best_score": r.record.get("best_score"), "monitor": r.record.get("monitor"),
                    "stale": project.stale_reasons(r)} for r in project.runs()]
    # a damaged run folder is named, never breaks the listing of the others
    out["broken_runs"] = [{"run": name, "reason": reason} for name, reason in project.broken_runs()]
    return out


# -- parser ------------------------------------------------------------------------------
def _at_least(low: float, kind: type = int) -> Any:
    """argparse type: a number >= low (a clear usage error instead of a traceback later)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < low or (kind is float and value != value):
            raise argparse.ArgumentTypeError(f"{text} is too small (at least {low})")
        return value
    return parse


def _positive_float(text: str) -> float:
    value = _at_least(0.0, float)(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    common.add_argument("--quiet", action="store_true", help="no progress bar")

    parser = argparse.ArgumentParser(
        prog="loff", description="LOFF Studio engine: import medical images, cache frozen-backbone features, "
                                 "train a compact head with tensor augmentations, evaluate, export, predict.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import", parents=[common], help="scan an image folder (in place) into a project")
    p.add_argument("project", type=Path)
    p.add_argument("images_dir", type=Path)
    p.add_argument("--labels", type=Path, help="CSV with a file column and a label column")
    p.add_argument("--label-column")
    p.add_argument("--file-column")
    p.add_argument("--patient-column")
    p.add_argument("--classes", help="comma-separated class order (low to high for ordinal labels), e.g. F,G,D")
    p.add_argument("--task", choices=["classification", "ordinal"], help="the project's default task")
    p.set_defaults(func=cmd_import, describe=_describe_import)

    p = sub.add_parser("extract", parents=[common], help="run the frozen backbone once per image into the HDF5 cache")
    p.add_argument("project", type=Path)
    p.add_argument("--backbone", help="timm model name (default: tf_efficientnet_lite0 on CPU; a DINOv2 ViT on a GPU "
                                      "when its weights are cached)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", help="local weights file (.safetensors or .pth, loaded without running code)")
    g.add_argument("--random-init", action="store_true", help="seeded random weights (tests, speed checks)")
    p.add_argument("--weights-seed", type=int, default=0, help="seed of --random-init weights")
    p.add_argument("--image-size", type=_at_least(16), help="input size in pixels (default: the model's own)")
    p.add_argument("--grid", type=_at_least(1), default=16, help="average-pool the token grid to at most GRID x GRID")
    p.add_argument("--batch-size", type=_at_least(1), default=16)
    p.add_argument("--workers", type=_at_least(0), help="decode worker processes (default: up to 4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", parents=[common], help="train a compact head on the cached features")
    p.add_argument("project", type=Path)
    p.add_argument("--head", choices=["linear", "attention", "vit"], default="attention",
                   help="attention (default): attention pooling over the token grid; linear: a probe on the "
                        "CLS embedding; vit: a small ViT over the grid (LOFF-TA)")
    p.add_argument("--task", choices=["classification", "ordinal"])
    p.add_argument("--epochs", type=_at_least(1))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--batch-size", type=_at_least(1))
    p.add_argument("--patience", type=_at_least(1), help="early-stopping patience in epochs")
    p.add_argument("--no-augment", action="store_true", help="train without tensor augmentations")
    p.add_argument("--augment", action="append", metavar="NAME=VALUE",
                   help="change one tensor augmentation (repeatable); defaults: "
                        + "; ".join(f"{k}={v} ({d})" for k, (v, d) in AUGMENT_HELP.items()) + ". 0 turns one off")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[common], help="metrics and per-image predictions of a run")
    p.add_argument("project", type=Path)
    p.add_argument("--run", help="run id (default: the latest)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--bootstrap", type=_at_least(0), default=1000, help="bootstrap resamples for 95%% intervals")
    p.set_defaults(func=cmd_evaluate, describe=_describe_evaluate)

    p = sub.add_parser("export", parents=[common], help="write head.safetensors + card.json (+ model.onnx)")
    p.add_argument("project", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--run")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (backbone + head), checked against torch")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", parents=[common], help="predict new images with an exported head")
    p.add_argument("head_dir", type=Path)
    p.add_argument("files", nargs="+", type=Path)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights")
    g.add_argument("--random-init", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_at_least(1), default=8)
    p.add_argument("--csv", type=Path, help="also save the predictions as CSV")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", parents=[common], help="write a small synthetic demo project (no download)")
    p.add_argument("project", type=Path)
    p.add_argument("--patients", type=_at_least(2), default=60)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", parents=[common], help="what a project holds: images, caches, runs")
    p.add_argument("project", type=Path)
    p.set_defaults(func=cmd_info)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


_SAFETENSORS_IO = re.compile(r"I/O error: (?P<reason>.*?) \(os error (?P<errno>\d+)\)(?: at path \"(?P<path>.*)\")?")


def file_error_reason(exc: BaseException, where: Optional[Path] = None) -> Optional[str]:
    """A one-line reason for a file-system error (read-only or full disk, permission, ...):
    "cannot write FILE: Read-only file system". None when `exc` is no such error.

    Besides OSError this recognises safetensors' I/O errors (a Rust error type whose text
    carries the OS error). An error that names no file is said to be about `where` (the
    folder or file the command writes). Every write in the engine goes through a temporary
    file renamed over its target, so an error here leaves the files already written as they
    were."""
    if isinstance(exc, OSError):
        code, reason = exc.errno, exc.strerror
        filename = exc.filename if exc.filename is not None else exc.filename2
    else:
        match = _SAFETENSORS_IO.search(str(exc)) if type(exc).__name__ == "SafetensorError" else None
        if match is None:
            return None
        code, reason, filename = int(match["errno"]), match["reason"], match["path"]
    if not reason:  # e.g. h5py: an OSError with only a message
        reason = _one_line(str(exc)) or type(exc).__name__
    from .fsutil import WRITE_ERRNOS

    verb = "cannot write" if code in WRITE_ERRNOS else "cannot access"
    if filename is None:
        if code is None:
            return _one_line(reason)
        return f"{verb} {'in ' + str(where) if where is not None else 'a file'}: {reason}"
    return _one_line(f"{verb} {os.fsdecode(filename)}: {reason}")


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _written_location(args: argparse.Namespace) -> Optional[Path]:
    """Where a command writes: what a file-system error that names no file is about."""
    if args.command == "export":
        return args.out_dir
    if args.command == "predict":
        return args.csv
    return getattr(args, "project", None)


def _terminate_as_interrupt() -> Any:
    """SIGTERM (a scheduler's or `kill`'s stop) ends a command like Ctrl-C: temporary files
    removed, work already finished kept, exit 130. Returns the previous handler (None when
    not in the main thread or the platform has no SIGTERM)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, interrupt)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    previous = _terminate_as_interrupt()
    try:
        return _main(args)
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    try:
        out = args.func(args)
    except LoffError as exc:
        print(f"loff {args.command}: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - only file-system errors are turned into a reason
        reason = file_error_reason(exc, _written_location(args))
        if reason is None:
            raise
        print(f"loff {args.command}: {reason}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Cancelled):
        print(f"loff {args.command}: interrupted; work already finished is kept", file=sys.stderr)
        return 130
    if args.json:  # always valid JSON: an undefined metric (NaN) is null
        from .trust import finite_json

        json.dump(finite_json(json.loads(json.dumps(out, default=str))), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        describe = getattr(args, "describe", None)
        print(describe(out) if describe else json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
