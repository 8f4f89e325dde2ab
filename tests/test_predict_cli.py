"""`loff predict` with a project's run (no export needed) and with labelled files: the
metrics `evaluate` reports, from class sub-folders or a labels CSV."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from loff_cli import copy_project, loff_json
from loff_core.cli import main
from loff_core.metrics import evaluate_predictions


@pytest.fixture(scope="module")
def trained(trained_demo, tmp_path_factory):
    """A copy of the session's trained demo project, and its run exported."""
    root = tmp_path_factory.mktemp("predict")
    project = copy_project(trained_demo, root / "demo")
    assert main(["export", str(project), str(root / "head"), "--quiet"]) == 0
    return root, project


def test_a_project_run_predicts_like_its_export(trained, capsys):
    root, project = trained
    files = project / "images" / "SYN-0001"
    from_run = loff_json(capsys, "predict", project, files, "--random-init")
    from_export = loff_json(capsys, "predict", root / "head", files, "--random-init")
    assert from_run["run"] == loff_json(capsys, "info", project)["runs"][-1]["run"]
    assert len(from_run["predictions"]) == 2
    for a, b in zip(from_run["predictions"], from_export["predictions"]):
        assert a["path"] == b["path"] and a["predicted"] == b["predicted"]
        assert np.allclose(a["probabilities"], b["probabilities"], atol=1e-6)
    assert "labelled" in from_run and from_run["labelled"] == 0 and "metrics" not in from_run


def test_a_folder_that_is_no_head_says_how_to_get_one(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", str(tmp_path), str(tmp_path / "x.png"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "neither an exported head" in err and "loff export PROJECT" in err


def test_labelled_files_get_the_metrics_evaluate_reports(trained, tmp_path, capsys):
    root, project = trained
    labelled = tmp_path / "new"
    truth = {"3": ["SYN-0001"], "6": ["SYN-0002", "SYN-0003"]}
    for level, patients in truth.items():
        (labelled / level).mkdir(parents=True)
        for patient in patients:
            for f in (project / "images" / patient).iterdir():
                shutil.copy(f, labelled / level / f.name)
    out = loff_json(capsys, "predict", project, labelled, "--random-init", "--bootstrap", "50")
    assert out["labelled"] == out["n"] == 6
    rows = out["predictions"]
    assert sorted(r["label"] for r in rows) == ["3", "3", "6", "6", "6", "6"]
    y = [out["classes"].index(r["label"]) for r in rows]
    expected = evaluate_predictions(y, np.array([r["probabilities"] for r in rows]), out["classes"], out["task"],
                                    n_bootstrap=50)
    assert out["metrics"] == expected["metrics"] and out["confusion_matrix"] == expected["confusion_matrix"]

    # the same labels from a CSV (semicolon-separated, bare file names)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("file;level\n" + "".join(f"{r['path'].rsplit('/', 1)[1]};{r['label']}\n" for r in rows))
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in labelled.rglob("*.dcm"):
        shutil.copy(f, flat / f.name)
    by_csv = loff_json(capsys, "predict", project, flat, "--random-init", "--bootstrap", "50",
                       "--labels", csv_path, "--label-column", "level")
    assert by_csv["labelled"] == 6 and by_csv["metrics"] == out["metrics"]

    csv_path.write_text("file;level\nSYN-0001_L_CC.dcm;9\n")
    assert main(["predict", str(project), str(flat), "--random-init", "--quiet", "--labels", str(csv_path),
                 "--label-column", "level"]) == 1
    assert "label '9' is not one of the head's classes" in capsys.readouterr().err
