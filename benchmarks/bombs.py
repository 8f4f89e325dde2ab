"""Peak memory of decompression bombs in import, extract and predict.

Small files that decode to huge images: a 14000 x 14000 1-bit PNG (~50 KB), a 14000 x
14000 palette PNG, an 8000 x 8000 RGB JPEG (~2 MB), a deflated 14000 x 14000 16-bit DICOM
with RescaleSlope 1.5 and a window (~0.6 MB) and a 14000 x 14000 float64 .nii.gz (~1.8 MB).
Each (bomb, step) runs in a fresh process; the table gives that process's peak resident
memory (VmHWM) and the part of it above the RSS just before the step (libraries already
imported), and the wall time. A small 512 x 512 PNG is the reference. The DICOM and NIfTI
bombs are written band by band (`write_dicom_bomb`, `write_nifti_bomb`, also used by
tests/test_hardening_data.py), never whole in memory.

    python benchmarks/bombs.py            # all bombs (peaks of several GB on old code)
    python benchmarks/bombs.py --only dicom nifti --steps extract

The backbone is vit_tiny_patch16_224 with random weights at 64 px (the decode, not the
model, is what is measured); decode workers 0 (one process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BACKBONE = ["--backbone", "vit_tiny_patch16_224", "--random-init", "--image-size", "64", "--grid", "4",
            "--workers", "0", "--batch-size", "4"]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def write_dicom_bomb(path: Path, side: int = 14000, *, slope: float = 1.5, window: bool = True) -> Path:
    """A Deflated Explicit VR Little Endian DICOM, side x side, 16-bit (12 stored), with
    RescaleSlope / Intercept and a window: a rectangle on black, compressed while it is
    written (a few hundred KB for 14000 px)."""
    import io
    import struct
    import zlib

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.filebase import DicomFileLike
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "MG", "BOMB"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, -10
    if window:
        ds.WindowCenter, ds.WindowWidth = 2000, 3000
    body = io.BytesIO()
    out = DicomFileLike(body)
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    n = side * side * 2
    body.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n))
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        head = DicomFileLike(fh)
        head.is_little_endian, head.is_implicit_VR = True, False
        write_file_meta_info(head, meta, enforce_standard=True)
        fh.write(packer.compress(body.getvalue()))
        step = max(1, (8 << 20) // (side * 2))
        for r0 in range(0, side, step):
            r1 = min(side, r0 + step)
            band = np.zeros((r1 - r0, side), "<u2")
            rows = np.arange(r0, r1)[:, None]
            band[(rows > side // 4) & (rows < 3 * side // 4) & (np.arange(side)[None, :] > side // 3)] = 3000
            band[:, : side // 8] = 500
            fh.write(packer.compress(band.tobytes()))
        fh.write(packer.flush())
    return path


def write_nifti_bomb(path: Path, side: int = 14000, *, dtype: str = "<f8") -> Path:
    """A single-file NIfTI-1 `.nii.gz`, side x side, float64 by default: a rectangle on black,
    gzip-compressed while it is written."""
    import gzip
    import struct

    import numpy as np

    dt = np.dtype(dtype)
    codes = {"u1": 2, "i2": 4, "i4": 8, "f4": 16, "f8": 64, "u2": 512}
    head = bytearray(348)
    struct.pack_into("<i", head, 0, 348)
    struct.pack_into("<8h", head, 40, 2, side, side, 1, 1, 1, 1, 1)
    struct.pack_into("<hh", head, 70, codes[dt.str[1:]], dt.itemsize * 8)
    struct.pack_into("<8f", head, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<fff", head, 108, 352.0, 0.0, 0.0)
    head[344:348] = b"n+1\0"
    with gzip.open(path, "wb", compresslevel=6) as fh:
        fh.write(bytes(head) + b"\0\0\0\0")
        step = max(1, (8 << 20) // (side * dt.itemsize))
        for r0 in range(0, side, step):
            r1 = min(side, r0 + step)
            band = np.zeros((r1 - r0, side), dt)
            rows = np.arange(r0, r1)[:, None]
            band[(rows > side // 4) & (rows < 3 * side // 4) & (np.arange(side)[None, :] > side // 3)] = 2.5
            fh.write(band.tobytes())
    return path


def make_bombs(folder: Path, only: list[str]) -> dict[str, Path]:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    bombs: dict[str, Path] = {}

    def want(name: str) -> bool:
        return not only or name in only

    if want("small"):
        img = Image.new("L", (512, 512))
        ImageDraw.Draw(img).ellipse((100, 100, 400, 400), fill=200)
        bombs["small"] = folder / "small" / "small.png"
        bombs["small"].parent.mkdir(exist_ok=True)
        img.save(bombs["small"])
    if want("png1"):
        img = Image.new("1", (14000, 14000))
        ImageDraw.Draw(img).rectangle((3000, 3000, 9000, 11000), fill=1)
        bombs["png1"] = folder / "png1" / "bit1.png"
        bombs["png1"].parent.mkdir(exist_ok=True)
        img.save(bombs["png1"], optimize=True)
    if want("palette"):
        img = Image.new("P", (14000, 14000))
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (i * 7) % 256)])
        ImageDraw.Draw(img).rectangle((2000, 2000, 12000, 9000), fill=77)
        bombs["palette"] = folder / "palette" / "palette.png"
        bombs["palette"].parent.mkdir(exist_ok=True)
        img.save(bombs["palette"], optimize=True)
    if want("jpeg"):
        img = Image.new("RGB", (8000, 8000), (30, 60, 90))
        draw = ImageDraw.Draw(img)
        for k in range(0, 8000, 400):
            draw.line((0, k, 8000, 8000 - k), fill=(200, 180, 40), width=9)
        bombs["jpeg"] = folder / "jpeg" / "big.jpg"
        bombs["jpeg"].parent.mkdir(exist_ok=True)
        img.save(bombs["jpeg"], quality=70)
    if want("dicom"):
        bombs["dicom"] = folder / "dicom" / "deflated.dcm"
        bombs["dicom"].parent.mkdir(exist_ok=True)
        write_dicom_bomb(bombs["dicom"])
    if want("nifti"):
        bombs["nifti"] = folder / "nifti" / "float64.nii.gz"
        bombs["nifti"].parent.mkdir(exist_ok=True)
        write_nifti_bomb(bombs["nifti"])
    return bombs


def make_head(folder: Path) -> Path:
    """A tiny exported head (two classes of small PNGs) for the predict step."""
    import numpy as np
    from PIL import Image

    from loff_core.cli import main

    rng = np.random.default_rng(0)
    for cls, level in (("dark", 60), ("bright", 190)):
        (folder / "images" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            arr = np.clip(rng.normal(level, 20, (48, 40)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / "images" / cls / f"{i}.png")
    project = folder / "project"
    import contextlib
    import io

    for args in (["import", project, folder / "images"], ["extract", project, *BACKBONE],
                 ["train", project, "--epochs", "1"], ["export", project, folder / "head"]):
        with contextlib.redirect_stdout(io.StringIO()):
            assert main([str(a) for a in args] + ["--quiet", "--json"]) == 0, args
    return folder / "head"


def worker(step: str, path: Path, work: Path, head: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    from loff_core.backbones import BackboneSpec
    from loff_core.cache import extract_features
    from loff_core.catalog import scan_folder
    from loff_core.export import predict_files

    before = _status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    if step == "import":
        cat = scan_folder(path.parent, salt=b"0123456789abcdef")
        outcome = f"{len(cat.entries)} imported, {len(cat.failures)} refused"
    elif step == "extract":
        spec = BackboneSpec(name="vit_tiny_patch16_224", random_init=True, image_size=64, grid=4)
        res = extract_features([("bomb", path)], spec, work / "caches", num_workers=0, device="cpu")
        outcome = f"{res.extracted} extracted, {len(res.failures)} refused"
    else:
        res = predict_files(head, [path], device="cpu")
        outcome = f"{len(res['predictions'])} predicted, {len(res['failed'])} refused"
    return {"seconds": time.perf_counter() - t0, "peak": _status_kib("VmHWM") * 1024, "before": before,
            "outcome": outcome}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=[], help="bombs: small png1 palette jpeg dicom nifti")
    parser.add_argument("--steps", nargs="*", default=["import", "extract", "predict"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task = json.loads(args.worker)
        print(json.dumps(worker(task["step"], Path(task["path"]), Path(task["work"]), Path(task["head"]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bombs = make_bombs(tmp / "bombs", args.only)
        head = make_head(tmp / "headwork") if "predict" in args.steps else tmp / "none"
        rows = []
        for name, path in bombs.items():
            for step in args.steps:
                task = json.dumps({"step": step, "path": str(path), "work": str(tmp / f"w-{name}-{step}"),
                                   "head": str(head)})
                proc = subprocess.run([sys.executable, __file__, "--worker", task], capture_output=True, text=True)
                if proc.returncode != 0:
                    rows.append((name, path.stat().st_size, step, "failed", "", "", proc.stderr.strip()[-200:]))
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append((name, path.stat().st_size, step, r["peak"] >> 20, (r["peak"] - r["before"]) >> 20,
                             f"{r['seconds']:.1f}", r["outcome"]))
                print(f"{name} {step}: {rows[-1]}", file=sys.stderr, flush=True)
    print("| file | bytes | step | peak RSS MiB | above start MiB | seconds | outcome |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
