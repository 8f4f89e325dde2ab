"""Data map (issue 22, point 2): the cached embeddings on a 2-D map beside the audit's lists.

- The map (loff_core/datamap.py: PCA by default, t-SNE as an option) is computed as a light
  job and cached in the project (maps/); it is drawn as one pyqtgraph ScatterPlotItem per
  colour (pxMode, arrays only: no Python object per point), coloured by label, split, the
  latest run's prediction or the audit's flag.
- A click selects the nearest point; Shift+drag (or drag with "Select" on) a rectangle
  selects the points inside; "Open in Viewer" steps through the selection in the Viewer.
- The audit's lists (audit/*.csv: duplicates, label suspects, outliers) sit beside the map,
  a table each; a row shows its image(s) side by side under the lists, rings them on the
  map, and a double click opens them in the Viewer. "Run audit" runs `loff audit` (a heavy
  job) with the settings the form shows (AuditSettings).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QGraphicsRectItem, QHBoxLayout, QLabel,
                               QPushButton, QSplitter, QTableWidget, QTableWidgetItem, QTabWidget, QVBoxLayout,
                               QWidget)

from loff_core.settings import AuditSettings, DataMapSettings, MAP_COLOURS

from ..forms import control_for
from ..state import AppState
from ..widgets import Banner, ImagePanel, ProgressStrip, enable, form_row
from ..workers import load_image, start_light, wire

#: rows shown per audit list (the CSVs in audit/ hold them all)
TABLE_ROWS = 500
#: images shown side by side for one row (a duplicate group may hold more)
SIDE_BY_SIDE = 3
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f"]
NONE_COLOUR = "#b0b0b0"
#: the audit's flags have fixed colours (the worst the reddest)
FLAG_COLOURS = {"leak": "#d62728", "duplicate": "#ff7f0e", "label suspect": "#9467bd", "outlier": "#8c564b"}
#: the audit lists: (title, CSV name, columns shown)
LISTS = (("Duplicates", "duplicates", ("group", "leak", "similarity", "images", "splits")),
         ("Label suspects", "label_suspects", ("rank", "image", "label", "predicted", "score")),
         ("Outliers", "outliers", ("rank", "image", "score")))


class SelectViewBox(pg.ViewBox):
    """A ViewBox where a plain drag pans and Shift+drag (or any drag in select mode) draws a
    rectangle whose data-space bounds are emitted on release."""

    selected_rect = Signal(QRectF)

    def __init__(self) -> None:
        super().__init__()
        self.select_mode = False
        self.band = QGraphicsRectItem()
        self.band.setPen(pg.mkPen("#444444", width=1, style=Qt.PenStyle.DashLine))
        self.band.setBrush(pg.mkBrush(100, 100, 255, 40))
        self.band.setZValue(1e9)
        self.band.hide()
        self.addItem(self.band, ignoreBounds=True)

    def mouseDragEvent(self, ev: Any, axis: Any = None) -> None:  # noqa: N802 - Qt's name
        selecting = self.select_mode or bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        if not selecting or ev.button() != Qt.MouseButton.LeftButton:
            super().mouseDragEvent(ev, axis)
            return
        ev.accept()
        a, b = self.mapToView(ev.buttonDownPos()), self.mapToView(ev.pos())
        rect = QRectF(QPointF(min(a.x(), b.x()), min(a.y(), b.y())), QPointF(max(a.x(), b.x()), max(a.y(), b.y())))
        if ev.isFinish():
            self.band.hide()
            self.selected_rect.emit(rect)
        else:
            self.band.setRect(rect)
            self.band.show()


class MapPlot(pg.PlotWidget):
    """The scatter: `set_points(xy, categories)` draws one ScatterPlotItem per category."""

    clicked_point = Signal(int)  # row of the nearest point
    selected = Signal(object)  # rows inside a rectangle (np.ndarray)

    def __init__(self) -> None:
        self.view = SelectViewBox()
        super().__init__(viewBox=self.view)
        self.setBackground("w")
        self.hideAxis("left")
        self.hideAxis("bottom")
        self.legend = self.addLegend(offset=(5, 5))
        self.items: list[pg.ScatterPlotItem] = []
        self.rings = pg.ScatterPlotItem(pxMode=True, size=13, symbol="o", pen=pg.mkPen("k", width=2),
                                        brush=pg.mkBrush(0, 0, 0, 0))
        self.rings.setZValue(10)
        self.addItem(self.rings)
        self.xy = np.zeros((0, 2), dtype=np.float32)
        self.view.selected_rect.connect(self._rect)
        self.scene().sigMouseClicked.connect(self._click)

    def set_points(self, xy: np.ndarray, categories: list[str], colours: Optional[dict[str, str]] = None) -> None:
        for item in self.items:
            self.removeItem(item)
        self.items = []
        self.legend.clear()
        self.xy = np.asarray(xy, dtype=np.float32)
        cats = np.asarray(categories, dtype=object)
        names = sorted({str(c) for c in cats}, key=lambda c: (c == "", c))
        for n, name in enumerate(names):
            rows = np.where(cats == name)[0]
            colour = (colours or {}).get(name) or (NONE_COLOUR if name == "" else PALETTE[n % len(PALETTE)])
            item = pg.ScatterPlotItem(x=self.xy[rows, 0], y=self.xy[rows, 1], pxMode=True, size=6, symbol="o",
                                      pen=None, brush=pg.mkBrush(colour), name=f"{name or 'none'} ({len(rows)})")
            item.rows = rows  # the item's points as rows of xy
            self.addItem(item)
            self.items.append(item)
        self.rings.setData(x=[], y=[])
        self.view.autoRange(padding=0.05)

    def ring(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self.rings.setData(x=self.xy[rows, 0], y=self.xy[rows, 1])

    def _rect(self, rect: QRectF) -> None:
        x, y = self.xy[:, 0], self.xy[:, 1]
        inside = (x >= rect.left()) & (x <= rect.right()) & (y >= rect.top()) & (y <= rect.bottom())
        self.selected.emit(np.where(inside)[0])

    def _click(self, ev: Any) -> None:
        if not len(self.xy) or ev.button() != Qt.MouseButton.LeftButton:
            return
        if not self.view.sceneBoundingRect().contains(ev.scenePos()):
            return
        row = self.nearest(self.view.mapSceneToView(ev.scenePos()))
        if row is not None:
            self.clicked_point.emit(row)

    def nearest(self, point: QPointF, within_px: float = 12.0) -> Optional[int]:
        """The row nearest `point` (data space) within `within_px` pixels on screen."""
        px = self.view.viewPixelSize()  # data units per pixel (x, y)
        d = ((self.xy[:, 0] - point.x()) / px[0]) ** 2 + ((self.xy[:, 1] - point.y()) / px[1]) ** 2
        row = int(np.argmin(d))
        return row if d[row] <= within_px ** 2 else None


class DataMapPage(QWidget):
    def __init__(self, state: AppState):
        super().__init__()
        self.state = state
        self.method = control_for(DataMapSettings, "method")
        self.colour = control_for(DataMapSettings, "colour")
        self.method.currentIndexChanged.connect(lambda _: self.compute())
        self.colour.currentIndexChanged.connect(lambda _: self.recolour())
        self.select_box = QCheckBox("Select")
        self.select_box.setToolTip("drag a rectangle to select points (Shift+drag does it too)")
        self.open_button = QPushButton("Open in Viewer")
        self.open_button.clicked.connect(self.open_selection)
        enable(self.open_button, False, "select points on the map first (click one, or Shift+drag a rectangle)")
        self.similarity = control_for(AuditSettings, "duplicate_similarity", step=0.01, decimals=2)
        self.folds = control_for(AuditSettings, "folds", high=20)
        self.audit_button = QPushButton("Run audit")
        self.audit_button.clicked.connect(self.start_audit)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.strip, self.banner = ProgressStrip(), Banner()
        self.plot = MapPlot()
        self.select_box.toggled.connect(lambda on: setattr(self.plot.view, "select_mode", on))
        self.plot.clicked_point.connect(lambda row: self.select_rows(np.asarray([row])))
        self.plot.selected.connect(self.select_rows)
        self.tables: dict[str, QTableWidget] = {}
        self.lists = QTabWidget()
        for title, name, columns in LISTS:
            table = QTableWidget(0, len(columns))
            table.setHorizontalHeaderLabels(list(columns))
            table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
            table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
            table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
            table.verticalHeader().setVisible(False)
            table.currentCellChanged.connect(lambda r, *_, n=name: self.show_row(n, r))
            table.cellDoubleClicked.connect(lambda r, _c, n=name: self.open_row(n, r))
            self.tables[name] = table
            self.lists.addTab(table, title)
        self.shift = QLabel("")
        self.shift.setWordWrap(True)
        self.panels = [ImagePanel(controls=False) for _ in range(SIDE_BY_SIDE)]
        side = QWidget()
        sl = QHBoxLayout(side)
        sl.setContentsMargins(0, 0, 0, 0)
        for panel in self.panels:
            panel.view.ui.histogram.hide()  # side by side: the image alone (the Viewer has the levels)
            sl.addWidget(panel)
        right = QSplitter(Qt.Orientation.Vertical)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.lists, 1)
        tl.addWidget(self.shift)
        right.addWidget(top)
        right.addWidget(side)
        right.setSizes([260, 300])
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.plot)
        split.addWidget(right)
        split.setSizes([640, 520])
        layout = QVBoxLayout(self)
        layout.addWidget(form_row(QLabel("Map"), self.method, QLabel("colour by"), self.colour, self.select_box,
                                  self.open_button, QLabel("duplicates above"), self.similarity, QLabel("folds"),
                                  self.folds, self.audit_button, stretch_last=False))
        layout.addWidget(self.banner)
        layout.addWidget(self.strip)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)
        self.map: Optional[dict[str, Any]] = None
        self.columns: dict[str, list[str]] = {}
        self.audit: dict[str, list[dict[str, str]]] = {}
        self.selection: list[str] = []
        self.shown: list[str] = []
        state.project_changed.connect(lambda _: self.reload())
        state.cache_changed.connect(self.reload)
        state.catalog_changed.connect(self.reload)
        state.runs_changed.connect(self.recolour)

    # -- the map -------------------------------------------------------------------------
    def reload(self) -> None:
        """Another project, cache or catalog: the map is computed again when the page shows."""
        self.map, self.selection = None, []
        self._selection_changed()
        self.plot.set_points(np.zeros((0, 2)), [])
        self.fill_lists()
        if self.isVisible():
            self.compute()

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if self.map is None:
            self.compute()

    def compute(self) -> None:
        project = self.state.project
        if project is None or not project.has_catalog() or not getattr(project.settings, "active_cache", None):
            self.status.setText("no cache yet: import and extract, then the map shows every cached image")
            return
        from loff_core import steps

        method = self.method.currentText()
        self.status.setText(f"computing the {method} map...")
        wire(start_light("data map", steps.data_map, project, method, newest=(self, "map")), banner=self.banner,
             done=self._mapped, failed=lambda text: self.status.setText(f"no map: {text}"))

    def _mapped(self, result: dict[str, Any]) -> None:
        self.map = result
        self.recolour()
        self.status.setText(f"{len(result['ids'])} images, {result['method']} of block {result['block']}"
                            + (" (cached)" if result["cached"] else "") + "; click a point, Shift+drag a rectangle")

    def recolour(self) -> None:
        project = self.state.project
        if self.map is None or project is None:
            return
        from loff_core.datamap import colour_columns

        self.columns = colour_columns(project, self.map["ids"])
        by = self.colour.currentText()
        self.plot.set_points(self.map["xy"], self.columns.get(by, []), FLAG_COLOURS if by == "audit" else None)
        self.colour.setToolTip(MAP_COLOURS.get(by, ""))

    def select_rows(self, rows: np.ndarray) -> None:
        if self.map is None:
            return
        self.selection = [self.map["ids"][int(r)] for r in rows]
        self._selection_changed()
        self.plot.ring(rows)
        if len(rows) == 1 and self.columns:
            r = int(rows[0])
            self.status.setText(f"{self.selection[0]}: label {self.columns['label'][r] or '-'}, split "
                                f"{self.columns['split'][r] or '-'}, prediction {self.columns['prediction'][r] or '-'}"
                                + (f", audit: {self.columns['audit'][r]}" if self.columns["audit"][r] else ""))
        else:
            self.status.setText(f"{len(rows)} images selected: Open in Viewer steps through them")
        self.show_images(self.selection[:SIDE_BY_SIDE])

    def _selection_changed(self) -> None:
        enable(self.open_button, bool(self.selection),
               "select points on the map first (click one, or Shift+drag a rectangle)")

    def open_selection(self) -> None:
        if self.selection:
            self.state.browse.emit(list(self.selection), f"{len(self.selection)} images selected on the data map")

    # -- the audit lists -------------------------------------------------------------------
    def start_audit(self) -> None:
        project = self.state.project
        if project is None:
            return
        from loff_core import steps

        settings = AuditSettings(duplicate_similarity=self.similarity.value(), folds=self.folds.value())
        wire(self.state.start("audit", lambda progress: steps.audit(project, settings, progress=progress),
                              banner=self.banner),
             strip=self.strip, banner=self.banner, done=lambda _: (self.fill_lists(), self.recolour()))

    def fill_lists(self) -> None:
        project = self.state.project
        from loff_core.datamap import read_audit

        self.audit = read_audit(project) if project is not None else {}
        for _title, name, columns in LISTS:
            table, rows = self.tables[name], self.audit.get(name, [])[:TABLE_ROWS]
            table.setRowCount(len(rows))
            for r, row in enumerate(rows):
                for c, column in enumerate(columns):
                    table.setItem(r, c, QTableWidgetItem(str(row.get(column, "")).replace(";", ", ")))
            table.resizeColumnsToContents()
        self.shift.setText(self._shift_text(project))

    @staticmethod
    def _shift_text(project: Any) -> str:
        import csv

        if project is None:
            return ""
        try:
            with open(project.root / "audit" / "shift.csv", newline="", encoding="utf-8") as fh:
                values = {r["measure"]: r["value"] for r in csv.DictReader(fh)}
        except OSError:
            return "no audit yet: Run audit lists near-duplicates, label suspects, outliers and the split shift"
        text = "; ".join(f"{o} vs train AUC {values[f'{o}_vs_train_auc']}" for o in ("test", "val")
                         if values.get(f"{o}_vs_train_auc"))
        return f"shift between splits: {text or 'n/a'}" + (f". WARNING: {values['warning']}" if values.get("warning")
                                                           else "")

    def row_ids(self, name: str, row: int) -> list[str]:
        rows = self.audit.get(name, [])
        if not 0 <= row < len(rows):
            return []
        found = rows[row].get("images") if name == "duplicates" else rows[row].get("image")
        return [i for i in (found or "").split(";") if i]

    def show_row(self, name: str, row: int) -> None:
        ids = self.row_ids(name, row)
        if self.map is not None:
            where = {image_id: n for n, image_id in enumerate(self.map["ids"])}
            self.plot.ring(np.asarray([where[i] for i in ids if i in where], dtype=np.int64))
        self.selection = ids
        self._selection_changed()
        self.show_images(ids[:SIDE_BY_SIDE])

    def open_row(self, name: str, row: int) -> None:
        ids = self.row_ids(name, row)
        if ids:
            self.state.browse.emit(ids, f"audit: {name.replace('_', ' ')} row {row + 1}")

    def show_images(self, ids: list[str]) -> None:
        """The images of `ids` side by side (decoded as light jobs)."""
        project = self.state.project
        self.shown = list(ids)
        by_id = project.catalog().by_id() if project is not None and project.has_catalog() else {}
        for n, panel in enumerate(self.panels):
            entry = by_id.get(ids[n]) if n < len(ids) else None
            panel.setVisible(entry is not None or n == 0)
            if entry is None:
                panel.show_image(None)
                continue
            caption = f"{entry.shown_path} | {entry.split or '-'} | {entry.label or '-'}"
            try:
                path = project.image_path(entry)
            except Exception as exc:  # noqa: BLE001 - a moved images folder: said on the panel
                panel.show_image(None, f"{caption}: {exc}")
                continue
            load_image(panel, path, lambda px, err, p=panel, c=caption: p.show_image(px, c if err is None
                                                                                    else f"{c}: {err}"))
