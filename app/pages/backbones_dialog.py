"""Backbones dialog (from the Cache page): every suggested and added backbone with its size,
licence and whether its weights are here; Get (download, after showing size and licence;
progress, Stop keeps the partial file, Get again resumes), Add file... (bring your own
checkpoint), Remove, and Use (put the name in the Cache page's backbone box).

The engine does the work (`loff_core.weights`, `loff_core.hub`) in the app's job thread;
listing is torch-free and quick, so it runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QFileDialog, QHBoxLayout, QInputDialog, QLabel,
                               QMessageBox, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout)

from ..remedies import window_text
from ..state import AppState
from ..widgets import ProgressStrip, enable
from ..workers import wire

COLUMNS = ["name", "parameters", "size", "licence", "present", "source / note"]


class BackbonesDialog(QDialog):
    def __init__(self, state: AppState, gpu: bool = False, on_use: Optional[Callable[[str], None]] = None,
                 parent: Any = None):
        super().__init__(parent)
        self.setWindowTitle("Backbones")
        self.resize(980, 420)
        self.state, self.gpu, self.on_use = state, gpu, on_use
        self.confirm = True  # ask before a download (tests turn it off)
        self.rows: list[dict[str, Any]] = []
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._enable)
        self.default_label = QLabel()
        self.default_label.setWordWrap(True)
        self.get_button = QPushButton("Get")
        self.get_button.setToolTip("Download from the Hugging Face Hub (shows size and licence first; resumable)")
        self.get_button.clicked.connect(self.get_selected)
        self.add_button = QPushButton("Add file...")
        self.add_button.setToolTip("Your own checkpoint: timm, original DINOv2 .pth, Hugging Face Dinov2Model "
                                   "(e.g. RAD-DINO) or DINOv3ViTModel, OpenCLIP ViT or timm tower (BiomedCLIP)")
        self.add_button.clicked.connect(self._choose_file)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        self.use_button = QPushButton("Use")
        self.use_button.setToolTip("Extract with this backbone (sets it on the Cache page)")
        self.use_button.clicked.connect(self._use)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        self.strip = ProgressStrip()
        self.strip.stop_clicked.connect(self.state.runner.stop)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.why = QLabel("")  # why Use is not available for the selected backbone
        self.why.setWordWrap(True)
        buttons = QHBoxLayout()
        for b in (self.get_button, self.add_button, self.remove_button, self.use_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.default_label)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addWidget(self.why)
        layout.addWidget(self.strip)
        layout.addWidget(self.status)
        self._job: Any = None
        self._getting = ""
        state.busy_changed.connect(lambda _: self._enable())
        self.refresh()

    # -- listing ---------------------------------------------------------------------------
    def refresh(self) -> None:
        from loff_core.weights import default_backbone, list_backbones

        selected = self.selected_name()
        self.rows = list_backbones()
        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            cells = [r["name"], f"{r['params_m']:g} M", f"{r['size_mb']:,.1f} MB", r["licence"],
                     "yes" if r["present"] else "no", f"{r['source']} - {r['note']}"]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j == 4:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(i, j, item)
            if r["name"] == selected:
                self.table.selectRow(i)
        self.table.resizeColumnsToContents()
        d = default_backbone(self.gpu)
        text = f"Default here: <b>{d['registry_name']}</b> ({d['reason']})."
        if d.get("would_use"):
            text += f" With its weights it would use <b>{d['would_use']}</b>: select it and Get."
        self.default_label.setText(text)
        self._enable()

    def selected_name(self) -> Optional[str]:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.rows[rows[0].row()]["name"] if rows and rows[0].row() < len(self.rows) else None

    def select(self, name: str) -> None:
        for i, r in enumerate(self.rows):
            if r["name"] == name:
                self.table.selectRow(i)
                return
        raise KeyError(name)

    def _row(self, name: Optional[str]) -> Optional[dict[str, Any]]:
        return next((r for r in self.rows if r["name"] == name), None)

    def _enable(self) -> None:
        """Each button enabled, or disabled with the reason (tooltip, and the line under the
        buttons for the selected backbone): Use on a backbone not here said nothing."""
        row = self._row(self.selected_name())
        busy = self.state.busy
        name = row["name"] if row is not None else ""
        running = "another job is running; wait for it or stop it" if busy else ""
        get_why = (running or ("select a backbone first" if row is None else "")
                   or (f"{name}'s weights are already here" if row["present"] else "")
                   or ("" if row["source"].startswith("hf:") else f"{name} is not downloaded from the Hub "
                       f"({row['source']}): bring its file with Add file..."))
        use_why = ("select a backbone first" if row is None else
                   f"{name} is not on this machine: Get it first (or Add file...), then Use" if not row["present"] else
                   "open this dialog from the Cache page to choose the backbone there" if self.on_use is None else "")
        remove_why = running or ("select a backbone first" if row is None else "" if row["added"] else
                                 f"{name} was not added here: only added or converted weights can be removed")
        enable(self.get_button, not get_why, get_why)
        enable(self.remove_button, not remove_why, remove_why)
        enable(self.use_button, not use_why, use_why)
        enable(self.add_button, not busy, running)
        self.why.setText(f"Use: {use_why}" if row is not None and use_why else "")
        self.strip.set_running(busy and self._job is not None)

    # -- Get ------------------------------------------------------------------------------
    def get_selected(self) -> None:
        from loff_core.hub import describe_get

        name = self.selected_name()
        if name is None:
            return
        info = describe_get(name)
        resume = (f"\n{info['partial_mb']:g} MB of an earlier download are here; Get continues from there."
                  if info["partial_mb"] else "")
        gated = (f"\n\nGated: accept the licence on {info['page']} while signed in to the Hub; the download "
                 f"needs a Hub access token, sent only to the Hub." if info["gated"] else "")
        question = (f"Download {name} from the Hugging Face Hub?\n\nSize: {info['size_mb']:,.1f} MB\n"
                    f"Licence: {info['licence']}\nFrom: {info['source']}{resume}{gated}")
        if self.confirm and QMessageBox.question(self, "Get backbone weights", question) != QMessageBox.StandardButton.Yes:
            return
        token = None
        if info["gated"] and not info["token_set"]:
            token = self.ask_token(name, info["page"])
            if not token:
                self.status.setText(f"{name}: no token given; Get needs one for this gated model")
                return
        from loff_core.hub import get_weights

        job = self.state.start(f"get {name}", lambda progress: get_weights(name, progress, token=token))
        if job is None:
            return
        self._job = job
        job.on_close = "stop"  # closing the window keeps the partial file
        self._getting = name
        wire(job, strip=self.strip, done=self._got, cancelled=self._stopped, failed=self._failed)
        self.status.setText(f"getting {name} ({info['size_mb']:,.1f} MB, {info['licence']})...")
        self._enable()

    def ask_token(self, name: str, page: str) -> Optional[str]:
        """The user's Hub access token for a gated model (hidden as typed; tests replace this)."""
        from PySide6.QtWidgets import QLineEdit

        text, ok = QInputDialog.getText(self, "Hub access token", f"{name} is gated: after accepting its licence on "
                                        f"{page}, paste a Hugging Face access token (read). It is sent only to the "
                                        f"Hub and not stored.", QLineEdit.EchoMode.Password)
        return text.strip() if ok and text.strip() else None

    def _got(self, result: Any) -> None:
        self._job = None
        how = "already here" if not result.downloaded else f"{result.downloaded / 1e6:.1f} MB downloaded" + (
            f" (resumed after {result.resumed_from / 1e6:.1f} MB)" if result.resumed_from else "")
        self.status.setText(f"{result.name}: {how}; {result.checksum_kind} checked.")
        self.state.message.emit("info", f"backbone {result.name} is here: {how}, {result.checksum_kind} checked")
        self.refresh()

    def _stopped(self) -> None:
        from loff_core.hub import partial_file

        name = self._getting
        self._job = None
        part = partial_file(name)
        kept = part.stat().st_size / 1e6 if part is not None and part.exists() else 0.0
        self.status.setText(f"{name}: stopped; {kept:.1f} MB kept. Get again resumes.")
        self.refresh()

    def _failed(self, text: str) -> None:
        self._job = None
        self.status.setText(text)
        self.refresh()

    # -- Add / Remove / Use --------------------------------------------------------------
    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Backbone checkpoint", "",
                                              "Weights (*.safetensors *.pth *.pt *.bin *.ckpt)")
        if not path:
            return
        name, ok = QInputDialog.getText(self, "Add backbone", "Name (used as the backbone name):",
                                        text=Path(path).stem[:64])
        if not ok or not name.strip():
            return
        licence, ok = QInputDialog.getText(self, "Add backbone", "Licence of these weights (as you know it):")
        if ok:
            self.add_file(Path(path), name.strip(), licence.strip())

    def add_file(self, path: Path, name: str, licence: str = "") -> None:
        from loff_core.weights import add_weights

        job = self.state.start(f"add {name}", lambda progress: add_weights(path, name, licence=licence))
        if job is None:
            return
        wire(job, done=self._added, failed=self._failed)

    def _added(self, entry: Any) -> None:
        self.status.setText(f"added {entry.name}: {entry.source_format} checkpoint as {entry.architecture}, "
                            f"{entry.params_m:g} M parameters, native {entry.native_size} px")
        self.refresh()

    def remove_selected(self) -> None:
        from loff_core.errors import LoffError
        from loff_core.weights import remove_weights

        name = self.selected_name()
        if name is None:
            return
        if self.confirm and QMessageBox.question(self, "Remove backbone", f"Remove the added backbone {name}?") \
                != QMessageBox.StandardButton.Yes:
            return
        try:
            remove_weights(name)
        except LoffError as exc:
            self.status.setText(window_text(exc))
            return
        self.status.setText(f"removed {name}")
        self.refresh()

    def _use(self) -> None:
        name = self.selected_name()
        if name and self.on_use is not None:
            self.on_use(name)
            self.status.setText(f"the Cache page now extracts with {name}")
