"""The engine's steps, each the same shape (issue 10, point 3).

    step(project, [what], settings, progress=Progress()) -> a typed record (loff_core.results)

Each public step takes the project's lock itself (the writer lock for what changes the
project: import, extract, train, cross-validate, tune; the shared reader lock for what only
reads it: evaluate, explain, export, report, predict; see loff_core/locks.py), reports progress and
checks for cancel between batches. The CLI (`loff_core/cli/`) and the app's pages call
these and nothing below them, so both front ends do the same thing:

    cli/ / app pages ──> steps.py   ──> project.py (files, settings, locks, run storage)
                                    ├─> catalog.py, cache.py, backbones.py, training.py,
                                    │   metrics.py, calibration.py, validation.py, export.py
                                    └─> results.py (the records), predictions.py (CSV, heat)

The `_name` functions are the steps' bodies without the lock, for code that holds it
already; `evaluation.evaluate_run` is the body of `evaluate` (export and tune use it too).
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from .catalog import scan_folder
from .errors import LoffError, ProjectError, Remedy, TrainingError
from .evaluation import evaluate_run, explain_images
from .fsutil import relative_or_none, utc_now
from .progress import Progress
from .project import RunInfo
from .project_file import PROJECT_FILE
from .splits import complete_split
from .results import (EVALUATION_KEYS, AuditResult, CVResult, EvaluateResult, ExplainResult, ExportResult,
                      ExtractResult, ImportResult, PredictResult, TrainResult, TuneResult)
from .settings import (AuditSettings, CVSettings, EvaluateSettings, ExtractSettings, ImportSettings,
                       PredictSettings, TuneSettings, config_record)

#: images per read + forward in `explain`
EXPLAIN_BATCH = 64


# -- the steps -----------------------------------------------------------------------------
def audit(project: Any, settings: AuditSettings = AuditSettings(), *,
          progress: Progress = Progress()) -> AuditResult:
    """Near-duplicates, suspected label errors, outliers and the shift between splits from
    the cached embeddings (reader lock; writes only audit/*.csv, see loff_core/audit.py)."""
    from .audit import run_audit

    with project.read_lock():
        return run_audit(project, settings, progress=progress)


def data_map(project: Any, method: str = "pca", *, progress: Progress = Progress()) -> dict[str, Any]:
    """The 2-D map of the cached embeddings (reader lock; cached in maps/, see
    loff_core/datamap.py)."""
    from .datamap import compute_map

    with project.read_lock():
        return compute_map(project, method, progress=progress)


def on_leak(project: Any, action: str, settings: AuditSettings = AuditSettings()) -> dict[str, Any]:
    """`loff audit --on-leak`: drop the val / test copies of cross-split duplicates, re-split
    by patient joined on the duplicate groups, or undo the last of these (writer lock)."""
    from .audit import act_on_leaks

    with project.lock():
        return act_on_leaks(project, action, settings)


def exclude(project: Any, image_ids: list[str], reason: Optional[str]) -> dict[str, Any]:
    """Leave images out of training, cv, tune and evaluation, recording `reason` in the
    catalog; reason None includes them again (writer lock)."""
    from .audit import set_excluded

    with project.lock():
        return set_excluded(project, image_ids, reason)


def import_images(project: Any, images_dir: Path | str, settings: ImportSettings = ImportSettings(), *,
                  progress: Progress = Progress(), **changes: Any) -> ImportResult:
    """Scan IMAGES_DIR into the project's catalog (writer lock) as `settings` say (see
    `_import_images`); `changes`: ImportSettings fields given one by one (labels_csv=...),
    in place of those of `settings`."""
    with project.lock():
        return _import_images(project, images_dir, settings, progress=progress, **changes)


def extract(project: Any, spec: Any, settings: ExtractSettings = ExtractSettings(), *,
            progress: Progress = Progress()) -> ExtractResult:
    """Run the frozen backbone `spec` over every catalogued image into the cache (writer
    lock; under torchrun only rank 0 takes it and records the cache). `settings`: device,
    batch size, workers (the spec carries image size, grid and layers)."""
    from .cache_merge import distributed_rank_world

    rank, world = distributed_rank_world()
    with project.lock() if rank == 0 else nullcontext():
        result = _extract(project, spec, device=settings.device, batch_size=settings.batch_size,
                          num_workers=settings.workers, engine=settings.engine, progress=progress)
    if rank != 0:
        return ExtractResult(rank=rank, world_size=world, extracted=result.extracted, notes=list(result.notes))
    cache = project.open_cache()
    return ExtractResult(
        cache=str(Path(result.cache_path).relative_to(project.root)),
        fingerprint=cache.fingerprint,
        backbone=cache.backbone,
        images=len(cache.image_ids),
        extracted=result.extracted,
        skipped=result.skipped,
        failed=[{"path": project.relative(f.path), "reason": f.reason} for f in result.failures],
        seconds=round(result.seconds, 2),
        bytes_per_image=cache.stored_bytes_per_image(),
        notes=result.notes,
        stopped=result.stopped,
        world_size=world,
    )


def train(project: Any, config: Any, *, progress: Progress = Progress()) -> TrainResult:
    """Train a head (`config`: TrainConfig) on the active cache (writer lock); the run folder
    appears only when complete. Each epoch is an "epoch" partial result of `progress`."""
    from .calibration import decision_line

    with project.lock():
        run = _train(project, config, progress=progress)
    result = TrainResult.from_record(run.record, run.run_id)
    result.decision = decision_line(run.record.get("operating_point"), run.record["task"], len(run.record["classes"]))
    return result


def evaluate(project: Any, run_id: Optional[str] = None, split: str = "test",
             settings: EvaluateSettings = EvaluateSettings(), *, save: bool = True,
             progress: Progress = Progress()) -> EvaluateResult:
    """Metrics and per-image predictions of a run on one split, saved with the run unless
    `save` is False (reader lock: never waits for a training; eval-SPLIT.json is replaced
    atomically)."""
    with project.read_lock():
        return EvaluateResult.from_dict(evaluate_run(project, run_id, split, n_bootstrap=settings.bootstrap,
                                                     save=save, progress=progress))


def explain(project: Any, run_id: Optional[str], image_ids: list[str], *,
            progress: Progress = Progress()) -> ExplainResult:
    """Probabilities and heat maps of a run for some images (reader lock)."""
    with project.read_lock():
        return _explain(project, run_id, image_ids, progress=progress)


def export(project: Any, out_dir: Path | str, *, run_id: Optional[str] = None, onnx: bool = False,
           progress: Progress = Progress()) -> ExportResult:
    """A run as head.safetensors + card.json (+ model.onnx) in `out_dir` (reader lock, also
    while it evaluates a split the card needs and the run lacks)."""
    from .export import export_head

    with project.read_lock():
        out = export_head(project, out_dir, run_id=run_id, onnx=onnx, progress=progress)
    return ExportResult(run=out["run"], out_dir=out["out_dir"], files=out["files"], card=out["card"],
                        warnings=out.get("warnings", []))


def report(project: Any, run_id: Optional[str] = None, out: Optional[Path | str] = None, *,
           progress: Progress = Progress()) -> Path:
    """The model report of a run (default: the project's best) as one self-contained HTML
    file, default PROJECT/reports/RUN.html (reader lock; loff_core/report.py)."""
    from .report import write_report

    with project.read_lock():
        return write_report(project, run_id, None if out is None else Path(out), progress=progress)


def cross_validate(project: Any, settings: CVSettings = CVSettings(), *,
                   progress: Progress = Progress()) -> CVResult:
    """K patient-grouped folds over train + val, saved as a group (writer lock). Each
    finished fold is a "fold" partial result of `progress`."""
    from .validation import cross_validate as run_cv

    with project.lock():
        return CVResult.from_dict(run_cv(project, settings, progress=progress))


def tune(project: Any, settings: TuneSettings = TuneSettings(), *, progress: Progress = Progress()) -> TuneResult:
    """Head search by grouped CV, the winner's final model saved as a run and tested once (writer lock).
    Each scored configuration is a "trial" partial result of `progress`."""
    from .search import tune as run_tune

    with project.lock():
        out = run_tune(project, settings, progress=progress)
        if out.get("run"):  # which rule decides the winner's predictions, in one line
            from .calibration import decision_line

            out["decision"] = decision_line(project.run(out["run"]).record.get("operating_point"), out["task"],
                                            len(project.run(out["run"]).record["classes"]))
        return TuneResult.from_dict(out)


def predict(source: Path | str, files: Iterable[Path | str], settings: PredictSettings = PredictSettings(), *,
            progress: Progress = Progress()) -> PredictResult:
    """Predict image files with an exported head folder or a project's run (`source`; the
    run, `settings.run`, is read under the project's reader lock). Files that come with
    labels (the `settings.labels` CSV, or class sub-folders of a folder in `files`) are
    scored as `evaluate` scores. `settings.require_predictions`: no file readable is an
    error (else a result listing the failures)."""
    from .export import load_run_head, predict_files

    run_id, labels = settings.run, None if settings.labels is None else Path(settings.labels)
    source = Path(source)
    files = [Path(f) for f in files]
    if (source / PROJECT_FILE).is_file():  # a project: predict with one of its runs, as is
        from .project import Project

        project = Project.open(source)
        with project.read_lock():
            head: Any = load_run_head(project, run_id)
    elif (source / "card.json").is_file() or (source / "head.safetensors").is_file():
        if run_id:
            raise LoffError("an exported head holds one run: a run is chosen only in a project folder", source)
        head = source
    else:
        raise LoffError("neither an exported head (card.json + head.safetensors) nor a LOFF project", source,
                        Remedy.HEAD_OR_PROJECT)
    out = predict_files(head, files, weights=settings.weights, random_init=settings.random_init,
                        device=settings.device, batch_size=settings.batch_size, progress=progress)
    if not out["predictions"] and settings.require_predictions:
        failed = out.get("failed", [])
        first = f"; {failed[0]['path']}: {failed[0]['reason']}" if failed else ""
        raise LoffError(f"no predictions: none of the {len(failed)} files could be read{first}")
    labelled, n, evaluation = _score_labelled(out, files, labels, settings.label_column, settings.file_column,
                                              settings.bootstrap)
    from .results import model_of

    card = head.card if not isinstance(head, Path) else _card_of(head)
    return PredictResult(head=out["head"], classes=out["classes"], task=out["task"], predictions=out["predictions"],
                         failed=out["failed"], run=None if isinstance(head, Path) else head.card["run"],
                         labelled=labelled, n=n, evaluation=evaluation, model=model_of(card), ood=out.get("ood"),
                         head_run=out.get("head_run"))


def _card_of(head_dir: Path) -> dict[str, Any]:
    """An exported head's card (already checked by `predict_files`); {} when unreadable."""
    from . import trust

    try:
        return trust.load_json(head_dir / "card.json", what="head card")
    except LoffError:
        return {}


def _score_labelled(out: dict[str, Any], files: list[Path], labels: Optional[Path], label_column: str,
                    file_column: Optional[str], n_bootstrap: int) -> tuple[int, Optional[int], Optional[dict]]:
    """When the files come with labels (a labels CSV, or class sub-folders below a folder
    given), set each prediction's `label`; returns (labelled, n, the metrics `evaluate`
    reports or None)."""
    from .evaluation import evaluate_decisions

    classes = out["classes"]
    table: dict[str, str] = _labels_from_csv(labels, label_column, file_column) if labels else {}
    roots = [f for f in files if f.is_dir()]
    for row in out["predictions"]:
        path = Path(row["path"])
        label = table.get(path.as_posix()) or table.get(path.name) or table.get(path.stem)
        if label is None and not labels:
            root = next((r for r in roots if r in path.parents), None)
            if root is not None:  # the nearest folder below the given one named like a class
                label = next((part for part in reversed(path.relative_to(root).parts[:-1]) if part in classes), None)
        if label is not None:
            if label not in classes:
                raise LoffError(f"{labels or path}: label {label!r} is not one of the head's classes "
                                f"({', '.join(classes)})")
            row["label"] = label
    rows = [r for r in out["predictions"] if "label" in r]
    if not rows:
        return 0, None, None
    y = [classes.index(r["label"]) for r in rows]
    probs = np.array([r["probabilities"] for r in rows], dtype=np.float64)
    # the decision of the rows themselves (the head's operating point), scored as evaluate scores
    _, evaluation = evaluate_decisions(y, probs, classes, out["task"], out.get("operating_point"),
                                       n_bootstrap=n_bootstrap, predicted=[classes.index(r["predicted"]) for r in rows])
    return len(rows), len(rows), {**{k: evaluation[k] for k in EVALUATION_KEYS},
                                  "operating_point": out.get("operating_point")}


def _labels_from_csv(labels: Path, label_column: str, file_column: Optional[str]) -> dict[str, str]:
    """file -> label from a labels CSV, read as an import reads it (`catalog.read_labels_csv`);
    the file cell may be a path as given, a file name or a stem."""
    from .catalog import read_labels_csv

    rows, _, _, _ = read_labels_csv(labels, label_column, file_column, None)
    table: dict[str, str] = {}
    for row in rows:
        if row["file"] and row["label"]:
            key = Path(row["file"])
            table.setdefault(key.as_posix(), row["label"])
            table.setdefault(key.name, row["label"])
            table.setdefault(key.stem, row["label"])
    return table


# -- the steps' bodies, without the lock -----------------------------------------------------
def _import_images(project: Any, images_dir: Path | str, settings: ImportSettings = ImportSettings(), *,
                   progress: Progress = Progress(), **changes: Any) -> ImportResult:
    """Scan IMAGES_DIR into the catalog. `settings.labels_csv`: one CSV, or a list of CSVs
    and (split, CSV) pairs (see `scan_folder`). A split given by the CSV or the folders is
    kept (val carved from train by patient when it has none); a patient it puts on two
    sides stops the import with counts unless `on_patient_overlap` is "keep" (as given)
    or "resplit" (a fresh patient-grouped split, the given one ignored)."""
    settings = replace(settings, **changes) if changes else settings  # checked as it is built
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise ProjectError(f"{images_dir}: not a folder")
    from .catalog import labels_sources

    label_column, file_column, patient_column = settings.label_column, settings.file_column, settings.patient_column
    split_column, patient_from_name, task = settings.split_column, settings.patient_from_name, settings.task
    classes = list(settings.classes) if settings.classes else None
    sources = labels_sources(settings.labels_csv)
    catalog = scan_folder(
        images_dir,
        salt=project.salt,
        labels_csv=sources or None,
        label_column=label_column,
        file_column=file_column,
        patient_column=patient_column,
        classes=classes,
        split_column=split_column,
        patient_from_name=patient_from_name,
        progress=progress,
    )
    entries, split_source = complete_split(catalog, seed=project.settings.seed,
                                           fractions=project.settings.split_fractions,
                                           on_patient_overlap=settings.on_patient_overlap)
    if project.has_catalog():  # exclusions (`loff audit --exclude`) outlive a re-import
        left_out = {e.image_id: e.excluded for e in project.catalog().entries if e.excluded is not None}
        entries = [replace(e, excluded=left_out[e.image_id]) if e.image_id in left_out else e for e in entries]
    from .audit import reapply_regroups

    entries, regrouped = reapply_regroups(project, entries)  # `loff audit --on-leak regroup` outlives it too
    warnings = list(catalog.warnings) + ([regrouped] if regrouped else [])
    from .catalog import identical_across_splits

    copies = identical_across_splits(images_dir, entries)
    if copies:
        warnings.append(copies)
    overlap = split_source.get("patient_overlap")
    if overlap:
        warnings.append(f"the given split put {overlap['patients']} patients ({overlap['images']} images) on two "
                        f"sides; " + ("kept as given: their images are not independent across splits"
                                      if overlap["action"] == "keep" else "re-split by patient instead"))
    catalog = replace(catalog, entries=entries, warnings=warnings)
    report = {
        "images_root": str(images_dir),
        "imported": len(catalog.entries),
        "failed": [{"path": f.path, "reason": f.reason} for f in catalog.failures],
        "warnings": list(catalog.warnings),
        "split_source": split_source,
        "date": utc_now(),
    }
    s = replace(project.settings, extras=dict(project.settings.extras))
    s.images_root = relative_or_none(images_dir, project.root)
    s.images_root_absolute = str(images_dir.resolve())
    s.classes = list(catalog.classes)
    s.label_name = label_column or s.label_name
    first = sources[0][1] if sources else None
    s.labels_source = None if not sources else {
        "csv": relative_or_none(first, project.root), "csv_absolute": str(first.resolve()),
        "label_column": label_column, "file_column": file_column, "patient_column": patient_column,
        "classes": list(classes) if classes else None, "split_column": split_column,
        "patient_from_name": patient_from_name,
        "csvs": [{"split": sp, "csv": relative_or_none(p, project.root), "csv_absolute": str(p.resolve())}
                 for sp, p in sources]}
    if not sources and patient_from_name:
        s.labels_source = {"patient_from_name": patient_from_name}
    s.split_source = split_source
    if task is not None:
        s.task = task
    s.catalog_version += 1
    project.commit_import(catalog, report, s)
    return project.import_summary()


def _extract(
    project: Any,
    spec: Any,
    *,
    device: str = "auto",
    batch_size: int = ExtractSettings.batch_size,
    num_workers: Optional[int] = None,
    engine: str = ExtractSettings.engine,
    progress: Progress = Progress(),
) -> Any:
    """Run the frozen backbone over every catalogued image; returns a cache.Extraction."""
    from .cache import extract_features
    from .cache_merge import distributed_rank_world

    catalog = project.catalog()
    root = project.images_root()
    items = [(e.image_id, root / e.path) for e in catalog.entries]
    result = extract_features(
        items, spec, project.caches_dir, device=device, batch_size=batch_size,
        num_workers=num_workers, engine=engine, progress=progress,
    )
    if distributed_rank_world()[0] != 0:
        return result  # under torchrun, rank 0 merges and records the cache
    fingerprint = Path(result.cache_path).name.split(".")[0]
    previous = project.settings.active_cache
    if (result.stopped and previous not in (None, fingerprint)
            and (project.caches_dir / f"{previous}.h5").exists()):
        # a stopped extraction with other settings does not replace the cache training
        # uses; running extract again with these settings finishes it and switches over
        result.notes.append(f"stopped before the end: training keeps using the previous cache {previous}; "
                            f"extract again with these settings to finish {fingerprint} and use it")
    else:
        project.settings.active_cache = fingerprint
    project.save()
    if result.failures:
        project.record_extract_failures(result.failures)
    return result


def _train(
    project: Any,
    config: Any,
    *,
    progress: Progress = Progress(),
) -> RunInfo:
    """Train a head on the active cache; the run folder appears only when complete."""
    from .training import train_head

    project.check_cache_complete()  # the one rule: both front ends refuse a partial cache
    cache = project.open_cache(block=getattr(config, "block", None))
    classes = project.catalog().classes
    if len(classes) < 2:
        raise TrainingError(f"{project.root}: training needs at least two classes; labels found: {classes or 'none'}")
    train_ids, train_y, _ = project.labelled_split("train", cache)
    val_ids, val_y, _ = project.labelled_split("val", cache)
    if not train_ids:
        raise TrainingError(f"{project.root}: no labelled training images with features; import labels and extract first")
    if config.task == "ordinal" and len(classes) < 3:
        raise TrainingError("the ordinal task needs at least three ordered levels")
    started = utc_now()
    for leftover in project.runs_dir.glob(".*.partial") if project.runs_dir.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)  # from a run killed while it was being saved
    result = train_head(
        cache, train_ids, train_y, val_ids, val_y, config,
        num_classes=len(classes), progress=progress,
    )
    run_id = project.new_run_id(config.head)
    record = {
        "run_id": run_id,
        "started": started,
        "finished": utc_now(),
        "task": config.task,
        "classes": list(classes),
        "train_config": config_record(config),
        "head_config": result.head_config.to_dict(),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "monitor": result.monitor,
        "stopped": result.stopped,
        "notes": list(result.notes),
        "n_train": len(train_ids),
        "n_val": len(val_ids),
        "catalog_version": project.settings.catalog_version,
        "cache_fingerprint": cache.fingerprint,
        "block": cache.block,  # which of the cache's blocks; "backbone" describes that block alone
        "backbone": cache.block_backbone,
    }
    run = project.write_run(run_id, record, result.state_dict)
    if result.stopped == "interrupted":
        raise KeyboardInterrupt  # saved; the caller still learns it was interrupted (exit 130)
    if val_ids and len(set(val_y)) >= 2:  # temperature (+ binary threshold) chosen on val
        from .calibration import calibrate_run

        calibrate_run(project, run.run_id)
        run = project.run(run.run_id)
    return run


def _explain(project: Any, run_id: Optional[str], image_ids: list[str], *,
             progress: Progress = Progress()) -> ExplainResult:
    """`explain` without the lock (`evaluation.explain_images`, `EXPLAIN_BATCH` images a batch)."""
    return explain_images(project, run_id, image_ids, batch=EXPLAIN_BATCH, progress=progress)


def default_predictions_csv(source: Path | str, run: Optional[str] = None, *, now: Optional[str] = None) -> Path:
    """Where predictions are saved unless the user says otherwise: into the project they belong
    to, PROJECT/predictions/<run>-<time>.csv, PROJECT being `source` when it is a project, else
    the project an exported head folder lies in (exports/<run>); a head from outside any
    project: HEAD/predictions/. Never the working folder."""
    import datetime as _dt

    source = Path(source).resolve()
    home = next((p for p in (source, *source.parents) if (p / PROJECT_FILE).is_file()), source)
    stamp = now or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return home / "predictions" / f"{run or source.name}-{stamp}.csv"
