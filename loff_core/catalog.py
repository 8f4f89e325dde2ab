"""The catalog: which images a project has, their labels, patients and splits.

`scan_folder` walks an image folder in place (never copying or moving a file), reads each
header, attaches labels (from a CSV or from sub-folder names) and a de-identified patient
key, and lists every file it could not read with the reason. `assign_splits` divides the
labelled images into train / val / test by patient (no patient on two sides),
stratified by label and deterministic for a seed. The catalog is saved as CSV with a small
JSON sidecar for classes, failures and warnings.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .errors import ProjectError, Remedy, UnreadableImage
from .fsutil import atomic_path, atomic_write_json
from .images import (IMAGE_EXTENSIONS, _suffix, cbis_ddsm_parts, colour_channels_differ, is_image_candidate,
                     read_info, special_file_reason)
from .progress import Progress
from . import exam_columns, trust

SPLITS = ("train", "val", "test")
FILE_COLUMNS = ("file", "filename", "path", "image", "image_path", "file_name", "sop_instance_uid",
                "sopinstanceuid")  # tried in this order (case-insensitive) when no file column is named
_OPTIONAL_TEXT = ("label", "split", "modality", "view", "laterality", "pixel_spacing")
#: a CSV column with one of these names (case-insensitive, in this order) is taken as the
#: patient when no patient column is named (mini-MIAS calls it "woman")
PATIENT_COLUMNS = ("patient_id", "patientid", "patient", "subject_id", "subject", "participant_id",
                   "participant", "woman", "case_id", "individual")
#: how a given split may be written (any case) -> the split it means
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}


def split_name(text: Optional[str]) -> Optional[str]:
    """"Train", "VALIDATION", "test" ... -> "train" | "val" | "test"; None for anything else."""
    return SPLIT_NAMES.get((text or "").strip().lower())


@dataclass(frozen=True)
class CatalogEntry:
    image_id: str
    path: str  # relative to the images root, POSIX
    patient_key: str
    label: Optional[str]
    split: Optional[str]
    format: str
    modality: Optional[str]
    view: Optional[str]
    laterality: Optional[str]
    rows: int
    cols: int
    frames: int
    pixel_spacing: Optional[str]
    # `path` with the patient's ID and name parts replaced by `patient-<key>` where the
    # folder or file names contain them; None when they do not (see `mask_identifiers`)
    masked_path: Optional[str] = None
    # why the user left this image out (`loff audit --exclude`): None = used; an excluded
    # image is kept in the catalog but left out of training, cv, tune and evaluation
    excluded: Optional[str] = None

    @property
    def shown_path(self) -> str:
        """The path to show on screen or in a caption: never a patient's ID or name."""
        return display_path(self.masked_path or self.path)  # and undecodable bytes as U+FFFD


@dataclass(frozen=True)
class ImportFailure:
    path: str
    reason: str


@dataclass
class Catalog:
    entries: list[CatalogEntry]
    classes: list[str]
    failures: list[ImportFailure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: where each image's patient came from -> count, e.g. {"CSV column woman": 322}
    patients_from: dict[str, int] = field(default_factory=dict)
    #: where the split given at import came from ("" when none was given: a random split)
    split_from: str = ""

    @staticmethod
    def _meta_path(path: Path) -> Path:
        return Path(str(path) + ".meta.json")

    def save(self, path: Path) -> None:
        path = Path(path)
        names = [f.name for f in fields(CatalogEntry)]
        # None is written as an empty cell; the rare empty string is listed in the sidecar
        empty = [[i, n] for i, e in enumerate(self.entries) for n in _OPTIONAL_TEXT if getattr(e, n) == ""]
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
                writer = csv.writer(fh)
                writer.writerow(names)
                for e in self.entries:  # text a spreadsheet would run as a formula is escaped
                    writer.writerow(["" if v is None else trust.csv_cell(v) for v in (getattr(e, n) for n in names)])
        atomic_write_json(self._meta_path(path), {
            "classes": list(self.classes),
            "failures": [asdict(f) for f in self.failures],
            "warnings": list(self.warnings),
            "empty_strings": empty,
            "patients_from": dict(self.patients_from),
            "split_from": self.split_from,
        })

    @classmethod
    def load(cls, path: Path) -> "Catalog":
        """Read a catalog, every row checked: a project from someone else is input too. A
        path that is absolute, leaves the images folder or holds a NUL byte, a label outside
        the classes, a split that is not one: refused with the row named."""
        path = Path(path)
        try:
            with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ProjectError(f"{path}: unreadable catalog ({exc})") from None
        meta_path = cls._meta_path(path)
        meta = trust.load_json(meta_path, what="catalog sidecar") if meta_path.exists() else {}
        entries = []
        try:
            for n, raw in enumerate(rows, start=2):
                r = {k: trust.csv_uncell(v) for k, v in raw.items() if k is not None}
                get = lambda k: (r.get(k) or None)  # noqa: E731
                trust.confined_relpath(r["path"], what="image path", where=f"{path}: row {n}")
                for key in ("image_id", "patient_key"):
                    if not r[key] or "\0" in r[key]:
                        raise ProjectError(f"{path}: row {n}: {key} is empty or holds a NUL byte")
                split = get("split")
                if split is not None and split not in SPLITS:
                    raise ProjectError(f"{path}: row {n}: split {split!r} is not one of {', '.join(SPLITS)}")
                entries.append(CatalogEntry(
                    image_id=r["image_id"], path=r["path"], patient_key=r["patient_key"], label=get("label"),
                    split=split, format=r["format"], modality=get("modality"), view=get("view"),
                    laterality=get("laterality"), rows=int(r["rows"]), cols=int(r["cols"]),
                    frames=int(r["frames"] or 1), pixel_spacing=get("pixel_spacing"),
                    masked_path=get("masked_path"), excluded=get("excluded"),
                ))
        except (KeyError, ValueError, TypeError) as exc:
            raise ProjectError(f"{path}: damaged catalog ({exc})") from None
        try:
            for i, name in meta.get("empty_strings", []):
                if str(name) not in _OPTIONAL_TEXT:
                    raise ValueError(f"{name!r} is no text field")
                entries[int(i)] = replace(entries[int(i)], **{str(name): ""})
            classes = meta.get("classes")
            if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
                raise ValueError("classes is not a list of names")
            failures = [ImportFailure(str(f["path"]), str(f["reason"])) for f in meta.get("failures", [])]
            warnings = [str(w) for w in meta.get("warnings", [])]
        except (IndexError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ProjectError(f"{path}: damaged catalog sidecar {cls._meta_path(path).name} ({exc})") from None
        classes = list(classes) if classes is not None else natural_class_order({e.label for e in entries if e.label})
        known = set(classes)
        for n, e in enumerate(entries, start=2):
            if e.label is not None and e.label not in known:
                raise ProjectError(f"{path}: row {n}: label {e.label!r} is not one of the classes "
                                   f"{', '.join(classes)}; import again")
        try:
            patients_from = {str(k): int(v) for k, v in dict(meta.get("patients_from") or {}).items()}
        except (TypeError, ValueError) as exc:
            raise ProjectError(f"{path}: damaged catalog sidecar {cls._meta_path(path).name} ({exc})") from None
        return cls(entries, classes, failures, warnings, patients_from, str(meta.get("split_from") or ""))

    def in_split(self, split: str) -> list[CatalogEntry]:
        return [e for e in self.entries if e.split == split]

    def class_index(self, label: str) -> int:
        try:
            return self.classes.index(label)
        except ValueError:
            raise ValueError(f"label {label!r} is not one of the classes {self.classes}") from None

    def by_id(self) -> dict[str, CatalogEntry]:
        return {e.image_id: e for e in self.entries}


# -- helpers ---------------------------------------------------------------------------
def image_id_for(rel_path: str, version: str = "") -> str:
    """Stable id of one file's content at import: its relative path plus `version` (size and
    modification time). The feature cache is keyed by it, so a file replaced or edited in
    place, or another folder re-imported with the same names, gets a new id and is
    extracted again instead of silently reusing the old features."""
    key = rel_path if not version else f"{rel_path}\0{version}"
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def file_version(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def mask_identifiers(rel: str, identifiers: Iterable[str], patient_key: str) -> Optional[str]:
    """`rel` with each identifier (PatientID, name parts; 3 characters or more, any case)
    replaced by `patient-<first 8 of the key>`; None when none occurs. Sites often name
    folders or files after the patient: the app shows this instead of the real path."""
    out = rel
    for ident in sorted({i.strip() for i in identifiers if i and len(i.strip()) >= 3}, key=len, reverse=True):
        out = re.sub(re.escape(ident), f"patient-{patient_key[:8]}", out, flags=re.IGNORECASE)
    return out if out != rel else None


def patient_key_for(salt: bytes, patient_id: str) -> str:
    return hmac.new(salt, patient_id.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:16]


def display_path(rel: str) -> str:
    """A path safe to print: undecodable bytes from non-UTF-8 names shown as U+FFFD."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def natural_class_order(labels: Iterable[str]) -> list[str]:
    """Numbers in numeric order; BI-RADS A-D and mini-MIAS F, G, D in their clinical order;
    anything else alphabetically (case-insensitive)."""
    labels = sorted({str(x) for x in labels if x not in (None, "")})
    try:
        return sorted(labels, key=float)
    except ValueError:
        pass
    upper = {x.upper() for x in labels}
    for order in (["A", "B", "C", "D"], ["F", "G", "D"]):
        if upper <= set(order) and len(upper) == len(labels):
            return sorted(labels, key=lambda x: order.index(x.upper()))
    return sorted(labels, key=lambda x: (x.casefold(), x))


def _stem(name: str) -> str:
    """The file name without its image extension (".nii.gz" counts as one); dots inside
    the name (UID-named files) are kept."""
    lower = name.lower()
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def _unique(candidates: Optional[list[str]]) -> Optional[str]:
    return candidates[0] if candidates and len(candidates) == 1 else None


def _walk(root: Path, failures: list[ImportFailure], progress: Progress) -> list[Path]:
    found: list[Path] = []

    def onerror(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        rel = _rel(where, root)
        failures.append(ImportFailure(display_path(rel), f"folder cannot be read ({exc.strerror or exc})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=False):
        progress.check()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if _suffix(path) in IMAGE_EXTENSIONS or _suffix(path) == "":
                special = special_file_reason(path)  # a FIFO would block the scan: never opened
                if special is not None:
                    failures.append(ImportFailure(display_path(_rel(path, root)), special))
                    continue
            if not is_image_candidate(path):
                continue
            if path.is_symlink() and not path.exists():
                failures.append(ImportFailure(display_path(_rel(path, root)), "broken or looping symbolic link"))
                continue
            found.append(path)
    return found


_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")  # Pillow modes made grey on load


def _is_colour(info: Any) -> bool:
    """A colour image, which `load_pixels` turns into its luminance (0.299 R + 0.587 G + 0.114 B)."""
    if info.format == "dicom":
        return info.samples > 1
    return info.format not in ("nifti", "mha", "nrrd") and info.photometric in _COLOUR_MODES


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:
        return path.as_posix()


# -- labels CSV ------------------------------------------------------------------------
def read_labels_csv(path: Path, label_column: Optional[str], file_column: Optional[str],
                     patient_column: Optional[str], split_column: Optional[str] = None
                     ) -> tuple[list[dict[str, str]], str, str, Optional[str]]:
    """The rows of a labels CSV as {"file", "label", "patient", "split"} (the delimiter is
    detected: comma, semicolon or tab); returns (rows, file column, label column, patient
    column or None). A column named like a patient (PATIENT_COLUMNS) is used as the patient
    when none is named; `split_column`'s values must say train / val / test."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ProjectError(f"{path}: labels CSV is not UTF-8 text") from None
    except OSError as exc:
        raise ProjectError(f"{path}: labels CSV cannot be read ({exc.strerror or exc})") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    columns = [c for c in (reader.fieldnames or []) if c is not None]
    if not columns:
        raise ProjectError(f"{path}: labels CSV has no header row")
    lower = {c.strip().lower(): c for c in columns}

    def need(name: Optional[str], what: str) -> Optional[str]:
        if name is None:
            return None
        if name in columns:
            return name
        if name.lower() in lower:
            return lower[name.lower()]
        raise ProjectError(f"{path}: no {what} column {name!r}; the CSV has columns {', '.join(columns)}")

    file_col = need(file_column, "file")
    if file_col is None:
        file_col = next((lower[c] for c in FILE_COLUMNS if c in lower), None)
        if file_col is None:
            raise ProjectError(f"cannot tell which column names the image file; the CSV has columns "
                               f"{', '.join(columns)}", path, Remedy.CHOOSE_FILE_COLUMN)
    split_col = need(split_column, "split")
    patient_col = need(patient_column, "patient")
    label_named = need(label_column, "label")
    # side / view for the exam view; never guessed as the label (a named label column may be one)
    side_col, view_col = exam_columns.find_columns(columns, (file_col, patient_col, split_col, label_named))

    def find_label(patient: Optional[str]) -> Optional[str]:
        if label_named is not None:
            return label_named
        rest = [c for c in columns if c not in (file_col, patient, split_col, side_col, view_col)]
        if "label" in lower and lower["label"] not in (patient, split_col):
            return lower["label"]
        return rest[0] if len(rest) == 1 else None

    if patient_col is None:  # a column named like a patient, unless it is the only label candidate
        auto = next((lower[c] for c in PATIENT_COLUMNS if c in lower
                     and lower[c] not in (file_col, label_named, split_col)), None)
        if auto is not None and find_label(auto) is not None:
            patient_col = auto
    label_col = find_label(patient_col)
    if label_col is None:
        raise ProjectError(f"which column holds the label? the CSV has columns {', '.join(columns)}", path,
                           Remedy.CHOOSE_LABEL_COLUMN)
    rows = []
    bad_splits: list[str] = []
    try:
        for i, r in enumerate(reader, start=2):
            row = {"file": (r.get(file_col) or "").strip(), "label": (r.get(label_col) or "").strip(),
                   "patient": (r.get(patient_col) or "").strip() if patient_col else "", "split": "",
                   # side / view for the exam view ("" when the CSV has no such column)
                   "laterality": (r.get(side_col) or "").strip() if side_col else "",
                   "view": (r.get(view_col) or "").strip() if view_col else ""}
            if not row["laterality"] and exam_columns.laterality(row["view"]):  # "R-CC" gives the side too
                row["laterality"] = row["view"]
            if split_col is not None:
                value = (r.get(split_col) or "").strip()
                row["split"] = split_name(value) or ""
                if not row["split"]:
                    bad_splits.append(f"row {i} ({value!r})")
            rows.append(row)
    except csv.Error as exc:
        raise ProjectError(f"{path}: malformed CSV ({exc})") from None
    if bad_splits:
        raise ProjectError(f"{path}: column {split_col!r} must say train, val or test (any case; 'validation' "
                           f"accepted) in every row; {len(bad_splits)} rows do not: " + ", ".join(bad_splits[:5])
                           + (" ..." if len(bad_splits) > 5 else ""))
    return rows, file_col, label_col, patient_col


def labels_sources(labels_csv: Any) -> list[tuple[Optional[str], Path]]:
    """`labels_csv` as given to `scan_folder`: None, one path, or a list of paths and
    (split, path) pairs -> [(split or None, path)]."""
    if labels_csv is None:
        return []
    if isinstance(labels_csv, (str, os.PathLike)):
        return [(None, Path(labels_csv))]
    out: list[tuple[Optional[str], Path]] = []
    for item in labels_csv:
        if isinstance(item, (str, os.PathLike)):
            out.append((None, Path(item)))
        else:
            split, path = item
            if split is not None and split_name(split) is None:
                raise ProjectError(f"{path}: unknown split {split!r} for a labels CSV; say train, val or test")
            out.append((split_name(split) if split is not None else None, Path(path)))
    return out


def _patient_pattern(regex: Optional[str]) -> Optional["re.Pattern[str]"]:
    if regex is None:
        return None
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise ProjectError(f"patient-from-name pattern {regex!r}: not a valid regular expression ({exc})") from None
    if pattern.groups != 1:
        raise ProjectError(f"patient-from-name pattern {regex!r}: needs exactly one capture group (the patient), "
                           f"found {pattern.groups}; e.g. '^(\\d+)_' for NIH ChestX-ray14's PATIENT_FOLLOWUP.png")
    return pattern


#: common file-name schemes that name the patient, tried (after a CSV's patient column, a
#: typed --patient-from-name pattern and a DICOM PatientID) when nothing else names it:
#: (scheme, a regular expression on the file name whose one group is the patient, where it is from)
NAME_SCHEMES: tuple[tuple[str, str, str], ...] = (
    ("personN_bacteria_M", r"^(person\d+)_(?:bacteria|virus)(?:_\d+)+\.[A-Za-z0-9]+$",
     "pediatric chest X-rays, e.g. person123_bacteria_4.jpeg"),
    ("IM-NNNN-NNNN", r"^((?:NORMAL2-)?IM-\d+)(?:-\d+)+\.[A-Za-z0-9]+$", "pediatric chest X-rays, e.g. IM-0115-0001.jpeg"),
    ("NNNNNNNN_NNN", r"^(\d{8})_\d{3}\.[A-Za-z0-9]+$", "NIH ChestX-ray14, e.g. 00000001_000.png"),
)
_NAME_SCHEMES = tuple((name, re.compile(regex), what) for name, regex, what in NAME_SCHEMES)


def patient_from_scheme(file_name: str) -> Optional[tuple[str, str]]:
    """(patient, scheme) from a file name that follows one of NAME_SCHEMES, else None."""
    for name, pattern, _ in _NAME_SCHEMES:
        match = pattern.match(file_name)
        if match:
            return match.group(1), name
    return None


def _scheme_sources(patients_from: Counter, scheme_patients: dict[str, set[str]]) -> dict[str, int]:
    """patients_from with each file-name scheme's entry saying what the scheme is and how
    many patients it found (the key `loff import` and `loff info` print)."""
    out: dict[str, int] = {}
    for source, n in patients_from.items():
        if source in scheme_patients:
            what = next(w for name, _, w in _NAME_SCHEMES if name == source)
            source = f"file name scheme {source} ({what}): {len(scheme_patients[source])} patients"
        out[source] = n
    return out


def scan_folder(root: Path | str, *, salt: bytes, labels_csv: Any = None,
                label_column: Optional[str] = None, file_column: Optional[str] = None,
                patient_column: Optional[str] = None, classes: Optional[Sequence[str]] = None,
                split_column: Optional[str] = None, patient_from_name: Optional[str] = None,
                progress: Progress = Progress()) -> Catalog:
    """Scan ROOT recursively (in place); see the module docstring.

    `labels_csv`: one CSV, or several, each optionally with the split it defines
    ([("train", a.csv), ("test", b.csv)]: CSAW-M's layout). A given split (from
    `split_column`, from a CSV's split, or from top-level folders named train / val / test)
    is put in the entries' `split`; `steps.import_images` completes it."""
    root = Path(root)
    sources = labels_sources(labels_csv)
    name_pattern = _patient_pattern(patient_from_name)
    failures: list[ImportFailure] = []
    warnings: list[str] = []
    files, infos, versions = _read_headers(root, sources, failures, warnings, progress)
    if sources:
        given = _given_by_csvs(infos, sources, label_column, file_column, patient_column, split_column, warnings)
    else:
        given = _given_by_folders(infos)
    labels, class_order = _labels_and_classes(given.labels, classes, labels_csv, root, warnings)
    entries, patients_from = _entries(infos, versions, labels, given, salt, name_pattern, patient_from_name,
                                      warnings)
    warnings += _format_warnings(root, infos, entries)
    progress.report(len(files), len(files), f"imported {len(entries)} images, {len(failures)} unreadable")
    return Catalog(entries, class_order, failures, warnings, patients_from,
                   given.split_from if any(e.split for e in entries) else "")


def _read_headers(root: Path, sources: list[tuple[Optional[str], Path]], failures: list[ImportFailure],
                  warnings: list[str], progress: Progress) -> tuple[list[Path], list[tuple[str, Any]], dict[str, str]]:
    """Every image file below ROOT (the labels CSVs left out) and its header: (files,
    [(relative path, ImageInfo)], {relative path: file version}); unreadable files are failures."""
    progress.report(0, 0, "listing files")
    files = _walk(root, failures, progress)
    if sources:
        csv_files = {p.resolve() for _, p in sources}
        files = [f for f in files if f.resolve() not in csv_files]
    if not files:
        warnings.append(f"no image files found in {display_path(str(root))} (looked for: "
                        f"{', '.join(IMAGE_EXTENSIONS)}, and DICOM files without an extension)")
    infos: list[tuple[str, Any]] = []
    versions: dict[str, str] = {}
    for n, path in enumerate(files):
        if n % 16 == 0:
            progress.check()
        rel = _rel(path, root)
        try:
            info = read_info(path)
            versions[rel] = file_version(path)
            infos.append((rel, info))
        except UnreadableImage as exc:
            failures.append(ImportFailure(display_path(rel), exc.reason))
        except OSError as exc:  # vanished or became unreadable between reading and stat
            failures.append(ImportFailure(display_path(rel), f"cannot be read ({exc.strerror or exc})"))
        progress.report(n + 1, len(files), f"scanned {n + 1} files")
    return files, infos, versions


@dataclass
class _Given:
    """What the labels CSVs or the folder names say about the images (keys: relative paths)."""

    labels: dict[str, str] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)  # the CSV's patient (beats the DICOM PatientID)
    patient_cols: dict[str, str] = field(default_factory=dict)  # the CSV column each patient came from
    sides: dict[str, str] = field(default_factory=dict)  # R / L from the CSV (the exam view's columns)
    views: dict[str, str] = field(default_factory=dict)  # CC / MLO / ... from the CSV
    splits: dict[str, str] = field(default_factory=dict)  # the split the CSV or the folders give
    split_from: str = ""


def _given_by_folders(infos: list[tuple[str, Any]]) -> _Given:
    """No labels CSV: the label (and the split) from the folder names."""
    given = _Given()
    tops = {rel.split("/", 1)[0] for rel, _ in infos if "/" in rel}
    if len(tops) >= 2 and all("/" in rel for rel, _ in infos):
        if all(split_name(t) for t in tops) and all(rel.count("/") >= 2 for rel, _ in infos):
            # train|val|test / class / files: the split and the label from the folders
            given.labels = {rel: rel.split("/", 2)[1] for rel, _ in infos}
            given.splits = {rel: split_name(rel.split("/", 1)[0]) or "" for rel, _ in infos}
            given.split_from = "folders " + ", ".join(f"{s}/" for s in SPLITS if s in given.splits.values())
        else:
            given.labels = {rel: rel.split("/", 1)[0] for rel, _ in infos}
    return given


def _csv_matcher(infos: list[tuple[str, Any]]) -> Any:
    """A CSV's file cell -> the image's relative path: the relative path, else the bare file
    name (when unique), else the stem, else the SOPInstanceUID; None when none fits."""
    by_rel = {rel: rel for rel, _ in infos}
    names: dict[str, list[str]] = defaultdict(list)
    stems: dict[str, list[str]] = defaultdict(list)
    uids: dict[str, str] = {}
    for rel, info in infos:
        names[rel.rsplit("/", 1)[-1]].append(rel)
        stems[_stem(rel.rsplit("/", 1)[-1])].append(rel)
        if info.sop_instance_uid:
            uids[info.sop_instance_uid] = rel

    def match(cell: str) -> Optional[str]:
        key = cell.replace("\\", "/")
        while key.startswith("./"):
            key = key[2:]
        base = key.rsplit("/", 1)[-1]
        return by_rel.get(key) or _unique(names.get(base)) or _unique(stems.get(key)) \
            or _unique(stems.get(_stem(base))) or uids.get(key)
    return match


def _given_by_csvs(infos: list[tuple[str, Any]], sources: list[tuple[Optional[str], Path]],
                   label_column: Optional[str], file_column: Optional[str], patient_column: Optional[str],
                   split_column: Optional[str], warnings: list[str]) -> _Given:
    """Labels, patients, sides, views and splits from the labels CSVs (the first row of an
    image wins); what does not fit is said in `warnings`."""
    given = _Given()
    match = _csv_matcher(infos)
    first_row: dict[str, tuple[str, int]] = {}
    two_splits: list[tuple[str, str, str, str, str]] = []  # rel, first CSV, its split, other CSV, its split
    odd_sides: list[str] = []
    for csv_split, csv_path in sources:
        rows, _, _, patient_col = read_labels_csv(csv_path, label_column, file_column, patient_column, split_column)
        missing, blank, conflicts, duplicates = [], 0, [], 0
        for i, r in enumerate(rows, start=2):
            rel = match(r["file"])
            if rel is None:
                missing.append(f"row {i} ({r['file'] or 'empty'})")
                continue
            if rel in first_row:
                this_split = r["split"] or csv_split
                if this_split and rel in given.splits and split_name(this_split) != split_name(given.splits[rel]):
                    # listed for two splits (e.g. in train.csv and in test.csv): not a
                    # duplicate row of this CSV; the first listing wins, and the warning says so
                    two_splits.append((rel, first_row[rel][0], given.splits[rel], csv_path.name, this_split))
                    continue
                duplicates += 1
                if r["label"] and given.labels.get(rel) not in (None, r["label"]):
                    conflicts.append(f"row {i} ({r['file']})")
                continue
            first_row[rel] = (csv_path.name, i)
            if r["patient"]:
                given.patients[rel] = r["patient"]  # the CSV's patient beats the DICOM PatientID
                given.patient_cols[rel] = patient_col or ""
            if r["split"] or csv_split:
                given.splits[rel] = r["split"] or csv_split
            for field_name, norm, into in (("laterality", exam_columns.laterality, given.sides),
                                           ("view", exam_columns.view, given.views)):
                if r[field_name]:
                    value = norm(r[field_name])
                    if value:
                        into[rel] = value
                    elif len(odd_sides) < 10 and field_name == "laterality":
                        odd_sides.append(f"row {i} ({r[field_name]!r})")
            if not r["label"]:
                blank += 1
                continue
            given.labels[rel] = r["label"]
        csv_name = csv_path.name
        if missing:
            warnings.append(f"{csv_name}: {len(missing)} rows name no image in the folder: "
                            + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        if duplicates:
            warnings.append(f"{csv_name}: {duplicates} duplicate rows for the same image; the first row is used"
                            + (f"; conflicting labels in {', '.join(conflicts[:10])}" if conflicts else ""))
        if blank:
            warnings.append(f"{csv_name}: {blank} rows have an empty label; those images are unlabelled")
    if two_splits:
        shown = "; ".join(f"{display_path(rel)} ({a}: {split_name(sa) or sa}, {b}: {split_name(sb) or sb})"
                          for rel, a, sa, b, sb in two_splits[:10])
        won = Counter((split_name(sa) or sa, split_name(sb) or sb) for _, _, sa, _, sb in two_splits)
        warnings.append(f"{len(two_splits)} images are listed for two splits: {shown}"
                        + (" ..." if len(two_splits) > 10 else "") + "; the first listing won: "
                        + ", ".join(f"{n} stay in {a} (not in {b})" for (a, b), n in sorted(won.items())))
    if odd_sides:
        warnings.append("side values that are not R / L / right / left: " + ", ".join(odd_sides)
                        + "; those images have no side in the exam view")
    unlisted = len(infos) - len(first_row)
    if unlisted > 0:
        names_shown = ", ".join(p.name for _, p in sources)
        warnings.append(f"{names_shown}: {unlisted} images have no row; they are imported unlabelled")
    if split_column is not None:
        given.split_from = f"column {split_column!r} of " + ", ".join(p.name for _, p in sources)
    elif any(s for s, _ in sources):
        given.split_from = "labels CSVs per split (" + ", ".join(f"{s}: {p.name}" for s, p in sources if s) + ")"
    if not given.splits:  # a single CSV over train / val / test folders: the folders give the split
        tops = {rel: split_name(rel.split("/", 1)[0]) for rel, _ in infos if "/" in rel}
        if infos and len(tops) == len(infos) and all(tops.values()):
            given.splits = {rel: s for rel, s in tops.items() if s}
            given.split_from = "folders " + ", ".join(f"{s}/" for s in SPLITS if s in given.splits.values())
    return given


def _labels_and_classes(labels: dict[str, str], classes: Optional[Sequence[str]], labels_csv: Any, root: Path,
                        warnings: list[str]) -> tuple[dict[str, str], list[str]]:
    """Class names as Unicode NFC, stripped (names a person cannot tell apart are refused);
    labels outside the given `classes` dropped with a warning. Returns (labels, class order)."""
    labels = {k: trust.normalise_label(v) for k, v in labels.items() if trust.normalise_label(v)}
    if classes:
        classes = [trust.normalise_label(str(c)) for c in classes]
        if len(set(classes)) != len(classes) or not all(classes):
            raise ProjectError(f"the classes {', '.join(map(repr, classes))} are empty or repeated")
    groups = trust.lookalike_groups(list(classes) if classes else sorted(set(labels.values())))
    if groups:
        where = display_path(str(labels_csv)) if labels_csv is not None else f"folder names in {display_path(str(root))}"
        raise ProjectError(f"{where}: class names that only differ by case, width or invisible characters: "
                           f"{trust.describe_lookalikes(groups)}; make them one name or clearly different")
    if not classes:
        return labels, natural_class_order(labels.values())
    unknown = sorted({v for v in labels.values() if v not in classes})
    if unknown:
        warnings.append(f"labels not among the classes {', '.join(classes)}: {', '.join(unknown[:10])}; "
                        f"those images are unlabelled")
        labels = {k: v for k, v in labels.items() if v in classes}
    return labels, list(classes)


def _entries(infos: list[tuple[str, Any]], versions: dict[str, str], labels: dict[str, str], given: _Given,
             salt: bytes, name_pattern: Optional["re.Pattern[str]"], patient_from_name: Optional[str],
             warnings: list[str]) -> tuple[list[CatalogEntry], dict[str, int]]:
    """One catalog entry per readable image, its patient found (the CSV, the file name
    pattern, the DICOM PatientID, CBIS-DDSM's P_ number, else the image itself) and only its
    salted key kept. Returns (entries, {where patients came from: images})."""
    entries: list[CatalogEntry] = []
    no_patient = 0
    unmatched_name = 0
    cbis_patients: Counter = Counter()
    patients_from: Counter = Counter()
    scheme_patients: dict[str, set[str]] = {}
    for rel, info in infos:
        pid = given.patients.get(rel)
        source = f"CSV column {given.patient_cols.get(rel)}" if pid else ""
        if not pid and name_pattern is not None:
            match = name_pattern.search(rel.rsplit("/", 1)[-1])
            if match and match.group(1):
                pid, source = match.group(1), "file name pattern"
            else:
                unmatched_name += 1
        if not pid and info.patient_id:
            pid, source = info.patient_id, "DICOM PatientID"
        if not pid:
            found = patient_from_scheme(rel.rsplit("/", 1)[-1])
            if found:
                pid, source = found
                scheme_patients.setdefault(source, set()).add(pid)
        identifiers = [pid or "", info.patient_id or "", *info.patient_names]
        cbis = cbis_ddsm_parts(pid) if pid and source == "DICOM PatientID" else None
        if cbis is not None:  # CBIS-DDSM's PatientID names the image; its P_ number the woman
            pid = cbis[0]
            cbis_patients[pid] += 1
            source = "CBIS-DDSM patient number in the DICOM PatientID"
        if not pid:
            no_patient += 1
            pid = "file:" + rel
            source = "none (each image its own patient)"
        patients_from[source] += 1
        spacing = f"{info.pixel_spacing[0]:g}\\{info.pixel_spacing[1]:g}" if info.pixel_spacing else None
        key = patient_key_for(salt, pid)
        entries.append(CatalogEntry(
            image_id=image_id_for(rel, versions[rel]), path=rel, patient_key=key, label=labels.get(rel),
            split=given.splits.get(rel) or None, format=info.format, modality=info.modality,
            view=info.view or given.views.get(rel),  # the header's own values win; the CSV fills gaps
            laterality=info.laterality or given.sides.get(rel), rows=info.rows, cols=info.cols, frames=info.frames, pixel_spacing=spacing,
            masked_path=mask_identifiers(rel, identifiers + [pid], key) if pid and not pid.startswith("file:") else None,
        ))
    if unmatched_name:
        warnings.append(f"{unmatched_name} file names do not match the patient-from-name pattern {patient_from_name!r}; "
                        f"their patient comes from the DICOM header or each is its own patient")
    if no_patient:
        warnings.append(f"{no_patient} images have no patient ID (no DICOM PatientID, no patient column and no "
                        f"known file-name scheme); "
                        f"each is treated as its own patient for the split")
    if cbis_patients:
        n = sum(cbis_patients.values())
        warnings.append(f"{n} images' patient IDs were recognised as CBIS-DDSM (one ID per image, e.g. "
                        f"Mass-Test_P_#####_LEFT_CC) and grouped by their P_ number into {len(cbis_patients)} "
                        f"patients for the split; view and laterality are read from the ID where the header "
                        f"lacks them")
    return entries, _scheme_sources(patients_from, scheme_patients)


def _format_warnings(root: Path, infos: list[tuple[str, Any]], entries: list[CatalogEntry]) -> list[str]:
    """What the import changes about some images: multi-frame (the central frame), colour (grey)."""
    warnings = []
    multi = sum(1 for e in entries if e.frames > 1)
    if multi:
        warnings.append(f"{multi} multi-frame images (e.g. tomosynthesis): the central frame is used")
    # a grey picture stored as RGB (equal channels) loses nothing: only real colour is counted
    colour = [rel for rel, info in infos if _is_colour(info)
              and (info.format == "dicom" or colour_channels_differ(root / rel))]
    if colour:
        warnings.append(f"{len(colour)} RGB (colour) images: converted to grey (luminance), colour is not used: "
                        + ", ".join(display_path(r) for r in colour[:5]) + (" ..." if len(colour) > 5 else ""))
    return warnings


def identical_across_splits(root: Path | str, entries: Sequence[CatalogEntry]) -> Optional[str]:
    """A warning when the same file (byte for byte) is in two splits, e.g. copied into both
    train/ and test/: the test would score pictures the head was trained on. Files are
    grouped by size first; only sizes met in two splits are hashed (SHA-256), so this
    reads almost nothing on a normal import."""
    root = Path(root)
    by_size: dict[int, list[CatalogEntry]] = defaultdict(list)
    for e in entries:
        if e.split:
            try:
                by_size[(root / e.path).stat().st_size].append(e)
            except OSError:
                continue
    pairs: list[tuple[CatalogEntry, CatalogEntry]] = []
    for group in by_size.values():
        if len({e.split for e in group}) < 2:
            continue
        by_hash: dict[str, list[CatalogEntry]] = defaultdict(list)
        for e in group:
            try:
                digest = hashlib.sha256()
                with open(root / e.path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
            except OSError:
                continue
            by_hash[digest.hexdigest()].append(e)
        for same in by_hash.values():
            order = sorted(same, key=lambda e: (SPLITS.index(e.split) if e.split in SPLITS else 9, e.path))
            pairs += [(order[0], other) for other in order[1:] if other.split != order[0].split]
    if not pairs:
        return None
    kinds = Counter(f"{a.split} and {b.split}" for a, b in pairs)
    shown = ", ".join(f"{display_path(a.masked_path or a.path)} = {display_path(b.masked_path or b.path)}"
                      for a, b in pairs[:5])
    return (f"{len(pairs)} images are byte-identical copies of images in another split ("
            + ", ".join(f"{n} in {k}" for k, n in sorted(kinds.items())) + f"): {shown}"
            + (" ..." if len(pairs) > 5 else "") + "; the same picture is trained on and scored: remove the copies")


def assign_splits(entries: Sequence[CatalogEntry], *, seed: int = 0,
                  fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> list[CatalogEntry]:
    """Patient-grouped, label-stratified train/val/test split; unlabelled images get None."""
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or np.any(fractions < 0) or fractions.sum() <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {list(fractions)}")
    fractions = fractions / fractions.sum()
    labels_of: dict[str, Counter] = defaultdict(Counter)
    first_path: dict[str, str] = {}
    for e in entries:
        if e.label is not None:
            labels_of[e.patient_key][e.label] += 1
            first_path[e.patient_key] = min(first_path.get(e.patient_key, e.path), e.path)
    groups: dict[str, list[str]] = defaultdict(list)
    # patients in the order of their first image's path: independent of the project's salt,
    # so the same folder and seed give the same split in every project
    for patient in sorted(labels_of, key=lambda p: first_path[p]):
        # the patient's most common label (ties: the alphabetically first) decides the stratum
        top = sorted(labels_of[patient].items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        groups[top].append(patient)
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    carry = np.zeros(3)
    for label in sorted(groups):
        patients = groups[label]
        order = rng.permutation(len(patients))
        counts, want = _stratum_counts(len(patients), fractions, carry)
        carry = np.clip(want - counts, -1.0, 1.0)
        bounds = np.cumsum(counts)
        for pos, idx in enumerate(order):
            split_of[patients[idx]] = SPLITS[int(np.searchsorted(bounds, pos, side="right"))]
    _ensure_nonempty(split_of, fractions, rng, first_path)
    return [replace(e, split=split_of.get(e.patient_key) if e.label is not None else None) for e in entries]


def _stratum_counts(n: int, fractions: np.ndarray, carry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many of a stratum's N patients go to train / val / test: largest-remainder
    rounding of the fractions plus the carry-over from earlier strata (so totals across
    strata follow the fractions); every split asked for gets one when N allows it."""
    want = fractions * n + carry
    target = np.clip(want, 0.0, None)
    target = target * (n / target.sum()) if target.sum() > 0 else fractions * n
    counts = np.floor(target).astype(int)
    for k in np.argsort(-(target - counts), kind="stable")[: n - int(counts.sum())]:
        counts[k] += 1
    wanted = fractions > 0
    if n >= int(wanted.sum()):
        for k in np.flatnonzero(wanted & (counts == 0)):
            counts[int(np.argmax(counts))] -= 1
            counts[k] += 1
    return counts, want


def _ensure_nonempty(split_of: dict[str, str], fractions: np.ndarray, rng: np.random.Generator,
                     first_path: dict[str, str]) -> None:
    """With at least three patients, every split asked for gets one (taken from the biggest)."""
    if len(split_of) < 3:
        return
    for split, frac in zip(SPLITS, fractions):
        if frac <= 0 or split in split_of.values():
            continue
        counts = Counter(split_of.values())
        donor = counts.most_common(1)[0][0]
        candidates = sorted((p for p, s in split_of.items() if s == donor), key=lambda p: first_path[p])
        split_of[candidates[int(rng.integers(len(candidates)))]] = split
