"""Build a model (app/build_model.py) driven on the demo: the Import page's button opens the
dialog filled from the page, Build runs the whole path as one job whose progress view names
the step and the time left, and Stop keeps what is finished (a second Build reuses it)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from test_app import qtbot_button, window  # noqa: E402,F401

pytestmark = pytest.mark.gui
#: a whole build on the loaded 2-core machine (extraction and one search) takes 1-2 minutes
WAIT = 400_000


@pytest.fixture()
def demo(tmp_path, monkeypatch):
    """A small demo project (synthetic, 12 patients, ordinal), and the smallest real
    extraction in place of the default backbone (tests/test_auto.py checks the default)."""
    from loff_core import auto
    from loff_core.backbones import BackboneSpec
    from loff_core.demo import create_demo_project

    monkeypatch.setattr(auto, "default_spec", lambda settings=None: BackboneSpec(
        name="vit_tiny_patch16_224", random_init=True, image_size=32, grid=2))
    return create_demo_project(tmp_path / "demo", n_patients=12)


def _dialog(qtbot, w, demo):
    w.state.set_project(demo)
    page = w.import_page
    assert page.build_button.isVisible()  # images and labels are in
    qtbot.mouseClick(page.build_button, qtbot_button())
    dialog = w.build_dialog
    assert Path(dialog.folder.text()) == Path(demo.images_root())
    assert dialog.label_column.currentData() == "masking_level" and dialog.project.text() == str(demo.root)
    assert dialog.budget.text() == "5m"  # AutoSettings' default, as the command line writes it
    dialog.budget.setText("4s")
    return dialog


def test_build_stop_and_build_again_on_the_demo(qtbot, window, demo):  # noqa: F811
    from loff_core.auto import parse_step_message

    w = window
    dialog = _dialog(qtbot, w, demo)
    job = dialog.start()
    assert job is not None and dialog.pages.currentIndex() == 1

    def stop_at_the_search(done, total, message):
        parsed = parse_step_message(message)
        if parsed and parsed["index"] >= 3 and not job.progress_state.stop_requested:
            dialog.strip.stop_button.click()
    job.progress.connect(stop_at_the_search)
    qtbot.waitUntil(lambda: job.done and not w.state.busy, timeout=WAIT)
    first = dialog.result
    assert first is not None and first["stopped_after"] == "find the best head", dialog.banner.text()
    assert first["steps"]["extract"]["done"] == "ran" and "Stopped" in dialog.step.text()
    assert "head" not in first and not demo.runs()  # nothing exported from a search cut short

    steps_seen: list[str] = []
    lefts: list[str] = []
    qtbot.mouseClick(dialog.build_button, qtbot_button())  # Build again: what is finished is reused
    again = dialog.job
    assert again is not job and w.state.busy
    again.progress.connect(lambda d, n, m: (steps_seen.append(dialog.step.text()), lefts.append(dialog.left.text())))
    qtbot.waitUntil(lambda: again.done and not w.state.busy, timeout=WAIT)
    result = dialog.result
    assert result is not first and result["stopped_after"] is None, dialog.banner.text()
    assert [s["done"] for s in result["steps"].values()] == ["reused", "reused", "ran", "ran", "ran"]
    for n, step in enumerate(("import", "extract", "find the best head", "export", "report"), 1):
        assert any(f"Step {n} of 5: {step}" in s for s in steps_seen), steps_seen
    assert any(text.startswith("about ") and text.endswith(" left") for text in lefts)  # the budget's time left
    assert (Path(result["head"]) / "card.json").is_file() and Path(result["report"]).is_file()
    summary = dialog.summary.toPlainText()
    assert "test split" in summary and result["report"] in summary and "Done" in dialog.step.text()
    # the window reopened the project: its pages show the new run
    assert w.state.project.root == demo.root
    assert [r.run_id for r in w.state.project.runs()] == [result["search"]["run"]]


def test_the_form_refuses_a_bad_budget(qtbot, window, demo):  # noqa: F811
    dialog = _dialog(qtbot, window, demo)
    dialog.budget.setText("soon")
    assert dialog.start() is None and "is not a duration" in dialog.banner.text()
    assert dialog.pages.currentIndex() == 0 and not window.state.busy


def test_file_menu_opens_it(qtbot, window, demo):  # noqa: F811
    window.state.set_project(demo)
    action = next(a for a in window.menuBar().actions()[0].menu().actions() if a.text() == "&Build a model...")
    action.trigger()
    assert window.build_dialog.isVisible() and window.build_dialog.project.text() == str(demo.root)


def test_another_folder_asks_before_replacing_the_catalog(qtbot, window, demo, tmp_path):  # noqa: F811
    dialog = _dialog(qtbot, window, demo)
    other = tmp_path / "other"
    other.mkdir()
    dialog.folder.setText(str(other))
    asked: list[str] = []
    dialog.confirm = lambda text: asked.append(text) or False  # the user says No
    assert dialog.start() is None and not window.state.busy
    assert len(asked) == 1 and str(demo.images_root()) in asked[0] and "replaces its catalog" in asked[0]


def test_browse_buttons_fill_the_fields_and_read_the_labels_columns(qtbot, window, tmp_path, monkeypatch):  # noqa: F811
    """Import page and Build a model share one chooser (widgets.choose_into): a chosen labels
    CSV fills the field and its columns; a cancelled dialog changes nothing."""
    from PySide6.QtWidgets import QFileDialog

    from app.build_model import BuildModelDialog

    labels = tmp_path / "labels.csv"
    labels.write_text("file,density,woman\na.png,F,1\n", encoding="utf-8")
    answers = {"getOpenFileName": (str(labels), "CSV"), "getExistingDirectory": str(tmp_path)}
    opened_at = []

    def answer(name):
        return staticmethod(lambda parent, title, start="", *a: (opened_at.append((title, start)), answers[name])[1])
    for name in answers:
        monkeypatch.setattr(QFileDialog, name, answer(name))
    dialog = BuildModelDialog(window.state)
    page = window.import_page
    for owner in (dialog, page):
        owner._choose_folder()
        assert owner.folder.text() == str(tmp_path)
        owner._choose_csv()
        assert owner.labels.text() == str(labels) and opened_at[-1] == ("Labels CSV", str(tmp_path))
        assert "density" in [owner.label_column.itemText(i) for i in range(owner.label_column.count())]
    dialog._choose_project()
    assert dialog.project.text() == str(tmp_path)
    answers["getExistingDirectory"] = ""  # cancelled
    dialog._choose_project()
    assert dialog.project.text() == str(tmp_path)
