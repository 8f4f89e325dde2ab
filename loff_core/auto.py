"""`loff auto` and the window's Build a model: from an image folder to an exported head and
its report in one call (issue 21, point 1).

The steps are the engine's own (loff_core/steps.py), in order: import (columns, patients and
a given split found as `loff import` finds them), extract (ExtractSettings' defaults and the
default backbone), tune (the head search within a time budget: TuneSettings.budget; the
winner's operating point is fitted on the folds' out-of-fold predictions and it is tested
once), export, report. What each step did is kept in PROJECT/auto.json, so running it again
on the same folder reuses what is done: an unchanged folder and labels are not imported
again, a complete cache of the same backbone is not extracted again, a finished search with
the same settings on the same catalog and cache is not run again.

Stop (the window's button, `Progress.request_stop`) ends the running step as that step's
Stop does (extraction keeps the images done; the search keeps the configurations scored and
still saves and tests its winner) and starts no later step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from . import steps
from .errors import LoffError, ProjectError, TrainingError
from .fsutil import atomic_write_json
from .progress import Progress, format_duration
from .settings import AutoSettings, ExtractSettings, ImportSettings, TuneSettings

#: the steps in order, as the progress names them
STEPS = ("import", "extract", "find the best head", "export", "report")
#: what each step did, beside loff-project.json
STATE_FILE = "auto.json"
#: the folder, inside the project, that the head is exported to (one sub-folder per run)
EXPORT_DIR = "export"


def build_model(images_dir: Path | str, project_dir: Path | str, imports: ImportSettings = ImportSettings(),
                settings: AutoSettings = AutoSettings(), *, progress: Progress = Progress()) -> dict[str, Any]:
    """Import, extract, tune within `settings.budget`, export and report (see the module
    docstring). Returns the summary `loff auto --json` prints."""
    from .project import Project

    images_dir, started = Path(images_dir), time.monotonic()
    if not images_dir.is_dir():
        raise ProjectError(f"{images_dir}: not a folder")
    made_folder, made_project = not Path(project_dir).exists(), not (Path(project_dir) / "loff-project.json").exists()
    project = Project.open_or_create(project_dir)
    state = _read_state(project)
    out: dict[str, Any] = {"project": str(project.root), "images": str(images_dir), "budget": settings.budget,
                           "steps": {}, "guesses": [], "stopped_after": None}
    try:
        _import_step(project, images_dir, imports, state, out, _step_progress(progress, 0))
    except BaseException:
        if made_project:  # e.g. stopped by the patient-overlap question: no project left behind
            project.discard_if_never_imported(made_folder)
        raise
    work: list[Callable[[Progress], bool]] = [
        lambda p: _extract_step(project, state, out, p),
        lambda p: _tune_step(project, settings, state, out, p),
        lambda p: _export_step(project, state, out, p),
        lambda p: _report_step(project, state, out, p),
    ]
    for index, step in enumerate(work, 1):
        deadline = time.monotonic() + settings.budget if STEPS[index] == "find the best head" else None
        if step(_step_progress(progress, index, deadline)) or progress.stop_requested:
            out["stopped_after"] = STEPS[index]
            break
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


# -- progress and state ------------------------------------------------------------------------
def _step_progress(progress: Progress, index: int, deadline: Optional[float] = None) -> Progress:
    """A Progress for step `index` whose reports name the step and the time left (the budget's
    deadline, else extrapolated from the step's own counts)."""
    started = time.monotonic()

    def forward(done: int, total: int, message: str) -> None:
        now = time.monotonic()
        left: Optional[float] = None
        if deadline is not None:
            left = max(0.0, deadline - now)
        elif total and 0 < done < total and now - started > 2:
            left = (now - started) * (total - done) / done
        shown = f"{STEPS[index]} ({index + 1}/{len(STEPS)})"
        if left is not None:
            shown += f", about {format_duration(left)} left"
        overall = index * 1000 + (min(1000, int(1000 * done / total)) if total else 0)
        progress.report(overall, len(STEPS) * 1000, shown + (f": {message}" if message else ""))

    child = progress.linked(forward)
    forward(0, 0, "")
    return child


def _read_state(project: Any) -> dict[str, Any]:
    try:
        state = json.loads((project.root / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _save_state(project: Any, state: dict[str, Any]) -> None:
    atomic_write_json(project.root / STATE_FILE, state)


def _done(out: dict[str, Any], step: str, how: str, started: float) -> None:
    out["steps"][step] = {"done": how, "seconds": round(time.monotonic() - started, 1)}


# -- import ------------------------------------------------------------------------------------
def import_signature(images_dir: Path, imports: ImportSettings) -> str:
    """What an import reads: every file below the folder (name, size, modification time),
    the labels CSVs likewise, and the import settings. The same signature on the same
    catalog version: the import would give the same catalog."""
    from .catalog import labels_sources

    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(images_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(images_dir).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n"
                          .encode("utf-8", "surrogateescape"))
    for split, csv_path in labels_sources(imports.labels_csv):
        st = csv_path.stat()
        digest.update(f"csv\0{split}\0{csv_path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n"
                      .encode("utf-8", "surrogateescape"))
    record = {k: v for k, v in asdict(imports).items() if k != "labels_csv"}
    digest.update(json.dumps({"images": str(images_dir.resolve()), **record}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _import_step(project: Any, images_dir: Path, imports: ImportSettings, state: dict[str, Any],
                 out: dict[str, Any], progress: Progress) -> None:
    started = time.monotonic()
    signature = import_signature(images_dir, imports)
    previous = state.get("import") or {}
    if (project.has_catalog() and previous.get("signature") == signature
            and previous.get("catalog_version") == project.settings.catalog_version):
        summary, how = project.import_summary(), "reused"
    else:
        summary, how = steps.import_images(project, images_dir, imports, progress=progress), "ran"
        state["import"] = {"signature": signature, "catalog_version": project.settings.catalog_version}
        _save_state(project, state)
    out["import"] = {k: v for k, v in summary.to_json().items() if k != "project"}
    out["guesses"] = import_guesses(project, imports)
    _done(out, "import", how, started)


def import_guesses(project: Any, imports: ImportSettings) -> list[str]:
    """What the import found by itself (nothing typed for it): the CSV's columns, where the
    patients and the split came from, the class order and the task, and its warnings."""
    from .catalog import labels_sources, read_labels_csv
    from .splits import describe_split_source

    lines: list[str] = []
    sources = labels_sources(imports.labels_csv)
    if sources:
        _, file_col, label_col, patient_col = read_labels_csv(sources[0][1], imports.label_column,
                                                              imports.file_column, imports.patient_column,
                                                              imports.split_column)
        for what, given, found in (("label column", imports.label_column, label_col),
                                   ("file column", imports.file_column, file_col),
                                   ("patient column", imports.patient_column, patient_col)):
            if given is None:
                lines.append(f"{what}: {found or 'none'} (found by its name)")
    else:
        lines.append("labels: the names of the sub-folders")
    lines += describe_split_source(project.settings.split_source)
    if not imports.classes:
        lines.append("class order: " + ", ".join(project.settings.classes) + " (--classes sets another)")
    if imports.task is None:
        lines.append(f"task: {project.settings.task} (the project's; --task sets another)")
    return lines + [f"warning: {w}" for w in project.import_summary().warnings]


# -- extract -----------------------------------------------------------------------------------
def default_spec(settings: ExtractSettings = ExtractSettings()) -> Any:
    """The backbone `loff extract` uses with nothing typed: its default backbone and blocks."""
    from .backbones import BackboneSpec, default_backbone_name

    return BackboneSpec(name=default_backbone_name(settings.device), image_size=settings.image_size,
                        grid=settings.grid, layers=settings.layers, crop=settings.crop)


def _extract_step(project: Any, state: dict[str, Any], out: dict[str, Any], progress: Progress) -> bool:
    started = time.monotonic()
    settings = ExtractSettings()
    spec = default_spec(settings)
    wanted = {"spec": asdict(spec), "catalog_version": project.settings.catalog_version}
    previous = state.get("extract") or {}
    fingerprint = previous.get("fingerprint")
    if (fingerprint and fingerprint == project.settings.active_cache
            and {k: previous.get(k) for k in wanted} == wanted and not project.cache_partial()
            and project.cached_images(fingerprint) == project.expected_images()):
        out["extract"] = {"cache": fingerprint, "backbone": spec.name, "images": project.cached_images(fingerprint)}
        _done(out, "extract", "reused", started)
        return False
    result = steps.extract(project, spec, settings, progress=progress)
    out["extract"] = {"cache": result.fingerprint, "backbone": spec.name, "images": result.images,
                      "extracted": result.extracted, "reused": result.skipped, "failed": len(result.failed),
                      "notes": list(result.notes)}
    _done(out, "extract", "stopped" if result.stopped else "ran", started)
    if not result.stopped:
        state["extract"] = {**wanted, "fingerprint": result.fingerprint}
        _save_state(project, state)
    return bool(result.stopped)


# -- tune --------------------------------------------------------------------------------------
def _tune_step(project: Any, settings: AutoSettings, state: dict[str, Any], out: dict[str, Any],
               progress: Progress) -> bool:
    from .validation import load_group

    started = time.monotonic()
    wanted = {"budget": settings.budget, "catalog_version": project.settings.catalog_version,
              "cache": project.settings.active_cache, "task": project.settings.task}
    previous = state.get("tune") or {}
    if {k: previous.get(k) for k in wanted} == wanted and previous.get("group"):
        try:
            found = load_group(project, previous["group"])
            project.run(found["run"])
        except (LoffError, KeyError):
            found = None
        if found is not None:
            out["search"] = _search_summary(found)
            _done(out, "find the best head", "reused", started)
            return False
    # the search honours the budget itself (search.stop_rule: no trial starts that would not end
    # within it; trial 1, the default configuration, always runs)
    tune_settings = TuneSettings(budget=settings.budget, folds=_folds_that_fit(project))
    try:
        result = steps.tune(project, tune_settings, progress=progress)
    except TrainingError:
        if not progress.stop_requested:
            raise
        _done(out, "find the best head", "stopped", started)  # Stop before the first configuration was scored
        return True
    found = result.to_dict()
    user_stop = progress.stop_requested
    out["search"] = _search_summary(found)
    _done(out, "find the best head", "stopped" if user_stop else "ran", started)
    if not user_stop:  # a search cut short by Stop is not reused: the next run searches again
        state["tune"] = {**wanted, "group": found["group"], "run": found["run"]}
        _save_state(project, state)
    return user_stop


def _folds_that_fit(project: Any) -> int:
    """The default number of folds, or fewer on a small project: no more than it has
    patients, nor than its largest class has images in train + val (`grouped_folds`' rules;
    at least 2, and a project too small even for that is refused by the search itself)."""
    import numpy as np

    from .validation import project_pool

    folds = TuneSettings().folds
    try:
        with project.read_lock():
            pool, _ = project_pool(project, project.open_cache())
    except LoffError:
        return folds
    if not len(pool.y):
        return folds
    return max(2, min(folds, int(np.bincount(pool.y).max()), len(np.unique(pool.groups))))


def _search_summary(found: dict[str, Any]) -> dict[str, Any]:
    best = found.get("best") or {}
    return {"group": found.get("group"), "run": found.get("run"), "trials": found.get("trials"),
            "folds": found.get("folds"), "best": best.get("config"), "cv": best.get("cv"),
            "test": found.get("test"), "test_ci": found.get("test_ci"), "n_test": found.get("n_test"),
            "stopped": found.get("stopped")}


# -- export, report, the operating point -------------------------------------------------------
def _export_step(project: Any, state: dict[str, Any], out: dict[str, Any], progress: Progress) -> bool:
    started = time.monotonic()
    run_id = out["search"]["run"]
    folder = project.root / EXPORT_DIR / run_id
    previous = state.get("export") or {}
    if previous.get("run") == run_id and (folder / "card.json").is_file():
        how = "reused"
    else:
        steps.export(project, folder, run_id=run_id, progress=progress)
        state["export"], how = {"run": run_id}, "ran"
        _save_state(project, state)
    out["head"] = str(folder)
    out["operating_point"] = operating_point_summary(project, run_id)
    _done(out, "export", how, started)
    return False


def _report_step(project: Any, state: dict[str, Any], out: dict[str, Any], progress: Progress) -> bool:
    from .report import write_report

    started = time.monotonic()
    run_id = out["search"]["run"]
    previous = state.get("report") or {}
    path = Path(previous["path"]) if previous.get("run") == run_id and previous.get("path") else None
    if path is not None and path.is_file():
        how = "reused"
    else:
        path = write_report(project, run_id, progress=progress)
        state["report"], how = {"run": run_id, "path": str(path)}, "ran"
        _save_state(project, state)
    out["report"] = str(path)
    _done(out, "report", how, started)
    return False


def operating_point_summary(project: Any, run_id: str) -> Optional[dict[str, Any]]:
    """For a binary run: sensitivity and specificity on test at its operating point (with
    their 95 % intervals), from the test predictions `evaluate` saved; None otherwise."""
    import numpy as np

    from .calibration import describe, threshold_of
    from .metrics import operating_point_rates
    from .predictions import read_predictions_csv

    run = project.run(run_id)
    classes = list(run.record["classes"])
    path = run.path / "predictions-test.csv"
    if len(classes) != 2 or run.record.get("task") != "classification" or not path.is_file():
        return None
    rows = [r for r in read_predictions_csv(path) if r.get("label") in classes]
    if not rows:
        return None
    op = run.record.get("operating_point")
    threshold = threshold_of(op)
    y = [classes.index(r["label"]) for r in rows]
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    rates = operating_point_rates(y, probs, 0.5 if threshold is None else threshold)
    return {**rates, "positive": classes[1], "decision": describe(op), "n": len(rows)}


# -- what it says ------------------------------------------------------------------------------
def _interval(ci: Optional[list[float]]) -> str:
    return f"  [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def summary_text(out: dict[str, Any]) -> str:
    """The human summary: what was guessed, what each step did, the test metrics with their
    95 % intervals, sensitivity and specificity for a binary task, where the head and the
    report are."""
    imp = out.get("import") or {}
    lines = [f"project {out['project']}: {imp.get('imported', 0)} images ({imp.get('labelled', 0)} labelled), "
             "classes " + ", ".join(f"{c} ({n})" for c, n in (imp.get("per_class") or {}).items())
             + "; split " + ", ".join(f"{k} {v}" for k, v in sorted((imp.get("splits") or {}).items()))]
    lines += ["found without being told:"] + [f"  {g}" for g in out.get("guesses", [])]
    lines.append("steps: " + "; ".join(f"{name} {s['done']} ({format_duration(s['seconds'])})"
                                        for name, s in out["steps"].items()))
    ext = out.get("extract")
    if ext:
        lines.append(f"features: backbone {ext['backbone']}, cache {ext['cache']} ({ext['images']} images)")
    search = out.get("search")
    if search:
        best = ", ".join(f"{k}={v}" for k, v in (search.get("best") or {}).items())
        lines.append(f"head search: {search['trials']} configurations x {search['folds']} patient-grouped folds "
                     f"within the budget of {format_duration(out['budget'])}; winner: {best}")
        if search.get("test"):
            lines.append(f"test split ({search['n_test']} images), evaluated once, with 95% intervals:")
            lines += [f"  {name:22s} {'n/a' if v is None else f'{v:.3f}'}{_interval((search.get('test_ci') or {}).get(name))}"
                      for name, v in search["test"].items()]
        else:
            lines.append("no test split with features: the head was not tested")
    op = out.get("operating_point")
    if op:
        lines.append(f"at the operating point (positive class {op['positive']}; {op['decision']}):")
        for name in ("sensitivity", "specificity"):
            value = "n/a" if op[name] is None else f"{op[name]:.3f}"
            lines.append(f"  {name:22s} {value}{_interval(op[f'{name}_ci'])}")
    if out.get("stopped_after"):
        lines.append(f"stopped during {out['stopped_after']}: what was finished is kept; run the same command "
                     f"again to go on")
    if out.get("head"):
        lines.append(f"exported head: {out['head']}")
    if out.get("report"):
        lines.append(f"report: {out['report']}")
    lines.append(f"total {format_duration(out.get('seconds', 0))}")
    return "\n".join(lines)


#: a progress message of `build_model`: "STEP (I/N)[, about T left][: DETAIL]"
_STEP_MESSAGE = re.compile(r"^(?P<step>[^(]+?) \((?P<index>\d+)/(?P<steps>\d+)\)(?:, about (?P<left>.+?) left)?"
                           r"(?:: (?P<detail>.*))?$", re.DOTALL)


def parse_step_message(message: str) -> Optional[dict[str, Any]]:
    """A progress message of `build_model` split into step, index (1-based), steps, time
    left (text or None) and detail; None for any other message (the window's progress view)."""
    m = _STEP_MESSAGE.match(message or "")
    if not m:
        return None
    return {"step": m["step"], "index": int(m["index"]), "steps": int(m["steps"]), "left": m["left"],
            "detail": m["detail"] or ""}
