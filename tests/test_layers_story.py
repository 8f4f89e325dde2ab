"""`--layers` end to end: a cache of an intermediate block opens again (its recorded backbone
gives its fingerprint), trains, exports to ONNX with the same block, and predicts."""

from __future__ import annotations

import json

import numpy as np

from loff_cli import loff_json

TINY = ["--backbone", "tf_efficientnet_lite0", "--random-init", "--image-size", "64", "--workers", "0"]


def test_an_intermediate_block_goes_from_cache_to_onnx_and_predict(tmp_path, capsys):
    project = tmp_path / "demo"
    loff_json(capsys, "demo", project, "--patients", "4")
    first = loff_json(capsys, "extract", project, *TINY, "--layers=-2")
    assert first["backbone"]["layers"] == "-2" and first["extracted"] == 8
    last = loff_json(capsys, "extract", project, *TINY, "--layers=last")  # the model's output: another cache
    assert last["fingerprint"] != first["fingerprint"] and last["backbone"]["feature_dim"] != \
        first["backbone"]["feature_dim"]
    again = loff_json(capsys, "extract", project, *TINY, "--layers=-2")  # reopened, checked, reused
    assert again["fingerprint"] == first["fingerprint"] and again["skipped"] == 8 and again["extracted"] == 0
    run = loff_json(capsys, "train", project, "--epochs", "1")["run"]
    out = loff_json(capsys, "export", project, tmp_path / "head", "--run", run, "--onnx")
    card = json.loads((tmp_path / "head" / "card.json").read_text())
    assert card["backbone"]["layers"] == "-2" and card["backbone"]["fingerprint"] == first["fingerprint"]
    assert out["onnx"]["max_abs_diff_vs_torch"] < 1e-4
    files = project / "images" / "SYN-0001"
    exported = loff_json(capsys, "predict", tmp_path / "head", files, "--random-init")
    from_run = loff_json(capsys, "predict", project, files, "--random-init", "--run", run)
    assert len(exported["predictions"]) == 2
    for a, b in zip(exported["predictions"], from_run["predictions"]):
        assert np.allclose(a["probabilities"], b["probabilities"], atol=1e-6)


def test_two_blocks_in_one_cache_train_export_and_predict_the_chosen_block(tmp_path, capsys):
    """Issue 20: `--layers=-2,last` stores both blocks from one forward pass; `--block`
    chooses one for train and cv; the run and the card record it, and predict rebuilds
    exactly that block's features (the card's fingerprint is that of a cache of it alone)."""
    project = tmp_path / "demo"
    loff_json(capsys, "demo", project, "--patients", "24")  # cv: two patients of every level in train + val
    both = loff_json(capsys, "extract", project, *TINY, "--layers=-2,last")
    assert both["backbone"]["layers"] == "-2,last" and [b["layers"] for b in both["backbone"]["blocks"]] == ["-2", "last"]
    fp_last = both["backbone"]["blocks"][1]["fingerprint"]
    first = loff_json(capsys, "train", project, "--epochs", "1")  # default: the cache's first block
    record = json.loads((project / "runs" / first["run"] / "run.json").read_text())
    assert record["block"] == "-2" and record["backbone"]["layers"] == "-2"
    assert record["cache_fingerprint"] == both["fingerprint"]
    run = loff_json(capsys, "train", project, "--epochs", "1", "--block", "last")["run"]
    record = json.loads((project / "runs" / run / "run.json").read_text())
    assert record["block"] == "last" and record["train_config"]["block"] == "last"
    assert record["backbone"]["fingerprint"] == fp_last and record["head_config"]["feature_dim"] == 1280
    cv = loff_json(capsys, "cv", project, "--folds", "2", "--head", "linear", "--epochs", "1", "--block", "last")
    group = json.loads((project / "groups" / cv["group"] / "group.json").read_text())
    assert group["block"] == "last"
    loff_json(capsys, "export", project, tmp_path / "head", "--run", run)
    card = json.loads((tmp_path / "head" / "card.json").read_text())
    assert card["backbone"]["layers"] == "last" and card["backbone"]["fingerprint"] == fp_last
    files = project / "images" / "SYN-0001"
    exported = loff_json(capsys, "predict", tmp_path / "head", files, "--random-init")
    from_run = loff_json(capsys, "predict", project, files, "--random-init", "--run", run)
    for a, b in zip(exported["predictions"], from_run["predictions"]):
        assert np.allclose(a["probabilities"], b["probabilities"], atol=1e-6)
    evaluated = loff_json(capsys, "evaluate", project, "--run", run, "--split", "val")
    assert evaluated["n"] > 0
    # the same block extracted alone is the cache the card names
    alone = loff_json(capsys, "extract", project, *TINY, "--layers=last")
    assert alone["fingerprint"] == fp_last
    # the CPU default (`--layers default`) for a CNN is this very pair of blocks
    assert loff_json(capsys, "extract", project, *TINY)["fingerprint"] == both["fingerprint"]
