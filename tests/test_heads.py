"""Heads: every kind x task builds, outputs the right shapes and valid probabilities,
round-trips its config and weights, exports to ONNX, and gives an attention map."""

from __future__ import annotations

from dataclasses import replace

import json

import numpy as np
import pytest
import torch

from loff_core.settings import AugmentConfig
from loff_core.augment import TensorAugment
from loff_core.heads import (
    HeadConfig,
    attention_map,
    build_head,
    expected_level,
    predicted_class,
    probabilities,
)

KINDS = ["linear", "attention", "vit"]
TASKS = ["classification", "ordinal"]
C, H, W, K = 12, 3, 4, 4


def _config(kind, task, grid_hw=(H, W)):
    return HeadConfig(kind=kind, task=task, num_classes=K, feature_dim=C, grid_hw=grid_hw,
                      width=16, depth=2, num_heads=4, dropout=0.1)


def _inputs(b=5, grid_hw=(H, W), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, C, generator=g), torch.randn(b, C, *grid_hw, generator=g)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("task", TASKS)
def test_head_shapes_probabilities_and_round_trips(kind, task):
    torch.manual_seed(0)
    config = _config(kind, task)
    head = build_head(config).eval()
    cls, grid = _inputs()
    logits = head(cls, grid)
    assert logits.shape == (5, K if task == "classification" else K - 1)
    probs = probabilities(logits, task)
    assert probs.shape == (5, K)
    assert torch.all(probs >= 0)
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-5)
    if task == "ordinal":
        cum = torch.sigmoid(logits)
        assert torch.all(cum[:, 1:] <= cum[:, :-1] + 1e-7)  # monotone by construction

    data = json.loads(json.dumps(config.to_dict()))
    assert data["grid_hw"] == [H, W]
    assert HeadConfig.from_dict({**data, "unknown": 1}) == config

    fresh = build_head(HeadConfig.from_dict(data)).eval()
    fresh.load_state_dict(head.state_dict(), strict=True)
    assert torch.allclose(fresh(cls, grid), logits)

    amap = attention_map(head, cls, grid)
    assert amap.shape == (5, H, W)
    assert torch.all(amap >= 0) and torch.all(amap <= 1 + 1e-6)
    assert torch.allclose(amap.flatten(1).amax(1), torch.ones(5))


@pytest.mark.parametrize("kind", KINDS)
def test_pooled_cnn_features_with_1x1_grid(kind):
    config = _config(kind, "ordinal", grid_hw=(1, 1))
    head = build_head(config)
    cls, grid = _inputs(3, (1, 1))
    assert head(cls, grid).shape == (3, K - 1)
    assert attention_map(head, cls, grid).shape == (3, 1, 1)
    aug = TensorAugment(AugmentConfig(hflip=1, crop_prob=1, mixup_prob=1), torch.Generator().manual_seed(0))
    c2, g2, t2 = aug(cls, grid, torch.eye(K)[:3])
    assert g2.shape == grid.shape and torch.isfinite(g2).all()


class _Probs(torch.nn.Module):
    def __init__(self, head, task):
        super().__init__()
        self.head, self.task = head, task

    def forward(self, cls, grid):
        return probabilities(self.head(cls, grid), self.task)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter is the one export.py uses
@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("task", TASKS)
def test_onnx_export_matches_torch(kind, task, members, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    model = _Probs(build_head(replace(_config(kind, task), members=members)).eval(), task).eval()
    cls, grid = _inputs(2)
    path = tmp_path / "head.onnx"
    torch.onnx.export(model, (cls, grid), str(path), input_names=["cls", "grid"], output_names=["probabilities"],
                      dynamic_axes={"cls": {0: "b"}, "grid": {0: "b"}, "probabilities": {0: "b"}},
                      opset_version=18, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cls, grid = _inputs(6, seed=3)  # another batch size
    feeds = {"cls": cls.numpy(), "grid": grid.numpy()}
    names = {i.name for i in session.get_inputs()}  # the linear probe never reads the grid
    got = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    with torch.no_grad():
        want = model(cls, grid).numpy()
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("task", TASKS)
def test_an_ensemble_averages_its_members_probabilities_and_maps(task):
    """`loff tune` keeps its K fold heads as one EnsembleHead (HeadConfig.members)."""
    from loff_core.heads import attention_map, ensemble_state

    torch.manual_seed(2)
    config = _config("attention", task)
    members = [build_head(config).eval() for _ in range(3)]
    ensemble = build_head(replace(config, members=3)).eval()
    ensemble.load_state_dict(ensemble_state([m.state_dict() for m in members]), strict=True)
    cls, grid = _inputs(5, seed=4)
    with torch.no_grad():
        got = probabilities(ensemble(cls, grid), task)
        each = [probabilities(m(cls, grid), task) for m in members]
        maps = [m.attention(cls, grid) for m in members]
    assert torch.allclose(got, torch.stack(each).mean(0), atol=1e-5)
    assert not torch.allclose(each[0], each[1], atol=1e-3)  # the members differ: the mean is not one of them
    want_map = torch.stack(maps).mean(0)
    want_map = (want_map / want_map.amax(dim=1, keepdim=True)).reshape(attention_map(ensemble, cls, grid).shape)
    assert torch.allclose(attention_map(ensemble, cls, grid), want_map, atol=1e-5)
    with pytest.raises(RuntimeError):  # a member's weights missing: refused, not silently random
        ensemble.load_state_dict(ensemble_state([m.state_dict() for m in members[:2]]), strict=True)


def test_probability_decoding():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3], [0.4, 0.05, 0.55]])
    assert predicted_class(probs, "classification").tolist() == [0, 2, 1, 2]
    # ordinal: P(y>0) = .3 .9 .7 .6 ; P(y>1) = .1 .7 .3 .55
    assert predicted_class(probs, "ordinal").tolist() == [0, 2, 1, 2]
    assert predicted_class(torch.tensor(probs), "ordinal").dtype == np.int64
    assert np.allclose(expected_level(probs), [0.4, 1.6, 1.0, 1.15])
    # non-monotone cumulative logits are made monotone, probabilities stay valid
    p = probabilities(torch.tensor([[2.0, 3.0, -1.0]]), "ordinal")
    assert torch.all(p >= 0) and torch.allclose(p.sum(1), torch.ones(1))
    assert p[0, 1] == 0


def test_augment_is_reproducible_and_off_is_identity():
    cls, grid = _inputs(8)
    targets = torch.eye(K)[torch.arange(8) % K]
    a = TensorAugment(AugmentConfig(), torch.Generator().manual_seed(5))(cls, grid, targets)
    b = TensorAugment(AugmentConfig(), torch.Generator().manual_seed(5))(cls, grid, targets)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[1], grid)
    assert torch.allclose(a[2].sum(1), torch.ones(8))
    off = TensorAugment(AugmentConfig.off(), torch.Generator())(cls, grid, targets)
    assert off[0] is cls and off[1] is grid and off[2] is targets
    assert AugmentConfig.off().to_dict()["enabled"] is False
    flip = TensorAugment(AugmentConfig(hflip=1.0, crop_prob=0, noise_std=0, token_dropout=0, mixup_prob=0),
                         torch.Generator())(cls, grid, targets)
    assert torch.equal(flip[1], grid.flip(-1)) and torch.equal(flip[0], cls)
