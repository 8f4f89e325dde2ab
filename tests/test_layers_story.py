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
    last = loff_json(capsys, "extract", project, *TINY)  # the model's output: another cache
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
