"""`loff weights list|add|remove` and `loff extract --backbone ADDED --layers ...` through the
command, end to end: add an original-DINOv2-layout checkpoint, extract with it from an
intermediate block, train, export, and predict with the same block (the card carries it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loff_cli import loff_json
from loff_core.cli import main
from loff_core.synthetic import write_synthetic_dataset


def _dinov2_release_file(path) -> None:
    import timm

    torch.manual_seed(0)
    m = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, embed_dim=64, depth=3,
                          num_heads=1, img_size=56)
    state = dict(m.state_dict())
    state["mask_token"] = torch.zeros(1, 64)
    torch.save(state, path)


def test_weights_commands_and_an_added_backbone_through_extract_and_predict(tmp_path, capsys):
    listed = loff_json(capsys, "weights", "list")
    names = [b["name"] for b in listed["backbones"]]
    assert "dinov2-vitl14" in names and "efficientnet-lite2" in names
    assert listed["default"]["registry_name"].startswith("efficientnet-lite")  # no GPU here

    ckpt = tmp_path / "dinov2_vits14_pretrain.pth"
    _dinov2_release_file(ckpt)
    added = loff_json(capsys, "weights", "add", ckpt, "--name", "my-dino", "--licence", "Apache-2.0")
    assert added["source_format"] == "dinov2" and added["native_size"] == 56 and added["licence"] == "Apache-2.0"
    assert "my-dino" in [b["name"] for b in loff_json(capsys, "weights", "list")["backbones"] if b["added"]]

    folder = tmp_path / "images"
    labels = write_synthetic_dataset(folder, n_patients=24, size=(96, 80), seed=1)
    project = tmp_path / "project"
    loff_json(capsys, "import", project, folder, "--labels", labels, "--label-column", "masking_level",
              "--patient-column", "patient")
    ex_last = loff_json(capsys, "extract", project, "--backbone", "my-dino", "--grid", "2", "--batch-size", "16",
                        "--workers", "0")
    ex = loff_json(capsys, "extract", project, "--backbone", "my-dino", "--layers", "-2", "--grid", "2",
                   "--batch-size", "16", "--workers", "0")  # the active cache from now on
    assert ex["fingerprint"] != ex_last["fingerprint"]
    assert ex["backbone"]["layers"] == "-2" and ex_last["backbone"]["layers"] == "last"
    trained = loff_json(capsys, "train", project, "--head", "linear", "--epochs", "2")
    run = trained["run"]
    loff_json(capsys, "export", project, tmp_path / "head", "--run", run)
    card = json.loads((tmp_path / "head" / "card.json").read_text())
    assert card["backbone"]["name"] == "my-dino"
    evaluated = loff_json(capsys, "evaluate", project, "--run", run, "--split", "test", "--bootstrap", "0")
    files = [project / r["path"] for r in evaluated["predictions"]]
    assert len(files) >= 4
    predicted = loff_json(capsys, "predict", tmp_path / "head", *files)
    by_path = {r["path"]: r for r in predicted["predictions"]}
    for r in evaluated["predictions"]:
        again = by_path[str(project / r["path"])] if str(project / r["path"]) in by_path else \
            next(v for k, v in by_path.items() if k.endswith(r["path"].split("/")[-1]))
        assert np.allclose(again["probabilities"], r["probabilities"], atol=5e-3)

    assert loff_json(capsys, "weights", "remove", "my-dino")["removed"] == "my-dino"
    capsys.readouterr()
    assert main(["weights", "remove", "my-dino"]) == 1
    assert "no added backbone named 'my-dino'" in capsys.readouterr().err


def test_add_refusals_are_one_line(tmp_path, capsys):
    bad = tmp_path / "weird.safetensors"
    from safetensors.torch import save_file

    save_file({"some.layer.weight": torch.zeros(2, 2)}, str(bad))
    assert main(["weights", "add", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("loff weights add:") and "--architecture" in err and "\n" not in err
    assert main(["weights", "add", str(tmp_path / "missing.pth")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["weights", "add", str(bad), "--architecture", "vit_tiny_patch16_224"]) == 1
    err = capsys.readouterr().err
    assert "missing keys" in err and "unexpected keys ['some.layer.weight']" in err
