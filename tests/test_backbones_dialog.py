"""The Backbones dialog (Cache page -> Backbones...) driven headless against the Hub-shaped
server on 127.0.0.1: the list with size, licence and presence; Get with its progress bar,
Stop that keeps the partial file and Get that resumes; Add file; Remove; Use."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402

from hub_server import HubServer  # noqa: E402
from loff_core import weights as W  # noqa: E402
from loff_core.hub import partial_file  # noqa: E402
from test_app import window  # noqa: E402,F401  (the app's window fixture: one copy)

pytestmark = pytest.mark.gui
LONG = 120_000
REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
ENTRY = W.KnownBackbone("test-vit-tiny", "vit_tiny_patch16_224", 5.5, 22.0, "Apache-2.0 (test)", "hf", REPO, 224,
                        *W.IMAGENET, "served by the test Hub", "dinov2")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import timm
    import torch
    from huggingface_hub import constants
    from safetensors.torch import save

    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    payload = save({k: v.contiguous() for k, v in model.state_dict().items()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(W, "KNOWN", [*W.KNOWN, ENTRY])
    with HubServer() as server:
        server.files[(REPO, "model.safetensors")] = payload
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server, payload


def _cell(dialog, name: str, column: str) -> str:
    from app.pages.backbones_dialog import COLUMNS

    row = next(i for i, r in enumerate(dialog.rows) if r["name"] == name)
    return dialog.table.item(row, COLUMNS.index(column)).text()


def test_get_stop_resume_add_remove_use(qtbot, window, hub, tmp_path):
    server, payload = hub
    dialog = window.cache_page.open_backbones()
    dialog.confirm = False
    assert _cell(dialog, "dinov2-vitl14", "size") == "1,217.5 MB"
    assert _cell(dialog, "dinov2-vitl14", "licence") == "Apache-2.0"
    assert _cell(dialog, "efficientnet-lite1", "present") == "yes"
    assert "Default here: <b>efficientnet-lite" in dialog.default_label.text()
    dialog.select("efficientnet-lite1")
    assert not dialog.get_button.isEnabled()  # installed, nothing to get

    # Get, Stop part-way (a slow server), then Get again resumes
    dialog.select("test-vit-tiny")
    assert _cell(dialog, "test-vit-tiny", "present") == "no" and dialog.get_button.isEnabled()
    server.delay = 0.01
    qtbot.mouseClick(dialog.get_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.strip.bar.value() >= 2_000_000, timeout=LONG)
    assert dialog.strip.stop_button.isEnabled()
    qtbot.mouseClick(dialog.strip.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)
    assert "stopped" in dialog.status.text() and "Get again resumes" in dialog.status.text()
    kept = partial_file("test-vit-tiny").stat().st_size
    assert 2_000_000 <= kept < len(payload)
    server.delay = 0.0
    dialog.select("test-vit-tiny")
    qtbot.mouseClick(dialog.get_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)
    assert f"resumed after {kept / 1e6:.1f} MB" in dialog.status.text(), dialog.status.text()
    assert _cell(dialog, "test-vit-tiny", "present") == "yes"
    assert server.requests[-1][2] == f"bytes={kept}-"

    # Use puts the name on the Cache page
    dialog.select("test-vit-tiny")
    qtbot.mouseClick(dialog.use_button, Qt.MouseButton.LeftButton)
    assert window.cache_page.backbone.currentText() == "test-vit-tiny"

    # Add file..., then Remove
    import timm
    import torch
    from safetensors.torch import save_file

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    cfg_dir = tmp_path / "mine"
    cfg_dir.mkdir()
    save_file(m.state_dict(), str(cfg_dir / "model.safetensors"))
    (cfg_dir / "config.json").write_text('{"architecture": "vit_tiny_patch16_224"}')
    dialog.add_file(cfg_dir, "my-vit", "CC-BY-4.0")
    qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)
    qtbot.waitUntil(lambda: any(r["name"] == "my-vit" for r in dialog.rows), timeout=LONG)
    assert _cell(dialog, "my-vit", "licence") == "CC-BY-4.0" and _cell(dialog, "my-vit", "present") == "yes"
    dialog.select("my-vit")
    assert dialog.remove_button.isEnabled()
    dialog.remove_selected()
    assert not any(r["name"] == "my-vit" for r in dialog.rows)
    # a bad file: one line in the dialog, nothing added
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    dialog.add_file(bad, "bad", "")
    qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)
    qtbot.waitUntil(lambda: "bad.pth" in dialog.status.text(), timeout=LONG)
    assert not any(r["name"] == "bad" for r in dialog.rows)

