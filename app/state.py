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
    project_changed = Signal(object)  # Project or None
    catalog_changed = Signal()
    cache_changed = Signal()
    runs_changed = Signal()
    evaluation_changed = Signal(dict)  # the latest evaluate() result shown on the results page
    browse = Signal(list, str)  # image ids to step through in the viewer, and a caption
    message = Signal(str, str)  # level ("info" | "warning" | "error"), text
    busy_changed = Signal(bool)

    def __init__(self) -> None:
        super().__init__()
        self.project: Any = None
        self.runner = JobRunner(self)
        self.runner.busy_changed.connect(self.busy_changed)
        self.last_evaluation: Optional[dict] = None

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
        self.project = project
        self.last_evaluation = None
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
