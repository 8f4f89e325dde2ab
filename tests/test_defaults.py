"""The CPU defaults (issue 20 point 4, issue 23 item 9): the advice, the Extract default and the
Cache page's plan agree; every cached block counts in the plan; the decision rule binary heads
use by default, and the one line that says which rule decided. Evidence: docs/benchmarks.md,
"Defaults from both real data sets" (benchmarks/defaults_evidence.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from loff_cli import binary_png_project, loff_json


def _entry(rows=1024, cols=1024, modality=None, view=None):
    return SimpleNamespace(rows=rows, cols=cols, modality=modality, view=view)


# -- the plan counts every cached block -----------------------------------------------------
def test_the_plan_counts_every_cached_block_as_the_engine_caches_it():
    from app.cache_plan import plan
    from loff_core.advice import cache_bytes_per_image

    e = [_entry()]
    lite2 = "tf_efficientnet_lite2"
    one = (9 * 9 * 1280 + 1280) * 2  # `last` at 260 px: 9 x 9 x 1280 + the CLS, float16
    stage = (16 * 16 * 120 + 120) * 2  # `-2`: the 120-channel stride-16 stage, 17 x 17 pooled to 16 x 16
    assert plan(e, lite2, None, 16, "last").bytes_per_image == one
    assert plan(e, lite2, None, 16, "-2").bytes_per_image == stage
    both = plan(e, lite2, None, 16, "-2,last")
    assert both.bytes_per_image == one + stage and both.blocks == ("-2", "last")
    assert both.grid_after == (16, 16) and both.feature_dim == 120  # the first block: the one training uses
    assert plan(e, lite2, None, 16, "default").bytes_per_image == one + stage
    assert plan(e, lite2, None, 16).bytes_per_image == one + stage  # None: the Extract default, -2,last
    assert "blocks cached from one forward pass: -2 (16 x 16 x 120), last (9 x 9 x 1280)" in "\n".join(both.lines())
    # a ViT's blocks share its patch grid: two blocks cost twice one
    vit = "vit_tiny_patch16_224"
    assert plan(e, vit, 224, 16, "-4,last").bytes_per_image == 2 * plan(e, vit, 224, 16, "last").bytes_per_image
    assert plan(e, vit, 224, 16).bytes_per_image == plan(e, vit, 224, 16, "last").bytes_per_image
    # the advice's cache size is the plan's, blocks included
    assert cache_bytes_per_image("efficientnet-lite2", 260, 16) == one + stage
    assert cache_bytes_per_image("efficientnet-lite2", 260, 16, "last") == one


def test_the_stage_table_is_timms():
    import timm

    from loff_core.advice import CNN_STAGES

    for name, stages in CNN_STAGES.items():
        model = timm.create_model(name, pretrained=False)
        assert tuple((f["num_chs"], f["reduction"]) for f in model.feature_info) == stages, name


# -- the decision rule ------------------------------------------------------------------------
def test_the_default_decision_rule_is_declared_once_and_fitted_by_default():
    from loff_core.calibration import decide, decision_line, fit_operating_point
    from loff_core.settings import DECISION_RULES, DEFAULT_DECISION, DEFAULT_DECISION_WHY

    assert DEFAULT_DECISION in DECISION_RULES and DEFAULT_DECISION_WHY
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40, int), np.zeros(120, int)]
    score = np.clip(np.where(y == 1, rng.normal(0.4, 0.15, 160), rng.normal(0.2, 0.15, 160)), 0.01, 0.99)
    probs = np.c_[1 - score, score]
    default = fit_operating_point(probs, y, ["normal", "pneumonia"], "classification", source=[0.5, 0.5],
                                  fitted_on="validation")
    assert default["threshold"]["criterion"] == DEFAULT_DECISION
    argmax = fit_operating_point(probs, y, ["normal", "pneumonia"], "classification", source=[0.5, 0.5],
                                 fitted_on="validation", criterion="argmax")
    youden = fit_operating_point(probs, y, ["normal", "pneumonia"], "classification", source=[0.5, 0.5],
                                 fitted_on="validation", criterion="youden")
    assert argmax["threshold"]["value"] == 0.5 and youden["threshold"]["value"] < 0.45  # the scores lie low
    from loff_core.calibration import adjust

    # argmax decides as the probabilities' argmax (temperature does not move 0.5); Youden differs here
    assert (decide(adjust(probs, argmax), "classification", argmax) == probs.argmax(1)).all()
    assert (decide(adjust(probs, youden), "classification", youden) != probs.argmax(1)).any()
    line_a = decision_line(argmax, "classification", 2)
    line_y = decision_line(youden, "classification", 2)
    assert line_a.startswith("decision rule: argmax, pneumonia when P(pneumonia) >= 0.5")
    assert "Youden's J" in line_y and "on validation" in line_y and "\n" not in line_a + line_y
    chosen, other = (line_a, line_y) if DEFAULT_DECISION == "argmax" else (line_y, line_a)
    assert f"(the default: {DEFAULT_DECISION_WHY})" in chosen and "(the default" not in other
    assert decision_line(None, "classification", 3) == "decision rule: argmax of the class probabilities (3 " \
                                                      "classes: no threshold)"
    assert "ordinal decode" in decision_line(None, "ordinal", 4)
    # a run fitted before issue 20 (Youden's J, the default then) still reads as what it is
    old = {"fitted_on": "the validation split (9 images)", "threshold": {"value": 0.31, "positive_class": "b",
                                                                        "criterion": "youden"}}
    assert decision_line(old, "classification", 2).startswith("decision rule: threshold 0.310 on P(b) by Youden's J")


def test_train_evaluate_and_calibrate_say_which_rule_decided(tmp_path, capsys):
    from loff_core.cli import main
    from loff_core.settings import DEFAULT_DECISION

    project = binary_png_project(tmp_path, capsys, pneumonia=30)
    assert main(["train", str(project), "--head", "linear", "--epochs", "2", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    rule = [line for line in out.splitlines() if line.startswith("decision rule:")]
    assert len(rule) == 1 and "(the default: " in rule[0]
    assert ("argmax" in rule[0]) == (DEFAULT_DECISION == "argmax")
    record = json.loads(next((project / "runs").glob("*/run.json")).read_text())
    assert record["operating_point"]["threshold"]["criterion"] == DEFAULT_DECISION
    assert main(["evaluate", str(project), "--bootstrap", "0", "--quiet"]) == 0
    assert sum(line.startswith("decision rule:") for line in capsys.readouterr().out.splitlines()) == 1
    other = "youden" if DEFAULT_DECISION == "argmax" else "argmax"
    cal = loff_json(capsys, "calibrate", project, "--criterion", other)
    assert cal["operating_point"]["threshold"]["criterion"] == other
    assert main(["evaluate", str(project), "--bootstrap", "0", "--quiet"]) == 0
    rule = [line for line in capsys.readouterr().out.splitlines() if line.startswith("decision rule:")]
    assert len(rule) == 1 and f"(default: {DEFAULT_DECISION}" in rule[0]


# -- the advice, the Extract default and the plan agree ----------------------------------------
def test_the_cpu_advice_is_the_extract_default_for_every_kind_of_image():
    """Issue 23 item 9: the advice (`loff weights list`, the Cache page) names the backbone, input
    size and blocks Extract uses by default on a CPU, for mammograms, chest radiographs and other."""
    from app.cache_plan import plan
    from loff_core import advice as A
    from loff_core import weights as W
    from loff_core.settings import DEFAULT_LAYERS, ExtractSettings

    default = W.CPU_DEFAULT_ORDER[0]
    k = W.known(default)
    size = ExtractSettings.image_size or k.native_size  # None: the model's own
    if W.present_file(k) is not None:  # the rule `loff extract` and the window apply
        assert W.default_backbone(gpu=False)["registry_name"] == default
    for kind in A.IMAGE_KINDS:
        a = A.advise(kind, gpu=False)
        assert (a.backbone, a.image_size) == (default, size), kind
        assert f"start with {default} at {size} px" in A.describe(a)
        # the plan for the default extraction of such images suggests nothing else
        e = [_entry(modality="MG", view="CC")] if kind == "mammograms" else [_entry(rows=224, cols=224)]
        p = plan(e, k.architecture, None, ExtractSettings.grid)
        assert p.input_size == size and p.blocks == tuple(DEFAULT_LAYERS["cnn"].split(","))
        assert p.bytes_per_image == A.cache_bytes_per_image(a.backbone, a.image_size, ExtractSettings.grid)
        assert "at least" not in "\n".join(p.lines())
    reason = A.default_reason("mammograms", gpu=False)
    assert reason.startswith(f"defaults used: backbone {default}, input {size} px (the model's own), blocks "
                             f"{DEFAULT_LAYERS['cnn']} for CNNs") and "Evidence: docs/benchmarks.md" in reason
    assert A.default_reason("other", backbone="x", image_size=300, layers="last") == ""  # all chosen: nothing
    assert A.default_reason("other", backbone="x", image_size=300, layers="last", block="-2").startswith(
        "defaults used: block -2 (the cache's first")


def test_extract_says_which_defaults_it_used(tmp_path, capsys):
    from loff_core.cli import main

    project = binary_png_project(tmp_path, capsys)  # extracted with every option given: no line
    assert "defaults used" not in capsys.readouterr().err
    assert main(["extract", str(project), "--backbone", "vit_tiny_patch16_224", "--random-init", "--grid", "2",
                 "--image-size", "32", "--workers", "0", "--device", "cpu", "--layers=-2,last", "--crop", "none"]) == 0
    err = capsys.readouterr().err
    assert "defaults used" not in err
    assert main(["extract", str(project), "--backbone", "vit_tiny_patch16_224", "--random-init", "--grid", "2",
                 "--workers", "0", "--device", "cpu", "--layers", "last", "--quiet"]) == 0
    assert "defaults used" not in capsys.readouterr().err  # --quiet: nothing on stderr but notes
    assert main(["extract", str(project), "--backbone", "vit_tiny_patch16_224", "--random-init", "--grid", "2",
                 "--image-size", "32", "--workers", "0", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "loff extract: defaults used: blocks -2,last for CNNs, last for ViTs, crop body-fill (nested CV" in err


def test_tune_says_which_rule_decides_its_winner(tmp_path, capsys):
    from loff_core.cli import main

    project = binary_png_project(tmp_path, capsys, pneumonia=30)
    assert main(["tune", str(project), "--trials", "1", "--folds", "2", "--device", "cpu",
                 "--quiet"]) == 0
    rule = [line for line in capsys.readouterr().out.splitlines() if line.startswith("decision rule:")]
    assert len(rule) == 1 and "P(pneumonia)" in rule[0]


def test_the_evidence_tables_compare_the_rules_on_the_same_predictions(tmp_path):
    """benchmarks/defaults_evidence.py's tables, on two made-up folds: only folds every cache and
    block finished count; the nested row takes the best validation AUC; Youden minus argmax."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import defaults_evidence as de
    finally:
        sys.path.remove(str(bench))

    def head(auc, val, acc, y_acc):
        rule = {"accuracy": acc, "balanced_accuracy": acc, "sensitivity": acc, "specificity": acc}
        return {"accuracy": acc, "balanced_accuracy": acc, "auc": auc, "val_auc": val,
                "rules": {"argmax": rule, "youden": dict(rule, accuracy=y_acc, balanced_accuracy=y_acc)}}

    recs = []
    for fold in (0, 1, 2):
        for block, val in (("-2", 0.9), ("last", 0.8)):
            if fold == 2 and block == "last":
                continue  # an unfinished fold: left out of every row
            recs.append({"data": "d", "n": 10, "groups": 5, "backbone": "tf_efficientnet_lite2", "size": 260,
                         "block": block, "fold": fold, "logreg": head(0.7, val - 0.1, 0.6, 0.5),
                         "attention": head(0.8 + fold / 100, val, 0.7, 0.7)})
    text = de.tables(recs)
    assert "outer folds done: 2 of 5 (0, 1)" in text
    assert "| Lite2 260 px | `-2` | attention head + tensor aug | 0.700 ± 0.000 | 0.700 ± 0.000 | 0.805 ± 0.005 |" \
        in text
    assert "Nested choices per fold (all caches): Lite2 260 `-2` attention; Lite2 260 `-2` attention." in text
    assert "Youden minus argmax, accuracy: mean -0.050 over 8 (model, fold) pairs; Youden better in 0, worse in 4, " \
           "equal in 4." in text
    out = subprocess.run([sys.executable, str(bench / "defaults_evidence.py"), "--data", str(tmp_path / "none")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "skipped: data absent"
