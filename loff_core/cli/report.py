"""`loff report`: the model report of a run, one self-contained HTML file (loff_core/report.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .terminal import run_with_progress


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from .. import steps  # every command runs a step (loff_core/steps.py), as the app does
    from ..project import Project

    project = Project.open(args.project)  # the step takes the reader lock: never waits for a training
    path = run_with_progress("report", args.quiet, lambda p: steps.report(project, args.run, args.out, progress=p))
    return {"report": str(path)}


def _describe_report(out: dict[str, Any]) -> str:
    return f"report written: {out['report']}\n  open it in a browser; print it to PDF from there"


def add_report(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff report PROJECT [--run ID] [--out FILE]`."""
    p = sub.add_parser("report", parents=[common], help="the model report of a run: one HTML file",
                       description="Write the model report of a run as one self-contained HTML file (plots "
                                   "embedded, no network; prints to PDF from a browser): data (images and patients "
                                   "per split, how the split was found, what was refused), protocol (backbone, "
                                   "weights hash and licence, head, augmentations, how the head was chosen), "
                                   "results on test (every metric with its 95%% interval, ROC and precision-recall "
                                   "curves with the operating point, reliability before / after calibration, "
                                   "confusion matrix, per-class AUC, by side / view), examples with heat maps, "
                                   "limitations and a CLAIM 2024 checklist. Images are named by their "
                                   "de-identified key only.")
    p.add_argument("project", type=Path)
    p.add_argument("--run", help="run id (default: the latest tune winner, else the run with the best validation "
                                 "score)")
    p.add_argument("--out", type=Path, metavar="FILE", help="where to write it (default: PROJECT/reports/RUN.html)")
    p.set_defaults(func=cmd_report, describe=_describe_report)
