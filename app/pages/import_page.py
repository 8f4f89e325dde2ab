"""Import: choose an image folder (and a labels CSV), see the catalog, counts, problems,
and any image in a window/level viewer. Patient names and IDs are never shown; the
catalog only holds the de-identified patient key."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from PySide6.QtWidgets import (QComboBox, QFormLayout, QLabel, QLineEdit, QListWidget,
                               QMessageBox, QPushButton, QSplitter, QTableView, QVBoxLayout, QWidget)

from loff_core.catalog import CatalogEntry
from loff_core.errors import LoffError
from loff_core.settings import TASKS

from ..remedies import window_text
from ..state import AppState
from ..widgets import LABELS_FILTER, Banner, ImagePanel, ProgressStrip, choose_into, enable, form_row
from ..workers import wire

COLUMNS = [("shown_path", "File"), ("label", "Label"), ("split", "Split"), ("patient_key", "Patient key"),
           ("modality", "Modality"), ("view", "View"), ("laterality", "Side"), ("size", "Size"),
           ("format", "Format"), ("image_id", "Image id")]


def text_or_none(text: str) -> Optional[str]:
    return text.strip() or None


class CatalogModel(QAbstractTableModel):
    """The catalog as a table model that sorts and filters itself: the display strings are
    computed once per import, so sorting or filtering 20,000 rows is a Python sort or scan
    over them (tens of ms), not a Qt proxy calling `data()` a million times."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[CatalogEntry] = []
        self._cells: list[tuple[str, ...]] = []
        self._haystack: list[str] = []  # the row's cells, lower case, for the filter
        self._order: list[int] = []  # all rows in the current sort order
        self._rows: list[int] = []  # the rows shown: _order filtered
        self._needle = ""
        self._sort: tuple[int, Qt.SortOrder] = (0, Qt.SortOrder.AscendingOrder)

    @staticmethod
    def _cell(e: CatalogEntry, key: str) -> str:
        if key == "size":
            return f"{e.rows} x {e.cols}" + (f" x {e.frames}" if e.frames > 1 else "")
        value = getattr(e, key)
        return "" if value is None else str(value)

    def set_entries(self, entries: list[CatalogEntry]) -> None:
        self.beginResetModel()
        self.entries = list(entries)
        self._cells = [tuple(self._cell(e, key) for key, _ in COLUMNS) for e in self.entries]
        self._haystack = ["\x1f".join(c).casefold() for c in self._cells]
        self._order = self._sorted(*self._sort)
        self._rows = self._filtered()
        self.endResetModel()

    def _sorted(self, column: int, order: Qt.SortOrder) -> list[int]:
        if COLUMNS[column][0] == "size":
            key = lambda i: (self.entries[i].rows * self.entries[i].cols, self.entries[i].frames)  # noqa: E731
        else:
            key = lambda i: self._cells[i][column].casefold()  # noqa: E731
        return sorted(range(len(self.entries)), key=key, reverse=order == Qt.SortOrder.DescendingOrder)

    def _filtered(self) -> list[int]:
        if not self._needle:
            return list(self._order)
        return [i for i in self._order if self._needle in self._haystack[i]]

    def set_filter(self, text: str) -> None:
        self.beginResetModel()
        self._needle = text.strip().casefold()
        self._rows = self._filtered()
        self.endResetModel()

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        old_entries = [self._rows[i.row()] for i in old]
        self._sort = (column, order)
        self._order = self._sorted(column, order)
        self._rows = self._filtered()
        where = {entry: row for row, entry in enumerate(self._rows)}
        self.changePersistentIndexList(old, [self.index(where[e], i.column()) for e, i in zip(old_entries, old)])
        self.layoutChanged.emit()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return len(COLUMNS)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.UserRole):
            return None
        i = self._rows[index.row()]
        if role == Qt.ItemDataRole.UserRole:
            return self.entries[i].image_id
        return self._cells[i][index.column()]

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section][1]
        return None


class ImportPage(QWidget):
    build_requested = Signal()  # Build a model (app/build_model.py), once images and labels are in

    def __init__(self, state: AppState):
        super().__init__()
        self.state = state
        top = self._import_box()
        split = self._catalog_and_viewer()
        self.banner = Banner()
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(top)
        layout.addWidget(split, 1)
        state.project_changed.connect(lambda _: self._project_changed())
        state.catalog_changed.connect(self.refresh)
        state.busy_changed.connect(self._busy)
        self._read_columns()

    def _import_box(self) -> QWidget:
        """Images, labels CSV and its columns, split and patients, task: folded once imported."""
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("folder of DICOM / PNG / JPEG images (scanned in place, never copied)")
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._choose_folder)
        self.labels = QLineEdit()
        self.labels.setPlaceholderText("optional labels CSV (else sub-folder names are the labels)")
        self.labels.editingFinished.connect(self._read_columns)
        browse_csv = QPushButton("Browse...")
        browse_csv.clicked.connect(self._choose_csv)
        self.file_column, self.label_column, self.patient_column = QComboBox(), QComboBox(), QComboBox()
        for combo in (self.file_column, self.label_column, self.patient_column):  # column names unclipped
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.task = QComboBox()
        self.task.addItems(list(TASKS))
        self.task.setToolTip("\n".join(f"{k}: {v}" for k, v in TASKS.items()))
        self.classes = QLineEdit()
        self.classes.setPlaceholderText("class order, e.g. F,G,D (optional; low to high for ordinal)")
        self.import_button = QPushButton("Import")
        self.import_button.clicked.connect(self.start_import)
        self.strip = ProgressStrip()
        self.strip.stop_clicked.connect(self.state.runner.cancel)
        self.build_button = QPushButton("Build a model...")
        self.build_button.setToolTip("from these images and labels to an exported head and its report in one job: "
                                     "extract, find the best head within a time budget, test, export, report")
        self.build_button.clicked.connect(self.build_requested)
        self.build_button.hide()

        form = QFormLayout()
        form.addRow("Images", form_row(self.folder, browse, stretch_last=True))
        form.addRow("Labels CSV", form_row(self.labels, browse_csv, stretch_last=True))
        self.exam_columns_note = QLabel("")  # where the exam view's side / view come from (a CSV column)
        self.exam_columns_note.setToolTip("a labels CSV column named like side / laterality / view gives the exam "
                                          "view its columns (right, left) and rows (CC, MLO) where the image "
                                          "header has none (e.g. mini-MIAS PNGs)")
        form.addRow("Columns", form_row(QLabel("file"), self.file_column, QLabel("label"), self.label_column,
                                        QLabel("patient"), self.patient_column, self.exam_columns_note))
        from ..validation_widgets import ImportExtras  # given split and patients (issue 13)

        self.extras = ImportExtras()
        form.addRow("Split, patients", self.extras)
        form.addRow("Task", form_row(self.task, QLabel("classes"), self.classes, stretch_last=True))
        from ..collapsible import Collapsible

        body = QWidget()
        body.setLayout(form)
        form.setContentsMargins(0, 0, 0, 0)
        # folds to one line once the project has images, so the table gets the height at 1280 x 720;
        # Import and its progress stay in the header
        self.import_box = Collapsible("Import images", body, (self.import_button, self.build_button, self.strip))
        return self.import_box

    def _catalog_and_viewer(self) -> QWidget:
        """The catalog table with its filter, the import report below it, the image beside them."""
        self.model = CatalogModel()
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("filter (any column)")
        self.filter.textChanged.connect(self._filter_changed)
        self.shown = QLabel("")  # how many rows the filter shows
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)  # compact rows
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.selectionModel().currentRowChanged.connect(self._row_changed)
        self.counts = QLabel("")
        self.counts.setWordWrap(True)
        self.problems = QListWidget()
        self.problems.setToolTip("files that could not be read, with the reason (select and Ctrl+C to copy)")
        self.problems.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.viewer = ImagePanel()

        table_part = QWidget()
        tv = QVBoxLayout(table_part)
        tv.setContentsMargins(0, 0, 0, 0)
        tv.addWidget(form_row(self.filter, self.shown, stretch_last=False))
        tv.addWidget(self.table, 1)
        report_part = QWidget()
        lv = QVBoxLayout(report_part)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.counts)
        lv.addWidget(self.extras.assigned)  # how the split and the patients were assigned
        lv.addWidget(QLabel("Import report: files not imported, and warnings"))
        lv.addWidget(self.problems, 1)
        self.problems.setMinimumHeight(40)
        left = QSplitter(Qt.Orientation.Vertical)  # the table above, the report below: the user moves the line
        left.addWidget(table_part)
        left.addWidget(report_part)
        left.setStretchFactor(0, 3)
        left.setStretchFactor(1, 1)
        left.setSizes([400, 160])
        split = QSplitter()
        split.addWidget(left)
        split.addWidget(self.viewer)
        split.setSizes([700, 500])
        return split

    def _project_changed(self) -> None:
        """Another project: nothing of the previous one stays (image, filter, texts)."""
        self.banner.clear()
        self.strip.clear()
        self.filter.clear()
        self.viewer.show_image(None, "")
        self._fill_from_project()
        self.refresh()
        project = self.state.project
        self.import_box.set_expanded(project is None or not project.has_catalog())  # a new project: the form

    # -- choosing inputs ---------------------------------------------------------------
    def _choose_folder(self) -> None:
        choose_into(self.folder, "Image folder")

    def _choose_csv(self) -> None:
        if choose_into(self.labels, "Labels CSV", file_filter=LABELS_FILTER, start=self.folder.text()):
            self._read_columns()

    def _fill_from_project(self) -> None:
        """A project just opened: the import fields show how its images were imported (folder,
        labels CSV and columns, classes, task), so a re-import keeps its labels unless the
        user changes them."""
        project = self.state.project
        folder, labels, src = "", "", None
        if project is not None and project.has_catalog():
            try:
                folder = str(project.images_root())
            except LoffError:  # a moved images folder: the user picks it again
                pass
            src = project.settings.labels_source
            csv_path = project.labels_csv()
            labels = str(csv_path) if csv_path else ""
        self.folder.setText(folder)
        self.labels.setText(labels)
        self._read_columns()
        if src and labels:
            for combo, key in ((self.file_column, "file_column"), (self.label_column, "label_column"),
                               (self.patient_column, "patient_column")):
                i = combo.findData(src.get(key))
                if src.get(key) is not None and i >= 0:
                    combo.setCurrentIndex(i)
        self.classes.setText(",".join(src["classes"]) if src and src.get("classes") else "")
        if project is not None:
            self.task.setCurrentText(project.settings.task)

    def confirm(self, text: str) -> bool:
        """Ask before replacing a catalog (tests replace this method)."""
        answer = QMessageBox.question(self, "Re-import", text)
        return answer == QMessageBox.StandardButton.Yes

    def _read_columns(self) -> None:
        path = Path(self.labels.text().strip())
        columns: list[str] = []
        if path.is_file():
            try:
                with open(path, newline="", encoding="utf-8-sig") as fh:
                    sample = fh.read(4096)
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t") if sample else csv.excel
                columns = next(csv.reader(sample.splitlines(), dialect), [])
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                self.state.message.emit("error", f"{path}: cannot read the CSV header ({exc})")
        for combo, guess in ((self.file_column, ("file", "filename", "path", "image")),
                             (self.label_column, ("label", "masking_level", "tissue", "density", "class")),
                             (self.patient_column, ("patient", "patient_id", "woman", "subject"))):
            combo.clear()
            combo.addItem("(automatic)" if combo is not self.patient_column else "(from DICOM PatientID)", None)
            for c in columns:
                combo.addItem(c, c)
            for i, c in enumerate(columns):
                if c.lower() in guess:
                    combo.setCurrentIndex(i + 1)
                    break
        self.extras.set_columns(columns)
        self._exam_columns(columns)

    def _exam_columns(self, columns: list[str]) -> None:
        from loff_core.exam_columns import find_columns

        side, view = find_columns(columns, (self.file_column.currentData(), self.patient_column.currentData(),
                                            self.label_column.currentData()))
        parts = ([f"side: {side}"] if side else []) + ([f"view: {view}"] if view else [])
        self.exam_columns_note.setText(("exam view " + ", ".join(parts)) if parts else "")

    # -- import ------------------------------------------------------------------------
    def start_import(self) -> None:
        project = self.state.project
        folder = self.folder.text().strip()
        if project is None or not folder:
            self.state.message.emit("warning", "choose an image folder first")
            return
        classes = [c.strip() for c in self.classes.text().split(",") if c.strip()] or None
        labels_csv = self.labels.text().strip()
        n = len(project.catalog().entries) if project.has_catalog() else 0
        if n:  # an empty catalog (an import that found nothing) is replaced without asking
            source = (f"from {Path(labels_csv).name}, column {self.label_column.currentText()}" if labels_csv
                      else "from sub-folder names (no labels CSV chosen)")
            runs = len(project.runs())
            if not self.confirm(f"Re-import replaces the catalog of {n} images.\n\nLabels will come {source}."
                                + (f"\n\nThe {runs} trained runs are kept but will be marked stale." if runs else "")
                                + "\n\nContinue?"):
                return
        kwargs = dict(labels_csv=labels_csv or None, label_column=self.label_column.currentData(),
                      file_column=self.file_column.currentData(), patient_column=self.patient_column.currentData(),
                      classes=classes, task=self.task.currentText())
        kwargs.update(self.extras.import_kwargs(labels_csv or None))

        def work(progress: Any) -> Any:
            from loff_core import steps
            from loff_core.settings import ImportSettings

            return steps.import_images(project, folder, ImportSettings(**kwargs), progress=progress)  # takes the lock
        wire(self.state.start("import", work, banner=self.banner), strip=self.strip, banner=self.banner,
             done=self._imported)

    def _imported(self, summary: Any) -> None:
        text = (f"imported {summary.imported} images ({summary.labelled} labelled); "
                f"{len(summary.failed)} could not be read")
        self.state.message.emit("info", text)
        self.strip.finish(text, complete=summary.imported > 0)  # 0 images: an empty bar, not 100 %
        if summary.imported > 0:
            self.import_box.set_expanded(False)  # the table is what to look at now (the form is one click away)
        if summary.imported == 0:
            self.banner.show_warning(f"no images were imported from {self.folder.text().strip()}: see the import "
                                     "report below")
        self.state.catalog_changed.emit()

    def _filter_changed(self, text: str) -> None:
        self.model.set_filter(text)
        self._count_shown()

    def _count_shown(self) -> None:
        total, shown = len(self.model.entries), self.model.rowCount()
        self.shown.setText(f"{shown} of {total} rows shown" if text_or_none(self.filter.text()) else
                           f"{total} rows")

    def _busy(self, busy: bool) -> None:
        enable(self.import_button, not busy and self.state.project is not None,
               "a job is running" if busy else "create or open a project first (File menu)")
        enable(self.build_button, not busy, "a job is running")
        self.strip.set_running(busy and self.state.runner.job is not None and self.state.runner.job.name == "import")

    # -- showing -----------------------------------------------------------------------
    def refresh(self) -> None:
        project = self.state.project
        self.problems.clear()
        if project is None or not project.has_catalog():
            self.import_box.set_summary("")
            self.extras.assigned.setText("")  # no split or patients of another project's catalog
            self.model.set_entries([])
            self._count_shown()
            self.counts.setText("No images imported yet.")
            self.viewer.show_image(None, "")
            self.build_button.hide()
            self._busy(self.state.busy)
            return
        catalog = project.catalog()
        self.model.set_entries(catalog.entries)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        s = project.import_summary()
        self.extras.show_project(project)
        self.counts.setText(
            f"{s.imported} images, {s.labelled} labelled. Per label: "
            + (", ".join(f"{c} {n}" for c, n in s.per_class.items()) or "none")
            + ". Per split: " + (", ".join(f"{k} {v}" for k, v in sorted(s.splits.items())) or "none")
            + (" &nbsp; <b>SYNTHETIC demo data</b>" if project.settings.synthetic else ""))
        labels = self.labels.text().strip()
        self.import_box.set_summary(
            f"{s.imported} images from {self.folder.text().strip() or 'a folder that moved'}"
            + (f"; labels: {Path(labels).name}, column {self.label_column.currentText()}" if labels else "")
            + f"; task {project.settings.task}")
        self.build_button.setVisible(s.labelled > 0)
        for f in s.failed:
            self.problems.addItem(f"{f['path']}: {f['reason']}")
        for w in s.warnings:
            self.problems.addItem(f"warning: {w}")
        self.table.resizeColumnsToContents()
        self._count_shown()
        self._busy(self.state.busy)
        if self.model.rowCount():
            self.table.selectRow(0)
        else:
            self.viewer.show_image(None, "")

    def _row_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if not current.isValid() or self.state.project is None:
            return
        image_id = self.model.data(current, Qt.ItemDataRole.UserRole)
        self.show_image(image_id)

    def show_image(self, image_id: str) -> None:
        """Decode in a plain Python thread (not the job runner: viewing must not wait for a
        long job) and show the result on the GUI thread."""
        project = self.state.project
        entry = project.catalog().by_id().get(image_id)
        if entry is None:
            return
        from ..workers import load_image

        caption = (f"{entry.shown_path} | label {entry.label or '-'} | split {entry.split or '-'} | "
                   f"{entry.modality or entry.format} {entry.view or ''} {entry.laterality or ''}")
        try:
            path = project.image_path(entry)
        except LoffError as exc:  # the images folder was moved: say so, keep the table
            self.viewer.show_image(None, window_text(exc))
            return
        load_image(self, path, lambda pixels, error: self.viewer.show_image(
            pixels, caption if error is None else f"{entry.shown_path}: {error}"))
