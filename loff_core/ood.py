"""Out of distribution at predict time (issue 22, point 3): what an exported head carries to
tell an image far outside its training data, or of another modality / view / body part.

The summary (`summarize`) is a probabilistic PCA of the training images' pooled embedding
of the run's block (the very vector `predict` computes, rounded to float16 as in the cache):
the mean, the first `COMPONENTS` principal directions with their variances, and the mean
variance left outside them. An image's score is its squared Mahalanobis distance in that
model divided by the dimension (about 1 for a training image). The threshold is the
`QUANTILE` of *held-out* scores: each training image scored by a summary fitted without its
patient's fold (5 folds), so an ordinary new image of the same kind is flagged about 1 % of
the time, not the 5-10 % an in-sample threshold would give.

Beside it, the modalities, views and body parts of the training images (the catalog's
DICOM fields; the body part read from a sample of DICOM headers): a DICOM file to predict
whose modality / view / body part is known and none of the training ones (where those are
known) is flagged with that reason.

The tensors go in `ood.safetensors` beside the head; the card's `ood` block holds the rest
and the file's SHA-256 (under the card's seal). Heads exported before this carry none: they
predict as before, and say "no OOD summary in this head".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

OOD_FILE = "ood.safetensors"
COMPONENTS = 16
QUANTILE = 0.99
FOLDS = 5
#: DICOM headers read at export for the training images' body parts (a sample)
HEADER_SAMPLE = 200
NO_SUMMARY = "no OOD summary in this head"


def fit(x: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilistic PCA of the rows of `x`: mean, components (k, d), their variances and the
    mean residual variance."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    r = x - mean
    n, d = r.shape
    _, s, vt = np.linalg.svd(r, full_matrices=False)
    var = s ** 2 / max(n - 1, 1)
    k = int(max(1, min(COMPONENTS, n - 2, d - 1)))
    rest = var[k:]
    floor = float(var[:k].max()) * 1e-6 + 1e-12
    residual = max(float(rest.sum()) / max(d - k, 1), floor)
    return {"mean": mean.astype(np.float32), "components": vt[:k].astype(np.float32),
            "variances": np.maximum(var[:k], floor).astype(np.float32),
            "residual": np.asarray([residual], dtype=np.float32)}


def score(model: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance in the PPCA model, divided by the dimension."""
    x = np.asarray(x, dtype=np.float64)
    r = x - model["mean"].astype(np.float64)
    comps = model["components"].astype(np.float64)
    p = r @ comps.T
    inside = (p ** 2 / model["variances"].astype(np.float64)).sum(axis=1)
    outside = ((r ** 2).sum(axis=1) - (p ** 2).sum(axis=1)) / float(model["residual"][0])
    return (inside + np.maximum(outside, 0.0)) / r.shape[1]


def held_out_scores(x: np.ndarray, groups: Sequence[Any], seed: int = 0) -> np.ndarray:
    """Each row scored by a model fitted without its group's fold. The folds follow the order
    patients first appear (`splits.first_appearance_ranks`), not the values of the project's
    salted patient keys: GroupKFold breaks ties between patients of the same size by their
    sorted keys, so two projects of the same images drew different folds and thresholds
    (the tiny demo's val image read 90.9 against a threshold of 86.1 in one project, under it
    in others)."""
    from sklearn.model_selection import GroupKFold

    from .splits import first_appearance_ranks

    groups = first_appearance_ranks(groups)
    k = min(FOLDS, len(np.unique(groups)))
    if k < 2:
        return score(fit(x), x)
    out = np.empty(len(x))
    order = np.random.default_rng(seed).permutation(len(x))  # GroupKFold is deterministic: shuffle the rows
    for a, b in GroupKFold(n_splits=k).split(x[order], groups=groups[order]):
        out[order[b]] = score(fit(x[order[a]]), x[order[b]])
    return out


def summarize(x: np.ndarray, groups: Sequence[Any], training: dict[str, dict[str, int]],
              block: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, card block) of the training embeddings `x` (rows: images; `groups`: patients)."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    held = held_out_scores(x, groups)
    model = fit(x)
    quantiles = {str(q): round(float(np.quantile(held, q)), 4) for q in (0.5, 0.9, 0.95, 0.99)}
    card = {"method": "ppca", "block": block, "n": int(len(x)), "components": int(len(model["variances"])),
            "threshold": round(float(np.quantile(held, QUANTILE)), 4), "quantile": QUANTILE,
            "held_out_quantiles": quantiles, "training": training}
    return model, card


def training_metadata(project: Any, entries: Sequence[Any]) -> dict[str, dict[str, int]]:
    """Counts of the training images' modality, view (the catalog) and body part (DICOM
    headers of a sample); a field never known is left out."""
    out: dict[str, dict[str, int]] = {}
    for name in ("modality", "view"):
        counts: dict[str, int] = {}
        for e in entries:
            value = getattr(e, name, None)
            if value:
                counts[str(value).upper()] = counts.get(str(value).upper(), 0) + 1
        if counts:
            out[name] = counts
    dicom = [e for e in entries if str(getattr(e, "format", "")).lower() in ("dicom", "dcm")]
    parts: dict[str, int] = {}
    for e in dicom[:HEADER_SAMPLE]:
        part = dicom_fields(project.image_path(e)).get("body_part")
        if part:
            parts[part] = parts.get(part, 0) + 1
    if parts:
        out["body_part"] = parts
    return out


def dicom_fields(path: Path | str) -> dict[str, str]:
    """Modality, view (ViewPosition) and body part (BodyPartExamined) from a DICOM header;
    {} for other files or unreadable headers."""
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality", "ViewPosition",
                                                                               "BodyPartExamined"])
    except Exception:  # noqa: BLE001 - not DICOM (PNG, JPEG) or unreadable: nothing known
        return {}
    out = {}
    for key, tag in (("modality", "Modality"), ("view", "ViewPosition"), ("body_part", "BodyPartExamined")):
        value = str(getattr(ds, tag, "") or "").strip().upper()
        if value:
            out[key] = value
    return out


def flag(summary: Optional[dict[str, Any]], model: Optional[dict[str, np.ndarray]], x: np.ndarray,
         paths: Sequence[Path | str]) -> list[Optional[str]]:
    """Per image (rows of `x`, the pooled embedding; `paths` its files): the reason it is out
    of distribution, or None."""
    if summary is None or model is None:
        return [None] * len(x)
    s = score(model, x)
    out: list[Optional[str]] = []
    seen = summary.get("training") or {}
    for value, path in zip(s, paths):
        reasons = []
        if value > summary["threshold"]:
            reasons.append(f"far outside the training data (distance {value:.1f}; 99 % of held-out training "
                           f"images are below {summary['threshold']:.1f})")
        fields = dicom_fields(path) if str(path).lower().endswith((".dcm", ".dicom")) or Path(path).suffix == "" \
            else {}
        for key, what in (("modality", "modality"), ("body_part", "body part"), ("view", "view")):
            known = seen.get(key)
            if known and fields.get(key) and fields[key] not in known:
                reasons.append(f"{what} {fields[key]}; the head was trained on {', '.join(sorted(known))}")
        out.append("; ".join(reasons) or None)
    return out


def save(folder: Path, model: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    path = Path(folder) / OOD_FILE
    save_file({k: np.ascontiguousarray(v) for k, v in model.items()}, str(path), metadata={"format": "loff-ood"})
    return path


def load(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    model = load_file(str(path))
    if set(model) != {"mean", "components", "variances", "residual"}:
        raise ValueError("not an OOD summary (its tensors are not mean, components, variances, residual)")
    d = model["mean"].shape
    if len(d) != 1 or model["components"].shape[1:] != d or model["variances"].shape != model["components"].shape[:1]:
        raise ValueError("the OOD summary's tensors do not fit together")
    return model


def run_summary(project: Any, run: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The summary of a run's training images (train, and val too for a run trained on
    train + val) from the project's cache, read at the run's block."""
    record = run.record
    cache = project.open_cache(record.get("cache_fingerprint"), block=record.get("block"))
    try:
        entries = project.labelled_split("train", cache)[2]
        if not record.get("n_val"):  # a `tune` winner: trained on train + val
            entries = entries + project.labelled_split("val", cache)[2]
        if len(entries) < 5:
            raise ValueError(f"only {len(entries)} training images with features")
        position = {image_id: i for i, image_id in enumerate(cache.image_ids)}
        idx = np.asarray([position[e.image_id] for e in entries], dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        cls, _ = cache.read(idx[order])
        x = np.empty((len(idx), cls.shape[1]), dtype=np.float32)
        x[order] = np.asarray(cls, dtype=np.float16).astype(np.float32)  # as predict rounds them
        block = cache.block
    finally:
        cache.close()
    return summarize(x, [e.patient_key for e in entries], training_metadata(project, entries), block)


#: (project root, run, catalog version, cache) -> (card block, model): the viewer explains
#: one image at a time and the summary reads every training embedding
_RUN_SUMMARIES: dict[tuple[str, str, Any, Any], tuple[dict[str, Any], dict[str, np.ndarray]]] = {}


def flag_cached(project: Any, run: Any, x: np.ndarray, paths: Sequence[Path | str]) -> list[Optional[str]]:
    """`flag` against the run's summary (computed once per run, catalog and cache); None for
    every image when the summary cannot be made (e.g. fewer than 5 training images)."""
    key = (str(project.root), run.run_id, project.settings.catalog_version, run.record.get("cache_fingerprint"))
    if key not in _RUN_SUMMARIES:
        from .errors import LoffError

        try:
            model, card = run_summary(project, run)
        except (ValueError, OSError, KeyError, LoffError):
            return [None] * len(x)
        _RUN_SUMMARIES.clear()  # one run at a time is enough for the viewer
        _RUN_SUMMARIES[key] = (card, model)
    card, model = _RUN_SUMMARIES[key]
    return flag(card, model, x, paths)
