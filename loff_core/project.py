"""The project folder: its versioned settings file, catalog, caches and training runs.

A project is a folder the user owns. Everything inside is addressed relative to it, so
the folder can be moved; the images it was imported from are referenced (relative to the
project when possible, with the absolute path as a fallback), never copied.

`Project` keeps what a project is: its files, its settings (`project_file.py`), its locks
(the writer lock here, the readers' commit lock in `locks.py`) and its runs. What the steps
do (import, extract, train, evaluate, explain) is in `steps.py`; how an import splits the
images is in `splits.py`.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .catalog import Catalog, CatalogEntry
from .errors import CacheError, LoffError, ProjectError, Remedy
from .fsutil import HELD_LOCK_FDS, atomic_write_json, relative_or_none, sha256_file, utc_now
from . import trust
from .project_file import PROJECT_FILE, ProjectSettings, _read_settings
from .results import ImportResult
from .settings import TASKS


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
            created=utc_now(),
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

    def discard_if_never_imported(self, remove_folder: bool = False) -> None:
        """Undo `create` when the first import failed (stopped by a question, bad labels):
        a project that never had a catalog, runs or caches leaves no loff-project.json behind
        (and no folder, when `remove_folder`: the import made it). Anything else is kept."""
        if self.has_catalog():
            return
        known = {PROJECT_FILE, ".lock", ".lock-readers"}
        try:
            names = {p.name for p in self.root.iterdir()}
        except OSError:
            return
        if names - known:
            return  # something else is there (caches, runs, a user's file): not a project only just made
        for name in names:
            try:
                (self.root / name).unlink()
            except OSError:
                return
        if remove_folder:
            try:
                self.root.rmdir()
            except OSError:
                pass

    _held_revision: Optional[int] = None  # the revision on disk when this process took the lock

    def save(self) -> None:
        self._check_revision()
        self.settings.revision += 1
        with self.committing():
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
            with self.committing():  # readers see the old files or the new ones, never a mix
                os.replace(staging, commit)  # the commit point: before it the old files stand, after it the new
                self._finish_commit()
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

    @contextmanager
    def read_lock(self) -> Iterator[None]:
        """Hold the project's shared (reader) lock: for what only reads the project (evaluate
        an existing run, info, predict, export, explain). It does not wait for a writer's job
        (`lock`), only for a writer's commit in progress; see `loff_core.locks`."""
        from .locks import reading

        with reading(self.root):
            yield

    @contextmanager
    def committing(self) -> Iterator[None]:
        """Replace files readers read (settings, catalog, a run) with the commit lock held
        exclusively: readers of this moment finish first, readers after it see the new."""
        from .locks import committing

        with committing(self.root):
            yield

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

    def commit_import(self, catalog: Catalog, report: dict[str, Any], s: ProjectSettings) -> None:
        """Write an import's catalog, its sidecar, the report and the settings `s` together
        (staging folder, one rename as the commit point, under the commit lock)."""
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

    def save_catalog(self, catalog: Catalog) -> None:
        """Replace the catalog alone (an exclusion changed; the caller holds the writer lock)."""
        with self.committing():
            catalog.save(self.catalog_path)
        self._catalog = catalog

    def relative(self, path: Path | str) -> str:
        """A path as `loff` prints it: relative to the project folder (absolute on another
        drive)."""
        return relative_or_none(Path(path), self.root) or str(Path(path).resolve())

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

    def import_summary(self) -> ImportResult:
        """What the catalog holds, as `steps.import_images` reports it."""
        catalog = self.catalog()
        report = self.import_report()
        labelled = [e for e in catalog.entries if e.label is not None]
        splits: dict[str, int] = {}
        per_class: dict[str, int] = {c: 0 for c in catalog.classes}
        for e in labelled:
            splits[e.split or "none"] = splits.get(e.split or "none", 0) + 1
            per_class[e.label] = per_class.get(e.label, 0) + 1
        return ImportResult(
            project=str(self.root),
            imported=len(catalog.entries),
            labelled=len(labelled),
            failed=report.get("failed", []),
            warnings=report.get("warnings", []),
            classes=list(catalog.classes),
            splits=splits,
            per_class=per_class,
            split_source=self.settings.split_source,
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
    def record_extract_failures(self, failures: list[Any]) -> None:
        """Add an extraction's unreadable files to the import report (shown with the import's)."""
        report = self.import_report()
        known = {f["path"] for f in report.get("failed", [])}
        root = self.images_root()
        for f in failures:
            rel = relative_or_none(Path(f.path), root) or str(f.path)
            if rel not in known:
                report.setdefault("failed", []).append({"path": rel, "reason": f.reason})
        with self.committing():
            atomic_write_json(self.report_path, report)

    def cache_paths(self) -> list[Path]:
        return sorted(self.caches_dir.glob("*.h5")) if self.caches_dir.is_dir() else []

    def open_cache(self, fingerprint: Optional[str] = None, block: Optional[str] = None) -> Any:
        """The cache `fingerprint` (default: the active one), reading its block `block`
        (default: the cache's first; a run passes its record's `block`)."""
        from .cache_reader import FeatureCache

        fingerprint = fingerprint or self.settings.active_cache
        if fingerprint is None:
            raise CacheError("no feature cache yet", self.root, Remedy.EXTRACT, project=self.root)
        trust.check_name(fingerprint, what="cache fingerprint", where=str(self.settings_path), error=CacheError)
        path = self.caches_dir / f"{fingerprint}.h5"
        if not path.exists():
            raise CacheError("feature cache is missing or unfinished", path, Remedy.EXTRACT_AGAIN, project=self.root)
        return FeatureCache.open(path, expected_fingerprint=fingerprint, block=block)

    def cached_images(self, fingerprint: str) -> Optional[int]:
        """Images in a cache, from the JSON summary written beside it (no HDF5 opened: the
        window asks this); None when there is no readable summary."""
        try:
            value = json.loads((self.caches_dir / f"{fingerprint}.json").read_text(encoding="utf-8")).get("images")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, int) else None

    def expected_images(self) -> int:
        """The catalog's images that a complete cache holds: all but those whose pixels could
        not be decoded (listed in the import report by extraction)."""
        if not self.has_catalog():
            return 0
        try:
            failed = {str(f.get("path")) for f in self.import_report().get("failed", []) if isinstance(f, dict)}
        except LoffError:
            failed = set()
        return sum(1 for e in self.catalog().entries if e.path not in failed)

    def cache_partial(self, fingerprint: Optional[str] = None) -> bool:
        """Whether a cache (default: the active one) is partial, its extraction stopped before
        the end: its `.parts` folder (the batches done, from which extract resumes) is still
        there, or it holds fewer images than the catalog has readable ones (a Stop merges the
        finished batches into the cache and removes the folder, so the count is what tells).
        The one rule: training refuses a partial cache (`check_cache_complete`) from either
        front end, and the window's Cache page marks it."""
        fingerprint = fingerprint or self.settings.active_cache
        if not fingerprint:
            return False
        if (self.caches_dir / f"{fingerprint}.parts").is_dir():
            return True
        cached = self.cached_images(fingerprint)
        return cached is not None and cached < self.expected_images()

    def check_cache_complete(self) -> None:
        """A CacheError (extract again to finish it) when the active cache is partial:
        training on it would silently leave the images not yet extracted out."""
        if self.cache_partial():
            fingerprint = self.settings.active_cache
            raise CacheError(f"the feature cache is partial (its extraction was stopped before the end: "
                             f"{self.cached_images(fingerprint) or 0} of {self.expected_images()} images); training "
                             f"on it would leave the others out", self.caches_dir / f"{fingerprint}.h5",
                             Remedy.EXTRACT_AGAIN, project=self.root)

    # -- training ----------------------------------------------------------------------
    def labelled_split(self, split: str, cache: Any) -> tuple[list[str], list[int], list[CatalogEntry]]:
        """Image ids, class indices and entries of one split that the cache holds."""
        catalog = self.catalog()
        cached = set(cache.image_ids)
        entries = [e for e in catalog.in_split(split)
                   if e.label is not None and e.excluded is None and e.image_id in cached]  # not left out
        return [e.image_id for e in entries], [catalog.class_index(e.label) for e in entries], entries

    def new_run_id(self, head: str) -> str:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_id, n = f"{stamp}-{head}", 1
        while (self.runs_dir / run_id).exists():
            n += 1
            run_id = f"{stamp}-{head}-{n}"
        return run_id

    def write_run(self, run_id: str, record: dict[str, Any], state_dict: dict[str, Any]) -> RunInfo:
        """A finished run's folder: head + run.json (with its checksum) staged, then renamed
        into place under the commit lock."""
        from safetensors.torch import save_file

        self.runs_dir.mkdir(parents=True, exist_ok=True)
        staging = self.runs_dir / f".{run_id}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(staging / "head.safetensors"))
            record = {**record, "checksum": trust.run_checksum(record, sha256_file(staging / "head.safetensors"))}
            atomic_write_json(staging / "run.json", record)
            with self.committing():
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
        if checksum is not None and checksum != trust.run_checksum(run.record, sha256_file(run.head_path)):
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

    def check_run_classes(self, run: RunInfo) -> None:
        """A run trained on other classes than the catalog's (re-imported since) cannot be
        scored or calibrated against these labels: refused (evaluate, calibrate)."""
        catalog_classes = list(self.catalog().classes)
        if list(run.record["classes"]) != catalog_classes:
            raise ProjectError(f"{run.path / 'run.json'}: run {run.run_id} was trained on the classes "
                               f"{', '.join(run.record['classes'])} but the catalog has {', '.join(catalog_classes)}; "
                               f"its outputs cannot be scored against these labels; train again")

    @staticmethod
    def check_cache_fits(run: RunInfo, cache: Any) -> None:
        """A run's head only reads features of the shape it was trained on."""
        head = run.record["head_config"]
        if head["feature_dim"] != cache.feature_dim or list(head["grid_hw"]) != list(cache.grid_hw):
            raise CacheError(f"{cache.path}: tokens are {cache.feature_dim} wide on a {cache.grid_hw[0]}x"
                             f"{cache.grid_hw[1]} grid, but run {run.run_id}'s head reads {head['feature_dim']} on "
                             f"{head['grid_hw'][0]}x{head['grid_hw'][1]}")



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

