"""Build a model: one dialog from an image folder to an exported head and its report (the
window's `loff auto`, issue 21 point 1).

The dialog asks for the folder, the labels CSV and its label column, the time budget of the
head search and the project folder; Build runs `loff_core.auto.build_model` as one heavy
job (app/workers.py) and the dialog becomes its progress view: the step (import, extract,
find the best head, export, report), the time left, the step's own progress, and Stop, which
keeps what is finished (the job's `on_close` is "stop" too). At the end it shows the same
summary `loff auto` prints and the window reopens the project, so every page shows the new
catalog, cache and run.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit,
                               QPlainTextEdit, QPushButton, QStackedWidget, QVBoxLayout, QWidget)

from loff_core.progress import parse_duration
from loff_core.settings import AutoSettings

from .forms import duration_control
from .state import AppState
from .widgets import LABELS_FILTER, Banner, ProgressStrip, choose_into, form_row
from .workers import Job, wire


def csv_columns(path: str) -> list[str]:
    """The header of a labels CSV (delimiter sniffed: , ; or tab); [] when unreadable."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t") if sample else csv.excel
        return next(csv.reader(sample.splitlines(), dialect), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


class BuildModelDialog(QDialog):
    """The form, then the progress view of the one job, then its summary."""

    def __init__(self, state: AppState, parent: Optional[QWidget] = None, *, folder: str = "", labels: str = "",
                 label_column: Optional[str] = None, project: str = ""):
        super().__init__(parent)
        self.state = state
        self.job: Optional[Job] = None
        self._last_step = ""
        self.result: Optional[dict[str, Any]] = None
        self.setWindowTitle("Build a model")
        self.banner = Banner()
        self.pages = QStackedWidget()
        self.pages.addWidget(self._form(folder, labels, label_column, project))
        self.pages.addWidget(self._progress_view())
        self.buttons = QDialogButtonBox()
        self.build_button = self.buttons.addButton("Build", QDialogButtonBox.ButtonRole.AcceptRole)
        self.build_button.clicked.connect(self.start)
        self.build_button.setDefault(True)  # Return in the form builds
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.close_button.clicked.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(self.pages, 1)
        layout.addWidget(self.buttons)
        self.resize(720, 460)

    # -- the form ----------------------------------------------------------------------
    def _form(self, folder: str, labels: str, label_column: Optional[str], project: str) -> QWidget:
        self.folder = QLineEdit(folder)
        self.folder.setPlaceholderText("folder of DICOM / PNG / JPEG images (read in place, never copied)")
        self.labels = QLineEdit(labels)
        self.labels.setPlaceholderText("optional labels CSV (else the sub-folder names are the labels)")
        self.labels.editingFinished.connect(self._read_columns)
        self.label_column = QComboBox()
        self.label_column.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.budget = duration_control(AutoSettings, "budget")  # declared once with `loff auto --budget`
        self.project = QLineEdit(project)
        self.project.setPlaceholderText("project folder (new or existing)")
        form = QFormLayout()
        for name, edit, pick in (("Images", self.folder, self._choose_folder), ("Labels CSV", self.labels,
                                                                              self._choose_csv),
                                 ("Project", self.project, self._choose_project)):
            browse = QPushButton("Browse...")
            browse.clicked.connect(pick)
            form.addRow(name, form_row(edit, browse, stretch_last=True))
        form.addRow("Label column", form_row(self.label_column))
        form.addRow("Time budget", form_row(self.budget, QLabel("for the head search, e.g. 90s, 5m, 1h")))
        note = QLabel("Imports the folder (columns, patients and a given split found by themselves), extracts "
                      "features with the default backbone, finds the best head by patient-grouped cross-validation "
                      "within the budget, fits its operating point on the out-of-fold predictions, tests it once, "
                      "exports it and writes its report. Done steps are reused when you build again.")
        note.setWordWrap(True)
        box = QWidget()
        v = QVBoxLayout(box)
        v.addLayout(form)
        v.addWidget(note)
        v.addStretch(1)
        self._read_columns(label_column)
        for first, second in ((self.folder, self.labels), (self.labels, self.label_column),
                              (self.label_column, self.budget), (self.budget, self.project)):
            QWidget.setTabOrder(first, second)  # the fields first, the Browse buttons after
        return box

    def _choose_folder(self) -> None:
        choose_into(self.folder, "Image folder")

    def _choose_csv(self) -> None:
        if choose_into(self.labels, "Labels CSV", file_filter=LABELS_FILTER, start=self.folder.text()):
            self._read_columns()

    def _choose_project(self) -> None:
        choose_into(self.project, "Project folder")

    def _read_columns(self, wanted: Optional[str] = None) -> None:
        wanted = wanted or self.label_column.currentData()
        columns = csv_columns(self.labels.text().strip()) if self.labels.text().strip() else []
        self.label_column.clear()
        self.label_column.addItem("(automatic)", None)
        for c in columns:
            self.label_column.addItem(c, c)
        i = self.label_column.findData(wanted)
        self.label_column.setCurrentIndex(max(i, 0))
        self.label_column.setEnabled(bool(columns))

    # -- the job -----------------------------------------------------------------------
    def inputs(self) -> Optional[tuple[Path, Path, Any, Any]]:
        """(folder, project, ImportSettings, AutoSettings) from the form; None (and the reason
        on the banner) when something is missing or wrong."""
        from loff_core.settings import ImportSettings

        folder, labels, project = (self.folder.text().strip(), self.labels.text().strip(),
                                   self.project.text().strip())
        problem = None
        if not folder or not Path(folder).is_dir():
            problem = f"{folder or 'the image folder'}: not a folder"
        elif labels and not Path(labels).is_file():
            problem = f"{labels}: no such labels CSV"
        elif not project:
            problem = "choose a project folder"
        try:
            budget = parse_duration(self.budget.text())
        except ValueError as exc:
            problem = problem or str(exc)
        if problem:
            self.banner.show_error(problem)
            return None
        imports = ImportSettings(labels_csv=Path(labels) if labels else None, label_column=self.label_column.currentData())
        return Path(folder), Path(project), imports, AutoSettings(budget=budget)

    def start(self) -> Optional[Job]:
        """Build: the form's inputs as one heavy job; the dialog shows its progress."""
        inputs = self.inputs()
        if inputs is None:
            return None
        folder, project, imports, settings = inputs
        if not self._may_replace(folder, project):
            return None

        def work(progress: Any) -> Any:
            from loff_core.auto import build_model

            return build_model(folder, project, imports, settings, progress=progress)
        self.banner.clear()
        job = self.state.start("build a model", work, banner=self.banner)
        if job is None:
            return None
        job.on_close = "stop"  # closing the window keeps what is finished, as Stop does
        self.job = job
        self.pages.setCurrentIndex(1)
        self.build_button.setEnabled(False)
        self.summary.clear()
        self._last_step = ""
        self.step.setText("<b>starting...</b>")
        self.strip.set_running(True)
        job.progress.connect(self._progress)
        job.ended.connect(self._ended)
        return wire(job, banner=self.banner, done=self._done)

    def confirm(self, text: str) -> bool:
        """Ask before replacing a catalog (tests replace this method)."""
        from PySide6.QtWidgets import QMessageBox

        return QMessageBox.question(self, "Build a model", text) == QMessageBox.StandardButton.Yes

    def _may_replace(self, folder: Path, project: Path) -> bool:
        """A project that holds images of another folder: its catalog is replaced only when
        the user says so (as the Import page asks before a re-import)."""
        from loff_core.errors import LoffError
        from loff_core.project import Project

        if not (project / "loff-project.json").is_file():
            return True
        try:
            existing = Project.open(project)
            before = existing.settings.images_root_absolute if existing.has_catalog() else None
        except LoffError:
            return True  # the build names what is wrong with it
        if not before or Path(before).resolve() == folder.resolve():
            return True
        return self.confirm(f"The project {project} holds the images of {before}.\n\nBuilding a model from "
                            f"{folder} replaces its catalog (its runs are kept but marked stale).\n\nContinue?")

    def _progress_view(self) -> QWidget:
        self.step = QLabel("")
        self.step.setTextFormat(Qt.TextFormat.RichText)
        self.left = QLabel("")
        self.strip = ProgressStrip()
        self.strip.stop_clicked.connect(self.stop)
        self.summary = QPlainTextEdit()
        self.summary.setReadOnly(True)
        box = QWidget()
        v = QVBoxLayout(box)
        v.addWidget(form_row(self.step, self.left))
        v.addWidget(self.strip)
        v.addWidget(self.summary, 1)
        return box

    def _progress(self, done: int, total: int, message: str) -> None:
        from loff_core.auto import parse_step_message

        parsed = parse_step_message(message)
        if parsed is None:
            self.strip.report(done, total, message)
            return
        title = f"Step {parsed['index']} of {parsed['steps']}: {parsed['step']}"
        if title != self._last_step:  # a log of the steps in the box the summary fills at the end
            import time

            self._last_step = title
            self.summary.appendPlainText(f"{time.strftime('%H:%M:%S')}  {title}")
        self.step.setText(f"<b>{title}</b>")
        self.left.setText(f"about {parsed['left']} left" if parsed["left"] else "")
        self.strip.report(done, total, parsed["detail"])

    def stop(self) -> None:
        """Finish the running step as its own Stop does and start no later one."""
        if self.job is not None and not self.job.done:
            self.job.stop()
            self.step.setText(self.step.text().replace("</b>", " - stopping</b>"))

    def _done(self, result: dict[str, Any]) -> None:
        from loff_core.auto import summary_text
        from loff_core.project import Project

        self.result = result
        self.summary.setPlainText(summary_text(result))
        stopped = result.get("stopped_after")
        self.step.setText(f"<b>Stopped during {stopped}: what was finished is kept</b>" if stopped
                          else "<b>Done: the head is exported and its report written</b>")
        self.left.setText("")
        self.strip.finish(f"head: {result['head']}" if result.get("head") else "stopped", complete=not stopped)
        self.state.message.emit("info", f"build a model: {'stopped' if stopped else 'done'}; "
                                        f"report {result.get('report') or '(none)'}")
        try:
            self.state.set_project(Project.open(result["project"]))  # every page shows the new catalog and run
        except Exception as exc:  # noqa: BLE001 - the build stands; the project is opened by hand
            self.state.message.emit("warning", f"could not reopen {result['project']}: {exc}")

    def _ended(self) -> None:
        self.strip.set_running(False)
        self.build_button.setEnabled(True)
        self.build_button.setText("Build again")
        if self.result is None:  # failed or cancelled: the form again, the reason on the banner
            self.pages.setCurrentIndex(0)

    def reject(self) -> None:
        """Close: a running build goes on in the background (the status bar says so)."""
        super().reject()
