"""The window's validation panels (issue 13), headless: Cross-validate and Find the best
head on the Train page (live leaderboard, Stop keeps the finished trials), the fold spread
and the operating point on the Results page."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402

from loff_cli import binary_png_project, loff_json  # noqa: E402
from test_app import window  # noqa: E402,F401  (the app's window fixture: one copy)

pytestmark = pytest.mark.gui
LONG = 240_000



def _open(w, path):
    from loff_core.project import Project

    w.state.set_project(Project.open(path))


@pytest.mark.slow
def test_cross_validate_and_find_the_best_head_in_the_window(qtbot, window, tmp_path, capsys):
    from app.workers import wire

    path = binary_png_project(tmp_path, capsys)
    w = window
    _open(w, path)
    page, panel = w.train_page, w.train_page.validation
    assert panel.cv_button.isEnabled() and panel.tune_button.isEnabled()
    page.head.setCurrentText("linear")
    page.epochs.setValue(3)
    panel.folds.setValue(3)
    qtbot.mouseClick(panel.cv_button, Qt.MouseButton.LeftButton)
    assert w.state.busy  # a worker job, not the GUI thread
    folds_seen = []
    wire(w.state.runner.job, partial={"fold": lambda fold: folds_seen.append((fold["fold"], panel.result.text()))})
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    # each finished fold reached the window while the others ran, and the panel showed it
    assert [k for k, _ in folds_seen] == [1, 2, 3]
    assert "fold 1/3 done: accuracy" in folds_seen[0][1]
    assert "cross-validation" in panel.result.text() and "±" in panel.result.text()
    assert "3 of 3 folds" in panel.result.text()

    # Find the best head; Stop after the first scored configuration keeps it and still retrains the winner
    panel.trials.setValue(3)
    stopped = []

    def stop_once(_entry):
        if not stopped:
            stopped.append(True)
            w.state.runner.stop()

    qtbot.mouseClick(panel.tune_button, Qt.MouseButton.LeftButton)
    wire(w.state.runner.job, partial={"trial": stop_once})  # after the page's own slot: its row is in
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    assert stopped and 1 <= panel.board.rowCount() < 4
    assert "best:" in panel.result.text() and "retrained on train + val as run" in panel.result.text()
    winner = panel.result.text().split("as run <b>")[1].split("</b>")[0]

    # Results: the winner's fold spread (its tune group) beside its metrics
    results = w.results_page
    results.refresh()
    results.run.setCurrentText(winner)
    qtbot.mouseClick(results.evaluate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: results.result is not None and results.result["run"] == winner, timeout=LONG)
    assert "fold spread (tune group" in results.extras.spread.text()
    assert "decision:" in results.extras.operating.text()


@pytest.mark.slow
def test_find_the_best_head_honours_the_form_fills_in_marks_pruned_and_shows_time_left(qtbot, window, tmp_path,
                                                                                        capsys, monkeypatch):
    """Issue 23 item 5: the search's length axis is the form's epochs (and twice them), not
    TrainConfig's 30; the board fills in as trials finish, pruned ones marked and last; the
    strip says the time left; Cross-validate trains with the page's More settings."""
    from loff_core import search
    from app.workers import wire

    monkeypatch.setattr(search, "PRUNE_MARGIN", -1.0)  # every trial after the first complete one is pruned
    path = binary_png_project(tmp_path, capsys)
    w = window
    _open(w, path)
    page, panel = w.train_page, w.train_page.validation
    page.epochs.setValue(2)
    page.more["batch_size"].setValue(8)
    panel.folds.setValue(3)
    qtbot.mouseClick(panel.cv_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    group = next((path / "groups").iterdir())
    cv = json.loads((group / "group.json").read_text())
    assert (cv["train_config"]["batch_size"], cv["train_config"]["epochs"]) == (8, 2)

    panel.trials.setValue(3)
    rows, lines = [], []
    qtbot.mouseClick(panel.tune_button, Qt.MouseButton.LeftButton)
    job = w.state.runner.job
    wire(job, partial={"trial": lambda _e: rows.append(panel.board.rowCount())})
    job.progress.connect(lambda done, total, message: lines.append(message))
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    assert rows == [1, 2, 3, 4]  # the baseline, then each trial as it finished
    folds = [panel.board.item(r, 4).text() for r in range(panel.board.rowCount())]
    assert folds[:2] == ["3", "3"] and folds[2:] == ["1 (pruned)", "1 (pruned)"]
    assert "(pruned)" not in panel.board.item(0, 4).text() and "best:" in panel.result.text()
    assert any(m.startswith("trial 2/3 (fold 1/3)") and "best so far" in m and "left" in m for m in lines)
    tuned = json.loads(next(g for g in (path / "groups").iterdir() if g.name.endswith("tune")).joinpath(
        "group.json").read_text())
    epochs = {e["config"].get("epochs") for e in tuned["leaderboard"]} - {None}
    assert epochs and epochs <= {2, 4}  # the form's epochs or twice them
    assert "pruned" in panel.result.text()


def test_find_the_best_head_has_the_command_lines_default_budget(qtbot, window, tmp_path, capsys, monkeypatch):
    """The window's default search stops where a plain `loff tune` does (DEFAULT_TUNE_TRIALS
    trials, no new one after DEFAULT_TUNE_BUDGET); an emptied budget is no limit; a budget that
    is not a duration is refused with its text and starts nothing."""
    from loff_core import steps
    from loff_core.search import stop_rule
    from loff_core.settings import DEFAULT_TUNE_BUDGET

    asked = []

    def fake_tune(project, settings, progress=None):
        asked.append(settings)
        raise RuntimeError("stopped by the test")
    monkeypatch.setattr(steps, "tune", fake_tune)
    path = binary_png_project(tmp_path, capsys)
    w = window
    _open(w, path)
    panel = w.train_page.validation
    qtbot.mouseClick(panel.tune_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    assert (asked[-1].trials, asked[-1].budget) == stop_rule(None, None)
    assert asked[-1].budget == DEFAULT_TUNE_BUDGET
    panel.budget.setText("")
    qtbot.mouseClick(panel.tune_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    assert asked[-1].budget is None
    panel.budget.setText("soon")
    qtbot.mouseClick(panel.tune_button, Qt.MouseButton.LeftButton)
    assert not w.state.busy and len(asked) == 2
    assert "'soon' is not a duration" in panel.result.text()


def test_results_page_saves_the_operating_point(qtbot, window, tmp_path, capsys):
    path = binary_png_project(tmp_path, capsys)
    run = loff_json(capsys, "train", path, "--head", "linear", "--epochs", "3", "--device", "cpu")["run"]
    w = window
    _open(w, path)
    results = w.results_page
    results.refresh()
    assert "no cross-validation yet" in results.extras.spread_for(w.state.project_state, run)
    qtbot.mouseClick(results.evaluate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: results.result is not None, timeout=LONG)
    assert results.extras.save_button.isEnabled()
    assert "threshold" in results.extras.operating.text()  # fitted on val at training
    results.positive.setCurrentIndex(1)
    results.threshold.setValue(730)
    qtbot.mouseClick(results.extras.save_button, Qt.MouseButton.LeftButton)
    record = json.loads((path / "runs" / run / "run.json").read_text())
    assert record["operating_point"]["threshold"]["value"] == pytest.approx(0.73)
    assert record["operating_point"]["threshold"]["criterion"] == "manual"
    # evaluating again decides with it
    qtbot.mouseClick(results.evaluate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    preds = results.result["predictions"]
    assert all((p["predicted"] == "pneumonia") == (p["probabilities"][1] >= 0.73) for p in preds)


def test_import_page_takes_csaw_m_official_split_and_says_how(qtbot, window, tmp_path):
    from loff_core.project import Project

    root = tmp_path / "CSAW-M"
    header = "Filename;Label;If_cancer"
    for split, count in (("train", 24), ("test", 8)):
        rows = [header]
        for i in range(count):
            name = f"_{split}_{i:04d}.png"
            path = root / "images" / "preprocessed" / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 16), i * 5, np.uint8)).save(path)
            rows.append(f"{name};{1 + i % 8};0")
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"CSAW-M_{split}.csv").write_text("\n".join(rows) + "\n")
    w = window
    w.state.set_project(Project.create(tmp_path / "p"))
    page = w.import_page
    page.folder.setText(str(root / "images" / "preprocessed"))
    page.labels.setText(str(root / "labels" / "CSAW-M_train.csv"))
    page._read_columns()
    assert page.extras.split_column.currentData() is None  # CSAW-M has no split column
    page.extras.test_csv.setText(str(root / "labels" / "CSAW-M_test.csv"))
    page.task.setCurrentText("ordinal")
    qtbot.mouseClick(page.import_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.state.busy and page.model.rowCount() == 32, timeout=LONG)
    project = w.state.project
    splits = project.import_summary().splits
    assert splits["test"] == 8 and splits["train"] + splits["val"] == 24 and splits["val"] > 0
    text = page.extras.assigned.text()
    assert "labels CSVs per split (train: CSAW-M_train.csv, test: CSAW-M_test.csv)" in text
    assert "val carved from train by patient" in text and "patients from:" in text


def test_the_search_plan_is_a_note_and_the_running_panel_fits_1280x720(qtbot, window, tmp_path, capsys, monkeypatch):
    """What the search plans and what it will cost reach Messages as notes ("Note: ..."), not
    warnings (they were "Warning: default search: ..."); a real warning stays one. While a long
    progress line shows, the Validate panel is no wider than its pane at 1280 x 720: the line
    ends in "…" with the whole text as its tooltip (it used to widen the row, with a horizontal
    scroll bar and Stop off-screen, and the budget box squeezed to "50s")."""
    from loff_core import steps

    def fake_tune(project, settings, progress=None):
        progress.inform("default search: 8 trials x 5 folds, at most 2 min 30 s (Optuna TPE, seed 0)")
        progress.notice("the weights file changed since the cache was made")
        progress.report(3, 40, "tune: trial 2/8 (attention, lr 0.0005, augment strong, block -2): fold 3/5, "
                                "best so far auc 0.812, about 1 min 20 s left")
        while not progress.stop_requested:
            import time
            time.sleep(0.02)
        raise RuntimeError("stopped by the test")
    monkeypatch.setattr(steps, "tune", fake_tune)
    path = binary_png_project(tmp_path, capsys)
    w = window
    w.resize(1280, 720)
    w.show()
    _open(w, path)
    page = w.train_page
    w.tabs.setCurrentWidget(page)
    page.validation_box.set_expanded(True)
    panel = page.validation
    seen = []
    w.state.message.connect(lambda level, text: seen.append((level, text)))
    qtbot.mouseClick(panel.tune_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "best so far" in panel.strip.label.text(), timeout=LONG)
    qtbot.wait(50)
    assert ("note", "default search: 8 trials x 5 folds, at most 2 min 30 s (Optuna TPE, seed 0)") in seen
    assert ("warning", "the weights file changed since the cache was made") in seen
    texts = [w.problems.item(i).text() for i in range(w.problems.count())]
    assert any(t.startswith("Note: default search:") for t in texts)
    assert not any(t.startswith("Warning: default search") for t in texts)
    scroll = page.validation_scroll
    assert not scroll.horizontalScrollBar().isVisible(), (panel.sizeHint(), scroll.viewport().width())
    assert panel.strip.stop_button.isVisible() and panel.strip.stop_button.isEnabled()
    stop = panel.strip.stop_button
    assert stop.mapTo(scroll.viewport(), stop.rect().topRight()).x() <= scroll.viewport().width()
    assert panel.strip.label.toolTip() == panel.strip.label.text()
    budget = panel.budget
    assert budget.width() >= budget.fontMetrics().horizontalAdvance(budget.text())
    qtbot.mouseClick(stop, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
