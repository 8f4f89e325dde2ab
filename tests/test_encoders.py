"""Today's encoders (issue 27): DINOv3 in transformers' layout and BiomedCLIP (OpenCLIP with a
timm image tower), each converted into timm's layout and checked against its reference
implementation on random weights: CLS and patch tokens within 1e-4 at the checkpoint's
size and at another size (RoPE for DINOv3, a resampled position table for BiomedCLIP).
Tiny configurations, CPU only. Also: the registry entries and the advice table."""

from __future__ import annotations

import json

import pytest
import torch

from loff_core import weights as W
from loff_core.backbones import BackboneSpec, load_backbone

pytestmark = pytest.mark.usefixtures("two_torch_threads")
TOL = 1e-4


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights far from any init (biases and norms around 1), so a missed key shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))


def _ours(name: str, size: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = load_backbone(BackboneSpec(name=name, image_size=size, grid=None), "cpu")
    cls, grid = b.tokens(x)
    assert grid.shape[2] == grid.shape[3] == size // 16 or grid.shape[2] * 16 == size
    return cls, grid.flatten(2).transpose(1, 2)  # [B, h*w, C], row-major patch order


def _close(label: str, cls, patches, ref_cls, ref_patches) -> None:
    assert cls.shape == ref_cls.shape and patches.shape == ref_patches.shape, label
    diff = max(float((cls - ref_cls).abs().max()), float((patches - ref_patches).abs().max()))
    print(f"conversion {label}: max abs diff {diff:.2e}")
    assert diff <= TOL, f"{label}: {diff}"


def _hf_dinov3(tmp_path, gated: bool, published_names: bool, seed: int = 1):
    """A tiny random DINOv3ViTModel saved as on the Hub (config.json, model.safetensors,
    preprocessor_config.json). `published_names`: keys `layer.N.*` as in the facebook/dinov3-*
    files (transformers 5 saves `model.layer.N.*` and renames on load)."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    cfg = transformers.DINOv3ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=128 if gated else 256, num_register_tokens=4,
                                       use_gated_mlp=gated, hidden_act="silu" if gated else "gelu",
                                       image_size=32, patch_size=16)
    torch.manual_seed(seed)
    ref = transformers.DINOv3ViTModel(cfg).eval()
    _randomise(ref, seed)
    folder = tmp_path / f"dinov3-{'gated' if gated else 'mlp'}"
    ref.save_pretrained(folder)
    if published_names:
        state = {k.replace("model.layer.", "layer.", 1): v.contiguous() for k, v in ref.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "size": {"height": 32, "width": 32}}))
    return ref, folder


@pytest.mark.parametrize("gated,published_names", [(False, True), (True, True), (False, False)],
                         ids=["S-B-L-MLP-published-keys", "S+-H+-SwiGLU-published-keys", "MLP-transformers5-keys"])
def test_hf_dinov3_gives_the_reference_tokens_at_two_sizes(tmp_path, gated, published_names):
    ref, folder = _hf_dinov3(tmp_path, gated, published_names)
    entry = W.add_weights(folder, "tiny-dinov3", licence="DINOv3 License (test)")
    assert entry.source_format == "hf-dinov3" and entry.model_args["num_reg_tokens"] == 4
    assert entry.architecture.endswith("_patch16_dinov3_qkvb") and ("plus" in entry.architecture) == gated
    assert entry.mean == (0.485, 0.456, 0.406)
    for size in (32, 80):  # 80 px: a 5 x 5 grid, RoPE at a size the checkpoint was not saved for
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            out = ref(pixel_values=x).last_hidden_state
        cls, patches = _ours("tiny-dinov3", size, x)
        # registers (tokens 1..4) never enter the grid: the grid is tokens 5.., the CLS token 0
        assert patches.shape[1] == (size // 16) ** 2 == out.shape[1] - 5
        _close(f"hf-dinov3 {'SwiGLU' if gated else 'MLP'} @{size}px", cls, patches, out[:, 0], out[:, 5:])


def test_hf_dinov3_registers_stay_out_of_the_grid_with_layers(tmp_path):
    """--layers takes blocks through forward_intermediates: the same CLS / grid split."""
    ref, folder = _hf_dinov3(tmp_path, False, True, seed=4)
    W.add_weights(folder, "tiny-dinov3-layers")
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    b = load_backbone(BackboneSpec(name="tiny-dinov3-layers", image_size=48, grid=None, layers="-1"), "cpu")
    cls, grid = b.tokens(x)
    with torch.no_grad():
        out = ref(pixel_values=x).last_hidden_state
    _close("hf-dinov3 --layers -1 @48px", cls, grid.flatten(2).transpose(1, 2), out[:, 0], out[:, 5:])


def test_hf_dinov3_with_a_key_bias_is_refused_naming_it(tmp_path):
    from loff_core.errors import BackboneError
    from safetensors.torch import load_file, save_file

    _, folder = _hf_dinov3(tmp_path, False, True)
    state = load_file(str(folder / "model.safetensors"))
    state["layer.0.attention.k_proj.bias"] = torch.zeros(64)  # a zero key bias (the original's masked one): fine
    save_file(state, str(folder / "model.safetensors"))
    W.add_weights(folder, "zero-k-bias-dinov3")
    state["layer.0.attention.k_proj.bias"] = torch.ones(64)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(BackboneError, match="key bias"):
        W.add_weights(folder, "bad-dinov3")


def _biomedclip_like(tmp_path, seed: int = 3):
    """A tiny OpenCLIP model with a timm image tower, saved as BiomedCLIP is on the Hub:
    open_clip_pytorch_model.bin (visual.trunk.*, visual.head.proj.*, a text tower) and
    open_clip_config.json."""
    pytest.importorskip("open_clip")
    from open_clip.timm_model import TimmModel

    torch.manual_seed(seed)
    tower = TimmModel("vit_tiny_patch16_224", embed_dim=32, image_size=224, pool="", proj="linear").eval()
    _randomise(tower, seed)
    folder = tmp_path / "biomedclip-like"
    folder.mkdir()
    state = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    state |= {"text.transformer.embeddings.word_embeddings.weight": torch.randn(10, 16),
              "text.proj.0.weight": torch.randn(32, 16), "logit_scale": torch.tensor(4.6)}
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224",
                                                      "timm_model_pretrained": False, "timm_pool": "",
                                                      "timm_proj": "linear", "image_size": 224},
                      "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"}},
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]}}))
    return tower, folder


def test_openclip_timm_tower_biomedclip_gives_the_reference_tokens_at_two_sizes(tmp_path):
    tower, folder = _biomedclip_like(tmp_path)
    entry = W.add_weights(folder, "tiny-biomedclip", licence="MIT")
    assert entry.source_format == "openclip-timm" and entry.architecture == "vit_tiny_patch16_224"
    assert entry.native_size == 224 and entry.mean == pytest.approx(W.CLIP[0])
    for size in (224, 288):  # 288 px: 18 x 18 patches from the 14 x 14 position table (resampled)
        trunk = tower.trunk
        if size != 224:  # the reference: timm resamples the trunk's own position table (bicubic, antialiased)
            import copy

            trunk = copy.deepcopy(tower.trunk)
            trunk.set_input_size(img_size=size)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            out = trunk.forward_features(x)
        cls, patches = _ours("tiny-biomedclip", size, x)
        _close(f"openclip-timm @{size}px", cls, patches, out[:, 0], out[:, 1:])


def test_openclip_timm_tower_without_its_config_is_refused(tmp_path):
    from loff_core.errors import BackboneError

    _, folder = _biomedclip_like(tmp_path)
    (folder / "open_clip_config.json").unlink()
    with pytest.raises(BackboneError, match="open_clip_config.json"):
        W.add_weights(folder, "no-config")


# -- registry and Get (gated) ----------------------------------------------------------------
def test_registry_lists_dinov3_and_the_medical_encoders_with_licence_source_and_data():
    rows = {r["name"]: r for r in W.list_backbones()}
    for tag in ("vits16", "vits16plus", "vitb16", "vitl16", "vith16plus"):
        r = rows[f"dinov3-{tag}"]
        assert r["source"] == f"hf:facebook/dinov3-{tag}-pretrain-lvd1689m" and r["gated"]
        assert "DINOv3 License" in r["licence"] and "LVD-1689M" in r["trained_on"]
        k = W.known(f"dinov3-{tag}")
        assert k.token_px == 16 and k.native_size == 256 and k.layout == "hf-dinov3" and k.mean == W.IMAGENET[0]
    assert rows["dinov3-vith16plus"]["gpu_only"] and not rows["dinov3-vitl16"]["gpu_only"]
    for name in ("biomedclip-vitb16", "rad-dino-maira-2", "rad-dino"):
        assert rows[name]["licence"] and rows[name]["trained_on"] and not rows[name]["gated"]
    assert W.known("biomedclip-vitb16").filename == "open_clip_pytorch_model.bin"


def test_registry_geometry_matches_timm():
    """params, feature width and patch of each new entry are those of the timm model it runs as."""
    import timm

    for name in ("dinov3-vits16", "dinov3-vits16plus", "dinov3-vitb16", "biomedclip-vitb16"):
        k = W.known(name)
        m = timm.create_model(k.architecture, pretrained=False, num_classes=0)
        assert m.num_features == k.feature_dim and m.patch_embed.patch_size[0] == k.token_px, name
        assert sum(p.numel() for p in m.parameters()) / 1e6 == pytest.approx(k.params_m, abs=0.1), name


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from hub_server import HubServer

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as the launch script sets it
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def test_get_dinov3_gated_asks_for_a_token_sends_it_only_to_the_hub_and_converts(hub, tmp_path, capsys):
    from loff_core.errors import BackboneError, Remedy
    from loff_core.hub import describe_get, get_weights, needs_token

    ref, folder = _hf_dinov3(tmp_path, False, True, seed=7)
    repo = "facebook/dinov3-vits16-pretrain-lvd1689m"
    for f in ("model.safetensors", "config.json", "preprocessor_config.json"):
        hub.files[(repo, f)] = (folder / f).read_bytes()
    assert len(hub.files[(repo, "model.safetensors")]) > 100_000  # an LFS file: the Hub redirects it to its CDN
    hub.gated[repo] = "hf_test_token"
    hub.cdn_host = "localhost"  # another host name for the same server: the "CDN"

    info = describe_get("dinov3-vits16")  # what the user is told before Get
    assert info["gated"] and "DINOv3 License" in info["licence"] and info["page"].endswith(repo)
    assert not info["token_set"] and needs_token("dinov3-vits16")
    with pytest.raises(BackboneError) as no_token:
        get_weights("dinov3-vits16")
    assert no_token.value.remedy == Remedy.HUB_TOKEN and "gated" in str(no_token.value)
    assert hub.requests == [], "without a token nothing is asked of the Hub"
    with pytest.raises(BackboneError, match="gated"):
        get_weights("dinov3-vits16", token="hf_wrong")

    hub.hosts_seen.clear()
    result = get_weights("dinov3-vits16", token="hf_test_token")
    assert result.added == "dinov3-vits16" and result.size == len(hub.files[(repo, "model.safetensors")])
    hub_host = hub.url.split("//")[1]
    on_hub = [a for host, _, a in hub.hosts_seen if host == hub_host]
    on_cdn = [(p, a) for host, p, a in hub.hosts_seen if host.startswith("localhost")]
    assert on_hub and all(a == "Bearer hf_test_token" for a in on_hub)
    assert on_cdn and all(p.startswith("/cdn/") and a is None for p, a in on_cdn), "the token never leaves the Hub"

    card = json.loads((tmp_path / "weights" / "dinov3-vits16" / "card.json").read_text())
    assert card["source_format"] == "hf-dinov3" and "DINOv3 License" in card["licence"]
    assert card["native_size"] == 256 and card["registry_name"] == "dinov3-vits16"
    assert {r["name"]: r for r in W.list_backbones()}["dinov3-vits16"]["present"]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = ref(pixel_values=x).last_hidden_state
    cls, patches = _ours("dinov3-vits16", 64, x)
    _close("dinov3-vits16 after Get @64px", cls, patches, out[:, 0], out[:, 5:])


# -- advice ---------------------------------------------------------------------------------
def test_advice_table_is_complete_named_and_consistent_with_the_registry_and_the_cache_plan():
    from loff_core import advice as A

    pairs = [(a.images, a.device) for a in A.TABLE]
    assert sorted(pairs) == sorted((i, d) for i in A.IMAGE_KINDS for d in A.DEVICES), "one row per pair"
    for a in A.TABLE:
        k = W.known(a.backbone)
        assert k is not None and a.evidence and a.why and a.gflops > 0, a
        assert not (k.gpu_only and a.device == "cpu")
        assert a.image_size % k.token_px == 0 or k.family == "efficientnet"
        if a.device == "cpu":
            assert a.cpu_images_per_s and "measured" in A.describe(a)
        else:
            assert "estimate" in A.describe(a) and "assumed" in A.describe(a)
    # the cache size is the Cache page's (app/cache_plan.plan) for the same backbone, size and grid
    from types import SimpleNamespace

    from app.cache_plan import plan

    row = A.advise("other", gpu=False)
    entry = SimpleNamespace(rows=512, cols=512, modality=None, view=None)
    p = plan([entry], W.known(row.backbone).architecture, row.image_size, 16)
    assert A.cache_bytes_per_image(row.backbone, row.image_size, 16) == p.bytes_per_image
    # DINOv3-L at 512 px: 32 x 32 tokens pooled to 16 x 16 x 1024, float16, plus the CLS token
    assert A.cache_bytes_per_image("dinov3-vitl16", 512, 16) == (16 * 16 + 1) * 1024 * 2
    assert plan([entry], "dinov3-vitl16", 512, 16).bytes_per_image == (16 * 16 + 1) * 1024 * 2  # the Cache page
    assert plan([entry], "dinov3-vitl16", None, 16).input_size == 256
    assert A.advise("mammograms", gpu=True).backbone.startswith("dinov3-")
    # on a CPU every kind starts with the Extract default (tests/test_defaults.py); RAD-DINO on a GPU
    assert A.advise("chest radiographs", gpu=False).backbone == W.CPU_DEFAULT_ORDER[0]
    assert A.advise("chest radiographs", gpu=True).backbone == "rad-dino"


def test_image_kind_from_the_catalog_and_advice_is_torch_free():
    import subprocess
    import sys
    from types import SimpleNamespace as E

    from loff_core.advice import image_kind

    assert image_kind([E(modality="MG", view="CC"), E(modality=None, view="MLO"), E(modality="OT", view=None)]) \
        == "mammograms"
    assert image_kind([E(modality="DX", view="PA"), E(modality="CR", view="AP")]) == "chest radiographs"
    assert image_kind([E(modality="CT", view=None)]) == "other" and image_kind([]) == "other"
    code = "import sys, loff_core.advice as a; a.describe(a.TABLE[0]); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_weights_list_prints_the_advice_and_get_of_a_gated_model_without_a_token_says_what_to_do(
        hub, capsys, monkeypatch):
    from loff_cli import loff_json
    from loff_core.cli import main

    listed = loff_json(capsys, "weights", "list", "--images", "chest radiographs")
    assert [a["images"] for a in listed["advice"]] == ["chest radiographs"]
    assert listed["advice"][0]["backbone"] == W.CPU_DEFAULT_ORDER[0] and "Evidence:" in listed["advice"][0]["text"]
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert out.count("advice for ") == 3 and "dinov3-vitl16" in out and "gated" in out and "RAD-DINO" in out
    monkeypatch.setattr("sys.stdin", open("/dev/null"))  # no terminal: the token cannot be asked for
    code = main(["weights", "get", "dinov3-vits16"])
    err = capsys.readouterr().err
    assert code != 0 and "is gated" in err and "accept" in err and "HF_TOKEN" in err
    assert hub.requests == []


def test_get_biomedclip_fetches_its_open_clip_config_and_keeps_the_image_tower(hub, tmp_path):
    from loff_core.hub import get_weights

    tower, folder = _biomedclip_like(tmp_path, seed=5)
    repo = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    for f in ("open_clip_pytorch_model.bin", "open_clip_config.json"):
        hub.files[(repo, f)] = (folder / f).read_bytes()
    result = get_weights("biomedclip-vitb16")  # not gated: no token set, none needed
    assert result.added == "biomedclip-vitb16" and all(a is None for _, _, a in hub.hosts_seen)
    card = json.loads((tmp_path / "weights" / "biomedclip-vitb16" / "card.json").read_text())
    assert card["source_format"] == "openclip-timm" and card["licence"] == "MIT"
    assert card["architecture"] == "vit_tiny_patch16_224" and card["native_size"] == 224
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = tower.trunk.forward_features(x)
    cls, patches = _ours("biomedclip-vitb16", 224, x)
    _close("biomedclip-vitb16 after Get @224px", cls, patches, out[:, 0], out[:, 1:])
