"""Per-image outputs of the steps: prediction CSV files and heat maps on the image
(moved out of project.py; `loff_core.project` re-exports the old names)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import trust
from .fsutil import atomic_path


def write_evaluation_csv(path: Path, predictions: list[dict[str, Any]], classes: list[str]) -> None:
    """`evaluate`'s predictions-SPLIT.csv: image_id, path, label, predicted, p_<class>...
    Temp file + rename."""
    # UTF-8; a file name that is not UTF-8 (bytes on POSIX, held as surrogates) is
    # written as its original bytes, like catalog.csv, so the path names the file
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            writer = csv.writer(fh)
            writer.writerow([trust.csv_cell(v) for v in ("image_id", "path", "label", "predicted",
                                                         *[f"p_{c}" for c in classes])])
            for p in predictions:
                writer.writerow([trust.csv_cell(v) for v in (p["image_id"], p["path"], p["label"], p["predicted"])]
                                + list(p["probabilities"]))


def read_predictions_csv(path: Path | str) -> list[dict[str, str]]:
    """The rows of a `predictions-SPLIT.csv` as written by `evaluate` (or by `loff predict
    --csv`), paths decoded as they were written (non-UTF-8 bytes back to surrogates)."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return [{trust.csv_uncell(k): trust.csv_uncell(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def heat_on_image(grid_map: np.ndarray, size: int, rows: int, cols: int,
                  box: Optional[tuple[float, float, float, float]] = None, fill: bool = False) -> np.ndarray:
    """A token-grid map over the padded square the backbone saw -> the map over the image
    (the preprocessor centres the aspect-kept image on a size x size square).

    `box`: the part of the image the model saw when its cache crops (`Preprocessor.box`, as
    fractions of the image: top, bottom, left, right); `fill`: that part was stretched to the
    whole square ("body-fill"). The map then covers the box and is 0 outside it (the model saw
    nothing there), at the scale the box was resized to."""
    from PIL import Image

    up = np.asarray(Image.fromarray(grid_map.astype(np.float32), mode="F").resize((size, size),
                                                                                 Image.Resampling.BILINEAR))
    if box is None:
        scale = size / max(rows, cols)
        nh, nw = max(1, round(rows * scale)), max(1, round(cols * scale))
        top, left = (size - nh) // 2, (size - nw) // 2
        return up[top:top + nh, left:left + nw]
    t, b, l, r = (float(v) for v in box)
    box_rows, box_cols = max(1.0, (b - t) * rows), max(1.0, (r - l) * cols)
    scale = size / max(box_rows, box_cols)
    nh, nw = max(1, round(box_rows * scale)), max(1, round(box_cols * scale))
    if fill:  # the square is the box, stretched: back to the box's own shape
        part = np.asarray(Image.fromarray(up, mode="F").resize((nw, nh), Image.Resampling.BILINEAR))
    else:
        top, left = (size - nh) // 2, (size - nw) // 2
        part = up[top:top + nh, left:left + nw]
    full_h, full_w = max(nh, round(rows * scale)), max(nw, round(cols * scale))
    out = np.zeros((full_h, full_w), np.float32)
    y0, x0 = min(full_h - nh, round(t * rows * scale)), min(full_w - nw, round(l * cols * scale))
    out[y0:y0 + nh, x0:x0 + nw] = part
    return out


def write_predictions_csv(path: Path, result: dict[str, Any], *, with_failed: bool = True) -> None:
    """`predict`'s result as CSV (path, predicted, p_<class>..., out_of_distribution (the
    reason, empty when in distribution), run, model; with_failed: then one row per
    unreadable file with "not read: <reason>"). `run` and `model` name what made every row
    (the run id, and e.g. "attention head on tf_efficientnet_lite0 at 224 px"; empty when
    the result does not say). UTF-8; a non-UTF-8 file name is written as its original
    bytes. Temp file + rename; the folder is made when missing."""
    classes = result["classes"]
    model = result.get("model") or {}
    named = [trust.csv_cell(str(model.get("run") or result.get("head_run") or result.get("run") or "")),
             trust.csv_cell(str(model.get("text") or ""))]
    note = result.get("ood") or ""  # "no OOD summary in this head"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                              errors="surrogateescape") as fh:
        writer = csv.writer(fh)
        writer.writerow([trust.csv_cell(v) for v in ("path", "predicted", *[f"p_{c}" for c in classes],
                                                     "out_of_distribution", "run", "model")])
        for p in result["predictions"]:
            writer.writerow([trust.csv_cell(p["path"]), trust.csv_cell(p["predicted"]), *p["probabilities"],
                             trust.csv_cell(p.get("out_of_distribution") or note), *named])
        for f in result.get("failed", []) if with_failed else []:
            writer.writerow([trust.csv_cell(f["path"]), trust.csv_cell(f"not read: {f['reason']}"), *[""] * len(classes),
                             "", *named])

