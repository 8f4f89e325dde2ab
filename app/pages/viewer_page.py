"""Viewer: one image with its true label, the prediction and the probability per class or
level, and the head's attention as a heat map that can be toggled and blended. Steps
through the test set or through the images of a confusion-matrix cell."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QHBoxLayout, QLabel, QListWidget, QPushButton, QSlider, QVBoxLayout,
                               QWidget)

from loff_core.errors import LoffError

from ..loader import load_async
from ..state import AppState
from ..widgets import ImagePanel, form_row


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
        self.opacity.setValue(45)
        self.opacity.valueChanged.connect(lambda _: self._redraw_heat())
        self.prev_button = QPushButton("< Previous")
        self.next_button = QPushButton("Next >")
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        self.position = QLabel("")
        self.source = QLabel("")
        self.details = QLabel("")
        self.details.setWordWrap(True)
        self.bars = pg.PlotWidget(title="probability per class")
        self.bars.setYRange(0, 1)
        self.bars.setMaximumWidth(360)
        self.image_list = QListWidget()  # the images being stepped through: click one to show it
        self.image_list.setMaximumWidth(260)
        self.image_list.setToolTip("the images of the evaluated split or of the chosen confusion-matrix cell")
        self.image_list.currentRowChanged.connect(self._list_clicked)
        side = QVBoxLayout()
        side.addWidget(self.details)
        side.addWidget(self.bars, 1)
        main = QHBoxLayout()
        main.addWidget(self.image_list)
        main.addWidget(self.panel, 3)
        main.addLayout(side, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(form_row(self.prev_button, self.next_button, self.position, self.source,
                                  stretch_last=True))
        layout.addWidget(form_row(self.heat_on, QLabel("blend"), self.opacity))
        layout.addLayout(main, 1)
        self.ids: list[str] = []
        self.index = 0
        self.explained: dict[str, Any] = {}
        self.heat: Optional[np.ndarray] = None
        state.browse.connect(self.browse)
        state.evaluation_changed.connect(self._evaluation)
        state.project_changed.connect(lambda _: self.browse([], ""))
        state.busy_changed.connect(self._busy_changed)

    def _busy_changed(self, busy: bool) -> None:
        """An explanation that waited for another job is computed when that job ends."""
        if not busy and self.ids and self.ids[self.index] not in self.explained and self.isVisible():
            self._explain(self.ids[self.index])

    def _list_clicked(self, row: int) -> None:
        if 0 <= row < len(self.ids) and row != self.index:
            self.index = row
            self.show_current()

    def _evaluation(self, result: dict) -> None:
        if not self.ids:
            self.browse([p["image_id"] for p in result["predictions"]], f"{result['split']} split of run {result['run']}")

    def browse(self, ids: list[str], caption: str) -> None:
        self.ids, self.index, self.explained = list(ids), 0, {}
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
        self.prev_button.setEnabled(len(self.ids) > 1)
        self.next_button.setEnabled(len(self.ids) > 1)
        if project is None or not self.ids:
            self.position.setText("no images to show: evaluate a run, or click a confusion-matrix cell")
            self.panel.show_image(None)
            self.details.setText("")
            self.bars.clear()
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
        caption = f"{entry.shown_path} | true label: {entry.label or '-'}"
        try:
            path = project.image_path(entry)
        except LoffError as exc:  # the images folder was moved: say so
            self._shown(image_id, None, caption, str(exc))
            return
        load_async(self, path, lambda px, err: self._shown(image_id, px, caption, err))

    def _shown(self, image_id: str, pixels: Any, caption: str, error: Optional[str]) -> None:
        self.panel.show_image(pixels, caption if error is None else f"{caption}: {error}")
        self.heat = None
        self._explain(image_id)

    def _explain(self, image_id: str) -> None:
        """Probabilities and attention for the current image, computed in a worker; the run
        is the one last evaluated (or the latest)."""
        project = self.state.project
        evaluation = self.state.last_evaluation
        run_id = evaluation["run"] if evaluation else None
        if project is None or not project.runs() or not project.settings.active_cache:
            return
        if image_id in self.explained:
            self._explanation(self.explained[image_id])
            return
        if self.state.busy:
            self.details.setText("prediction shown when the running job ends")
            return

        def work(progress: Any) -> Any:
            out = project.explain(run_id, [image_id])
            return {"image_id": image_id, "probabilities": out["probabilities"][0], "heat": out["heat"][0],
                    "classes": out["classes"], "task": out["task"], "predicted": out.get("predicted", [None])[0]}
        job = self.state.start("explain", work)
        if job is not None:
            job.finished.connect(self._explanation)

    def _explanation(self, out: dict) -> None:
        self.explained[out["image_id"]] = out
        if not self.ids or self.ids[self.index] != out["image_id"]:
            return
        probs, classes = np.asarray(out["probabilities"]), out["classes"]
        if out["task"] == "ordinal":
            cumulative = probs[::-1].cumsum()[::-1][1:]
            predicted = classes[int((cumulative > 0.5).sum())]
            level = float(np.dot(probs, np.arange(1, len(classes) + 1)))
            extra = f"<br>expected level {level:.2f}"
        else:
            predicted, extra = classes[int(np.argmax(probs))], ""
        predicted = out.get("predicted") or predicted  # the run's operating point (threshold), when it has one
        self.details.setText(f"<b>predicted: {predicted}</b>{extra}<br>"
                             + "<br>".join(f"{c}: {p:.3f}" for c, p in zip(classes, probs)))
        self.bars.clear()
        self.bars.addItem(pg.BarGraphItem(x=np.arange(len(classes)), height=probs, width=0.7, brush="#4e79a7"))
        self.bars.getAxis("bottom").setTicks([[(i, c) for i, c in enumerate(classes)]])
        self.heat = np.asarray(out["heat"])
        self._redraw_heat()

    def _redraw_heat(self) -> None:
        self.panel.show_heatmap(self.heat, self.opacity.value() / 100, self.heat_on.isChecked())
