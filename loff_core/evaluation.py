"""What evaluating a run does: its head over one split's cached features, the run's
operating point applied, metrics with bootstrap intervals, and the per-image predictions
saved with the run (eval-SPLIT.json, predictions-SPLIT.csv).

The body of the `evaluate` step (loff_core/steps.py takes the reader lock around it); `export`
(a card carries val / test metrics) and `tune` (the winner tested once) call it too, which is
why it lives on the workflows floor below the steps (docs/architecture.md). `explain_images`
(the body of the `explain` step: probabilities and heat maps of some images) is here for the
same reason: the model report (loff_core/report.py) shows heat maps too.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .errors import ProjectError
from .fsutil import atomic_write_json
from .predictions import write_evaluation_csv
from .progress import Progress
from .results import ExplainResult
from .settings import EvaluateSettings


def evaluate_run(project: Any, run_id: Optional[str] = None, split: str = "test", *,
              n_bootstrap: int = EvaluateSettings.bootstrap, save: bool = True,
              progress: Progress = Progress()) -> dict[str, Any]:
    """Metrics and per-image predictions of a run on one split; saved with the run."""
    from .metrics import small_split_warning
    from .training import predict_probabilities

    run = project.run(run_id)
    project.check_run_classes(run)
    cache = project.open_cache(run.record["cache_fingerprint"], block=run.record.get("block"))
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
    from .calibration import adjust

    op = run.record.get("operating_point")
    probs = adjust(probs, op)  # the run's calibration / prevalence, then its threshold
    predicted, evaluation = evaluate_decisions(y, probs, classes, task, op, n_bootstrap=n_bootstrap,
                                               seed=project.settings.seed)
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


def evaluate_decisions(y_true: Sequence[int], probs: Any, classes: Sequence[str], task: str,
                       operating_point: Optional[dict[str, Any]], *, n_bootstrap: int = EvaluateSettings.bootstrap,
                       seed: int = 0, predicted: Any = None) -> tuple[Any, dict[str, Any]]:
    """The one scoring of `evaluate` and `loff predict` with labels: metrics and confusion
    matrix at the run's decision (its operating point: binary threshold, else argmax /
    ordinal decode) on `probs`, the run's adjusted probabilities. `predicted`: decisions
    already made from these probabilities with this operating point (predict's own rows).
    Returns (the decided class per image, the evaluation)."""
    import numpy as np

    from .calibration import decide
    from .metrics import evaluate_predictions

    p = np.asarray(probs, dtype=np.float64)
    if predicted is None:
        predicted = decide(p, task, operating_point) if len(p) else np.zeros(0, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
    return predicted, evaluate_predictions(y_true, p, classes, task, n_bootstrap=n_bootstrap, seed=seed,
                                           predicted=predicted)


def explain_images(project: Any, run_id: Optional[str], image_ids: list[str], *, batch: int = 64,
                   progress: Progress = Progress()) -> ExplainResult:
    """Per image: class probabilities and the head's attention over the token grid
    ([h, w], max 1), for the viewer's heat map. Reads only these images' features,
    `batch` at a time (progress reported, cancel checked between batches)."""
    import numpy as np
    import torch

    from .heads import attention_map, build_head, probabilities

    run = project.run(run_id)
    cache = project.open_cache(run.record["cache_fingerprint"], block=run.record.get("block"))
    project.check_cache_fits(run, cache)
    head_config, state = project.load_head(run)
    head = build_head(head_config)
    head.load_state_dict(state, strict=True)
    head.eval()
    idx = cache.indices(image_ids)
    order = np.argsort(idx)  # h5py reads fastest in file order
    prob_parts, map_parts, cls_parts = [], [], []
    for s in range(0, max(len(order), 1), batch):  # one read when empty, as before
        progress.check()
        progress.report(s, len(order), f"explaining {len(order)} images")
        cls, grid = cache.read(idx[order[s:s + batch]])
        with torch.inference_mode():
            c, g = torch.from_numpy(cls).float(), torch.from_numpy(grid).float()
            cls_parts.append(c.numpy())
            prob_parts.append(probabilities(head(c, g), run.record["task"]).numpy())
            map_parts.append(attention_map(head, c, g).numpy())
    progress.report(len(order), len(order), f"explained {len(order)} images")
    probs, maps = np.concatenate(prob_parts), np.concatenate(map_parts)
    from .calibration import adjust, decide
    from .predictions import heat_on_image

    op = run.record.get("operating_point")
    probs = adjust(probs, op)
    decided = decide(probs, run.record["task"], op)
    back = np.argsort(order)
    maps = maps[back]
    entries = project.catalog().by_id()
    size = int(cache.backbone["image_size"])
    crop = str(cache.backbone.get("crop") or "none")
    heat = [heat_on_image(m, size, entries[i].rows, entries[i].cols,
                          box=_seen_box(project, entries[i], size, crop), fill=crop == "body-fill")
            if i in entries else m for m, i in zip(maps, image_ids)]
    from .ood import flag_cached

    ood = flag_cached(project, run, np.concatenate(cls_parts)[back],
                      [project.image_path(entries[i]) if i in entries else "" for i in image_ids])
    return ExplainResult(run=run.run_id, image_ids=list(image_ids), classes=list(run.record["classes"]),
                         task=run.record["task"], probabilities=probs[back],
                         predicted=[run.record["classes"][int(c)] for c in decided[back]], attention=maps, heat=heat,
                         operating_point=op, out_of_distribution=ood)


def _seen_box(project: Any, entry: Any, size: int, crop: str) -> Optional[tuple[float, float, float, float]]:
    """The part of the image a cropping cache's backbone saw (fractions: top, bottom, left,
    right), found again from the image as the extraction found it; None: the whole image
    (no crop, nothing cut, or the file cannot be read now)."""
    if crop == "none":
        return None
    from .backbones import Preprocessor
    from .images import decode_max_side, load_pixels

    try:
        pixels = load_pixels(project.image_path(entry), decode_max_side(size))
    except Exception:  # noqa: BLE001 - moved or damaged since extraction: the map is placed as uncropped
        return None
    box = Preprocessor(size, (0.0,) * 3, (1.0,) * 3, crop).box(pixels)
    if box is None:
        return None
    h, w = pixels.shape
    return box[0] / h, box[1] / h, box[2] / w, box[3] / w
