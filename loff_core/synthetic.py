"""Synthetic mammogram-like DICOMs with a learnable masking level (demo project, tests).

Each made-up patient has a masking level 1-8 (as in CSAW-M) shared by both views. The
level drives what is visible: the fraction of the breast covered by bright, smooth dense
tissue grows with it, so a classifier on backbone features can learn it. The files
exercise the decoder: transfer syntaxes (uncompressed, RLE, JPEG 2000, JPEG-LS lossless)
and photometric interpretations (MONOCHROME2, and MONOCHROME1 stored inverted) cycle
over the images; 12 bits stored in 16. Every file says SYNTHETIC in SeriesDescription
and ImageComments; patient names and IDs such as SYN-0001 are invented.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# Every one of these encodes in this environment (RLE: pydicom's own encoder; JPEG 2000:
# pylibjpeg-openjpeg; JPEG-LS: pyjpegls / gdcm); tests/test_images.py decodes each against
# its uncompressed twin, so a missing encoder shows up there rather than in the demo.
DEFAULT_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
)
DEFAULT_PHOTOMETRICS = ("MONOCHROME2", "MONOCHROME1")
_J2K = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
MAX_VALUE = 4095  # 12 bits stored


def synthetic_breast(rng: np.random.Generator, level: int, size: tuple[int, int], right: bool) -> np.ndarray:
    """A float image in [0, 1]: breast half-ellipse, texture, level-driven dense tissue."""
    from scipy import ndimage

    rows, cols = size
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy = rows / 2 + rng.uniform(-0.05, 0.05) * rows
    ry = rows * rng.uniform(0.40, 0.47)
    rx = cols * rng.uniform(0.70, 0.90)
    breast = ((yy - cy) / ry) ** 2 + (xx / rx) ** 2 <= 1.0
    # fatty background tissue with a soft fall-off towards the skin line
    depth = np.clip(1.0 - np.sqrt(((yy - cy) / ry) ** 2 + (xx / rx) ** 2), 0, 1)
    texture = ndimage.gaussian_filter(rng.normal(size=size), sigma=max(1.0, rows / 60))
    texture /= np.abs(texture).max() + 1e-6
    image = np.where(breast, 0.25 + 0.10 * depth + 0.05 * texture, 0.0)
    # dense tissue: smooth blobs thresholded to cover a level-driven share of the breast
    fraction = float(np.clip(0.06 + 0.11 * (level - 1) + rng.normal(0, 0.02), 0.02, 0.92))
    field = ndimage.gaussian_filter(rng.normal(size=size), sigma=max(2.0, rows / 16))
    field += 0.8 * depth * field.std()  # dense tissue sits towards the chest wall
    inside = field[breast]
    threshold = np.quantile(inside, 1.0 - fraction) if inside.size else 0.0
    dense = ndimage.gaussian_filter(((field > threshold) & breast).astype(np.float32), sigma=1.5)
    image = image + 0.45 * dense * breast
    # a few small bright masses
    for _ in range(int(rng.integers(0, 3))):
        my, mx = rng.uniform(0.3, 0.7) * rows, rng.uniform(0.1, 0.5) * cols
        r = rng.uniform(0.02, 0.05) * rows
        image += 0.15 * np.exp(-(((yy - my) ** 2 + (xx - mx) ** 2) / (2 * r * r))) * breast
    image += rng.normal(0, 0.01, size=size) * breast
    image = np.clip(image, 0.0, 1.0)
    return image[:, ::-1].copy() if right else image


def write_synthetic_dataset(folder: Path | str, n_patients: int = 24, views: Sequence[str] = ("CC", "MLO"),
                            size: tuple[int, int] = (256, 208), seed: int = 0,
                            syntaxes: Optional[Sequence[str]] = None,
                            photometrics: Optional[Sequence[str]] = None) -> Path:
    """Write `folder/<patient>/<patient>_<L|R>_<view>.dcm` and `folder/labels.csv`
    (columns file, masking_level, patient); returns the CSV's path. Deterministic for a seed."""
    from pydicom.dataset import FileMetaDataset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    syntaxes = tuple(syntaxes or DEFAULT_SYNTAXES)
    photometrics = tuple(photometrics or DEFAULT_PHOTOMETRICS)
    rng = np.random.default_rng(seed)
    levels = (np.arange(n_patients) % 8) + 1
    rng.shuffle(levels)
    rows: list[tuple[str, int, str]] = []
    index = 0
    for p in range(n_patients):
        patient = f"SYN-{p + 1:04d}"
        level = int(levels[p])
        right = p % 2 == 1
        for view in views:
            pixels = synthetic_breast(rng, level, size, right)
            syntax = syntaxes[index % len(syntaxes)]
            photometric = photometrics[(index // len(syntaxes)) % len(photometrics)]
            rel = f"{patient}/{patient}_{'R' if right else 'L'}_{view}.dcm"
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_dicom(path, pixels, patient, view, "R" if right else "L", syntax, photometric,
                         seed, p, index, FileMetaDataset)
            rows.append((rel, level, patient))
            index += 1
    labels = folder / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "masking_level", "patient"])
        writer.writerows(rows)
    return labels


def _write_dicom(path: Path, pixels: np.ndarray, patient: str, view: str, laterality: str, syntax: str,
                 photometric: str, seed: int, p: int, index: int, FileMetaDataset: type) -> None:
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, UID, generate_uid

    values = np.round(pixels * MAX_VALUE).astype(np.uint16)
    if photometric == "MONOCHROME1":
        values = (MAX_VALUE - values).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray (presentation)
    sop = generate_uid(entropy_srcs=["loff-synthetic", str(seed), str(p), view, str(index)])
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["loff-synthetic-study", str(seed), str(p)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["loff-synthetic-series", str(seed), str(p), view])
    ds.Modality = "MG"
    ds.PatientID = patient
    ds.PatientName = f"Synthetic^{patient[4:]}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.SeriesDescription = "SYNTHETIC - LOFF Studio demo"
    ds.ImageComments = "SYNTHETIC image generated by LOFF Studio; not a patient"
    ds.ViewPosition = view
    ds.ImageLaterality = laterality
    ds.PixelSpacing = [0.1, 0.1]
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = (MAX_VALUE + 1) // 2  # with width 4096 this maps 0..4095 linearly, no clipping
    ds.WindowWidth = MAX_VALUE + 1
    ds.PixelData = values.tobytes()
    if UID(syntax) in _J2K and min(values.shape) < 32:
        # openjpeg always uses 6 wavelet resolution levels, which need both sides >= 32
        # pixels: tiny test images of a JPEG 2000 slot are written uncompressed instead
        syntax = ExplicitVRLittleEndian
    if UID(syntax) != ExplicitVRLittleEndian:
        ds.compress(syntax, values, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
