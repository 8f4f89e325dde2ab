"""Cache: choose the frozen backbone and run it once per image into the HDF5 cache, in the
background, with images/s and time left; Stop keeps what is done, Extract again resumes."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QLabel, QLineEdit,
                               QPushButton, QSpinBox, QVBoxLayout, QWidget)

from loff_core.settings import ExtractSettings, field_info
from loff_core.weights import TEST_MODEL, suggested

from ..cache_plan import plan
from ..forms import control_for
from ..state import AppState
from ..widgets import Banner, ProgressStrip, enable, form_row
from ..workers import wire

# name, parameters (millions), note: from the engine's registry (loff_core.weights, torch-free)
SUGGESTED = [(k.architecture, k.params_m, k.note) for k in [*suggested(), TEST_MODEL]]


class CachePage(QWidget):
    def __init__(self, state: AppState):
        super().__init__()
        self.state = state
        self.backbone = QComboBox()
        self.backbone.setEditable(True)
        for name, params, note in SUGGESTED:
            self.backbone.addItem(f"{name}", name)
            self.backbone.setItemData(self.backbone.count() - 1, f"{params:g} M parameters - {note}", 3)
        self.note = QLabel()
        self._apply_default_backbone(gpu=False)  # the engine's rule (loff_core.weights.default_backbone)
        self.backbone.currentTextChanged.connect(self._describe_backbone)
        self._describe_backbone(self.backbone.currentText())
        self.weights = QLineEdit()
        self.weights.setPlaceholderText("local weights file (.safetensors / .pth), optional")
        pick = QPushButton("Local weights file...")
        pick.clicked.connect(self._choose_weights)
        self.random_init = QCheckBox("random weights (testing only)")
        self.image_size = QSpinBox()
        self.image_size.setRange(0, int(field_info(ExtractSettings, "image_size").high))  # 0: the model's own
        self.image_size.setSpecialValueText("model default")
        self.image_size.setSingleStep(32)
        self.grid = control_for(ExtractSettings, "grid", high=64)
        self.layers = control_for(ExtractSettings, "layers", suggestions=["last", "-2", "-2,last", "-4", "-4:"])
        self.batch = control_for(ExtractSettings, "batch_size", high=1024)
        self.crop = control_for(ExtractSettings, "crop")  # none / body / body-fill, default from settings
        self.device = QComboBox()
        self.device.addItem("auto", "auto")
        self.device.addItem("CPU", "cpu")  # GPUs are listed by "Find GPUs" (that imports torch)
        self.devices_button = QPushButton("Find GPUs")
        self.devices_button.clicked.connect(self._find_devices)
        self.extract_button = QPushButton("Extract")
        self.extract_button.clicked.connect(self.start_extract)
        self.strip = ProgressStrip()
        self.strip.stop_clicked.connect(self.state.runner.stop)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.plan = QLabel("")  # what Extract will do, before it runs
        self.plan.setWordWrap(True)
        self.advice = QLabel("")  # where to start, for these images and this device (loff_core.advice)
        self.advice.setWordWrap(True)
        self.banner = Banner()
        for w in (self.backbone, self.image_size, self.grid, self.layers, self.crop):
            signal = w.currentTextChanged if isinstance(w, QComboBox) else w.valueChanged
            signal.connect(lambda *_: self.show_plan())

        form = QFormLayout()
        self.backbones_button = QPushButton("Backbones...")  # list / Get / Add file / Remove (issue 12)
        self.backbones_button.clicked.connect(self.open_backbones)
        form.addRow("Backbone", form_row(self.backbone, self.backbones_button, self.note))
        form.addRow("Weights", form_row(self.weights, pick, self.random_init, stretch_last=True))
        form.addRow("Input", form_row(QLabel("size"), self.image_size, QLabel("token grid at most"), self.grid,
                                      QLabel("layers"), self.layers, QLabel("crop"), self.crop, QLabel("batch"),
                                      self.batch))
        self.devices_found = QLabel("")
        form.addRow("Device", form_row(self.device, self.devices_button, self.devices_found))
        form.addRow("", form_row(self.extract_button, self.strip, stretch_last=True))
        box = QGroupBox("Frozen backbone -> feature cache (runs once per image)")
        box.setLayout(form)
        plan_box = QGroupBox("What Extract will do")
        QVBoxLayout(plan_box).addWidget(self.plan)
        plan_box.layout().addWidget(self.advice)
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(box)
        layout.addWidget(plan_box)
        layout.addWidget(self.info)
        layout.addStretch(1)
        state.project_changed.connect(lambda _: self._project_changed())
        state.catalog_changed.connect(self.refresh)
        state.cache_changed.connect(self.refresh)
        state.busy_changed.connect(self._busy)

    def open_backbones(self) -> Any:
        from .backbones_dialog import BackbonesDialog

        gpu = any(str(self.device.itemData(i)).startswith("cuda") for i in range(self.device.count()))
        self.backbones_dialog = BackbonesDialog(self.state, gpu=gpu, on_use=self.backbone.setEditText, parent=self)
        self.backbones_dialog.show()
        return self.backbones_dialog

    def _choose_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Backbone weights", "", "Weights (*.safetensors *.pth *.pt *.bin)")
        if path:
            self.weights.setText(path)
            self.random_init.setChecked(False)

    def _describe_backbone(self, text: str) -> None:
        """The note beside the backbone: size and what it is, for a suggested model; for a
        typed timm name, where its weights must come from."""
        known = {name: (params, note) for name, params, note in SUGGESTED}
        if text.strip() in known:
            params, note = known[text.strip()]
            self.note.setText(f"{params:g} M parameters - {note}")
        else:
            self.note.setText("any timm model name: weights from the local timm cache or a local weights file")

    def _find_devices(self) -> None:
        """Listing GPUs imports torch: done in a light job, not here."""
        from loff_core.models import list_devices

        from ..workers import start_light, wire

        self.devices_button.setEnabled(False)
        self.devices_button.setText("Looking for GPUs...")
        wire(start_light("find devices", list_devices, newest=(self, "devices")), done=self._devices_found,
             failed=self._devices_failed)

    def _devices_failed(self, text: str) -> None:
        self.devices_button.setEnabled(True)
        self.devices_button.setText("Find GPUs")
        self.banner.show_error(f"could not list the GPUs: {text}")
        self.state.message.emit("error", f"could not list the GPUs: {text}")

    def _apply_default_backbone(self, gpu: bool) -> None:
        """The default the CLI would use here (same rule); a GPU without DINOv2 weights says
        which model it would use (Backbones... offers Get)."""
        from loff_core.weights import default_backbone

        d = default_backbone(gpu)
        self.backbone.setEditText(d["name"])
        self.default_note = d["reason"]

    def _devices_found(self, devices: list[dict]) -> None:
        self.devices_button.setEnabled(True)
        self.devices_button.setText("Find GPUs")
        cpu_models = {k.architecture for k in suggested() if k.source == "package"} | {
            k.name for k in suggested() if k.source == "package"}
        if any(d["device"].startswith("cuda") for d in devices) and self.backbone.currentText() in cpu_models | {""}:
            self._apply_default_backbone(gpu=True)
            self.state.message.emit("info", f"backbone default on this GPU: {self.default_note}")
        self.device.clear()
        self.device.addItem("auto", "auto")
        for d in devices:
            self.device.addItem(d["label"], d["device"])
        gpus = [d for d in devices if d["device"] != "cpu"]
        text = (f"found {len(gpus)} GPU{'s' if len(gpus) != 1 else ''}: " + "; ".join(d["label"] for d in gpus)
                if gpus else "found no GPU (no CUDA device visible to PyTorch): extraction runs on the CPU")
        self.devices_found.setText(text)
        self.state.message.emit("info", text)
        if gpus:
            self.device.setCurrentIndex(self.device.findData(gpus[0]["device"]))
        self.show_plan()  # the advice depends on the device found

    def spec(self) -> Any:
        from loff_core.backbones import BackboneSpec

        name = self.spec_name()
        return BackboneSpec(name=name, weights=self.weights.text().strip() or None,
                            random_init=self.random_init.isChecked(), seed=0,
                            image_size=self.image_size.value() or None, grid=self.grid.value(),
                            layers=self.layers.currentText().strip() or ExtractSettings.layers,
                            crop=self.crop.currentText() or ExtractSettings.crop)

    def start_extract(self) -> None:
        project = self.state.project
        if project is None or not project.has_catalog():
            self.state.message.emit("warning", "import images first")
            return
        spec, device, batch = self.spec(), self.device.currentData(), self.batch.value()

        def work(progress: Any) -> Any:
            from loff_core import steps

            settings = ExtractSettings(device=device, batch_size=batch)
            return steps.extract(project, spec, settings, progress=progress)  # takes the lock
        self.save_settings()
        job = wire(self.state.start("extract", work, banner=self.banner), strip=self.strip, banner=self.banner,
                   done=self._extracted)
        if job is not None:
            job.on_close = "stop"  # closing the window keeps the finished batches, like Stop

    def _extracted(self, result: Any) -> None:
        words = "stopped; the cache is partial: Extract again to resume" if result.stopped else "done"
        text = (f"extraction {words}: {result.extracted} images computed, {result.skipped} already cached, "
                f"{len(result.failed)} unreadable ({result.seconds:.1f} s)")
        self.state.message.emit("info", text)
        self.strip.finish(text, complete=not result.stopped)
        shown = self.state.runner.job.notices if self.state.runner.job is not None else []
        for note in result.notes:
            if note not in shown:  # notices were shown as they happened
                self.state.message.emit("warning", note)
        for f in result.failed[:20]:  # paths relative to the project, as `loff extract` prints them
            self.state.message.emit("warning", f"{f['path']}: {f['reason']}")
        self.state.cache_changed.emit()
        self.state.catalog_changed.emit()  # the import report gained decode failures

    def _busy(self, busy: bool) -> None:
        project = self.state.project
        enable(self.extract_button, not busy and project is not None and project.has_catalog(),
               "a job is running" if busy else "import images first (Import page)")
        job = self.state.runner.job
        self.strip.set_running(busy and job is not None and job.name == "extract")

    # -- per project ---------------------------------------------------------------------
    def _project_changed(self) -> None:
        """Another project: its own settings, no text or device list of the previous one."""
        self.banner.clear()
        self.strip.clear()
        self.devices_found.setText("")
        values = self.state.page_settings("cache")
        if not values:  # nothing remembered for this project: the defaults, never the previous project's
            gpu = any(str(self.device.itemData(i) or "").startswith("cuda") for i in range(self.device.count()))
            self._apply_default_backbone(gpu=gpu)
            values = {"backbone": self.backbone.currentText()}
        if values:
            self.backbone.setCurrentText(values.get("backbone", self.backbone.currentText()))
            self.weights.setText(values.get("weights", ""))
            self.random_init.setChecked(bool(values.get("random_init", False)))
            self.image_size.setValue(int(values.get("image_size", 0)))
            self.grid.setValue(int(values.get("grid", ExtractSettings.grid)))
            self.layers.setCurrentText(str(values.get("layers", ExtractSettings.layers)))
            self.crop.setCurrentText(str(values.get("crop", ExtractSettings.crop)))
            self.batch.setValue(int(values.get("batch", ExtractSettings.batch_size)))
        self.refresh()

    def save_settings(self) -> None:
        self.state.save_page_settings("cache", {
            "backbone": self.backbone.currentText(), "weights": self.weights.text(),
            "random_init": self.random_init.isChecked(), "image_size": self.image_size.value(),
            "grid": self.grid.value(), "layers": self.layers.currentText(), "crop": self.crop.currentText(),
            "batch": self.batch.value()})

    def show_plan(self) -> None:
        project = self.state.project
        entries = project.catalog().entries if project is not None and project.has_catalog() else []
        self.show_advice(entries)
        if not entries:
            self.plan.setText("import images first: the plan needs their sizes")
            return
        name = self.spec_name()
        self.plan.setText("<br>".join(plan(entries, name, self.image_size.value() or None, self.grid.value(),
                                           self.layers.currentText().strip() or None,
                                           self.crop.currentText() or "none").lines()))

    def show_advice(self, entries: list) -> None:
        """One line from the declared advice table for the project's images and the device found."""
        from loff_core.advice import advise, describe, image_kind

        gpu = any(str(self.device.itemData(i) or "").startswith("cuda") for i in range(self.device.count()))
        a = advise(image_kind(entries), gpu)
        self.advice.setText(f"<i>Advice</i> {describe(a, images=len(entries) or None)}")

    def spec_name(self) -> str:
        return (self.backbone.currentData() if self.backbone.currentText() == self.backbone.itemText(
            self.backbone.currentIndex()) else None) or self.backbone.currentText().strip()

    def refresh(self) -> None:
        project = self.state.project
        self._busy(self.state.busy)
        self.show_plan()
        if project is None:
            self.info.setText("")
            return
        lines = []
        for path in project.cache_paths():
            active = path.stem == project.settings.active_cache
            size = path.stat().st_size / 2**20
            partial = project.cache_partial(path.stem)
            # one phrase, not "PARTIAL ... active" side by side (read as a contradiction)
            kind = "<b>active cache</b>" if active else "cache"
            if partial:
                got, want = project.cached_images(path.stem), project.expected_images()
                count = f"{got} of {want} images" if got is not None and got < want else "batches still to merge"
                kind += (f" <b>(partial: {count})</b>: its extraction stopped before the end; Extract with the "
                         "same settings finishes it; Train waits for it;")
            lines.append(f"{kind} {path.name}: {size:.1f} MB on disk")
        parts = list(project.caches_dir.glob("*.parts")) if project.caches_dir.is_dir() else []
        for p in parts:
            if (project.caches_dir / f"{p.stem}.h5").exists():
                continue  # said above, beside its cache
            lines.append(f"unfinished extraction {p.stem}: {len(list(p.glob('*.h5')))} batches done "
                         f"(Extract with the same settings resumes it)")
        if project.settings.active_cache:
            lines.append(self._cache_summary(project))
        self.info.setText("<br>".join(lines) or "No feature cache yet: choose a backbone and Extract.")

    @staticmethod
    def _cache_summary(project: Any) -> str:
        """From the JSON summary written beside the cache (the window never opens HDF5)."""
        from loff_core.errors import LoffError
        from loff_core.trust import load_json

        path = project.caches_dir / f"{project.settings.active_cache}.json"
        if not path.exists():
            return ""
        try:  # a project from someone else: a damaged summary is named, never a crash
            c = load_json(path, what="cache summary")
            b = c["backbone"]
            total = len(project.catalog().entries) if project.has_catalog() else 0
            return (f"fingerprint {c['fingerprint']}: {b['name']} ({b.get('weights_source', '')}, weights "
                    f"{b['weights_hash']}), input {b['image_size']} px, crop {b.get('crop') or 'none'}, token grid {c['grid_hw'][0]} x "
                    f"{c['grid_hw'][1]} x {c['feature_dim']}, {c['bytes_per_image'] / 1024:.1f} KB per image; "
                    f"{c['images']} of {total} images done")
        except (LoffError, KeyError, TypeError, IndexError, ValueError) as exc:
            return f"cache summary {path.name} cannot be shown ({exc})"
