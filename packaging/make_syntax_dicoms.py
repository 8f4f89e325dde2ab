"""Write one DICOM per compressed transfer syntax the README claims decoded (JPEG baseline,
JPEG lossless, JPEG-LS lossless and near-lossless, JPEG 2000 lossless and
lossy, RLE) into OUT_DIR, from pydicom-data's public test files (installed with the `dev`
extra). Prints one line per file with its transfer syntax. JPEG Extended (12-bit, 1.2.840.10008.1.2.4.51) is
left out: the source install does not read it either ("no installed decoder reads"). Used by packaging/smoke.sh,
run with the source install's Python (the frozen build does not carry pydicom-data).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

FILES = {
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "JPEG-LL.dcm": "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "JPEGLSNearLossless_16.dcm": "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE Lossless
}


def main(argv: list[str]) -> int:
    import pydicom
    from pydicom.data import get_testdata_file

    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, syntax in FILES.items():
        src = get_testdata_file(name)
        if src is None:
            print(f"make_syntax_dicoms: {name} not found in pydicom's test data", file=sys.stderr)
            return 1
        found = pydicom.dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID
        if found != syntax:
            print(f"make_syntax_dicoms: {name} is {found}, expected {syntax}", file=sys.stderr)
            return 1
        shutil.copy(src, out / name)
        print(f"{name}: {found.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
