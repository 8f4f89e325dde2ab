"""Small widgets the pages share: a labelled form row helper, a progress strip with Stop,
and an image view with window/level, zoom, pan and an optional heat-map overlay."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout,
                               QWidget)

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)


class ProgressStrip(QWidget):
    """Progress bar + message + Stop (keep what is done) + Cancel (drop it)."""

    stop_clicked = Signal()
    cancel_clicked = Signal()

    def __init__(self, parent: Optional[QWidget] = None, *, cancel: bool = False):
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.label = QLabel("")
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Finish early and keep what is done")
        self.stop_button.clicked.connect(self.stop_clicked)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Abandon this job; the project stays as it was")
        self.cancel_button.clicked.connect(self.cancel_clicked)
        self.cancel_button.setVisible(cancel)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bar, 2)
        row.addWidget(self.label, 3)
        row.addWidget(self.stop_button)
        row.addWidget(self.cancel_button)
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(False)  # no "0%" before anything ran
        self.set_running(False)

    def set_running(self, running: bool) -> None:
        self.stop_button.setEnabled(running)
        self.cancel_button.setEnabled(running)
        if not running and self.bar.maximum() == 0:  # a busy indicator that finished: show it full
            self.bar.setRange(0, 1)
            self.bar.setValue(1)

    def report(self, done: int, total: int, message: str) -> None:
        self.bar.setTextVisible(True)
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
        else:
            self.bar.setRange(0, 0)  # busy indicator
        if message:
            self.label.setText(message)


class ImagePanel(QWidget):
    """pyqtgraph view of a decoded image (window/level by dragging the histogram levels,
    zoom with the wheel, pan by dragging) with a toggleable, blendable heat map."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.view = pg.ImageView()
        self.view.ui.roiBtn.hide()
        self.view.ui.menuBtn.hide()
        self.overlay = pg.ImageItem()
        self.overlay.setZValue(10)
        self.overlay.setOpacity(0.45)
        self.overlay.setLookupTable(pg.colormap.get("inferno").getLookupTable(nPts=256, alpha=False))
        self.view.getView().addItem(self.overlay)
        self.overlay.hide()
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.caption)
        layout.addWidget(self.view, 1)

    def show_image(self, pixels: Optional[np.ndarray], caption: str = "") -> None:
        self.caption.setText(caption)
        self.overlay.hide()
        if pixels is None:
            self.view.clear()
            return
        self.view.setImage(pixels, autoLevels=True, autoRange=True)
        self._shape = pixels.shape

    def show_heatmap(self, heat: Optional[np.ndarray], opacity: float = 0.45, visible: bool = True) -> None:
        """`heat` [h, w] in [0, 1] is stretched over the image (the token grid covers the
        padded square the backbone saw; the caller crops it to the image first)."""
        if heat is None or not visible:
            self.overlay.hide()
            return
        rows, cols = getattr(self, "_shape", heat.shape)
        self.overlay.setImage(heat, levels=(0.0, 1.0))
        self.overlay.setRect(0, 0, cols, rows)
        self.overlay.setOpacity(opacity)
        self.overlay.show()


def form_row(*widgets: QWidget, stretch_last: bool = False) -> QWidget:
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        row.addWidget(w)
    if not stretch_last:
        row.addStretch(1)
    return box


def bold(text: str) -> QLabel:
    label = QLabel(f"<b>{text}</b>")
    label.setTextFormat(Qt.TextFormat.RichText)
    return label
