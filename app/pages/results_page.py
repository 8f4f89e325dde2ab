"""Results: metrics with 95% intervals, ROC curves with a threshold read-out, a confusion
matrix whose cells select the images behind them, and for ordinal tasks Kendall's tau,
AMAE and a predicted-vs-true level plot."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QComboBox, QGridLayout, QLabel, QPushButton, QSlider, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from loff_core.settings import EvaluateSettings

from ..state import AppState
from ..theme import warning_colour
from ..widgets import Banner, ProgressStrip, bold, enable, form_row
from ..workers import wire
from .train_page import OKABE_ITO, STOPPED_WORDS

PALETTE = OKABE_ITO  # colour-blind safe (Okabe-Ito)
CORRECT, WRONG = QColor(0, 114, 178), QColor(230, 159, 0)  # blue / orange: distinguishable without red-green


def best_run(ps: Any, runs: list[Any]) -> Optional[str]:
    """The run chosen first, by the engine's stated rule (`loff_core.results.choose_run`: the
    latest tune winner, else the best validation score among comparable up-to-date runs);
    `ps`: the window's ProjectState."""
    from loff_core.results import choose_run

    return choose_run(ps.project, runs)[0] if runs and ps.project is not None else None


def run_label(run: Any, stale: bool = False) -> str:
    """A run as the run boxes list it: its full name, how it ended when not completed, and
    "stale" when the labels or the cache changed since it was trained."""
    stopped = run.record.get("stopped", "completed")
    notes = ([] if stopped == "completed" else [STOPPED_WORDS.get(stopped, stopped)]) + (["stale"] if stale else [])
    return run.run_id + (f"  ({', '.join(notes)})" if notes else "")


def fill_runs(combo: QComboBox, ps: Any, keep: Optional[str]) -> None:
    """Every run of the open project (`ps`: the window's ProjectState), newest first, its id
    as the item's data; `keep` stays chosen if it still exists, else the best run is chosen."""
    combo.blockSignals(True)
    combo.clear()
    runs = ps.runs
    for r in reversed(runs):
        combo.addItem(run_label(r, bool(ps.stale.get(r.run_id))), r.run_id)
    from loff_core.results import choose_run

    best, rule = choose_run(ps.project, runs) if runs and ps.project is not None else (None, "")
    chosen = keep if keep and combo.findData(keep) >= 0 else best
    if chosen:
        combo.setCurrentIndex(combo.findData(chosen))
    combo.setToolTip("runs of this project, newest first" + (f"; chosen first: run {best}, {rule}" if best else ""))
    combo.blockSignals(False)


class ResultsPage(QWidget):
    def __init__(self, state: AppState):
        super().__init__()
        self.state = state
        self.run = QComboBox()
        self.run.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)  # full run names
        self.run.setToolTip("runs of this project, newest first")  # fill_runs adds the rule that chose one
        self.run.currentIndexChanged.connect(self._run_changed)
        self.compare = QComboBox()
        self.compare.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.compare.setToolTip("overlay another run's ROC on the same split (dashed; from its saved evaluation, "
                                "else computed now without saving)")
        self.compare.currentIndexChanged.connect(lambda _: self._show_compare())
        self.roc_legend = QLabel("")
        self.roc_legend.setWordWrap(True)
        self.banner = Banner()
        self.split = QComboBox()
        self.split.addItems(["test", "val", "train"])
        self.split.currentTextChanged.connect(lambda text: self.state.project_state.select(split=text))
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.clicked.connect(self.start_evaluate)
        self.report_button = QPushButton("Save report")
        self.report_button.setToolTip("the run's model report (data, protocol, test results with plots, examples, "
                                      "limitations, CLAIM checklist) as one HTML file in the project's reports/ "
                                      "folder; open it in a browser, print it to PDF from there")
        self.report_button.clicked.connect(self.start_report)
        self.strip = ProgressStrip()
        # an evaluation has nothing partial to keep: Stop drops it (the saved one stays as it was)
        self.strip.stop_button.setToolTip("Stop evaluating; the evaluation saved before stays as it was")
        self.strip.stop_clicked.connect(self.state.runner.cancel)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.metrics = QTableWidget(0, 3)
        self.metrics.setHorizontalHeaderLabels(["metric", "value", "95% interval"])
        self.metrics.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.metrics.verticalHeader().setVisible(False)
        self.metrics.verticalHeader().setDefaultSectionSize(self.metrics.fontMetrics().height() + 6)  # compact rows
        self.confusion = QTableWidget(0, 0)
        self.confusion.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.confusion.cellClicked.connect(self.select_cell)
        self.confusion.setToolTip("rows: true class, columns: predicted; click a cell to view its images")
        self.roc = pg.PlotWidget(title="ROC")
        self.roc.setLabel("bottom", "false positive rate")
        self.roc.setLabel("left", "true positive rate")
        self.compare_items: list[Any] = []
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 1000)
        self.threshold.setValue(500)
        self.threshold.valueChanged.connect(self._threshold_moved)
        self.threshold_text = QLabel("")
        self.positive = QComboBox()  # the class whose probability is thresholded (one vs rest)
        self.positive.setToolTip("class scored as positive (one vs rest for more than two classes)")
        self.positive.currentIndexChanged.connect(lambda _: self._threshold_moved(self.threshold.value()))
        self.marker = pg.ScatterPlotItem(size=12, brush=pg.mkBrush("#D55E00"))
        self.roc.addItem(self.marker)
        self.levels = pg.PlotWidget(title="predicted vs true level")
        self.levels.setLabel("bottom", "true level")
        self.levels.setLabel("left", "expected predicted level")
        self.view_cell = QPushButton("Open these images in the Viewer")
        self.view_cell.clicked.connect(self._browse_cell)
        enable(self.view_cell, False, "evaluate, then click a cell of the confusion matrix to choose its images")
        self.cell_ids: list[str] = []
        self.cell_caption = ""

        top = form_row(QLabel("run"), self.run, QLabel("split"), self.split, self.evaluate_button,
                       self.report_button, self.strip, stretch_last=True)
        grid = QGridLayout()
        left = QVBoxLayout()
        left.addWidget(bold("Metrics"))
        left.addWidget(self.metrics, 2)
        left.addWidget(bold("Confusion matrix (rows true, columns predicted)"))
        left.addWidget(self.confusion, 2)
        left.addWidget(self.view_cell)
        right = QVBoxLayout()
        right.addWidget(form_row(QLabel("compare with"), self.compare, stretch_last=False))
        right.addWidget(self.roc_legend)  # its own line: beside the box it wrapped word by word at 1280 x 720
        right.addWidget(self.roc, 3)
        right.addWidget(form_row(QLabel("P("), self.positive, QLabel(") >="), self.threshold,
                                         self.threshold_text, stretch_last=True))
        right.addWidget(self.levels, 2)
        grid.addLayout(left, 0, 0)
        grid.addLayout(right, 0, 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(top)
        layout.addWidget(self.summary)
        from ..validation_widgets import ResultsExtras  # fold spread, warnings, operating point (issue 13)

        self.extras = ResultsExtras(state, self)
        layout.addWidget(self.extras)
        layout.addLayout(grid, 1)
        # renders from the window's ProjectState: the selected run and split, and their evaluation
        ps = state.project_state
        ps.reset.connect(lambda _: (self.clear(), self.strip.clear(), self.refresh()))
        ps.runs_changed.connect(self.refresh)
        ps.selection_changed.connect(self._selection_changed)
        ps.evaluation_changed.connect(lambda result: self.clear() if result is None else self._render(result))
        state.busy_changed.connect(self._busy)

    @property
    def result(self) -> Optional[dict]:
        """The evaluation shown: the project state's (the selected run on the selected split)."""
        return self.state.project_state.evaluation

    def run_id(self) -> str:
        """The chosen run's id (the box shows it with how the run ended)."""
        return self.run.currentData() or ""

    def refresh(self) -> None:
        ps = self.state.project_state
        fill_runs(self.run, ps, ps.run_id or self.run_id())
        keep = self.compare.currentData()
        self.compare.blockSignals(True)
        self.compare.clear()
        self.compare.addItem("(none)", None)
        for r in reversed(ps.runs):
            self.compare.addItem(run_label(r, bool(ps.stale.get(r.run_id))), r.run_id)
        self.compare.setCurrentIndex(max(0, self.compare.findData(keep)) if keep else 0)
        self.compare.blockSignals(False)
        ps.select(run_id=self.run_id(), split=self.split.currentText())  # the best run, chosen by default
        self.extras.show_run(ps.run_id)  # a new cross-validation or tuning group may belong to it
        self._busy(self.state.busy)

    def _run_changed(self, _index: int) -> None:
        """Another run chosen: the state drops the previous run's evaluation (and this page clears)."""
        self.state.project_state.select(run_id=self.run_id())
        self._busy(self.state.busy)

    def _selection_changed(self, run_id: str, split: str) -> None:
        for box, value in ((self.run, self.run.findData(run_id) if run_id else -1),
                           (self.split, self.split.findText(split))):
            if value >= 0 and box.currentIndex() != value:
                box.blockSignals(True)
                box.setCurrentIndex(value)
                box.blockSignals(False)
        self.extras.show_run(run_id)

    def clear(self) -> None:
        """Show no evaluation: summary, metrics, confusion matrix, ROC, levels and the
        evaluation's warnings and decision emptied (the fold spread stays: it is the run's)."""
        self.summary.setText("")
        self.strip.label.setText("")
        self.metrics.setRowCount(0)
        self.confusion.clear()
        self.confusion.setRowCount(0)
        self.confusion.setColumnCount(0)
        self.confusion.setMaximumHeight(16777215)
        self.cell_ids, self.cell_caption = [], ""
        enable(self.view_cell, False, "evaluate, then click a cell of the confusion matrix to choose its images")
        self.view_cell.setText("Open these images in the Viewer")
        self.roc.clear()
        self.marker.setData([], [])
        self.roc.addItem(self.marker)
        self.positive.blockSignals(True)
        self.positive.clear()
        self.positive.blockSignals(False)
        self.threshold_text.setText("")
        self.levels.clear()
        self.levels.setTitle("predicted vs true level")
        self.levels.hide()  # shown with an ordinal evaluation; an empty plot took the ROC's room
        self.roc_legend.setText("")
        self.compare_items = []
        self.threshold.blockSignals(True)
        self.threshold.setValue(500)
        self.threshold.blockSignals(False)
        self.extras.clear_result()

    def _busy(self, busy: bool) -> None:
        enable(self.evaluate_button, not busy and self.run.count() > 0,
               "a job is running" if busy else "train a head first (Train page)")
        enable(self.report_button, not busy and self.run.count() > 0,
               "a job is running" if busy else "train a head first (Train page)")
        job = self.state.runner.job
        self.strip.set_running(busy and job is not None and job.name in ("evaluate", "report"))

    def start_evaluate(self) -> None:
        project, run_id, split = self.state.project, self.run_id(), self.split.currentText()
        if project is None or not run_id:
            return
        generation = self.state.project_state.generation  # a result for another project is dropped

        def work(progress: Any) -> Any:
            from loff_core import steps

            # the step takes the reader lock: a training in another process does not hold it up;
            # the same resamples as `loff evaluate`: one eval-SPLIT.json, one interval
            return steps.evaluate(project, run_id, split, EvaluateSettings(), progress=progress).to_json()
        wire(self.state.start("evaluate", work, banner=self.banner), strip=self.strip, banner=self.banner,
             done=lambda result: self.show_result(result, generation))

    def start_report(self) -> None:
        """Write the chosen run's model report to PROJECT/reports/RUN.html (a heavy job: it
        evaluates on test and draws the plots); the message names the file."""
        project, run_id = self.state.project, self.run_id()
        if project is None or not run_id:
            return

        def work(progress: Any) -> Any:
            from loff_core import steps

            return str(steps.report(project, run_id, progress=progress))

        def done(path: str) -> None:
            text = f"report of run {run_id} saved: {path}"
            self.state.message.emit("info", text)
            self.strip.finish(text)
        wire(self.state.start("report", work, banner=self.banner), strip=self.strip, banner=self.banner, done=done)

    # -- showing -----------------------------------------------------------------------
    def show_result(self, result: dict, generation: Optional[int] = None) -> None:
        """An evaluation finished: it goes to the project state, which every page renders from."""
        self.strip.label.setText("")
        self.state.project_state.set_evaluation(result, generation)

    def _render(self, result: dict) -> None:
        stale = result.get("stale") or []
        self.summary.setText(f"run <b>{result['run']}</b> on the {result['split']} split: {result['n']} images, "
                             f"task {result['task']}" + (f" &nbsp; <span style='color:{warning_colour()}'>stale: "
                                                         f"{'; '.join(stale)}</span>" if stale else ""))
        self.metrics.setRowCount(0)
        for name, value in result["metrics"].items():
            ci = result.get("ci", {}).get(name)
            row = self.metrics.rowCount()
            self.metrics.insertRow(row)
            for col, text in enumerate([name.replace("_", " "), "n/a" if value is None else f"{value:.3f}",
                                        f"{ci[0]:.3f} - {ci[1]:.3f}" if ci else ""]):
                self.metrics.setItem(row, col, QTableWidgetItem(text))
        for name, pc in (result.get("per_class") or {}).items():
            if "auc" in pc:  # one vs rest, with its bootstrap interval (evaluations from before: none)
                ci = pc.get("auc_ci")
                row = self.metrics.rowCount()
                self.metrics.insertRow(row)
                for col, cell in enumerate([f"class {name}: AUC (one vs rest)",
                                            "n/a" if pc["auc"] is None else f"{pc['auc']:.3f}",
                                            f"{ci[0]:.3f} - {ci[1]:.3f}" if ci else ""]):
                    self.metrics.setItem(row, col, QTableWidgetItem(cell))
            row = self.metrics.rowCount()
            self.metrics.insertRow(row)
            text = (f"{pc['precision']:.3f} / {pc['recall']:.3f}")
            for col, cell in enumerate([f"class {name}: precision / recall", text, f"n = {pc['support']}"]):
                self.metrics.setItem(row, col, QTableWidgetItem(cell))
        self.metrics.resizeColumnsToContents()
        self._show_confusion(result)
        self._show_roc(result)
        self._show_levels(result)
        self.extras.show_result(result)

    def _show_confusion(self, result: dict) -> None:
        cm = np.asarray(result["confusion_matrix"])
        classes = result["classes"]
        self.confusion.clear()
        self.confusion.setRowCount(len(classes))
        self.confusion.setColumnCount(len(classes))
        self.confusion.setHorizontalHeaderLabels([f"pred {c}" for c in classes])
        self.confusion.setVerticalHeaderLabels([f"true {c}" for c in classes])
        rows = cm.sum(axis=1, keepdims=True).clip(min=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                share = cm[i, j] / rows[i, 0]  # row-normalised shade: fair for imbalanced classes
                item = QTableWidgetItem(f"{cm[i, j]}  ({share:.0%})")
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                colour = QColor(CORRECT if i == j else WRONG)
                colour.setAlpha(int(30 + 190 * share))
                item.setBackground(QBrush(colour))
                self.confusion.setItem(i, j, item)
        self.confusion.resizeColumnsToContents()
        # as high as its rows (scrolls beyond 10 classes): the metrics table gets the rest at 1280 x 720
        c = self.confusion
        rows = min(c.rowCount(), 10)
        c.setMaximumHeight(c.horizontalHeader().height() + sum(c.rowHeight(r) for r in range(rows))
                           + 2 * c.frameWidth() + 2)
        self.cell_ids = []
        enable(self.view_cell, False, "evaluate, then click a cell of the confusion matrix to choose its images")

    def select_cell(self, row: int, col: int) -> None:
        """Select the images of one confusion-matrix cell (true = row, predicted = column)."""
        if self.result is None:
            return
        classes = self.result["classes"]
        self.cell_ids = [p["image_id"] for p in self.result["predictions"]
                         if p["label"] == classes[row] and p["predicted"] == classes[col]]
        self.cell_caption = f"true {classes[row]}, predicted {classes[col]} ({_n_images(len(self.cell_ids))})"
        enable(self.view_cell, bool(self.cell_ids), "this cell holds no images")
        self.view_cell.setText(f"Open {_n_images(len(self.cell_ids))} (true {classes[row]}, predicted "
                               f"{classes[col]}) in the Viewer")

    def _browse_cell(self) -> None:
        if self.cell_ids:
            self.state.browse.emit(list(self.cell_ids), self.cell_caption)

    def _show_roc(self, result: dict) -> None:
        self.roc.clear()
        self.roc.addItem(self.marker)
        self.roc.plot([0, 1], [0, 1], pen=pg.mkPen("#999", style=Qt.PenStyle.DashLine))
        roc = result.get("roc") or {}
        classes = result["classes"]
        names = []
        if "fpr" in roc:
            self.roc.plot(roc["fpr"], roc["tpr"], pen=pg.mkPen(PALETTE[0], width=2))
            names.append((PALETTE[0], f"{classes[1]} vs {classes[0]}"))
        else:
            for k, (name, curve) in enumerate(roc.items()):
                self.roc.plot(curve["fpr"], curve["tpr"], pen=pg.mkPen(PALETTE[k % len(PALETTE)], width=2))
                names.append((PALETTE[k % len(PALETTE)], f"{name} vs rest"))
        self.roc_names = names
        self.compare_items = []
        self._show_compare()
        self.positive.blockSignals(True)
        self.positive.clear()
        self.positive.addItems([str(c) for c in classes])
        self.positive.setCurrentIndex(1 if len(classes) == 2 else len(classes) - 1)
        self.positive.blockSignals(False)
        self._threshold_moved(self.threshold.value())

    def _show_compare(self) -> None:
        """Another run's saved ROC on the same split, dashed (the legend says which)."""
        for item in self.compare_items:
            self.roc.removeItem(item)
        self.compare_items = []
        if self.result is None:
            return
        legend = [f"<span style='color:{c}'>&#9644;</span> {n}" for c, n in getattr(self, "roc_names", [])]
        other, project = self.compare.currentData(), self.state.project
        if other and project is not None and other != self.result["run"]:
            from .. import roc_overlay

            split = self.result["split"]
            key = (str(project.root), other, split)
            saved = roc_overlay.saved(project, other, split) or self.state.project_state.computed.get(("roc",) + key)
            if saved is None:
                legend.append(f"(computing run {other}'s ROC on the {split} split...)")
                self._compute_compare(project, other, split)
            elif not saved.get("roc"):
                legend.append(f"(run {other} has no ROC on the {split} split)")
            else:
                roc = saved["roc"]
                curves = [roc] if "fpr" in roc else list(roc.values())
                for k, curve in enumerate(curves):
                    item = self.roc.plot(curve["fpr"], curve["tpr"], pen=pg.mkPen(
                        PALETTE[k % len(PALETTE)], width=1, style=Qt.PenStyle.DashLine))
                    self.compare_items.append(item)
                auc = saved.get("auc")
                legend.append(f"dashed: run {other}" + (f" (AUC {auc:.3f})" if auc is not None else "")
                              + ("" if saved.get("saved") else ", computed now, not saved"))
        self.roc_legend.setText(" &nbsp; ".join(legend))

    def _compute_compare(self, project: Any, run_id: str, split: str) -> None:
        """Another run's ROC on this split, computed as a light job (nothing written)."""
        from .. import roc_overlay
        from ..workers import start_light

        ps = self.state.project_state
        made_for = (ps.generation, ps.catalog_version)

        def done(out: dict) -> None:
            if made_for != (ps.generation, ps.catalog_version):
                return  # computed for a project or labels no longer open
            ps.computed[("roc", out["project"], out["run"], out["split"])] = out
            current = self.state.project
            if (self.result is not None and current is not None and str(current.root) == out["project"]
                    and self.compare.currentData() == out["run"] and self.result["split"] == out["split"]):
                self._show_compare()

        def failed(text: str) -> None:
            if self.compare.currentData() == run_id:
                self.roc_legend.setText(self.roc_legend.text().replace(
                    f"(computing run {run_id}'s ROC on the {split} split...)",
                    f"(run {run_id}'s ROC on the {split} split could not be computed: {text})"))
        wire(start_light("compare ROC", roc_overlay.compute, project, run_id, split, newest=(self, "compare")),
             done=done, failed=failed)

    def _threshold_moved(self, value: int) -> None:
        """The operating point at a threshold on P(class), one vs rest, from the per-image
        predictions; the marker sits on that class's ROC curve."""
        if self.result is None or self.positive.currentIndex() < 0:
            return
        t = value / 1000
        k = self.positive.currentIndex()
        name = self.result["classes"][k]
        y = np.array([p["label"] == name for p in self.result["predictions"]])
        score = np.array([p["probabilities"][k] for p in self.result["predictions"]])
        pred = score >= t
        tpr = (pred & y).sum() / max(y.sum(), 1)
        fpr = (pred & ~y).sum() / max((~y).sum(), 1)
        self.marker.setData([fpr], [tpr])
        self.threshold_text.setText(f"{t:.3f}: sensitivity {tpr:.3f}, specificity {1 - fpr:.3f} "
                                    f"({int(y.sum())} positive, {int((~y).sum())} negative)")

    def _show_levels(self, result: dict) -> None:
        self.levels.clear()
        self.levels.setVisible(result["task"] == "ordinal")  # the ROC gets the room otherwise
        if result["task"] != "ordinal":
            return
        def shown(name: str) -> str:  # undefined on a split with one level (None): n/a, not a crash
            value = result["metrics"].get(name)
            return "n/a" if value is None else f"{value:.3f}"
        self.levels.setTitle(f"predicted vs true level: Kendall tau {shown('kendall_tau')}, AMAE {shown('amae')}")
        k = len(result["classes"])
        true = np.array([result["classes"].index(p["label"]) + 1 for p in result["predictions"]], float)
        expected = np.array([float(np.dot(p["probabilities"], np.arange(1, k + 1))) for p in result["predictions"]])
        jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(true))
        self.levels.plot(true + jitter, expected, pen=None, symbol="o", symbolSize=6,
                         symbolBrush=pg.mkBrush(78, 121, 167, 160))
        self.levels.plot([1, k], [1, k], pen=pg.mkPen("#999", style=Qt.PenStyle.DashLine))


def _n_images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"
