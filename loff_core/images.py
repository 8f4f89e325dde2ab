"""Decode one image file: DICOM (compressed transfer syntaxes included), PNG / JPEG /
TIFF / PGM, and NIfTI / MHA / NRRD volumes.

`read_info` reads only the header (fast, used by the import scan); `load_pixels` returns
the image as float32 `H x W` in [0, 1] with bright = dense: DICOM modality LUT, then VOI
LUT or window, then MONOCHROME1 inverted; 12-16 bit precision is kept until the final
scaling. Scaling to [0, 1]: DICOM, volumes and rasters with more than 8 bits (16-bit PNG /
TIFF, 32-bit integer or float) are stretched from their own minimum to their maximum after
the LUTs, so 12-bit data in a 16-bit PNG spans [0, 1] just as the same DICOM does; 8-bit
rasters (already windowed for display) are divided by 255. Multi-frame images
(tomosynthesis) give their central frame; colour images their luminance. Memory is
bounded in bytes (see STREAM_DECODE_BYTES below): big uncompressed DICOMs and NIfTI slices
are read from the file band by band, and what cannot be is refused from its header when
its decode would need more than MAX_DECODE_BYTES. Every problem
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
# Bounded decode memory in bytes, not only pixels (issue 25): from the header, the bytes a
# whole-image decode would hold at its peak (the pixel data, the decoded frame, DICOM's
# modality LUT and window as float64, the float32 result; a volume's whole array, twice).
# Above STREAM_DECODE_BYTES, uncompressed DICOM (deflated included, one sample a pixel) and
# NIfTI are decoded in bands of rows straight from the file (inflated on the fly), each
# band through the same pydicom LUT functions, reduced while decoding (`decode_max_side`):
# the same values as the whole-image decode, at most the result plus a few bands in
# memory. What cannot be streamed (compressed DICOM, MHA / NRRD, colour) and needs more
# than MAX_DECODE_BYTES is refused with the arithmetic, before anything is allocated.
STREAM_DECODE_BYTES = 512 << 20
MAX_DECODE_BYTES = 768 << 20
HEADER_INFLATE_BYTES = 16 << 20  # a deflated DICOM's header is read from its first 16 MiB
DEFER_BYTES = 256 << 10  # values above this (the pixel data; not a VOI LUT) stay in the file


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


def _deflated_prefix(path: Path) -> Optional[tuple[Any, Any]]:
    """(file meta, the dataset read from the first HEADER_INFLATE_BYTES of the inflated
    stream) for a Deflated Explicit VR Little Endian file; None for any other file.
    pydicom inflates the whole file to read a deflated header (a 381 KB file inflates to
    392 MB): here only the start is inflated; big values (the pixel data) stay deferred
    with their offset in the inflated stream."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    with open(path, "rb") as fh:
        read_preamble(fh, False)
        meta = _read_file_meta_info(fh)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        data = bytearray()
        while len(data) < HEADER_INFLATE_BYTES:
            chunk = inflater.unconsumed_tail or fh.read(1 << 16)
            if not chunk:
                break
            data += inflater.decompress(chunk, HEADER_INFLATE_BYTES - len(data))
            if inflater.eof:
                break
    ds = read_dataset(DicomBytesIO(bytes(data)), False, True, defer_size=DEFER_BYTES)
    ds.file_meta = meta
    return meta, ds


def _dcmread_header(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        if _is_deflated(path):
            found = _deflated_prefix(path)
            if found is not None:
                return found[1]
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


def _is_deflated(path: Path) -> bool:
    """The file meta names the Deflated transfer syntax (a cheap look at the first 4 KiB)."""
    try:
        with open(path, "rb") as fh:
            return b"1.2.840.10008.1.2.1.99" in fh.read(4096)
    except OSError:
        return False


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
    return _dicom_header(path)[0]


def _dicom_header(path: Path) -> tuple[ImageInfo, Any]:
    """(ImageInfo, the header dataset): every header check; the dataset's big values (the
    pixel data) stay on disk until asked for, so a decode reads the header only once."""
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
    _check_dicom_bytes(path, ds, syntax, rows, cols, frames, samples, bits_alloc)
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
    ), ds


_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99")


def _dicom_bytes(ds: Any, syntax: Any, rows: int, cols: int, frames: int, samples: int,
                 bits_alloc: Any, file_size: int) -> tuple[int, bool]:
    """(bytes a whole-image decode holds at its peak, whether the file can be streamed)."""
    try:
        bytes_alloc = max(1, int(bits_alloc or 16) // 8)
    except (TypeError, ValueError):
        bytes_alloc = 2
    if 0x7FE00009 in ds:
        bytes_alloc = 8  # Double Float Pixel Data
    elif 0x7FE00008 in ds:
        bytes_alloc = 4
    frame_px = rows * cols * max(samples, 1)
    native = syntax is None or str(syntax).strip() in _NATIVE_SYNTAXES
    # the pixel data as read (all frames; compressed: about the file), the decoded frame,
    # (grey) the modality LUT and the window in float64 where the header has them, and the
    # float32 result
    stored = frames * frame_px * bytes_alloc if native else file_size
    whole = stored + frame_px * bytes_alloc + rows * cols * 4
    if samples <= 1:
        slope, intercept = _get(ds, "RescaleSlope"), _get(ds, "RescaleIntercept")
        rescaled = ("ModalityLUTSequence" in ds or slope not in (None, "", 1, 1.0)
                    or intercept not in (None, "", 0, 0.0) or bytes_alloc >= 4)
        whole += rows * cols * (8 * rescaled + 8 * _has_voi(ds))
    streamable = (native and str(syntax or "").strip() != "1.2.840.10008.1.2.2" and samples == 1
                  and bytes_alloc in (1, 2, 4) and int(bits_alloc or 0) in (8, 16, 32) and 0x7FE00010 in ds)
    return whole, streamable


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GB" if n >= 1 << 30 else f"{n >> 20} MB"


def _check_dicom_bytes(path: Path, ds: Any, syntax: Any, rows: int, cols: int, frames: int, samples: int,
                       bits_alloc: Any) -> None:
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    whole, streamable = _dicom_bytes(ds, syntax, rows, cols, frames, samples, bits_alloc, size)
    if streamable or whole <= MAX_DECODE_BYTES:
        return
    raise UnreadableImage(path, f"image too large to decode: {rows} x {cols} pixels"
                                + (f" x {samples} samples" if samples > 1 else "")
                                + (f" x {frames} frames" if frames > 1 else "")
                                + f" at {bits_alloc or '?'} bits would need about {_gib(whole)} "
                                  f"(limit {_gib(MAX_DECODE_BYTES)} for one image)")


class _Rows:
    """The rows of one frame of raw pixel data read straight from a file, band by band, in
    increasing order (as `_reduce` and `_stream_finish` ask for them): `src[r0:r1]` is the
    decoded band. `inflate`: the file's dataset is deflated (read through zlib on the fly)."""

    ndim = 2

    def __init__(self, path: Path, offset: int, rows: int, cols: int, row_bytes: int, decode: Any, *,
                 inflate_from: Optional[int] = None, gzip_file: bool = False):
        self.path, self.offset, self.shape = path, offset, (rows, cols)
        self.row_bytes, self.decode = row_bytes, decode
        self.inflate_from, self.gzip_file = inflate_from, gzip_file
        self._fh: Any = None
        self._pos = 0  # bytes of the (inflated) stream consumed
        self._inflater: Any = None

    def _open(self) -> None:
        import zlib

        if self.gzip_file:
            import gzip

            self._fh = gzip.open(self.path, "rb")
        else:
            self._fh = open(self.path, "rb")
        if self.inflate_from is not None:
            self._fh.seek(self.inflate_from)
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)

    def _read(self, n: int) -> bytes:
        """The next n bytes of the (inflated) stream."""
        if self._inflater is None:
            data = self._fh.read(n)
            self._pos += len(data)
            return data
        out = bytearray()
        while len(out) < n:
            chunk = self._inflater.unconsumed_tail or self._fh.read(1 << 16)
            if not chunk:
                break
            out += self._inflater.decompress(chunk, n - len(out))
            if self._inflater.eof:
                break
        self._pos += len(out)
        return bytes(out)

    def _skip_to(self, target: int) -> None:
        if self._inflater is None:
            self._fh.seek(target)
            self._pos = target
            return
        while self._pos < target:
            got = self._read(min(target - self._pos, STRIPE_BYTES))
            if not got:
                break

    def __getitem__(self, rows: slice) -> np.ndarray:
        r0, r1 = rows.start or 0, min(rows.stop, self.shape[0])
        if self._fh is None:
            self._open()
        start = self.offset + r0 * self.row_bytes
        if start < self._pos:
            raise RuntimeError("rows are read in increasing order")
        self._skip_to(start)
        need = (r1 - r0) * self.row_bytes
        data = self._read(need)
        if len(data) < need:
            raise UnreadableImage(self.path, "truncated: the pixel data end before the image does")
        return self.decode(data, r1 - r0)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _stream_finish(path: Path, open_rows: Any, to_float: Any, *, invert: bool,
                   max_side: Optional[int]) -> np.ndarray:
    """`_finish` of an image whose rows come from `open_rows()` (a fresh `_Rows`), without
    the whole image in memory: reduced while read when it is larger than `max_side` (the
    same block means as `_reduce` of the whole array), else two passes (minimum and
    maximum, then the stretch), the same values as `_finish` of the whole float64 array."""
    h, w = open_rows().shape
    factor = _factor((h, w), max_side)
    src = open_rows()
    try:
        if factor > 1:
            return _finish(path, _reduce(src, factor, to_float), invert=invert, max_side=max_side)
        lo, hi = np.inf, -np.inf
        for r0, r1 in _bands((h, w), 8):
            band = to_float(src[r0:r1])
            if not np.all(np.isfinite(band)):
                raise UnreadableImage(path, "pixel values are not finite (NaN or infinity)")
            lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
    finally:
        src.close()
    out = np.zeros((h, w), np.float32)
    if hi > lo:
        src = open_rows()
        try:
            for r0, r1 in _bands((h, w), 8):
                band = (to_float(src[r0:r1]) - lo) / (hi - lo)
                out[r0:r1] = 1.0 - band.astype(np.float32) if invert else band
        finally:
            src.close()
    return out


def _dicom_stream(path: Path, info: ImageInfo, max_side: Optional[int]) -> Optional[np.ndarray]:
    """A big uncompressed grey DICOM decoded band by band from the file (None: not
    streamable here; the whole-image decode is used)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
    from pydicom.uid import ExplicitVRLittleEndian

    deflated = _is_deflated(path) and _deflated_prefix(path)
    if deflated:
        meta, ds = deflated
        inflate_from = None
        with open(path, "rb") as fh:  # where the deflated stream starts: after the file meta
            from pydicom.filereader import _read_file_meta_info, read_preamble

            read_preamble(fh, False)
            _read_file_meta_info(fh)
            inflate_from = fh.tell()
    else:
        ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
        inflate_from = None
    syntax = _get(getattr(ds, "file_meta", None), "TransferSyntaxUID") if getattr(ds, "file_meta", None) else None
    whole, streamable = _dicom_bytes(ds, syntax, info.rows, info.cols, info.frames, info.samples,
                                     _get(ds, "BitsAllocated"), 0)
    if not streamable or whole <= STREAM_DECODE_BYTES:
        return None
    raw = ds._dict.get(0x7FE00010)
    value_tell = getattr(raw, "value_tell", None)
    bytes_alloc = int(ds.BitsAllocated) // 8
    row_bytes = info.cols * bytes_alloc
    frame_bytes = info.rows * row_bytes
    if value_tell is None or getattr(raw, "value", None) is not None or raw.length in (None, 0xFFFFFFFF) \
            or raw.length < frame_bytes * info.frames:
        return None
    frame = info.frames // 2 if info.frames > 1 else 0
    template = {k: _get(ds, k) for k in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                                          "PhotometricInterpretation")}

    def decode(data: bytes, n: int) -> np.ndarray:
        band = Dataset()
        band.file_meta = FileMetaDataset()
        band.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for k, v in template.items():
            if v is not None:
                setattr(band, k, v)
        band.SamplesPerPixel, band.Rows, band.Columns = 1, n, info.cols
        band.PixelData = data
        return pixel_array(band)

    def to_float(arr: np.ndarray) -> np.ndarray:
        values = apply_modality_lut(arr, ds)  # the same functions as the whole-image decode
        if _has_voi(ds):
            values = apply_voi_lut(_voi_lut_input(values, ds), ds)
        return np.asarray(values).astype(np.float64)

    def open_rows() -> _Rows:
        return _Rows(path, value_tell + frame * frame_bytes, info.rows, info.cols, row_bytes, decode,
                     inflate_from=inflate_from)

    photometric = (info.photometric or "").upper()
    try:
        return _stream_finish(path, open_rows, to_float, invert=photometric == "MONOCHROME1", max_side=max_side)
    except UnreadableImage:
        raise
    except Exception as exc:  # noqa: BLE001 - as the whole-image decode reports it
        raise UnreadableImage(path, f"pixel data cannot be decoded ({_short(exc)})") from None


def _dicom_pixels(path: Path, max_side: Optional[int] = None, header: Optional[tuple[ImageInfo, Any]] = None) -> np.ndarray:
    import pydicom
    from pydicom.dataset import FileDataset
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    # all header checks first: nothing big is allocated for a bad header
    info, header_ds = header if header is not None else _dicom_header(path)
    # at least 1 byte a stored pixel and 21 per decoded one: smaller images skip the look
    big = info.rows * info.cols * (info.frames + 21) > STREAM_DECODE_BYTES
    streamed = _dicom_stream(path, info, max_side) if info.samples == 1 and big else None
    if streamed is not None:
        return streamed
    try:
        # the header's dataset reads its deferred pixel data from the file when the decoder
        # asks (a deflated file's header came from an inflated prefix: read it whole)
        ds = header_ds if isinstance(header_ds, FileDataset) else pydicom.dcmread(path)
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


def _raster_pixels(path: Path, max_side: Optional[int] = None, info: Optional[ImageInfo] = None) -> np.ndarray:
    info = info or _raster_info(path)
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
    components = reader.GetNumberOfComponents()
    _check_size(path, rows, cols, frames, components)
    slices = int(np.prod([int(v) for v in size[2:]])) if len(size) > 2 else 1  # (z, t, ...): every voxel counts
    whole = _volume_bytes(reader, rows, cols, slices, components)
    if whole > MAX_DECODE_BYTES and _nifti_plan(path) is None:
        raise UnreadableImage(path, f"volume too large to decode: {cols} x {rows} x {slices} voxels"
                                    + (f" x {components} components" if components > 1 else "")
                                    + f" would need about {_gib(whole)} (limit {_gib(MAX_DECODE_BYTES)} for one image)")
    spacing = reader.GetSpacing()
    return ImageInfo(format=_kind(path), rows=rows, cols=cols, frames=frames,
                     pixel_spacing=(float(spacing[1]), float(spacing[0])) if len(spacing) > 1 else None)


def _voxel_bytes(reader: Any) -> int:
    import SimpleITK as sitk

    try:
        return int(sitk.GetArrayViewFromImage(sitk.Image([1, 1], reader.GetPixelID())).itemsize)
    except Exception:  # noqa: BLE001
        return 8


def _volume_bytes(reader: Any, rows: int, cols: int, frames: int, components: int) -> int:
    """Bytes SimpleITK's whole-volume read holds at its peak: the volume, its numpy copy,
    the central slice in float64 and the float32 result."""
    voxels = rows * cols * frames * max(components, 1)
    return 2 * voxels * _voxel_bytes(reader) + rows * cols * (8 + 4)


_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                1280: "u8"}


def _nifti_plan(path: Path) -> Optional[dict[str, Any]]:
    """Where a single-file NIfTI-1 / NIfTI-2 image's central slice lies (offset, rows, cols,
    dtype, scaling), from its header; None when it is no such file or has vector voxels."""
    import gzip
    import struct

    if _suffix(path) not in (".nii", ".nii.gz"):
        return None
    try:
        opener = gzip.open if _suffix(path) == ".nii.gz" else open
        with opener(path, "rb") as fh:
            head = fh.read(540)
    except (OSError, EOFError, ValueError):
        return None
    if len(head) < 348:
        return None
    for end in "<>":
        size = struct.unpack(end + "i", head[:4])[0]
        if size == 348 and head[344:347] == b"n+1":
            dims = struct.unpack(end + "8h", head[40:56])
            code, = struct.unpack(end + "h", head[70:72])
            offset = int(struct.unpack(end + "f", head[108:112])[0])
            slope, inter = (float(v) for v in struct.unpack(end + "2f", head[112:120]))
            break
        if size == 540 and len(head) >= 540 and head[4:7] == b"n+2":
            code, = struct.unpack(end + "h", head[12:14])
            dims = struct.unpack(end + "8q", head[16:80])
            offset, = struct.unpack(end + "q", head[168:176])
            slope, inter = struct.unpack(end + "2d", head[176:192])
            break
    else:
        return None
    n = dims[0]
    if code not in _NIFTI_TYPES or not 2 <= n <= 7 or any(d > 1 for d in dims[5:n + 1]) or offset < 0:
        return None
    cols, rows = int(dims[1]), int(dims[2])
    nz = int(dims[3]) if n >= 3 else 1
    nt = int(dims[4]) if n >= 4 else 1
    if min(cols, rows, nz, nt) < 1:
        return None
    dtype = np.dtype(end + _NIFTI_TYPES[code])
    # the central slice as the whole-volume decode takes it: [t, z, y, x] -> t // 2, z // 2
    index = (nt // 2) * nz + nz // 2
    scale = None if not np.isfinite(slope) or slope == 0 or (slope == 1 and inter == 0) else (slope, inter)
    return {"offset": offset + index * rows * cols * dtype.itemsize, "rows": rows, "cols": cols, "dtype": dtype,
            "scale": scale, "gzip": _suffix(path) == ".nii.gz"}


def _nifti_stream(path: Path, max_side: Optional[int]) -> Optional[np.ndarray]:
    """The central slice of a big NIfTI read band by band from the file (gzip inflated on
    the fly); None: decoded whole by SimpleITK as before."""
    import SimpleITK as sitk

    plan = _nifti_plan(path)
    if plan is None:
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    frames = int(np.prod([int(v) for v in size[2:]])) if len(size) > 2 else 1
    if _volume_bytes(reader, plan["rows"], plan["cols"], frames, reader.GetNumberOfComponents()) \
            <= STREAM_DECODE_BYTES:
        return None
    dtype, cols, scale = plan["dtype"], plan["cols"], plan["scale"]

    def decode(data: bytes, n: int) -> np.ndarray:
        return np.frombuffer(data, dtype=dtype).reshape(n, cols)

    def to_float(band: np.ndarray) -> np.ndarray:
        values = band.astype(np.float64)
        return values * scale[0] + scale[1] if scale else values

    def open_rows() -> _Rows:
        return _Rows(path, plan["offset"], plan["rows"], cols, cols * dtype.itemsize, decode, gzip_file=plan["gzip"])

    try:
        return _stream_finish(path, open_rows, to_float, invert=False, max_side=max_side)
    except UnreadableImage:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise UnreadableImage(path, f"volume cannot be decoded ({_short(exc)})") from None


def _volume_pixels(path: Path, max_side: Optional[int] = None, info: Optional[ImageInfo] = None) -> np.ndarray:
    import SimpleITK as sitk

    info = info or _volume_info(path)  # the header checks
    streamed = _nifti_stream(path, max_side)
    if streamed is not None:
        return streamed
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


def _decode_slot(path: Path, kind: str, info: Optional[ImageInfo] = None) -> Any:
    """A big image (above BIG_DECODE_PIXELS) decodes only while holding this user's one
    big-decode file lock, so parallel decode workers never hold several at once."""
    import contextlib

    info = info or read_info(path)  # header only
    pixels = info.rows * info.cols * max(1, info.samples)
    if pixels <= BIG_DECODE_PIXELS:
        return contextlib.nullcontext()
    import tempfile

    from filelock import FileLock

    uid = os.getuid() if hasattr(os, "getuid") else 0
    return FileLock(os.path.join(tempfile.gettempdir(), f"loff-big-decode-{uid}.lock"), is_singleton=False)


# -- public ----------------------------------------------------------------------------
def _header(path: Path, kind: str) -> tuple[ImageInfo, Any]:
    """(ImageInfo, for DICOM the header dataset, else None); raises UnreadableImage with the reason."""
    try:
        if kind == "dicom":
            return _dicom_header(path)
        if kind in ("nifti", "mha", "nrrd"):
            return _volume_info(path), None
        return _raster_info(path), None
    except UnreadableImage:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a bad header never crashes an import
        raise UnreadableImage(path, f"unreadable header ({type(exc).__name__}: {_short(exc)})") from None


def read_info(path: Path | str) -> ImageInfo:
    """Header only; raises UnreadableImage with the reason."""
    path = Path(path)
    _basic_checks(path)
    return _header(path, _kind(path))[0]


def load_pixels(path: Path | str, max_side: Optional[int] = None) -> np.ndarray:
    """float32 H x W in [0, 1], bright = dense; raises UnreadableImage with the reason.

    max_side: downsample while decoding so the longer side is at most this (block means;
    see `decode_max_side`); None decodes at full size."""
    path = Path(path)
    _basic_checks(path)
    kind = _kind(path)
    info, header = _header(path, kind)  # read once: the decoders below take it
    try:
        with _decode_slot(path, kind, info):
            if kind == "dicom":
                return _dicom_pixels(path, max_side, (info, header))
            if kind in ("nifti", "mha", "nrrd"):
                return _volume_pixels(path, max_side, info)
            return _raster_pixels(path, max_side, info)
    except UnreadableImage:
        raise
    except MemoryError:
        raise UnreadableImage(path, "not enough memory to decode the image") from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - last line of defence, also for decoder panics
        # (Rust decoders raise pyo3 PanicException, a BaseException, on some damaged data)
        raise UnreadableImage(path, f"cannot be decoded ({type(exc).__name__}: {_short(exc)})") from None
