"""Small widgets the pages share: a labelled form row helper, a progress strip with Stop,
and an image view with window/level, zoom, pan and an optional heat-map overlay."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QSizePolicy, QVBoxLayout, QWidget)

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)

#: the file types a labels table may have (Import page, Build a model)
LABELS_FILTER = "CSV (*.csv *.tsv *.txt)"


def choose_into(edit: QLineEdit, title: str, *, file_filter: Optional[str] = None, start: Optional[str] = None) -> bool:
    """A folder (or, with `file_filter`, a file) chosen in the system dialog, written into
    `edit`; the dialog opens at `start` (default: what `edit` holds). True when one was chosen."""
    start = edit.text() if start is None else start
    if file_filter is None:
        path = QFileDialog.getExistingDirectory(edit.window(), title, start)
    else:
        path, _ = QFileDialog.getOpenFileName(edit.window(), title, start, file_filter)
    if path:
        edit.setText(path)
    return bool(path)


def enable(button: QWidget, on: bool, why: str = "") -> None:
    """Enable a control, or disable it saying why in its tooltip (issue 23, item 7: a control
    that looks usable and does nothing, or is greyed out without a word, is a defect). The
    control's own tooltip comes back when it is enabled again."""
    current, last = button.toolTip(), button.property("why_tip")
    if last is None or current != last:  # a tooltip set since (by the page): the control's own
        button.setProperty("own_tip", current)
    own = button.property("own_tip") or ""
    button.setEnabled(on)
    tip = own if on or not why else why + (f"\n({own})" if own else "")
    button.setToolTip(tip)
    button.setProperty("why_tip", tip)
    button.setProperty("why", "" if on else why)


class ElidedLabel(QLabel):
    """One line that gives way: it never widens its row past the window (a long progress line
    pushed the Validate panel's controls off-screen at 1280 x 720, with a scroll bar); what
    does not fit ends in "…", and the whole text is the tooltip. `text()` is the whole text."""

    def __init__(self, text: str = "", parent: Optional[QWidget] = None):
        super().__init__(text, parent)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(self.fontMetrics().horizontalAdvance("0000 …"))

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        super().setText(text)
        self.setToolTip(text)

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        from PySide6.QtGui import QPainter

        painter = QPainter(self)
        shown = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, self.contentsRect().width())
        painter.drawText(self.contentsRect(), int(self.alignment()), shown)


class ProgressStrip(QWidget):
    """Progress bar + message + Stop (keep what is done) + Cancel (drop it)."""

    stop_clicked = Signal()
    cancel_clicked = Signal()

    def __init__(self, parent: Optional[QWidget] = None, *, cancel: bool = False):
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.label = ElidedLabel("")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Finish early and keep what is done")
        self.stop_button.clicked.connect(self.stop_clicked)
        self.stop_button.clicked.connect(self._stop_pressed)
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
        self._running = False
        self._finished = False
        self._stopped = False  # Stop was pressed during this run: its bar never ends full
        self._last = (0, 0)
        self.set_running(False)

    def _stop_pressed(self) -> None:
        if self._running:
            self._stopped = True

    def set_running(self, running: bool) -> None:
        """When work stops, what described it going on ("6.5 img/s, 22 s left") goes: the
        label keeps only a text the page gave with `finish`, and a bar that did not reach
        its end (stopped, failed, or nothing to do) is emptied rather than shown full."""
        was_running = self._running
        self._running = running
        enable(self.stop_button, running, "nothing is running here")
        enable(self.cancel_button, running, "nothing is running here")
        if running and not was_running:
            self._stopped = False
        if running or not was_running:
            return
        if not self._finished:
            self.label.setText("")
        done, total = self._last
        # after Stop the work did not reach its end, even when the page reported "done"
        if self._stopped or total <= 0 or done < total or self.bar.maximum() == 0:
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
            self.bar.setTextVisible(False)

    def finish(self, message: str, complete: bool = True) -> None:
        """The outcome, kept after the job ends ("run X: best ..."). `complete`: show the
        bar full (the work reached its end) or empty."""
        self._finished = True
        self.label.setText(message)
        complete = complete and not self._stopped  # stopped: the outcome is kept, the bar is not full
        self._last = (1, 1) if complete else (0, 1)
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if complete else 0)
        self.bar.setTextVisible(complete)

    def clear(self) -> None:
        """Nothing shown (another project was opened)."""
        self._finished = False
        self._last = (0, 0)
        self.label.setText("")
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(False)

    def report(self, done: int, total: int, message: str) -> None:
        self._finished = False
        self._last = (int(done), int(total))
        self.bar.setTextVisible(True)
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
        else:
            self.bar.setRange(0, 0)  # busy indicator
        if message:
            self.label.setText(message)


class Banner(QLabel):
    """A coloured line at the top of a page: the error of the job started there (the
    Messages dock has it too), or a warning. Hidden when empty; click to dismiss."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setToolTip("click to dismiss")
        self.level = ""
        self.hide()

    def _show(self, level: str, text: str, colour: str, background: str) -> None:
        self.level = level
        self.setText(("Problem: " if level == "error" else "") + text)
        self.setStyleSheet(f"QLabel {{ color: {colour}; background: {background}; border: 1px solid {colour}; "
                           "border-radius: 3px; padding: 4px; }")
        self.show()

    def show_error(self, text: str) -> None:
        self._show("error", text, "#7a1f00", "#fde3d3")

    def show_warning(self, text: str) -> None:
        self._show("warning", text, "#5c4400", "#fff3c4")

    def clear(self) -> None:
        self.level = ""
        self.setText("")
        self.hide()

    def mousePressEvent(self, event: Any) -> None:  # noqa: N802
        self.clear()


#: window/level presets, as percentiles of the pixels inside the body / breast (so the black
#: background does not count): full range, soft tissue (the middle), dense breast (the top)
WINDOW_PRESETS = {"full range": None, "soft tissue": (2.0, 98.0), "dense breast": (50.0, 99.8)}

#: the heat map's colours: cividis (perceptually uniform, readable with colour-blindness)
HEAT_MAP = "cividis"


def body_mask(pixels: np.ndarray) -> np.ndarray:
    """Pixels that belong to the body / breast, not the background: brighter than a low
    threshold set between the darkest values and the median (mammograms and radiographs have
    a near-black background), then holes filled. Plain numpy + scipy.ndimage."""
    p = np.asarray(pixels, dtype=np.float32)
    if p.ndim == 3:
        p = p.mean(axis=-1)
    lo, med = float(np.percentile(p, 1)), float(np.median(p))
    hi = float(p.max())
    if hi <= lo:
        return np.ones(p.shape, bool)
    threshold = lo + 0.1 * (max(med, lo + 0.2 * (hi - lo)) - lo)
    mask = p > threshold
    try:
        from scipy import ndimage

        mask = ndimage.binary_opening(mask, iterations=2)
        mask = ndimage.binary_fill_holes(mask)
    except ImportError:  # scipy ships with the engine; without it the raw threshold stands
        pass
    return mask if mask.any() else np.ones(p.shape, bool)


def upsample(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A token-grid map [h, w] resized smoothly (bilinear, sample centres aligned) to `shape`."""
    heat = np.asarray(heat, dtype=np.float32)
    h, w = heat.shape
    rows, cols = shape
    y = np.clip((np.arange(rows) + 0.5) * h / rows - 0.5, 0, h - 1)
    x = np.clip((np.arange(cols) + 0.5) * w / cols - 0.5, 0, w - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = heat[y0][:, x0] * (1 - fx) + heat[y0][:, x1] * fx
    bottom = heat[y1][:, x0] * (1 - fx) + heat[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def heat_rgba(heat: np.ndarray, shape: tuple[int, int], mask: Optional[np.ndarray], opacity: float) -> np.ndarray:
    """The overlay as RGBA [rows, cols, 4] uint8: the upsampled map in HEAT_MAP colours,
    transparent outside `mask` (no colour on the background); alpha grows with the value,
    so low-attention tissue stays readable under it."""
    up = upsample(np.asarray(heat, dtype=np.float32), shape)
    inside = mask.astype(bool) if mask is not None and mask.shape == tuple(shape) and mask.any() else None
    # stretched from the lowest to the highest value inside the body of this image (2nd and
    # 98th percentiles, so a few cells at the image's edge or on the background do not squeeze
    # the tissue's range into a single colour): a head that spreads its attention evenly over
    # the breast still shows where it looked most; the colour bar says "lowest ... highest"
    values = up[inside] if inside is not None else up.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [2, 98]))
    up = np.clip((up - lo) / (hi - lo), 0.0, 1.0) if hi - lo > 1e-6 else np.zeros_like(up)
    lut = pg.colormap.get(HEAT_MAP).getLookupTable(nPts=256, alpha=False)
    rgba = np.empty((*shape, 4), np.uint8)
    rgba[..., :3] = lut[(up * 255).astype(np.int32)]
    alpha = opacity * (0.25 + 0.75 * up)
    if mask is not None and mask.shape == tuple(shape):
        alpha = alpha * mask
    rgba[..., 3] = (np.clip(alpha, 0, 1) * 255).astype(np.uint8)
    return rgba


class ColourBar(QWidget):
    """A horizontal colour bar for the heat map with its end labels and a one-line meaning."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        from PySide6.QtGui import QImage, QPixmap

        lut = pg.colormap.get(HEAT_MAP).getLookupTable(nPts=256, alpha=False).astype(np.uint8)
        strip = np.ascontiguousarray(np.repeat(lut[None, :, :], 12, axis=0))
        image = QImage(strip.data, 256, 12, 256 * 3, QImage.Format.Format_RGB888).copy()
        self.gradient = QLabel()
        self.gradient.setPixmap(QPixmap.fromImage(image).scaled(160, 12))
        self.low, self.high = QLabel("lowest"), QLabel("highest")
        self.low.setToolTip("the lowest value of this image's map")
        self.high.setToolTip("the highest value of this image's map")
        self.meaning = QLabel("")
        self.meaning.setWordWrap(True)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        for w in (self.low, self.gradient, self.high):
            row.addWidget(w)
        row.addWidget(self.meaning, 1)

    def set_meaning(self, text: str, low: str = "lowest", high: str = "highest") -> None:
        self.meaning.setText(text)
        self.low.setText(low)
        self.high.setText(high)


class ImagePanel(QWidget):
    """pyqtgraph view of a decoded image with window/level numbers, presets and reset (drag
    the histogram's levels too), zoom with the wheel, pan by dragging, and an optional heat
    map: upsampled smoothly from the token grid, clipped to the body, with a colour bar."""

    def __init__(self, parent: Optional[QWidget] = None, *, controls: bool = True):
        super().__init__(parent)
        self.view = pg.ImageView()
        self.view.ui.roiBtn.hide()
        self.view.ui.menuBtn.hide()
        self.view.getView().setMenuEnabled(False)  # pyqtgraph's raw menu: the controls below instead
        self.overlay = pg.ImageItem()
        self.overlay.setZValue(10)
        self.view.getView().addItem(self.overlay)
        self.overlay.hide()
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        self.pixels: Optional[np.ndarray] = None
        self.mask: Optional[np.ndarray] = None
        self.heat: Optional[np.ndarray] = None
        self.window_text = QLabel("")
        self.window_text.setToolTip("window (width) and level (centre) of the displayed grey values; drag the "
                                    "histogram's bars to change them")
        self.preset = QComboBox()
        self.preset.addItems(list(WINDOW_PRESETS))
        self.preset.setToolTip("full range: darkest to brightest pixel; soft tissue: 2nd-98th percentile of the "
                               "body; dense breast: the brightest half of the breast (50th-99.8th percentile)")
        self.preset.activated.connect(lambda _: self.apply_preset(self.preset.currentText()))
        self.reset_button = QPushButton("Reset view")
        self.reset_button.setToolTip("full range, whole image")
        self.reset_button.clicked.connect(self.reset)
        for control in (self.preset, self.reset_button):  # nothing to reset before an image is shown
            enable(control, False, "no image shown: choose one first")
        self.colour_bar = ColourBar()
        self.colour_bar.hide()
        self.view.getHistogramWidget().item.sigLevelsChanged.connect(self._levels_changed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.caption)
        self.controls = QWidget()
        row = QHBoxLayout(self.controls)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("window/level"))
        row.addWidget(self.preset)
        row.addWidget(self.reset_button)
        row.addWidget(self.window_text, 1)
        layout.addWidget(self.controls)
        self.controls.setVisible(controls)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.colour_bar)

    def show_image(self, pixels: Optional[np.ndarray], caption: str = "") -> None:
        self.caption.setText(caption)
        self.overlay.hide()
        self.colour_bar.hide()
        self.heat = None
        self.pixels = None if pixels is None else np.asarray(pixels)
        self.mask = None
        for control in (self.preset, self.reset_button):
            enable(control, pixels is not None, "no image shown: choose one first")
        if pixels is None:
            self.view.clear()
            self.window_text.setText("")
            return
        self.view.setImage(pixels, autoLevels=True, autoRange=True)
        self._shape = pixels.shape
        self.preset.setCurrentText("full range")
        self.apply_preset("full range")

    # -- window / level ------------------------------------------------------------------
    def levels(self) -> tuple[float, float]:
        lo, hi = self.view.getHistogramWidget().item.getLevels()
        return float(lo), float(hi)

    def apply_preset(self, name: str) -> None:
        if self.pixels is None:
            return
        p = self.pixels if self.pixels.ndim == 2 else self.pixels.mean(axis=-1)
        percentiles = WINDOW_PRESETS.get(name)
        if percentiles is None:
            lo, hi = float(p.min()), float(p.max())
        else:
            if self.mask is None:
                self.mask = body_mask(p)
            inside = p[self.mask] if self.mask.any() else p.ravel()
            lo, hi = (float(v) for v in np.percentile(inside, percentiles))
        if hi <= lo:
            hi = lo + 1e-6
        self.view.setLevels(lo, hi)
        self._levels_changed()

    def reset(self) -> None:
        self.preset.setCurrentText("full range")
        self.apply_preset("full range")
        self.view.autoRange()

    def _levels_changed(self, *_: object) -> None:
        if self.pixels is None:
            return
        lo, hi = self.levels()
        self.window_text.setText(f"window {hi - lo:.3g}, level {(hi + lo) / 2:.3g}  (grey {lo:.3g} - {hi:.3g})")

    # -- heat map ------------------------------------------------------------------------
    def show_heatmap(self, heat: Optional[np.ndarray], opacity: float = 0.45, visible: bool = True,
                     meaning: str = "") -> None:
        """`heat` [h, w] in [0, 1] (the token grid, cropped by the caller to the image) is
        upsampled smoothly over the image and shown only on the body / breast."""
        if heat is None or not visible or self.pixels is None:
            self.overlay.hide()
            self.colour_bar.hide()
            return
        shape = tuple(self.pixels.shape[:2])
        if self.mask is None:
            self.mask = body_mask(self.pixels)
        self.heat = np.asarray(heat)
        self.overlay.setImage(heat_rgba(self.heat, shape, self.mask, opacity), autoLevels=False, levels=(0, 255))
        self.overlay.setRect(0, 0, shape[1], shape[0])
        self.overlay.setOpacity(1.0)
        self.overlay.show()
        self.colour_bar.set_meaning(meaning)
        self.colour_bar.show()


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
