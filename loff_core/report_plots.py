"""The model report's plots (loff_core/report.py), drawn with matplotlib's object API on the
Agg canvas (no pyplot: no global state, safe in the window's background job) and returned
as `data:` URIs of PNG images, ready for the template's <img src>."""

from __future__ import annotations

import base64
import io
from typing import Any, Optional, Sequence

import numpy as np

DPI = 100
COLOURS = ["#1f6fb4", "#d9622b", "#2e9e52", "#b8336a", "#7a5cc4", "#8c6d1f", "#3a9ca6", "#666666"]


def _figure(width: float = 4.2, height: float = 3.4) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def _rates_at(confusion: np.ndarray, c: int) -> tuple[float, float]:
    """(false-positive rate, true-positive rate) of class c one-vs-rest at the decisions made."""
    tp = confusion[c, c]
    pos = confusion[c].sum()
    fp = confusion[:, c].sum() - tp
    neg = confusion.sum() - pos
    return (fp / neg if neg else 0.0), (tp / pos if pos else 0.0)


def roc(evaluation: dict[str, Any], y: np.ndarray, predicted: np.ndarray) -> Optional[str]:
    """The engine's ROC curves (`evaluate`'s `roc`): the positive class, or each class one
    vs rest; the run's operating point marked on each."""
    curves = evaluation.get("roc")
    if not curves:
        return None
    classes = evaluation["classes"]
    cm = np.asarray(evaluation["confusion_matrix"], dtype=np.float64)
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8, linestyle="--")
    named = {classes[1]: curves} if "fpr" in curves else curves
    for i, (name, curve) in enumerate(named.items()):
        c = classes.index(name)
        colour = _colour(i)
        auc = (evaluation["per_class"].get(name) or {}).get("auc")
        ax.plot(curve["fpr"], curve["tpr"], color=colour, linewidth=1.6,
                label=f"{name}" + (f" (AUC {auc:.3f})" if auc is not None else ""))
        fpr, tpr = _rates_at(cm, c)
        ax.plot([fpr], [tpr], marker="o", markersize=7, markerfacecolor="white", markeredgecolor=colour,
                markeredgewidth=2, linestyle="none")
    ax.plot([], [], marker="o", markerfacecolor="white", markeredgecolor="#333333", linestyle="none",
            label="operating point")
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)",
           xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="ROC on test")
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    return _uri(fig)


def precision_recall(classes: Sequence[str], y: np.ndarray, probs: np.ndarray, predicted: np.ndarray,
                     binary: bool) -> Optional[str]:
    """Precision-recall curves (scikit-learn) of the positive class, or each class one vs
    rest, with the precision and recall at the run's decisions marked."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    wanted = [1] if binary else list(range(len(classes)))
    fig, ax = _figure()
    drawn = 0
    for i, c in enumerate(wanted):
        pos = y == c
        if not 0 < pos.sum() < len(y):
            continue
        precision, recall, _ = precision_recall_curve(pos, probs[:, c])
        ap = average_precision_score(pos, probs[:, c])
        colour = _colour(i)
        ax.plot(recall, precision, color=colour, linewidth=1.6, label=f"{classes[c]} (AP {ap:.3f})")
        decided = predicted == c
        tp = float((decided & pos).sum())
        ax.plot([tp / pos.sum()], [tp / decided.sum() if decided.any() else 1.0], marker="o", markersize=7,
                markerfacecolor="white", markeredgecolor=colour, markeredgewidth=2, linestyle="none")
        if binary:
            ax.axhline(pos.mean(), color="#bbbbbb", linewidth=0.8, linestyle="--", label="prevalence")
        drawn += 1
    if not drawn:
        return None
    ax.plot([], [], marker="o", markerfacecolor="white", markeredgecolor="#333333", linestyle="none",
            label="operating point")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (positive predictive value)", xlim=(-0.02, 1.02),
           ylim=(-0.02, 1.02), title="Precision-recall on test")
    ax.legend(loc="lower left", fontsize=7)
    ax.grid(alpha=0.3)
    return _uri(fig)


def _reliability_points(probs: np.ndarray, y: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    xs, ys, ns = [], [], []
    for b in range(bins):
        m = which == b
        if m.any():
            xs.append(conf[m].mean())
            ys.append(correct[m].mean())
            ns.append(int(m.sum()))
    return np.array(xs), np.array(ys), np.array(ns)


def reliability(raw: np.ndarray, calibrated: np.ndarray, y: np.ndarray, bins: int = 10) -> Optional[str]:
    """Reliability diagram of the top-class probability on test: the head's raw
    probabilities and after the run's calibration (marker area ~ images in the bin)."""
    if len(y) == 0:
        return None
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8, linestyle="--", label="perfect calibration")
    for i, (name, probs) in enumerate((("before calibration", raw), ("after calibration", calibrated))):
        xs, ys, ns = _reliability_points(np.asarray(probs, dtype=np.float64), y, bins)
        ax.plot(xs, ys, color=_colour(i), linewidth=1.2, marker="o", markersize=4, label=name)
        ax.scatter(xs, ys, s=12 + 120 * ns / max(ns.max(), 1), color=_colour(i), alpha=0.25)
    ax.set(xlabel="confidence (top-class probability)", ylabel="share correct", xlim=(0, 1.02), ylim=(-0.02, 1.02),
           title="Reliability on test")
    ax.legend(loc="upper left", fontsize=7)
    ax.grid(alpha=0.3)
    return _uri(fig)


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    cm = np.asarray(matrix, dtype=np.int64)
    k = len(classes)
    side = min(6.0, 2.4 + 0.45 * k)
    fig, ax = _figure(side + 0.6, side)
    ax.imshow(cm, cmap="Blues")
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9 if k <= 8 else 7,
                    color="white" if top and cm[i, j] > 0.6 * top else "black")
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test)")
    return _uri(fig)


def per_class_auc(per_class: dict[str, dict[str, Any]]) -> Optional[str]:
    """Each class's one-vs-rest AUC with its 95 % interval."""
    names = [c for c, v in per_class.items() if v.get("auc") is not None]
    if not names:
        return None
    values = np.array([per_class[c]["auc"] for c in names])
    lo = np.array([(per_class[c].get("auc_ci") or [v, v])[0] for c, v in zip(names, values)])
    hi = np.array([(per_class[c].get("auc_ci") or [v, v])[1] for c, v in zip(names, values)])
    fig, ax = _figure(max(3.2, 0.55 * len(names) + 1.8), 3.0)
    x = np.arange(len(names))
    ax.bar(x, values, color=[_colour(i) for i in range(len(names))], alpha=0.8)
    ax.errorbar(x, values, yerr=[values - lo, hi - values], fmt="none", ecolor="#333333", capsize=3)
    ax.axhline(0.5, color="#bbbbbb", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, names)
    ax.set(ylim=(0, 1.05), ylabel="AUC (one vs rest)", title="Per-class AUC, 95% interval")
    ax.grid(alpha=0.3, axis="y")
    return _uri(fig)


def heat_example(pixels: Optional[np.ndarray], heat: np.ndarray) -> str:
    """An image (grey) with the head's heat map over it, no axes, no margin. As in the
    viewer, the map is stretched between its 2nd and 98th percentiles."""
    h, w = (pixels if pixels is not None else heat).shape[:2]
    scale = 2.3 / max(h, w)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(w * scale, 0.5), max(h * scale, 0.5)), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    lo, hi = (float(v) for v in np.percentile(heat, [2, 98]))
    if pixels is not None:
        ax.imshow(pixels, cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0))
    ax.imshow(heat, cmap="inferno", alpha=0.4 if pixels is not None else 1.0, extent=(0, w, h, 0), vmin=lo,
              vmax=max(hi, lo + 1e-6))
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
