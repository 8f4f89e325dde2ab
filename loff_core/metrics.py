"""Evaluation metrics with bootstrap confidence intervals, as JSON-safe dicts.

Point estimates use scikit-learn / SciPy (AMAE has no library function). The bootstrap
(percentile, 95 %, resampling images with a seeded NumPy generator) is vectorised: accuracy,
balanced accuracy, MAE-type metrics and AUC (Mann-Whitney form via `scipy.stats.rankdata`,
identical to `roc_auc_score`) are computed for all resamples at once; Kendall's tau uses
`scipy.stats.kendalltau` per resample.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from .settings import EvaluateSettings


def _f(x: Any) -> Optional[float]:
    """A finite float, or None."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _auc(y: np.ndarray, probs: np.ndarray, k: int) -> Optional[float]:
    from sklearn.metrics import roc_auc_score

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if k == 2:
                if len(np.unique(y)) < 2:
                    return None
                return _f(roc_auc_score(y, probs[:, 1]))
            if len(np.unique(y)) < k:
                return None
            p = probs / probs.sum(axis=1, keepdims=True)
            return _f(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k))))
    except ValueError:
        return None


def _tau(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    from scipy.stats import kendalltau

    if len(a) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _f(kendalltau(a, b).statistic)


def _tau_nan(a: np.ndarray, b: np.ndarray) -> float:
    t = _tau(a, b)
    return math.nan if t is None else t


def _amae(y: np.ndarray, pred: np.ndarray) -> Optional[float]:
    """Average MAE over the true levels present (CSAW-M)."""
    err = np.abs(pred.astype(np.float64) - y)
    levels = np.unique(y)
    if levels.size == 0:
        return None
    return float(np.mean([err[y == lv].mean() for lv in levels]))


def _point(y: np.ndarray, probs: np.ndarray, pred: np.ndarray, task: str, k: int) -> dict[str, Optional[float]]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from .heads import expected_level

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out: dict[str, Optional[float]] = {
            "accuracy": _f(accuracy_score(y, pred)),
            "balanced_accuracy": _f(balanced_accuracy_score(y, pred)),
            "auc": _auc(y, probs, k),
        }
    if task == "classification" and k == 2:  # at the decision made (the run's operating point)
        out["sensitivity"] = _f(((pred == 1) & (y == 1)).sum() / (y == 1).sum()) if (y == 1).any() else None
        out["specificity"] = _f(((pred == 0) & (y == 0)).sum() / (y == 0).sum()) if (y == 0).any() else None
    if task == "ordinal":
        err = np.abs(pred - y)
        out["kendall_tau"] = _tau(y, pred)
        out["kendall_tau_score"] = _tau(y, expected_level(probs))
        out["amae"] = _amae(y, pred)
        out["mae"] = _f(err.mean())
        out["accuracy_within_1"] = _f((err <= 1).mean())
    return out


# -- vectorised bootstrap ----------------------------------------------------------------


def _boot_auc_binary(pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUC per row of resampled labels `pos` [B,N] bool and scores [B,N] (Mann-Whitney U)."""
    from scipy.stats import rankdata

    ranks = rankdata(score, axis=1)
    n1 = pos.sum(axis=1).astype(np.float64)
    n0 = pos.shape[1] - n1
    u = (ranks * pos).sum(axis=1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (n1 * n0)
    auc[(n1 == 0) | (n0 == 0)] = np.nan
    return auc


def _bootstrap(
    y: np.ndarray, probs: np.ndarray, pred: np.ndarray, task: str, k: int, names: Sequence[str],
    n_bootstrap: int, seed: int, class_ci: Optional[list[Optional[list[float]]]] = None,
) -> dict[str, Optional[list[float]]]:
    """95 % percentile intervals of the metrics in `names`; `class_ci`, when given, is
    filled with each class's one-vs-rest AUC interval (None: undefined)."""
    from .heads import expected_level

    n = len(y)
    if n_bootstrap <= 0 or n == 0:
        return {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    yb = y[idx]
    pb = pred[idx]
    values: dict[str, np.ndarray] = {}
    values["accuracy"] = (yb == pb).mean(axis=1)

    onehot_true = yb[..., None] == np.arange(k)  # [B, N, K]
    n_c = onehot_true.sum(axis=1)  # [B, K]
    hit_c = (onehot_true & (pb == yb)[..., None]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(n_c > 0, hit_c / np.maximum(n_c, 1), np.nan)
        values["balanced_accuracy"] = np.nanmean(np.where(n_c > 0, recall, np.nan), axis=1)
    if k == 2:  # recall of the positive / negative class: sensitivity / specificity
        values["sensitivity"], values["specificity"] = recall[:, 1], recall[:, 0]

    if k == 2:
        values["auc"] = _boot_auc_binary(yb == 1, probs[idx, 1])
        per_class = (np.stack([_boot_auc_binary(yb == 0, probs[idx, 0]), values["auc"]], axis=1)
                     if class_ci is not None else None)
    else:
        per_class = np.stack([_boot_auc_binary(yb == c, probs[idx, c]) for c in range(k)], axis=1)
        values["auc"] = per_class.mean(axis=1)  # nan when any class is missing: undefined
    if class_ci is not None and per_class is not None:
        for c in range(k):
            v = per_class[:, c][np.isfinite(per_class[:, c])]
            class_ci.append(None if v.size == 0 or not 0 < (y == c).sum() < n else
                            [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))])

    if task == "ordinal":
        err = np.abs(pb - yb).astype(np.float64)
        values["mae"] = err.mean(axis=1)
        values["accuracy_within_1"] = (err <= 1).mean(axis=1)
        err_c = (onehot_true * err[..., None]).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            values["amae"] = np.nanmean(np.where(n_c > 0, err_c / np.maximum(n_c, 1), np.nan), axis=1)
        level = expected_level(probs)
        values["kendall_tau"] = np.array([_tau_nan(yb[i], pb[i]) for i in range(n_bootstrap)])
        values["kendall_tau_score"] = np.array([_tau_nan(yb[i], level[idx[i]]) for i in range(n_bootstrap)])

    ci: dict[str, Optional[list[float]]] = {}
    for name in names:
        v = values.get(name)
        if v is None:
            continue
        v = v[np.isfinite(v)]
        ci[name] = None if v.size == 0 else [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
    return ci


def _per_class_auc(y: np.ndarray, probs: np.ndarray, k: int) -> list[Optional[float]]:
    """Each class's one-vs-rest AUC on P(class); None when the class or the rest is absent."""
    out: list[Optional[float]] = []
    for c in range(k):
        pos = y == c
        out.append(float(_boot_auc_binary(pos[None, :], probs[None, :, c])[0]) if 0 < pos.sum() < len(y) else None)
    return out


def _roc(y_bin: np.ndarray, score: np.ndarray) -> dict[str, list[float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y_bin, score)
    thr = np.where(np.isfinite(thr), thr, 1.0)
    return {"fpr": [float(x) for x in fpr], "tpr": [float(x) for x in tpr], "thresholds": [float(x) for x in thr]}


#: an accuracy interval wider than this means the split cannot tell heads apart
SMALL_SPLIT_CI_WIDTH = 0.2


def small_split_warning(n: int, ci: Optional[Sequence[float]], split: str = "test") -> Optional[str]:
    """A warning when the accuracy's 95 % interval is wider than SMALL_SPLIT_CI_WIDTH."""
    if not ci or ci[1] - ci[0] <= SMALL_SPLIT_CI_WIDTH:
        return None
    return (f"the {split} split ({n} images) is too small to tell heads apart: the 95% interval of the accuracy is "
            f"[{ci[0]:.2f}, {ci[1]:.2f}], wider than {SMALL_SPLIT_CI_WIDTH}; compare heads with cross-validation "
            f"(loff cv, or Cross-validate on the Train page)")


def evaluate_predictions(
    y_true: Sequence[int],
    probs: Any,
    classes: Sequence[str],
    task: str,
    *,
    n_bootstrap: int = EvaluateSettings.bootstrap,
    seed: int = 0,
    predicted: Any = None,
) -> dict[str, Any]:
    """Metrics, 95 % bootstrap CIs, per-class scores, confusion matrix and ROC curves.
    `predicted`: the decided class per image (a run's operating point); default argmax /
    ordinal decode of `probs`."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from .heads import predicted_class

    classes = [str(c) for c in classes]
    k = len(classes)
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(probs.detach().cpu().numpy() if hasattr(probs, "detach") else probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(f"probabilities must be [{len(y)}, {k}]; got {list(p.shape)}")
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must be in 0..{k - 1}")
    pred = predicted_class(p, task) if len(y) else np.zeros(0, dtype=np.int64)
    if predicted is not None:
        pred = np.asarray(predicted, dtype=np.int64).reshape(-1)

    metrics = _point(y, p, pred, task, k) if len(y) else {"accuracy": None, "balanced_accuracy": None, "auc": None}
    class_ci: list[Optional[list[float]]] = []
    ci = _bootstrap(y, p, pred, task, k, list(metrics), n_bootstrap, seed, class_ci)
    for name in metrics:
        if metrics[name] is None:
            ci[name] = None
        else:
            ci.setdefault(name, None)

    labels = list(range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    class_auc = _per_class_auc(y, p, k) if len(y) else [None] * k
    per_class = {
        c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(sup[i]),
            "auc": class_auc[i], "auc_ci": class_ci[i] if i < len(class_ci) and class_auc[i] is not None else None}
        for i, c in enumerate(classes)
    }
    cm = confusion_matrix(y, pred, labels=labels).tolist() if len(y) else [[0] * k for _ in range(k)]

    roc: Optional[dict[str, Any]]
    if k == 2:
        roc = _roc(y == 1, p[:, 1]) if len(np.unique(y)) == 2 else None
    else:
        roc = {}
        for i, c in enumerate(classes):
            pos = y == i
            if 0 < pos.sum() < len(y):
                roc[c] = _roc(pos, p[:, i])

    # the same per-class AUCs and intervals keyed for `loff evaluate`'s per-class AUC line
    per_class_auc = {c: {"auc": v["auc"], "ci": v["auc_ci"]} for c, v in per_class.items()}
    return {
        "metrics": metrics,
        "ci": ci,
        "per_class": per_class,
        "per_class_auc": per_class_auc,
        "confusion_matrix": [[int(v) for v in row] for row in cm],
        "roc": roc,
    }


def _wilson(k: int, n: int, z: float = 1.959964) -> Optional[list[float]]:
    """The Wilson score 95 % interval of a proportion k / n (None when n is 0)."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def operating_point_rates(y: Sequence[int], probs: Any, threshold: float) -> dict[str, Any]:
    """Sensitivity and specificity of a binary decision `probs[:, 1] >= threshold` (class 1
    the positive class), each with its Wilson 95 % interval, and the four counts. `probs`:
    the run's adjusted probabilities (as `evaluate` scores them)."""
    y_arr = np.asarray(y, dtype=np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (len(y_arr), 2):
        raise ValueError(f"binary probabilities must be [{len(y_arr)}, 2]; got {list(p.shape)}")
    pred = p[:, 1] >= float(threshold)
    pos = y_arr == 1
    tp, fn = int((pred & pos).sum()), int((~pred & pos).sum())
    tn, fp = int((~pred & ~pos).sum()), int((pred & ~pos).sum())
    return {"threshold": float(threshold), "tp": tp, "fn": fn, "tn": tn, "fp": fp,
            "sensitivity": tp / (tp + fn) if tp + fn else None, "sensitivity_ci": _wilson(tp, tp + fn),
            "specificity": tn / (tn + fp) if tn + fp else None, "specificity_ci": _wilson(tn, tn + fp)}
