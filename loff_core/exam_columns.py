"""Laterality (side) and view columns of a labels CSV, for the exam view.

DICOM headers carry ImageLaterality and ViewPosition; PNG collections do not, and say it
in their labels CSV instead (mini-MIAS: `side` R / L; CBIS-DDSM's CSVs: `left or right
breast`, `image view`). At import a column is recognised by its name (case-insensitive;
spaces, hyphens and underscores alike) and its values are written in the catalog's own
`laterality` (R / L) and `view` (CC, MLO, ...) fields, as the header would: no format
change. A DICOM header's own value wins; the CSV fills the gaps.
"""

from __future__ import annotations

import re
from typing import Optional

#: tried in this order when the CSV has no column of this name, nothing is read
LATERALITY_COLUMNS = ("laterality", "image_laterality", "imagelaterality", "side", "breast_side",
                      "left_or_right_breast", "left_right", "breast")
VIEW_COLUMNS = ("view", "view_position", "viewposition", "image_view", "view_code", "projection")

#: mammographic view codes (DICOM ViewPosition, ACR MQCM) kept as they are
_VIEW_CODES = {"CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "AT", "CV", "RL", "RM", "ID"}
_VIEW_WORDS = {"CRANIOCAUDAL": "CC", "CRANIO-CAUDAL": "CC", "CRANIO CAUDAL": "CC",
               "MEDIOLATERAL OBLIQUE": "MLO", "MEDIO-LATERAL OBLIQUE": "MLO", "MEDIOLATERAL-OBLIQUE": "MLO",
               "MEDIOLATERAL": "ML", "MEDIO-LATERAL": "ML", "LATEROMEDIAL": "LM", "LATERO-MEDIAL": "LM"}
_SIDES = {"R": "R", "RIGHT": "R", "RT": "R", "L": "L", "LEFT": "L", "LT": "L"}
_BOTH = re.compile(r"^(R|L|RIGHT|LEFT)[\s_\-]*(CC|MLO|ML|LM|XCCL|XCCM)$")  # "R-CC", "LMLO", "left_cc"


def column_key(name: str) -> str:
    return re.sub(r"[\s\-_]+", "_", name.strip().lower())


def find_columns(columns: list[str], taken: tuple[Optional[str], ...] = ()) -> tuple[Optional[str], Optional[str]]:
    """(laterality column, view column) of a CSV header, or None each; `taken` columns
    (the file, patient and split columns) are never chosen."""
    by_key = {}
    for c in columns:
        if c not in taken:
            by_key.setdefault(column_key(c), c)
    side = next((by_key[k] for k in LATERALITY_COLUMNS if k in by_key), None)
    view = next((by_key[k] for k in VIEW_COLUMNS if k in by_key and by_key[k] != side), None)
    return side, view


def laterality(value: Optional[str]) -> Optional[str]:
    """"R" / "L" from R, L, right, left (any case), or a combined "R-CC"; else None."""
    text = (value or "").strip().upper()
    if text in _SIDES:
        return _SIDES[text]
    both = _BOTH.match(text)
    return _SIDES[both.group(1)] if both else None


def view(value: Optional[str]) -> Optional[str]:
    """A view code (CC, MLO, ...) from a code, its words ("cranio-caudal") or a combined
    "L-MLO"; else None."""
    text = (value or "").strip().upper()
    if text in _VIEW_CODES:
        return text
    if text in _VIEW_WORDS:
        return _VIEW_WORDS[text]
    both = _BOTH.match(text)
    return both.group(2) if both else None
