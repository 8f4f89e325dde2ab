"""The window at 1280 x 720 (the smallest screen it is made for): the Import page's table
gets most of the height once the project has images (its form folds to one line), the
Train page's curves keep their height and the runs table two rows, and
nothing of another project's import is left on a new project's Import page."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from test_app import _import, _new_project, images, window  # noqa: E402,F401

pytestmark = pytest.mark.gui


def test_import_table_gets_the_height_at_1280_x_720(qtbot, window, images, tmp_path):
    w = window
    w.resize(1280, 720)
    _new_project(w, tmp_path / "p")
    page = w.import_page
    assert page.import_box.expanded and page.folder.isVisible()  # a new project: the form to fill in
    _import(qtbot, w, images)
    qtbot.wait(50)
    assert not page.import_box.expanded and not page.folder.isVisible()  # folded: the table is what to see
    assert page.import_button.isVisible() and "24 images from" in page.import_box.summary.text()
    table = page.table
    rows_shown = table.rowAt(table.viewport().height() - 1)
    assert rows_shown >= 10, f"only {rows_shown} rows visible at 1280 x 720"  # before: 2
    assert table.viewport().height() > 0.3 * w.height()
    page.import_box.toggle.click()  # one click brings the form back
    assert page.folder.isVisible()
    # a new project: the form is open again and the previous import's split / patient notes are gone
    assigned = page.extras.assigned.text()
    assert assigned
    _new_project(w, tmp_path / "q")
    assert page.import_box.expanded and page.extras.assigned.text() == "" and page.import_box.summary.text() == ""


def test_train_curves_get_the_height_at_1280_x_720(qtbot, window, tmp_path):
    w = window
    w.resize(1280, 720)
    _new_project(w, tmp_path / "p")
    w.tabs.setCurrentIndex(2)
    qtbot.wait(50)
    page = w.train_page
    assert not page.validation_box.expanded  # folded to one line until opened
    # before: 40 px of 720; 170 px now that the runs table keeps two rows (a project with
    # features hides the empty status line: 23 px more)
    assert page.loss_plot.height() >= 0.22 * w.height(), page.loss_plot.height()
    page.validation_box.toggle.click()
    qtbot.wait(50)
    assert page.validation.cv_button.isVisible() and page.loss_plot.height() >= 120  # the curves keep a minimum
    runs = page.runs  # and the runs table keeps two rows in view (it kept one: header + a row)
    runs.setRowCount(8)
    page.validation_box.toggle.click()
    qtbot.wait(50)
    assert runs.viewport().height() >= 2 * runs.verticalHeader().defaultSectionSize(), runs.viewport().height()
    assert page.loss_plot.height() >= 0.22 * w.height(), page.loss_plot.height()
