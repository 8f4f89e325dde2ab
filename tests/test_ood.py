"""loff_core/ood.py without extraction: the held-out threshold flags about 1 % of new images
of the training kind and far ones always; a DICOM of another modality / body part is flagged
with that reason (the chest X-ray sample is a CR of the CHEST)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loff_core import ood

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
if not (SHARED / "chest-xray-samples").is_dir():
    SHARED = Path("/work/shared/data")
CHEST_DCM = next(iter(sorted((SHARED / "chest-xray-samples").glob("*.dcm"))), None) if SHARED.is_dir() else None


def _data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(8, 64))
    return rng.normal(size=(n, 8)) @ basis + 0.3 * rng.normal(size=(n, 64))


def test_the_threshold_is_held_out_so_new_images_of_the_same_kind_pass():
    data = _data(2300, 0)
    train, new = data[:300], data[300:]  # the same kind: one basis
    model, card = ood.summarize(train, np.arange(300) // 2, {}, "last")
    flags = ood.flag(card, model, new, [""] * len(new))
    assert sum(f is not None for f in flags) <= 0.05 * len(new)
    far = new[:20] + 30.0
    assert all(f is not None and "far outside the training data" in f for f in ood.flag(card, model, far, [""] * 20))
    assert ood.flag(None, None, far, [""] * 20) == [None] * 20  # a head without a summary: no flags


def test_the_threshold_does_not_depend_on_the_salted_patient_keys():
    """Two projects of the same images salt their patient keys differently: the held-out folds
    (and so the threshold an exported head carries) must not follow the keys' values."""
    data = _data(60, 1)
    patients = np.arange(60) // 3  # 20 patients of 3 images: every tie GroupKFold can have
    rng = np.random.default_rng(7)
    thresholds = set()
    for _ in range(4):
        salted = {p: rng.bytes(8).hex() for p in range(20)}  # another project's keys
        keys = [salted[p] for p in patients]
        thresholds.add(ood.summarize(data, keys, {}, "last")[1]["threshold"])
        assert np.array_equal(ood.held_out_scores(data, keys), ood.held_out_scores(data, patients))
    assert len(thresholds) == 1


@pytest.mark.skipif(CHEST_DCM is None, reason="the shared chest X-ray samples are absent")
def test_a_dicom_of_another_modality_or_body_part_is_flagged_with_the_reason(tmp_path):
    fields = ood.dicom_fields(CHEST_DCM)
    assert fields.get("modality") == "CR"
    train = _data(100, 2)
    model, card = ood.summarize(train, np.arange(100), {"modality": {"MG": 100}, "body_part": {"BREAST": 60}},
                                "last")
    x = train[:1]  # an embedding like the training ones: only the header speaks
    (reason,) = ood.flag(card, model, x, [CHEST_DCM])
    assert reason is not None and "modality CR; the head was trained on MG" in reason
    assert "far outside" not in reason
    if fields.get("body_part"):
        assert f"body part {fields['body_part']}; the head was trained on BREAST" in reason
    (same,) = ood.flag({**card, "training": {"modality": {"CR": 3}}}, model, x, [CHEST_DCM])
    assert same is None or "modality" not in same
    path = ood.save(tmp_path, model)
    back = ood.load(path)
    assert np.allclose(ood.score(back, x), ood.score(model, x))
