"""`loff auto` (issue 21, point 1): the patient file-name schemes of the import, the
sensitivity / specificity at the operating point, and the command end to end on a tiny
synthetic folder, run twice (the second run reuses every step)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loff_core.catalog import NAME_SCHEMES, patient_from_scheme, scan_folder
from loff_cli import loff_json

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
#: the patient pattern the data README gives for the pediatric chest X-rays
PEDIATRIC = re.compile(r"^(person[0-9]+|NORMAL2-IM-[0-9]+|IM-[0-9]+)")


def _png(path: Path, value: int = 128, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(rng.normal(value, 40, (40, 40)), 0, 255).astype(np.uint8)).save(path)


def test_patients_from_file_name_schemes(tmp_path):
    names = ["person12_bacteria_3.png", "person12_virus_7.png", "person13_bacteria_1.png", "IM-0115-0001.png",
             "IM-0115-0002.png", "NORMAL2-IM-0123-0001.png", "00000001_000.png", "00000001_001.png",
             "00000002_000.png", "scan.png"]
    for i, name in enumerate(names):
        _png(tmp_path / "img" / name, seed=i)
    catalog = scan_folder(tmp_path / "img", salt=b"s")
    key = {e.path: e.patient_key for e in catalog.entries}
    assert key["person12_bacteria_3.png"] == key["person12_virus_7.png"] != key["person13_bacteria_1.png"]
    assert key["IM-0115-0001.png"] == key["IM-0115-0002.png"] != key["NORMAL2-IM-0123-0001.png"]
    assert key["00000001_000.png"] == key["00000001_001.png"] != key["00000002_000.png"]
    assert len(set(key.values())) == 7
    # which scheme matched, and how many patients each found; the rest each its own patient, said so
    sources = catalog.patients_from
    assert sources["file name scheme personN_bacteria_M (pediatric chest X-rays, e.g. person123_bacteria_4.jpeg): "
                   "2 patients"] == 3
    assert sources["file name scheme IM-NNNN-NNNN (pediatric chest X-rays, e.g. IM-0115-0001.jpeg): 2 patients"] == 3
    assert sources["file name scheme NNNNNNNN_NNN (NIH ChestX-ray14, e.g. 00000001_000.png): 2 patients"] == 3
    assert sources["none (each image its own patient)"] == 1
    assert any(w.startswith("1 images have no patient ID") for w in catalog.warnings)
    # the patient ID never reaches the shown path (as with a typed pattern)
    masked = {e.path: e.masked_path for e in catalog.entries}
    assert "person12" not in masked["person12_bacteria_3.png"] and "patient-" in masked["person12_bacteria_3.png"]


def test_a_typed_pattern_beats_the_schemes(tmp_path):
    for i, name in enumerate(["IM-0115-0001.png", "IM-0115-0002.png"]):
        _png(tmp_path / "img" / name, seed=i)
    catalog = scan_folder(tmp_path / "img", salt=b"s", patient_from_name=r"^IM-\d+-(\d+)")
    assert catalog.patients_from == {"file name pattern": 2}
    assert len({e.patient_key for e in catalog.entries}) == 2


def test_a_dicom_patient_id_beats_the_schemes(tmp_path):
    from loff_core.synthetic import write_synthetic_dataset

    labels = write_synthetic_dataset(tmp_path / "img", n_patients=2, views=("CC",), size=(64, 48))
    labels.unlink()
    for i, path in enumerate(sorted((tmp_path / "img").rglob("*.dcm"))):
        path.rename(path.parent / f"IM-0001-000{i}.dcm")  # one scheme patient; two DICOM patients
    catalog = scan_folder(tmp_path / "img", salt=b"s")
    assert catalog.patients_from == {"DICOM PatientID": 2}
    assert len({e.patient_key for e in catalog.entries}) == 2


def test_schemes_on_the_real_file_names():
    """Every file name of the pediatric chest X-rays gives the patient the data README's
    pattern gives; NIH's names give their 8-digit patient; other names match no scheme."""
    pediatric = DATA / "chest-xray-pneumonia" / "train"
    if not pediatric.is_dir():
        pytest.skip(f"{pediatric} absent (real data, see shared/data/README.md)")
    names = [p.name for p in pediatric.glob("*/*") if p.is_file()]
    assert len(names) > 5000
    found = {n: patient_from_scheme(n) for n in names}
    assert all(found[n] is not None and found[n][0] == PEDIATRIC.match(n).group(1) for n in names)
    assert {s for _, s in found.values()} == {"personN_bacteria_M", "IM-NNNN-NNNN"}
    samples = DATA / "chest-xray-samples"
    assert patient_from_scheme("00000001_000.png") == ("00000001", "NNNNNNNN_NNN")
    if samples.is_dir():
        nih = sorted(p.name for p in samples.iterdir() if re.match(r"\d{8}_\d{3}\.png$", p.name))
        assert nih and all(patient_from_scheme(n) == (n[:8], "NNNNNNNN_NNN") for n in nih)
        others = [p.name for p in samples.iterdir() if p.name not in nih]
        assert others and all(patient_from_scheme(n) is None for n in others)
    mias = DATA / "mini-mias" / "images"
    if mias.is_dir():
        assert all(patient_from_scheme(p.name) is None for p in mias.iterdir())
    assert len(NAME_SCHEMES) == 3


def test_operating_point_rates():
    from loff_core.metrics import operating_point_rates

    y = [1] * 10 + [0] * 5
    p1 = np.array([0.9] * 8 + [0.1] * 2 + [0.2] * 4 + [0.7])
    rates = operating_point_rates(y, np.stack([1 - p1, p1], axis=1), 0.5)
    assert (rates["tp"], rates["fn"], rates["tn"], rates["fp"]) == (8, 2, 4, 1)
    assert rates["sensitivity"] == pytest.approx(0.8) and rates["specificity"] == pytest.approx(0.8)
    assert rates["sensitivity_ci"] == pytest.approx([0.490, 0.943], abs=1e-3)  # Wilson, 8 of 10
    assert operating_point_rates(y, np.stack([1 - p1, p1], axis=1), 0.8)["fp"] == 0
    with pytest.raises(ValueError):
        operating_point_rates(y, np.ones((15, 3)) / 3, 0.5)


def test_default_spec_follows_the_declarations():
    from loff_core.auto import default_spec
    from loff_core.backbones import default_backbone_name
    from loff_core.settings import ExtractSettings

    spec = default_spec()
    d = ExtractSettings()
    assert (spec.name, spec.image_size, spec.grid, spec.layers) == (default_backbone_name(d.device), d.image_size,
                                                                    d.grid, d.layers)


def _scheme_folder(root: Path) -> Path:
    """NORMAL / PNEUMONIA sub-folders (the labels), pediatric file names (the patients)."""
    for p in range(14):
        sick = p % 2 == 1
        for k in range(2):
            name = f"person{p}_bacteria_{k}.png" if sick else f"IM-{p:04d}-{k:04d}.png"
            _png(root / ("PNEUMONIA" if sick else "NORMAL") / name, value=190 if sick else 60, seed=10 * p + k)
    return root


def test_auto_end_to_end_then_reused(tmp_path, capsys, monkeypatch):
    from loff_core import auto
    from loff_core.backbones import BackboneSpec
    from loff_core.auto import summary_text

    # the smallest real extraction (the default backbone is checked above and on mini-MIAS)
    monkeypatch.setattr(auto, "default_spec", lambda settings=None: BackboneSpec(
        name="vit_tiny_patch16_224", random_init=True, image_size=32, grid=2))
    images, project = _scheme_folder(tmp_path / "img"), tmp_path / "p"
    out = loff_json(capsys, "auto", images, "--project", project, "--budget", "6s")
    assert [s["done"] for s in out["steps"].values()] == ["ran"] * 5
    assert any("file name scheme personN_bacteria_M" in g and "7 patients" in g for g in out["guesses"])
    assert "labels: the names of the sub-folders" in out["guesses"]
    search = out["search"]
    assert search["run"] and search["trials"] >= 1 and search["folds"] >= 2
    assert set(search["test"]) >= {"accuracy", "auc"} and search["test_ci"]["accuracy"] is not None
    op = out["operating_point"]
    assert op["positive"] == "PNEUMONIA" and op["tp"] + op["fn"] + op["tn"] + op["fp"] == search["n_test"]
    assert "out-of-fold" in op["decision"]  # the operating point was fitted on the folds' predictions
    head, report = Path(out["head"]), Path(out["report"])
    assert (head / "card.json").is_file() and (head / "head.safetensors").is_file() and report.is_file()
    text = summary_text(out)
    assert "sensitivity" in text and "specificity" in text and str(head) in text and str(report) in text

    again = loff_json(capsys, "auto", images, "--project", project, "--budget", "6s")
    assert [s["done"] for s in again["steps"].values()] == ["reused"] * 5
    assert (again["search"]["run"], again["head"], again["report"]) == (search["run"], out["head"], out["report"])
    assert again["search"]["test"] == search["test"]

    # another budget: a new search on the same catalog and cache
    _png(images / "NORMAL" / "IM-0099-0001.png", value=60, seed=99)  # and a changed folder: imported again
    third = loff_json(capsys, "auto", images, "--project", project, "--budget", "5s")
    assert [third["steps"][s]["done"] for s in ("import", "extract", "find the best head")] == ["ran"] * 3
    assert third["extract"]["reused"] == 28 and third["extract"]["extracted"] == 1
    assert third["search"]["run"] != search["run"]


def test_auto_refuses_a_bad_budget_and_folder(tmp_path, capsys):
    from loff_core.cli import main

    assert main(["auto", str(tmp_path / "nowhere"), "--project", str(tmp_path / "p"), "--quiet"]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    with pytest.raises(SystemExit):
        main(["auto", str(tmp_path), "--budget", "soon"])
    assert "is not a duration" in capsys.readouterr().err
