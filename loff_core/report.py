"""PLACEHOLDER until branch report is merged: the model report of issue 21 (points 2-3) is
built by helper `report`; this stand-in has only its entry point (CONTRACTS.md item 3) and
writes a one-line HTML file, so `loff auto` runs end to end before the merge. The
integrator replaces this file with the report branch's."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

from .progress import Progress


def write_report(project: Any, run_id: Optional[str] = None, out: Optional[Path] = None,
                 *, progress: Progress = Progress()) -> Path:
    """PLACEHOLDER: PROJECT/reports/<run_id>.html (or `out`) naming the run; returns its path."""
    run = project.run(run_id)
    path = Path(out) if out is not None else project.root / "reports" / f"{run.run_id}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!doctype html><title>LOFF report</title><p>Run {html.escape(run.run_id)} "
                    f"(placeholder report)</p>\n", encoding="utf-8")
    progress.report(1, 1, "report written")
    return path
