"""Cross-validation and model selection on the cache: folds grouped by patient and
stratified, metrics as mean / SD / per fold, Stop keeps finished folds, the logistic
regression becomes an exact linear head, and `loff cv` / `loff tune` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from loff_cli import loff_json
from loff_core.errors import TrainingError
from loff_core.features import InMemoryFeatures
from loff_core.heads import HeadConfig, build_head, probabilities
from loff_core.metrics import evaluate_predictions
from loff_core.progress import Cancelled, Progress
from loff_core.settings import TrainConfig
from loff_core.validation import (Pool, _logreg_features, fit_logreg, grouped_folds, logreg_head_state,
                                  logreg_probabilities, run_folds)

C, H, W = 8, 2, 2


def _pool(n=90, k=3, shift=2.5, seed=0, grid_hw=(H, W)):
    """Separable features; two images per patient, both with the patient's label."""
    h, w = grid_hw
    rng = np.random.default_rng(seed)
    y = (np.arange(n) // 2) % k
    proto = shift * rng.normal(size=(k, C))
    cls = (rng.normal(size=(n, C)) + proto[y]).astype(np.float16)
    grid = (rng.normal(size=(n, C, h, w)) + proto[y][:, :, None, None]).astype(np.float16)
    ids = [f"img{i:03d}" for i in range(n)]
    groups = np.asarray([f"p{i // 2}" for i in range(n)])
    return InMemoryFeatures(ids, cls, grid), Pool(ids, y, groups)


def _cfg(**kw):
    base = dict(head="attention", epochs=3, batch_size=16, width=16, depth=1, device="cpu", lr=3e-3, patience=4)
    base.update(kw)
    return TrainConfig(**base)


def test_folds_are_grouped_stratified_complete_and_repeatable():
    y = np.arange(60) % 3
    groups = np.asarray([f"p{i // 3}" for i in range(60)])
    folds = grouped_folds(y, groups, 5, seed=1)
    assert len(folds) == 5
    held = np.concatenate([b for _, b in folds])
    assert sorted(held.tolist()) == list(range(60))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert set(y[test]) == {0, 1, 2}
    again = grouped_folds(y, groups, 5, seed=1)
    assert all((a == c).all() and (b == d).all() for (a, b), (c, d) in zip(folds, again))
    with pytest.raises(TrainingError, match="at least 5 patients"):
        grouped_folds(y[:12], groups[:12], 5, seed=0)


def test_folds_do_not_depend_on_the_patient_keys_values():
    """Two projects of one folder salt their patient keys differently: the same images in the
    same order must get the same folds (the keys' sorted order used to decide them)."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 90)
    patient = np.repeat(np.arange(45), 2)
    one = np.asarray([f"{(p * 7919) % 1000:04d}a" for p in patient])    # two different salts:
    other = np.asarray([f"{(p * 104729) % 997:04d}b" for p in patient])  # other values, other sort order
    assert sorted(set(one), key=list(one).index) != sorted(set(one))  # the keys' order is not the images'
    for seed in (0, 1):
        a, b = grouped_folds(y, one, 5, seed), grouped_folds(y, other, 5, seed)
        assert all((t1 == t2).all() and (h1 == h2).all() for (t1, h1), (t2, h2) in zip(a, b))


def test_run_folds_reports_mean_sd_and_per_fold_of_evaluate_metrics():
    src, pool = _pool()
    out = run_folds(src, pool, ["a", "b", "c"], "classification", _cfg(), folds=3, seed=0)
    assert out["completed"] == 3 and not out["stopped"] and len(out["best_epochs"]) == 3
    names = set(evaluate_predictions([0, 1, 2], np.eye(3), ["a", "b", "c"], "classification",
                                     n_bootstrap=0)["metrics"])
    assert set(out["metrics"]) == names
    for m in out["metrics"].values():
        vals = np.asarray(m["per_fold"], dtype=float)
        assert len(vals) == 3
        assert m["mean"] == pytest.approx(vals.mean()) and m["sd"] == pytest.approx(vals.std(ddof=1))
    assert out["metrics"]["auc"]["mean"] > 0.8
    assert sum(out["fold_sizes"]) == 90
    # ordinal: the ordinal metrics too
    out = run_folds(src, pool, ["a", "b", "c"], "ordinal", _cfg(task="ordinal"), folds=3, seed=0)
    assert {"kendall_tau", "kendall_tau_score", "amae"} <= set(out["metrics"])


def test_stop_keeps_finished_folds_and_cancel_raises():
    src, pool = _pool()
    progress = Progress()

    def on_report(done, total, message):
        if message.endswith("fold 1/3 done"):
            progress.request_stop()

    progress.on_report = on_report
    out = run_folds(src, pool, ["a", "b", "c"], "classification", _cfg(), folds=3, seed=0, progress=progress)
    assert out["stopped"] and out["completed"] == 1 and len(out["metrics"]["accuracy"]["per_fold"]) == 1
    cancelled = Progress()
    cancelled.cancel()
    with pytest.raises(Cancelled):
        run_folds(src, pool, ["a", "b", "c"], "classification", _cfg(), folds=3, seed=0, progress=cancelled)


@pytest.mark.parametrize("k", [2, 3])
def test_logistic_regression_is_exactly_a_linear_head(k):
    src, pool = _pool(n=60, k=k)
    x = _logreg_features(src.cls)
    fitted = fit_logreg(x, pool.y, pool.groups, k, seed=0)
    assert fitted["C"] in (0.001, 0.01, 0.1, 1.0, 10.0)
    expected = logreg_probabilities(fitted, x)
    head = build_head(HeadConfig(kind="linear", task="classification", num_classes=k, feature_dim=C, grid_hw=(H, W)))
    head.load_state_dict(logreg_head_state(fitted, C), strict=True)
    head.eval()
    with torch.inference_mode():
        got = probabilities(head(torch.from_numpy(src.cls).float(), torch.from_numpy(src.grid).float()),
                            "classification").double().numpy()
    assert np.abs(got - expected).max() < 1e-4
    assert (expected.argmax(1) == pool.y).mean() > 0.8


def _project(tmp_path, capsys):
    for split_n, (cls, value) in enumerate((("dark", 30), ("bright", 200))):
        for i in range(16):
            img = np.clip(np.random.default_rng(i + 100 * split_n).normal(value, 20, (40, 40)), 0, 255)
            path = tmp_path / "img" / cls / f"{cls}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.astype(np.uint8)).save(path)
    project = tmp_path / "p"
    loff_json(capsys, "import", project, tmp_path / "img")
    loff_json(capsys, "extract", project, "--backbone", "vit_tiny_patch16_224", "--random-init", "--image-size", "32",
              "--grid", "2", "--workers", "0", "--device", "cpu")
    return project


def test_cv_and_tune_commands_end_to_end(tmp_path, capsys):
    project = _project(tmp_path, capsys)
    info = loff_json(capsys, "info", project)
    n_pool = info["splits"]["train"] + info["splits"]["val"]
    out = loff_json(capsys, "cv", project, "--folds", "3", "--epochs", "3", "--device", "cpu")
    assert set(out) == {"group", "folds", "metrics"} and out["folds"] == 3
    assert set(out["metrics"]["accuracy"]) == {"mean", "sd", "per_fold"}
    assert len(out["metrics"]["accuracy"]["per_fold"]) == 3
    record = json.loads((project / "groups" / out["group"] / "group.json").read_text())
    assert record["n_images"] == n_pool and sum(record["fold_sizes"]) == n_pool  # test split untouched
    listed = loff_json(capsys, "info", project)["groups"]
    assert [g["group"] for g in listed] == [out["group"]]
    out = loff_json(capsys, "cv", project, "--folds", "3", "--head", "logreg")
    assert out["metrics"]["auc"]["mean"] is not None

    tuned = loff_json(capsys, "tune", project, "--trials", "1", "--folds", "3", "--device", "cpu")
    assert set(tuned) == {"leaderboard", "best", "run", "test"}
    assert [set(e) for e in tuned["leaderboard"]] == [{"config", "cv"}] * 2
    assert tuned["best"] == tuned["leaderboard"][0]
    assert set(tuned["test"]) >= {"accuracy", "auc"}
    runs = loff_json(capsys, "info", project)["runs"]
    assert tuned["run"] in [r["run"] for r in runs]
    again = loff_json(capsys, "evaluate", project, "--run", tuned["run"], "--bootstrap", "0")
    assert again["metrics"]["accuracy"] == pytest.approx(tuned["test"]["accuracy"])
    exported = loff_json(capsys, "export", project, tmp_path / "out", "--run", tuned["run"])
    assert (tmp_path / "out" / "card.json").is_file() and exported


def test_stop_reaches_the_fold_training_already_running():
    """A Stop asked in the middle of a fold's training (after its progress was made) ends that
    training at once: the fold is not counted and the finished one is kept."""
    src, pool = _pool()
    progress = Progress()
    epochs = []

    def on_partial(item):
        if item.kind == "epoch":
            epochs.append(item.value["epoch"])
            if len(epochs) == 4:  # the second fold's first epoch (3 epochs a fold)
                progress.request_stop()

    progress.on_partial = on_partial
    out = run_folds(src, pool, ["a", "b", "c"], "classification", _cfg(epochs=3), folds=3, seed=0,
                    progress=progress)
    assert out["stopped"] and out["completed"] == 1 and epochs == [1, 2, 3, 1]
