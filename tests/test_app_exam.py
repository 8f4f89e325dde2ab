"""The exam view on a labels CSV that gives only the side (as mini-MIAS does): the
woman's right and left images sit in the right and left columns of a "view unknown" row,
imported through the Import page like a user would (pytest-qt, offscreen)."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from test_app import LONG, _new_project, _wait_idle, qtbot_button, window  # noqa: E402,F401

pytestmark = pytest.mark.gui


def _mini_mias_like(folder):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for k, (woman, side, tissue) in enumerate([("W001", "R", "G"), ("W001", "L", "G"), ("W002", "R", "F"),
                                               ("W002", "L", "F"), ("W003", "R", "D"), ("W003", "L", "D")]):
        name = f"mdb{k + 1:03d}.png"
        Image.fromarray(rng.integers(0, 255, (64, 48), dtype=np.uint8)).save(folder / name)
        rows.append([f"mdb{k + 1:03d}", name, woman, side, tissue])
    labels = folder / "labels.csv"
    with open(labels, "w", newline="") as fh:
        csv.writer(fh).writerows([["refnum", "file", "woman", "side", "tissue"], *rows])
    return labels


def test_exam_view_with_a_side_column_and_no_view(qtbot, window, tmp_path):
    from app.pages.viewer_page import EXAM_VIEW_UNKNOWN_ROW, exam_position

    assert exam_position(None, "R") == (EXAM_VIEW_UNKNOWN_ROW, 0) and exam_position("", "L") == (2, 1)
    assert exam_position("CC", "R") == (0, 0) and exam_position("MLO", None) is None
    w = window
    labels = _mini_mias_like(tmp_path / "mias")
    _new_project(w, tmp_path / "p")
    page = w.import_page
    page.folder.setText(str(tmp_path / "mias"))
    page.labels.setText(str(labels))
    page._read_columns()
    page.label_column.setCurrentText("tissue")
    assert page.patient_column.currentData() == "woman"
    assert "side" in page.exam_columns_note.text()  # the page says where the exam view's sides come from
    qtbot.mouseClick(page.import_button, qtbot_button())
    _wait_idle(qtbot, w)
    entries = w.state.project.catalog().entries
    assert len(entries) == 6 and {e.laterality for e in entries} == {"R", "L"}
    first = sorted(entries, key=lambda e: e.path)[0]
    viewer = w.viewer_page
    w.state.browse.emit([first.image_id], "one")
    viewer.exam_button.setChecked(True)
    same = {e.image_id: e for e in entries if e.patient_key == first.patient_key}
    assert set(viewer.exam_panels) == set(same) and len(same) == 2
    for image_id, panel in viewer.exam_panels.items():
        row, col = viewer.exam_grid.getItemPosition(viewer.exam_grid.indexOf(panel))[:2]
        side = same[image_id].laterality
        assert (row, col) == (EXAM_VIEW_UNKNOWN_ROW, 0 if side == "R" else 1)
        assert panel.caption.text().startswith("view unknown " + ("right" if side == "R" else "left"))
    assert "view unknown" in viewer.exam_caption.text() and "below the grid" not in viewer.exam_caption.text()
    qtbot.waitUntil(lambda: all(p.pixels is not None for p in viewer.exam_panels.values()), timeout=LONG)
