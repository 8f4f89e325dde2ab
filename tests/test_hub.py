"""`loff weights get`: the real huggingface_hub client against a Hub-shaped server on
127.0.0.1 (tests/hub_server.py). A full download, an interrupted one that resumes, Stop
and resume, a corrupt file refused, no network at all, an HF-layout model converted on Get.
Nothing here touches the internet."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from loff_core import weights as W
from loff_core.backbones import BackboneSpec, load_backbone
from loff_core.cli.remedies import terminal_text
from loff_core.errors import BackboneError
from loff_core.hub import PARTIAL, describe_get, get_weights, partial_file
from loff_core.progress import Cancelled, Progress
from hub_server import HubServer

pytestmark = pytest.mark.usefixtures("two_torch_threads")
REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm's Hub repo for vit_tiny_patch16_224
TEST_ENTRY = W.KnownBackbone("test-vit-tiny", "vit_tiny_patch16_224", 5.5, 22.0, "Apache-2.0 (test)", "hf", REPO, 224,
                             *W.IMAGENET, "a random-init ViT-Tiny served by the test Hub", "dinov2")


@pytest.fixture(scope="module")
def payload() -> tuple[bytes, dict]:
    import timm
    from safetensors.torch import save

    torch.manual_seed(5)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return save(state), state


@pytest.fixture
def hub(tmp_path, monkeypatch, payload):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as the launch script sets it
    monkeypatch.setenv("LOFF_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(W, "KNOWN", [*W.KNOWN, TEST_ENTRY])
    with HubServer() as server:
        server.files[(REPO, "model.safetensors")] = payload[0]
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _blob_count(tmp_path) -> int:
    return len(list((tmp_path / "hf-cache").rglob("blobs/*")))


def test_full_download_lands_in_the_hf_cache_and_extracts(hub, payload, tmp_path):
    from huggingface_hub import constants

    seen = []
    assert describe_get("test-vit-tiny")["present"] is False
    # the default rule on a GPU with no DINOv2-class weights here: the CPU choice, naming what to Get
    before = W.default_backbone(gpu=True)
    assert before["registry_name"].startswith("efficientnet-lite") and before["would_use"] == "dinov2-vitl14"
    result = get_weights("test-vit-tiny", Progress(on_report=lambda d, t, m: seen.append((d, t))))
    assert constants.HF_HUB_OFFLINE is True, "offline mode is restored after the explicit Get"
    assert result.size == len(payload[0]) and result.downloaded == len(payload[0]) and result.resumed_from == 0
    assert seen[-1][0] == seen[-1][1] == len(payload[0])
    # the standard cache layout: timm / huggingface_hub find it
    from huggingface_hub import try_to_load_from_cache

    assert try_to_load_from_cache(REPO, "model.safetensors") == str(result.path)
    assert {r["name"]: r for r in W.list_backbones()}["test-vit-tiny"]["present"]
    b = load_backbone(BackboneSpec(name="test-vit-tiny", image_size=32, grid=2), "cpu")
    assert b.weights_source == "timm cache" and b.spec.name == "vit_tiny_patch16_224"
    assert torch.equal(b.model.state_dict()["blocks.0.attn.qkv.weight"], payload[1]["blocks.0.attn.qkv.weight"])
    # now a DINOv2-class model (the test entry) is here: the GPU default uses it; the CPU default does not
    assert W.default_backbone(gpu=True)["registry_name"] == "test-vit-tiny"
    assert W.default_backbone(gpu=False)["registry_name"].startswith("efficientnet-lite")
    # a second Get does not download again
    assert get_weights("test-vit-tiny").downloaded == 0
    assert sum(1 for m, _, _ in hub.requests if m == "GET") == 1


def test_interrupted_download_keeps_the_partial_file_and_resumes(hub, payload):
    hub.cut_after = 5_000_000
    with pytest.raises(BackboneError, match="partial file is kept"):
        get_weights("test-vit-tiny")
    part = partial_file("test-vit-tiny")
    assert part is not None and part.name.endswith(PARTIAL) and 0 < part.stat().st_size <= 5_000_000
    kept = part.stat().st_size
    assert describe_get("test-vit-tiny")["partial_mb"] == pytest.approx(kept / 1e6, abs=0.1)
    result = get_weights("test-vit-tiny")
    assert result.resumed_from == kept and result.downloaded == len(payload[0]) - kept
    assert hub.requests[-1] == ("GET", hub.requests[-1][1], f"bytes={kept}-")
    assert result.path.read_bytes() == payload[0] and partial_file("test-vit-tiny") is None


def test_stop_keeps_the_partial_file_and_get_resumes(hub, payload):
    def maybe_stop(done, total, message):
        if done >= 3_000_000:
            progress.cancel()

    progress = Progress(on_report=maybe_stop)
    with pytest.raises(Cancelled):
        get_weights("test-vit-tiny", progress)
    kept = partial_file("test-vit-tiny").stat().st_size
    assert 3_000_000 <= kept < len(payload[0])
    result = get_weights("test-vit-tiny")
    assert result.resumed_from == kept and result.path.read_bytes() == payload[0]


def test_corrupt_download_is_refused_deleted_and_never_used(hub, tmp_path):
    hub.corrupt = True
    with pytest.raises(BackboneError, match="corrupt"):
        get_weights("test-vit-tiny")
    assert partial_file("test-vit-tiny") is None and _blob_count(tmp_path) == 0
    assert not {r["name"]: r for r in W.list_backbones()}["test-vit-tiny"]["present"]
    with pytest.raises(BackboneError, match="no weights"):
        load_backbone(BackboneSpec(name="test-vit-tiny", image_size=32), "cpu")


def test_no_network_is_one_line_with_the_add_alternative(hub, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    with pytest.raises(BackboneError) as info:
        get_weights("test-vit-tiny")
    text = terminal_text(info.value)  # the terminal's words for the remedy
    assert "cannot reach the Hugging Face Hub" in text and "loff weights add FILE --name test-vit-tiny" in text
    assert "\n" not in text


def test_unknown_and_installed_names_are_refused_clearly(hub):
    with pytest.raises(BackboneError, match="not a suggested backbone"):
        get_weights("no-such-model")
    with pytest.raises(BackboneError, match="installed with LOFF Studio"):
        get_weights("efficientnet-lite1")


@pytest.mark.parametrize("own_preprocessing", [False, True])
def test_hf_layout_model_is_converted_on_get(hub, tmp_path, monkeypatch, own_preprocessing):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=256,
                                    patch_size=14, image_size=28)
    torch.manual_seed(0)
    model = transformers.Dinov2Model(cfg)
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    repo = "test/rad-dino-like"
    hub.files[(repo, "model.safetensors")] = (folder / "model.safetensors").read_bytes()
    hub.files[(repo, "config.json")] = (folder / "config.json").read_bytes()
    if own_preprocessing:  # the model's preprocessor_config.json wins over the registry's mean / std
        hub.files[(repo, "preprocessor_config.json")] = json.dumps(
            {"image_mean": [0.53] * 3, "image_std": [0.26] * 3, "crop_size": {"height": 28, "width": 28}}).encode()
    entry = W.KnownBackbone("test-rad-dino", "vit_base_patch14_dinov2", 0.1, 0.4, "test licence", "hf", repo, 28,
                            (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "HF layout", "dinov2", layout="hf-dinov2")
    monkeypatch.setattr(W, "KNOWN", [*W.KNOWN, entry])
    with pytest.raises(BackboneError) as refused:
        load_backbone(BackboneSpec(name="test-rad-dino"), "cpu")
    assert "weights get test-rad-dino" in terminal_text(refused.value)
    result = get_weights("test-rad-dino")
    assert result.added == "test-rad-dino"
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, "config.json")  # a small git file, checked by its git SHA-1
    assert isinstance(config, str) and json.loads(open(config).read())["hidden_size"] == 64
    card = json.loads((tmp_path / "weights" / "test-rad-dino" / "card.json").read_text())
    assert card["licence"] == "test licence" and card["source_format"] == "hf-dinov2"
    assert (card["mean"], card["std"]) == (([0.53] * 3, [0.26] * 3) if own_preprocessing else ([0.5] * 3, [0.25] * 3))
    b = load_backbone(BackboneSpec(name="test-rad-dino", grid=None), "cpu")
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        ref = model.eval()(pixel_values=x).last_hidden_state
    cls, _ = b.tokens(x)
    assert float((cls - ref[:, 0]).abs().max()) <= 1e-4
    assert {r["name"]: r for r in W.list_backbones()}["test-rad-dino"]["present"]
