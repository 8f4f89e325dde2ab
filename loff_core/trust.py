"""Checks for what is read from files other people made (a project folder, an exported head).

A project folder or a head folder travels between colleagues and sites, so everything in
it is input like any other: read with bounds, checked, and refused with one line naming
the file (and the row or field) and the reason. The helpers here are shared by the
project, catalog, cache and export code so each kind of check exists once:

- `load_json`: one line instead of a traceback for deep nesting, huge numbers, wrong
  encoding, or a file that is too big to be what it claims;
- `confined_relpath` / `check_name`: paths and names from project files stay where they
  belong (no absolute path, no `..`, no NUL, no folder separators in a file name);
- `head_shape_problem`: a head or card whose shapes are out of sane bounds is refused
  before anything is allocated;
- `check_finite_state`: head weights must be finite floating-point tensors;
- `safetensors_problem`: a weights file is sized from its header (read within a bound)
  before any tensor is read, and refused when it does not fit in memory;
- `normalise_label` / `lookalike_groups`: class names are NFC-normalised and stripped, and
  names that only differ by case, width or invisible characters are found;
- `csv_cell` / `csv_uncell`: text cells that a spreadsheet would run as a formula are
  escaped (and read back unchanged);
- `run_checksum`: a run's settings and head file under one SHA-256, as a card has.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterable, Mapping, Optional, Type

from .errors import LoffError, ProjectError
from .settings import HEAD_KINDS, INPUT_SIZE_MAX, TASKS

MAX_JSON_BYTES = 64 << 20  # a project file, sidecar, report or card is never this big
MAX_JSON_DEPTH = 64

# sane bounds for head / card shapes (checked before any tensor is built)
MAX_FEATURE_DIM = 16384
MAX_GRID_SIDE = 256
MAX_CLASSES = 1000
MAX_IMAGE_SIZE = INPUT_SIZE_MAX  # the declared input size range (settings.ExtractSettings.image_size)
MAX_WIDTH = 8192
MAX_DEPTH = 64
MAX_HEADS = 256
MAX_MEMBERS = 32  # heads averaged in one (tune keeps its K fold heads; more folds: one retrained head)

_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.+-]{0,127}")


# -- JSON --------------------------------------------------------------------------------
def _depth_ok(text: str, limit: int) -> bool:
    """Nesting depth of brackets outside strings is at most `limit` (a linear scan: the
    json module recurses in C and a deep file would raise RecursionError or worse)."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with bounds; raises ValueError with a short reason. NaN / Infinity are
    read (files written by earlier versions hold them for undefined metrics); fields where
    they would do harm are checked by their readers."""
    if not _depth_ok(text, max_depth):
        raise ValueError(f"nested more than {max_depth} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # huge integers (Python's int digit limit)
        raise ValueError(_first_line(str(exc))) from None


def load_json(path: Path | str, *, what: str = "file", error: Type[LoffError] = ProjectError,
              max_bytes: int = MAX_JSON_BYTES, expect: Optional[type] = dict) -> Any:
    """The JSON document in `path`, or `error("<path>: unreadable <what> (<reason>)")`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"{size:,} bytes, more than the {max_bytes:,} such a file can have")
        text = path.read_bytes().decode("utf-8")
        data = parse_json(text)
    except UnicodeDecodeError:
        raise _err(error, path, f"unreadable {what} (not UTF-8 text)") from None
    except OSError as exc:
        raise _err(error, path, f"unreadable {what} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise _err(error, path, f"unreadable {what} ({exc})") from None
    if expect is not None and not isinstance(data, expect):
        raise _err(error, path, f"unreadable {what} (not a JSON {'object' if expect is dict else expect.__name__})")
    return data


def _err(error: Type[LoffError], path: Path, message: str) -> LoffError:
    from .errors import ExportError

    if issubclass(error, ExportError):
        return error(message, path)
    return error(f"{path}: {message}")


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


# -- paths and names ---------------------------------------------------------------------
def path_problem(value: Any) -> Optional[str]:
    """Why `value` is not a relative path that stays inside its folder; None when it is."""
    if not isinstance(value, str) or not value:
        return "not a path"
    if "\0" in value:
        return "contains a NUL byte"
    posix, win = PurePosixPath(value), PureWindowsPath(value)
    if posix.is_absolute() or win.is_absolute() or win.drive or value.startswith(("\\", "/")):
        return "an absolute path"
    if ".." in posix.parts or ".." in win.parts:
        return "leaves its folder (..)"
    return None


def confined_relpath(value: Any, *, what: str, where: str, error: Type[LoffError] = ProjectError) -> str:
    """`value` if it is a relative path inside its folder, else `error` naming `where`."""
    problem = path_problem(value)
    if problem is not None:
        raise error(f"{where}: {what} {_show(value)} is refused: {problem}")
    return value


def name_problem(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        return "not a plain name (letters, digits, '-', '_', '.', '+'; no folders)"
    return None


def check_name(value: Any, *, what: str, where: str, error: Type[LoffError] = ProjectError) -> str:
    """A file-name component read from a project file (a cache fingerprint, a run id)."""
    problem = name_problem(value)
    if problem is not None:
        raise error(f"{where}: {what} {_show(value)} is refused: {problem}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- head shapes and weights -------------------------------------------------------------
def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def head_shape_problem(head: Any, *, classes: Optional[int] = None, image_size: Any = None) -> Optional[str]:
    """Why a head config (dict) is out of sane bounds; None when it is fine."""
    if not isinstance(head, Mapping):
        return "head is not an object"
    checks = [("feature_dim", 1, MAX_FEATURE_DIM), ("num_classes", 2, MAX_CLASSES)]
    for key, lo, hi in checks:
        v = _int(head.get(key))
        if v is None or not lo <= v <= hi:
            return f"head {key} {_show(head.get(key))} is out of bounds ({lo}..{hi})"
    for key, lo, hi in (("width", 1, MAX_WIDTH), ("depth", 0, MAX_DEPTH), ("num_heads", 1, MAX_HEADS),
                        ("members", 1, MAX_MEMBERS)):
        if key in head:
            v = _int(head[key])
            if v is None or not lo <= v <= hi:
                return f"head {key} {_show(head[key])} is out of bounds ({lo}..{hi})"
    grid = head.get("grid_hw")
    if (not isinstance(grid, (list, tuple)) or len(grid) != 2
            or any(_int(g) is None or not 1 <= g <= MAX_GRID_SIDE for g in grid)):
        return f"head grid_hw {_show(grid)} is out of bounds (two integers 1..{MAX_GRID_SIDE})"
    if "dropout" in head:
        d = head["dropout"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 1:
            return f"head dropout {_show(d)} is out of bounds (0..1)"
    if head.get("kind") not in HEAD_KINDS:
        return f"head kind {_show(head.get('kind'))} is unknown"
    if head.get("task") not in TASKS:
        return f"head task {_show(head.get('task'))} is unknown"
    if classes is not None and head.get("num_classes") != classes:
        return f"the head has {head.get('num_classes')} outputs for {classes} classes"
    if image_size is not None:
        v = _int(image_size)
        if v is None or not 8 <= v <= MAX_IMAGE_SIZE:
            return f"image size {_show(image_size)} is out of bounds (8..{MAX_IMAGE_SIZE})"
    return None


def state_problem(state: Mapping[str, Any]) -> Optional[str]:
    """Why head weights cannot be trusted (not floating point, NaN or infinity); None if fine."""
    import torch

    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            return f"weight {name} is not floating point ({getattr(tensor, 'dtype', type(tensor).__name__)})"
        if not bool(torch.isfinite(tensor).all()):
            return f"weight {name} holds NaN or infinity"
    return None


# -- weights files -----------------------------------------------------------------------
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own bound on the JSON header
_SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                         "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def available_memory() -> Optional[int]:
    """Bytes of memory this process can still get (Linux MemAvailable, else free pages); None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def safetensors_problem(path: Path | str) -> Optional[str]:
    """Why a .safetensors file cannot be read into memory, judged from its header alone (read
    within `MAX_SAFETENSORS_HEADER`): a header that is too long or not a table of tensors,
    offsets past the end of the file, or tensors that need more memory than is available.
    None when it can be read."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                return "not a safetensors file (shorter than its 8-byte header length)"
            length = int.from_bytes(prefix, "little")
            if length > MAX_SAFETENSORS_HEADER:
                return f"a safetensors header of {length / 1e6:.1f} MB (at most {MAX_SAFETENSORS_HEADER / 1e6:g} MB)"
            if 8 + length > file_size:
                return f"the file ends inside its {length}-byte header (truncated?)"
            header = json.loads(fh.read(length).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return f"not a readable safetensors header ({_first_line(str(exc)) or type(exc).__name__})"
    if not isinstance(header, dict):
        return "not a readable safetensors header (not a JSON object)"
    total, data = 0, file_size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not all(type(v) is int and v >= 0 for v in (*shape, begin, end)) or begin > end:
                raise ValueError
            count = math.prod(shape) * _SAFETENSORS_ITEMSIZE[dtype]
        except (KeyError, TypeError, ValueError):
            return f"tensor {_show(name)}: not a readable safetensors entry"
        if count != end - begin:
            return f"tensor {_show(name)}: {count} bytes for its shape but {end - begin} in the file"
        if end > data:
            return f"tensor {_show(name)} lies past the end of the file (byte {end} of {data}; truncated?)"
        total += count
    free = available_memory()
    if free is not None and total > free:
        return (f"its tensors need {total / 1e9:.1f} GB of memory and {free / 1e9:.1f} GB is available; "
                f"use a machine with more memory (or a smaller model)")
    return None


# -- class names -------------------------------------------------------------------------
def normalise_label(label: str) -> str:
    """A class name as stored: Unicode NFC, surrounding white space removed."""
    return unicodedata.normalize("NFC", str(label)).strip()


def lookalike_key(label: str) -> str:
    """What two class names that a person cannot tell apart have in common: compatibility
    forms folded (full-width letters), invisible format characters (zero-width space,
    joiners, BOM) removed, case folded, white space collapsed."""
    text = "".join(ch for ch in unicodedata.normalize("NFKC", str(label)) if unicodedata.category(ch) != "Cf")
    return " ".join(text.casefold().split())


def lookalike_groups(labels: Iterable[str]) -> list[list[str]]:
    """Groups of two or more distinct names sharing a `lookalike_key`."""
    groups: dict[str, list[str]] = {}
    for label in dict.fromkeys(labels):
        groups.setdefault(lookalike_key(label), []).append(label)
    return [g for g in groups.values() if len(g) > 1]


def finite_json(data: Any) -> Any:
    """`data` with NaN / infinity replaced by None (null), so that what is printed or
    written is valid JSON for any reader."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def describe_lookalikes(groups: list[list[str]]) -> str:
    return "; ".join(" vs ".join(repr(x) for x in g) for g in groups[:5])


# -- CSV ---------------------------------------------------------------------------------
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """A value for a CSV cell: text a spreadsheet would run as a formula (starting with
    = + - @ tab or CR) gets a leading apostrophe, as does text already starting with one
    (so `csv_uncell` restores every value exactly); numbers and numeric text stay as they are."""
    if not isinstance(value, str) or not value:
        return value
    if value[0] == "'" or (value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value)):
        return "'" + value
    return value


def csv_uncell(value: Optional[str]) -> Optional[str]:
    """The value `csv_cell` was given."""
    if value and value[0] == "'" and len(value) > 1 and (value[1] == "'" or value[1:].startswith(_FORMULA_START)):
        return value[1:]
    return value


# -- run checksum ------------------------------------------------------------------------
RUN_CHECKED_KEYS = ("run_id", "task", "classes", "train_config", "head_config", "cache_fingerprint", "backbone",
                    "catalog_version", "best_epoch")


def run_checksum(record: Mapping[str, Any], head_sha256: str) -> str:
    """SHA-256 over a run's settings (the keys above) and its head file's SHA-256."""
    settings = {k: record.get(k) for k in RUN_CHECKED_KEYS}
    text = json.dumps(settings, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256((text + "\n" + head_sha256).encode()).hexdigest()

