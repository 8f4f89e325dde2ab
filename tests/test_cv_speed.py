"""The speed work on one configuration's cross-validation (issue 20 point 3) keeps the results:
the attention head's fast forward is the same function as the reference attention, training
with it follows the reference path, augmentation draws the same random numbers, the linear
probe's grid is left alone, `run_folds(only=...)` scores exactly those folds of the same
splits, and the progress says the validation score and the best epoch so far."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loff_core import training
from loff_core.augment import TensorAugment, _sample_std
from loff_core.errors import TrainingError
from loff_core.heads import AttentionPoolHead, HeadConfig, build_head
from loff_core.progress import Progress
from loff_core.settings import AugmentConfig, TrainConfig
from loff_core.validation import run_folds
from test_validation import _pool as validation_pool

C, H, W = 8, 3, 3


def _pool(n=72):
    """test_validation's separable pool (two images per patient), on a 3 x 3 grid."""
    return validation_pool(n=n, grid_hw=(H, W))


def _cfg(**kw):
    base = dict(head="attention", epochs=4, batch_size=16, width=16, depth=1, device="cpu", lr=3e-3, patience=3)
    base.update(kw)
    return TrainConfig(**base)


def _reference(head, cls, grid):
    return head._run(cls, grid, False)[0]  # every token embedded, keys and values projected


@pytest.mark.parametrize("task", ["classification", "ordinal"])
def test_the_fast_attention_pool_is_the_reference_function_with_the_same_gradients(task):
    torch.manual_seed(0)
    head = build_head(HeadConfig(kind="attention", task=task, num_classes=4, feature_dim=24, grid_hw=(5, 4),
                                 width=32, num_heads=4)).eval()
    for p in head.parameters():  # away from the initial zeros and ones, so every term counts
        torch.nn.init.normal_(p, std=0.3)
    cls, grid = torch.randn(6, 24) * 2 + 1, torch.randn(6, 24, 5, 4) * 3 - 0.5
    want, got = _reference(head, cls, grid), head(cls, grid)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    g_want = torch.autograd.grad(_reference(head, cls, grid).square().sum(), list(head.parameters()))
    g_got = torch.autograd.grad(head(cls, grid).square().sum(), list(head.parameters()), allow_unused=True)
    for (name, _), a, b in zip(head.named_parameters(), g_want, g_got):
        b = torch.zeros_like(a) if b is None else b
        assert torch.allclose(a, b, atol=1e-4 * max(1.0, float(a.abs().max()))), name


def test_training_with_the_fast_attention_follows_the_reference_path(monkeypatch):
    src, pool = _pool()
    ids, y = pool.ids, pool.y.tolist()
    args = (src, ids[:48], y[:48], ids[48:], y[48:], _cfg(epochs=3))
    fast = training.train_head(*args, num_classes=3)
    monkeypatch.setattr(AttentionPoolHead, "forward", _reference)
    ref = training.train_head(*args, num_classes=3)
    assert fast.best_epoch == ref.best_epoch
    for a, b in zip(fast.history, ref.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_auc"] == pytest.approx(b["val_auc"], abs=1e-6)
    for name, value in ref.state_dict.items():
        if name == "pool.kv.bias":  # the keys' bias moves no score (softmax drops a shared shift): its
            value, mine = value[16:], fast.state_dict[name][16:]  # gradient is 0 here, rounding noise there,
        else:  # which Adam turns into steps of the learning rate's size; only the values' half counts
            mine = fast.state_dict[name]
        assert torch.allclose(mine, value, atol=1e-4), name
    probs = [training.predict_probabilities(r.head_config, r.state_dict, src, ids[48:]) for r in (fast, ref)]
    assert np.allclose(probs[0], probs[1], atol=1e-5)


def test_augmentation_draws_the_same_numbers_and_the_linear_probes_grid_is_left_alone():
    cls, grid = torch.randn(16, C) * 2 + 1, torch.randn(16, C, H, W) * 3 + 0.5
    onehot = torch.eye(3)[torch.arange(16) % 3]
    assert torch.allclose(_sample_std(grid).flatten(), grid.reshape(16, -1).std(dim=1), rtol=1e-5)
    only_noise = AugmentConfig(hflip=0, crop_prob=0, token_dropout=0, mixup_alpha=0)
    c1, g1, _ = TensorAugment(only_noise, torch.Generator().manual_seed(3))(cls, grid, onehot)
    gen = torch.Generator().manual_seed(3)  # the reference: torch.std, noise for cls then for the grid
    n_cls, n_grid = torch.randn(cls.shape, generator=gen), torch.randn(grid.shape, generator=gen)
    assert torch.allclose(c1, cls + 0.05 * cls.std(dim=1, keepdim=True) * n_cls)
    assert torch.allclose(g1, grid + 0.05 * grid.reshape(16, -1).std(dim=1).view(16, 1, 1, 1) * n_grid, atol=1e-5)
    # no grid: the grid comes back as given and the pooled embedding is still augmented
    c2, g2, t2 = TensorAugment(AugmentConfig(), torch.Generator().manual_seed(3), grid=False)(cls, grid, onehot)
    assert g2 is grid and not torch.equal(c2, cls) and t2.shape == onehot.shape
    # a crop resamples only the images drawn for it; the others are untouched
    crop = AugmentConfig(hflip=0, crop_prob=0.5, noise_std=0, token_dropout=0, mixup_alpha=0)
    g3 = TensorAugment(crop, torch.Generator().manual_seed(1))(cls, grid, onehot)[1]
    same = (g3 == grid).flatten(1).all(dim=1)
    assert 0 < int(same.sum()) < 16


def test_the_linear_probe_reads_no_grid():
    src, pool = _pool()
    data = training._in_memory(src)
    assert isinstance(data, training.TensorFeatures) and training._in_memory(data) is data
    cls, grid = training._read(data, np.arange(5), torch.device("cpu"), grid=False)
    assert grid.shape == (5, C, 1, 1) and torch.equal(grid[:, :, 0, 0], cls)
    cls2, grid2 = training._read(data, np.arange(5), torch.device("cpu"))
    assert torch.equal(cls2, cls) and torch.equal(grid2, torch.from_numpy(src.grid[:5]).float())


def test_only_scores_those_folds_of_the_same_splits():
    src, pool = _pool()
    cfg = _cfg(head="linear", lr=3e-2, epochs=3)
    full = run_folds(src, pool, ["a", "b", "c"], "classification", cfg, folds=3, seed=0)
    seen = []
    part = run_folds(src, pool, ["a", "b", "c"], "classification", cfg, folds=3, seed=0, only=[2, 0],
                     progress=Progress(on_partial=lambda p: seen.append(p.value) if p.kind == "fold" else None))
    assert part["completed"] == 2 and part["fold_indices"] == [0, 2] == [f["fold"] - 1 for f in seen]
    assert full["fold_indices"] == [0, 1, 2]
    for name, m in part["metrics"].items():
        want = [full["metrics"][name]["per_fold"][i] for i in (0, 2)]
        assert m["per_fold"] == pytest.approx(want, nan_ok=True), name
    assert part["best_epochs"] == [full["best_epochs"][i] for i in (0, 2)]
    scored = ~np.isnan(part["oof"]).any(axis=1)
    assert np.allclose(part["oof"][scored], full["oof"][scored])
    assert scored.sum() == full["fold_sizes"][0] + full["fold_sizes"][2] == sum(part["fold_sizes"])
    with pytest.raises(TrainingError, match="outside 0..2"):
        run_folds(src, pool, ["a", "b", "c"], "classification", cfg, folds=3, seed=0, only=[3])


def test_cv_progress_shows_the_validation_score_and_best_epoch_before_each_fold_score():
    src, pool = _pool()
    events, messages = [], []
    progress = Progress(on_partial=lambda p: events.append((p.kind, p.value)),
                        on_report=lambda d, n, m: messages.append(m))
    run_folds(src, pool, ["a", "b", "c"], "classification", _cfg(), folds=2, seed=0, progress=progress)
    kinds = [k for k, _ in events]
    assert kinds.count("fold") == 2 and kinds[-1] == "fold" and kinds[0] == "epoch"
    first_fold = kinds.index("fold")
    epochs = [v for k, v in events[:first_fold] if k == "epoch"]
    assert all(e["monitor"] == "val_auc" and e["score"] == e["val_auc"] for e in epochs)
    assert epochs[-1]["best_score"] == pytest.approx(max(e["val_auc"] for e in epochs), abs=1e-4)
    assert any("fold 1/2: epoch 2/4" in m and "best val auc" in m and "(epoch " in m for m in messages)


def test_cross_validation_runs_on_the_chosen_threads_and_gives_them_back(monkeypatch):
    src, pool = _pool()
    before = torch.get_num_threads()
    seen = []
    cfg = _cfg(head="linear", epochs=1)
    progress = Progress(on_report=lambda *a: seen.append(torch.get_num_threads()))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOFF_CV_THREADS", raising=False)
    run_folds(src, pool, ["a", "b", "c"], "classification", cfg, folds=2, seed=0, progress=progress)
    assert set(seen) == {training.CV_THREADS} and torch.get_num_threads() == before
    monkeypatch.setenv("LOFF_CV_THREADS", "64")  # never more than the cores this process may use
    seen.clear()
    run_folds(src, pool, ["a", "b", "c"], "classification", cfg, folds=2, seed=0, progress=progress)
    assert set(seen) == {min(64, len(__import__("os").sched_getaffinity(0)))}
    assert torch.get_num_threads() == before


def test_the_train_page_marks_the_best_epoch_the_engine_kept():
    from app.pages.train_page import TrainPage

    saved = [{"epoch": 1, "val_auc": 0.9}, {"epoch": 2, "val_auc": 0.9}]  # a run.json history: no best_epoch
    assert TrainPage.best_epoch(saved, "val_auc") == 1
    live = [dict(saved[0], best_epoch=1), dict(saved[1], best_epoch=2)]  # the engine took the lower loss on a tie
    assert TrainPage.best_epoch(live, "val_auc") == 2
