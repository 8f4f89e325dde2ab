"""Write a labels CSV for the mini-MIAS mammograms with a patient column.

mini-MIAS pairs consecutive reference numbers (left and right breast of one woman), so the
patient is (refnum + 1) // 2; without that column every image would count as its own
patient and a woman's two breasts could land on both sides of the split.

    python scripts/prepare_minimias.py /path/to/mini-mias OUT.csv
    loff import PROJECT /path/to/mini-mias/images --labels OUT.csv --label-column tissue \
        --patient-column woman --classes F,G,D
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def write_labels(mias: Path, out: Path) -> int:
    with open(mias / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "tissue", "abnormality", "severity", "woman"])
        for r in rows:
            refnum = int(r["refnum"].removeprefix("mdb"))
            writer.writerow([r["file"], r["tissue"], r["abnormality"], r["severity"] or "",
                             f"W{(refnum + 1) // 2:03d}"])
    return len(rows)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    n = write_labels(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {n} rows to {sys.argv[2]}")
