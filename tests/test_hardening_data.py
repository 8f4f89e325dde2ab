"""Issue 25, third hardening round, items 9-14 and the WEAK list: decode bombs (DICOM,
NIfTI), calibration inputs, exported cards, predict's metrics, and import corner cases.
Each test failed on the code before the fix (docs/hardening.md, "Third round")."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from loff_cli import binary_png_project, loff_json
from loff_core.cli import main


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """A trained binary project (normal / pneumonia PNGs, linear head, a Youden threshold)."""
    root = tmp_path_factory.mktemp("binary")

    class _Cap:  # capsys is function-scoped: the subset of it that loff_json uses
        def __init__(self):
            import io
            self.out = io.StringIO()

        def readouterr(self):
            import collections
            text = self.out.getvalue()
            self.out.seek(0)
            self.out.truncate()
            return collections.namedtuple("C", "out err")(text, "")

    import contextlib

    cap = _Cap()
    with contextlib.redirect_stdout(cap.out):
        project = binary_png_project(root, cap, pneumonia=30)
        run = loff_json(cap, "train", project, "--head", "linear", "--epochs", "4", "--device", "cpu")["run"]
    return root, project, run


def _copy_project(binary, tmp_path):
    root, project, run = binary
    shutil.copytree(root / "img", tmp_path / "img")
    shutil.copytree(project, tmp_path / "p", symlinks=True)
    return tmp_path / "p", run


def _err(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args] + ["--quiet"])
    return code, capsys.readouterr().err


# -- 9. DICOM and NIfTI decode bombs ------------------------------------------------------
def _bombs_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bombs.py"
    spec = importlib.util.spec_from_file_location("loff_bench_bombs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BOMB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
from loff_core.images import decode_max_side, load_pixels, read_info
info = read_info(sys.argv[1])
out = load_pixels(sys.argv[1], decode_max_side(224))
peak = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] >> 10
print(info.rows, out.shape[0], out.shape[1], out.dtype, float(out.max()), peak)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dicom", "nifti"])
def test_dicom_and_nifti_decode_bombs_stay_within_one_and_a_half_gib(tmp_path, kind):
    """A deflated 14000 x 14000 16-bit DICOM with RescaleSlope 1.5 and a window (~0.6 MB),
    a 14000 x 14000 float64 .nii.gz (~1.8 MB), decoded for a 224-px model in a process
    limited to 1.5 GiB of address space. Old: 5.25 / 3.4 GB, so here 'not enough memory'."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    bombs = _bombs_module()
    path = (bombs.write_dicom_bomb(tmp_path / "bomb.dcm") if kind == "dicom"
            else bombs.write_nifti_bomb(tmp_path / "bomb.nii.gz"))
    assert path.stat().st_size < 2_000_000
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _BOMB, str(path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-800:]
    rows, out_rows, out_cols, dtype, top, peak = proc.stdout.split()
    assert rows == "14000" and out_rows == out_cols == "7000" and dtype == "float32" and float(top) == 1.0
    assert int(peak) <= 1536


def _small_dicoms(tmp_path):
    """Uncompressed and deflated grey DICOMs (rescale, window, a VOI LUT, MONOCHROME1, signed,
    8-bit, two frames) above 256 KiB of pixel data, so their pixel data stay in the file."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                             SecondaryCaptureImageStorage, generate_uid)

    rng = np.random.default_rng(3)
    out = []
    cases = [("defl-window", DeflatedExplicitVRLittleEndian, 16, 0, "MONOCHROME2", "window", 1),
             ("plain-mono1", ExplicitVRLittleEndian, 16, 0, "MONOCHROME1", "window", 1),
             ("implicit-lut", ImplicitVRLittleEndian, 16, 0, "MONOCHROME2", "lut", 1),
             ("signed", ExplicitVRLittleEndian, 16, 1, "MONOCHROME2", None, 1),
             ("eight-bit", DeflatedExplicitVRLittleEndian, 8, 0, "MONOCHROME2", None, 1),
             ("frames", ExplicitVRLittleEndian, 16, 0, "MONOCHROME2", "window", 3)]
    for name, syntax, bits, signed, photometric, voi, frames in cases:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
        meta.TransferSyntaxUID = syntax
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 530, 611, 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 4 if bits == 16 else 8, \
            (bits - 5 if bits == 16 else 7), signed
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.RescaleSlope, ds.RescaleIntercept = (1.5, -10) if bits == 16 else (1, 0)
        if voi == "window":
            ds.WindowCenter, ds.WindowWidth = 1500, 2000
        elif voi == "lut":
            item = Dataset()
            item.LUTDescriptor = [4096, 0, 16]
            item.LUTData = (np.sqrt(np.arange(4096)) * 1000).astype("<u2").tobytes()
            ds.VOILUTSequence = Sequence([item])
        dtype = {(16, 0): "<u2", (16, 1): "<i2", (8, 0): "u1"}[(bits, signed)]
        top = 2 ** (ds.BitsStored - (1 if signed else 0))
        arr = rng.integers(-top if signed else 0, top, (frames, 530, 611)).astype(dtype)
        ds.PixelData = arr.tobytes()
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def test_streamed_decoding_gives_the_whole_image_decodes_values(tmp_path, monkeypatch):
    """The band-by-band decode of big files (here forced on small ones) is the same, bit for
    bit, as the whole-image decode: full size and reduced, DICOM and NIfTI."""
    from loff_core import images

    bombs = _bombs_module()
    files = _small_dicoms(tmp_path)
    files.append(bombs.write_nifti_bomb(tmp_path / "f8.nii.gz", 733))
    files.append(bombs.write_nifti_bomb(tmp_path / "i2.nii.gz", 700, dtype="<i2"))
    whole = {f: (images.load_pixels(f), images.load_pixels(f, 200)) for f in files}
    streamed = []
    real = images._stream_finish
    monkeypatch.setattr(images, "_stream_finish", lambda *a, **k: streamed.append(1) or real(*a, **k))
    monkeypatch.setattr(images, "STREAM_DECODE_BYTES", 0)
    for f in files:
        full, reduced = images.load_pixels(f), images.load_pixels(f, 200)
        assert np.array_equal(full, whole[f][0]) and np.array_equal(reduced, whole[f][1]), f.name
        assert full.dtype == np.float32 and full.shape == whole[f][0].shape and reduced.shape[1] <= 305
    assert len(streamed) == 2 * len(files)


def test_what_cannot_be_streamed_is_refused_by_header_arithmetic_in_bytes(tmp_path, monkeypatch):
    """Bytes, not pixels: a float pixel-data DICOM, a colour DICOM, an MHA volume whose
    whole-image decode would exceed the limit are refused from the header (at import), with
    the arithmetic, before any pixel is read."""
    import SimpleITK as sitk
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from loff_core import images
    from loff_core.errors import UnreadableImage

    def dicom(name, **attrs):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        for k, v in attrs.items():
            setattr(ds, k, v)
        ds.save_as(tmp_path / name, enforce_file_format=True)
        return tmp_path / name

    floats = dicom("float.dcm", Rows=800, Columns=700, SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2",
                   BitsAllocated=32, FloatPixelData=np.zeros((800, 700), "<f4").tobytes())
    colour = dicom("rgb.dcm", Rows=800, Columns=700, SamplesPerPixel=3, PhotometricInterpretation="RGB",
                   PlanarConfiguration=0, BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0,
                   PixelData=np.zeros((800, 700, 3), "u1").tobytes())
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 300, 400), np.float64)), str(tmp_path / "vol.mha"))
    small = dicom("small.dcm", Rows=60, Columns=50, SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2",
                  BitsAllocated=16, BitsStored=16, HighBit=15, PixelRepresentation=0,
                  PixelData=np.zeros((60, 50), "<u2").tobytes())
    monkeypatch.setattr(images, "MAX_DECODE_BYTES", 4 << 20, raising=False)
    read = []
    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda *a, **k: read.append(1))
    for path, what in ((floats, "800 x 700 pixels at 32 bits"), (colour, "800 x 700 pixels x 3 samples at 8 bits"),
                       (tmp_path / "vol.mha", "400 x 300 x 6 voxels")):
        with pytest.raises(UnreadableImage, match="would need about") as err:
            images.read_info(path)
        assert what in err.value.reason and "limit 4 MB" in err.value.reason, err.value.reason
        with pytest.raises(UnreadableImage, match="would need about"):
            images.load_pixels(path)
    assert read == []
    assert images.read_info(small).rows == 60  # small images are untouched

@pytest.mark.parametrize("prevalence", ["nan,0.5", "inf,1", "1e308,1e308", "0,1", "-1,2"])
def test_calibrate_refuses_a_prevalence_that_is_not_finite_positive_normalisable(binary, tmp_path, capsys,
                                                                                 prevalence):
    project, run = _copy_project(binary, tmp_path)
    before = (project / "runs" / run / "run.json").read_bytes()
    code, err = _err(capsys, "calibrate", project, f"--prevalence={prevalence}")
    assert code == 1 and "prevalence" in err and "Traceback" not in err, err
    assert "above 0" in err or "class shares" in err
    assert (project / "runs" / run / "run.json").read_bytes() == before  # nothing saved


# -- 11. a stale run is refused by calibrate as evaluate refuses it -------------------------
def test_calibrate_refuses_a_run_trained_on_other_classes(binary, tmp_path, capsys):
    project, run = _copy_project(binary, tmp_path)
    img = tmp_path / "img"
    (img / "normal").rename(img / "healthy")  # re-imported with other classes
    loff_json(capsys, "import", project, img)
    code, evaluate_err = _err(capsys, "evaluate", project)
    assert code == 1 and "trained on the classes" in evaluate_err
    before = (project / "runs" / run / "run.json").read_bytes()
    code, err = _err(capsys, "calibrate", project)
    assert code == 1 and "trained on the classes normal, pneumonia" in err and "train again" in err, err
    assert (project / "runs" / run / "run.json").read_bytes() == before


# -- 12. an exported card is sealed; old cards keep opening --------------------------------
def test_a_card_edited_after_export_is_refused_and_older_cards_still_open(binary, tmp_path, capsys):
    from loff_core.errors import ExportError
    from loff_core.export import load_exported_head

    project, _ = _copy_project(binary, tmp_path)
    loff_json(capsys, "export", project, tmp_path / "head")
    card = json.loads((tmp_path / "head" / "card.json").read_text())
    assert card["format_version"] == (5 if card["backbone"]["crop"] != "none" else 4) and len(card["files"]["card_sha256"]) == 64
    image = sorted((tmp_path / "img" / "normal").glob("*.png"))[0]
    for field, change in (("classes", lambda c: c["classes"].reverse()),
                          ("threshold", lambda c: c["operating_point"]["threshold"].update(value=0.01)),
                          ("temperature", lambda c: c["operating_point"].update(temperature=9.0))):
        bad = tmp_path / f"bad-{field}"
        shutil.copytree(tmp_path / "head", bad)
        edited = json.loads(json.dumps(card))
        change(edited)
        (bad / "card.json").write_text(json.dumps(edited))
        code, err = _err(capsys, "predict", bad, image, "--random-init", "--device", "cpu")
        assert code == 1 and "changed after export" in err and "card.json" in err, (field, err)
    # a version-2 card (written before the seal) is migrated: it opens and predicts as before
    old = tmp_path / "v2"
    shutil.copytree(tmp_path / "head", old)
    v2 = json.loads(json.dumps(card))
    v2["format_version"] = 2
    del v2["files"]["card_sha256"]
    (old / "card.json").write_text(json.dumps(v2))
    assert load_exported_head(old).card["format_version"] == 2
    a = loff_json(capsys, "predict", old, image, "--random-init", "--device", "cpu")
    b = loff_json(capsys, "predict", tmp_path / "head", image, "--random-init", "--device", "cpu")
    assert a["predictions"] == b["predictions"]
    # a version-3 card without its seal is not a v2 card
    del card["files"]["card_sha256"]
    (old / "card.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match="has no seal"):
        load_exported_head(old)


# -- 13. predict with labels scores the rows' own decision, as evaluate does ----------------
def test_predict_with_labels_reports_evaluate_metrics_at_the_runs_operating_point(binary, tmp_path, capsys):
    project, run = _copy_project(binary, tmp_path)
    ev = loff_json(capsys, "evaluate", project, "--bootstrap", "0")
    p1 = sorted(p["probabilities"][1] for p in ev["predictions"])
    # a threshold that decides differently from argmax for some test images
    above_half = [v for v in p1 if v > 0.5] or p1[-2:]
    threshold = (above_half[len(above_half) // 2] + above_half[len(above_half) // 2 - 1]) / 2 \
        if len(above_half) > 1 else 0.99
    loff_json(capsys, "calibrate", project, "--threshold", str(threshold))
    ev = loff_json(capsys, "evaluate", project, "--bootstrap", "0")
    argmax = [("pneumonia" if p["probabilities"][1] > p["probabilities"][0] else "normal") for p in ev["predictions"]]
    assert argmax != [p["predicted"] for p in ev["predictions"]], "the threshold must change some decisions"
    labelled = tmp_path / "labelled"
    for p in ev["predictions"]:
        (labelled / p["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(project / p["path"], labelled / p["label"] / (p["path"].rsplit("/", 1)[-1]))
    out = loff_json(capsys, "predict", project, labelled, "--random-init", "--device", "cpu", "--bootstrap", "0")
    assert out["labelled"] == ev["n"]
    assert out["confusion_matrix"] == ev["confusion_matrix"]
    assert out["metrics"] == pytest.approx(ev["metrics"], abs=1e-9)
    assert {c: (v["precision"], v["recall"]) for c, v in out["per_class"].items()} == \
        {c: (v["precision"], v["recall"]) for c, v in ev["per_class"].items()}
    # and the rows' own counts agree with the confusion matrix
    classes = out["classes"]
    counts = [[0, 0], [0, 0]]
    for r in out["predictions"]:
        counts[classes.index(r["label"])][classes.index(r["predicted"])] += 1
    assert counts == out["confusion_matrix"]


# -- 14. a decision that used the test labels says so --------------------------------------
def test_prevalence_from_test_is_marked_and_says_what_it_does_to_the_decision(binary, tmp_path, capsys):
    project, run = _copy_project(binary, tmp_path)
    code = main(["calibrate", str(project), "--prevalence-from-test"])
    summary = capsys.readouterr().out
    assert code == 0
    assert "USES THE TEST SPLIT'S LABELS" in summary and "decisions on" in summary, summary
    record = json.loads((project / "runs" / run / "run.json").read_text())
    op = record["operating_point"]
    assert op["uses_test_labels"] is True and op["prior"]["from"] == "the test split's labels"
    # a binary run whose threshold is refitted keeps its decisions: the summary says 0 changed
    assert op["prior"]["decisions_changed"] == 0
    ev = loff_json(capsys, "evaluate", project, "--bootstrap", "0")
    assert ev["operating_point"]["uses_test_labels"] is True
    loff_json(capsys, "export", project, tmp_path / "head")
    card = json.loads((tmp_path / "head" / "card.json").read_text())
    assert card["operating_point"]["uses_test_labels"] is True
    code = main(["evaluate", str(project), "--bootstrap", "0"])
    assert "USES THE TEST SPLIT'S LABELS" in capsys.readouterr().out
    # a hand-set threshold with a prevalence: the decisions change, and the count says how many
    op = loff_json(capsys, "calibrate", project, "--prevalence", "0.3,0.7", "--threshold", "0.5")["operating_point"]
    assert "uses_test_labels" not in op and op["prior"]["decisions_changed"] >= 0
    from loff_core.calibration import fit_operating_point

    probs = np.array([[0.6, 0.4], [0.55, 0.45], [0.3, 0.7], [0.8, 0.2]])
    manual = fit_operating_point(probs, np.array([0, 1, 1, 0]), ["a", "b"], "classification", source=[0.5, 0.5],
                                 fitted_on="v", threshold=0.5, prevalence=[0.2, 0.8])
    assert manual["prior"]["decisions_changed"] > 0
    # the Results page shows the same line (calibration.describe)
    from loff_core.calibration import describe

    assert "USES THE TEST SPLIT'S LABELS" in describe(card["operating_point"])


# -- WEAK ----------------------------------------------------------------------------------
def _png(path, value=100, shape=(20, 16)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(np.clip(rng.normal(value, 30, shape), 0, 255).astype(np.uint8)).save(path)
    return path


def test_an_import_stopped_by_the_patient_overlap_question_leaves_no_project(tmp_path, capsys):
    lines = ["file,label,subject,split"]
    for i in range(12):
        _png(tmp_path / "img" / f"{i}.png", 10 * i)
        lines.append(f"{i}.png,{'ab'[i % 2]},s{i // 2},{'train' if i < 7 else 'test'}")  # s3: 6 train, 7 test
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    code, err = _err(capsys, "import", tmp_path / "new" / "p", tmp_path / "img", "--labels", tmp_path / "l.csv",
                     "--split-column", "split")
    assert code == 1 and "on two sides" in err, err
    assert not (tmp_path / "new" / "p" / "loff-project.json").exists()
    assert not (tmp_path / "new" / "p").exists()
    # the answer given, the import goes through in the same place
    out = loff_json(capsys, "import", tmp_path / "new" / "p", tmp_path / "img", "--labels", tmp_path / "l.csv",
                    "--split-column", "split", "--on-patient-overlap", "keep")
    assert out["imported"] == 12
    # an existing project is never removed by a failed import
    code, _ = _err(capsys, "import", tmp_path / "new" / "p", tmp_path / "img", "--labels", tmp_path / "l.csv",
                   "--split-column", "split")
    assert code == 1 and (tmp_path / "new" / "p" / "loff-project.json").is_file()


def test_grey_pictures_stored_as_rgb_are_not_counted_as_converted_to_grey(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        grey = np.clip(rng.normal(120, 40, (48, 40)), 0, 255).astype(np.uint8)
        (tmp_path / "img" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "img" / "a" / f"g{i}.jpg", quality=85)
        Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "img" / "a" / f"g{i}.png")
    colour = np.zeros((48, 40, 3), np.uint8)
    colour[..., 0] = 200
    colour[..., 2] = 30
    (tmp_path / "img" / "b").mkdir()
    Image.fromarray(colour).save(tmp_path / "img" / "b" / "red.jpg", quality=85)
    out = loff_json(capsys, "import", tmp_path / "p", tmp_path / "img")
    colour_warnings = [w for w in out["warnings"] if "converted to grey" in w]
    assert len(colour_warnings) == 1 and colour_warnings[0].startswith("1 RGB (colour) images"), out["warnings"]
    assert "red.jpg" in colour_warnings[0]


def test_an_image_listed_for_two_splits_is_named_with_the_split_that_won(tmp_path, capsys):
    train, test = ["file,label"], ["file,label"]
    for i in range(8):
        _png(tmp_path / "img" / f"{i}.png", 20 * i)
        (train if i < 5 else test).append(f"{i}.png,{'ab'[i % 2]}")
    test += ["1.png,b", "2.png,a"]  # also in train.csv
    (tmp_path / "train.csv").write_text("\n".join(train) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(test) + "\n")
    out = loff_json(capsys, "import", tmp_path / "p", tmp_path / "img", "--labels", f"train={tmp_path / 'train.csv'}",
                    "--labels", f"test={tmp_path / 'test.csv'}")
    assert not any("duplicate rows" in w for w in out["warnings"]), out["warnings"]
    two = [w for w in out["warnings"] if "listed for two splits" in w]
    assert len(two) == 1, out["warnings"]
    assert two[0].startswith("2 images are listed for two splits") and "1.png (train.csv: train, test.csv: test)" in two[0]
    assert "2 stay in train (not in test)" in two[0]


def test_byte_identical_images_in_two_splits_are_warned_about(tmp_path, capsys):
    n = 0
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(4):
                n += 1
                _png(tmp_path / "img" / split / cls / f"{split}{i}.png", n)
    shutil.copy(tmp_path / "img" / "train" / "a" / "train1.png", tmp_path / "img" / "test" / "a" / "copy.png")
    out = loff_json(capsys, "import", tmp_path / "p", tmp_path / "img")
    copies = [w for w in out["warnings"] if "byte-identical" in w]
    assert len(copies) == 1 and copies[0].startswith("1 images are byte-identical"), out["warnings"]
    assert "train/a/train1.png = test/a/copy.png" in copies[0]


def test_cv_refuses_a_class_with_one_image_and_says_why(tmp_path, capsys):
    project = binary_png_project(tmp_path, capsys, normal=14, pneumonia=1)
    code, err = _err(capsys, "cv", project, "--folds", "2", "--epochs", "1", "--head", "linear")
    assert code == 1, err
    assert "at least two patients of every class" in err and "pneumonia" in err
    assert not (project / "groups").exists() or not any((project / "groups").iterdir())


@pytest.mark.parametrize("value", ['"2"', "true", "1.5", "0", "null"])
def test_a_schema_version_of_the_wrong_type_is_named_as_such(tmp_path, capsys, value):
    loff_json(capsys, "demo", tmp_path / "p", "--patients", "2")
    path = tmp_path / "p" / "loff-project.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data).replace('"schema_version": 2', f'"schema_version": {value}'))
    code, err = _err(capsys, "info", tmp_path / "p")
    assert code == 1 and "has no schema_version" not in err, err
    assert "schema_version must be a whole number" in err and value.strip('"') in err


def test_a_missing_giant_backbone_is_refused_before_it_is_built(monkeypatch):
    import loff_core.backbones as backbones
    import loff_core.models as models
    from loff_core.backbones import BackboneSpec, load_backbone
    from loff_core.errors import BackboneError

    built = []

    def create_model(*args, **kwargs):  # a ViT-g would take GBs and tens of seconds here
        built.append(args[0])
        raise MemoryError("the model was built before its weights were looked for")
    monkeypatch.setattr(models, "create_model", create_model)
    monkeypatch.setattr(backbones, "cached_weights_file", lambda name: None)
    with pytest.raises(BackboneError, match="no weights for vit_giant_patch14_dinov2"):
        load_backbone(BackboneSpec(name="vit_giant_patch14_dinov2.lvd142m"), device="cpu")
    assert built == []


def test_the_demo_records_no_temporary_folder(tmp_path, capsys):
    loff_json(capsys, "demo", tmp_path / "demo", "--patients", "2")
    for name in ("loff-project.json", "import-report.json"):
        text = (tmp_path / "demo" / name).read_text()
        assert ".partial" not in text, (name, text)
    report = json.loads((tmp_path / "demo" / "import-report.json").read_text())
    assert report["images_root"] == str(tmp_path / "demo" / "images")
