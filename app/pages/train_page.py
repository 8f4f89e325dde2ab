"""Train: a compact head on the cached features with tensor augmentations, in a worker
thread with live curves. Stop keeps the best head so far (a run is saved); Cancel drops
the training (no run is saved, the previous runs stay as they were). Runs are listed with
their settings and scores and flagged when stale (labels or cache changed since)."""

from __future__ import annotations

import time
from typing import Any, Optional

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QPushButton, QScrollArea, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from loff_core.progress import rough_duration
from loff_core.results import epochs_text, head_name, score_text
from loff_core.settings import HEAD_KINDS, AugmentConfig, TrainConfig, all_fields

from ..forms import control_for, train_config
from ..state import AppState
from ..widgets import Banner, ProgressStrip, enable, form_row
from ..workers import wire

#: Okabe-Ito colours: distinguishable with the common colour-vision deficiencies
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
STOPPED_WORDS = {"user_stop": "stopped by user", "early_stopping": "early stop", "completed": "completed"}


MORE_PER_ROW = 4  # More settings: label / control pairs per line
#: the runs table's columns; "stale?" stays last (it stretches)
RUN_COLUMNS = ("run", "head", "task", "best score", "monitor", "epochs", "learning rate", "seed", "augment",
               "stale?")
AUGMENT_WORDS = (("hflip", "flip"), ("crop_prob", "crop"), ("noise_std", "noise"), ("token_dropout", "token dropout"),
                 ("mixup_alpha", "mixup"))


def augment_text(aug: dict[str, Any]) -> str:
    """A run's tensor augmentations in the runs table: "off", or each strength."""
    if not aug.get("enabled", True):
        return "off"
    return ", ".join(f"{word} {aug[key]:g}" for key, word in AUGMENT_WORDS if aug.get(key) is not None) or "on"


class TrainPage(QWidget):
    def __init__(self, state: AppState):
        super().__init__()
        self.state = state
        box = self._settings_box()
        curves = self._curves()
        self.runs = QTableWidget(0, len(RUN_COLUMNS))
        self.runs.setHorizontalHeaderLabels(list(RUN_COLUMNS))
        self.runs.horizontalHeader().setStretchLastSection(True)
        self.runs.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.runs.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)

        self.banner = Banner()
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(box)
        from ..validation_widgets import ValidationPanel  # Cross-validate / Find the best head (issue 13)

        self.validation = ValidationPanel(state, self.settings)
        layout.addWidget(self.status)
        self._split_body(curves)
        layout.addWidget(self.body, 1)
        self.history: list[dict] = []
        self.curves_run: str | None = None  # the run whose curves are drawn (None: live training or none)
        self._defaults = self.settings()  # what a project with no remembered settings gets
        ps = state.project_state  # the runs table and the curves' run render from it
        ps.reset.connect(lambda _: self._project_changed())
        ps.catalog_changed.connect(self.refresh)
        ps.caches_changed.connect(self.refresh)
        ps.runs_changed.connect(self.refresh)
        state.busy_changed.connect(self._busy)
        self.runs.cellClicked.connect(self._run_clicked)

    def _settings_box(self) -> QGroupBox:
        """The training settings, Train and its progress strip."""
        # every control from the engine's one declaration of the setting (loff_core.settings)
        self.head = control_for(TrainConfig, "head")
        self.head.setToolTip("\n".join(f"{k}: {v}" for k, v in HEAD_KINDS.items()))
        self.task = control_for(TrainConfig, "task")
        self.epochs = control_for(TrainConfig, "epochs", high=1000)
        self.lr = control_for(TrainConfig, "lr", step=1e-4, decimals=6)
        self.seed = control_for(TrainConfig, "seed")
        self.seed.setMinimum(0)
        self.augment = QCheckBox("tensor augmentations")
        self.augment.setChecked(True)
        self.crop = control_for(AugmentConfig, "crop_prob", step=0.05)
        self.noise = control_for(AugmentConfig, "noise_std", step=0.01)
        self.dropout = control_for(AugmentConfig, "token_dropout", step=0.05)
        self.mixup = control_for(AugmentConfig, "mixup_alpha", step=0.05, high=2)
        self.flip = control_for(AugmentConfig, "hflip", step=0.05)
        self.augment.toggled.connect(lambda on: [w.setEnabled(on) for w in (self.crop, self.noise, self.dropout,
                                                                            self.mixup, self.flip)])
        # every other training setting that `loff train` offers, built from its declaration: a
        # setting added to TrainConfig appears here without touching this page
        self.more = {info.name: control_for(TrainConfig, info.name) for info in more_settings()}
        # label / control pairs, MORE_PER_ROW to a row: one line for today's four settings (one per
        # line, opening them grew the window past 720 px; issue 23 item 8)
        more_form = QGridLayout()
        more_form.setContentsMargins(0, 0, 0, 0)
        for k, (name, control) in enumerate(self.more.items()):
            row, col = divmod(k, MORE_PER_ROW)
            more_form.addWidget(QLabel(name.replace("_", " ")), row, 2 * col)
            more_form.addWidget(control, row, 2 * col + 1)
        more_form.setColumnStretch(2 * MORE_PER_ROW, 1)
        more_body = QWidget()
        more_body.setLayout(more_form)
        from ..collapsible import Collapsible

        self.more_box = Collapsible("More settings", more_body)
        self.more_box.set_expanded(False)
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.start_training)
        self.strip = ProgressStrip(cancel=True)
        self.strip.stop_clicked.connect(self.state.runner.stop)
        self.strip.cancel_clicked.connect(self.state.runner.cancel)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Head", form_row(self.head, QLabel("task"), self.task, QLabel("epochs"), self.epochs,
                                     QLabel("learning rate"), self.lr, QLabel("seed"), self.seed))
        form.addRow("Augment", form_row(self.augment, QLabel("flip"), self.flip, QLabel("crop"), self.crop,
                                        QLabel("noise"), self.noise, QLabel("token dropout"), self.dropout,
                                        QLabel("mixup alpha"), self.mixup))
        form.addRow("", self.more_box)
        form.addRow("", form_row(self.train_button, self.strip, stretch_last=True))
        box = QGroupBox("Train a compact head on the cached features")
        box.setLayout(form)
        return box

    def _curves(self) -> QWidget:
        """Loss and validation metric per epoch, another run's dashed, the legend beside them."""
        self.loss_plot = pg.PlotWidget(title="loss per epoch")
        self.loss_plot.setLabel("bottom", "epoch")
        self.metric_plot = pg.PlotWidget(title="validation metric per epoch")
        self.metric_plot.setLabel("bottom", "epoch")
        for plot in (self.loss_plot, self.metric_plot):
            plot.getAxis("bottom").setTickSpacing(major=1, minor=1)  # re-set per history length in _plot
        self.train_curve = self.loss_plot.plot([], [], pen=pg.mkPen(OKABE_ITO[0], width=2), name="train loss")
        self.val_curve = self.loss_plot.plot([], [], pen=pg.mkPen(OKABE_ITO[1], width=2), name="validation loss")
        self.metric_curve = self.metric_plot.plot([], [], pen=pg.mkPen(OKABE_ITO[2], width=2), symbol="o",
                                                  symbolSize=5)
        dash = Qt.PenStyle.DashLine
        self.compare_train = self.loss_plot.plot([], [], pen=pg.mkPen(OKABE_ITO[0], width=1, style=dash))
        self.compare_val = self.loss_plot.plot([], [], pen=pg.mkPen(OKABE_ITO[1], width=1, style=dash))
        self.compare_metric = self.metric_plot.plot([], [], pen=pg.mkPen(OKABE_ITO[3], width=1, style=dash))
        self.best_lines = [pg.InfiniteLine(angle=90, pen=pg.mkPen("#555", width=1, style=Qt.PenStyle.DotLine))
                           for _ in range(2)]
        for plot, line in zip((self.loss_plot, self.metric_plot), self.best_lines):
            plot.addItem(line)
            line.hide()
        # the legend sits outside the plots (a pyqtgraph legend covered the validation curve)
        self.legend = QLabel("")
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.compare = QComboBox()
        self.compare.setToolTip("draw another run's curves dashed, to compare")
        self.compare.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.compare.currentIndexChanged.connect(lambda _: self._plot())
        plots_box = QVBoxLayout()
        plots_box.addWidget(form_row(self.legend, QLabel("compare with"), self.compare))
        plots = QHBoxLayout()
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.metric_plot)
        plots_box.addLayout(plots, 1)
        curves = QWidget()
        curves.setLayout(plots_box)
        plots_box.setContentsMargins(0, 0, 0, 0)
        return curves

    def _split_body(self, curves: QWidget) -> None:
        """`self.body`: the validation toggle, curves (and the validation panel beside them when
        opened) and runs in one vertical splitter."""
        # validation, curves and runs share the height in a splitter: at 1280 x 720 the curves
        # were squeezed to a few pixels under the validation panel; the user moves the lines
        from PySide6.QtWidgets import QSplitter

        runs_part = QWidget()
        rv = QVBoxLayout(runs_part)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(QLabel("Runs of this project (compare settings and scores)"))
        rv.addWidget(self.runs, 1)
        self.body = QSplitter(Qt.Orientation.Vertical)
        self.body.setChildrenCollapsible(False)
        from ..collapsible import Collapsible

        # folded to one line until the user opens it: the curves are what training shows. Opened,
        # the panel sits BESIDE the curves (a horizontal splitter) and scrolls there: above them it
        # grew the window to 798 px at 1280 x 720, pushed the Messages dock and the status bar
        # off the screen and squeezed the CV table to its header (issue 23 item 8)
        self.validation_scroll = QScrollArea()
        self.validation_scroll.setWidget(self.validation)
        self.validation_scroll.setWidgetResizable(True)
        self.validation_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.validation_scroll.setMinimumSize(240, 40)
        self.validation_box = Collapsible(self.validation.title(), QWidget())  # the toggle line
        self.validation.setTitle("")
        self.middle = QSplitter(Qt.Orientation.Horizontal)
        self.middle.setChildrenCollapsible(False)
        self.middle.addWidget(curves)
        self.middle.addWidget(self.validation_scroll)
        self.validation_box.set_expanded(False)
        self.validation_scroll.hide()
        self.validation_box.toggled.connect(self._validation_toggled)
        for part, stretch in ((self.validation_box, 0), (self.middle, 3), (runs_part, 1)):
            self.body.addWidget(part)
            self.body.setStretchFactor(self.body.count() - 1, stretch)
        board = self.validation.board  # its header and three rows, whatever the pane's height (it scrolls)
        board.setMinimumHeight(board.horizontalHeader().sizeHint().height() + 3 * board.verticalHeader()
                               .defaultSectionSize() + 2 * board.frameWidth())
        curves.setMinimumHeight(160)
        # the runs table keeps its header and two rows (the splitter's share left it one at
        # 1280 x 720, so comparing two runs meant dragging the line first)
        self.runs.setMinimumHeight(self.runs.horizontalHeader().sizeHint().height() + 2 * self.runs.verticalHeader()
                                   .defaultSectionSize() + 2 * self.runs.frameWidth())
        self.body.setSizes([30, 300, 140])

    # -- training ----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        augment = None if not self.augment.isChecked() else {
            "hflip": self.flip.value(), "crop_prob": self.crop.value(), "noise_std": self.noise.value(),
            "token_dropout": self.dropout.value(), "mixup_alpha": self.mixup.value()}
        return {"head": self.head.currentText(), "task": self.task.currentText(), "epochs": self.epochs.value(),
                "lr": self.lr.value(), "seed": self.seed.value(), "augment": augment,
                "more": {name: _value(control) for name, control in self.more.items()}}

    def start_training(self) -> None:
        project = self.state.project
        ready, why = self.ready()
        if not ready:
            self.state.message.emit("warning", why)
            return
        chosen = self.settings()
        self.history = []
        self.curves_run = None
        self._plot()
        def work(progress: Any) -> Any:
            config = train_config(chosen)
            from loff_core import steps

            return steps.train(project, config, progress=progress)  # takes the lock; epochs come as partials
        self.save_settings()
        job = wire(self.state.start("train", work, banner=self.banner), strip=None, banner=self.banner,
                   done=self._trained, partial={"epoch": self._epoch})
        if job is not None:
            job.on_close = "stop"  # closing the window keeps the best head so far, like Stop
            self._started = time.monotonic()
            job.progress.connect(self._progress)

    def _validation_toggled(self, expanded: bool) -> None:
        self.validation_scroll.setVisible(expanded)
        if expanded:  # the panel's width (no sideways scrolling) up to 60 %; the two curves get the rest
            width = sum(self.middle.sizes()) or self.middle.width()
            panel = min(max(self.validation.minimumSizeHint().width() + 24, width // 2), width * 3 // 5)
            self.middle.setSizes([width - panel, panel])

    def _progress(self, done: int, total: int, message: str) -> None:
        """The engine's step count and loss, with the time left estimated from the pace so far."""
        elapsed = time.monotonic() - getattr(self, "_started", time.monotonic())
        if 0 < done < total and elapsed > 1:
            left = elapsed * (total - done) / done
            message += f", about {rough_duration(left)} left"
        self.strip.report(done, total, message)

    def _epoch(self, entry: dict) -> None:
        self.history.append(entry)
        self._plot()

    @staticmethod
    def _monitor(history: list[dict]) -> Optional[str]:
        return next((k for k in (history[-1] if history else {}) if k.startswith("val_") and
                     k not in ("val_loss", "val_accuracy", "val_balanced_accuracy")), None)

    def _plot(self) -> None:
        epochs = [h["epoch"] for h in self.history]
        self.train_curve.setData(epochs, [h["train_loss"] for h in self.history])
        val = [(h["epoch"], h["val_loss"]) for h in self.history if h.get("val_loss") is not None]
        self.val_curve.setData([e for e, _ in val], [v for _, v in val])
        monitor = self._monitor(self.history)
        if monitor:
            self.metric_plot.setTitle(monitor.replace("_", " "))
            self.metric_curve.setData(epochs, [h[monitor] for h in self.history])
        else:
            self.metric_plot.setTitle("validation metric per epoch")
            self.metric_curve.setData([], [])
        # the run drawn dashed beside it
        other = self._compare_history()
        oe = [h["epoch"] for h in other]
        self.compare_train.setData(oe, [h["train_loss"] for h in other])
        ov = [(h["epoch"], h["val_loss"]) for h in other if h.get("val_loss") is not None]
        self.compare_val.setData([e for e, _ in ov], [v for _, v in ov])
        om = monitor or self._monitor(other)
        self.compare_metric.setData(oe if om else [], [h.get(om, float("nan")) for h in other] if om else [])
        # best epoch (the head kept): the highest monitor value
        best = self.best_epoch(self.history, monitor)
        for line in self.best_lines:
            line.setVisible(best is not None)
            if best is not None:
                line.setValue(best)
        # integer epoch ticks, a range that starts at the first epoch
        last = max(epochs + oe) if (epochs or oe) else 1
        first = min(epochs + oe) if (epochs or oe) else 0
        step = max(1, int(round((last - first + 1) / 10)))
        for plot in (self.loss_plot, self.metric_plot):
            plot.getAxis("bottom").setTickSpacing(major=step, minor=step)
            plot.setXRange(first - 0.5, last + 0.5, padding=0)
            plot.enableAutoRange(axis="y")
        items = [(OKABE_ITO[0], "train loss", "solid"), (OKABE_ITO[1], "validation loss", "solid"),
                 (OKABE_ITO[2], monitor.replace("_", " ") if monitor else "validation metric", "solid")]
        text = " &nbsp; ".join(f"<span style='color:{c}'>&#9644;</span> {name}" for c, name, _ in items)
        if self.curves_run and self.history:  # whose curves these are (a live training: not saved yet)
            text = f"run <b>{self.curves_run}</b>: {text}"
        if best is not None:
            text += f" &nbsp; &#8942; best epoch {best}"
        if other:
            text += f" &nbsp; dashed: run {self.compare.currentText()}"
        self.legend.setText(text)

    @staticmethod
    def best_epoch(history: list[dict], monitor: Optional[str]) -> Optional[int]:
        if not history or not monitor:
            return None
        if history[-1].get("best_epoch") is not None:  # the engine's own choice (its tie rule), sent live
            return int(history[-1]["best_epoch"])
        scored = [(h[monitor], -h["epoch"], h["epoch"]) for h in history if h.get(monitor) is not None]
        return max(scored)[2] if scored else None

    def _compare_history(self) -> list[dict]:
        run_id = self.compare.currentData()
        run = self.state.project_state.run(run_id) if run_id and run_id != self.curves_run else None
        return list(run.record.get("history", [])) if run is not None else []

    def show_history(self, history: list[dict]) -> None:
        """Draw the curves of a finished run (click a row of the runs table)."""
        self.history = [dict(h) for h in history]
        self._plot()

    def _run_clicked(self, row: int, _col: int) -> None:
        item = self.runs.item(row, 0)
        run = self.state.project_state.run(item.text()) if item is not None else None
        if run is None or self.state.busy:
            return
        self.curves_run = run.run_id  # before drawing: the legend names it
        self.show_history(run.record.get("history", []))

    def _trained(self, result: Any) -> None:
        r = result  # loff_core.results.TrainResult
        done = f"best {r.monitor} {r.best_score:.3f} at epoch {r.best_epoch} ({r.stopped.replace('_', ' ')})"
        self.curves_run = r.run
        # early stopping reached its end (full bar); a Stop by the user did not (empty bar)
        self.strip.finish(f"run {r.run}: {done}", complete=r.stopped != "user_stop")
        self.state.message.emit("info", f"run {r.run}: {done}")
        shown = self.state.runner.job.notices if self.state.runner.job is not None else []
        for note in r.notes:
            if note not in shown:  # notices were shown as they happened
                self.state.message.emit("warning", note)
        self.state.runs_changed.emit()

    # -- state -------------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        project = self.state.project
        if project is None or not project.has_catalog():
            return False, "import labelled images first"
        if len(project.settings.classes) < 2:
            return False, "training needs labels with at least two classes"
        if not project.settings.active_cache:
            return False, "extract features first (Cache page)"
        if project.cache_partial():  # the engine's rule (`loff train` refuses it too)
            return False, ("the feature cache is partial (its extraction was stopped): Extract again on the Cache "
                           "page to finish it, then train")
        return True, ""

    def _busy(self, busy: bool) -> None:
        ready, why = self.ready()
        enable(self.train_button, ready and not busy, why or "a job is running")
        job = self.state.runner.job
        self.strip.set_running(busy and job is not None and job.name == "train")

    def _project_changed(self) -> None:
        """Another project: the previous one's curves go with it; its own settings return."""
        self.curves_run = None
        self.compare.blockSignals(True)
        self.compare.clear()
        self.compare.blockSignals(False)
        self.show_history([])
        self.strip.clear()
        self.banner.clear()
        values = self.state.page_settings("train") or self._defaults  # never the previous project's
        if values:
            default = TrainConfig()
            self.head.setCurrentText(values.get("head", default.head))
            self.epochs.setValue(int(values.get("epochs", default.epochs)))
            self.lr.setValue(float(values.get("lr", default.lr)))
            self.seed.setValue(int(values.get("seed", default.seed)))
            aug = values.get("augment")
            self.augment.setChecked(aug is not None)
            for key, box in (("hflip", self.flip), ("crop_prob", self.crop), ("noise_std", self.noise),
                             ("token_dropout", self.dropout), ("mixup_alpha", self.mixup)):
                if aug and key in aug:
                    box.setValue(float(aug[key]))
            more = values.get("more") or {}
            for name, control in self.more.items():
                _set_value(control, more.get(name, getattr(default, name)))
        self.refresh()

    def save_settings(self) -> None:
        self.state.save_page_settings("train", self.settings())

    def refresh(self) -> None:
        project, ps = self.state.project, self.state.project_state
        self._busy(self.state.busy)
        ready, why = self.ready()
        self.status.setText("" if ready else why)
        self.status.setVisible(not ready)  # an empty line took 23 px from the curves at 1280 x 720
        self.runs.setRowCount(0)
        if project is None:
            return
        self.task.setCurrentText(ps.task)
        runs = ps.runs
        if self.curves_run is not None and self.curves_run not in {r.run_id for r in runs}:
            self.show_history([])  # the run whose curves were drawn is gone
            self.curves_run = None
        for r in runs:
            rec = r.record
            stale = ps.stale.get(r.run_id, [])
            config = rec.get("train_config") or {}
            lr, seed = config.get("lr"), config.get("seed")
            # each score with its kind (CV / val): a tune winner's CV AUC is not a validation AUC
            values = [r.run_id, head_name(rec), rec["task"], score_text(rec), rec["monitor"], epochs_text(rec),
                      "" if lr is None else f"{lr:g}", "" if seed is None else seed,
                      augment_text(config.get("augment") or {}), "; ".join(stale) or "up to date"]
            row = self.runs.rowCount()
            self.runs.insertRow(row)
            for col, v in enumerate(values):
                self.runs.setItem(row, col, QTableWidgetItem(str(v)))
        self.runs.resizeColumnsToContents()
        current = self.compare.currentData()
        self.compare.blockSignals(True)
        self.compare.clear()
        self.compare.addItem("(none)", None)
        for r in reversed(runs):
            self.compare.addItem(r.run_id, r.run_id)
        i = self.compare.findData(current) if current else 0
        self.compare.setCurrentIndex(max(i, 0))
        self.compare.blockSignals(False)
        self._plot()


#: the Train page's own row of controls; every other command-line training setting is in "More settings"
PLACED = ("head", "task", "epochs", "lr", "seed")


def more_settings() -> list[Any]:
    """TrainConfig's declared settings that `loff train` offers and the page's first row does not
    show (batch size, patience, device, ... and any setting added later)."""
    return [info for info in all_fields(TrainConfig)
            if info.option is not None and info.name not in PLACED and info.kind in (int, float, str)]


def _value(control: Any) -> Any:
    return control.currentText() if isinstance(control, QComboBox) else control.value()


def _set_value(control: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(control, QComboBox):
        control.setCurrentText(str(value))
    else:
        control.setValue(value)
