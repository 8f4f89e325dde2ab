"""LOFF Studio, the desktop app: `loff-studio [PROJECT]`.

The window is a thin Qt layer over `loff_core`. It never imports torch or h5py at module
level and never runs a long call on the GUI thread: every engine step goes through the
worker bridge (`app/workers.py`). First launch opens a synthetic demo project.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QKeySequence, QShortcut
from PySide6.QtWidgets import (QApplication, QDialog, QDialogButtonBox, QDockWidget, QFileDialog, QLabel,
                               QListWidget, QMainWindow, QMenu, QMessageBox, QTabWidget, QTextBrowser, QVBoxLayout)

from loff_core.errors import LoffError

from .pages.cache_page import CachePage
from .pages.data_map_page import DataMapPage
from .pages.import_page import ImportPage
from .pages.predict_page import PredictPage
from .pages.results_page import ResultsPage
from .pages.train_page import TrainPage
from .pages.viewer_page import ViewerPage
from .remedies import window_text
from .state import AppState, data_dir, log_dir, recent_projects, settings, setup_logging
from .theme import THEMES, apply_theme, icon, warning_colour
from .workers import wire

log = logging.getLogger("loff_studio")


class MainWindow(QMainWindow):
    def __init__(self, state: Optional[AppState] = None):
        super().__init__()
        self.state = state or AppState()
        self.setWindowTitle("LOFF Studio")
        self.tabs = QTabWidget()
        self.import_page = ImportPage(self.state)
        self.cache_page = CachePage(self.state)
        self.train_page = TrainPage(self.state)
        self.results_page = ResultsPage(self.state)
        self.viewer_page = ViewerPage(self.state)
        self.predict_page = PredictPage(self.state)
        self.data_map_page = DataMapPage(self.state)
        for page, name, icon_name in ((self.import_page, "1 Import", "import"), (self.cache_page, "2 Cache", "extract"),
                                      (self.train_page, "3 Train", "train"), (self.results_page, "4 Results", "evaluate"),
                                      (self.viewer_page, "5 Viewer", "viewer"),
                                      (self.predict_page, "6 Predict && export", "export"),
                                      (self.data_map_page, "7 Data map", "viewer")):
            self.tabs.addTab(page, icon(icon_name), name)
            self.tabs.setTabToolTip(self.tabs.count() - 1, f"Ctrl+{self.tabs.count()}")
        self.setCentralWidget(self.tabs)
        self.problems = QListWidget()
        self.problems.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.problems.setToolTip("messages and problems; select and Ctrl+C to copy")
        dock = QDockWidget("Messages", self)
        dock.setObjectName("messages")
        dock.setWidget(self.problems)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
        self.problems.setMinimumHeight(60)
        self.resizeDocks([dock], [110], Qt.Orientation.Vertical)
        self.banner = QLabel("")
        self.statusBar().addPermanentWidget(self.banner)
        self._menus()
        self._shortcuts()
        self.state.message.connect(self.show_message)
        self.state.project_changed.connect(self._project_changed)
        self.import_page.build_requested.connect(self.build_model)
        self.state.browse.connect(lambda ids, caption: self.tabs.setCurrentWidget(self.viewer_page))
        self.state.busy_changed.connect(lambda busy: self.statusBar().showMessage(
            f"{self.state.runner.job.name} running..." if busy and self.state.runner.job else "ready"))
        s = settings()
        if s.value("geometry") is not None:
            self.restoreGeometry(s.value("geometry"))
            self.restoreState(s.value("window_state"))
        else:
            self.resize(1280, 720)  # the smallest screen it is made for
        self.theme = str(s.value("theme", "light"))
        self.set_theme(self.theme)

    # -- menus -------------------------------------------------------------------------
    def _menus(self) -> None:
        menu = self.menuBar().addMenu("&File")
        for text, shortcut, slot in (("&New project...", QKeySequence.StandardKey.New, self.new_project),
                                     ("&Open project...", QKeySequence.StandardKey.Open, self.choose_project),
                                     ("Open the &demo project", None, self.open_demo),
                                     ("&Build a model...", None, self.build_model)):
            action = QAction(text, self)
            if shortcut is not None:
                action.setShortcut(shortcut)
            action.triggered.connect(lambda _=False, f=slot: f())  # not triggered's `checked` as an argument
            menu.addAction(action)
        menu.actions()[1].setIcon(icon("open"))
        self.recent_menu = QMenu("&Recent projects", self)
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        menu.addMenu(self.recent_menu)
        menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        menu.addAction(quit_action)

        view = self.menuBar().addMenu("&View")
        group = QActionGroup(self)
        self.theme_actions = {}
        for name in THEMES:
            action = QAction(f"{name.capitalize()} theme", self, checkable=True)
            action.triggered.connect(lambda _=False, n=name: self.set_theme(n))
            group.addAction(action)
            view.addAction(action)
            self.theme_actions[name] = action

        help_menu = self.menuBar().addMenu("&Help")
        guide = QAction(icon("help"), "&Guide", self)
        guide.setShortcut(QKeySequence.StandardKey.HelpContents)
        guide.triggered.connect(self.show_guide)
        about = QAction("&About LOFF Studio", self)
        about.triggered.connect(self.show_about)
        help_menu.addAction(guide)
        help_menu.addAction(about)

    def _shortcuts(self) -> None:
        """Ctrl+1..7 pages; Left / Right images in the Viewer; Ctrl+E extract; Ctrl+T train."""
        self.shortcuts: dict[str, QShortcut] = {}
        for k in range(self.tabs.count()):
            sc = QShortcut(QKeySequence(f"Ctrl+{k + 1}"), self)
            sc.activated.connect(lambda k=k: self.tabs.setCurrentIndex(k))
            self.shortcuts[f"Ctrl+{k + 1}"] = sc
        for key, delta in (("Left", -1), ("Right", 1)):
            sc = QShortcut(QKeySequence(key), self.viewer_page)
            sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            sc.activated.connect(lambda d=delta: self.viewer_page.step(d))
            self.shortcuts[key] = sc
        for key, page, slot in (("Ctrl+E", self.cache_page, self.cache_page.start_extract),
                                ("Ctrl+T", self.train_page, self.train_page.start_training)):
            sc = QShortcut(QKeySequence(key), self)
            sc.activated.connect(lambda p=page, f=slot: (self.tabs.setCurrentWidget(p), f()))
            self.shortcuts[key] = sc
        self.cache_page.extract_button.setToolTip("Extract (Ctrl+E)")
        self.train_page.train_button.setToolTip("Train (Ctrl+T)")
        self.cache_page.extract_button.setIcon(icon("extract"))
        self.train_page.train_button.setIcon(icon("train"))
        self.results_page.evaluate_button.setIcon(icon("evaluate"))
        self.predict_page.export_button.setIcon(icon("export"))
        self.predict_page.predict_button.setIcon(icon("predict"))
        self.import_page.import_button.setIcon(icon("import"))

    def set_theme(self, name: str) -> None:
        self.theme = name if name in THEMES else "light"
        apply_theme(self.theme, self)
        self._show_banner(self.state.project)  # its warning colour follows the theme
        self.theme_actions[self.theme].setChecked(True)
        settings().setValue("theme", self.theme)

    # -- help ----------------------------------------------------------------------------
    def _text_dialog(self, title: str, html: str) -> QDialog:
        dialog = QDialog(self)
        dialog.setWindowTitle(title)
        text = QTextBrowser()
        text.setOpenExternalLinks(False)
        text.setHtml(html)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(dialog.reject)
        layout = QVBoxLayout(dialog)
        layout.addWidget(text)
        layout.addWidget(buttons)
        dialog.resize(640, 520)
        dialog.text = text
        return dialog

    def show_guide(self) -> QDialog:
        from .resources import resource_path

        dialog = self._text_dialog("LOFF Studio guide", resource_path("guide.html").read_text(encoding="utf-8"))
        dialog.show()
        return dialog

    def show_about(self) -> QDialog:
        from .about import about_html

        dialog = self._text_dialog("About LOFF Studio", about_html(self.state.project, log_dir() / "loff-studio.log"))
        dialog.show()
        return dialog

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in recent_projects():
            action = QAction(path, self)
            action.triggered.connect(lambda _=False, p=path: self.open_project(p))
            self.recent_menu.addAction(action)
        if not self.recent_menu.actions():
            self.recent_menu.addAction("(none yet)").setEnabled(False)

    # -- projects ----------------------------------------------------------------------
    def open_project(self, path: str | Path) -> bool:
        from loff_core.project import Project

        if self.state.busy:
            self.show_message("warning", "a job is running; stop it before opening another project")
            return False
        try:
            project = Project.open(path)
        except LoffError as exc:
            self.show_message("error", window_text(exc))
            return False
        self.state.set_project(project)
        return True

    def new_project(self, path: Optional[str | Path] = None) -> bool:
        """A new project in a folder that may not exist yet (made), then the Import page."""
        if path is None:
            from .new_project import NewProjectDialog

            dialog = NewProjectDialog(self)
            if dialog.exec() != QDialog.DialogCode.Accepted:
                return False
            path = dialog.path()
        from loff_core.project import Project

        if self.state.busy:
            self.show_message("warning", "a job is running; stop it before creating a project")
            return False
        try:
            self.state.set_project(Project.open_or_create(path))
        except LoffError as exc:
            self.show_message("error", window_text(exc))
            return False
        self.tabs.setCurrentWidget(self.import_page)  # a new project's first step
        return True

    def choose_project(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a LOFF Studio project folder")
        if path:
            self.open_project(path)

    def open_demo(self) -> None:
        """The synthetic demo project (written once, in the background, on first use), with its
        feature cache: something to train and explore at once (issue 23, item 10)."""
        root = data_dir() / "demo-project"
        if (root / "loff-project.json").exists() and (root / "catalog.csv").exists():
            if self.open_project(root) and not self.state.project.cache_paths():
                self._extract_demo_cache()  # written by an older version, or its extraction was interrupted
            return
        if root.exists():  # left half-written by a version that did not write it atomically
            import shutil

            self.show_message("warning", f"the demo project at {root} is incomplete; writing it again")
            shutil.rmtree(root, ignore_errors=True)

        def work(progress: Any) -> Any:
            from loff_core.demo import create_demo_project

            return create_demo_project(root, with_cache=True, progress=progress)
        self.show_message("info", f"writing the synthetic demo project to {root} and extracting its features")
        job = self.state.start("demo", work)
        if job is not None:
            wire(job, done=self._demo_ready)

    def _demo_ready(self, project: Any) -> None:
        """Open the new demo; its Cache page shows the backbone its cache was made with (not
        the default, which would make a second cache on Extract)."""
        import json

        from loff_core.demo import DEMO_IMAGE_SIZE, demo_cache_spec

        from .state import _project_key

        spec = demo_cache_spec()
        if spec is not None and project.settings.active_cache:
            settings().setValue(f"projects/{_project_key(project)}/cache", json.dumps(
                {"backbone": spec.name, "image_size": DEMO_IMAGE_SIZE}))
        self.state.set_project(project)

    def _extract_demo_cache(self) -> None:
        project = self.state.project

        def work(progress: Any) -> Any:
            from loff_core.demo import extract_demo_cache

            return extract_demo_cache(project, progress)
        self.show_message("info", "extracting the demo's features (EfficientNet-Lite0, shipped with LOFF Studio)")
        job = self.state.start("extract", work)
        if job is not None:
            job.on_close = "stop"
            wire(job, strip=self.cache_page.strip, banner=self.cache_page.banner,
                 done=lambda _: (self.state.cache_changed.emit(), self.state.catalog_changed.emit()))
    def build_model(self) -> Any:
        """The Build a model dialog (app/build_model.py), filled from the Import page's form."""
        from .build_model import BuildModelDialog

        page, project = self.import_page, self.state.project
        self.build_dialog = BuildModelDialog(
            self.state, self, folder=page.folder.text().strip(), labels=page.labels.text().strip(),
            label_column=page.label_column.currentData(), project=str(project.root) if project is not None else "")
        self.build_dialog.show()
        return self.build_dialog

    def _project_changed(self, project: Any) -> None:
        if project is None:
            self.setWindowTitle("LOFF Studio")
            self.banner.setText("")
            return
        self.statusBar().clearMessage()
        self.problems.addItem(f"--- opened project {project.settings.name} ---")  # the log of the session
        synthetic = " - SYNTHETIC demo data" if project.settings.synthetic else ""
        self.setWindowTitle(f"LOFF Studio - {project.settings.name}{synthetic}")
        self._show_banner(project)

    def _show_banner(self, project: Any) -> None:
        """The project's folder, and SYNTHETIC in the theme's warning colour (readable in both)."""
        if project is None:
            return
        self.banner.setText(f"<b>{project.root}</b>" + (
            f" <span style='color:{warning_colour()}'><b>SYNTHETIC data: no real patients</b></span>"
            if project.settings.synthetic else ""))

    # -- messages ----------------------------------------------------------------------
    def show_message(self, level: str, text: str) -> None:
        prefix = {"error": "Problem: ", "warning": "Warning: ", "note": "Note: "}.get(level, "")
        self.problems.addItem(prefix + text)
        self.problems.scrollToBottom()
        self.statusBar().showMessage(prefix + text, 15000)
        getattr(log, {"error": "error", "warning": "warning"}.get(level, "info"))(text)

    def keyPressEvent(self, event: Any) -> None:  # noqa: N802 - copy selected messages
        if event.matches(QKeySequence.StandardKey.Copy) and self.problems.hasFocus():
            QApplication.clipboard().setText("\n".join(i.text() for i in self.problems.selectedItems()))
            return
        super().keyPressEvent(event)

    # -- closing -----------------------------------------------------------------------
    def closeEvent(self, event: Any) -> None:  # noqa: N802
        if self.state.busy:
            job = self.state.runner.job.name if self.state.runner.job else "a job"
            if not getattr(self, "confirm_close", None):
                answer = QMessageBox.question(self, "LOFF Studio", f"{job} is still running. Stop it and quit? "
                                              "Quitting stops it like the Stop button: training keeps the best "
                                              "head so far, extraction keeps the finished batches.")
                if answer != QMessageBox.StandardButton.Yes:
                    event.ignore()
                    return
            self.state.runner.shutdown()
        s = settings()
        s.setValue("geometry", self.saveGeometry())
        s.setValue("window_state", self.saveState())
        event.accept()


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print("usage: loff-studio [PROJECT] [--quit-after MS]\n\nOpens PROJECT (a LOFF Studio project folder), else "
              "the last project, else the synthetic demo project.\n--quit-after MS closes the window MS "
              "milliseconds after start and prints one line about it (packaging/smoke.sh uses it).")
        return 0
    quit_after = _pop_quit_after(argv)
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("LOFF Studio")
    app.setDesktopFileName("org.loff.Studio")  # Wayland: ties the window to the installed desktop entry's icon
    icon = _app_icon()
    if icon is not None:
        app.setWindowIcon(icon)
    log_path = setup_logging()
    window = MainWindow()
    if icon is not None:
        window.setWindowIcon(icon)
    window.show()
    if quit_after is not None:
        QTimer.singleShot(quit_after, lambda: _smoke_quit(app, window, quit_after))
    QTimer.singleShot(300, window.state.warm_up_engine)  # after the first paint
    target = argv[0] if argv else settings().value("last_project")
    if target and Path(target, "loff-project.json").exists():
        window.open_project(target)
    elif argv:
        from loff_core.project import Project

        try:
            window.state.set_project(Project.open_or_create(argv[0]))
        except LoffError as exc:
            window.show_message("error", window_text(exc))
    else:
        window.open_demo()
    window.show_message("info", f"log file: {log_path}")
    return app.exec()


def _pop_quit_after(argv: list[str]) -> Optional[int]:
    """Remove `--quit-after MS` from argv and return MS (None when absent)."""
    if "--quit-after" not in argv:
        return None
    at = argv.index("--quit-after")
    try:
        value = int(argv[at + 1])
    except (IndexError, ValueError):
        raise SystemExit("loff-studio: --quit-after needs a number of milliseconds") from None
    del argv[at:at + 2]
    return value


def _app_icon() -> Any:
    """The application icon from resources/ (PNGs of every size; no SVG plugin needed)."""
    from PySide6.QtGui import QIcon

    from .resources import resource_path

    try:
        icon = QIcon()
        for size in (16, 24, 32, 48, 64, 128, 256, 512):
            path = resource_path("icons", "hicolor", f"{size}x{size}", "apps", "org.loff.Studio.png")
            if path.is_file():
                icon.addFile(str(path))
    except FileNotFoundError as exc:
        log.warning("no application icon: %s", exc)
        return None
    return None if icon.isNull() else icon


def _smoke_quit(app: QApplication, window: MainWindow, after_ms: int) -> None:
    """`--quit-after`: let the light jobs started so far (the engine warm-up imports) finish,
    so a module missing from a frozen bundle shows in the log; say what the window shows;
    close it as the Quit menu would."""
    from .workers import wait_light

    wait_light(120)
    print(f"loff-studio: quitting after {after_ms} ms; title: {window.windowTitle()}; "
          f"icon: {'yes' if not window.windowIcon().isNull() else 'no'}; pages: {window.tabs.count()}", flush=True)
    window.confirm_close = True  # no question box when a job still runs: stop it like the Stop button
    window.close()
    app.quit()


if __name__ == "__main__":
    sys.exit(main())
