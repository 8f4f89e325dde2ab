"""The project file `loff-project.json` (split out of project.py, issue 10): what it holds
(`ProjectSettings`), how it is read (every field checked: a project from someone else is
input too) and how older schemas are migrated. `loff_core.project` re-exports these names."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ProjectError
from . import trust

PROJECT_FILE = "loff-project.json"
SCHEMA_VERSION = 2  # 2: split_source (how the split and the patients were assigned at import)
from .settings import TASKS


@dataclass
class ProjectSettings:
    """What `loff-project.json` holds. Unknown keys from a newer minor version are kept."""

    name: str
    created: str
    salt: str
    schema_version: int = SCHEMA_VERSION
    images_root: Optional[str] = None  # relative to the project folder
    images_root_absolute: Optional[str] = None
    classes: list[str] = field(default_factory=list)
    task: str = "classification"
    label_name: Optional[str] = None
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    synthetic: bool = False
    catalog_version: int = 0  # bumped on every import; runs remember it (stale flag)
    active_cache: Optional[str] = None  # fingerprint of the cache made by the last extract
    # how the last import found its labels, so a re-import (the app's Import page) can offer
    # the same: {"csv", "csv_absolute", "label_column", "file_column", "patient_column",
    # "classes"}; None: folder names
    labels_source: Optional[dict[str, Any]] = None
    # how the last import split the images and found the patients (schema 2):
    # {"kind": "random" | "given", "from": str, "val_carved": bool, "patient_overlap":
    #  {"patients", "images", "action"} | None, "patients_from": {source: images}}
    split_source: Optional[dict[str, Any]] = None
    # bumped on every save; a save under the lock refuses to overwrite a revision it did not
    # start from (another process wrote meanwhile, e.g. after the lock file was deleted)
    revision: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProjectSettings":
        known = {f for f in cls.__dataclass_fields__ if f != "extras"}
        extras = {k: v for k, v in data.items() if k not in known}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "split_fractions" in kwargs:
            kwargs["split_fractions"] = tuple(kwargs["split_fractions"])
        return cls(**kwargs, extras=extras)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extras = data.pop("extras")
        data["split_fractions"] = list(self.split_fractions)
        return {**extras, **data}

def _read_settings(path: Path) -> ProjectSettings:
    """The project file, every field checked: a project from someone else is input too."""
    data = trust.load_json(path, what="project file")
    if "schema_version" not in data:
        raise ProjectError(f"{path}: project file has no schema_version")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProjectError(f"{path}: project file's schema_version must be a whole number from 1 to "
                           f"{SCHEMA_VERSION}, not {json.dumps(version)} ({type(version).__name__}); "
                           f"restore the project file")
    if version > SCHEMA_VERSION:
        raise ProjectError(
            f"{path}: project was written by a newer LOFF Studio (schema {version}, this one reads {SCHEMA_VERSION})"
        )
    problem = _settings_problem(data)
    if problem is not None:
        raise ProjectError(f"{path}: project file is not valid: {problem}")
    data = _migrate(data)
    try:
        settings = ProjectSettings.from_dict(data)
    except TypeError as exc:
        raise ProjectError(f"{path}: project file is missing fields ({exc})") from exc
    return settings


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A project file of an older schema as the current one reads it (saved on next write)."""
    data = dict(data)
    if data["schema_version"] < 2:
        # schema 1 always split at random by patient; how patients were found was not recorded
        data.setdefault("split_source", {"kind": "random", "from": "random by patient (before schema 2)",
                                         "val_carved": False, "patient_overlap": None, "patients_from": {}}
                        if data.get("catalog_version") else None)
        data["schema_version"] = 2
    return data


def _settings_problem(data: dict[str, Any]) -> Optional[str]:
    """Why a project file's fields cannot be used (named), or None."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key in ("name", "created", "salt"):
        if key in data and not isinstance(data[key], str):
            return f"{key} must be text, not {type(data[key]).__name__}"
    salt = data.get("salt")
    if isinstance(salt, str):
        if not salt:
            return "salt is empty (patient keys would be computable by anyone); restore the project file"
        try:
            if len(bytes.fromhex(salt)) < 8:
                return "salt is shorter than 8 bytes (patient keys would be guessable)"
        except ValueError:
            return "salt is not hexadecimal"
    for key in ("seed", "catalog_version", "revision"):
        if key in data and not is_int(data[key]):
            return f"{key} must be an integer, not {type(data[key]).__name__}"
        if key in data and key != "seed" and data[key] < 0:
            return f"{key} must not be negative"
    if "seed" in data and not 0 <= data["seed"] < 2 ** 63:
        return "seed must be between 0 and 2^63"
    if "task" in data and data["task"] not in TASKS:
        return f"task {data['task']!r} is not one of {', '.join(TASKS)}"
    classes = data.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return "classes must be a list of names"
    for key in ("images_root", "images_root_absolute", "label_name"):
        if data.get(key) is not None and (not isinstance(data[key], str) or "\0" in data[key]):
            return f"{key} must be text without NUL bytes"
    if data.get("active_cache") is not None:
        problem = trust.name_problem(data["active_cache"])
        if problem:
            return f"active_cache {data['active_cache']!r} is refused: {problem}"
    fractions = data.get("split_fractions", [0.7, 0.15, 0.15])
    if (not isinstance(fractions, list) or len(fractions) != 3
            or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f <= 1 for f in fractions)
            or sum(fractions) <= 0):
        return "split_fractions must be three numbers between 0 and 1"
    if "synthetic" in data and not isinstance(data["synthetic"], bool):
        return "synthetic must be true or false"
    src = data.get("labels_source")
    if src is not None and (not isinstance(src, dict)
                            or not all(v is None or isinstance(v, (str, list)) for v in src.values())):
        return "labels_source must be an object of names"
    if data.get("split_source") is not None and not isinstance(data["split_source"], dict):
        return "split_source must be an object"
    return None
