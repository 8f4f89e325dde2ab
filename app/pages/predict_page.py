"""Predict and export: run a head on new files (results table, saved as CSV), and export
the head (safetensors + card.json, optionally ONNX) where the user chooses.

Everything here belongs to the open project: another project clears the head folder, the
images, the table and the export folder. The table's header says which model made the
predictions (run or exported head, backbone, classes, task) and whether it differs from
the open project; a head from outside the project that differs needs a confirmation.
Export never writes into a non-empty folder without asking."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from PySide6.QtCore import Qt

from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QGroupBox, QLabel, QLineEdit, QMessageBox,
                               QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ..about import project_backbone
from ..state import AppState
from ..theme import warning_colour
from ..widgets import Banner, ProgressStrip, enable, form_row
from ..workers import wire
from .results_page import fill_runs


def read_card(head_dir: str | Path) -> Optional[dict]:
    """An exported head's card.json (plain JSON: the window does not load the head)."""
    import json

    try:
        return json.loads((Path(head_dir) / "card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def differences(card: dict, project: Any) -> list[str]:
    """How a head differs from the open project: classes, task, backbone (empty: it fits)."""
    out = []
    if project is None:
        return out
    mine = list(project.settings.classes)
    if mine and list(card.get("classes", [])) != mine:
        out.append(f"classes {', '.join(card.get('classes', []))} (this project: {', '.join(mine)})")
    if card.get("task") and card["task"] != project.settings.task:
        out.append(f"task {card['task']} (this project: {project.settings.task})")
    theirs, ours = (card.get("backbone") or {}).get("name"), project_backbone(project)
    if theirs and ours and theirs != ours:
        out.append(f"backbone {theirs} (this project's cache: {ours})")
    return out


def inside(path: str | Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


class PredictPage(QWidget):
    def __init__(self, state: AppState):
        super().__init__()
        self.state = state
        self.run = QComboBox()
        self.run.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.run.currentIndexChanged.connect(lambda _: self._default_export_dir())
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
        enable(self.save_button, False, "predict images first: the CSV holds the table below")
        self.strip = ProgressStrip()
        self.strip.stop_clicked.connect(self.state.runner.cancel)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.model_text = QLabel("")  # which model made the predictions in the table
        self.model_text.setWordWrap(True)
        self.model_text.setTextFormat(Qt.TextFormat.RichText)
        self.banner = Banner()

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
        layout.addWidget(self.banner)
        layout.addWidget(export_box)
        layout.addWidget(predict_box)
        layout.addWidget(self.strip)
        layout.addWidget(self.model_text)
        layout.addWidget(self.table, 1)
        self.result: Optional[dict] = None
        state.project_changed.connect(lambda _: self._project_changed())
        state.project_state.runs_changed.connect(self.refresh)  # the run box renders from the project state
        state.project_state.catalog_changed.connect(self._labels_changed)
        state.busy_changed.connect(self._busy)
        self._busy(state.busy)  # no run and no head folder yet: Predict starts disabled

    def run_id(self) -> str:
        return self.run.currentData() or ""

    def _project_changed(self) -> None:
        """Another project: nothing of the previous one stays (head, images, table, folder)."""
        self.result = None
        self.head_dir.clear()
        self.files.clear()
        self.export_dir.clear()
        self.table.clear()
        self.table.setRowCount(0)
        self.table.setColumnCount(0)
        self.model_text.setText("")
        enable(self.save_button, False, "predict images first: the CSV holds the table below")
        self.strip.clear()
        self.banner.clear()
        self.refresh()
        values = self.state.page_settings("predict")
        self.onnx.setChecked(bool(values.get("onnx", False)))

    def _labels_changed(self) -> None:
        """A re-import: predictions made with the old classes leave the screen (issue 23 item 3)."""
        if self.result is not None and list(self.result.get("classes") or []) != self.state.project_state.classes:
            self.result = None
            self.table.clear()
            self.table.setRowCount(0)
            self.table.setColumnCount(0)
            self.model_text.setText("")
            self.save_button.setEnabled(False)
            self.strip.clear()

    def refresh(self) -> None:
        fill_runs(self.run, self.state.project_state, self.run_id())
        self._default_export_dir()
        self._busy(self.state.busy)

    def _default_export_dir(self) -> None:
        """Inside the open project unless the user chose a folder: exports/<run>."""
        project, run_id = self.state.project, self.run_id()
        text = self.export_dir.text().strip()
        if project is None or not run_id:
            return
        if not text or (inside(text, project.root) and Path(text).parent == project.root / "exports"):
            self.export_dir.setText(str(project.root / "exports" / run_id))

    def _busy(self, busy: bool) -> None:
        has_run = self.run.count() > 0
        enable(self.export_button, not busy and has_run, "a job is running" if busy else "train a head first")
        enable(self.predict_button, not busy and (has_run or bool(self.head_dir.text().strip())),
               "a job is running" if busy else "train a head first, or give an exported head folder below")
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

    def confirm(self, title: str, text: str) -> bool:
        """Ask the user (tests replace this method)."""
        return QMessageBox.question(self, title, text) == QMessageBox.StandardButton.Yes

    def start_export(self) -> None:
        project, run_id, out, onnx = self.state.project, self.run_id(), self.export_dir.text().strip(), \
            self.onnx.isChecked()
        if not out:
            self.state.message.emit("warning", "choose a folder to export into")
            return
        target = Path(out)
        if target.exists() and not target.is_dir():
            self.banner.show_error(f"{out} is a file, not a folder: choose a folder to export into")
            return
        if target.is_dir() and any(target.iterdir()):
            card = read_card(target)
            what = (f"an exported head of run {card.get('run')} ({', '.join(card.get('classes', []))})" if card
                    else f"{sum(1 for _ in target.iterdir())} files")
            if not self.confirm("Export", f"{out} is not empty: it holds {what}.\n\nReplace its head files "
                                          f"(head.safetensors, card.json{', model.onnx' if onnx else ''}) with "
                                          f"run {run_id}?"):
                self.state.message.emit("info", f"export cancelled: {out} was left as it was")
                return
        self.state.save_page_settings("predict", {"onnx": onnx})

        def work(progress: Any) -> Any:
            from loff_core import steps

            return steps.export(project, out, run_id=run_id, onnx=onnx, progress=progress).to_json()
        wire(self.state.start("export", work, banner=self.banner), strip=self.strip, banner=self.banner,
             done=self._exported)

    def _exported(self, r: dict) -> None:
        text = f"exported run {r['run']} to {r['out_dir']}: " + ", ".join(Path(f).name for f in r["files"].values())
        self.state.message.emit("info", text)
        self.strip.finish(text)

    def start_predict(self) -> None:
        project, run_id = self.state.project, self.run_id()
        paths = [p for p in self.files.text().split(";") if p.strip()]
        head_dir = self.head_dir.text().strip()
        if not paths:
            self.state.message.emit("warning", "choose images to predict")
            return
        if head_dir:
            card = read_card(head_dir)
            if card is None:
                self.banner.show_error(f"{head_dir}: no readable card.json: not an exported head folder")
                return
            differ = differences(card, project)
            if differ and project is not None and not inside(head_dir, project.root):
                if not self.confirm("A head from another project", f"The head in {head_dir} comes from outside "
                                    f"this project and differs from it:\n\n- " + "\n- ".join(differ)
                                    + "\n\nPredict with it anyway?"):
                    self.state.message.emit("info", "prediction cancelled: the head does not match this project")
                    return

        def work(progress: Any) -> Any:
            from loff_core import steps
            from loff_core.settings import PredictSettings

            # a project's run predicts as it is (no export to a temporary folder first)
            source = (head_dir, None) if head_dir else (project.root, run_id)
            return steps.predict(source[0], paths, PredictSettings(run=source[1], require_predictions=False),
                                 progress=progress).to_json()
        source = {"head_dir": head_dir} if head_dir else {"run": run_id}
        wire(self.state.start("predict", work, banner=self.banner), strip=self.strip, banner=self.banner,
             done=lambda result: self.show_predictions({**result, **source}))

    def describe_model(self, result: dict) -> str:
        """The model behind the table: where it comes from, backbone, classes, task, and how it
        differs from the open project."""
        project = self.state.project
        card = read_card(result["head_dir"]) if result.get("head_dir") else None
        if result.get("run"):
            where = f"run <b>{result['run']}</b> of this project"
            backbone = project_backbone(project)
        else:
            head = result.get("head_dir") or result.get("head") or "?"
            where = f"exported head <b>{head}</b>" + (f" (run {card.get('run')})" if card and card.get("run") else "")
            backbone = (card or {}).get("backbone", {}).get("name")
        text = (f"Predictions by {where}: model {backbone or '?'}"
                + (f", head {card['head']['kind']}" if card and card.get("head") else "")
                + f", classes {', '.join(result['classes'])}, task {result.get('task', '?')}")
        differ = differences({**(card or {}), "classes": result["classes"], "task": result.get("task")}, project)
        if differ:
            text += (f"<br><span style='color:{warning_colour()}'><b>Differs from this project</b>: " + "; ".join(differ)
                     + "</span>")
        return text

    def show_predictions(self, result: dict) -> None:
        self.result = result
        classes = result["classes"]
        rows = result["predictions"]
        self.model_text.setText(self.describe_model(result))
        self.table.clear()
        self.table.setColumnCount(3 + len(classes))
        self.table.setHorizontalHeaderLabels(["file", "predicted", *[f"P({c})" for c in classes],
                                              "out of distribution"])
        self.table.setRowCount(len(rows) + len(result["failed"]))
        from PySide6.QtGui import QBrush, QColor

        from loff_core.catalog import display_path  # a non-UTF-8 name shown with U+FFFD, not dropped

        flag_colour = QBrush(QColor("#ffd8a8"))
        for i, p in enumerate(rows):
            reason = p.get("out_of_distribution")
            for j, v in enumerate([display_path(p["path"]), p["predicted"], *[f"{x:.3f}" for x in p["probabilities"]],
                                   reason or ("" if not result.get("ood") else "not checked")]):
                item = QTableWidgetItem(str(v))
                if reason:  # the prediction of an image unlike the training images: marked, with the reason
                    item.setBackground(flag_colour)
                    item.setToolTip(f"out of distribution: {reason}")
                self.table.setItem(i, j, item)
        for k, f in enumerate(result["failed"]):
            self.table.setItem(len(rows) + k, 0, QTableWidgetItem(f["path"]))
            self.table.setItem(len(rows) + k, 1, QTableWidgetItem(f"not read: {f['reason']}"))
        self.table.resizeColumnsToContents()
        enable(self.save_button, bool(rows or result["failed"]), "nothing was predicted")
        text = f"predicted {len(rows)} images; {len(result['failed'])} could not be read"
        flagged = sum(bool(p.get("out_of_distribution")) for p in rows)
        if flagged:
            text += f"; {flagged} out of distribution (marked: their predictions are not to be trusted)"
            self.state.message.emit("warning", f"{flagged} of {len(rows)} images are out of distribution for this "
                                               f"head (unlike its training images): see the table")
        if result.get("ood"):
            self.model_text.setText(self.model_text.text() + f"<br>{result['ood']}: images unlike its training data "
                                                             f"are not flagged")
        self.state.message.emit("info", text)
        self.strip.finish(text, complete=bool(rows))

    def default_csv(self) -> Path:
        """PROJECT/predictions/<run>-<time>.csv in the project the head belongs to (the open
        project for its runs; an exported head's own project), never the working folder."""
        from loff_core.steps import default_predictions_csv

        result = self.result or {}
        project = self.state.project
        source = result.get("head_dir") or (project.root if project is not None else Path.home())
        path = default_predictions_csv(source, result.get("run") or (result.get("model") or {}).get("run"))
        path.parent.mkdir(parents=True, exist_ok=True)  # the dialog opens there
        return path

    def save_csv(self, path: Optional[str] = None) -> None:
        if self.result is None:
            return
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Save predictions", str(self.default_csv()), "CSV (*.csv)")
        if not path:
            return
        from loff_core.predictions import write_predictions_csv

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
