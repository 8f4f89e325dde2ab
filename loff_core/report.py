"""The model report: one self-contained HTML page about a trained run (issue 21, points 2-3).

`write_report(project, run_id, out)` gathers what the project knows about a run (data,
protocol, test results, examples with heat maps, limitations, a CLAIM 2024 table) and
renders it with the jinja2 template `loff_core/templates/report.html.j2`; plots are drawn
with matplotlib (Agg, no pyplot state) and embedded as base64 PNG, so the page needs no
network and prints to PDF from a browser.

Numbers are the engine's: the test metrics, intervals, confusion matrix and ROC curves come
from `evaluation.evaluate_run` (what `loff evaluate` prints, not saved again here), subgroups
from `metrics.evaluate_predictions` at the run's decisions, calibration from
`calibration.adjust` / `ece`, heat maps from `evaluation.explain_images` (the viewer's).

Privacy: images are named by the catalog's de-identified `image_id` only; no file path, no
patient key, no text from an image header goes in, and free text taken from the project
(import warnings, refusal reasons) has absolute paths and the patient parts of file names
masked. `check_private` refuses to write a page that still holds any of them.
"""

from __future__ import annotations

import base64
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import LoffError, ProjectError
from .fsutil import atomic_write_text, utc_now
from .progress import Progress
from .settings import AuditSettings, EvaluateSettings
from . import trust

REPORTS_DIR = "reports"
TEMPLATE = "report.html.j2"
PRIMARY = {"classification": "auc", "ordinal": "kendall_tau"}  # as validation.PRIMARY (the floor above)
#: a class share that differs more than this between train and test is named a prevalence shift
PREVALENCE_GAP = 0.10
#: how many confident errors / correct cases the examples section shows
N_ERRORS, N_CORRECT = 4, 3
PLOT_DPI = 100


class ReportError(LoffError):
    """A run that cannot be reported (no run, no test images, a page that would leak)."""


# -- entry point ---------------------------------------------------------------------------
def write_report(project: Any, run_id: Optional[str] = None, out: Optional[Path] = None, *,
                 progress: Progress = Progress()) -> Path:
    """Write the model report of `run_id` (None: the project's best run, `best_run`) to
    `out` (None: PROJECT/reports/<run_id>.html); returns the path written."""
    run = project.run(run_id) if run_id is not None else best_run(project)
    total = 6
    progress.report(0, total, f"report of run {run.run_id}: evaluating on test")
    evaluation, raw = _test_evaluation(project, run, progress)
    progress.report(2, total, "data and protocol")
    context: dict[str, Any] = {
        "title": f"Model report: run {run.run_id}",
        "generated": utc_now(),
        "project": project.settings.name,
        "run": run.run_id,
        "synthetic": bool(project.settings.synthetic),
        "data": data_section(project, run),
        "protocol": protocol_section(project, run),
    }
    progress.check()
    progress.report(3, total, "results and plots")
    context["results"] = results_section(project, run, evaluation, raw)
    progress.check()
    progress.report(4, total, "examples with heat maps")
    context["examples"] = examples_section(project, run, evaluation)
    context["limitations"] = limitations(project, run, evaluation, context)
    context["claim"] = claim_rows(context)
    progress.report(5, total, "writing the page")
    html = render(context)
    check_private(html, project)
    out = Path(out) if out is not None else project.root / REPORTS_DIR / f"{run.run_id}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, html)
    progress.report(total, total, f"report written: {out}")
    return out


def best_run(project: Any) -> Any:
    """The latest `tune` winner still in the project, else the run with the best validation
    score (its monitored metric; the latest among equals), else the latest run."""
    runs = {r.run_id: r for r in project.runs()}
    if not runs:
        return project.run(None)  # raises the usual "no runs yet" error with its remedy
    for group in reversed(_groups(project)):
        if group.get("kind") == "tune" and group.get("run") in runs:
            return runs[group["run"]]
    scored = [r for r in runs.values() if r.record.get("n_val") and r.record.get("best_score") is not None]
    if scored:
        return max(scored, key=lambda r: (float(r.record["best_score"]), r.run_id))
    return project.run(None)


def _groups(project: Any) -> list[dict[str, Any]]:
    """The project's cv / tune groups (groups/*/group.json), oldest first; unreadable ones left out."""
    base = Path(project.root) / "groups"
    out = []
    for path in sorted(base.glob("*/group.json")) if base.is_dir() else []:
        try:
            rec = trust.load_json(path, what="cross-validation group")
        except LoffError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _test_evaluation(project: Any, run: Any, progress: Progress) -> tuple[dict[str, Any], np.ndarray]:
    """`evaluate`'s result on test (not saved again) and the head's raw probabilities of the
    same images (before the run's calibration: the reliability diagram's 'before')."""
    from .evaluation import evaluate_run
    from .training import predict_probabilities

    try:
        evaluation = evaluate_run(project, run.run_id, "test", n_bootstrap=EvaluateSettings.bootstrap, save=False,
                                  progress=progress.linked(lambda d, n, m: None))
    except ProjectError as exc:
        raise ReportError(f"run {run.run_id} cannot be reported: {exc.reason}", project.root) from exc
    cache = project.open_cache(run.record["cache_fingerprint"], block=run.record.get("block"))
    head_config, state = project.load_head(run)
    raw = predict_probabilities(head_config, state, cache, [p["image_id"] for p in evaluation["predictions"]])
    return evaluation, np.asarray(raw, dtype=np.float64)


# -- privacy -------------------------------------------------------------------------------
_ABSOLUTE = re.compile(r"(?<![\w.])(?:[A-Za-z]:[\\/]|/)(?:[^\s/\\,;:()'\"]+[\\/])+[^\s,;:()'\"]*")


def _identifier_parts(project: Any) -> list[str]:
    """The parts of image paths that name a patient (where the catalog masked them), longest
    first; parts under 4 characters are left out (they would mask ordinary words)."""
    key = (str(project.root), project.settings.catalog_version)
    if key not in _PARTS:
        parts: set[str] = set()
        for e in project.catalog().entries:
            if e.masked_path:
                parts.update(a for a, b in zip(e.path.split("/"), e.masked_path.split("/")) if a != b and len(a) >= 4)
        _PARTS.clear()  # one project at a time
        _PARTS[key] = sorted(parts, key=len, reverse=True)
    return _PARTS[key]


_PARTS: dict[tuple[str, int], list[str]] = {}


def scrub(text: Any, project: Any) -> str:
    """Free text from the project fit for the report: absolute paths and the patient parts
    of file names replaced."""
    text = str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # undecodable names: U+FFFD
    text = _ABSOLUTE.sub("[path]", text).replace("`", "")  # the page shows no markdown
    for part in _identifier_parts(project):
        if part in text:
            text = text.replace(part, "[patient]")
    return text


def check_private(html: str, project: Any) -> None:
    """Refuse a page that holds a file path outside the project, an image's own path, a
    patient key or the project's salt (a bug, never the user's doing)."""
    catalog = project.catalog()
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # the plots: pixels, not text
    needles = [str(Path(project.root).resolve().parent), project.settings.salt]
    if project.settings.images_root_absolute:
        needles.append(project.settings.images_root_absolute)
    needles += sorted({e.patient_key for e in catalog.entries})
    needles += _identifier_parts(project)
    found = [n for n in needles if n and len(n) >= 4 and n in html]
    if found:
        raise ReportError("the report would show a path or patient identifier; nothing was written "
                          "(please report this as a bug)", project.root)


# -- data ----------------------------------------------------------------------------------
SPLITS = ("train", "val", "test")


def data_section(project: Any, run: Any) -> dict[str, Any]:
    """Images per split and label, patients per split, how the split and patients were
    found, what import and extraction refused (by reason, counted; never the files)."""
    catalog = project.catalog()
    classes = list(run.record["classes"])
    used = [e for e in catalog.entries if e.excluded is None]
    table = []
    for split in SPLITS:
        inside = [e for e in used if e.split == split]
        counts = Counter(e.label for e in inside if e.label is not None)
        table.append({"split": split, "counts": [counts.get(c, 0) for c in classes], "images": len(inside),
                      "patients": len({e.patient_key for e in inside})})
    source = project.settings.split_source or {}
    patients_from = source.get("patients_from") or catalog.patients_from or {}
    report = project.import_report()
    refused = Counter(scrub(f.get("reason", ""), project) for f in report.get("failed", []))
    overlap = source.get("patient_overlap")
    return {
        "classes": classes,
        "label": project.settings.label_name,
        "task": run.record["task"],
        "table": table,
        "total": {"counts": [sum(r["counts"][i] for r in table) for i in range(len(classes))],
                  "images": sum(r["images"] for r in table),
                  "patients": len({e.patient_key for e in used if e.split in SPLITS})},
        "imported": len(catalog.entries),
        "unlabelled": sum(1 for e in catalog.entries if e.label is None),
        "excluded": Counter(scrub(e.excluded, project) for e in catalog.entries if e.excluded is not None),
        "split_how": scrub(source.get("from") or "not recorded", project),
        "split_kind": source.get("kind"),
        "patients_how": [f"{scrub(k, project)}: {v} images" for k, v in patients_from.items()],
        "overlap": overlap,
        "refused": sorted(refused.items(), key=lambda kv: -kv[1]),
        "n_refused": sum(refused.values()),
        "warnings": [scrub(w, project) for w in report.get("warnings", [])],
        "views": sorted({e.view for e in used if e.view}), "sides": sorted({e.laterality for e in used if e.laterality}),
    }


# -- protocol ------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    from . import __version__

    out = {"LOFF Studio": __version__, "Python": platform.python_version()}
    for dist in ("torch", "timm", "numpy", "scikit-learn", "scipy", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def backbone_origin(backbone: dict[str, Any]) -> dict[str, str]:
    """Licence, source and training data of a run's backbone weights, from the registry of
    known and added backbones (never a file path)."""
    from . import weights

    name = str(backbone.get("name", ""))
    if backbone.get("random_init"):
        return {"licence": "none (random weights)", "source": "random initialisation (seed "
                f"{backbone.get('seed', 0)}): no pre-trained weights", "trained_on": "nothing"}
    k = weights.known(name) or weights.known_by_architecture(name)
    if k is not None:
        where = f"Hugging Face Hub {k.repo}" if k.source == "hf" else f"Python package {k.repo}"
        trained_on = k.trained_on or ("ImageNet (natural images)" if "imagenet" in k.note.lower() else
                                      "LVD-142M (natural images, self-supervised)" if k.family == "dinov2" else
                                      "see the model card")
        return {"licence": k.licence, "source": where, "trained_on": trained_on}
    added = weights.added(name)
    if added is not None:
        return {"licence": added.licence or "not given when added", "source": f"added by the user ({added.source_format}, "
                f"SHA-256 {added.source_sha256[:16]}...)", "trained_on": "not recorded"}
    return {"licence": "not recorded", "source": str(backbone.get("weights_source") or "timm"),
            "trained_on": "not recorded"}


def protocol_section(project: Any, run: Any) -> dict[str, Any]:
    r = run.record
    backbone = dict(r.get("backbone") or {})
    train = dict(r.get("train_config") or {})
    augment = train.get("augment") or {}
    return {
        "backbone": {"name": backbone.get("name"), "weights_hash": backbone.get("weights_hash"),
                     "image_size": backbone.get("image_size"), "grid": backbone.get("grid_hw") or backbone.get("grid"),
                     "block": r.get("block") or backbone.get("layers"), "feature_dim": backbone.get("feature_dim"),
                     "cache": r.get("cache_fingerprint"), **backbone_origin(backbone)},
        "head": dict(r.get("head_config") or {}),
        "augment": ({k: v for k, v in augment.items() if k != "enabled"} if augment.get("enabled") else None),
        "train": {k: train.get(k) for k in ("lr", "weight_decay", "batch_size", "patience", "class_weights") if k in train},
        "epochs": len(r.get("history") or []), "best_epoch": r.get("best_epoch"), "monitor": r.get("monitor"),
        "seed": train.get("seed", project.settings.seed), "stopped": r.get("stopped"),
        "n_train": r.get("n_train"), "n_val": r.get("n_val"),
        "notes": [scrub(n, project) for n in r.get("notes", [])],
        "operating_point": _describe_op(r.get("operating_point")),
        "versions": _versions(),
        "choice": head_choice(project, run),
    }


def _describe_op(op: Optional[dict[str, Any]]) -> str:
    from .calibration import describe

    return describe(op)


def head_choice(project: Any, run: Any) -> dict[str, Any]:
    """How the head was chosen: the tune group that picked it (its leaderboard with mean and
    SD), else the project's cross-validation groups, else 'trained directly'."""
    task = run.record["task"]
    primary = PRIMARY.get(task, "accuracy")
    groups = _groups(project)
    own = next((g for g in groups if g.get("group") == run.record.get("group")), None)

    def row(config: Any, cv: dict[str, Any], pruned: Optional[int] = None) -> dict[str, Any]:
        # a pruned trial was scored on fewer folds (listed last, never the winner): said beside it
        return {"config": _config_text(config) + ("" if pruned is None else f" (pruned after {pruned} of "
                                                                          f"{own.get('folds')} folds)"),
                "metrics": {k: (v or {}).get("mean") for k, v in cv.items()},
                "sd": {k: (v or {}).get("sd") for k, v in cv.items()}}

    if own is not None and own.get("kind") == "tune":
        board = [row(e.get("config"), e.get("cv") or {},
                     len(e.get("best_epochs") or []) if e.get("pruned") else None)
                 for e in own.get("leaderboard", [])]
        how = (f"loff tune (group {own.get('group')}): {own.get('trials', len(board))} configurations scored by "
               f"{own.get('folds')}-fold patient-grouped cross-validation on train + val, ranked by {primary}; "
               + _final_words(own.get("final")))
        nested = bool(own.get("nested"))
    else:
        cv = [g for g in groups if g.get("kind") == "cv" and g.get("cache_fingerprint") == run.record.get("cache_fingerprint")]
        board = sorted((row(g.get("config"), g.get("metrics") or {}) for g in cv),
                       key=lambda e: -(e["metrics"].get(primary) if e["metrics"].get(primary) is not None else -math.inf))
        how = ("trained directly (loff train or the Train page) with the configuration above"
               + ("; the project's cross-validation groups on the same cache are listed for comparison" if board else
                  "; no cross-validation of it in the project"))
        nested = False
    names = [primary] + sorted({k for e in board for k in e["metrics"]} - {primary})
    return {"how": how, "nested": nested, "board": board, "names": names, "primary": primary,
            "tuned": own is not None and own.get("kind") == "tune"}


def _config_text(config: Any) -> str:
    if not isinstance(config, dict):
        return str(config)
    return ", ".join(f"{k} {v}" for k, v in config.items())


# -- results -------------------------------------------------------------------------------
METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auc": "ROC AUC",
                "sensitivity": "sensitivity", "specificity": "specificity", "kendall_tau": "Kendall's tau-b",
                "kendall_tau_score": "Kendall's tau-b (expected level)", "amae": "AMAE", "mae": "MAE",
                "accuracy_within_1": "accuracy within one level"}


#: the metrics shown per side / view (the full list is in the table above)
SUBGROUP_METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "kendall_tau", "amae")


def _metric_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": METRIC_NAMES.get(k, k), "key": k, "value": v, "ci": evaluation["ci"].get(k)}
            for k, v in evaluation["metrics"].items()]


def results_section(project: Any, run: Any, evaluation: dict[str, Any], raw: np.ndarray) -> dict[str, Any]:
    """Every test metric with its interval, the curves with the operating point, the
    reliability diagram before / after calibration, the confusion matrix, per-class AUC,
    results by side and view, and (binary) sensitivity / specificity at the decision."""
    from .calibration import ece, threshold_of

    classes = list(evaluation["classes"])
    y = np.array([classes.index(p["label"]) for p in evaluation["predictions"]], dtype=np.int64)
    probs = np.array([p["probabilities"] for p in evaluation["predictions"]], dtype=np.float64)
    predicted = np.array([classes.index(p["predicted"]) for p in evaluation["predictions"]], dtype=np.int64)
    binary = evaluation["task"] == "classification" and len(classes) == 2
    op = evaluation.get("operating_point")
    from . import report_plots as plots

    return {
        "n": evaluation["n"],
        "task": evaluation["task"],
        "classes": classes,
        "binary": binary,
        "metrics": _metric_rows(evaluation),
        "decision": _describe_op(op),
        "threshold": threshold_of(op),
        "warnings": [scrub(w, project) for w in evaluation.get("warnings", [])],
        "confusion": evaluation["confusion_matrix"],
        "per_class": [{"name": c, **v} for c, v in evaluation["per_class"].items()],
        "ece": {"before": ece(raw, y), "after": ece(probs, y)},
        "plots": {
            "roc": plots.roc(evaluation, y, predicted),
            "pr": plots.precision_recall(classes, y, probs, predicted, binary),
            "reliability": plots.reliability(raw, probs, y),
            "confusion": plots.confusion(evaluation["confusion_matrix"], classes),
            "per_class_auc": plots.per_class_auc(evaluation["per_class"]),
        },
        "subgroups": subgroups(project, evaluation, y, probs, predicted),
    }


def subgroups(project: Any, evaluation: dict[str, Any], y: np.ndarray, probs: np.ndarray,
              predicted: np.ndarray) -> list[dict[str, Any]]:
    """The test metrics by side (laterality) and by view where the catalog has them, scored
    as `evaluate` scores (`metrics.evaluate_predictions` at the run's decisions)."""
    from .metrics import evaluate_predictions

    entries = project.catalog().by_id()
    rows = []
    for what, attr in (("side", "laterality"), ("view", "view")):
        values = [getattr(entries[p["image_id"]], attr, None) if p["image_id"] in entries else None
                  for p in evaluation["predictions"]]
        present = sorted({v for v in values if v})
        if len(present) < 2:
            continue
        for value in present:
            mask = np.array([v == value for v in values])
            scored = evaluate_predictions(y[mask], probs[mask], evaluation["classes"], evaluation["task"],
                                          n_bootstrap=EvaluateSettings.bootstrap, seed=project.settings.seed,
                                          predicted=predicted[mask])
            scored["metrics"] = {k: v for k, v in scored["metrics"].items() if k in SUBGROUP_METRICS}
            rows.append({"what": what, "value": value, "n": int(mask.sum()), "metrics": _metric_rows(scored)})
    return rows


# -- examples ------------------------------------------------------------------------------
def pick_examples(evaluation: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The most confident errors (highest probability of the wrongly decided class) and the
    most confident correct cases."""
    classes = evaluation["classes"]
    scored = []
    for p in evaluation["predictions"]:
        confidence = float(p["probabilities"][classes.index(p["predicted"])])
        scored.append({"image_id": p["image_id"], "label": p["label"], "predicted": p["predicted"],
                       "confidence": confidence, "correct": p["label"] == p["predicted"]})
    scored.sort(key=lambda s: (-s["confidence"], s["image_id"]))
    return [s for s in scored if not s["correct"]][:N_ERRORS], [s for s in scored if s["correct"]][:N_CORRECT]


def examples_section(project: Any, run: Any, evaluation: dict[str, Any]) -> dict[str, Any]:
    """Each example's image with the head's heat map (the viewer's, `explain_images`), named
    by its image_id only."""
    from .evaluation import explain_images
    from . import report_plots as plots

    errors, correct = pick_examples(evaluation)
    chosen = errors + correct
    if not chosen:
        return {"errors": [], "correct": [], "note": "no test images"}
    explained = explain_images(project, run.run_id, [c["image_id"] for c in chosen])
    entries = project.catalog().by_id()
    unreadable = 0
    for item, heat in zip(chosen, explained.heat):
        pixels = None
        entry = entries.get(item["image_id"])
        if entry is not None:
            try:
                from .images import load_pixels

                pixels = load_pixels(project.image_path(entry), max_side=320)
            except (LoffError, OSError):
                unreadable += 1
        item["plot"] = plots.heat_example(pixels, np.asarray(heat, dtype=np.float32))
    note = (f"{unreadable} image(s) could not be read now (moved or deleted): their heat map is shown alone"
            if unreadable else "")
    return {"errors": errors, "correct": correct, "note": note}


# -- limitations ---------------------------------------------------------------------------
def limitations(project: Any, run: Any, evaluation: dict[str, Any], context: dict[str, Any]) -> list[dict[str, str]]:
    """What limits the results, stated by the program: each {"topic", "text"}."""
    out: list[dict[str, str]] = []

    def add(topic: str, text: str) -> None:
        out.append({"topic": topic, "text": text})

    if project.settings.synthetic:
        add("synthetic data", "the images are synthetic (the demo): the figures say nothing about real patients")
    n = evaluation["n"]
    _split_size(n, evaluation, project, add)
    _calibration_on_test(context.get("results") or {}, add)
    overlap = (project.settings.split_source or {}).get("patient_overlap")
    if overlap and overlap.get("action") == "keep":
        add("patient overlap", f"the given split puts {overlap.get('patients')} patients ({overlap.get('images')} "
            "images) on two sides and was kept as given: their images are not independent across splits, so the "
            "test figures are optimistic")
    _prevalence(context["data"], add)
    for reason in project.stale_reasons(run):
        add("stale run", f"the head no longer matches the project: {reason}")
    if project.cache_partial(run.record.get("cache_fingerprint")):
        add("partial cache", "the run's feature cache is partial (its extraction was stopped): some images have "
            "no features and are left out of training and test")
    _weights_limits(context["protocol"]["backbone"], add)
    op = run.record.get("operating_point")
    if op and op.get("uses_test_labels"):
        add("operating point", "the prevalence was taken from the test split's labels: the test figures are not "
            "an independent estimate")
    if op is None:
        add("operating point", "the run has no operating point (no calibration, argmax decision)")
    choice = context["protocol"]["choice"]
    if choice["tuned"] and not choice["nested"]:
        add("model selection", "the head was chosen by cross-validation on train + val without nesting: the chosen "
            "configuration's cross-validation score is optimistic; the test split, read once, is the estimate")
    excluded = sum(context["data"]["excluded"].values())
    if excluded:
        add("excluded images", f"{excluded} images were left out by the user (reasons in the data section)")
    out += audit_findings(project)
    add("images", "example images are shown as stored: text burned into the pixels is not removed; check them "
        "before sharing this report")
    return out


def _final_words(final: Any) -> str:
    """How a tune group's final model was made (groups before `final` was recorded: retrained)."""
    if isinstance(final, dict) and final.get("model") == "fold-heads":
        return f"the winner's {final.get('members')} cross-validation fold heads averaged as the final model"
    return "the winner retrained on train + val"


def _split_size(n: int, evaluation: dict[str, Any], project: Any, add: Any) -> None:
    """One line for the test split's size: each reported interval with its width, and the
    advice when one is too wide (the evaluation's small-split warning says the same: it is
    not repeated; any other warning of the evaluation is kept)."""
    from .metrics import SMALL_SPLIT_CI_WIDTH, small_split_warning

    primary = PRIMARY.get(evaluation["task"], "accuracy")
    parts, wide = [], False
    for name in dict.fromkeys((primary, "accuracy")):
        ci = evaluation["ci"].get(name)
        if ci:
            parts.append(f"{METRIC_NAMES.get(name, name)} [{ci[0]:.3f}, {ci[1]:.3f}] (width {ci[1] - ci[0]:.3f})")
            wide = wide or ci[1] - ci[0] > SMALL_SPLIT_CI_WIDTH
    if parts:
        add("test split size", f"{n} test images: 95% interval of " + ", of ".join(parts)
            + (f"; wider than {SMALL_SPLIT_CI_WIDTH}, too wide to tell heads apart: compare heads with "
               "cross-validation (loff cv, or Cross-validate on the Train page)" if wide else ""))
    said = small_split_warning(n, evaluation["ci"].get("accuracy"), "test") if parts else None
    for w in evaluation.get("warnings", []):
        if w != said:
            add("evaluation", scrub(w, project))


def _calibration_on_test(results: dict[str, Any], add: Any) -> None:
    """The temperature is fitted on held-out (validation or out-of-fold) predictions; when it
    raised the calibration error on test, the reader is told, not left to read it off a plot."""
    ece = results.get("ece") or {}
    before, after = ece.get("before"), ece.get("after")
    if before is not None and after is not None and after > before + 1e-9:
        add("calibration", f"the calibration fitted on held-out predictions raised the calibration error on test "
            f"(ECE {before:.3f} → {after:.3f}): the probabilities on new data may be no better calibrated than "
            "the head's own")


def _prevalence(data: dict[str, Any], add: Any) -> None:
    rows = {r["split"]: r for r in data["table"]}
    train, test = rows["train"]["counts"], rows["test"]["counts"]
    if not sum(train) or not sum(test):
        return
    shares = [(c, a / sum(train), b / sum(test)) for c, a, b in zip(data["classes"], train, test)]
    gap = max(abs(a - b) for _, a, b in shares)
    if gap > PREVALENCE_GAP:
        add("prevalence", "the class shares differ between train and test ("
            + ", ".join(f"{c}: {a:.0%} vs {b:.0%}" for c, a, b in shares)
            + "): accuracy and predictive values will not carry over to a setting with other shares")


def _weights_limits(backbone: dict[str, Any], add: Any) -> None:
    trained_on = str(backbone.get("trained_on") or "")
    if backbone.get("licence", "").startswith("none (random"):
        add("backbone weights", "the backbone has random weights (no pre-training): its features are not a "
            "foundation model's; use this run to test the pipeline, not to judge the method")
    elif any(word in trained_on.lower() for word in ("imagenet", "laion", "lvd-142m", "natural images")):
        add("backbone weights", f"the backbone was pre-trained on {trained_on}, not on medical images")


def audit_findings(project: Any) -> list[dict[str, str]]:
    """The audit's findings (PROJECT/audit/*.csv of `loff audit`) when present."""
    import csv

    folder = Path(project.root) / "audit"
    if not folder.is_dir():
        return [{"topic": "audit", "text": "the data were not audited (loff audit: near-duplicates across splits, "
                 "suspected label errors, outliers, shift between splits)"}]

    def rows(name: str) -> list[dict[str, str]]:
        try:
            with open(folder / name, newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        except (OSError, csv.Error, UnicodeDecodeError):
            return []

    out = []
    dups = rows("duplicates.csv")
    leaks = [r for r in dups if r.get("leak") == "1"]
    if (folder / "duplicates.csv").is_file():
        out.append({"topic": "audit: duplicates", "text": f"{len(dups)} near-duplicate groups, {len(leaks)} across "
                    "splits (leaks)" + (": " + "; ".join(r.get("images", "").replace(";", ", ") + " ("
                                                          + r.get("splits", "").replace(";", ", ") + ")"
                                                          for r in leaks[:5]) if leaks else "")})
    suspects = rows("label_suspects.csv")
    if (folder / "label_suspects.csv").is_file():
        out.append({"topic": "audit: label suspects", "text": f"{len(suspects)} suspected label errors"
                    + ("" if not suspects else "; most suspicious: ") + ", ".join(f"{r.get('image')} (label {r.get('label')}, predicted "
                                              f"{r.get('predicted')})" for r in suspects[:5])})
    outliers = rows("outliers.csv")
    if outliers:
        out.append({"topic": "audit: outliers", "text": f"farthest from their class (of {len(outliers)} images "
                    "ranked): " + ", ".join(f"{r.get('image', '')} ({r.get('score', '')[:5]})" for r in outliers[:5])
                    + " (1 = as typical as the class's own images)"})
    shift = {r.get("measure"): r.get("value") for r in rows("shift.csv")}
    auc = _float(shift.get("test_vs_train_auc"))
    if auc is not None:
        level = AuditSettings.shift_warn_auc
        out.append({"topic": "audit: shift", "text": f"a classifier tells test from train by their embeddings with "
                    f"AUC {auc:.3f} (0.5: indistinguishable)" + (f"; above {level}: validation figures and a "
                                                                 "validation-fitted operating point may not carry over"
                                                                 if auc > level else "")})
    return out or [{"topic": "audit", "text": "the audit found nothing"}]


def _float(text: Any) -> Optional[float]:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# -- CLAIM 2024 ----------------------------------------------------------------------------
def claim_rows(ctx: dict[str, Any]) -> list[dict[str, str]]:
    """CLAIM 2024 topics the program can fill (data, ground truth, partitions, model,
    training, evaluation): each "filled" with where, or "for the author"."""
    data, proto, res = ctx["data"], ctx["protocol"], ctx["results"]
    author = "for the author"

    def item(section: str, topic: str, filled: Optional[str]) -> dict[str, str]:
        return {"section": section, "topic": topic, "status": "filled" if filled else author,
                "where": filled or ""}

    return [
        item("Data", "data sources, eligibility, dates and setting", None),
        item("Data", "data preprocessing", "Protocol: backbone input size, grid, decoding as the card states"),
        item("Data", "selection of data subsets; images left out", f"Data: {data['n_refused']} refused, "
             f"{sum(data['excluded'].values())} excluded, reasons listed"),
        item("Data", "de-identification", "images named by a salted hash (image_id); no paths or patient keys here"),
        item("Data", "how missing data were handled", f"Data: images without a label are not used "
             f"({data['unlabelled']})"),
        item("Ground truth", "definition of the reference standard and its rationale", None),
        item("Ground truth", "source of annotations, annotators' qualifications, tools", None),
        item("Ground truth", "measurement of inter- and intra-rater variability", None),
        item("Partitions", "how data were assigned to partitions; their proportions", f"Data: {data['split_how']}"),
        item("Partitions", "level of disjointness between partitions (patient)",
             "Data: patients per split" + ("; overlap kept as given" if data["overlap"] else "")),
        item("Model", "detailed description of the model (inputs, outputs, layers)",
             f"Protocol: {proto['backbone']['name']} (frozen) + {proto['head'].get('kind')} head"),
        item("Model", "software libraries, frameworks and versions", "Protocol: library versions"),
        item("Model", "initialisation of parameters (pre-trained weights, source, licence)",
             f"Protocol: weights hash {proto['backbone']['weights_hash']}, {proto['backbone']['licence']}"),
        item("Training", "training details (augmentations, hyper-parameters, epochs, seed)", "Protocol"),
        item("Training", "method of selecting the final model", f"Protocol: {proto['choice']['how']}"),
        item("Training", "ensembling", "none: one head" if proto["head"] else None),
        item("Evaluation", "metrics of model performance", "Results on test: every metric"),
        item("Evaluation", "statistical measures of significance and uncertainty", "95% bootstrap intervals"),
        item("Evaluation", "robustness or sensitivity analysis", "Results by side / view" if res["subgroups"] else None),
        item("Evaluation", "methods for explainability or interpretability", "Examples: attention heat maps"),
        item("Evaluation", "validation or testing on external data", None),
        item("Results", "flow of participants or cases; demographic and clinical characteristics", None),
        item("Results", "performance on test data, with failure analysis",
             "Results on test; Examples: most confident errors"),
    ]


# -- rendering -----------------------------------------------------------------------------
def template_dir() -> Path:
    """Where the report template is: loff_core/templates (in a checkout, the wheel's package
    data and the frozen build's datas alike)."""
    return Path(__file__).resolve().parent / "templates"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _interval(ci: Any, digits: int = 3) -> str:
    return "" if not ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def render(context: dict[str, Any]) -> str:
    """The page from the jinja2 template (autoescaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["interval"] = _interval
    return env.get_template(TEMPLATE).render(**context)


def embedded_images(html: str) -> list[bytes]:
    """The decoded images embedded in a page (the tests count them)."""
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")

