"""Side / view columns of a labels CSV fill the catalog's laterality / view (the exam
view's rows and columns) where the images' headers have none (mini-MIAS PNGs)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loff_core import exam_columns
from loff_core.catalog import scan_folder


def _pngs(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 32), dtype=np.uint8)).save(folder / name)


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def test_mini_mias_side_column_gives_the_laterality_and_no_view(tmp_path):
    _pngs(tmp_path / "img", ["mdb001.png", "mdb002.png", "mdb003.png"])
    labels = _csv(tmp_path / "labels.csv", ["refnum", "file", "woman", "side", "tissue"],
                  [["mdb001", "mdb001.png", "W001", "R", "G"], ["mdb002", "mdb002.png", "W001", "L", "G"],
                   ["mdb003", "mdb003.png", "W002", "B", "F"]])
    catalog = scan_folder(tmp_path / "img", salt=b"s", labels_csv=labels, label_column="tissue")
    got = {Path(e.path).name: (e.laterality, e.view) for e in catalog.entries}
    assert got == {"mdb001.png": ("R", None), "mdb002.png": ("L", None), "mdb003.png": (None, None)}
    assert any("not R / L" in w and "row 4 ('B')" in w for w in catalog.warnings), catalog.warnings
    assert {e.label for e in catalog.entries} == {"G", "F"}  # the label column is unchanged


def test_cbis_style_columns_and_combined_codes(tmp_path):
    _pngs(tmp_path / "img", ["a.png", "b.png", "c.png", "d.png"])
    labels = _csv(tmp_path / "labels.csv", ["patient_id", "image file path", "left or right breast", "image view",
                                            "pathology"],
                  [["P1", "a.png", "LEFT", "CC", "BENIGN"], ["P1", "b.png", "RIGHT", "mediolateral oblique", "BENIGN"],
                   ["P2", "c.png", "", "R-MLO", "MALIGNANT"], ["P2", "d.png", "left", "xyz", "MALIGNANT"]])
    catalog = scan_folder(tmp_path / "img", salt=b"s", labels_csv=labels, file_column="image file path",
                          label_column="pathology")
    got = {Path(e.path).name: (e.laterality, e.view) for e in catalog.entries}
    assert got == {"a.png": ("L", "CC"), "b.png": ("R", "MLO"), "c.png": ("R", "MLO"), "d.png": ("L", None)}


def test_a_dicom_header_wins_over_the_csv(tmp_path):
    from loff_core.synthetic import write_synthetic_dataset

    labels = write_synthetic_dataset(tmp_path / "dcm", n_patients=2)
    rows = list(csv.DictReader(open(labels)))
    for r in rows:  # a CSV that says the opposite of every header
        r["side"], r["view"] = ("R" if "_L_" in r["file"] else "L"), "XCCL"
    _csv(labels, list(rows[0]), [list(r.values()) for r in rows])
    catalog = scan_folder(tmp_path / "dcm", salt=b"s", labels_csv=labels)
    for e in catalog.entries:
        assert e.laterality == ("L" if "_L_" in e.path else "R") and e.view in ("CC", "MLO")


@pytest.mark.parametrize("value,side,view", [("R", "R", None), ("right", "R", None), ("Lt", "L", None),
                                             ("L-CC", "L", "CC"), ("RMLO", "R", "MLO"), ("MLO", None, "MLO"),
                                             ("cranio-caudal", None, "CC"), ("both", None, None)])
def test_values(value, side, view):
    assert exam_columns.laterality(value) == side and exam_columns.view(value) == view


def test_columns_by_name():
    assert exam_columns.find_columns(["file", "woman", "side", "tissue"], ("file", "woman")) == ("side", None)
    assert exam_columns.find_columns(["ImageLaterality", "ViewPosition", "file"]) == ("ImageLaterality",
                                                                                      "ViewPosition")
    assert exam_columns.find_columns(["file", "grade"]) == (None, None)
    assert exam_columns.find_columns(["side", "file"], ("side",)) == (None, None)  # a taken column is never used
