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
