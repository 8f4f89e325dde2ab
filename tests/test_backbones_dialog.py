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



def test_gated_get_tells_before_asks_for_a_token_and_the_cache_page_shows_advice(qtbot, window, tmp_path,
                                                                                 monkeypatch):
    """Issue 27: a DINOv3 entry is gated: the question names it, the token is asked for (here
    given by the test) and Get converts the model; the Cache page shows one line of advice."""
    import json

    import torch
    import transformers
    from huggingface_hub import constants

    cfg = transformers.DINOv3ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=256, num_register_tokens=4, image_size=32)
    torch.manual_seed(2)
    folder = tmp_path / "dinov3"
    transformers.DINOv3ViTModel(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.485, 0.456, 0.406],
                                                                 "image_std": [0.229, 0.224, 0.225]}))
    repo = "facebook/dinov3-vits16-pretrain-lvd1689m"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert "Advice" in window.cache_page.advice.text() or window.cache_page.advice.text() == ""
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        for f in ("model.safetensors", "config.json", "preprocessor_config.json"):
            server.files[(repo, f)] = (folder / f).read_bytes()
        server.gated[repo] = "hf_dialog_token"
        dialog = window.cache_page.open_backbones()
        dialog.confirm = False
        asked = []
        dialog.ask_token = lambda name, page: asked.append((name, page)) or "hf_dialog_token"
        dialog.select("dinov3-vits16")
        assert "DINOv3 License" in _cell(dialog, "dinov3-vits16", "licence")
        qtbot.mouseClick(dialog.get_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: not window.state.busy, timeout=LONG)
        assert asked == [("dinov3-vits16", f"{server.url}/{repo}")]
        qtbot.waitUntil(lambda: _cell(dialog, "dinov3-vits16", "present") == "yes", timeout=LONG)
        assert all(a == "Bearer hf_dialog_token" for _, _, a in server.hosts_seen)
    window.cache_page.show_advice([])
    from loff_core.advice import CPU_BACKBONE, CPU_SIZE

    assert f"start with {CPU_BACKBONE} at {CPU_SIZE} px" in window.cache_page.advice.text()  # the CPU default
