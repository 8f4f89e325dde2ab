"""What evaluating a run does: its head over one split's cached features, the run's
operating point applied, metrics with bootstrap intervals, and the per-image predictions
saved with the run (eval-SPLIT.json, predictions-SPLIT.csv).

The body of the `evaluate` step (loff_core/steps.py takes the reader lock around it); `export`
(a card carries val / test metrics) and `tune` (the winner tested once) call it too, which is
why it lives on the workflows floor below the steps (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any, Optional

from .errors import ProjectError
from .fsutil import atomic_write_json
from .predictions import write_evaluation_csv
from .progress import Progress
from .settings import EvaluateSettings


def evaluate_run(project: Any, run_id: Optional[str] = None, split: str = "test", *,
              n_bootstrap: int = EvaluateSettings.bootstrap, save: bool = True,
              progress: Progress = Progress()) -> dict[str, Any]:
    """Metrics and per-image predictions of a run on one split; saved with the run."""
    from .metrics import evaluate_predictions, small_split_warning
    from .training import predict_probabilities

    run = project.run(run_id)
    catalog_classes = list(project.catalog().classes)
    if list(run.record["classes"]) != catalog_classes:
        raise ProjectError(f"{run.path / 'run.json'}: run {run.run_id} was trained on the classes "
                           f"{', '.join(run.record['classes'])} but the catalog has {', '.join(catalog_classes)}; "
                           f"its outputs cannot be scored against these labels; train again")
    cache = project.open_cache(run.record["cache_fingerprint"])
    project.check_cache_fits(run, cache)
    ids, y, entries = project.labelled_split(split, cache)
    if not ids:
        raise ProjectError(f"{project.root}: the {split} split has no labelled images with features")
    head_config, state = project.load_head(run)
    progress.check()
    probs = predict_probabilities(head_config, state, cache, ids, progress=progress)
    progress.check()
    progress.report(len(ids), len(ids), f"{n_bootstrap} bootstrap resamples for the 95% intervals")
    classes = run.record["classes"]
    task = run.record["task"]
    from .calibration import adjust, decide

    op = run.record.get("operating_point")
    probs = adjust(probs, op)  # the run's calibration / prevalence, then its threshold
    predicted = decide(probs, task, op)
    evaluation = evaluate_predictions(y, probs, classes, task, n_bootstrap=n_bootstrap, seed=project.settings.seed,
                                      predicted=predicted)
    images = project.images_root()
    predictions = [
        {
            "image_id": e.image_id,
            "path": project.relative(images / e.path),  # relative to the project folder
            "label": e.label,
            "predicted": classes[int(p)],
            "probabilities": [round(float(x), 6) for x in row],
        }
        for e, p, row in zip(entries, predicted, probs)
    ]
    result = {
        "run": run.run_id,
        "split": split,
        "task": task,
        "classes": classes,
        "n": len(ids),
        "stale": project.stale_reasons(run),
        "operating_point": op,
        **evaluation,
        "warnings": [w for w in [small_split_warning(len(ids), evaluation["ci"].get("accuracy"), split)] if w],
        "predictions": predictions,
    }
    progress.check()  # a cancel before this point leaves the saved evaluation as it was
    if save:  # save=False: only returned (e.g. a ROC overlay while another job holds the lock)
        atomic_write_json(run.path / f"eval-{split}.json", {k: v for k, v in result.items() if k != "predictions"})
        write_evaluation_csv(run.path / f"predictions-{split}.csv", predictions, classes)
    return result
