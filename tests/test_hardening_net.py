"""Issue 25, items 1-8: the download path (`loff weights get` against a hostile Hub-shaped
server on 127.0.0.1, tests/hub_server.py) and adding weights (`loff weights add`). One test
per item; docs/hardening.md ("Third round, items 1-8") says what was tried and what happens
now. Nothing here touches the internet."""

from __future__ import annotations

import json
import struct
from dataclasses import asdict

import pytest
import torch

from loff_core import weights as W
from loff_core.backbones import BackboneSpec, load_backbone
from loff_core.errors import BackboneError
from loff_core.hub import get_weights, partial_file
from loff_core.progress import Progress
from loff_core.settings import ExtractSettings, field_info
from hub_server import HubServer
from test_hub import REPO, TEST_ENTRY, hub, payload  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("two_torch_threads")


def _hf_dinov2_folder(folder, **config_changes):
    """A tiny Hugging Face Dinov2Model saved with save_pretrained; config.json then edited."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=256,
                                    patch_size=14, image_size=28)
    torch.manual_seed(0)
    transformers.Dinov2Model(cfg).save_pretrained(folder)
    if config_changes:
        config = json.loads((folder / "config.json").read_text())
        config.update(config_changes)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def no_real_build(monkeypatch):
    """timm.create_model refuses to build a ViT-g or a model of over 1000 blocks anywhere but on
    the meta device (where nothing is allocated): adding weights must find the mismatch first."""
    import timm

    real = timm.create_model
    built: list[str] = []

    def guarded(name, *args, **kwargs):
        if torch.get_default_device().type != "meta":
            built.append(name)
            if "giant" in name or int(kwargs.get("depth", 0)) > 1000:
                raise AssertionError(f"built {name} {kwargs.get('depth', '')} for real before checking the tensors")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", guarded)
    return built


# -- 1. path traversal from a response header -----------------------------------------------
def test_1_commit_id_and_file_name_from_the_network_cannot_leave_the_cache(hub, tmp_path, monkeypatch):
    outside = tmp_path / "outside" / "mybb"
    hub.commit = "../" * 20 + str(outside).lstrip("/")
    with pytest.raises(BackboneError, match="not a commit id") as info:
        get_weights("test-vit-tiny")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "outside").exists(), "a link was written outside the Hugging Face cache"
    assert not [r for r in hub.requests if r[0] == "GET"], "nothing is fetched for an invalid commit id"
    # a file name with a path part that leaves the snapshot folder is refused too
    hub.commit = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(W, "KNOWN", [*W.KNOWN, W.KnownBackbone(
        "test-evil-name", "vit_tiny_patch16_224", 5.5, 23.0, "x", "hf", REPO, 224, *W.IMAGENET, "", "dinov2",
        filename="../../../../outside2/model.safetensors")])
    with pytest.raises(BackboneError, match="file name"):
        get_weights("test-evil-name")
    assert not (tmp_path / "outside2").exists()


# -- 2. the token follows a redirect to another host -------------------------------------------
def test_2_the_token_is_not_sent_to_another_host(hub, payload, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_secret_token")
    with HubServer() as cdn:
        cdn.files[(REPO, "model.safetensors")] = payload[0]
        hub.redirect_to = cdn.url  # HEAD and GET answer 302 Location: http://127.0.0.1:OTHER/...
        result = get_weights("test-vit-tiny")
    assert result.path.read_bytes() == payload[0]
    assert [h.get("authorization") for m, _, h in hub.seen if m == "HEAD"] == ["Bearer hf_test_secret_token"]
    assert [m for m, _, _ in cdn.seen] == ["GET"]
    assert all("authorization" not in h for _, _, h in cdn.seen), "the token was sent to another host"


# -- 3. the advertised size is enforced ---------------------------------------------------------
def test_3_the_advertised_size_is_enforced_while_streaming(hub, payload, monkeypatch):
    hub.advertised_size = 200_000  # X-Linked-Size: 200000 with a 22 MB body
    received: list[int] = []
    with pytest.raises(BackboneError, match="corrupt"):
        get_weights("test-vit-tiny", Progress(on_report=lambda done, total, message: received.append(done)))
    assert received and max(received) <= 200_000, f"read {max(received)} bytes of an advertised 200000"
    assert partial_file("test-vit-tiny") is None
    # a size over the registry's is refused before a byte is fetched
    hub.advertised_size = None
    hub.requests.clear()
    monkeypatch.setattr(W, "KNOWN", [*W.KNOWN, W.KnownBackbone(
        "test-small", "vit_tiny_patch16_224", 5.5, 1.0, "x", "hf", REPO, 224, *W.IMAGENET, "", "dinov2")])
    with pytest.raises(BackboneError, match="the registry") as info:
        get_weights("test-small")
    assert "\n" not in str(info.value) and f"{len(payload[0]) / 1e6:.1f} MB" in str(info.value)
    assert [m for m, _, _ in hub.requests] == ["HEAD"]


# -- 4. a hash named for what it is; a dropped download resumes ------------------------------------
def test_4_a_git_sha1_is_not_called_sha256_and_a_drop_resumes(hub, payload):
    from loff_core.cli.weights import _describe_get

    hub.git_etag = True  # a 22 MB file announced by its 40-hex git blob SHA-1 only
    hub.cut_after = 100_000  # the connection drops after 100 kB
    with pytest.raises(BackboneError) as info:
        get_weights("test-vit-tiny")
    text = str(info.value)
    assert "cannot reach" not in text and "broke off after 0.1 MB" in text and "partial file is kept" in text
    kept = partial_file("test-vit-tiny").stat().st_size
    assert 0 < kept <= 100_000
    result = get_weights("test-vit-tiny")
    assert result.resumed_from == kept and result.path.read_bytes() == payload[0]
    assert result.checksum_kind == "git blob SHA-1" and len(result.checksum) == 40
    out = asdict(result)
    out["path"] = str(result.path)
    described = _describe_get(out)
    assert "SHA-256" not in described and "git blob SHA-1 checked" in described


# -- 5. the input size: one declared range, checked at every source --------------------------------
def test_5_the_input_size_range_is_checked_at_every_source(hub, tmp_path, monkeypatch, capsys):
    from loff_core.cli import main
    from loff_core.trust import MAX_IMAGE_SIZE

    info = field_info(ExtractSettings, "image_size")
    low, high = int(info.low), int(info.high)
    assert (low, high) == (16, MAX_IMAGE_SIZE)
    # the registry
    assert all(low <= k.native_size <= high for k in W.KNOWN)
    # the CLI
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(tmp_path / "p"), "--image-size", "100000"])
    assert exit_info.value.code == 2 and f"at most {high}" in capsys.readouterr().err
    # a downloaded preprocessor_config.json
    folder = _hf_dinov2_folder(tmp_path / "hf")
    repo = "test/rad-dino-like"
    hub.files[(repo, "model.safetensors")] = (folder / "model.safetensors").read_bytes()
    hub.files[(repo, "config.json")] = (folder / "config.json").read_bytes()
    hub.files[(repo, "preprocessor_config.json")] = json.dumps(
        {"image_mean": [0.5] * 3, "image_std": [0.25] * 3, "crop_size": {"height": 100000, "width": 100000}}).encode()
    monkeypatch.setattr(W, "KNOWN", [*W.KNOWN, W.KnownBackbone(
        "test-rad-dino", "vit_base_patch14_dinov2", 0.1, 0.4, "x", "hf", repo, 28, (0.5,) * 3, (0.25,) * 3, "",
        "dinov2", layout="hf-dinov2")])
    with pytest.raises(BackboneError, match=rf"preprocessor_config.json.*crop_size.*100000.*{low}\.\.{high}"):
        get_weights("test-rad-dino")
    assert W.added("test-rad-dino") is None
    # a card (an added backbone's native_size)
    hub.files[(repo, "preprocessor_config.json")] = b"{}"
    get_weights("test-rad-dino")
    card_path = tmp_path / "weights" / "test-rad-dino" / "card.json"
    card = json.loads(card_path.read_text())
    card["native_size"] = 100000
    card_path.write_text(json.dumps(card))
    with pytest.raises(BackboneError, match=rf"native_size.*100000.*{low}\.\.{high}"):
        load_backbone(BackboneSpec(name="test-rad-dino"), "cpu")
    # a caller of the engine (the window hands the same spec)
    with pytest.raises(BackboneError, match=rf"image size.*100000.*{low}\.\.{high}"):
        load_backbone(BackboneSpec(name="vit_tiny_patch16_224", image_size=100000, random_init=True), "cpu")


@pytest.mark.gui
def test_5_the_window_input_size_control_has_the_declared_range(qtbot):
    pytest.importorskip("pytestqt")
    from app.pages.cache_page import CachePage
    from app.state import AppState

    page = CachePage(AppState())
    qtbot.addWidget(page)
    info = field_info(ExtractSettings, "image_size")
    assert (page.image_size.minimum(), page.image_size.maximum()) == (0, int(info.high))  # 0: the model's own
    page.image_size.setValue(100000)
    assert page.image_size.value() == int(info.high)


# -- 6. a safetensors file is sized from its header before anything is read -----------------------
def _safetensors_header_only(path, header: dict, data_bytes: int, header_len: int | None = None) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    header_len = len(raw) if header_len is None else header_len
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", header_len))
        fh.write(raw)
        fh.truncate(8 + header_len + data_bytes)  # sparse: no disk used


def test_6_safetensors_header_is_bounded_and_tensors_must_fit_in_memory(tmp_path, monkeypatch, capsys):
    from loff_core.cli import main

    monkeypatch.setenv("LOFF_WEIGHTS_DIR", str(tmp_path / "weights"))
    huge = tmp_path / "huge.safetensors"  # 1 TiB of float32 tensors claimed, a sparse file
    n = 1 << 40
    _safetensors_header_only(huge, {"pos_embed": {"dtype": "F32", "shape": [n // 4], "data_offsets": [0, n]}}, n)
    capsys.readouterr()
    code = main(["weights", "add", str(huge), "--architecture", "vit_tiny_patch16_224", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "1099.5 GB" in err and "memory" in err
    # a 3 GB header is refused from its length, without reading it
    bomb = tmp_path / "bomb.safetensors"
    _safetensors_header_only(bomb, {}, 0, header_len=3_000_000_000)
    with pytest.raises(BackboneError, match="header of 3000.0 MB") as info:
        W.add_weights(bomb, "bomb", architecture="vit_tiny_patch16_224")
    assert "\n" not in str(info.value)
    # offsets that point past the end of the file
    short = tmp_path / "short.safetensors"
    _safetensors_header_only(short, {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, 64)
    with pytest.raises(BackboneError, match="past the end"):
        W.add_weights(short, "short", architecture="vit_tiny_patch16_224")
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").iterdir())


# -- 7. an HF DINOv2 config is checked against the tensors before anything is built ----------------
def test_7_hf_config_is_checked_against_the_tensors_before_building(tmp_path, monkeypatch, no_real_build):
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("LOFF_WEIGHTS_DIR", str(tmp_path / "weights"))
    deep = _hf_dinov2_folder(tmp_path / "deep", num_hidden_layers=200000)
    with pytest.raises(BackboneError, match=r"config.json: num_hidden_layers 200000.*1 layer") as info:
        W.add_weights(deep, "deep")
    assert "\n" not in str(info.value)
    giant_cfg = _hf_dinov2_folder(tmp_path / "hf-giant", hidden_size=1536, use_swiglu_ffn=True)
    with pytest.raises(BackboneError, match=r"config.json: hidden_size 1536.*64"):
        W.add_weights(giant_cfg, "hf-giant")
    # a timm folder whose config.json names a ViT-g, with ViT-Tiny tensors
    folder = tmp_path / "timm-giant"
    folder.mkdir()
    tiny = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_giant_patch14_dinov2"}))
    with pytest.raises(BackboneError, match=r"do not fit vit_giant_patch14_dinov2"):
        W.add_weights(folder, "timm-giant")
    assert "vit_giant_patch14_dinov2" not in no_real_build
    # what fits is still added
    W.add_weights(_hf_dinov2_folder(tmp_path / "ok"), "ok")
    assert W.added("ok") is not None


# -- 8. an added backbone's card cannot point outside its folder ------------------------------------
@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_8_a_card_weights_file_outside_the_weights_folder_is_refused(tmp_path, monkeypatch, how):
    monkeypatch.setenv("LOFF_WEIGHTS_DIR", str(tmp_path / "weights"))
    W.add_weights(_hf_dinov2_folder(tmp_path / "hf"), "mybb")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.safetensors").write_bytes((tmp_path / "weights" / "mybb" / "model.safetensors").read_bytes())
    card_path = tmp_path / "weights" / "mybb" / "card.json"
    card = json.loads(card_path.read_text())
    if how == "symlink":
        (tmp_path / "weights" / "mybb" / "model.safetensors").unlink()
        (tmp_path / "weights" / "mybb" / "model.safetensors").symlink_to(elsewhere / "model.safetensors")
    else:
        card["weights_file"] = str(elsewhere / "model.safetensors") if how == "absolute" else \
            "../../elsewhere/model.safetensors"
    card_path.write_text(json.dumps(card))
    with pytest.raises(BackboneError, match=r"card.json.*weights_file.*(absolute|leaves|outside)") as info:
        load_backbone(BackboneSpec(name="mybb"), "cpu")
    assert "\n" not in str(info.value)
