"""Train: a compact head on the cached features with tensor augmentations, in a worker
thread with live curves. Stop keeps the best head so far (a run is saved); Cancel drops
the training (no run is saved, the previous runs stay as they were). Runs are listed with
their settings and scores and flagged when stale (labels or cache changed since)."""

from __future__ import annotations

import threading
from typing import Any

import pyqtgraph as pg
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from loff_core.settings import HEAD_KINDS, AugmentConfig, TrainConfig

from ..forms import control_for
from ..state import AppState
from ..widgets import ProgressStrip, form_row


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
        form.addRow("", form_row(self.train_button, self.strip, stretch_last=True))
        box = QGroupBox("Train a compact head on the cached features")
        box.setLayout(form)

        self.loss_plot = pg.PlotWidget(title="loss per epoch")
        self.loss_plot.addLegend(offset=(-10, 10))  # top right: losses start high on the left
        self.loss_plot.setLabel("bottom", "epoch")
        self.metric_plot = pg.PlotWidget(title="validation metric per epoch")
        self.metric_plot.setLabel("bottom", "epoch")
        self.train_curve = self.loss_plot.plot([], [], pen=pg.mkPen("#4e79a7", width=2), name="train loss")
        self.val_curve = self.loss_plot.plot([], [], pen=pg.mkPen("#f28e2b", width=2), name="validation loss")
        self.metric_curve = self.metric_plot.plot([], [], pen=pg.mkPen("#59a14f", width=2), symbol="o",
                                                  symbolSize=5)
        plots = QHBoxLayout()
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.metric_plot)

        self.runs = QTableWidget(0, len(RUN_COLUMNS))
        self.runs.setHorizontalHeaderLabels(list(RUN_COLUMNS))
        self.runs.horizontalHeader().setStretchLastSection(True)
        self.runs.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.runs.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)

        layout = QVBoxLayout(self)
        layout.addWidget(box)
        from ..validation_widgets import ValidationPanel  # Cross-validate / Find the best head (issue 13)

        self.validation = ValidationPanel(state, self.settings)
        layout.addWidget(self.validation)
        layout.addWidget(self.status)
        layout.addLayout(plots, 2)
        layout.addWidget(QLabel("Runs of this project (compare settings and scores)"))
        layout.addWidget(self.runs, 1)
        self.history: list[dict] = []
        self.curves_run: str | None = None  # the run whose curves are drawn (None: live training or none)
        state.project_changed.connect(lambda _: self._project_changed())
        state.catalog_changed.connect(self.refresh)
        state.cache_changed.connect(self.refresh)
        state.runs_changed.connect(self.refresh)
        state.busy_changed.connect(self._busy)
        self.runs.cellClicked.connect(self._run_clicked)

    # -- training ----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        augment = None if not self.augment.isChecked() else {
            "hflip": self.flip.value(), "crop_prob": self.crop.value(), "noise_std": self.noise.value(),
            "token_dropout": self.dropout.value(), "mixup_alpha": self.mixup.value()}
        return {"head": self.head.currentText(), "task": self.task.currentText(), "epochs": self.epochs.value(),
                "lr": self.lr.value(), "seed": self.seed.value(), "augment": augment}

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
        job_box: dict[str, Any] = {}
        job_known = threading.Event()  # the worker may reach its first epoch before `start` returns

        def on_epoch(entry: dict) -> None:
            job_known.wait()
            job_box["job"].emit_epoch(entry)

        def work(progress: Any) -> Any:
            from dataclasses import replace

            from loff_core.augment import AugmentConfig
            from loff_core.training import TrainConfig

            augment = AugmentConfig.off() if chosen["augment"] is None else replace(AugmentConfig(),
                                                                                      **chosen["augment"])
            config = TrainConfig(head=chosen["head"], task=chosen["task"], epochs=chosen["epochs"],
                                 lr=chosen["lr"], seed=chosen["seed"], augment=augment)
            with project.lock():
                return project.train(config, progress=progress, on_epoch=on_epoch)
        job = self.state.start("train", work)
        if job is not None:
            job_box["job"] = job
            job.on_close = "stop"  # closing the window keeps the best head so far, like Stop
            job.progress.connect(self.strip.report)
            job.epoch.connect(self._epoch)
            job.finished.connect(self._trained)
            job_known.set()

    def _epoch(self, entry: dict) -> None:
        self.history.append(entry)
        self._plot()

    def _plot(self) -> None:
        epochs = [h["epoch"] for h in self.history]
        self.train_curve.setData(epochs, [h["train_loss"] for h in self.history])
        val = [(h["epoch"], h["val_loss"]) for h in self.history if h.get("val_loss") is not None]
        self.val_curve.setData([e for e, _ in val], [v for _, v in val])
        monitor = next((k for k in (self.history[-1] if self.history else {}) if k.startswith("val_") and
                        k not in ("val_loss", "val_accuracy", "val_balanced_accuracy")), None)
        if monitor:
            self.metric_plot.setTitle(monitor.replace("_", " "))
            self.metric_curve.setData(epochs, [h[monitor] for h in self.history])
        else:
            self.metric_curve.setData([], [])

    def show_history(self, history: list[dict]) -> None:
        """Draw the curves of a finished run (click a row of the runs table)."""
        self.history = [dict(h) for h in history]
        self._plot()

    def _run_clicked(self, row: int, _col: int) -> None:
        project = self.state.project
        item = self.runs.item(row, 0)
        if project is None or item is None or self.state.busy:
            return
        try:
            self.show_history(project.run(item.text()).record.get("history", []))
            self.curves_run = item.text()
        except Exception as exc:  # noqa: BLE001 - a damaged run folder is a message
            self.state.message.emit("error", str(exc))

    def _trained(self, run: Any) -> None:
        r = run.record
        done = f"best {r['monitor']} {r['best_score']:.3f} at epoch {r['best_epoch']} ({r['stopped'].replace('_', ' ')})"
        epochs = len(r.get("history", []))
        self.curves_run = run.run_id
        self.strip.report(epochs, epochs, f"run {run.run_id}: {done}")  # a run that stopped early ends full too
        self.state.message.emit("info", f"run {run.run_id}: {done}")
        shown = self.state.runner.job.notices if self.state.runner.job is not None else []
        for note in r.get("notes", []):
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
        return True, ""

    def _busy(self, busy: bool) -> None:
        ready, why = self.ready()
        self.train_button.setEnabled(ready and not busy)
        self.train_button.setToolTip(why)
        job = self.state.runner.job
        self.strip.set_running(busy and job is not None and job.name == "train")

    def _project_changed(self) -> None:
        """Another project: the previous one's curves go with it."""
        self.show_history([])
        self.curves_run = None
        self.strip.label.setText("")
        self.refresh()

    def refresh(self) -> None:
        project = self.state.project
        self._busy(self.state.busy)
        ready, why = self.ready()
        self.status.setText("" if ready else why)
        self.runs.setRowCount(0)
        if project is None:
            return
        self.task.setCurrentText(project.settings.task)
        runs = project.runs()
        if self.curves_run is not None and self.curves_run not in {r.run_id for r in runs}:
            self.show_history([])  # the run whose curves were drawn is gone
            self.curves_run = None
        for r in runs:
            rec = r.record
            stale = project.stale_reasons(r)
            config = rec.get("train_config") or {}
            lr, seed = config.get("lr"), config.get("seed")
            values = [r.run_id, rec["head_config"]["kind"], rec["task"], f"{rec['best_score']:.3f}", rec["monitor"],
                      f"{len(rec['history'])} (best {rec['best_epoch']})",
                      "" if lr is None else f"{lr:g}", "" if seed is None else seed,
                      augment_text(config.get("augment") or {}), "; ".join(stale) or "up to date"]
            row = self.runs.rowCount()
            self.runs.insertRow(row)
            for col, v in enumerate(values):
                self.runs.setItem(row, col, QTableWidgetItem(str(v)))
        self.runs.resizeColumnsToContents()
