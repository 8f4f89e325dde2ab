"""The Import page on a project that already has images: the fields show how it was
imported, and a re-import asks first, so labels are never silently replaced."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from test_app import _import, _new_project, _wait_idle, images, qtbot_button, window  # noqa: E402,F401

pytestmark = pytest.mark.gui


def test_reopened_project_keeps_its_labels_on_re_import(qtbot, window, images, tmp_path):  # noqa: F811
    from loff_core.project import Project

    w, page = window, window.import_page
    folder, labels = images
    _new_project(w, tmp_path / "p")
    _import(qtbot, w, images)
    classes = w.state.project.settings.classes
    assert len(classes) >= 2 and w.state.project.settings.labels_source["label_column"] == "masking_level"

    _new_project(w, tmp_path / "other")  # another project: its fields are empty, not the first one's
    assert page.folder.text() == "" and page.labels.text() == ""

    w.state.set_project(Project.open(tmp_path / "p"))  # reopened later (e.g. the next day)
    assert page.folder.text() == str(folder)
    assert page.labels.text() == str(labels.resolve())
    assert page.label_column.currentData() == "masking_level" and page.patient_column.currentData() == "patient"

    asked: list[str] = []
    page.confirm = lambda text: asked.append(text) or False  # the user says No
    version = w.state.project.settings.catalog_version
    qtbot.mouseClick(page.import_button, qtbot_button())
    assert len(asked) == 1 and "replaces the catalog of 24 images" in asked[0] and labels.name in asked[0]
    assert not w.state.busy and w.state.project.settings.catalog_version == version

    page.confirm = lambda text: asked.append(text) or True  # Yes: same labels as before
    qtbot.mouseClick(page.import_button, qtbot_button())
    _wait_idle(qtbot, w)
    settings = Project.open(tmp_path / "p").settings
    assert settings.catalog_version == version + 1 and settings.classes == classes

    page.labels.setText("")  # labels from folder names now: the question says so
    page.confirm = lambda text: asked.append(text) or False
    qtbot.mouseClick(page.import_button, qtbot_button())
    assert "sub-folder names" in asked[-1]


@pytest.mark.parametrize("remedy, params, window_words", [
    ("choose_weights_or_random", {}, "choose a local weights file (.safetensors or .pth) or random weights on the "
                                     "Cache page"),
    ("device_cpu", {}, "choose device CPU"),
    ("extract", {"project": "/p"}, "run Extract on the Cache page"),
    ("train", {"project": "/p"}, "train a head on the Train page"),
    ("choose_label_column", {}, "choose the label column"),
])
def test_engine_messages_name_controls_in_the_window(window, remedy, params, window_words):  # noqa: F811
    """An engine error as the window shows it: its remedy worded from the window's table
    (app/remedies.py), never a command or an option (the terminal's words)."""
    from app.remedies import window_text
    from loff_core.cli.remedies import terminal_text
    from loff_core.errors import LoffError

    error = LoffError("something is missing", "/p", remedy, **params)
    assert "--" in terminal_text(error) or "`loff" in terminal_text(error)  # the terminal's words
    window.show_message("error", window_text(error))
    shown = window.problems.item(window.problems.count() - 1).text()
    assert shown.startswith("Problem: /p: something is missing; ") and shown.endswith(window_words), shown
    assert "--" not in shown and "`loff" not in shown, shown


def test_a_job_signal_is_never_lost_to_a_slow_caller(qtbot, window):  # noqa: F811
    """Pages connect a job's signals after `state.start` returns; the job must not be able
    to finish before that (its thread starts on the next turn of the event loop)."""
    import time

    job = window.state.start("instant", lambda progress: 42)
    time.sleep(0.3)  # a caller that takes its time before connecting
    got = []
    job.finished.connect(got.append)
    qtbot.waitUntil(lambda: not window.state.busy, timeout=10_000)
    assert got == [42]


def test_patient_ids_in_folder_names_are_not_shown(qtbot, window, images, tmp_path):  # noqa: F811
    """The synthetic site names each patient's folder and files after the PatientID
    (SYN-0001/SYN-0001_L_CC.dcm), as many real exports do: the window shows the
    de-identified key in their place, in the table, the captions and the viewer's list."""
    from test_app import _visible_texts

    w = window
    _new_project(w, tmp_path / "p")
    _import(qtbot, w, images)
    entries = w.state.project.catalog().entries
    assert all("SYN-0" in e.path for e in entries)  # the real paths do name the patients
    w.import_page.table.selectRow(3)
    w.state.browse.emit([e.image_id for e in entries[:5]], "five images")
    for page in (w.import_page, w.viewer_page):
        w.tabs.setCurrentWidget(page)
        qtbot.wait(200)
        shown = "\n".join(_visible_texts(w))
        assert "patient-" in shown
        assert "SYN-0" not in shown, [t for t in _visible_texts(w) if "SYN-0" in t][:3]


def test_backbone_note_follows_the_name_even_when_typed(window):  # noqa: F811
    page = window.cache_page
    page.backbone.setCurrentIndex(0)
    assert "M parameters" in page.note.text()
    page.backbone.setEditText("convnext_tiny")  # a timm name typed by the user
    assert "any timm model name" in page.note.text()
    page.backbone.setEditText("vit_tiny_patch16_224")
    assert page.note.text().startswith("5.7 M parameters")


def test_the_qt_binding_keeps_its_references_to_none():
    """PySide6 6.12.0 dropped a reference to None on each call that returns nothing; on
    Python 3.11 the window then aborted ("deallocating None") after a few hundred plot
    repaints. pyproject pins PySide6 below 6.12; this catches a binding with that bug."""
    import sys

    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QImage, QPainter, QPen

    image = QImage(64, 64, QImage.Format.Format_ARGB32)
    painter = QPainter(image)
    before = sys.getrefcount(None)
    for _ in range(2000):
        painter.setPen(QPen())
        painter.drawLine(QPointF(0, 0), QPointF(9, 9))
    lost = before - sys.getrefcount(None)
    painter.end()
    assert lost < 100, f"the Qt binding lost {lost} references to None in 4,000 calls"
