"""`loff auto`: from an image folder to an exported head and its report in one command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .project import _labels_args
from ..auto import summary_text
from .terminal import declared, run_with_progress


def cmd_auto(args: argparse.Namespace) -> dict[str, Any]:
    from ..auto import build_model
    from ..errors import ProjectError
    from ..settings import AutoSettings, ImportSettings

    if not args.images_dir.is_dir():  # before a project is created for nothing
        raise ProjectError(f"{args.images_dir}: not a folder")
    project = args.project or Path.cwd() / f"{args.images_dir.resolve().name}-loff"
    classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else None
    imports = ImportSettings(**declared(args, ImportSettings, skip=("labels_csv", "classes")),
                             labels_csv=_labels_args(args.labels), classes=classes)
    settings = AutoSettings(budget=args.budget)
    return run_with_progress("auto", args.quiet, lambda p: build_model(args.images_dir, project, imports, settings,
                                                                         progress=p))


def add_auto(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff auto IMAGES_DIR`."""
    from ..progress import parse_duration
    from ..settings import AutoSettings, ImportSettings, add_options, field_info

    def duration(text: str) -> float:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    duration.__name__ = "duration"

    p = sub.add_parser("auto", parents=[common], help="from an image folder to an exported head and its report",
                       description="Import the folder (columns, patients and a given split found as `loff import` "
                                   "finds them; what was guessed is printed), extract features with the default "
                                   "backbone, find the best head by patient-grouped cross-validation within the "
                                   "time budget, fit its operating point on the out-of-fold predictions, test it "
                                   "once, export it and write its report. Running it again reuses what is done.")
    p.add_argument("images_dir", type=Path, metavar="IMAGES")
    p.add_argument("--project", type=Path, help="the project folder (default: IMAGES' name + '-loff' in the "
                                                "current folder)")
    p.add_argument("--labels", action="append", metavar="[SPLIT=]CSV",
                   help="CSV with a file column and a label column (as `loff import --labels`); without it the "
                        "sub-folder names are the labels")
    budget = field_info(AutoSettings, "budget")
    p.add_argument("--budget", type=duration, default=budget.default,
                   help=f"{budget.help} (default: {budget.default:g} s)".replace("%", "%%"))
    add_options(p, ImportSettings)
    p.add_argument("--classes", help="comma-separated class order (low to high for ordinal labels), e.g. F,G,D")
    p.set_defaults(func=cmd_auto, describe=summary_text)
