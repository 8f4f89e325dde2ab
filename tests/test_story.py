"""A user's story through the `loff` command, end to end, on data the test makes.

A folder of synthetic mammogram-like DICOMs (several transfer syntaxes, MONOCHROME1 and 2)
with a labels CSV: import, extract with a small random-init ViT, train, evaluate, export
(with ONNX), reload and predict. The checks are on real numbers: the learnable label must
be learned well above chance, and the exported head must reproduce `evaluate`'s
per-image predictions.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loff_core.cli import main
from loff_cli import loff_json
from loff_core.synthetic import write_synthetic_dataset

BACKBONE = ["--backbone", "vit_tiny_patch16_224", "--random-init", "--image-size", "96", "--grid", "6"]




@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("site") / "dicoms"
    labels = write_synthetic_dataset(folder, n_patients=70, size=(128, 104), seed=3)
    return folder, labels


def _binary_labels(labels: Path, out: Path) -> Path:
    """The masking level recast as a binary 'dense' finding (levels 5-8)."""
    with open(labels, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "dense", "patient"])
        for r in rows:
            w.writerow([r["file"], "dense" if int(r["masking_level"]) >= 5 else "fatty", r["patient"]])
    return out


@pytest.mark.slow
def test_classification_story(dicom_folder, tmp_path, capsys):
    images, level_csv = dicom_folder
    labels = _binary_labels(level_csv, tmp_path / "dense.csv")
    project = tmp_path / "project"

    imported = loff_json(capsys, "import", project, images, "--labels", labels, "--label-column", "dense",
                    "--patient-column", "patient")
    assert imported["imported"] == 140 and imported["failed"] == []
    assert set(imported["classes"]) == {"dense", "fatty"}
    assert set(imported["splits"]) == {"train", "val", "test"}

    extracted = loff_json(capsys, "extract", project, *BACKBONE, "--batch-size", "16", "--workers", "0")
    assert extracted["images"] == 140 and extracted["failed"] == []
    assert extracted["bytes_per_image"] == (6 * 6 * 192 + 192) * 2

    trained = loff_json(capsys, "train", project, "--head", "attention", "--epochs", "25", "--seed", "0")
    run = trained["run"]
    assert trained["n_train"] > 80

    evaluated = loff_json(capsys, "evaluate", project, "--run", run, "--split", "test", "--bootstrap", "200")
    metrics = evaluated["metrics"]
    assert metrics["auc"] > 0.8, metrics
    assert metrics["balanced_accuracy"] > 0.65, metrics
    lo, hi = evaluated["ci"]["auc"]
    assert lo <= metrics["auc"] <= hi
    assert sum(map(sum, evaluated["confusion_matrix"])) == len(evaluated["predictions"]) == evaluated["n"]

    exported = loff_json(capsys, "export", project, tmp_path / "head", "--run", run, "--onnx")
    card = json.loads((tmp_path / "head" / "card.json").read_text())
    assert card["classes"] == evaluated["classes"]
    assert card["metrics"]["test"]["metrics"]["auc"] == pytest.approx(metrics["auc"])
    assert exported["onnx"]["max_abs_diff_vs_torch"] < 1e-3

    # evaluate's paths are relative to the project folder
    test_files = [project / p["path"] for p in evaluated["predictions"]]
    assert all(f.resolve().parent.parent == images.resolve() for f in test_files)
    predicted = loff_json(capsys, "predict", tmp_path / "head", *test_files, "--random-init")
    by_path = {Path(p["path"]).resolve(): p for p in predicted["predictions"]}
    assert len(by_path) == len(test_files)
    agree = 0
    for p in evaluated["predictions"]:
        again = by_path[(project / p["path"]).resolve()]
        agree += again["predicted"] == p["predicted"]
        assert np.allclose(again["probabilities"], p["probabilities"], atol=5e-3)
    assert agree == len(test_files)


@pytest.mark.slow
def test_ordinal_story(dicom_folder, tmp_path, capsys):
    images, level_csv = dicom_folder
    project = tmp_path / "project"
    loff_json(capsys, "import", project, images, "--labels", level_csv, "--label-column", "masking_level",
         "--patient-column", "patient", "--task", "ordinal")
    loff_json(capsys, "extract", project, *BACKBONE, "--batch-size", "32", "--workers", "0")
    trained = loff_json(capsys, "train", project, "--head", "vit", "--epochs", "20")
    assert trained["task"] == "ordinal" and trained["classes"] == [str(i) for i in range(1, 9)]
    evaluated = loff_json(capsys, "evaluate", project, "--split", "test", "--bootstrap", "100")
    m = evaluated["metrics"]
    assert m["kendall_tau"] > 0.4, m
    assert m["amae"] < 2.0, m
    for p in evaluated["predictions"]:
        assert len(p["probabilities"]) == 8 and abs(sum(p["probabilities"]) - 1) < 1e-3

    info = loff_json(capsys, "info", project)
    assert info["runs"][0]["stale"] == []
    # re-importing the labels makes the head stale, visibly
    loff_json(capsys, "import", project, images, "--labels", level_csv, "--label-column", "masking_level",
         "--patient-column", "patient")
    info = loff_json(capsys, "info", project)
    assert any("re-imported" in s for s in info["runs"][0]["stale"])


def test_demo_project_is_synthetic_and_ready(tmp_path, capsys):
    out = loff_json(capsys, "demo", tmp_path / "demo", "--patients", "10")
    assert out["synthetic"] is True and out["imported"] == 20 and out["task"] == "ordinal"
    assert "SYNTHETIC" in (tmp_path / "demo" / "README.txt").read_text()
    assert loff_json(capsys, "info", tmp_path / "demo")["synthetic"] is True  # saved with the project


def test_an_interrupted_demo_leaves_no_half_project(tmp_path):
    """Stopped while writing (the app closed on first launch): ROOT does not exist, so the
    next launch writes it again instead of opening a project without images."""
    from loff_core.demo import create_demo_project
    from loff_core.progress import Cancelled, Progress

    progress = Progress()

    def on_report(done, total, message):
        if "writing synthetic images" in message:
            progress.cancel()  # seen once the images are written, before the import

    progress.on_report = on_report
    with pytest.raises(Cancelled):
        create_demo_project(tmp_path / "demo", n_patients=4, progress=progress)
    assert not (tmp_path / "demo").exists(), "a half-written demo project was left behind"
    project = create_demo_project(tmp_path / "demo", n_patients=4)
    assert project.has_catalog() and len(project.catalog().entries) == 8
    assert project.images_root() == (tmp_path / "demo" / "images").resolve()
    assert project.labels_csv() is not None and project.labels_csv().parent.parent == (tmp_path / "demo").resolve()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_errors_are_one_line_and_nonzero(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nowhere"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "not a LOFF Studio project" in err and "\n" not in err


def test_help_is_fast_and_does_not_import_torch():
    code = ("import sys; from loff_core.cli import build_parser; build_parser().format_help(); "
            "sys.exit(1 if 'torch' in sys.modules or 'PySide6' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
