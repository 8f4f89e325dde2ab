"""Viewer: one image with its true label, the prediction and the probability per class or
level, and the head's attention as a heat map (upsampled smoothly from the cached token
grid, clipped to the body, with a colour bar and what it means) that can be toggled and
blended. Steps through the test set or through the images of a confusion-matrix cell.
The exam view places the same patient's images (CC / MLO x right / left) side by side,
each with its prediction."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QGridLayout, QHBoxLayout, QLabel, QListWidget, QPushButton, QSlider,
                               QStackedWidget, QVBoxLayout, QWidget)

from loff_core.errors import LoffError

from ..remedies import window_text
from ..state import AppState
from ..theme import warning_colour
from ..widgets import ImagePanel, enable, form_row
from ..workers import load_image, start_light, wire

#: what the heat map shows, per head kind (the colour bar's one line)
HEAT_MEANING = {
    "attention": "where the head looked: its attention weight on each region of the cached token grid, "
                 "lowest to highest in this image; not a finding",
    "vit": "where the head looked: its attention weight on each region of the cached token grid, "
           "lowest to highest in this image; not a finding",
    "linear": "each region's contribution to the predicted class, lowest to highest in this image; not a finding",
}
DEFAULT_BLEND = 35  # % : the image stays readable under the map


def exam_position(view: Optional[str], laterality: Optional[str]) -> Optional[tuple[int, int]]:
    """Grid cell of an image in the exam view: rows CC, MLO, then "view unknown" (a side
    but no view, e.g. mini-MIAS, whose CSV gives only the side); columns right, left (the
    radiologist's hanging: the patient's right breast on the viewer's left). None: no side."""
    v = (view or "").upper()
    side = (laterality or "").upper()[:1]
    col = 0 if side == "R" else 1 if side == "L" else None
    if col is None:
        return None
    row = 0 if v.startswith("CC") else 1 if v.startswith("MLO") or v.startswith("ML") else EXAM_VIEW_UNKNOWN_ROW
    return row, col


EXAM_VIEW_UNKNOWN_ROW = 2  # an image with a side but no (known) view; images without a side go below


class ViewerPage(QWidget):
    def __init__(self, state: AppState):
        super().__init__()
        self.state = state
        self.panel = ImagePanel()
        self.heat_on = QCheckBox("heat map")
        self.heat_on.setChecked(True)
        self.heat_on.setToolTip("where the head looked: attention weights (attention / vit heads) or each token's "
                                "contribution to the predicted class (linear head), over the image")
        self.heat_on.toggled.connect(lambda _: self._redraw_heat())
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(DEFAULT_BLEND)
        self.opacity.setMaximumWidth(160)
        self.opacity.valueChanged.connect(lambda _: self._redraw_heat())
        self.prev_button = QPushButton("< Previous")
        self.next_button = QPushButton("Next >")
        self.prev_button.setToolTip("previous image (Left arrow)")
        self.next_button.setToolTip("next image (Right arrow)")
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        self.exam_button = QPushButton("Exam view")
        self.exam_button.setCheckable(True)
        self.exam_button.setToolTip("this patient's images side by side (CC / MLO, right / left) with predictions")
        self.exam_button.toggled.connect(self._exam_toggled)
        self.position = QLabel("")
        self.source = QLabel("")
        self.details = QLabel("")
        self.details.setWordWrap(True)
        self.bars = pg.PlotWidget(title="probability per class")
        self.bars.setYRange(0, 1)
        self.bars.setMaximumWidth(320)
        self.bars.setMouseEnabled(False, False)
        self.image_list = QListWidget()  # the images being stepped through: click one to show it
        self.image_list.setMaximumWidth(220)
        self.image_list.setToolTip("the images of the evaluated split or of the chosen confusion-matrix cell")
        self.image_list.currentRowChanged.connect(self._list_clicked)
        # the exam view: 2 x 2 (CC / MLO x right / left) plus a row for images without view/side
        self.exam = QWidget()
        self.exam_grid = QGridLayout(self.exam)
        self.exam_grid.setContentsMargins(0, 0, 0, 0)
        for col in (0, 1):  # right | left keep their halves when one side has no image (the hanging stays)
            self.exam_grid.setColumnStretch(col, 1)
        self.exam_panels: dict[str, ImagePanel] = {}
        self.exam_caption = QLabel("")
        self.exam_caption.setWordWrap(True)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.panel)
        exam_page = QWidget()
        ev = QVBoxLayout(exam_page)
        ev.setContentsMargins(0, 0, 0, 0)
        ev.addWidget(self.exam_caption)
        ev.addWidget(self.exam, 1)
        self.stack.addWidget(exam_page)
        side = QVBoxLayout()
        side.addWidget(self.details)
        side.addWidget(self.bars, 1)
        main = QHBoxLayout()
        main.addWidget(self.image_list)
        main.addWidget(self.stack, 4)
        main.addLayout(side, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(form_row(self.prev_button, self.next_button, self.position, self.exam_button,
                                  self.heat_on, QLabel("blend"), self.opacity, self.source, stretch_last=True))
        layout.addLayout(main, 1)
        self.ids: list[str] = []
        self.list_run = ""  # the run whose evaluation listed `ids`
        self.index = 0
        self.explained: dict[str, Any] = {}
        self.heat: Optional[np.ndarray] = None
        self.head_kind = ""
        state.browse.connect(self.browse)
        ps = state.project_state  # the run explained, the classes and the labels shown come from it
        ps.evaluation_changed.connect(self._evaluation)
        ps.selection_changed.connect(lambda run_id, split: self._run_changed())
        ps.catalog_changed.connect(lambda: self.browse([], ""))  # labels re-imported: no old label stays
        ps.reset.connect(lambda _: self._project_changed())

    def _project_changed(self) -> None:
        self.exam_button.setChecked(False)
        self.browse([], "")
        self.opacity.setValue(int(self.state.page_settings("viewer").get("blend", DEFAULT_BLEND)))

    def _list_clicked(self, row: int) -> None:
        if 0 <= row < len(self.ids) and row != self.index:
            self.index = row
            self.show_current()

    def _evaluation(self, result: Optional[dict]) -> None:
        """A new evaluation shown: its split's images, explained with its run (the list of
        another run's evaluation or cell goes)."""
        if result is not None:
            self.browse([p["image_id"] for p in result["predictions"]], f"{result['split']} split of run {result['run']}")

    def explained_run(self) -> str:
        """The run whose predictions and heat maps are shown: the one whose evaluation (or
        confusion cell) listed the images, else the selected one, else the latest."""
        ps = self.state.project_state
        return self.list_run or ps.run_id or (ps.runs[-1].run_id if ps.runs else "")

    def _run_changed(self) -> None:
        """Another run selected: the images listed from the previous run's evaluation, their
        predictions and heat maps go (the Results page clears the same way)."""
        if self.ids and self.list_run != self.state.project_state.run_id:
            self.browse([], "")

    def browse(self, ids: list[str], caption: str) -> None:
        """Step through `ids` (an evaluation's split or a confusion cell: the selected run's)."""
        self.ids, self.index, self.explained = list(ids), 0, {}
        self.list_run = self.state.project_state.run_id if self.ids else ""
        self.source.setText(caption)
        project = self.state.project
        by_id = project.catalog().by_id() if project is not None and project.has_catalog() else {}
        self.image_list.blockSignals(True)
        self.image_list.clear()
        for image_id in self.ids:
            e = by_id.get(image_id)
            self.image_list.addItem(f"{e.shown_path}  [{e.label or '-'}]" if e is not None else image_id)
        self.image_list.setCurrentRow(0 if self.ids else -1)
        self.image_list.blockSignals(False)
        self.show_current()

    def step(self, delta: int) -> None:
        if self.ids:
            self.index = (self.index + delta) % len(self.ids)
            self.show_current()

    def show_current(self) -> None:
        project = self.state.project
        one = "no images to step through" if not self.ids else "only one image in this set"
        enable(self.prev_button, len(self.ids) > 1, one)
        enable(self.next_button, len(self.ids) > 1, one)
        enable(self.exam_button, bool(self.ids), "no image shown: choose a set of images first")
        if project is None or not self.ids:
            self.position.setText("no images to show: evaluate a run, or click a confusion-matrix cell")
            self.panel.show_image(None)
            self.details.setText("")
            self._clear_bars()
            self.heat = None
            self._clear_exam()
            return
        image_id = self.ids[self.index]
        entry = project.catalog().by_id().get(image_id)
        self.position.setText(f"{self.index + 1} / {len(self.ids)}")
        if self.image_list.currentRow() != self.index:
            self.image_list.blockSignals(True)
            self.image_list.setCurrentRow(self.index)
            self.image_list.blockSignals(False)
        if entry is None:
            return
        if self.exam_button.isChecked():
            self._show_exam(entry)
        caption = f"{entry.shown_path} | true label: {entry.label or '-'}"
        try:
            path = project.image_path(entry)
        except LoffError as exc:  # the images folder was moved: say so
            self._shown(image_id, None, caption, window_text(exc))
            return
        load_image(self, path, lambda px, err: self._shown(image_id, px, caption, err))

    def _clear_bars(self) -> None:
        """No bars and no class names on the axis (another project's classes stayed there)."""
        self.bars.clear()
        self.bars.getAxis("bottom").setTicks(None)

    def _shown(self, image_id: str, pixels: Any, caption: str, error: Optional[str]) -> None:
        self.panel.show_image(pixels, caption if error is None else f"{caption}: {error}")
        self.heat = None
        self._explain(image_id)

    # -- explanations (light jobs, beside any running heavy job) ----------------------------
    def _explain(self, image_id: str) -> None:
        """Probabilities and attention for the current image, computed as a light job; the
        run is the one last evaluated (or the latest)."""
        project = self.state.project
        if project is None or not self.explained_run() or not project.settings.active_cache:
            self.details.setText("")
            self._clear_bars()
            return
        if image_id in self.explained:
            self._explanation(self.explained[image_id])
            return
        self._start_explain(project, [image_id], self._explanation, key="explain")

    def _start_explain(self, project: Any, image_ids: list[str], slot: Any, key: str) -> None:
        run_id, generation = self.explained_run(), self.state.project_state.generation

        def work() -> list[dict]:
            from loff_core import steps

            run = project.run(run_id)
            out = steps.explain(project, run.run_id, image_ids)  # the reader lock: never waits for a training
            kind = run.record["head_config"]["kind"]
            return [{"image_id": i, "probabilities": out.probabilities[k], "heat": out.heat[k],
                     "classes": out.classes, "task": out.task, "head": kind, "run": run.run_id,
                     "project": str(project.root), "decided": out.predicted[k], "generation": generation,
                     "ood": out.out_of_distribution[k] if out.out_of_distribution else None}
                    for k, i in enumerate(image_ids)]
        def failed(text: str) -> None:  # said only while that project and run are still the ones shown
            if generation == self.state.project_state.generation and run_id == self.explained_run():
                self.details.setText(f"no prediction: {text}")
        wire(start_light("explain", work, newest=(self, key)), done=lambda outs: [slot(o) for o in outs],
             failed=failed)

    @staticmethod
    def predicted(out: dict) -> tuple[str, str]:
        probs, classes = np.asarray(out["probabilities"]), out["classes"]
        if out["task"] == "ordinal":
            cumulative = probs[::-1].cumsum()[::-1][1:]
            level = float(np.dot(probs, np.arange(1, len(classes) + 1)))
            return classes[int((cumulative > 0.5).sum())], f"expected level {level:.2f}"
        # the run's operating point (binary threshold) decided, when it has one
        return out.get("decided") or classes[int(np.argmax(probs))], ""

    def _explanation(self, out: dict) -> None:
        project = self.state.project
        if project is None or out.get("project") not in (None, str(project.root)) \
                or out.get("generation", self.state.project_state.generation) != self.state.project_state.generation \
                or out.get("run", self.explained_run()) != self.explained_run():
            return  # computed for a project (or a run) that is no longer the one shown
        self.explained[out["image_id"]] = out
        if not self.ids or self.ids[self.index] != out["image_id"]:
            return
        probs, classes = np.asarray(out["probabilities"]), out["classes"]
        predicted, extra = self.predicted(out)
        self.details.setText(f"run {out.get('run', '')}<br><b>predicted: {predicted}</b>"
                             + (f"<br>{extra}" if extra else "") + "<br>"
                             + "<br>".join(f"{c}: {p:.3f}" for c, p in zip(classes, probs))
                             + (f"<br><span style='color:{warning_colour()}'><b>out of distribution</b>: {out['ood']}</span>"
                                if out.get("ood") else ""))
        self._clear_bars()
        self.bars.addItem(pg.BarGraphItem(x=np.arange(len(classes)), height=probs, width=0.7, brush="#0072B2"))
        self.bars.getAxis("bottom").setTicks([[(i, c) for i, c in enumerate(classes)]])
        self.bars.setXRange(-0.5, len(classes) - 0.5)  # every class's name in view
        self.heat = np.asarray(out["heat"])
        self.head_kind = out.get("head", "")
        self._redraw_heat()

    def _redraw_heat(self) -> None:
        meaning = HEAT_MEANING.get(self.head_kind, "where the head looked, lowest to highest in this image")
        self.panel.show_heatmap(self.heat, self.opacity.value() / 100, self.heat_on.isChecked(), meaning)
        for panel in self.exam_panels.values():
            self._exam_heat(panel)
        self.state.save_page_settings("viewer", {"blend": self.opacity.value()})

    # -- exam view -------------------------------------------------------------------------
    def _exam_toggled(self, on: bool) -> None:
        self.stack.setCurrentIndex(1 if on else 0)
        if on:
            self.show_current()
        else:
            self._clear_exam()

    def _clear_exam(self) -> None:
        for panel in self.exam_panels.values():
            panel.setParent(None)
            panel.deleteLater()
        self.exam_panels = {}
        self.exam_caption.setText("")

    def exam_images(self, entry: Any) -> list[tuple[Any, Optional[tuple[int, int]]]]:
        """The images of `entry`'s patient, each with its exam-grid cell (None: no view/side)."""
        catalog = self.state.project.catalog()
        same = [e for e in catalog.entries if e.patient_key == entry.patient_key]
        return [(e, exam_position(e.view, e.laterality)) for e in sorted(same, key=lambda e: e.shown_path)]

    def _show_exam(self, entry: Any) -> None:
        project = self.state.project
        self._clear_exam()
        images = self.exam_images(entry)
        taken: set[tuple[int, int]] = set()
        extra = 0
        for e, cell in images[:8]:
            if cell is None or cell in taken:
                cell = (EXAM_VIEW_UNKNOWN_ROW + 1 + extra // 2, extra % 2)
                extra += 1
            taken.add(cell)
            panel = ImagePanel(controls=False)
            panel.view.ui.histogram.hide()
            side = {"R": "right", "L": "left"}.get((e.laterality or "").upper()[:1], "side unknown")
            panel.caption.setText(f"{e.view or 'view unknown'} {side}: {e.shown_path} | true {e.label or '-'}"
                                  + (" (this image)" if e.image_id == entry.image_id else ""))
            panel.exam_heat = None
            panel.exam_meaning = ""
            self.exam_grid.addWidget(panel, *cell)
            self.exam_panels[e.image_id] = panel
            try:
                load_image(panel, project.image_path(e), lambda px, err, p=panel: self._exam_loaded(p, px, err))
            except LoffError as exc:
                panel.show_image(None, window_text(exc))
        n = len(images)
        self.exam_caption.setText(f"patient {entry.patient_key[:8]}: {n} image{'s' if n != 1 else ''}"
                                  + (" (first 8 shown)" if n > 8 else "")
                                  + "; columns: right | left; rows: CC, MLO"
                                  + (", view unknown" if any(c and c[0] == EXAM_VIEW_UNKNOWN_ROW for _, c in images)
                                     else "")
                                  + ("" if all(c is not None for _, c in images) else
                                     "; images without a side are shown below the grid"))
        if project.runs() and project.settings.active_cache:
            self._start_explain(project, list(self.exam_panels), self._exam_explained, key="exam")

    def _exam_loaded(self, panel: ImagePanel, pixels: Any, error: Optional[str]) -> None:
        panel.show_image(pixels, panel.caption.text() if error is None else f"{panel.caption.text()}: {error}")
        self._exam_heat(panel)

    def _exam_heat(self, panel: ImagePanel) -> None:
        if panel.pixels is not None and panel.exam_heat is not None:
            # the panels' bars say lowest / highest; what the map means is said once, in the
            # exam caption (wrapped beside each small panel it took a fifth of the height)
            panel.show_heatmap(panel.exam_heat, self.opacity.value() / 100, self.heat_on.isChecked(), "")

    def _exam_explained(self, out: dict) -> None:
        panel = self.exam_panels.get(out["image_id"])
        if panel is None or out.get("generation", self.state.project_state.generation) != \
                self.state.project_state.generation or out.get("run") != self.explained_run():
            return
        predicted, extra = self.predicted(out)
        probs = ", ".join(f"{c} {p:.2f}" for c, p in zip(out["classes"], out["probabilities"]))
        text = panel.caption.text().split(" | predicted")[0]
        panel.caption.setText(f"{text} | predicted <b>{predicted}</b> ({probs})")
        panel.exam_heat = np.asarray(out["heat"])
        panel.exam_meaning = HEAT_MEANING.get(out.get("head", ""), "")
        caption = self.exam_caption.text().split("<br>heat map: ")[0]
        self.exam_caption.setText(f"{caption}<br>heat map: {panel.exam_meaning}" if panel.exam_meaning else caption)
        self._exam_heat(panel)
