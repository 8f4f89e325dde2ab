"""Another run's ROC on the same split, for the Results page's dashed overlay.

Read from the run's saved evaluation (`eval-<split>.json`) when there is one; otherwise
computed on demand as a light job: the run is evaluated on that split without saving and
without bootstrap intervals (the curve and its AUC are all the overlay needs). It takes the
shared reader lock (`steps.evaluate`), which never waits for a training and never makes a
Train or Evaluate the user starts meanwhile fail; the Evaluate button stays the way to a
saved evaluation with intervals. Plain Python: no Qt.
"""

from __future__ import annotations

import json
from typing import Any, Optional


def saved(project: Any, run_id: str, split: str) -> Optional[dict[str, Any]]:
    """{"roc", "auc", "saved"} of a saved evaluation of RUN on SPLIT, else None."""
    try:
        record = json.loads((project.runs_dir / run_id / f"eval-{split}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not record.get("roc"):
        return None
    return {"roc": record["roc"], "auc": (record.get("metrics") or {}).get("auc"), "saved": True}


def compute(project: Any, run_id: str, split: str) -> dict[str, Any]:
    """Evaluate RUN on SPLIT for its ROC, nothing written (a light job's work)."""
    from loff_core import steps
    from loff_core.settings import EvaluateSettings

    result = steps.evaluate(project, run_id, split, EvaluateSettings(bootstrap=0), save=False)  # reader lock
    return {"roc": result.evaluation.get("roc") or {}, "auc": result.metrics.get("auc"), "saved": False,
            "project": str(project.root), "run": run_id, "split": split}
