"""What the pages share: the open project, the job runner, messages, and user folders.

Pages talk to each other through `AppState` signals (project opened, catalog changed,
cache changed, runs changed, a set of images to step through), never directly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from PySide6.QtCore import QObject, QSettings, Signal

from .workers import Job, JobRunner, start_light

log = logging.getLogger("loff_studio")

def config_dir() -> Path:
    """User settings folder (platformdirs); LOFF_STUDIO_CONFIG_DIR overrides it (tests)."""
    override = os.environ.get("LOFF_STUDIO_CONFIG_DIR")
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir("LOFF Studio", appauthor=False))


def data_dir() -> Path:
    override = os.environ.get("LOFF_STUDIO_CONFIG_DIR")
    if override:
        return Path(override) / "data"
    from platformdirs import user_data_dir

    return Path(user_data_dir("LOFF Studio", appauthor=False))


def log_dir() -> Path:
    override = os.environ.get("LOFF_STUDIO_CONFIG_DIR")
    if override:
        return Path(override) / "logs"
    from platformdirs import user_log_dir

    return Path(user_log_dir("LOFF Studio", appauthor=False))


def settings() -> QSettings:
    path = config_dir()
    path.mkdir(parents=True, exist_ok=True)
    return QSettings(str(path / "loff-studio.ini"), QSettings.Format.IniFormat)


def setup_logging() -> Path:
    """A log file in the user's log folder. Only technical messages go there: paths,
    counts, errors; the engine never puts patient identifiers in a message."""
    folder = log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "loff-studio.log"
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in log.handlers):
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    return path


#: what the engine imports lazily, imported by `AppState.warm_up_engine` at start
WARM_MODULES = (
    "torch", "timm", "h5py", "scipy.stats", "scipy.ndimage", "sklearn.metrics", "pydicom", "pydicom.pixels",
    "PIL.Image", "SimpleITK", "safetensors.torch", "jsonschema",
    "loff_core.backbones", "loff_core.cache", "loff_core.training", "loff_core.metrics", "loff_core.export",
    "loff_core.augment", "loff_core.heads", "loff_core.images",
)


class AppState(QObject):
    """The session: the job runner, messages, and the open project's one `ProjectState`
    (`project_state`). A page that changed the project emits `catalog_changed`,
    `cache_changed` or `runs_changed`; the project state reloads from the engine before any
    page's slot runs (it is connected first)."""

    project_changed = Signal(object)  # Project or None
    catalog_changed = Signal()
    cache_changed = Signal()
    runs_changed = Signal()
    evaluation_changed = Signal(dict)  # an evaluation became the shown one (project_state.evaluation)
    browse = Signal(list, str)  # image ids to step through in the viewer, and a caption
    message = Signal(str, str)  # level ("info" | "note" | "warning" | "error"), text
    busy_changed = Signal(bool)

    def __init__(self) -> None:
        super().__init__()
        self.project_state = ProjectState()
        # connected before any page: the state is read again before a page renders from it
        self.catalog_changed.connect(self.project_state.reload_catalog)
        self.cache_changed.connect(self.project_state.reload_caches)
        self.runs_changed.connect(self.project_state.reload_runs)
        self.project_state.evaluation_changed.connect(
            lambda result: self.evaluation_changed.emit(result) if result is not None else None)
        self.runner = JobRunner(self)
        self.runner.busy_changed.connect(self.busy_changed)

    @property
    def project(self) -> Any:
        """The open project (`project_state.project`)."""
        return self.project_state.project

    @property
    def last_evaluation(self) -> Optional[dict]:
        """The evaluation the pages show (`project_state.evaluation`)."""
        return self.project_state.evaluation

    # -- jobs --------------------------------------------------------------------------
    def start(self, name: str, fn: Any, *args: Any, banner: Any = None, **kwargs: Any) -> Optional[Job]:
        """Start the one heavy job; None (and a message, on `banner` too) when one runs."""
        if self.runner.busy:
            text = f"{self.runner.job.name} is still running; stop it first"
            self.message.emit("warning", text)
            if banner is not None:
                banner.show_warning(text)
            return None
        job = Job(name, fn, *args, **kwargs)
        job.failed.connect(lambda text: self.message.emit("error", text))
        job.notice.connect(lambda text: self.message.emit("warning", text))  # at once, while it runs
        job.info.connect(lambda text: self.message.emit("note", text))  # a plan, an estimate: no warning
        job.cancelled.connect(lambda: self.message.emit("info", f"{name} cancelled; nothing was changed"))
        log.info("start %s", name)
        return self.runner.start(job)

    @property
    def busy(self) -> bool:
        return self.runner.busy

    # -- engine warm-up ----------------------------------------------------------------
    def warm_up_engine(self) -> Job:
        """Import the engine's heavy dependencies as a light job, soon after start.

        The engine imports them lazily (so `loff --help` is fast). Imported for the first
        time inside a job, they stalled the window for up to 0.3 s at a time (measured in
        tests/test_app.py): C extension set-up holds the GIL, and PySide6's import hook
        reads the source of every module imported after it. Done while the user is still
        looking at the first page, every job starts with them loaded. Returns the light
        job (tests wait for it with `app.workers.wait_light`)."""
        def work() -> None:
            import importlib

            for name in WARM_MODULES:
                try:
                    importlib.import_module(name)
                except Exception as exc:  # noqa: BLE001 - a broken install shows up when a job runs
                    log.warning("engine warm-up: %s not imported (%s)", name, exc)
        return start_light("engine warm-up", work)

    # -- project -----------------------------------------------------------------------
    # -- settings of each page, per project --------------------------------------------
    def page_settings(self, page: str) -> dict[str, Any]:
        """What a page remembered for the open project (its controls' values)."""
        if self.project is None:
            return {}
        import json

        raw = settings().value(f"projects/{_project_key(self.project)}/{page}")
        try:
            value = json.loads(raw) if raw else {}
        except (TypeError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def save_page_settings(self, page: str, values: dict[str, Any]) -> None:
        if self.project is None:
            return
        import json

        settings().setValue(f"projects/{_project_key(self.project)}/{page}", json.dumps(values))

    def set_project(self, project: Any) -> None:
        self.project_state.rebuild(project)  # before any page hears of it
        if project is not None:
            s = settings()
            recent = [str(project.root.resolve())] + [p for p in _as_list(s.value("recent", [])) if
                                                       p != str(project.root.resolve())]
            s.setValue("recent", recent[:8])
            s.setValue("last_project", str(project.root.resolve()))
            log.info("opened project %s", project.root)
        self.project_changed.emit(project)


def _project_key(project: Any) -> str:
    """A settings key for a project folder (a hash: the path may hold a patient's name)."""
    import hashlib

    return hashlib.sha256(str(project.root.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]


def recent_projects() -> list[str]:
    return [p for p in _as_list(settings().value("recent", [])) if Path(p, "loff-project.json").exists()]


#: train_config keys that do not change what a head learns (a CV of the same settings on another device counts)
RUN_NEUTRAL_KEYS = ("device", "num_workers", "block")


class ProjectState(QObject):
    """The one copy of what the window shows about the open project (issue 23).

    In the spirit of napari's evented models: the project, a summary of its catalog, its
    caches, runs and cross-validation / tuning groups, the selected run and split, and the
    evaluation of that run on that split, each with a signal. `rebuild` reads everything
    from the engine when the project changes (open, new, demo); `reload_catalog`,
    `reload_caches` and `reload_runs` when a job changed it (import, extract, train, CV,
    tune); `set_evaluation` when an evaluation finished. Pages render from these fields and
    subscribe to the signals; they keep no copy of anything derived from a project or a run.
    Every change of project bumps `generation`: a job's result for an older generation
    (another project) is dropped."""

    reset = Signal(object)  # Project or None: everything below was rebuilt
    catalog_changed = Signal()
    caches_changed = Signal()
    runs_changed = Signal()  # runs, their stale reasons and the groups
    selection_changed = Signal(str, str)  # run id ("" none), split
    evaluation_changed = Signal(object)  # the evaluation of the selected run and split, or None

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0
        self._resetting = False
        self._clear(None)

    def _clear(self, project: Any) -> None:
        self.project: Any = project
        self.catalog_version: Optional[int] = None
        self.classes: list[str] = []
        self.task = ""
        self.n_images = 0
        self.split_sizes: dict[str, int] = {}
        self.caches: list[dict[str, Any]] = []  # {"fingerprint", "active", "partial"}
        self.runs: list[Any] = []  # loff_core RunInfo, oldest first
        self.stale: dict[str, list[str]] = {}  # run id -> why its head no longer matches the project
        self.groups: list[dict[str, Any]] = []  # loff_core.validation.list_groups, oldest first
        self.run_id = ""
        self.split = "test"
        self.evaluation: Optional[dict[str, Any]] = None
        # what the window computed from a run without saving it (another run's ROC for the
        # overlay), by key; dropped with the project and with a new catalog version
        self.computed: dict[Any, Any] = {}

    # -- from the engine ---------------------------------------------------------------
    def rebuild(self, project: Any) -> None:
        """Another project (or none): every field read again, the selection and evaluation dropped."""
        self.generation += 1
        self._clear(project)
        if project is not None:
            self._read_catalog()
            self._read_caches()
            self._read_runs()
        # a page that chooses the default run while the others still show the previous project
        # must not make them act on it: the choice is announced once every page has reset
        self._resetting = True
        try:
            self.reset.emit(project)
        finally:
            self._resetting = False
        if self.run_id:
            self.selection_changed.emit(self.run_id, self.split)

    def reload_catalog(self) -> None:
        """After an import: a new catalog version makes runs stale and the shown evaluation old."""
        if self.project is None:
            return
        before = self.catalog_version
        self._read_catalog()
        self._read_runs()
        self.catalog_changed.emit()
        self.runs_changed.emit()
        if before != self.catalog_version:
            self.computed.clear()
            self._set_evaluation(None)

    def reload_caches(self) -> None:
        if self.project is None:
            return
        self._read_caches()
        self._read_runs()  # the active cache decides staleness too
        self.caches_changed.emit()
        self.runs_changed.emit()

    def reload_runs(self) -> None:
        """After a training, a cross-validation or a tuning: runs and groups read again; a
        selected run that is gone is unselected (its evaluation with it)."""
        if self.project is None:
            return
        self._read_runs()
        if self.run_id and self.run(self.run_id) is None:
            self.run_id = ""
            self.selection_changed.emit("", self.split)
            self._set_evaluation(None)
        self.runs_changed.emit()

    def _read_catalog(self) -> None:
        p = self.project
        s = p.settings
        self.catalog_version, self.task = s.catalog_version, s.task
        self.classes, self.n_images, self.split_sizes = list(s.classes), 0, {}
        if p.has_catalog():
            try:
                catalog = p.catalog()
            except Exception as exc:  # noqa: BLE001 - a damaged catalog is the Import page's message
                log.warning("catalog not read: %s", exc)
                return
            self.classes = list(catalog.classes)
            self.n_images = len(catalog.entries)
            for e in catalog.entries:
                self.split_sizes[e.split] = self.split_sizes.get(e.split, 0) + 1

    def _read_caches(self) -> None:
        p = self.project
        self.caches = [{"fingerprint": path.stem, "active": path.stem == p.settings.active_cache,
                        "partial": p.cache_partial(path.stem)} for path in p.cache_paths()]

    def _read_runs(self) -> None:
        from loff_core.validation import list_groups

        p = self.project
        self.runs = p.runs()
        self.stale = {r.run_id: p.stale_reasons(r) for r in self.runs}
        try:
            self.groups = list_groups(p)
        except OSError as exc:
            log.warning("groups not read: %s", exc)
            self.groups = []

    # -- selection and results ---------------------------------------------------------
    def run(self, run_id: Optional[str] = None) -> Any:
        """The RunInfo of `run_id` (default: the selected run), None when there is none."""
        run_id = self.run_id if run_id is None else run_id
        return next((r for r in self.runs if r.run_id == run_id), None)

    def select(self, run_id: Optional[str] = None, split: Optional[str] = None) -> None:
        """Choose the run and / or split the pages show; another choice drops the evaluation."""
        run_id = self.run_id if run_id is None else run_id
        split = self.split if split is None else split
        if (run_id, split) == (self.run_id, self.split):
            return
        self.run_id, self.split = run_id, split
        if not self._resetting:
            self.selection_changed.emit(run_id, split)
        if self.evaluation is not None and (self.evaluation["run"], self.evaluation["split"]) != (run_id, split):
            self._set_evaluation(None)

    def set_evaluation(self, result: dict[str, Any], generation: Optional[int] = None) -> bool:
        """An evaluation finished: it becomes what the pages show (its run and split are
        selected). Dropped (False) when it was started for another project (`generation`) or
        its run is gone."""
        if self.project is None or (generation is not None and generation != self.generation) \
                or self.run(result.get("run")) is None:
            return False
        self.select(result["run"], result["split"])
        self._set_evaluation(result)
        return True

    def _set_evaluation(self, result: Optional[dict[str, Any]]) -> None:
        if result is None and self.evaluation is None:
            return
        self.evaluation = result
        self.evaluation_changed.emit(result)

    # -- what belongs to a run ---------------------------------------------------------
    def groups_of(self, run_id: str) -> list[dict[str, Any]]:
        """The groups whose figures belong beside run `run_id`: the tuning group that made it,
        else the cross-validations of exactly its settings (head, learning rate, epochs,
        augmentations, ... on the same catalog version), newest first. Another run's group is
        never among them."""
        from loff_core.validation import load_group

        run = self.run(run_id)
        if run is None or self.project is None:
            return []
        own = [g for g in self.groups if g.get("run") == run_id]
        if own:
            try:
                return [load_group(self.project, g["group"]) for g in reversed(own)]
            except Exception:  # noqa: BLE001 - a damaged group shows nothing
                return []
        mine = _model_keys(run.record.get("train_config") or {})
        out = []
        for g in reversed(self.groups):
            if g.get("kind") != "cv" or g.get("run"):
                continue
            try:
                rec = load_group(self.project, g["group"])
            except Exception:  # noqa: BLE001 - a damaged group shows nothing
                continue
            if (rec.get("catalog_version") == run.record.get("catalog_version") and mine
                    and _model_keys(rec.get("train_config") or {}) == mine):
                out.append(rec)
        return out


def _model_keys(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RUN_NEUTRAL_KEYS}
