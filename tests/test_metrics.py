"""Metrics: hand-checked values, bootstrap CIs, JSON safety, undefined metrics as None."""

from __future__ import annotations

import json

import numpy as np
from sklearn.metrics import roc_auc_score

from loff_core.metrics import evaluate_predictions


def _onehot(levels, k, hit=0.9):
    p = np.full((len(levels), k), (1 - hit) / (k - 1))
    p[np.arange(len(levels)), levels] = hit
    return p


def test_perfect_ordinal_predictions():
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    out = evaluate_predictions(y, _onehot(y, 4), list("abcd"), "ordinal", n_bootstrap=200)
    m = out["metrics"]
    assert m["accuracy"] == 1 and m["balanced_accuracy"] == 1 and m["auc"] == 1
    assert m["kendall_tau"] == 1 and m["kendall_tau_score"] == 1
    assert m["amae"] == 0 and m["mae"] == 0 and m["accuracy_within_1"] == 1
    assert out["confusion_matrix"] == [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 2]]
    assert out["per_class"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2, "auc": 1.0,
                                     "auc_ci": [1.0, 1.0]}


def test_known_amae():
    # level 0: 4 images, all right; level 2: 1 image predicted 0 -> MAE per level 0 and 2
    y = np.array([0, 0, 0, 0, 2])
    pred = np.array([0, 0, 0, 0, 0])
    m = evaluate_predictions(y, _onehot(pred, 3), ["lo", "mid", "hi"], "ordinal", n_bootstrap=0)["metrics"]
    assert m["amae"] == 1.0  # (0 + 2) / 2
    assert m["mae"] == 0.4
    assert m["accuracy_within_1"] == 0.8
    assert m["auc"] is None  # level "mid" absent: macro OvR AUC undefined


def test_binary_auc_ci_json_and_speed():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = np.clip(y * 0.3 + rng.normal(0.35, 0.25, 200), 0, 1)
    probs = np.stack([1 - score, score], 1)
    evaluate_predictions(y[:20], probs[:20], ["neg", "pos"], "classification", n_bootstrap=10)  # warm imports
    out = evaluate_predictions(y, probs, ["neg", "pos"], "classification", n_bootstrap=1000, seed=1)
    assert abs(out["metrics"]["auc"] - roc_auc_score(y, score)) < 1e-12
    for name, value in out["metrics"].items():
        lo, hi = out["ci"][name]
        assert lo <= value <= hi
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    roc = out["roc"]
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert all(np.isfinite(roc["thresholds"]))
    again = evaluate_predictions(y, probs, ["neg", "pos"], "classification", n_bootstrap=1000, seed=1)
    assert again["ci"] == out["ci"]


def test_multiclass_and_ordinal_ci():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 200)
    p = rng.dirichlet(np.ones(4), 200)
    p[np.arange(200), y] += 0.6
    p /= p.sum(1, keepdims=True)
    out = evaluate_predictions(y, p, list("abcd"), "classification", n_bootstrap=1000)
    assert abs(out["metrics"]["auc"] - roc_auc_score(y, p, multi_class="ovr")) < 1e-12
    assert set(out["roc"]) == set("abcd")
    out = evaluate_predictions(y, p, list("abcd"), "ordinal", n_bootstrap=1000)  # speed: benchmarks, not tests
    for name, value in out["metrics"].items():
        lo, hi = out["ci"][name]
        assert lo <= value <= hi, name
    json.dumps(out, allow_nan=False)


def test_undefined_auc_is_none_not_a_crash():
    y = np.array([1, 1, 1])
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    out = evaluate_predictions(y, probs, ["neg", "pos"], "classification", n_bootstrap=50)
    assert out["metrics"]["auc"] is None
    assert out["ci"]["auc"] is None
    assert out["roc"] is None
    assert out["metrics"]["accuracy"] == 2 / 3
    json.dumps(out, allow_nan=False)


def test_per_class_auc_is_one_vs_rest_with_an_interval():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 40)
    logits = rng.normal(size=(120, 3)) + 1.5 * np.eye(3)[y] * np.array([1.0, 0.3, 2.0])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    out = evaluate_predictions(y, p, ["F", "G", "D"], "classification", n_bootstrap=300)
    for k, name in enumerate(["F", "G", "D"]):
        pc = out["per_class"][name]
        assert abs(pc["auc"] - roc_auc_score(y == k, p[:, k])) < 1e-9
        lo, hi = pc["auc_ci"]
        assert lo <= pc["auc"] <= hi and hi - lo > 0.01
    assert out["per_class"]["D"]["auc"] > out["per_class"]["G"]["auc"]  # D separated more strongly
    json.dumps(out)
    # a class absent from the labels: no AUC, no interval (not a made-up number)
    out = evaluate_predictions([0, 0, 1, 1], [[0.9, 0.1, 0.0]] * 2 + [[0.2, 0.7, 0.1]] * 2, ["a", "b", "c"],
                               "classification", n_bootstrap=50)
    assert out["per_class"]["c"]["auc"] is None and out["per_class"]["c"]["auc_ci"] is None
    assert out["per_class"]["a"]["auc"] == 1.0
