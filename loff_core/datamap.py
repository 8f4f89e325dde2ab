"""The data map (issue 22, point 2): a 2-D map of the cached embeddings, and what colours it.

`compute_map` projects each image's pooled embedding (the cache's `last` block when it
holds one, as the audit reads it; centred and L2-normalised) to two dimensions: PCA by
default (deterministic, a second on 20,000 images), or t-SNE (scikit-learn; PCA to 50
first; minutes on 20,000 images on a CPU). umap-learn is not used: it pulls numba and
llvmlite (a large compiled dependency) for a map that t-SNE already gives (README).

The map is cached in the project as maps/<cache>-<block>-<method>.npz, keyed on the
cache's fingerprint, the block, the method and the exact images (a re-import or an
exclusion computes it again). `colour_columns` gives, per image, the label, the split, the
latest run's prediction (its predictions-SPLIT.csv files) and the audit's flag (its
audit/*.csv), each as text ("" when unknown). Qt-free: the window draws it
(app/pages/data_map_page.py).
"""

from __future__ import annotations

import csv
import hashlib
from typing import Any, Optional

import numpy as np

from .audit import AUDIT_DIR, _audited, unit_centred
from .errors import ProjectError
from .fsutil import atomic_path
from .progress import Progress
from .settings import MAP_METHODS as METHODS

MAPS_DIR = "maps"


def _key(fingerprint: str, block: str, method: str, ids: list[str]) -> str:
    digest = hashlib.sha256("\n".join(ids).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{fingerprint}-{block.replace(':', '_')}-{method}-{digest}"


def project_2d(z: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(n, 2) float32 coordinates of the rows of `z`."""
    from sklearn.decomposition import PCA

    if method not in METHODS:
        raise ProjectError(f"no map method {method!r} (one of {', '.join(METHODS)})")
    n = len(z)
    if n < 3:
        return np.zeros((n, 2), dtype=np.float32)
    if method == "pca":
        xy = PCA(2, random_state=seed).fit_transform(z)
    else:
        from sklearn.manifold import TSNE

        reduced = PCA(min(50, n - 1, z.shape[1]), random_state=seed).fit_transform(z)
        xy = TSNE(2, perplexity=float(min(30, max(2, (n - 1) // 3))), init="pca", random_state=seed).fit_transform(reduced)
    return np.asarray(xy, dtype=np.float32)


def compute_map(project: Any, method: str = "pca", *, cache_name: Optional[str] = None,
                progress: Progress = Progress()) -> dict[str, Any]:
    """{"ids", "xy", "method", "block", "cached"}: the map of every cached, not excluded image,
    read from maps/ when it was computed for the same cache, block, method and images."""
    cache = project.open_cache(cache_name)
    try:
        if "last" in cache.blocks:
            cache.use_block("last")
        entries, x = _audited(project, cache)
        fingerprint, block = cache.fingerprint, cache.block
    finally:
        cache.close()
    ids = [e.image_id for e in entries]
    path = project.root / MAPS_DIR / f"{_key(fingerprint, block, method, ids)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                xy = np.asarray(data["xy"], dtype=np.float32)
            if xy.shape == (len(ids), 2):
                return {"ids": ids, "xy": xy, "method": method, "block": block, "cached": True}
        except (OSError, ValueError, KeyError):
            pass  # unreadable: computed again below
    progress.report(0, 1, f"{method} map of {len(ids)} images")
    xy = project_2d(unit_centred(x), method)
    progress.check()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, xy=xy)
    progress.report(1, 1, "map ready")
    return {"ids": ids, "xy": xy, "method": method, "block": block, "cached": False}


def read_audit(project: Any) -> dict[str, list[dict[str, str]]]:
    """The audit's saved lists (audit/duplicates.csv, label_suspects.csv, outliers.csv) as
    rows of text; a list the audit has not written is empty."""
    out: dict[str, list[dict[str, str]]] = {}
    for name in ("duplicates", "label_suspects", "outliers"):
        path = project.root / AUDIT_DIR / f"{name}.csv"
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                out[name] = list(csv.DictReader(fh))
        except OSError:
            out[name] = []
    return out


def latest_predictions(project: Any) -> dict[str, str]:
    """image_id -> the predicted class of the latest run's saved evaluations (any split)."""
    try:
        run = project.run(None)
    except Exception:  # noqa: BLE001 - no run yet: nothing to colour by
        return {}
    out: dict[str, str] = {}
    for path in sorted(run.path.glob("predictions-*.csv")):
        try:
            with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
                for row in csv.DictReader(fh):
                    out[row["image_id"]] = row["predicted"]
        except (OSError, KeyError):
            continue
    return out


def audit_flags(audit: dict[str, list[dict[str, str]]], outliers_top: int = 20) -> dict[str, str]:
    """image_id -> its audit flag: leak, duplicate, label suspect or outlier (the first that
    applies; outliers: the top `outliers_top`)."""
    flags: dict[str, str] = {}
    for row in audit.get("duplicates", []):
        for image in (row.get("images") or "").split(";"):
            if image:
                flags.setdefault(image, "leak" if row.get("leak") == "1" else "duplicate")
    for row in audit.get("label_suspects", []):
        flags.setdefault(row.get("image", ""), "label suspect")
    for row in audit.get("outliers", [])[:outliers_top]:
        flags.setdefault(row.get("image", ""), "outlier")
    flags.pop("", None)
    return flags


def colour_columns(project: Any, ids: list[str]) -> dict[str, list[str]]:
    """Per image of `ids`: its label, split, latest prediction and audit flag (text, "" unknown)."""
    by_id = project.catalog().by_id()
    predicted = latest_predictions(project)
    flags = audit_flags(read_audit(project))
    return {"label": [(by_id[i].label or "") if i in by_id else "" for i in ids],
            "split": [(by_id[i].split or "") if i in by_id else "" for i in ids],
            "prediction": [predicted.get(i, "") for i in ids],
            "audit": [flags.get(i, "") for i in ids]}
