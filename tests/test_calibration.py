"""Operating point: temperature scaling lowers the calibration error, Bayes' prior shift,
thresholds by criterion, and the run's operating point used by evaluate, export and
predict (card version 2; version 1 cards still load)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loff_cli import binary_png_project, loff_json
from loff_core.calibration import (adjust, choose_temperature, choose_threshold, decide, describe, ece,
                                   fit_operating_point, fit_temperature, prior_shift, set_threshold)
from loff_core.errors import TrainingError
from loff_core.export import load_exported_head
from loff_core.project import Project
from loff_core.settings import DEFAULT_DECISION


def _overconfident(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.2 * np.eye(3)[y]
    p = np.exp(4 * logits)  # far too sharp
    return p / p.sum(1, keepdims=True), y


def test_temperature_scaling_lowers_the_calibration_error():
    p, y = _overconfident()
    t = fit_temperature(p, y)
    assert t > 2
    assert ece(adjust(p, {"temperature": t}), y) < 0.5 * ece(p, y)
    # argmax unchanged: temperature alone never changes a classification decision
    assert (decide(adjust(p, {"temperature": t}), "classification", {"temperature": t}) == p.argmax(1)).all()


def _scaling_makes_it_worse():
    """80 images at P = 0.8 (80 % right: calibrated) and 10 confidently wrong at 0.995: the
    NLL fit softens everything (T ~ 10), which makes the calibrated majority underconfident."""
    p = np.r_[np.tile([0.8, 0.2], (90, 1)), np.tile([0.995, 0.005], (10, 1))]
    y = np.r_[np.zeros(72, int), np.ones(18, int), np.ones(10, int)]
    return p, y


def test_temperature_that_raises_the_held_out_ece_is_not_kept():
    """Issue 23, item 6: T = 1 kept, the fitted T and the reason recorded and said."""
    p, y = _scaling_makes_it_worse()
    assert fit_temperature(p, y) > 2  # the NLL fit alone would soften the probabilities
    t, scaling = choose_temperature(p, y, "the validation split (100 images)")
    assert t == 1.0 and not scaling["kept"] and scaling["fitted"] > 2
    assert scaling["ece_fitted"] > ece(p, y)
    assert scaling["reason"].startswith(f"scaling raised ECE {ece(p, y):.3f} -> {scaling['ece_fitted']:.3f}")
    op = fit_operating_point(p, y, ["a", "b"], "classification", source=[0.5, 0.5],
                             fitted_on="the validation split (100 images)")
    assert op["temperature"] == 1.0 and op["ece_after"] == pytest.approx(op["ece_before"])
    assert op["temperature_scaling"]["kept"] is False
    assert describe(op).startswith(f"temperature kept at 1: scaling raised ECE {op['ece_before']:.3f} -> "
                                   f"{op['temperature_scaling']['ece_fitted']:.3f} on the validation split")
    # an operating point fitted before this rule (no record of it) that raised the ECE is flagged
    old = {k: v for k, v in op.items() if k != "temperature_scaling"} | {"temperature": 1.52, "ece_before": 0.146,
                                                                          "ece_after": 0.154}
    assert "raised the ECE: calibrate again" in describe(old)


def test_temperature_that_lowers_the_held_out_ece_is_kept():
    p, y = _overconfident()
    op = fit_operating_point(p, y, ["a", "b", "c"], "classification", source=[1 / 3] * 3, fitted_on="val")
    assert op["temperature"] == pytest.approx(fit_temperature(p, y)) and op["temperature"] > 2
    assert op["temperature_scaling"]["kept"] is True and op["ece_after"] < op["ece_before"]
    assert describe(op).startswith(f"temperature {op['temperature']:.3g} (ECE {op['ece_before']:.3f} -> "
                                   f"{op['ece_after']:.3f} on val)")


def test_prior_shift_is_bayes_rule():
    p = np.array([[0.5, 0.5], [0.8, 0.2]])
    out = prior_shift(p, [0.5, 0.5], [0.2, 0.8])
    assert out[0] == pytest.approx([0.2, 0.8])
    assert out[1] == pytest.approx([0.8 * 0.2 / (0.8 * 0.2 + 0.2 * 0.8), 0.5])


def test_threshold_criteria():
    rng = np.random.default_rng(1)
    pos = np.r_[np.ones(50, bool), np.zeros(150, bool)]
    score = np.clip(np.where(pos, rng.normal(0.45, 0.15, 200), rng.normal(0.25, 0.15, 200)), 0, 1)
    t = choose_threshold(score, pos, "youden")
    sens, spec = (score[pos] >= t).mean(), (score[~pos] < t).mean()
    for other in np.linspace(0, 1, 101):  # no threshold has a better balanced accuracy
        assert (score[pos] >= other).mean() + (score[~pos] < other).mean() <= sens + spec + 1e-9
    t90 = choose_threshold(score, pos, "sensitivity", 0.9)
    assert (score[pos] >= t90).mean() >= 0.9
    assert (score[pos] >= t90 + 0.02).mean() < 0.9 or t90 >= score.max()
    ts = choose_threshold(score, pos, "specificity", 0.95)
    assert (score[~pos] < ts).mean() >= 0.95
    with pytest.raises(TrainingError, match="both classes"):
        choose_threshold(score[pos], pos[pos])
    op = fit_operating_point(np.c_[1 - score, score], pos.astype(int), ["no", "yes"], "classification",
                             source=[0.5, 0.5], fitted_on="test data", prevalence=[3, 1])
    assert op["prior"]["target"] == [0.75, 0.25] and op["threshold"]["criterion"] == DEFAULT_DECISION
    assert op["threshold"]["balanced_accuracy"] == pytest.approx((op["threshold"]["sensitivity"]
                                                                 + op["threshold"]["specificity"]) / 2)



def test_operating_point_is_used_by_evaluate_export_and_predict(tmp_path, capsys):
    project = binary_png_project(tmp_path, capsys, pneumonia=30)
    run = loff_json(capsys, "train", project, "--head", "linear", "--epochs", "4", "--device", "cpu")["run"]
    record = json.loads((project / "runs" / run / "run.json").read_text())
    op = record["operating_point"]
    assert op["threshold"]["criterion"] == DEFAULT_DECISION and op["threshold"]["positive_class"] == "pneumonia"
    assert op["temperature"] > 0 and op["ece_after"] <= op["ece_before"] + 1e-9
    out = loff_json(capsys, "evaluate", project, "--bootstrap", "0")
    assert out["operating_point"] == op
    thr = op["threshold"]["value"]
    p1 = np.array([p["probabilities"][1] for p in out["predictions"]])
    assert [p["predicted"] for p in out["predictions"]] == ["pneumonia" if v >= thr else "normal" for v in p1]

    # moved by hand to 0: everything is called positive
    set_threshold(Project.open(project), run, 0.0)
    out = loff_json(capsys, "evaluate", project, "--bootstrap", "0")
    assert {p["predicted"] for p in out["predictions"]} == {"pneumonia"}
    assert out["per_class"]["pneumonia"]["recall"] == 1.0 and out["per_class"]["normal"]["recall"] == 0.0

    # prevalence from the test split's labels, then a target sensitivity
    cal = loff_json(capsys, "calibrate", project, "--prevalence-from-test", "--criterion", "sensitivity",
                    "--target", "0.9")
    test_counts = Project.open(project).import_summary()
    assert cal["operating_point"]["prior"]["from"] == "the test split's labels"
    assert cal["operating_point"]["threshold"]["sensitivity"] >= 0.9
    assert "prevalence" in cal["summary"] and test_counts.labelled == 44

    loff_json(capsys, "export", project, tmp_path / "head")
    card = json.loads((tmp_path / "head" / "card.json").read_text())
    assert card["format_version"] == (5 if card["backbone"]["crop"] != "none" else 4) and card["operating_point"] == cal["operating_point"]
    scaling = card["operating_point"]["temperature_scaling"]  # the export carries the temperature decision
    assert scaling["kept"] == (card["operating_point"]["temperature"] != 1.0) and "fitted" in scaling
    assert ("temperature kept at 1: " + scaling["reason"] in cal["summary"]) != scaling["kept"]
    files = sorted((tmp_path / "img" / "normal").glob("*.png"))[:3]
    predicted = loff_json(capsys, "predict", tmp_path / "head", *files, "--random-init", "--device", "cpu")
    t = card["operating_point"]["threshold"]["value"]
    assert [p["predicted"] for p in predicted["predictions"]] == [
        "pneumonia" if p["probabilities"][1] >= t else "normal" for p in predicted["predictions"]]
    # a version-1 card (no operating point) still loads and predicts by argmax
    card.pop("operating_point")
    card["format_version"] = 1
    (tmp_path / "head" / "card.json").write_text(json.dumps(card))
    assert load_exported_head(tmp_path / "head").card["format_version"] == 1
    old = loff_json(capsys, "predict", tmp_path / "head", *files, "--random-init", "--device", "cpu")
    assert [p["predicted"] for p in old["predictions"]] == [
        "pneumonia" if p["probabilities"][1] > p["probabilities"][0] else "normal" for p in old["predictions"]]


def test_per_class_auc_with_intervals_and_small_split_warning():
    from sklearn.metrics import roc_auc_score

    from loff_core.metrics import evaluate_predictions, small_split_warning

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet([1, 1, 1], 60) + 0.8 * np.eye(3)[y]
    p /= p.sum(1, keepdims=True)
    out = evaluate_predictions(y, p, ["F", "G", "D"], "classification", n_bootstrap=300)
    for i, c in enumerate("FGD"):
        auc = out["per_class_auc"][c]
        assert auc["auc"] == pytest.approx(roc_auc_score(y == i, p[:, i]))
        assert auc["ci"][0] <= auc["auc"] <= auc["ci"][1]
    ci = out["ci"]["accuracy"]
    assert (small_split_warning(60, ci) is not None) == (ci[1] - ci[0] > 0.2)
    assert "loff cv" in small_split_warning(48, [0.45, 0.75]) and small_split_warning(900, [0.70, 0.75]) is None
