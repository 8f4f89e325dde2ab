"""Given splits and patients at import: a split column, train/val/test folders, CSAW-M's
per-split CSVs (semicolons), val carved from train by patient, patients on two sides of a
given split, patients from file names or a patient-like column, and `loff info`."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loff_core.catalog import scan_folder
from loff_core.errors import ProjectError
from loff_core.project import Project
from loff_core.project_file import PROJECT_FILE
from loff_core import steps
from loff_core.cli.remedies import terminal_text
from tests.loff_cli import loff_json

SALT = b"s"


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 16), value % 256, np.uint8)).save(path)
    return path


def _sides(project: Project) -> dict[str, set]:
    sides: dict[str, set] = defaultdict(set)
    for e in project.catalog().entries:
        if e.split:
            sides[e.patient_key].add(e.split)
    return sides


def test_split_column_any_case_and_errors_name_rows(tmp_path):
    lines = ["file,label,patient,Split"]
    for i in range(24):
        split = ["Train", "VALIDATION", "test"][i % 3]
        _png(tmp_path / "img" / f"{i}.png", i)
        lines.append(f"{i}.png,{'ab'[i % 2]},p{i // 3},{split}")  # patient p_k: rows 3k..3k+2 -> all three splits
    # one patient per image so that no patient is on two sides
    lines = [lines[0]] + [ln.replace(f",p{i // 3},", f",p{i},") for i, ln in enumerate(lines[1:])]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    project = Project.create(tmp_path / "p")
    summary = steps.import_images(project, tmp_path / "img", labels_csv=tmp_path / "l.csv", split_column="split")
    assert summary.splits == {"train": 8, "val": 8, "test": 8}
    by_path = {e.path: e.split for e in project.catalog().entries}
    assert by_path["0.png"] == "train" and by_path["1.png"] == "val" and by_path["2.png"] == "test"
    source = project.settings.split_source
    assert source["kind"] == "given" and "column 'split' of l.csv" in source["from"] and not source["val_carved"]
    assert source["patients_from"] == {"CSV column patient": 24}

    bad = lines[:3] + [lines[3].replace("test", "holdout"), lines[4].rsplit(",", 1)[0] + ","] + lines[5:]
    (tmp_path / "bad.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(ProjectError, match=r"bad.csv.*'Split'.*2 rows.*row 4 \('holdout'\), row 5 \(''\)"):
        steps.import_images(project, tmp_path / "img", labels_csv=tmp_path / "bad.csv", split_column="split")
    with pytest.raises(ProjectError, match="no split column 'fold'"):
        steps.import_images(project, tmp_path / "img", labels_csv=tmp_path / "l.csv", split_column="fold")


def test_train_test_class_folders_give_split_and_labels_and_val_is_carved(tmp_path, capsys):
    n = 0
    for split, count in (("Train", 20), ("test", 6)):
        for cls in ("normal", "pneumonia"):
            for i in range(count):
                _png(tmp_path / "img" / split / cls / f"{cls}{n}.png", n)
                n += 1
    out = loff_json(capsys, "import", tmp_path / "p", tmp_path / "img")
    assert out["classes"] == ["normal", "pneumonia"]
    assert out["splits"]["test"] == 12 and out["splits"]["train"] + out["splits"]["val"] == 40
    assert out["splits"]["val"] >= 4
    assert out["split_source"]["kind"] == "given" and out["split_source"]["from"] == "folders train/, test/"
    assert out["split_source"]["val_carved"] is True
    project = Project.open(tmp_path / "p")
    cat = project.catalog()
    assert all(e.split == "test" for e in cat.entries if e.path.startswith("test/"))
    assert {e.label for e in cat.entries} == {"normal", "pneumonia"}
    # carving is deterministic
    first = {e.path: e.split for e in cat.entries}
    steps.import_images(Project.open(tmp_path / "p"), tmp_path / "img")
    assert {e.path: e.split for e in Project.open(tmp_path / "p").catalog().entries} == first
    info = loff_json(capsys, "info", tmp_path / "p")
    assert info["split_source"]["from"] == "folders train/, test/"
    # the human summary says it too
    from loff_core.cli import main

    capsys.readouterr()
    assert main(["import", str(tmp_path / "p"), str(tmp_path / "img"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "split: folders train/, test/; val carved from train by patient" in text


def test_csaw_m_layout_imports_with_its_official_split_in_one_command(tmp_path, capsys):
    root = tmp_path / "CSAW-M"
    header = "Filename;Label;If_cancer;If_interval_cancer;Libra_percent_density"
    for split, count in (("train", 48), ("test", 16)):
        rows = [header]
        for i in range(count):
            name = f"_{split}_{i:04d}.png"
            _png(root / "images" / "preprocessed" / split / name, i * 3)
            rows.append(f"{name};{1 + i % 8};0;0;{i % 50}.5")
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"CSAW-M_{split}.csv").write_text("\n".join(rows) + "\n")
    out = loff_json(capsys, "import", tmp_path / "p", root / "images" / "preprocessed",
                    "--labels", f"train={root / 'labels' / 'CSAW-M_train.csv'}",
                    "--labels", f"test={root / 'labels' / 'CSAW-M_test.csv'}", "--task", "ordinal")
    assert out["classes"] == [str(k) for k in range(1, 9)]
    assert out["labelled"] == 64 and out["splits"]["test"] == 16
    assert out["splits"]["train"] + out["splits"]["val"] == 48 and out["splits"]["val"] > 0
    assert out["split_source"]["from"] == "labels CSVs per split (train: CSAW-M_train.csv, test: CSAW-M_test.csv)"
    cat = Project.open(tmp_path / "p").catalog()
    assert all(e.split == "test" for e in cat.entries if e.path.startswith("test/"))
    assert all(e.split in ("train", "val") for e in cat.entries if e.path.startswith("train/"))
    # a single CSV naming both folders' files: the folders give the split
    both = [header] + [ln for s in ("train", "test") for ln in
                       (root / "labels" / f"CSAW-M_{s}.csv").read_text().splitlines()[1:]]
    (tmp_path / "all.csv").write_text("\n".join(both) + "\n")
    out = loff_json(capsys, "import", tmp_path / "p2", root / "images" / "preprocessed", "--labels", tmp_path / "all.csv")
    assert out["splits"]["test"] == 16 and out["split_source"]["from"] == "folders train/, test/"


def test_patient_on_two_sides_is_reported_and_the_user_chooses(tmp_path):
    lines = ["file,label,subject,split"]
    for i in range(30):
        _png(tmp_path / "img" / f"{i}.png", i)
        split = "train" if i < 20 else "test"
        lines.append(f"{i}.png,{'ab'[i % 2]},s{i // 2},{split}")
    lines.append("")
    # images 19 and 20 are one subject (s9 / s10 boundaries: 18,19 -> s9; 20,21 -> s10); make 19 -> s10
    lines[20] = lines[20].replace(",s9,", ",s10,")
    (tmp_path / "l.csv").write_text("\n".join(lines))
    project = Project.create(tmp_path / "p")
    with pytest.raises(ProjectError, match=r"puts 1 patients \(3 images\) on two sides") as err:
        steps.import_images(project, tmp_path / "img", labels_csv=tmp_path / "l.csv", split_column="split")
    assert re.search("keep.*resplit", terminal_text(err.value))  # the remedy names both choices
    assert "s10" not in terminal_text(err.value)  # no identifiers
    assert not project.has_catalog()
    steps.import_images(project, tmp_path / "img", labels_csv=tmp_path / "l.csv", split_column="split",
                        on_patient_overlap="keep")
    assert project.settings.split_source["patient_overlap"] == {"patients": 1, "images": 3, "action": "keep"}
    assert sum(len(s) > 1 for s in _sides(project).values()) == 1
    assert any("1 patients (3 images) on two sides; kept as given" in w for w in project.import_summary().warnings)
    steps.import_images(project, tmp_path / "img", labels_csv=tmp_path / "l.csv", split_column="split",
                        on_patient_overlap="resplit")
    assert all(len(s) == 1 for s in _sides(project).values())
    assert project.settings.split_source["kind"] == "random"


def test_patient_from_name_and_patient_like_column(tmp_path):
    for p in range(6):
        for f in range(3):
            _png(tmp_path / "nih" / ("ab"[p % 2]) / f"{p:08d}_{f:03d}.png", p * 10 + f)
    _png(tmp_path / "nih" / "a" / "odd-name.png")
    cat = scan_folder(tmp_path / "nih", salt=SALT, patient_from_name=r"^(\d+)_")
    keys = Counter(e.patient_key for e in cat.entries)
    assert sorted(keys.values()) == [1, 3, 3, 3, 3, 3, 3]
    assert cat.patients_from == {"file name pattern": 18, "none (each image its own patient)": 1}
    assert any("1 file names do not match the patient-from-name pattern" in w for w in cat.warnings)
    with pytest.raises(ProjectError, match="exactly one capture group"):
        scan_folder(tmp_path / "nih", salt=SALT, patient_from_name=r"^\d+_")
    with pytest.raises(ProjectError, match="not a valid regular expression"):
        scan_folder(tmp_path / "nih", salt=SALT, patient_from_name=r"^(\d+")

    # mini-MIAS-like CSV: the `woman` column is found without being named
    rows = ["refnum,file,woman,tissue"]
    for i in range(8):
        _png(tmp_path / "mias" / f"mdb{i:03d}.png", i)
        rows.append(f"mdb{i:03d},mdb{i:03d}.png,W{i // 2:03d},{'FGD'[i % 3]}")
    (tmp_path / "mias.csv").write_text("\n".join(rows) + "\n")
    cat = scan_folder(tmp_path / "mias", salt=SALT, labels_csv=tmp_path / "mias.csv", label_column="tissue")
    assert len({e.patient_key for e in cat.entries}) == 4
    assert cat.patients_from == {"CSV column woman": 8}
    # a lone second column named like a patient stays the label (nothing else could be)
    (tmp_path / "two.csv").write_text("file,subject\nmdb000.png,x\nmdb001.png,y\n")
    cat = scan_folder(tmp_path / "mias", salt=SALT, labels_csv=tmp_path / "two.csv")
    assert {e.label for e in cat.entries} == {"x", "y", None}


def test_schema_1_project_written_by_the_previous_code_is_migrated(tmp_path):
    _png(tmp_path / "img" / "a" / "1.png")
    _png(tmp_path / "img" / "b" / "2.png")
    project = Project.create(tmp_path / "p")
    steps.import_images(project, tmp_path / "img")
    data = json.loads(project.settings_path.read_text())
    # what schema 1 wrote: no split_source
    data.pop("split_source")
    data["schema_version"] = 1
    (tmp_path / "p" / PROJECT_FILE).write_text(json.dumps(data))
    old = Project.open(tmp_path / "p")
    assert old.settings.schema_version == 2 and old.settings.split_source["kind"] == "random"
    assert len(old.catalog().entries) == 2
    old.save()
    assert json.loads(old.settings_path.read_text())["schema_version"] == 2
