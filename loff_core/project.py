"""The project folder: its versioned settings file, catalog, caches and training runs.

A project is a folder the user owns. Everything inside is addressed relative to it, so
the folder can be moved; the images it was imported from are referenced (relative to the
project when possible, with the absolute path as a fallback), never copied.

This module orchestrates the engine's steps (import, extract, train, evaluate) over one
project. Each step is a plain method taking a `Progress`; the CLI and the app's worker
threads call the same methods.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .catalog import Catalog, CatalogEntry, assign_splits, scan_folder
from .errors import CacheError, ProjectError, Remedy, TrainingError
from .fsutil import HELD_LOCK_FDS, atomic_path, atomic_write_json
from .progress import Progress
from . import trust
from .settings import EvaluateSettings, ExtractSettings

PROJECT_FILE = "loff-project.json"
SCHEMA_VERSION = 2  # 2: split_source (how the split and the patients were assigned at import)
TASKS = ("classification", "ordinal")
#: what to do when a given split puts one patient on two sides
PATIENT_OVERLAP_ACTIONS = ("keep", "resplit")


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


@dataclass(frozen=True)
class ImportSummary:
    imported: int
    labelled: int
    failures: list[dict[str, str]]
    warnings: list[str]
    classes: list[str]
    splits: dict[str, int]
    per_class: dict[str, int]


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    path: Path
    record: dict[str, Any]

    @property
    def head_path(self) -> Path:
        return self.path / "head.safetensors"


class Project:
    """One project folder. Open it with `Project.open`, create one with `Project.create`."""

    def __init__(self, root: Path, settings: ProjectSettings):
        self.root = Path(root)
        self.settings = settings
        self._catalog: Optional[Catalog] = None

    # -- files -------------------------------------------------------------------------
    @property
    def settings_path(self) -> Path:
        return self.root / PROJECT_FILE

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.csv"

    @property
    def report_path(self) -> Path:
        return self.root / "import-report.json"

    @property
    def caches_dir(self) -> Path:
        return self.root / "caches"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    # -- life cycle --------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path | str, name: Optional[str] = None, *, seed: int = 0) -> "Project":
        root = Path(root)
        if (root / PROJECT_FILE).exists():
            raise ProjectError(f"{root}: a project already exists here; open it instead")
        if root.exists() and not root.is_dir():
            raise ProjectError(f"{root}: not a folder")
        root.mkdir(parents=True, exist_ok=True)
        settings = ProjectSettings(
            name=name or root.resolve().name,
            created=_now(),
            salt=secrets.token_hex(16),
            seed=seed,
        )
        project = cls(root, settings)
        project.save()
        return project

    @classmethod
    def open(cls, root: Path | str) -> "Project":
        root = Path(root)
        if (root / cls.COMMIT_DIR).is_dir():
            try:
                cls(root, None)._finish_commit()  # type: ignore[arg-type]  # an interrupted import: finish it
            except OSError:
                pass  # read-only: the lock names the problem when something is changed
        if not (root / PROJECT_FILE).is_file():
            raise ProjectError(f"not a LOFF Studio project (no {PROJECT_FILE})", root, Remedy.CREATE_PROJECT)
        return cls(root, _read_settings(root / PROJECT_FILE))

    @classmethod
    def open_or_create(cls, root: Path | str) -> "Project":
        root = Path(root)
        return cls.open(root) if (root / PROJECT_FILE).exists() else cls.create(root)

    _held_revision: Optional[int] = None  # the revision on disk when this process took the lock

    def save(self) -> None:
        self._check_revision()
        self.settings.revision += 1
        atomic_write_json(self.settings_path, self.settings.to_dict())
        if self._held_revision is not None:
            self._held_revision = self.settings.revision

    def _check_revision(self) -> None:
        if self._held_revision is not None and self.settings_path.is_file():
            on_disk = _read_settings(self.settings_path).revision
            if on_disk != self._held_revision:
                raise ProjectError(
                    f"{self.settings_path}: changed by another process while this one held the project lock "
                    f"(was the .lock file deleted?); not saving over it; open the project again")

    # files that change together (an import's catalog, sidecar, report and settings) are
    # written into STAGING_DIR, which is renamed to COMMIT_DIR (the commit point), and then
    # moved into place; whoever opens the project next finishes an interrupted move
    # (roll forward), and a staging folder left by a killed writer is dropped (roll back)
    STAGING_DIR = ".staging"
    COMMIT_DIR = ".commit"

    def _commit_files(self, write: Callable[[Path], None]) -> None:
        staging, commit = self.root / self.STAGING_DIR, self.root / self.COMMIT_DIR
        self._finish_commit()
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir()
            write(staging)
            os.replace(staging, commit)  # the commit point: before it the old files stand, after it the new
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            name = exc.filename
            if name is not None and Path(os.fsdecode(name)).parent == staging:  # name the real file
                raise OSError(exc.errno, exc.strerror, str(self.root / Path(os.fsdecode(name)).name)) from None
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._finish_commit()

    def _finish_commit(self) -> None:
        commit = self.root / self.COMMIT_DIR
        if not commit.is_dir():
            return
        for path in sorted(commit.iterdir(), key=lambda p: p.name == PROJECT_FILE):  # settings last
            try:
                os.replace(path, self.root / path.name)
            except FileNotFoundError:
                pass  # another process finished this move
        try:
            commit.rmdir()
        except OSError:
            pass

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the project's write lock; a second process is refused, not corrupted.

        A portable file lock (`filelock`: flock on POSIX, LockFileEx on Windows). Deleting
        the lock file while a job runs lets a second process take a new one, so saves under
        the lock also compare the settings' revision with the one read when the lock was
        taken and refuse to write over another process's change (`save`)."""
        from filelock import FileLock, Timeout

        path = self.root / ".lock"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            open(path, "a").close()  # a read-only or full location is named here, before anything
        except OSError as exc:  # a read-only or full location: say so, not a traceback
            raise ProjectError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from None
        lock = FileLock(str(path), timeout=0, is_singleton=False)
        try:
            lock.acquire()
        except Timeout:
            try:
                owner = path.read_text(encoding="utf-8", errors="replace").strip()[:100] or "another process"
            except OSError:
                owner = "another process"
            raise ProjectError(
                f"{self.root}: the project is being changed by {owner}; wait for it to finish or close it"
            ) from None
        except OSError as exc:
            raise ProjectError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from None
        fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
        try:
            try:
                with open(path, "r+", encoding="utf-8") as fh:
                    fh.truncate()
                    fh.write(f"process {os.getpid()}")
            except OSError:
                pass  # the owner's name is a courtesy
            if isinstance(fd, int):
                HELD_LOCK_FDS.add(fd)
            # another process may have changed the project since it was opened (the app keeps
            # it open for hours): work under the lock starts from what is on disk, so a save
            # here cannot undo that process's import or extraction
            self._finish_commit()
            shutil.rmtree(self.root / self.STAGING_DIR, ignore_errors=True)  # left by a killed writer
            if self.settings_path.is_file():
                self.settings = _read_settings(self.settings_path)
            self._held_revision = self.settings.revision
            self._catalog = None
            yield
        finally:
            self._held_revision = None
            if isinstance(fd, int):
                HELD_LOCK_FDS.discard(fd)
            lock.release()

    # -- catalog -----------------------------------------------------------------------
    @property
    def salt(self) -> bytes:
        return bytes.fromhex(self.settings.salt)

    def catalog(self) -> Catalog:
        if self._catalog is None:
            if not self.catalog_path.exists():
                raise ProjectError("no images imported yet", self.root, Remedy.IMPORT_IMAGES, project=self.root)
            self._catalog = Catalog.load(self.catalog_path)
        return self._catalog

    def has_catalog(self) -> bool:
        return self.catalog_path.exists()

    def images_root(self) -> Path:
        """The folder the catalog's paths are relative to, found again after a move."""
        absolute = self.settings.images_root_absolute
        found = self._found_again(self.settings.images_root, absolute, Path.is_dir)
        if found is not None:
            return found
        raise ProjectError(
            f"{self.root}: the images folder is missing (was {absolute}); move it back or re-import"
        )

    def image_path(self, entry: CatalogEntry) -> Path:
        return self.images_root() / entry.path

    def import_images(
        self,
        images_dir: Path | str,
        *,
        labels_csv: Any = None,
        label_column: Optional[str] = None,
        file_column: Optional[str] = None,
        patient_column: Optional[str] = None,
        classes: Optional[list[str]] = None,
        task: Optional[str] = None,
        split_column: Optional[str] = None,
        patient_from_name: Optional[str] = None,
        on_patient_overlap: Optional[str] = None,
        progress: Progress = Progress(),
    ) -> ImportSummary:
        """Scan IMAGES_DIR into the catalog. `labels_csv`: one CSV, or a list of CSVs and
        (split, CSV) pairs (see `scan_folder`). A split given by the CSV or the folders is
        kept (val carved from train by patient when it has none); a patient it puts on two
        sides stops the import with counts unless `on_patient_overlap` is "keep" (as given)
        or "resplit" (a fresh patient-grouped split, the given one ignored)."""
        images_dir = Path(images_dir)
        if not images_dir.is_dir():
            raise ProjectError(f"{images_dir}: not a folder")
        if task is not None and task not in TASKS:
            raise ProjectError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if on_patient_overlap not in (None, *PATIENT_OVERLAP_ACTIONS):
            raise ProjectError(f"unknown choice {on_patient_overlap!r} for patients on two sides; "
                               f"choose {' or '.join(PATIENT_OVERLAP_ACTIONS)}")
        from .catalog import _labels_sources

        sources = _labels_sources(labels_csv)
        catalog = scan_folder(
            images_dir,
            salt=self.salt,
            labels_csv=sources or None,
            label_column=label_column,
            file_column=file_column,
            patient_column=patient_column,
            classes=classes,
            split_column=split_column,
            patient_from_name=patient_from_name,
            progress=progress,
        )
        entries, split_source = complete_split(catalog, seed=self.settings.seed,
                                               fractions=self.settings.split_fractions,
                                               on_patient_overlap=on_patient_overlap)
        warnings = list(catalog.warnings)
        overlap = split_source.get("patient_overlap")
        if overlap:
            warnings.append(f"the given split put {overlap['patients']} patients ({overlap['images']} images) on two "
                            f"sides; " + ("kept as given: their images are not independent across splits"
                                          if overlap["action"] == "keep" else "re-split by patient instead"))
        catalog = replace(catalog, entries=entries, warnings=warnings)
        report = {
            "images_root": str(images_dir),
            "imported": len(catalog.entries),
            "failed": [{"path": f.path, "reason": f.reason} for f in catalog.failures],
            "warnings": list(catalog.warnings),
            "split_source": split_source,
            "date": _now(),
        }
        s = replace(self.settings, extras=dict(self.settings.extras))
        s.images_root = _relative_or_none(images_dir, self.root)
        s.images_root_absolute = str(images_dir.resolve())
        s.classes = list(catalog.classes)
        s.label_name = label_column or s.label_name
        first = sources[0][1] if sources else None
        s.labels_source = None if not sources else {
            "csv": _relative_or_none(first, self.root), "csv_absolute": str(first.resolve()),
            "label_column": label_column, "file_column": file_column, "patient_column": patient_column,
            "classes": list(classes) if classes else None, "split_column": split_column,
            "patient_from_name": patient_from_name,
            "csvs": [{"split": sp, "csv": _relative_or_none(p, self.root), "csv_absolute": str(p.resolve())}
                     for sp, p in sources]}
        if not sources and patient_from_name:
            s.labels_source = {"patient_from_name": patient_from_name}
        s.split_source = split_source
        if task is not None:
            s.task = task
        s.catalog_version += 1
        self._check_revision()
        s.revision += 1

        def write(folder: Path) -> None:  # catalog, its sidecar, the report and the settings: together
            catalog.save(folder / self.catalog_path.name)
            atomic_write_json(folder / self.report_path.name, report)
            atomic_write_json(folder / PROJECT_FILE, s.to_dict())
        self._commit_files(write)
        self.settings, self._catalog = s, catalog
        if self._held_revision is not None:
            self._held_revision = s.revision
        return self.import_summary()

    def relative(self, path: Path | str) -> str:
        """A path as `loff` prints it: relative to the project folder (absolute on another
        drive)."""
        return _relative_or_none(Path(path), self.root) or str(Path(path).resolve())

    def labels_csv(self) -> Optional[Path]:
        """The labels CSV of the last import, found again after a move; None for folder names
        or when the file is gone."""
        src = self.settings.labels_source
        return self._found_again(src.get("csv"), src.get("csv_absolute"), Path.is_file) if src and (
            src.get("csv") or src.get("csv_absolute")) else None

    def _found_again(self, rel: Optional[str], absolute: Optional[str], exists: Any) -> Optional[Path]:
        """A path stored relative to the project (so the folder can move together with it)
        and absolute (so the project can move alone): the first that still `exists`."""
        if rel is not None and exists(self.root / rel):
            return (self.root / rel).resolve()
        if absolute is not None and exists(Path(absolute)):
            return Path(absolute)
        return None

    def import_summary(self) -> ImportSummary:
        catalog = self.catalog()
        report = self.import_report()
        labelled = [e for e in catalog.entries if e.label is not None]
        splits: dict[str, int] = {}
        per_class: dict[str, int] = {c: 0 for c in catalog.classes}
        for e in labelled:
            splits[e.split or "none"] = splits.get(e.split or "none", 0) + 1
            per_class[e.label] = per_class.get(e.label, 0) + 1
        return ImportSummary(
            imported=len(catalog.entries),
            labelled=len(labelled),
            failures=report.get("failed", []),
            warnings=report.get("warnings", []),
            classes=list(catalog.classes),
            splits=splits,
            per_class=per_class,
        )

    def import_report(self) -> dict[str, Any]:
        if not self.report_path.exists():
            return {}
        report = trust.load_json(self.report_path, what="import report")
        failed, warnings = report.get("failed", []), report.get("warnings", [])
        if (not isinstance(failed, list) or not isinstance(warnings, list)
                or not all(isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("reason"), str)
                           for f in failed)
                or not all(isinstance(w, str) for w in warnings)):
            raise ProjectError(f"{self.report_path}: unreadable import report (failed / warnings are not lists of "
                               f"path and reason); import again to rewrite it")
        return report

    # -- features ----------------------------------------------------------------------
    def extract(
        self,
        spec: Any,
        *,
        device: str = "auto",
        batch_size: int = ExtractSettings.batch_size,
        num_workers: Optional[int] = None,
        progress: Progress = Progress(),
    ) -> Any:
        """Run the frozen backbone over every catalogued image; returns an ExtractResult."""
        from .cache import distributed_rank_world, extract_features

        catalog = self.catalog()
        root = self.images_root()
        items = [(e.image_id, root / e.path) for e in catalog.entries]
        result = extract_features(
            items, spec, self.caches_dir, device=device, batch_size=batch_size,
            num_workers=num_workers, progress=progress,
        )
        if distributed_rank_world()[0] != 0:
            return result  # under torchrun, rank 0 merges and records the cache
        fingerprint = Path(result.cache_path).name.split(".")[0]
        previous = self.settings.active_cache
        if (result.stopped and previous not in (None, fingerprint)
                and (self.caches_dir / f"{previous}.h5").exists()):
            # a stopped extraction with other settings does not replace the cache training
            # uses; running extract again with these settings finishes it and switches over
            result.notes.append(f"stopped before the end: training keeps using the previous cache {previous}; "
                                f"extract again with these settings to finish {fingerprint} and use it")
        else:
            self.settings.active_cache = fingerprint
        self.save()
        if result.failures:
            self._record_extract_failures(result.failures)
        return result

    def _record_extract_failures(self, failures: list[Any]) -> None:
        report = self.import_report()
        known = {f["path"] for f in report.get("failed", [])}
        root = self.images_root()
        for f in failures:
            rel = _relative_or_none(Path(f.path), root) or str(f.path)
            if rel not in known:
                report.setdefault("failed", []).append({"path": rel, "reason": f.reason})
        atomic_write_json(self.report_path, report)

    def cache_paths(self) -> list[Path]:
        return sorted(self.caches_dir.glob("*.h5")) if self.caches_dir.is_dir() else []

    def open_cache(self, fingerprint: Optional[str] = None) -> Any:
        from .cache import FeatureCache

        fingerprint = fingerprint or self.settings.active_cache
        if fingerprint is None:
            raise CacheError("no feature cache yet", self.root, Remedy.EXTRACT, project=self.root)
        trust.check_name(fingerprint, what="cache fingerprint", where=str(self.settings_path), error=CacheError)
        path = self.caches_dir / f"{fingerprint}.h5"
        if not path.exists():
            raise CacheError("feature cache is missing or unfinished", path, Remedy.EXTRACT_AGAIN, project=self.root)
        return FeatureCache.open(path, expected_fingerprint=fingerprint)

    # -- training ----------------------------------------------------------------------
    def labelled_split(self, split: str, cache: Any) -> tuple[list[str], list[int], list[CatalogEntry]]:
        """Image ids, class indices and entries of one split that the cache holds."""
        catalog = self.catalog()
        cached = set(cache.image_ids)
        entries = [e for e in catalog.in_split(split) if e.label is not None and e.image_id in cached]
        return [e.image_id for e in entries], [catalog.class_index(e.label) for e in entries], entries

    def train(
        self,
        config: Any,
        *,
        progress: Progress = Progress(),
        on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
    ) -> RunInfo:
        """Train a head on the active cache; the run folder appears only when complete."""
        from .training import train_head

        cache = self.open_cache()
        classes = self.catalog().classes
        if len(classes) < 2:
            raise TrainingError(f"{self.root}: training needs at least two classes; labels found: {classes or 'none'}")
        train_ids, train_y, _ = self.labelled_split("train", cache)
        val_ids, val_y, _ = self.labelled_split("val", cache)
        if not train_ids:
            raise TrainingError(f"{self.root}: no labelled training images with features; import labels and extract first")
        if config.task == "ordinal" and len(classes) < 3:
            raise TrainingError("the ordinal task needs at least three ordered levels")
        started = _now()
        for leftover in self.runs_dir.glob(".*.partial") if self.runs_dir.is_dir() else []:
            shutil.rmtree(leftover, ignore_errors=True)  # from a run killed while it was being saved
        result = train_head(
            cache, train_ids, train_y, val_ids, val_y, config,
            num_classes=len(classes), progress=progress, on_epoch=on_epoch,
        )
        run_id = self._new_run_id(config.head)
        record = {
            "run_id": run_id,
            "started": started,
            "finished": _now(),
            "task": config.task,
            "classes": list(classes),
            "train_config": _config_dict(config),
            "head_config": result.head_config.to_dict(),
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_score": result.best_score,
            "monitor": result.monitor,
            "stopped": result.stopped,
            "notes": list(result.notes),
            "n_train": len(train_ids),
            "n_val": len(val_ids),
            "catalog_version": self.settings.catalog_version,
            "cache_fingerprint": cache.fingerprint,
            "backbone": cache.backbone,
        }
        run = self._write_run(run_id, record, result.state_dict)
        if result.stopped == "interrupted":
            raise KeyboardInterrupt  # saved; the caller still learns it was interrupted (exit 130)
        if val_ids and len(set(val_y)) >= 2:  # temperature (+ binary threshold) chosen on val
            from .calibration import calibrate_run

            calibrate_run(self, run.run_id)
            run = self.run(run.run_id)
        return run

    def _new_run_id(self, head: str) -> str:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_id, n = f"{stamp}-{head}", 1
        while (self.runs_dir / run_id).exists():
            n += 1
            run_id = f"{stamp}-{head}-{n}"
        return run_id

    def _write_run(self, run_id: str, record: dict[str, Any], state_dict: dict[str, Any]) -> RunInfo:
        from safetensors.torch import save_file

        self.runs_dir.mkdir(parents=True, exist_ok=True)
        staging = self.runs_dir / f".{run_id}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(staging / "head.safetensors"))
            record = {**record, "checksum": trust.run_checksum(record, trust.sha256_file(staging / "head.safetensors"))}
            atomic_write_json(staging / "run.json", record)
            os.replace(staging, self.runs_dir / run_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.run(run_id)

    def runs(self) -> list[RunInfo]:
        """The runs whose run.json can be read and checked, oldest first. A damaged run is
        left out (listed in `broken_runs` with the reason), so it never breaks the others."""
        return self._scan_runs()[0]

    def broken_runs(self) -> list[tuple[str, str]]:
        """(run id, one-line reason) of run folders that cannot be used."""
        return self._scan_runs()[1]

    def _scan_runs(self) -> tuple[list[RunInfo], list[tuple[str, str]]]:
        if not self.runs_dir.is_dir():
            return [], []
        found, broken = [], []
        for path in sorted(self.runs_dir.iterdir()):
            if path.name.startswith(".") or not (path / "run.json").is_file():
                continue
            try:
                found.append(RunInfo(path.name, path, _read_run_record(path)))
            except ProjectError as exc:
                broken.append((path.name, str(exc)))
        return found, broken

    def run(self, run_id: Optional[str] = None) -> RunInfo:
        runs, broken = self._scan_runs()
        if run_id is not None:
            for name, reason in broken:
                if name == run_id:
                    raise ProjectError(reason)
        if not runs:
            raise ProjectError("no training runs yet" + (f" ({len(broken)} damaged run folders are ignored)" if broken else ""),
                               self.root, Remedy.TRAIN, project=self.root)
        if run_id is None:
            return runs[-1]
        for r in runs:
            if r.run_id == run_id:
                return r
        raise ProjectError(f"{self.root}: no run {run_id!r}; runs: {', '.join(r.run_id for r in runs)}")

    def stale_reasons(self, run: RunInfo) -> list[str]:
        """Why a run's head no longer matches the project (labels or cache changed)."""
        reasons = []
        if run.record.get("catalog_version") != self.settings.catalog_version:
            reasons.append("images or labels were re-imported after this run was trained")
        if run.record.get("cache_fingerprint") != self.settings.active_cache:
            reasons.append("the active feature cache is from another backbone or settings")
        if self.has_catalog() and list(run.record.get("classes", [])) != list(self.catalog().classes):
            reasons.append("the project's classes are not the ones this run was trained on")
        return reasons

    def load_head(self, run: RunInfo) -> tuple[Any, dict[str, Any]]:
        from safetensors.torch import load_file

        from .heads import HeadConfig

        from safetensors import SafetensorError

        config = HeadConfig.from_dict(run.record["head_config"])
        where = f"{run.path / 'run.json'}"
        if not run.head_path.is_file():
            raise ProjectError(f"{run.head_path}: the run's head file is missing")
        checksum = run.record.get("checksum")
        if checksum is not None and checksum != trust.run_checksum(run.record, trust.sha256_file(run.head_path)):
            raise ProjectError(f"{where}: the run's settings or head file changed after training (checksum "
                               f"mismatch); this run is not used")
        try:
            state = load_file(str(run.head_path))
        except (SafetensorError, OSError) as exc:
            raise ProjectError(f"{run.head_path}: cannot read head weights ({trust._first_line(str(exc))})") from None
        problem = trust.state_problem(state)
        if problem is None:
            from .heads import build_head

            try:
                build_head(config).load_state_dict(state, strict=True)
            except (RuntimeError, ValueError, TypeError) as exc:
                problem = f"the weights do not fit the {config.kind} head run.json describes " \
                          f"({trust._first_line(str(exc))})"
        if problem is not None:
            raise ProjectError(f"{run.head_path}: {problem}")
        return config, state

    def explain(self, run_id: Optional[str], image_ids: list[str]) -> dict[str, Any]:
        """Per image: class probabilities and the head's attention over the token grid
        ([h, w], max 1), for the viewer's heat map. Reads only these images' features."""
        import torch

        from .heads import attention_map, build_head, probabilities

        run = self.run(run_id)
        cache = self.open_cache(run.record["cache_fingerprint"])
        self._check_cache_fits(run, cache)
        head_config, state = self.load_head(run)
        head = build_head(head_config)
        head.load_state_dict(state, strict=True)
        head.eval()
        idx = cache.indices(image_ids)
        order = np.argsort(idx)  # h5py reads fastest in file order
        cls, grid = cache.read(idx[order])
        with torch.inference_mode():
            c, g = torch.from_numpy(cls).float(), torch.from_numpy(grid).float()
            probs = probabilities(head(c, g), run.record["task"]).numpy()
            maps = attention_map(head, c, g).numpy()
        from .calibration import adjust, decide

        op = run.record.get("operating_point")
        probs = adjust(probs, op)
        decided = decide(probs, run.record["task"], op)
        back = np.argsort(order)
        maps = maps[back]
        entries = self.catalog().by_id()
        size = int(cache.backbone["image_size"])
        heat = [_heat_on_image(m, size, entries[i].rows, entries[i].cols) if i in entries else m
                for m, i in zip(maps, image_ids)]
        return {"image_ids": list(image_ids), "probabilities": probs[back], "attention": maps, "heat": heat,
                "classes": run.record["classes"], "task": run.record["task"],
                "predicted": [run.record["classes"][int(c)] for c in decided[back]], "operating_point": op}

    @staticmethod
    def _check_cache_fits(run: RunInfo, cache: Any) -> None:
        """A run's head only reads features of the shape it was trained on."""
        head = run.record["head_config"]
        if head["feature_dim"] != cache.feature_dim or list(head["grid_hw"]) != list(cache.grid_hw):
            raise CacheError(f"{cache.path}: tokens are {cache.feature_dim} wide on a {cache.grid_hw[0]}x"
                             f"{cache.grid_hw[1]} grid, but run {run.run_id}'s head reads {head['feature_dim']} on "
                             f"{head['grid_hw'][0]}x{head['grid_hw'][1]}")

    # -- evaluation --------------------------------------------------------------------
    def evaluate(self, run_id: Optional[str] = None, split: str = "test", *,
                 n_bootstrap: int = EvaluateSettings.bootstrap, save: bool = True) -> dict[str, Any]:
        """Metrics and per-image predictions of a run on one split; saved with the run
        (`save=False`: only returned, e.g. for a ROC overlay while another job holds the lock)."""
        from .metrics import evaluate_predictions, small_split_warning
        from .training import predict_probabilities

        run = self.run(run_id)
        catalog_classes = list(self.catalog().classes)
        if list(run.record["classes"]) != catalog_classes:
            raise ProjectError(f"{run.path / 'run.json'}: run {run.run_id} was trained on the classes "
                               f"{', '.join(run.record['classes'])} but the catalog has {', '.join(catalog_classes)}; "
                               f"its outputs cannot be scored against these labels; train again")
        cache = self.open_cache(run.record["cache_fingerprint"])
        self._check_cache_fits(run, cache)
        ids, y, entries = self.labelled_split(split, cache)
        if not ids:
            raise ProjectError(f"{self.root}: the {split} split has no labelled images with features")
        head_config, state = self.load_head(run)
        probs = predict_probabilities(head_config, state, cache, ids)
        classes = run.record["classes"]
        task = run.record["task"]
        from .calibration import adjust, decide

        op = run.record.get("operating_point")
        probs = adjust(probs, op)  # the run's calibration / prevalence, then its threshold
        predicted = decide(probs, task, op)
        evaluation = evaluate_predictions(y, probs, classes, task, n_bootstrap=n_bootstrap, seed=self.settings.seed,
                                          predicted=predicted)
        images = self.images_root()
        predictions = [
            {
                "image_id": e.image_id,
                "path": self.relative(images / e.path),  # relative to the project folder
                "label": e.label,
                "predicted": classes[int(p)],
                "probabilities": [round(float(x), 6) for x in row],
            }
            for e, p, row in zip(entries, predicted, probs)
        ]
        result = {
            "run": run.run_id,
            "split": split,
            "task": task,
            "classes": classes,
            "n": len(ids),
            "stale": self.stale_reasons(run),
            "operating_point": op,
            **evaluation,
            "warnings": [w for w in [small_split_warning(len(ids), evaluation["ci"].get("accuracy"), split)] if w],
            "predictions": predictions,
        }
        if save:
            atomic_write_json(run.path / f"eval-{split}.json", {k: v for k, v in result.items() if k != "predictions"})
            self._write_predictions_csv(run.path / f"predictions-{split}.csv", predictions, classes)
        return result

    @staticmethod
    def _write_predictions_csv(path: Path, predictions: list[dict[str, Any]], classes: list[str]) -> None:
        # UTF-8; a file name that is not UTF-8 (bytes on POSIX, held as surrogates) is
        # written as its original bytes, like catalog.csv, so the path names the file
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
                writer = csv.writer(fh)
                writer.writerow([trust.csv_cell(v) for v in ("image_id", "path", "label", "predicted",
                                                             *[f"p_{c}" for c in classes])])
                for p in predictions:
                    writer.writerow([trust.csv_cell(v) for v in (p["image_id"], p["path"], p["label"], p["predicted"])]
                                    + list(p["probabilities"]))

    @staticmethod
    def read_predictions_csv(path: Path | str) -> list[dict[str, str]]:
        """The rows of a `predictions-SPLIT.csv` as written by `evaluate` (or by `loff predict
        --csv`), paths decoded as they were written (non-UTF-8 bytes back to surrogates)."""
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            return [{trust.csv_uncell(k): trust.csv_uncell(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _heat_on_image(grid_map: np.ndarray, size: int, rows: int, cols: int) -> np.ndarray:
    """A token-grid map over the padded square the backbone saw -> the part over the image
    (the preprocessor centres the aspect-kept image on a size x size square)."""
    from PIL import Image

    up = np.asarray(Image.fromarray(grid_map.astype(np.float32), mode="F").resize((size, size),
                                                                                 Image.Resampling.BILINEAR))
    scale = size / max(rows, cols)
    nh, nw = max(1, round(rows * scale)), max(1, round(cols * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    return up[top:top + nh, left:left + nw]


def write_predictions_csv(path: Path, result: dict[str, Any], *, with_failed: bool = True) -> None:
    """`predict_files`' result as CSV (path, predicted, p_<class>...; with_failed: then one
    row per unreadable file with "not read: <reason>"). UTF-8; a non-UTF-8 file name is
    written as its original bytes. Temp file + rename."""
    classes = result["classes"]
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                              errors="surrogateescape") as fh:
        writer = csv.writer(fh)
        writer.writerow([trust.csv_cell(v) for v in ("path", "predicted", *[f"p_{c}" for c in classes])])
        for p in result["predictions"]:
            writer.writerow([trust.csv_cell(p["path"]), trust.csv_cell(p["predicted"]), *p["probabilities"]])
        for f in result.get("failed", []) if with_failed else []:
            writer.writerow([trust.csv_cell(f["path"]), trust.csv_cell(f"not read: {f['reason']}"), *[""] * len(classes)])


def _read_settings(path: Path) -> ProjectSettings:
    """The project file, every field checked: a project from someone else is input too."""
    data = trust.load_json(path, what="project file")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProjectError(f"{path}: project file has no schema_version")
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


def complete_split(catalog: Catalog, *, seed: int, fractions: Any,
                   on_patient_overlap: Optional[str] = None) -> tuple[list[CatalogEntry], dict[str, Any]]:
    """The catalog's entries with every labelled image in train / val / test, and how.

    No given split: a random patient-grouped, label-stratified split. A given split (in the
    entries' `split`): kept for labelled images; a validation part is carved from train by
    patient (deterministic for `seed`) when there is none. A patient on two sides of a given
    split: ProjectError with the counts (no identifiers) unless `on_patient_overlap` says
    "keep" or "resplit"."""
    entries = list(catalog.entries)
    labelled = [e for e in entries if e.label is not None]
    source: dict[str, Any] = {"kind": "random", "from": "", "val_carved": False, "patient_overlap": None,
                              "patients_from": dict(catalog.patients_from)}
    f = tuple(float(x) for x in fractions)
    given = [e for e in labelled if e.split]
    random_from = (f"random by patient ({round(100 * f[0] / sum(f))}/{round(100 * f[1] / sum(f))}/"
                   f"{round(100 * f[2] / sum(f))}, stratified by label, seed {seed})")
    if not given:
        source["from"] = random_from
        return assign_splits(entries, seed=seed, fractions=f), source
    if len(given) < len(labelled):
        raise ProjectError(f"{len(labelled) - len(given)} labelled images have no given split while "
                           f"{len(given)} do ({catalog.split_from}); give every labelled image a split")
    sides: dict[str, set[str]] = _sides(given)
    mixed = {p for p, s in sides.items() if len(s) > 1}
    if mixed:
        n_images = sum(1 for e in given if e.patient_key in mixed)
        if on_patient_overlap is None:
            raise ProjectError(
                f"the given split ({catalog.split_from}) puts {len(mixed)} patients ({n_images} images) on two "
                f"sides", remedy=Remedy.CHOOSE_PATIENT_OVERLAP)
        source["patient_overlap"] = {"patients": len(mixed), "images": n_images, "action": on_patient_overlap}
        if on_patient_overlap == "resplit":
            source["from"] = random_from + f"; the given split ({catalog.split_from}) was dropped"
            return assign_splits(entries, seed=seed, fractions=f), source
    source["kind"], source["from"] = "given", catalog.split_from
    out = [e if e.label is not None else replace(e, split=None) for e in entries]
    if not any(e.split == "val" for e in given):
        train = [e for e in out if e.split == "train"]
        carved = {e.image_id: e.split for e in assign_splits(train, seed=seed, fractions=(f[0], f[1], 0.0))}
        out = [replace(e, split=carved[e.image_id]) if e.image_id in carved else e for e in out]
        source["val_carved"] = any(s == "val" for s in carved.values())
    return out, source


def _sides(entries: list[CatalogEntry]) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = {}
    for e in entries:
        sides.setdefault(e.patient_key, set()).add(str(e.split))
    return sides


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


RUN_TASKS = TASKS


def _read_run_record(path: Path) -> dict[str, Any]:
    """A run folder's run.json, checked against itself (classes vs head, bounds, names)."""
    where = path / "run.json"
    record = trust.load_json(where, what="run record")
    classes, task, head = record.get("classes"), record.get("task"), record.get("head_config")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise ProjectError(f"{where}: run record is not valid: classes must be a list of two or more names")
    if task not in TASKS:
        raise ProjectError(f"{where}: run record is not valid: task {task!r} is not one of {', '.join(TASKS)}")
    problem = trust.head_shape_problem(head, classes=len(classes))
    if problem is None and head.get("task") != task:
        problem = f"the head was built for {head.get('task')} but the run's task is {task}"
    if problem is not None:
        raise ProjectError(f"{where}: run record is not valid: {problem}")
    trust.check_name(record.get("cache_fingerprint"), what="cache_fingerprint", where=str(where))
    if not isinstance(record.get("backbone"), dict):
        raise ProjectError(f"{where}: run record is not valid: backbone must be an object")
    return record


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _relative_or_none(path: Path, start: Path) -> Optional[str]:
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return None


def _config_dict(config: Any) -> dict[str, Any]:
    data = asdict(config)
    return json.loads(json.dumps(data, default=str))
