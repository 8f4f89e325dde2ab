"""Cropping to the body before the resize (loff_core/crop.py, `loff extract --crop`): the box
finds the body and leaves labels out, an image with no background is never cut, the crop is
part of the cache's fingerprint (caches made before keep theirs), predict cuts as the
extraction did, and heat maps land on the part of the image the model saw."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from loff_core.backbones import BackboneSpec, Preprocessor, fingerprint_of, identity_of, load_backbone
from loff_core.crop import _open3, foreground_box
from loff_core.predictions import heat_on_image
from loff_core.settings import CROPS, ExtractSettings


def mammogram(h: int = 400, w: int = 320, seed: int = 0, label: bool = True) -> np.ndarray:
    """A breast-like half ellipse against the left edge (rows 40-360, 45 % of the width),
    textured, on a noisy black background, with a small bright film label top right."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    inside = ((y - h / 2) / (0.4 * h)) ** 2 + (x / (0.45 * w)) ** 2 <= 1
    img = rng.normal(0.02, 0.01, (h, w))
    img[inside] = 0.5 + 0.2 * rng.random(inside.sum())
    if label:
        img[20:32, w - 60:w - 30] = 1.0
    return np.clip(img, 0, 1).astype(np.float32)


def test_the_box_holds_the_body_and_leaves_the_label_out():
    img = mammogram()
    top, bottom, left, right = foreground_box(img)
    assert left == 0 and right < 0.55 * img.shape[1]  # the breast only, with a small margin
    assert 30 <= top <= 45 and 355 <= bottom <= 375
    assert not (top <= 25 and right > img.shape[1] - 60)  # the label is outside


@pytest.mark.parametrize("case", ["chest-like", "flat", "tiny", "nan"])
def test_an_image_without_a_clear_background_is_never_cut(case):
    rng = np.random.default_rng(1)
    img = {"chest-like": (0.3 + 0.4 * rng.random((300, 280))).astype(np.float32),
           "flat": np.full((200, 200), 0.4, np.float32),
           "tiny": np.ones((4, 4), np.float32),
           "nan": np.full((64, 64), np.nan, np.float32)}[case]
    assert foreground_box(img) is None
    pre = Preprocessor(32, (0.5,) * 3, (0.5,) * 3, "body-fill")
    if case != "nan":  # the model sees what the uncropped preprocessing gives
        assert np.array_equal(pre(img), Preprocessor(32, (0.5,) * 3, (0.5,) * 3)(img))


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (3, 3), (9, 8), (256, 208), (97, 256), (200, 3)])
def test_the_fast_opening_is_scipys(shape):
    """The box's 3 x 3 opening (two separable passes, issue 20: a third of the decode worker's
    crop time went to scipy's generic one) gives scipy's result, borders included: caches
    cropped before keep their features."""
    from scipy import ndimage

    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for share in (0.05, 0.5, 0.9, 0.99):
        mask = rng.random(shape) < share
        assert np.array_equal(_open3(mask), ndimage.binary_opening(mask, structure=np.ones((3, 3), dtype=bool)))


def test_body_fill_fills_the_square_and_body_keeps_the_aspect():
    img = mammogram()
    none = Preprocessor(64, (0.0,) * 3, (1.0,) * 3)(img)[0]
    body = Preprocessor(64, (0.0,) * 3, (1.0,) * 3, "body")(img)[0]
    fill = Preprocessor(64, (0.0,) * 3, (1.0,) * 3, "body-fill")(img)[0]
    lit = lambda a: (a > 0.3).mean()  # noqa: E731 - share of the square the breast covers
    assert lit(none) < lit(body) < lit(fill)
    assert lit(fill) > 0.7 and (fill[:, :2] > 0.3).mean() > 0.8  # the breast reaches the square's edges
    assert fill.shape == body.shape == none.shape == (64, 64)


def test_the_crop_is_in_the_fingerprint_and_old_caches_keep_theirs():
    base = dict(name="vit_tiny_patch16_224", random_init=True, image_size=32, grid=2)
    plain = load_backbone(BackboneSpec(**base))
    cut = load_backbone(BackboneSpec(**base, crop="body-fill"))
    assert plain.describe()["crop"] == "none" and cut.describe()["crop"] == "body-fill"
    assert cut.fingerprint != plain.fingerprint
    # a cache or card written before crops existed has no "crop": its identity, so its
    # fingerprint, is the one an uncropped backbone computes now
    old = {k: v for k, v in plain.describe().items() if k != "crop"}
    assert fingerprint_of(identity_of(old)) == plain.fingerprint
    assert fingerprint_of(identity_of(cut.describe())) == cut.fingerprint
    assert set(CROPS) == {"none", "body", "body-fill"} and ExtractSettings.crop in CROPS


@pytest.mark.parametrize("fill", [False, True])
def test_a_heat_map_lands_on_the_part_the_model_saw(fill):
    rows, cols = 400, 320
    box = (0.1, 0.9, 0.0, 0.5)  # rows 40-360, the left half
    heat = heat_on_image(np.ones((4, 4), np.float32), 64, rows, cols, box=box, fill=fill)
    assert abs(heat.shape[0] / heat.shape[1] - rows / cols) < 0.05  # over the whole image
    ys, xs = np.nonzero(heat > 0.5)
    h, w = heat.shape
    assert ys.min() / h == pytest.approx(0.1, abs=0.03) and ys.max() / h == pytest.approx(0.9, abs=0.03)
    assert xs.min() == 0 and xs.max() / w == pytest.approx(0.5, abs=0.03)
    assert heat[:, int(0.6 * w):].max() == 0  # nothing where the model saw nothing


def test_extract_crops_by_default_and_predict_cuts_as_the_extraction_did(tmp_path, capsys):
    """A mammogram-like folder, extracted with the default crop; `loff predict` on the same
    files (run and export) gives the probabilities `evaluate` got from the cache, and the
    Viewer's heat map of a film covers the breast only."""
    from loff_cli import loff_json
    from loff_core.cli import main
    from loff_core.evaluation import explain_images
    from loff_core.project import Project

    folder = tmp_path / "films"
    folder.mkdir()
    rows = ["file,label,patient"]
    for i in range(16):
        img = mammogram(seed=i)
        if i % 2:
            img = img[:, ::-1]  # right breasts
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"f{i:02d}.png")
        rows.append(f"f{i:02d}.png,{'AB'[i % 2]},p{i // 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    project = tmp_path / "p"
    assert main(["import", str(project), str(folder), "--labels", str(tmp_path / "labels.csv"),
                 "--label-column", "label", "--patient-column", "patient", "--quiet"]) == 0
    out = loff_json(capsys, "extract", project, "--backbone", "vit_tiny_patch16_224", "--random-init",
                    "--image-size", "32", "--grid", "2", "--workers", "0")
    assert out["backbone"]["crop"] == ExtractSettings.crop != "none"
    assert main(["train", str(project), "--epochs", "1", "--quiet"]) == 0
    assert main(["export", str(project), str(tmp_path / "head"), "--quiet"]) == 0
    files = [folder / "f00.png", folder / "f01.png"]
    from_run = loff_json(capsys, "predict", project, *files, "--random-init")
    from_export = loff_json(capsys, "predict", tmp_path / "head", *files, "--random-init")
    p = Project.open(project)
    run_id = p.runs()[-1].run_id
    ids = {e.path.split("/")[-1]: e.image_id for e in p.catalog().entries}
    explained = explain_images(p, run_id, [ids["f00.png"], ids["f01.png"]])
    for k, (a, b) in enumerate(zip(from_run["predictions"], from_export["predictions"])):
        assert np.allclose(a["probabilities"], b["probabilities"], atol=1e-6)
        assert np.allclose(a["probabilities"], explained.probabilities[k], atol=1e-3)
    heat = explained.heat[0]  # f00: a left breast, the right half of the film is background
    assert heat.shape[1] > heat.shape[0] * 0.7 and heat[:, int(0.6 * heat.shape[1]):].max() == 0
    assert heat[:, : int(0.4 * heat.shape[1])].max() > 0
