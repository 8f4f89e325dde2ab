"""Decode one image file: DICOM (compressed transfer syntaxes included), PNG / JPEG /
TIFF / PGM, and NIfTI / MHA / NRRD volumes.

`read_info` reads only the header (fast, used by the import scan); `load_pixels` returns
the image as float32 `H x W` in [0, 1] with bright = dense: DICOM modality LUT, then VOI
LUT or window, then MONOCHROME1 inverted; 12-16 bit precision is kept until the final
scaling. Scaling to [0, 1]: DICOM, volumes and rasters with more than 8 bits (16-bit PNG /
TIFF, 32-bit integer or float) are stretched from their own minimum to their maximum after
the LUTs, so 12-bit data in a 16-bit PNG spans [0, 1] just as the same DICOM does; 8-bit
rasters (already windowed for display) are divided by 255. Multi-frame images
(tomosynthesis) give their central frame; colour images their luminance. Every problem
becomes `UnreadableImage(path, reason)` with a reason a person understands; nothing
here ever puts a patient identifier in a message.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import UnreadableImage

MAX_PIXELS = 200_000_000  # rows x cols x frames x samples; a 60000 x 60000 header is refused before decoding
# Bounded decode memory. A file decodes at its storage depth (1 byte a pixel for 1-bit,
# palette and 8-bit grey; colour made grey row band by row band), float64 only for one
# band of STRIPE_BYTES at a time, float32 out. An image whose longer side exceeds
# `decode_max_side(model input size)` is downsampled while it is decoded (JPEG: by the
# decoder itself, draft mode; others: block means, band by band), so the float32 result
# is at most decode_max_side^2 x 4 bytes (256 MiB). Images up to that size decode exactly
# as before (bit for bit). Images above BIG_DECODE_PIXELS decode one at a time across all
# processes of this user (a file lock), so W decode workers peak at about
# (W - 1) x a normal image + 1 x a big one, not W x a big one.
STRIPE_BYTES = 8 << 20
DECODE_MAX_SIDE_MIN = 8192
BIG_DECODE_PIXELS = 40_000_000


def decode_max_side(image_size: Optional[int]) -> Optional[int]:
    """The longest side an image is decoded at for a model of this input size (None: no cap)."""
    return None if image_size is None else max(DECODE_MAX_SIDE_MIN, 16 * int(image_size))

DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm", ".pnm", ".bmp")
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
IMAGE_EXTENSIONS = DICOM_EXTENSIONS + RASTER_EXTENSIONS + VOLUME_EXTENSIONS


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "dicom" | "png" | "jpeg" | "tiff" | "pgm" | "bmp" | "nifti" | "mha" | "nrrd"
    rows: int
    cols: int
    frames: int = 1
    modality: Optional[str] = None
    view: Optional[str] = None
    laterality: Optional[str] = None
    pixel_spacing: Optional[tuple[float, float]] = None
    sop_instance_uid: Optional[str] = None
    photometric: Optional[str] = None
    transfer_syntax: Optional[str] = None
    bits_stored: Optional[int] = None
    samples: int = 1
    # raw PatientID: in memory only, to compute the salted patient key; never written or shown
    patient_id: Optional[str] = field(default=None, repr=False, compare=False)
    # parts of the raw PatientName (family, given, ...): in memory only, to keep them out of
    # the paths the app shows (`catalog.mask_identifiers`)
    patient_names: tuple[str, ...] = field(default=(), repr=False, compare=False)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def special_file_reason(path: Path | str) -> Optional[str]:
    """Why `path` is no file to read (a named pipe, socket or device, which would block or
    stream forever when opened), found without opening it; None for a regular file (or a
    path that cannot be looked at: that is reported where it is read)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device file" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    return f"not a regular file but {kind}; skipped without reading it"


def _has_dicom_magic(path: Path) -> bool:
    if special_file_reason(path) is not None:
        return False  # opening a FIFO would wait forever for a writer
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_image_candidate(path: Path) -> bool:
    """By extension (case-insensitive), or an extension-less file with the DICOM magic."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in IMAGE_EXTENSIONS:
        return True
    return suffix == "" and _has_dicom_magic(path)


def _kind(path: Path) -> str:
    suffix = _suffix(path)
    if suffix in DICOM_EXTENSIONS or suffix == "":
        return "dicom"
    if suffix in (".png",):
        return "png"
    if suffix in (".jpg", ".jpeg"):
        return "jpeg"
    if suffix in (".tif", ".tiff"):
        return "tiff"
    if suffix in (".pgm", ".pnm"):
        return "pgm"
    if suffix == ".bmp":
        return "bmp"
    if suffix in (".nii", ".nii.gz"):
        return "nifti"
    if suffix in (".mha", ".mhd"):
        return "mha"
    if suffix == ".nrrd":
        return "nrrd"
    return "dicom"


def _basic_checks(path: Path) -> None:
    special = special_file_reason(path)
    if special is not None:
        raise UnreadableImage(path, special)
    try:
        size = path.stat().st_size
    except PermissionError:
        raise UnreadableImage(path, "permission denied") from None
    except OSError as exc:
        raise UnreadableImage(path, f"cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise UnreadableImage(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise UnreadableImage(path, "permission denied")


def _check_size(path: Path, rows: int, cols: int, frames: int = 1, samples: int = 1) -> None:
    if rows <= 0 or cols <= 0:
        raise UnreadableImage(path, f"image has no size ({rows} x {cols} pixels)")
    if rows * cols * max(frames, 1) * max(samples, 1) > MAX_PIXELS:
        raise UnreadableImage(path, f"image too large: the header claims {rows} x {cols} pixels"
                                    + (f" x {frames} frames" if frames > 1 else "")
                                    + f" (limit {MAX_PIXELS:,} pixels)")


# -- DICOM -----------------------------------------------------------------------------
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData


def _dcmread_header(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        # stop_before_pixels would hide whether pixel data exist; defer_size keeps big
        # values (the pixel data) on disk, so this still reads only the header
        return pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        raise UnreadableImage(path, "not a DICOM file (no DICOM header)") from None
    except PermissionError:
        raise UnreadableImage(path, "permission denied") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError, MemoryError,
            NotImplementedError, LookupError) as exc:
        raise UnreadableImage(path, f"truncated or damaged DICOM ({_short(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises a zoo of types on damaged files
        raise UnreadableImage(path, f"damaged DICOM ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _get(ds: Any, name: str) -> Any:
    try:
        return ds.get(name)
    except Exception:  # noqa: BLE001 - a damaged element reads as missing
        return None


def _decoder_available(uid: Any) -> bool:
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(uid).is_available)
    except Exception:  # noqa: BLE001 - NotImplementedError for syntaxes pydicom has no decoder for
        return False


# CBIS-DDSM names each image, not the woman, in PatientID: "Mass-Test_P_00173_LEFT_CC",
# "Calc-Training_P_00005_RIGHT_MLO", ROI / crop series with a suffix "_1"; P_00173 is the
# woman (the same number in the Mass and Calc collections), and the files lack ViewPosition
_CBIS_DDSM_ID = re.compile(r"(?:mass|calc)-(?:training|test)_(p_\d+)_(left|right)_(cc|mlo)(?:_\d+)?", re.IGNORECASE)


def cbis_ddsm_parts(patient_id: Optional[str]) -> Optional[tuple[str, str, str]]:
    """(patient, laterality, view) from a CBIS-DDSM per-image PatientID, e.g.
    ("P_00173", "L", "CC"); None for any other ID."""
    match = _CBIS_DDSM_ID.fullmatch(patient_id.strip()) if patient_id else None
    if match is None:
        return None
    patient, side, view = match.groups()
    return patient.upper(), side[0].upper(), view.upper()


def _dicom_info(path: Path) -> ImageInfo:
    from pydicom.uid import UID

    ds = _dcmread_header(path)
    if len(ds) == 0:
        raise UnreadableImage(path, "truncated DICOM: the file ends inside its header")
    if not any(tag in ds for tag in _PIXEL_TAGS):
        if _get(ds, "Rows") is not None or _get(ds, "BitsAllocated") is not None:
            raise UnreadableImage(path, "truncated DICOM: image attributes but the pixel data are missing "
                                        "(the file ends early)")
        sop_class = _get(ds, "SOPClassUID")
        name = UID(str(sop_class)).name if sop_class else ""
        if "image storage" in name.lower() and "presentation state" not in name.lower():
            raise UnreadableImage(path, f"truncated DICOM: an image ({name}) whose pixel data are missing "
                                        "(the file ends early)")
        what = f" ({name})" if name else ""
        raise UnreadableImage(path, f"no pixel data{what}; e.g. a structured report or presentation state")
    meta = getattr(ds, "file_meta", None)
    syntax = _get(meta, "TransferSyntaxUID") if meta is not None else None
    if syntax is not None:
        uid = UID(str(syntax).strip())
        if not uid.is_transfer_syntax:
            raise UnreadableImage(path, f"unknown transfer syntax {uid}")
        if not _decoder_available(uid):
            raise UnreadableImage(path, f"unsupported transfer syntax {uid} ({uid.name}): "
                                        "no installed decoder reads it")
    try:
        rows, cols = int(_get(ds, "Rows") or 0), int(_get(ds, "Columns") or 0)
        frames = int(_get(ds, "NumberOfFrames") or 1)
        samples = int(_get(ds, "SamplesPerPixel") or 1)
        bits_alloc = _get(ds, "BitsAllocated")
        bits_stored = _get(ds, "BitsStored")
    except (TypeError, ValueError) as exc:
        raise UnreadableImage(path, f"damaged image header ({_short(exc)})") from None
    if rows <= 0 or cols <= 0:
        raise UnreadableImage(path, "header has no image size (Rows / Columns missing or 0)")
    if bits_alloc is not None and bits_stored is not None and int(bits_stored) > int(bits_alloc):
        raise UnreadableImage(path, f"inconsistent header: BitsStored {bits_stored} > BitsAllocated {bits_alloc}")
    _check_size(path, rows, cols, frames, samples)
    spacing = None
    raw = _get(ds, "PixelSpacing") or _get(ds, "ImagerPixelSpacing")
    try:
        if raw is not None and len(raw) == 2:
            r, c = float(raw[0]), float(raw[1])
            spacing = (r, c) if r > 0 and c > 0 and np.isfinite(r) and np.isfinite(c) else None
    except (TypeError, ValueError):
        spacing = None
    view = _get(ds, "ViewPosition") or None
    if not view:
        seq = _get(ds, "ViewCodeSequence")
        try:
            meaning = str(seq[0].CodeMeaning).lower() if seq else ""
        except Exception:  # noqa: BLE001
            meaning = ""
        view = "CC" if "cranio-caudal" in meaning else "MLO" if "medio-lateral oblique" in meaning else None
    laterality = _get(ds, "ImageLaterality") or _get(ds, "Laterality") or None
    pid = _get(ds, "PatientID")
    cbis = cbis_ddsm_parts(str(pid)) if pid not in (None, "") else None
    if cbis is not None:  # the header's own view / laterality win; the ID fills the gaps
        laterality, view = laterality or cbis[1], view or cbis[2]
    return ImageInfo(
        format="dicom", rows=rows, cols=cols, frames=frames, samples=samples,
        modality=str(_get(ds, "Modality") or "") or None,
        view=str(view) if view else None, laterality=str(laterality) if laterality else None,
        pixel_spacing=spacing, sop_instance_uid=str(_get(ds, "SOPInstanceUID") or "") or None,
        photometric=str(_get(ds, "PhotometricInterpretation") or "") or None,
        transfer_syntax=str(syntax) if syntax else None,
        bits_stored=int(bits_stored) if bits_stored is not None else None,
        patient_id=str(pid).strip() if pid not in (None, "") else None,
        patient_names=tuple(part for part in re.split(r"[\^=\s,]+", str(_get(ds, "PatientName") or "")) if part),
    )


def _dicom_pixels(path: Path, max_side: Optional[int] = None) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    info = _dicom_info(path)  # all header checks first: nothing big is allocated for a bad header
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001
        raise UnreadableImage(path, f"damaged DICOM ({_short(exc)})") from None
    frame = info.frames // 2 if info.frames > 1 else None
    try:
        from pydicom.pixels import pixel_array

        # only the central frame is decoded; colour (YBR_FULL / YBR_FULL_422 included) comes
        # back as RGB, pydicom 3 converts it (as_rgb=True), so it is not converted again here
        arr = pixel_array(ds, index=frame)
    except (NotImplementedError, RuntimeError) as exc:
        msg = _short(exc)
        if "plugin" in msg.lower() or "decoder" in msg.lower() or "no pixel data handler" in msg.lower():
            from pydicom.uid import UID

            name = UID(info.transfer_syntax).name if info.transfer_syntax else "an unknown transfer syntax"
            raise UnreadableImage(path, f"compressed with {name}, which no installed decoder reads") from None
        raise UnreadableImage(path, f"pixel data cannot be decoded ({msg})") from None
    except (ValueError, EOFError, OSError, MemoryError, AttributeError, KeyError, TypeError, IndexError) as exc:
        raise UnreadableImage(path, f"pixel data cannot be decoded ({_short(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise various types on lying data
        raise UnreadableImage(path, f"pixel data cannot be decoded ({_short(exc)})") from None
    photometric = (info.photometric or "").upper()
    if info.samples > 1 or arr.ndim == 3:
        if arr.ndim != 3 or arr.shape[-1] < 3:
            raise UnreadableImage(path, f"unexpected colour pixel layout {arr.shape}")
        grey = _reduce(arr, 1, _luminance)  # band by band, float32
        return _finish(path, grey, invert=False, max_side=max_side)
    try:
        values = apply_modality_lut(arr, ds)
        if _has_voi(ds):
            values = apply_voi_lut(_voi_lut_input(values, ds), ds)
        values = np.asarray(values)
    except Exception as exc:  # noqa: BLE001
        raise UnreadableImage(path, f"LUT / window could not be applied ({_short(exc)})") from None
    return _finish(path, values, invert=photometric == "MONOCHROME1", max_side=max_side)


def _luminance(band: np.ndarray) -> np.ndarray:
    rgb = band.astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _has_voi(ds: Any) -> bool:
    return "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)


def _voi_lut_input(values: np.ndarray, ds: Any) -> np.ndarray:
    """The modality-LUT output as pydicom's VOI LUT expects it: integers (a LUT is indexed
    by stored values). Given floats, pydicom warns "Applying a VOI LUT on a float input
    array" for every image and truncates them to indices; the integer floor picks exactly
    the same entries (values above the LUT are clipped to its last entry first, as pydicom
    does after indexing), so the result is unchanged and the warning is not raised.
    Windowing (no usable VOI LUT Sequence) keeps the float values."""
    seq = _get(ds, "VOILUTSequence")
    try:
        item = seq[0]
        descriptor = item.get("LUTDescriptor")
        usable = descriptor is not None and item.get("LUTData") is not None
    except Exception:  # noqa: BLE001 - a damaged sequence is left to pydicom to refuse
        usable = False
    if not usable or np.issubdtype(values.dtype, np.integer) or not np.all(np.isfinite(values)):
        return values
    first_map, entries = int(descriptor[1]), int(descriptor[0]) or 2 ** 16
    return np.minimum(np.floor(values), first_map + entries - 1).astype(np.int64)


def _finish(path: Path, values: np.ndarray, *, invert: bool, max_side: Optional[int] = None) -> np.ndarray:
    """Stretch to [0, 1] from the image's own minimum to maximum; any input dtype, float32
    out, float64 only one band at a time (the same values as a whole-array float64 pass)."""
    if values.ndim != 2:
        values = np.squeeze(values)
        if values.ndim != 2:
            raise UnreadableImage(path, f"not a 2-D image (shape {values.shape})")
    values = _reduce(values, _factor(values.shape, max_side), lambda band: band.astype(np.float64), keep=True)
    if values.dtype.kind == "f":
        for r0, r1 in _bands(values.shape, 8):
            if not np.all(np.isfinite(values[r0:r1])):
                raise UnreadableImage(path, "pixel values are not finite (NaN or infinity)")
    lo, hi = float(values.min()), float(values.max())
    out = np.zeros(values.shape, np.float32)
    if hi > lo:
        for r0, r1 in _bands(values.shape, 8):
            band = (values[r0:r1].astype(np.float64) - lo) / (hi - lo)
            out[r0:r1] = 1.0 - band.astype(np.float32) if invert else band
    return out


def _bands(shape: tuple[int, ...], bytes_per_value: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Row ranges of about STRIPE_BYTES each (a multiple of `multiple` rows)."""
    row_bytes = max(1, int(np.prod(shape[1:])) * bytes_per_value)
    step = max(1, STRIPE_BYTES // (row_bytes * multiple)) * multiple
    return [(r, min(r + step, shape[0])) for r in range(0, shape[0], step)]


def _factor(shape: tuple[int, ...], max_side: Optional[int]) -> int:
    longest = max(shape[0], shape[1])
    return 1 if max_side is None or longest <= max_side else -(-longest // max_side)


def _reduce(raw: np.ndarray, factor: int, to_float: Any, *, keep: bool = False) -> np.ndarray:
    """to_float(band) (float64 grey of a band of rows) for the whole image, float32, with
    `factor` x `factor` block means when factor > 1 (the last partial blocks dropped);
    keep=True and factor 1: `raw` itself (nothing to convert yet)."""
    if factor == 1 and keep:
        return raw
    h, w = raw.shape[:2]
    oh, ow = max(1, h // factor), max(1, w // factor)
    out = np.empty((oh, ow), np.float32)
    for r0, r1 in _bands((oh * factor, *raw.shape[1:]), 8 * (raw.shape[2] if raw.ndim == 3 else 1), factor):
        band = to_float(raw[r0:r1])
        if factor > 1:
            n = (r1 - r0) // factor
            # strided slices added up: much faster than mean over a reshaped (.., factor) axis
            band = band[:n * factor, :ow * factor]
            cols = sum(band[:, k::factor] for k in range(factor))
            band = sum(cols[k::factor] for k in range(factor)) / (factor * factor)
        out[r0 // factor:r0 // factor + len(band)] = band
    return out


# -- rasters and volumes ---------------------------------------------------------------
def _open_raster(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our own MAX_PIXELS check below replaces Pillow's warning
    try:
        return Image.open(path)
    except PermissionError:
        raise UnreadableImage(path, "permission denied") from None
    except UnidentifiedImageError:
        raise UnreadableImage(path, f"not a readable {_kind(path).upper()} image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableImage(path, f"damaged image ({_short(exc)})") from None


def _raster_info(path: Path) -> ImageInfo:
    img = _open_raster(path)
    with img:
        cols, rows = img.size
        frames = int(getattr(img, "n_frames", 1) or 1)
        _check_size(path, rows, cols, 1, len(img.getbands()))
        return ImageInfo(format=_kind(path), rows=rows, cols=cols, frames=frames, photometric=img.mode)


_GREY_LUT = np.arange(256, dtype=np.float64) / 255.0


def _raster_pixels(path: Path, max_side: Optional[int] = None) -> np.ndarray:
    info = _raster_info(path)
    img = _open_raster(path)
    try:
        with img:
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames > 1:
                img.seek(frames // 2)
            factor = _factor((info.rows, info.cols), max_side)
            if factor > 1 and img.format == "JPEG":
                # the decoder downsamples (DCT scaling, up to 1/8): never the full size in memory
                img.draft("L", (max(1, info.cols // factor), max(1, info.rows // factor)))
            img.load()
            factor = _factor((img.size[1], img.size[0]), max_side)
            mode = img.mode
            if mode in ("L", "P", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "1", "PA", "La", "RGBa", "LAB", "HSV"):
                # 8-bit rasters keep /255, not the DICOM min-max stretch: they are display-ready
                # exports (already windowed to 0..255, as a DICOM export would be) whose full
                # scale is the bit depth itself, and stretching would change brightness, and so
                # density, between otherwise identical 8-bit scans (mini-MIAS)
                if mode in ("CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa"):
                    img = img.convert("RGB")
                    mode = "RGB"
                raw = np.asarray(img)  # storage depth: 1 byte a pixel (x channels)
                if mode in ("P", "PA"):  # palette index -> the palette colour's luminance
                    palette = (img.getpalette("RGB") or []) + [0] * 768
                    rgb = np.asarray(palette[:768], dtype=np.float64).reshape(256, 3)
                    lut = np.clip((rgb[:, 0] * 0.299 + rgb[:, 1] * 0.587 + rgb[:, 2] * 0.114) / 255.0, 0, 1)
                    to_float = (lambda band: lut[band[..., 0] if band.ndim == 3 else band])
                elif mode == "1":
                    to_float = (lambda band: band.astype(np.float64))
                elif raw.ndim == 3 and raw.shape[-1] >= 3:
                    to_float = (lambda band: np.clip(_luminance(band) / 255.0, 0, 1))
                else:  # L, LA: the grey channel
                    to_float = (lambda band: _GREY_LUT[band[..., 0] if band.ndim == 3 else band])
                return _reduce(raw, factor, to_float)
            arr = np.asarray(img)
    except UnreadableImage:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UnreadableImage(path, f"damaged or truncated image ({_short(exc)})") from None
    # more than 8 bits (I;16, I, F): stretched to the image's own value range like DICOM;
    # /65535 would leave 12-bit data stored in a 16-bit PNG in [0, 0.0625], nearly black
    return _finish(path, arr, invert=False, max_side=max_side)


def colour_channels_differ(path: Path | str, tolerance: int = 3) -> bool:
    """Whether a colour raster really has colour: a grey picture stored as RGB (common for
    JPEG exports) has equal channels, up to `tolerance` for JPEG's rounding. JPEGs are
    read at 1/8 size by the decoder (cheap at import); anything that cannot be checked
    counts as colour (the warning is kept)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            rgb = np.asarray(img.convert("RGB"))  # uint8; compared band by band
    except Exception:  # noqa: BLE001 - unreadable here: reported when it is decoded
        return True
    limit = tolerance if getattr(img, "format", None) == "JPEG" else 0
    for r0, r1 in _bands(rgb.shape, 2):
        band = rgb[r0:r1].astype(np.int16)
        if int(np.abs(band[..., 0] - band[..., 1]).max(initial=0)) > limit \
                or int(np.abs(band[..., 1] - band[..., 2]).max(initial=0)) > limit:
            return True
    return False


def _volume_info(path: Path) -> ImageInfo:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UnreadableImage(path, f"not a readable {_kind(path)} volume ({_short(exc).split(':')[-1].strip()})") from None
    size = reader.GetSize()
    cols, rows = int(size[0]), int(size[1]) if len(size) > 1 else 1
    frames = int(size[2]) if len(size) > 2 else 1
    _check_size(path, rows, cols, frames, reader.GetNumberOfComponents())
    spacing = reader.GetSpacing()
    return ImageInfo(format=_kind(path), rows=rows, cols=cols, frames=frames,
                     pixel_spacing=(float(spacing[1]), float(spacing[0])) if len(spacing) > 1 else None)


def _volume_pixels(path: Path, max_side: Optional[int] = None) -> np.ndarray:
    import SimpleITK as sitk

    _volume_info(path)
    try:
        image = sitk.ReadImage(str(path))
        components = image.GetNumberOfComponentsPerPixel()
        arr = sitk.GetArrayFromImage(image)  # [z, y, x] (+ components)
    except RuntimeError as exc:
        raise UnreadableImage(path, f"volume cannot be decoded ({_short(exc).split(':')[-1].strip()})") from None
    if components > 1 and arr.ndim >= 3:
        arr = arr.mean(axis=-1)  # vector pixels: their mean
    while arr.ndim > 2:  # [.., z, y, x]: the central slice along z (and t)
        arr = arr[arr.shape[0] // 2]
    return _finish(path, arr, invert=False, max_side=max_side)


def _decode_slot(path: Path, kind: str) -> Any:
    """A big image (above BIG_DECODE_PIXELS) decodes only while holding this user's one
    big-decode file lock, so parallel decode workers never hold several at once."""
    import contextlib

    info = read_info(path)  # header only
    pixels = info.rows * info.cols * max(1, info.samples)
    if pixels <= BIG_DECODE_PIXELS:
        return contextlib.nullcontext()
    import tempfile

    from filelock import FileLock

    uid = os.getuid() if hasattr(os, "getuid") else 0
    return FileLock(os.path.join(tempfile.gettempdir(), f"loff-big-decode-{uid}.lock"), is_singleton=False)


# -- public ----------------------------------------------------------------------------
def read_info(path: Path | str) -> ImageInfo:
    """Header only; raises UnreadableImage with the reason."""
    path = Path(path)
    _basic_checks(path)
    kind = _kind(path)
    try:
        if kind == "dicom":
            return _dicom_info(path)
        if kind in ("nifti", "mha", "nrrd"):
            return _volume_info(path)
        return _raster_info(path)
    except UnreadableImage:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a bad header never crashes an import
        raise UnreadableImage(path, f"unreadable header ({type(exc).__name__}: {_short(exc)})") from None


def load_pixels(path: Path | str, max_side: Optional[int] = None) -> np.ndarray:
    """float32 H x W in [0, 1], bright = dense; raises UnreadableImage with the reason.

    max_side: downsample while decoding so the longer side is at most this (block means;
    see `decode_max_side`); None decodes at full size."""
    path = Path(path)
    _basic_checks(path)
    kind = _kind(path)
    try:
        with _decode_slot(path, kind):
            if kind == "dicom":
                return _dicom_pixels(path, max_side)
            if kind in ("nifti", "mha", "nrrd"):
                return _volume_pixels(path, max_side)
            return _raster_pixels(path, max_side)
    except UnreadableImage:
        raise
    except MemoryError:
        raise UnreadableImage(path, "not enough memory to decode the image") from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - last line of defence, also for decoder panics
        # (Rust decoders raise pyo3 PanicException, a BaseException, on some damaged data)
        raise UnreadableImage(path, f"cannot be decoded ({type(exc).__name__}: {_short(exc)})") from None
