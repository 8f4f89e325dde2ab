"""Bad input never crashes and is always named: a corpus of more than 20 kinds of bad
files and folders goes through `loff import` and `loff extract`; every good file is
imported and every bad one is listed with a reason a person understands. Plus a fuzz
test of the DICOM reader over mutated files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from loff_core.cli import main
from loff_cli import loff_json
from loff_core.errors import UnreadableImage
from loff_core.images import load_pixels, read_info
from loff_core.synthetic import write_synthetic_dataset

TINY = ["--backbone", "vit_tiny_patch16_224", "--random-init", "--image-size", "32", "--grid", "2",
        "--workers", "0", "--batch-size", "8"]


def _mutate(src: Path, dst: Path, **changes) -> Path:
    ds = pydicom.dcmread(src)
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(dst)
    return dst


def _no_pixels(dst: Path, sop_class: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.save_as(dst, enforce_file_format=True)
    return dst


def build_corpus(root: Path) -> tuple[Path, dict[str, str], list[str]]:
    """Good images plus one file (or folder) per kind of bad input.
    Returns the folder, {bad path: expected words in the reason} and the good paths that
    must be imported."""
    images = root / "site"
    write_synthetic_dataset(images / "good", n_patients=4, size=(48, 40), seed=1)
    (images / "good" / "labels.csv").unlink()
    src = images / "good" / "SYN-0001" / "SYN-0001_L_CC.dcm"  # the uncompressed one
    assert pydicom.dcmread(src).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    bad = images / "bad"
    bad.mkdir()
    expect: dict[str, str] = {}

    def add(name: str, words: str) -> Path:
        expect[f"bad/{name}"] = words
        return bad / name

    add("zero.dcm", "empty file").write_bytes(b"")
    add("truncated.dcm", "truncated|damaged").write_bytes(src.read_bytes()[:200])
    add("preamble-only.dcm", "truncated|damaged|not a DICOM").write_bytes(b"\0" * 128 + b"DICM")
    add("random.dcm", "not a DICOM").write_bytes(np.random.default_rng(0).bytes(4000))
    _no_pixels(add("report-sr.dcm", "no pixel data"), "1.2.840.10008.5.1.4.1.1.88.11")
    _no_pixels(add("presentation-state.dcm", "no pixel data"), "1.2.840.10008.5.1.4.1.1.11.1")
    _mutate(src, add("bits.dcm", "BitsStored 17 > BitsAllocated 16"), BitsStored=17)
    _mutate(src, add("huge.dcm", "too large"), Rows=60000, Columns=60000)
    _mutate(src, add("norows.dcm", "no image size"), Rows=0)
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    ds.save_as(add("unknown-syntax.dcm", "unknown transfer syntax"))
    add("corrupt.png", "not a readable PNG|damaged").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    png = bad / "_t.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(png)
    (bad / "truncated.png").write_bytes(png.read_bytes()[:120])  # header fine: found at extraction
    png.unlink()
    add("fake.jpg", "not a readable JPEG").write_text("this is text, not a JPEG")
    add("garbage.nii.gz", "not a readable nifti").write_bytes(b"\x1f\x8b" + b"0" * 64)
    os.symlink("loop-b.dcm", bad / "loop-a.dcm")
    os.symlink("loop-a.dcm", bad / "loop-b.dcm")
    expect["bad/loop-a.dcm"] = expect["bad/loop-b.dcm"] = "symbolic link"
    os.symlink("nowhere.dcm", add("dangling.dcm", "symbolic link"))
    denied = add("denied.dcm", "permission denied")
    shutil.copy(src, denied)
    os.chmod(denied, 0)
    # decodes only at extraction: the header is fine, the pixel data lie
    raw = src.read_bytes()  # says RLE Lossless, holds raw pixels (patched in place: pydicom won't write it)
    assert raw.count(b"1.2.840.10008.1.2.1\0") == 1
    (bad / "lying-syntax.dcm").write_bytes(raw.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0"))
    ds = pydicom.dcmread(src)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(bad / "short-pixels.dcm")
    late = {"bad/lying-syntax.dcm": "decoded|decod", "bad/short-pixels.dcm": "decoded|decod|length|size",
            "bad/truncated.png": "truncated|damaged"}

    # unusual but good: kept, with what is done with them said in warnings or the catalog
    odd = images / "odd"
    odd.mkdir()
    shutil.copy(get_testdata_file("emri_small.dcm"), odd / "tomo-multiframe.dcm")  # central frame
    shutil.copy(get_testdata_file("SC_rgb.dcm"), odd / "rgb.dcm")  # luminance
    _mutate(src, odd / "zero-spacing.dcm", PixelSpacing=[0, 0])  # kept, spacing unknown
    shutil.copy(src, odd / ("x" * 200 + ".dcm"))  # very long name
    shutil.copy(src, os.fsencode(odd) + b"/caf\xe9-latin1.dcm")  # not UTF-8
    (images / "empty-folder").mkdir()
    good = sorted(p.relative_to(images).as_posix() for p in (images / "good").rglob("*.dcm"))
    return images, {**expect, **late}, good


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))




def test_import_and_extract_name_every_bad_file(corpus, tmp_path, capsys, monkeypatch):
    images, expect, good = corpus
    real_access = os.access
    # tests run as root here, where chmod 000 does not stop reading: make the OS say no
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).endswith("denied.dcm")
                        else real_access(p, mode, **kw))
    project = tmp_path / "p"
    out = loff_json(capsys, "import", project, images)
    failed = {f["path"]: f["reason"] for f in out["failed"]}
    late = ("bad/lying-syntax.dcm", "bad/short-pixels.dcm", "bad/truncated.png")
    import_time = {k: v for k, v in expect.items() if k not in late}
    assert len(expect) >= 20
    for path, words in import_time.items():
        assert path in failed, f"{path} not reported; reported: {sorted(failed)}"
        assert any(w.lower() in failed[path].lower() for w in words.split("|")), (path, failed[path])
    catalog = (project / "catalog.csv").read_text(encoding="utf-8", errors="surrogateescape")
    for rel in good:
        assert rel in catalog
    assert out["imported"] == len(good) + 3 + 5  # + 3 with good headers, bad data + 5 odd-but-good files
    assert any("multi-frame" in w and "central frame" in w for w in out["warnings"])
    rgb = [w for w in out["warnings"] if "RGB" in w]  # SC_rgb.dcm: what is done with its colour is said
    assert len(rgb) == 1 and "converted to grey (luminance)" in rgb[0] and "odd/rgb.dcm" in rgb[0], out["warnings"]

    ext = loff_json(capsys, "extract", project, *TINY)
    ext_failed = {f["path"]: f["reason"] for f in ext["failed"]}
    for name in ("lying-syntax.dcm", "short-pixels.dcm", "truncated.png"):
        hit = [r for p, r in ext_failed.items() if p.endswith(name)]
        assert hit and any(w in hit[0].lower() for w in expect[f"bad/{name}"].split("|")), (name, ext_failed)
    assert ext["images"] == out["imported"] - 3
    # the report the app shows lists the late failures too
    report = json.loads((project / "import-report.json").read_text())
    assert set(late) <= {f["path"] for f in report["failed"]}


def test_empty_folder_imports_nothing_cleanly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = loff_json(capsys, "import", tmp_path / "p", tmp_path / "empty")
    assert out["imported"] == 0 and out["failed"] == []


def test_labels_csv_problems_become_warnings(tmp_path, capsys):
    labels = write_synthetic_dataset(tmp_path / "img", n_patients=4, size=(48, 40), seed=2)
    rows = labels.read_text().splitlines()
    rows += [rows[1], rows[2].rsplit(",", 2)[0] + ",7," + rows[2].rsplit(",", 1)[1],  # duplicate + conflict
             "nowhere/missing.dcm,3,SYN-9999", rows[3].split(",")[0] + ",,SYN-0002"]
    (tmp_path / "labels.csv").write_text("\n".join(rows[:5] + rows[6:]) + "\n")  # row 5's image has no row
    out = loff_json(capsys, "import", tmp_path / "p", tmp_path / "img", "--labels", tmp_path / "labels.csv",
                "--label-column", "masking_level", "--classes", "1,2,3,4,5,6,7,8")
    text = " ".join(out["warnings"])
    assert "1 rows name no image" in text and "missing.dcm" in text
    assert "duplicate rows" in text and "conflicting labels" in text
    assert "have no row" in text
    assert out["imported"] == 8 and out["failed"] == []


def test_unknown_labels_csv_column_is_a_clear_error(tmp_path, capsys):
    labels = write_synthetic_dataset(tmp_path / "img", n_patients=2, size=(48, 40), seed=2)
    code = main(["import", str(tmp_path / "p"), str(tmp_path / "img"), "--labels", str(labels),
                 "--label-column", "density", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "no label column 'density'" in err and "masking_level" in err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_dicoms_never_crash_the_reader(tmp_path_factory, data):
    """Random truncations and byte flips of real DICOMs: the reader either decodes an image
    in [0, 1] or raises UnreadableImage with a reason; never anything else."""
    sources = [get_testdata_file(n) for n in ("MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "CT_small.dcm")]
    raw = bytearray(Path(data.draw(st.sampled_from(sources))).read_bytes())
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=12))
    for pos, value in flips:
        raw[pos] = value
    path = tmp_path_factory.mktemp("fuzz") / "f.dcm"
    path.write_bytes(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))
    for fn in (read_info, load_pixels):
        try:
            out = fn(path)
        except UnreadableImage as exc:
            assert exc.reason and str(path) in str(exc)
            continue
        if fn is load_pixels:
            assert out.ndim == 2 and out.dtype == np.float32 and np.all((out >= 0) & (out <= 1))
