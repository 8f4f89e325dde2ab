"""Predict and export: run a head on new files (results table, saved as CSV), and export
the head (safetensors + card.json, optionally ONNX) where the user chooses."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QGroupBox, QLabel, QLineEdit, QPushButton,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ..state import AppState
from ..widgets import ProgressStrip, form_row


class PredictPage(QWidget):
    def __init__(self, state: AppState):
        super().__init__()
        self.state = state
        self.run = QComboBox()
        self.export_dir = QLineEdit()
        self.export_dir.setPlaceholderText("folder to export the head into")
        pick_out = QPushButton("Choose...")
        pick_out.clicked.connect(self._choose_export)
        self.onnx = QCheckBox("also ONNX (backbone + head, checked against PyTorch)")
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.start_export)
        self.files = QLineEdit()
        self.files.setPlaceholderText("image files or a folder (separate several with ;)")
        pick_files = QPushButton("Files...")
        pick_files.clicked.connect(self._choose_files)
        pick_folder = QPushButton("Folder...")
        pick_folder.clicked.connect(self._choose_folder)
        self.head_dir = QLineEdit()
        self.head_dir.setPlaceholderText("an exported head folder (empty: the run chosen above)")
        self.head_dir.textChanged.connect(lambda _: self._busy(self.state.busy))  # a head folder alone enables Predict
        self.predict_button = QPushButton("Predict")
        self.predict_button.clicked.connect(self.start_predict)
        self.save_button = QPushButton("Save CSV...")
        self.save_button.clicked.connect(self.save_csv)
        self.save_button.setEnabled(False)
        self.strip = ProgressStrip()
        self.strip.stop_clicked.connect(self.state.runner.cancel)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)

        export_box = QGroupBox("Export the trained head")
        ev = QVBoxLayout(export_box)
        ev.addWidget(form_row(QLabel("run"), self.run, QLabel("to"), self.export_dir, pick_out, stretch_last=True))
        ev.addWidget(form_row(self.onnx, self.export_button))
        predict_box = QGroupBox("Predict new images")
        pv = QVBoxLayout(predict_box)
        pv.addWidget(form_row(QLabel("images"), self.files, pick_files, pick_folder, stretch_last=True))
        pv.addWidget(form_row(QLabel("head"), self.head_dir, self.predict_button, self.save_button,
                              stretch_last=True))
        layout = QVBoxLayout(self)
        layout.addWidget(export_box)
        layout.addWidget(predict_box)
        layout.addWidget(self.strip)
        layout.addWidget(self.table, 1)
        self.result: Optional[dict] = None
        state.project_changed.connect(lambda _: self.refresh())
        state.runs_changed.connect(self.refresh)
        state.busy_changed.connect(self._busy)
        self._busy(state.busy)  # no run and no head folder yet: Predict starts disabled

    def refresh(self) -> None:
        self.run.clear()
        project = self.state.project
        if project is not None:
            for r in reversed(project.runs()):
                self.run.addItem(r.run_id)
        self._busy(self.state.busy)

    def _busy(self, busy: bool) -> None:
        has_run = self.run.count() > 0
        self.export_button.setEnabled(not busy and has_run)
        self.export_button.setToolTip("" if has_run else "train a head first")
        self.predict_button.setEnabled(not busy and (has_run or bool(self.head_dir.text().strip())))
        job = self.state.runner.job
        self.strip.set_running(busy and job is not None and job.name in ("predict", "export"))

    def _choose_export(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export into")
        if path:
            self.export_dir.setText(path)

    def _choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Images to predict")
        if paths:
            self.files.setText(";".join(paths))

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of images to predict")
        if path:
            self.files.setText(path)

    def start_export(self) -> None:
        project, run_id, out, onnx = self.state.project, self.run.currentText(), self.export_dir.text().strip(), \
            self.onnx.isChecked()
        if not out:
            self.state.message.emit("warning", "choose a folder to export into")
            return

        def work(progress: Any) -> Any:
            from loff_core.export import export_head

            return export_head(project, out, run_id=run_id, onnx=onnx, progress=progress)
        job = self.state.start("export", work)
        if job is not None:
            job.progress.connect(self.strip.report)
            job.finished.connect(lambda r: self.state.message.emit(
                "info", f"exported run {r['run']} to {r['out_dir']}: " + ", ".join(Path(f).name for f in r["files"].values())))

    def start_predict(self) -> None:
        project, run_id = self.state.project, self.run.currentText()
        paths = [p for p in self.files.text().split(";") if p.strip()]
        head_dir = self.head_dir.text().strip()
        if not paths:
            self.state.message.emit("warning", "choose images to predict")
            return

        def work(progress: Any) -> Any:
            from loff_core.export import export_head, predict_files

            if head_dir:
                return predict_files(head_dir, paths, progress=progress)
            with tempfile.TemporaryDirectory(prefix="loff-head-") as tmp:
                export_head(project, tmp, run_id=run_id)
                return predict_files(tmp, paths, progress=progress)
        job = self.state.start("predict", work)
        if job is not None:
            job.progress.connect(self.strip.report)
            job.finished.connect(self.show_predictions)

    def show_predictions(self, result: dict) -> None:
        self.result = result
        classes = result["classes"]
        rows = result["predictions"]
        self.table.clear()
        self.table.setColumnCount(2 + len(classes))
        self.table.setHorizontalHeaderLabels(["file", "predicted", *[f"P({c})" for c in classes]])
        self.table.setRowCount(len(rows) + len(result["failed"]))
        from loff_core.catalog import display_path  # a non-UTF-8 name shown with U+FFFD, not dropped

        for i, p in enumerate(rows):
            for j, v in enumerate([display_path(p["path"]), p["predicted"], *[f"{x:.3f}" for x in p["probabilities"]]]):
                self.table.setItem(i, j, QTableWidgetItem(str(v)))
        for k, f in enumerate(result["failed"]):
            self.table.setItem(len(rows) + k, 0, QTableWidgetItem(f["path"]))
            self.table.setItem(len(rows) + k, 1, QTableWidgetItem(f"not read: {f['reason']}"))
        self.table.resizeColumnsToContents()
        self.save_button.setEnabled(bool(rows or result["failed"]))
        self.state.message.emit("info", f"predicted {len(rows)} images; {len(result['failed'])} could not be read")

    def save_csv(self, path: Optional[str] = None) -> None:
        if self.result is None:
            return
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Save predictions", "predictions.csv", "CSV (*.csv)")
        if not path:
            return
        from loff_core.project import write_predictions_csv

        failed = self.result["failed"]
        try:  # unreadable files too, as in the table: the reason where the prediction would be
            write_predictions_csv(Path(path), self.result)
        except OSError as exc:  # the table and the result stay; the user can choose another file
            detail = exc.strerror or str(exc)
            if exc.filename and os.fsdecode(exc.filename) != str(path):
                detail += f": {os.fsdecode(exc.filename)}"
            self.state.message.emit("error", f"could not save the predictions to {path} ({detail}); "
                                             "choose another file")
            return
        self.state.message.emit("info", f"saved {len(self.result['predictions'])} predictions"
                                        f"{f' and {len(failed)} unreadable files' if failed else ''} to {path}")
