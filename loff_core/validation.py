"""Patient-grouped cross-validation on the feature cache.

The cache makes training a head nearly free, so results can be honest: `cross_validate`
trains one head per fold over train + val (folds grouped by patient, stratified by label;
the test split is never read) and reports each metric of `evaluate` as mean, SD and the
per-fold values. Model selection (`loff tune`) scores configurations by the same folds
(`run_folds`); it lives in `search.py`.

Inside each fold a validation part (about 1/6 of the fold's training patients, again
grouped and stratified) is held out for the head's early stopping / best-epoch choice, so
the held-out fold is only ever used to score.

Results are saved as a run group: `groups/<ID>/group.json` in the project (`loff info`
lists them). Progress, partial results (each finished "fold") and Stop go through the
`Progress` given: Stop ends after the fold in progress and keeps what is finished.
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .errors import TrainingError
from .fsutil import atomic_write_json, utc_now
from .progress import Progress
from .settings import config_record
from .splits import first_appearance_ranks

#: the metric `tune` ranks by: macro AUC for classification, Kendall's tau for ordinal labels
PRIMARY = {"classification": "auc", "ordinal": "kendall_tau"}
GROUPS_DIR = "groups"
LOGREG = "logistic_regression"
LOGREG_CS = (0.001, 0.01, 0.1, 1.0, 10.0)


@dataclass(frozen=True)
class Pool:
    """The labelled train + val images that have features: ids, class indices, patients."""

    ids: list[str]
    y: np.ndarray
    groups: np.ndarray


def strong_augment() -> Any:
    from .settings import AugmentConfig

    return AugmentConfig(crop_scale=(0.4, 1.0), noise_std=0.1, token_dropout=0.2, mixup_alpha=0.4, mixup_prob=0.7)


def augment_named(name: str) -> Any:
    from .settings import AugmentConfig

    if name == "off":
        return AugmentConfig.off()
    if name == "default":
        return AugmentConfig()
    if name == "strong":
        return strong_augment()
    raise TrainingError(f"unknown augmentation strength {name!r}; expected off, default or strong")


# -- folds -------------------------------------------------------------------------------
def grouped_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, held-out) index pairs: no patient in both, label proportions kept
    (scikit-learn's StratifiedGroupKFold, shuffled with `seed`).

    The patients are numbered in the order they first appear before the split, so the folds
    depend on the images' order, their labels and `seed` only, not on the patient keys'
    values: two projects of the same folder (each with its own salted keys) get the same
    folds. (Before search.STUDY_VERSION 2 the keys' sorted order decided.)"""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = first_appearance_ranks(groups)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if k < 2:
        raise TrainingError(f"cross-validation needs at least 2 folds, got {k}")
    if n_groups < k:
        raise TrainingError(f"{k} folds need at least {k} patients in train + val; there are {n_groups}")
    if len(y) and np.bincount(np.asarray(y, dtype=np.int64)).max() < k:  # scikit-learn refuses it
        raise TrainingError(f"{k} folds need a class with at least {k} images in train + val; the largest has "
                            f"{int(np.bincount(np.asarray(y, dtype=np.int64)).max())}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has fewer members than n_splits"
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return [(np.asarray(a), np.asarray(b)) for a, b in splitter.split(np.zeros(len(y)), y, groups)]


def inner_split(idx: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int,
                parts: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """`idx` divided into (fit, val) by patient: val is one of `parts` stratified grouped
    folds (fewer when there are few patients); no val with fewer than 2 patients."""
    n_groups = len(np.unique(groups[idx]))
    if n_groups < 2:
        return idx, idx[:0]
    largest = int(np.bincount(np.asarray(y[idx], dtype=np.int64)).max()) if len(idx) else 0
    parts = min(parts, n_groups, largest)  # stratified folds need a class with as many images
    if parts < 2:
        return idx, idx[:0]
    fit, val = grouped_folds(y[idx], groups[idx], parts, seed)[0]
    return idx[fit], idx[val]


# -- one configuration over the folds ----------------------------------------------------
def _fold_progress(parent: Progress, fold: int, folds: int, label: str) -> Progress:
    """A Progress for one fold: counts mapped into the parent's [fold, fold + 1) of 1000
    units each, cancel and Stop shared."""
    def forward(done: int, total: int, message: str) -> None:
        part = done / total if total else 0.0
        parent.report(fold * 1000 + int(999 * part), folds * 1000, f"{label}fold {fold + 1}/{folds}: {message}")

    return parent.linked(forward)


def _logreg_features(cls: np.ndarray) -> np.ndarray:
    """What the logistic regression sees: the pooled embedding after a LayerNorm without
    affine parameters (exactly what `LinearHead` computes before its own affine), so the
    fitted model is a linear head."""
    x = cls.astype(np.float64)
    mu = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5)


def fit_logreg(x: np.ndarray, y: np.ndarray, groups: np.ndarray, num_classes: int, seed: int) -> dict[str, Any]:
    """Standardised features + multinomial logistic regression, C chosen by an inner
    grouped CV (log-loss) over LOGREG_CS; returns the fitted pieces."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y)) < 2:
        raise TrainingError("the logistic regression needs at least two classes among its training images")
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    n_groups = len(np.unique(groups))
    present = np.unique(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n_groups >= 3 and len(present) > 1:
            inner = grouped_folds(y, groups, min(5, n_groups), seed)
            inner = [(a, b) for a, b in inner if len(np.unique(y[a])) == len(present)]
        else:
            inner = []
        if len(inner) >= 2:
            model = LogisticRegressionCV(Cs=list(LOGREG_CS), cv=inner, scoring="neg_log_loss", max_iter=2000,
                                         random_state=seed).fit(z, y)
            c = float(np.atleast_1d(model.C_)[0])
        else:
            c = 1.0
            model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(z, y)
    return {"scaler": scaler, "model": model, "C": c, "num_classes": num_classes}


def logreg_probabilities(fitted: dict[str, Any], x: np.ndarray) -> np.ndarray:
    model = fitted["model"]
    p = model.predict_proba(fitted["scaler"].transform(x))
    out = np.zeros((len(x), fitted["num_classes"]), dtype=np.float64)
    out[:, model.classes_.astype(int)] = p
    return out


def logreg_head_state(fitted: dict[str, Any], feature_dim: int) -> dict[str, Any]:
    """The fitted scaler + logistic regression as a `LinearHead` state dict (classification):
    LayerNorm affine = the standardisation, output layer = the coefficients."""
    import torch

    scaler, model, k = fitted["scaler"], fitted["model"], fitted["num_classes"]
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    weight = np.zeros((k, feature_dim))
    bias = np.zeros(k)
    classes = model.classes_.astype(int)
    if model.coef_.shape[0] == 1:  # binary: softmax([0, w.x + b]) = sigmoid(w.x + b)
        weight[classes[1]] = model.coef_[0]
        bias[classes[1]] = model.intercept_[0]
    else:
        weight[classes] = model.coef_
        bias[classes] = model.intercept_
    if len(classes) < k:  # a class never seen: never predicted
        bias[[c for c in range(k) if c not in classes]] = -1e4
    f32 = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return {"norm.weight": f32(1.0 / scale), "norm.bias": f32(-scaler.mean_ / scale),
            "out.weight": f32(weight), "out.bias": f32(bias)}


def _read_cls(source: Any, ids: Sequence[str]) -> np.ndarray:
    idx = np.asarray(source.indices(list(ids)), dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    cls, _ = source.read(idx[order])
    out = np.empty((len(idx), cls.shape[1]), dtype=np.float32)
    out[order] = cls
    return out


def run_folds(source: Any, pool: Pool, classes: Sequence[str], task: str, config: Any, *, folds: int, seed: int,
              progress: Progress = Progress(), label: str = "",
              only: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """Train `config` (a TrainConfig, or LOGREG) on each fold's training part and score it
    on the held-out fold with `evaluate`'s metrics. Returns {"folds", "completed",
    "metrics": {name: {"mean", "sd", "per_fold"}}, "best_epochs", "stopped", "fold_sizes",
    "fold_extra", "oof", "fold_indices", "fold_heads" (the trained heads' (HeadConfig, state
    dict), not for LOGREG)}. `only` (fold indices, 0-based): train and score only
    those folds of the same splits (a search scores folds 0-1 first and prunes before the
    rest); per_fold, best_epochs and oof then hold only them. The features are made tensors
    once for all folds, and torch runs on `training.cv_threads()` threads meanwhile."""
    from .training import cv_threads

    splits = grouped_folds(pool.y, pool.groups, folds, seed)
    chosen = list(range(folds)) if only is None else sorted({int(f) for f in only})
    if any(f < 0 or f >= folds for f in chosen):
        raise TrainingError(f"fold indices {list(only or [])} are outside 0..{folds - 1}")
    with cv_threads():
        return _run_folds(source, pool, classes, task, config, folds, seed, progress, label, splits, chosen)


def _run_folds(source: Any, pool: Pool, classes: Sequence[str], task: str, config: Any, folds: int, seed: int,
               progress: Progress, label: str, splits: list[tuple[np.ndarray, np.ndarray]],
               chosen: list[int]) -> dict[str, Any]:
    """run_folds's loop over the `chosen` folds of `splits`."""
    from .metrics import evaluate_predictions
    from .training import predict_probabilities, train_head

    k = len(classes)
    per_fold: list[dict[str, Optional[float]]] = []
    best_epochs: list[int] = []
    extra: list[dict[str, Any]] = []
    sizes: list[int] = []
    stopped = False
    data = source
    if config != LOGREG:
        from .training import _in_memory

        data = _in_memory(source)  # once for all folds
    cls_all = _read_cls(data, pool.ids) if config == LOGREG else None
    ids = np.asarray(pool.ids, dtype=object)
    oof = np.full((len(pool.ids), k), np.nan)  # out-of-fold probabilities
    done: list[int] = []
    heads: list[tuple[Any, dict[str, Any]]] = []  # (HeadConfig, state dict) of each trained fold
    for f in chosen:
        train_idx, test_idx = splits[f]
        progress.check()
        if progress.stop_requested and per_fold:
            stopped = True
            break
        sub = _fold_progress(progress, f, folds, label)
        if config == LOGREG:
            if task != "classification":
                raise TrainingError("the logistic-regression baseline is for classification tasks")
            x = _logreg_features(cls_all)
            fitted = fit_logreg(x[train_idx], pool.y[train_idx], pool.groups[train_idx], k, seed + f)
            probs = logreg_probabilities(fitted, x[test_idx])
            extra.append({"C": fitted["C"]})
            sub.report(1, 1, "logistic regression")
        else:
            fit_idx, val_idx = inner_split(train_idx, pool.y, pool.groups, seed + f)
            result = train_head(data, list(ids[fit_idx]), pool.y[fit_idx].tolist(), list(ids[val_idx]),
                                pool.y[val_idx].tolist(), replace(config, seed=config.seed + f), num_classes=k,
                                progress=sub)
            if result.stopped == "user_stop":
                stopped = True
                break  # an interrupted fold is not counted
            best_epochs.append(int(result.best_epoch))
            heads.append((result.head_config, result.state_dict))
            probs = predict_probabilities(result.head_config, result.state_dict, data, list(ids[test_idx]),
                                          device=config.device)
        oof[test_idx] = probs
        metrics = evaluate_predictions(pool.y[test_idx], probs, classes, task, n_bootstrap=0)["metrics"]
        per_fold.append(metrics)
        sizes.append(int(len(test_idx)))
        done.append(f)
        progress.partial("fold", {"fold": f + 1, "folds": folds, "label": label, "metrics": dict(metrics)})
        progress.report((f + 1) * 1000, folds * 1000, f"{label}fold {f + 1}/{folds} done")
    return {"folds": folds, "completed": len(per_fold), "metrics": summarise(per_fold),
            "best_epochs": best_epochs, "fold_extra": extra, "fold_sizes": sizes, "stopped": stopped, "oof": oof,
            "fold_indices": done, "fold_heads": heads}


def summarise(per_fold: list[dict[str, Optional[float]]]) -> dict[str, dict[str, Any]]:
    """{name: {"mean", "sd", "per_fold"}}; a fold where a metric is undefined (None) is
    left out of its mean and SD (sample SD, ddof 1; None with fewer than two values)."""
    names: list[str] = []
    for m in per_fold:
        names += [n for n in m if n not in names]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [m.get(name) for m in per_fold]
        ok = np.array([v for v in values if v is not None], dtype=np.float64)
        out[name] = {"mean": float(ok.mean()) if ok.size else None,
                     "sd": float(ok.std(ddof=1)) if ok.size >= 2 else None,
                     "per_fold": [None if v is None else float(v) for v in values]}
    return out


# -- over a project ------------------------------------------------------------------------
def project_pool(project: Any, cache: Any) -> tuple[Pool, list[str]]:
    """Train + val labelled images with features (the test split is not read), grouped by
    patient (patients joined by `loff audit --on-leak regroup` as one)."""
    catalog = project.catalog()
    cached = set(cache.image_ids)
    entries = [e for e in catalog.entries
               if e.split in ("train", "val") and e.label is not None and e.excluded is None and e.image_id in cached]
    if not entries:
        raise TrainingError(f"{project.root}: no labelled train / val images with features; import and extract first")
    y = np.asarray([catalog.class_index(e.label) for e in entries], dtype=np.int64)
    from .splits import joined_patients

    joined = joined_patients(project)  # patients an `--on-leak regroup` linked: one group, so one fold
    groups = np.asarray([joined.get(e.patient_key, e.patient_key) for e in entries])
    return Pool([e.image_id for e in entries], y, groups), list(catalog.classes)


def check_every_class_twice(pool: Pool, classes: Sequence[str], where: Any) -> None:
    """Cross-validation scores each class on held-out patients after training on others: a
    class with fewer than two patients in train + val is trained on or scored, never both
    (its fold scores would be 0.5 +- 0.5, noise): refused with the counts."""
    short = []
    for i, name in enumerate(classes):
        mask = pool.y == i
        patients = len(np.unique(pool.groups[mask]))
        if patients < 2:
            short.append(f"{name} ({int(mask.sum())} images, {patients} patients)")
    if short:
        raise TrainingError(f"{where}: cross-validation needs at least two patients of every class in train + val; "
                            f"too few: {', '.join(short)}; import more images of that class or leave it out "
                            f"(--classes)")

def _new_group_id(project: Any, kind: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = project.root / GROUPS_DIR
    gid, n = f"{stamp}-{kind}", 1
    while (base / gid).exists():
        n += 1
        gid = f"{stamp}-{kind}-{n}"
    return gid


def _save_group(project: Any, record: dict[str, Any]) -> Path:
    folder = project.root / GROUPS_DIR / record["group"]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "group.json", record)
    return folder


def list_groups(project: Any) -> list[dict[str, Any]]:
    """The project's cross-validation and tuning groups, oldest first (a short summary each)."""
    base = Path(project.root) / GROUPS_DIR
    out = []
    for path in sorted(base.iterdir()) if base.is_dir() else []:
        file = path / "group.json"
        if not file.is_file():
            continue
        try:
            rec = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        primary = PRIMARY.get(rec.get("task", ""), "accuracy")
        m = (rec.get("metrics") or (rec.get("best") or {}).get("cv") or {}).get(primary) or {}
        out.append({"group": rec.get("group", path.name), "kind": rec.get("kind"), "folds": rec.get("folds"),
                    "completed": rec.get("completed"), "config": rec.get("config") or (rec.get("best") or {}).get("config"),
                    primary: {"mean": m.get("mean"), "sd": m.get("sd")}, "run": rec.get("run")})
    return out


def load_group(project: Any, group_id: str) -> dict[str, Any]:
    from .errors import ProjectError

    file = Path(project.root) / GROUPS_DIR / group_id / "group.json"
    if not file.is_file():
        raise ProjectError(f"{project.root}: no cross-validation group {group_id!r}")
    return json.loads(file.read_text(encoding="utf-8"))


def config_dict(config: Any) -> dict[str, Any]:
    """A search configuration as JSON: {"head": LOGREG} or the TrainConfig fields tuned."""
    if config == LOGREG:
        return {"head": LOGREG}
    return {"head": config.head, "lr": config.lr, "epochs": config.epochs, "patience": config.patience,
            "augment": _augment_name(config.augment)}


def _augment_name(augment: Any) -> Any:
    from .settings import AugmentConfig

    if not augment.enabled:
        return "off"
    if augment == AugmentConfig():
        return "default"
    if augment == strong_augment():
        return "strong"
    return augment.to_dict()


def scored_config(project: Any, settings: Any) -> Any:
    """What a cross-validation (`settings`: CVSettings) scores: LOGREG, or its TrainConfig with
    the head chosen (None: TrainConfig's defaults with the project's task)."""
    if settings.head == "logreg":
        if (settings.train.task if settings.train else project.settings.task) != "classification":
            raise TrainingError("the logistic regression on the pooled embedding is for classification tasks")
        return LOGREG
    from .settings import TrainConfig

    return replace(settings.train or TrainConfig(task=project.settings.task), head=settings.head)


def cross_validate(project: Any, settings: Any, *, progress: Progress = Progress()) -> dict[str, Any]:
    """`loff cv`: K patient-grouped, label-stratified folds over train + val (`settings`:
    CVSettings; the folds are shuffled with the training seed); saved as a group. Returns
    {"group", "folds", "metrics": {name: {"mean", "sd", "per_fold"}}, ...}."""
    config = scored_config(project, settings)
    folds, seed = settings.folds, (settings.train.seed if settings.train else 0)
    project.check_cache_complete()
    cache = project.open_cache(block=settings.train.block if settings.train else None)
    pool, classes = project_pool(project, cache)
    task = config.task if config != LOGREG else project.settings.task
    if config != LOGREG and config.task == "ordinal" and len(classes) < 3:
        raise TrainingError("the ordinal task needs at least three ordered levels")
    check_every_class_twice(pool, classes, project.root)
    started = utc_now()
    result = run_folds(cache, pool, classes, task, config, folds=folds, seed=seed, progress=progress)
    if result["completed"] == 0:
        raise TrainingError("cross-validation was stopped before the first fold finished; nothing was saved")
    group = _new_group_id(project, "cv")
    record = {"group": group, "kind": "cv", "folds": folds, "metrics": result["metrics"],
              "completed": result["completed"], "stopped": result["stopped"], "task": task, "classes": classes,
              "config": config_dict(config), "train_config": _jsonable(config), "seed": seed,
              "n_images": len(pool.ids), "n_patients": int(len(np.unique(pool.groups))),
              "fold_sizes": result["fold_sizes"], "best_epochs": result["best_epochs"],
              "started": started, "finished": utc_now(), "catalog_version": project.settings.catalog_version,
              "cache_fingerprint": cache.fingerprint, "block": cache.block}
    folder = _save_group(project, record)
    done = ~np.isnan(result["oof"]).any(axis=1)  # `loff audit` ranks label suspects on them
    np.savez(folder / "oof.npz", probabilities=result["oof"][done], labels=pool.y[done], ids=np.asarray(pool.ids)[done])
    return record


def _jsonable(config: Any) -> Any:
    if config == LOGREG:
        return {"head": LOGREG, "Cs": list(LOGREG_CS)}
    return config_record(config)
