"""The desktop app driven like a user would, headless (pytest-qt, QT_QPA_PLATFORM=offscreen):
import a folder, extract with a small random-init backbone, train, evaluate, select a
confusion-matrix cell, view its images, export; the event loop keeps answering while
jobs run; closing during a job stops it; no QThread is left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QTimer  # noqa: E402

from loff_core.synthetic import write_synthetic_dataset  # noqa: E402

pytestmark = pytest.mark.gui
LONG = 120_000


@pytest.fixture()
def window(qtbot):
    from app.main import MainWindow

    w = MainWindow()
    w.confirm_close = True  # no dialog in tests
    qtbot.addWidget(w)
    w.show()
    yield w
    w.state.runner.shutdown()
    from app.workers import running_threads

    assert not running_threads(), "a QThread was left running"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site") / "images"
    labels = write_synthetic_dataset(folder, n_patients=12, size=(96, 80), seed=4)
    return folder, labels


def _wait_idle(qtbot, w, timeout=LONG):
    qtbot.waitUntil(lambda: not w.state.busy, timeout=timeout)


def _new_project(w, path):
    from loff_core.project import Project

    w.state.set_project(Project.create(path))


def _import(qtbot, w, images):
    folder, labels = images
    page = w.import_page
    page.folder.setText(str(folder))
    page.labels.setText(str(labels))
    page._read_columns()
    assert page.label_column.currentData() == "masking_level" and page.patient_column.currentData() == "patient"
    page.task.setCurrentText("classification")
    qtbot.mouseClick(page.import_button, qtbot_button())
    _wait_idle(qtbot, w)
    qtbot.waitUntil(lambda: page.model.rowCount() == 24, timeout=LONG)


def qtbot_button():
    from PySide6.QtCore import Qt

    return Qt.MouseButton.LeftButton


def _extract(qtbot, w):
    page = w.cache_page
    page.backbone.setCurrentText("vit_tiny_patch16_224")
    page.random_init.setChecked(True)
    page.image_size.setValue(32)
    page.grid.setValue(2)
    qtbot.mouseClick(page.extract_button, qtbot_button())
    _wait_idle(qtbot, w)
    qtbot.waitUntil(lambda: w.state.project.settings.active_cache is not None, timeout=LONG)


def test_whole_story_through_the_window(qtbot, window, images, tmp_path):
    w = window
    _new_project(w, tmp_path / "project")
    assert not w.train_page.train_button.isEnabled() and not w.predict_page.export_button.isEnabled()
    _import(qtbot, w, images)
    assert "24 images, 24 labelled" in w.import_page.counts.text()
    assert "SYN-" not in w.import_page.counts.text()  # patient IDs are never shown
    assert not w.train_page.train_button.isEnabled()  # no cache yet
    _extract(qtbot, w)
    assert "24 of 24 images done" in w.cache_page.info.text()

    page = w.train_page
    assert page.train_button.isEnabled()
    page.head.setCurrentText("attention")
    page.epochs.setValue(2)
    qtbot.mouseClick(page.train_button, qtbot_button())
    _wait_idle(qtbot, w)
    qtbot.waitUntil(lambda: page.runs.rowCount() == 1, timeout=LONG)
    assert len(page.history) == 2 and len(page.train_curve.getData()[0]) == 2
    assert page.runs.item(0, 7).text() == "up to date"

    results = w.results_page
    assert results.evaluate_button.isEnabled()
    results.split.setCurrentText("test")
    qtbot.mouseClick(results.evaluate_button, qtbot_button())
    _wait_idle(qtbot, w)
    qtbot.waitUntil(lambda: results.result is not None, timeout=LONG)
    r = results.result
    assert results.metrics.rowCount() >= 3 and results.confusion.rowCount() == len(r["classes"])
    # click the fullest cell: the viewer then steps through exactly its images
    cm = r["confusion_matrix"]
    i, j = max(((a, b) for a in range(len(cm)) for b in range(len(cm))), key=lambda ab: cm[ab[0]][ab[1]])
    results.select_cell(i, j)
    want = [p["image_id"] for p in r["predictions"] if p["label"] == r["classes"][i] and p["predicted"] == r["classes"][j]]
    assert results.cell_ids == want and len(want) == cm[i][j] > 0
    qtbot.mouseClick(results.view_cell, qtbot_button())
    viewer = w.viewer_page
    assert w.tabs.currentWidget() is viewer and viewer.ids == want
    assert viewer.image_list.count() == len(want)
    qtbot.waitUntil(lambda: want[0] in viewer.explained, timeout=LONG)
    _wait_idle(qtbot, w)
    assert viewer.heat is not None and viewer.heat.max() <= 1.0 and "predicted:" in viewer.details.text()

    predict = w.predict_page
    assert predict.export_button.isEnabled()
    predict.export_dir.setText(str(tmp_path / "export"))
    qtbot.mouseClick(predict.export_button, qtbot_button())
    _wait_idle(qtbot, w)
    qtbot.waitUntil(lambda: (tmp_path / "export" / "card.json").exists(), timeout=LONG)
    card = json.loads((tmp_path / "export" / "card.json").read_text())
    assert card["classes"] == r["classes"]

    # predict two new files with the exported head, save the table as CSV
    files = sorted(images[0].rglob("*.dcm"))[:2] or sorted(p for p in images[0].rglob("*") if p.suffix != ".csv")[:2]
    predict.files.setText(";".join(str(f) for f in files))
    predict.head_dir.setText(str(tmp_path / "export"))
    qtbot.mouseClick(predict.predict_button, qtbot_button())
    _wait_idle(qtbot, w)
    assert predict.table.rowCount() == 2 and predict.save_button.isEnabled()
    predict.save_csv(str(tmp_path / "predictions.csv"))
    assert len((tmp_path / "predictions.csv").read_text().strip().splitlines()) == 3


def test_event_loop_keeps_answering_while_jobs_run(qtbot, window, images, tmp_path):
    """A 20 ms timer keeps firing within 100 ms while extraction and training run in the
    worker; the long call never runs on the GUI thread. Measured here: 35-43 ms alone,
    up to 55 ms with a second copy of this test on the same 2 cores."""
    w = window
    # as `loff-studio` does soon after start (AppState.warm_up_engine): imported for the
    # first time inside a job, torch, scipy.stats... stalled the event loop up to 0.32 s
    w.state.warm_up_engine().join()
    _new_project(w, tmp_path / "project")
    _import(qtbot, w, images)
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(20)
    seen_threads: list[str] = []
    original = w.state.project.extract

    def spy(*a, **kw):
        seen_threads.append(threading.current_thread().name)
        return original(*a, **kw)
    w.state.project.extract = spy
    _extract(qtbot, w)
    original_train = w.state.project.train

    def spy_train(*a, **kw):
        seen_threads.append(threading.current_thread().name)
        return original_train(*a, **kw)
    w.state.project.train = spy_train
    w.train_page.head.setCurrentText("attention")
    w.train_page.epochs.setValue(3)
    qtbot.mouseClick(w.train_page.train_button, qtbot_button())
    _wait_idle(qtbot, w)
    timer.stop()
    assert len(w.state.project.runs()) == 1
    assert len(seen_threads) == 2 and threading.main_thread().name not in seen_threads
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    print(f"longest pause of the event loop while jobs ran: {max(gaps) * 1000:.0f} ms over {len(ticks)} ticks")
    assert len(ticks) > 10 and max(gaps) < 0.1, f"longest pause of the event loop {max(gaps):.3f} s"


def test_stop_cancel_and_close_while_training(qtbot, window, images, tmp_path):
    w = window
    _new_project(w, tmp_path / "project")
    _import(qtbot, w, images)
    _extract(qtbot, w)
    page = w.train_page
    page.epochs.setValue(100000)
    page.head.setCurrentText("linear")
    # Cancel: nothing is saved
    qtbot.mouseClick(page.train_button, qtbot_button())
    qtbot.waitUntil(lambda: len(page.history) >= 1, timeout=LONG)
    qtbot.mouseClick(page.strip.cancel_button, qtbot_button())
    _wait_idle(qtbot, w)
    assert w.state.project.runs() == []
    # Stop: the best head so far is kept as a run
    qtbot.mouseClick(page.train_button, qtbot_button())
    qtbot.waitUntil(lambda: len(page.history) >= 2, timeout=LONG)
    qtbot.mouseClick(page.strip.stop_button, qtbot_button())
    _wait_idle(qtbot, w)
    runs = w.state.project.runs()
    assert len(runs) == 1 and runs[0].record["stopped"] == "user_stop"
    # Close while training: the job stops, the thread ends, the project stays intact
    qtbot.mouseClick(page.train_button, qtbot_button())
    qtbot.waitUntil(lambda: w.state.busy, timeout=LONG)
    w.close()
    assert not w.state.busy
    assert len(w.state.project.runs()) == 1


def test_errors_are_messages_not_tracebacks(qtbot, window, tmp_path):
    w = window
    _new_project(w, tmp_path / "project")
    w.import_page.folder.setText(str(tmp_path / "does-not-exist"))
    qtbot.mouseClick(w.import_page.import_button, qtbot_button())
    _wait_idle(qtbot, w)
    texts = [w.problems.item(i).text() for i in range(w.problems.count())]
    assert any("does-not-exist: not a folder" in t for t in texts), texts
    assert not any("Traceback" in t for t in texts)


def test_window_module_does_not_import_torch_or_h5py():
    code = ("import os, sys; os.environ['QT_QPA_PLATFORM'] = 'offscreen'; "
            "from PySide6.QtWidgets import QApplication; app = QApplication([]); "
            "from app.main import MainWindow; w = MainWindow(); "
            "sys.exit(1 if {'torch', 'h5py'} & set(sys.modules) else 0)")
    env = {**os.environ, "LOFF_STUDIO_CONFIG_DIR": "/tmp/loff-studio-test-config"}
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[1]).returncode == 0


def test_suggested_backbones_match_the_engine():
    from app.pages.cache_page import SUGGESTED
    from loff_core.backbones import SUGGESTED as ENGINE

    assert [s[0] for s in SUGGESTED] == [s["name"] for s in ENGINE]


def test_worker_errors_one_job_at_a_time(qtbot, tmp_path):
    """An unexpected exception is one line (details in the log); a second job is refused
    while one runs; stop() lets the job finish with what it has."""
    from app.state import AppState
    from app.workers import running_threads

    state = AppState()
    messages: list[tuple[str, str]] = []
    state.message.connect(lambda level, text: messages.append((level, text)))

    def boom(progress):
        raise ZeroDivisionError("division by zero")
    state.start("boom", boom)  # it may fail before a waitSignal could be entered: watch the messages
    qtbot.waitUntil(lambda: any(level == "error" for level, _ in messages), timeout=LONG)
    text = next(t for level, t in messages if level == "error")
    assert text.startswith("Unexpected error in boom: ZeroDivisionError") and "\n" not in text
    qtbot.waitUntil(lambda: not state.busy, timeout=LONG)

    seen: list[str] = []

    def slow(progress):
        seen.append(threading.current_thread().name)
        while not progress.stop_requested:
            progress.check()
            time.sleep(0.01)
        return "kept"
    job = state.start("slow", slow)
    assert state.start("second", slow) is None and "still running" in messages[-1][1]
    with qtbot.waitSignal(job.finished, timeout=LONG) as blocker:
        job.stop()
    assert blocker.args == ["kept"] and seen[0] != threading.main_thread().name
    qtbot.waitUntil(lambda: not state.busy, timeout=LONG)
    assert not running_threads()


def _visible_texts(w) -> list[str]:
    """Every text the window shows: labels, buttons, list items, table cells, titles."""
    from PySide6.QtWidgets import QAbstractButton, QLabel, QLineEdit, QListWidget, QTableView, QTableWidget

    texts = [w.windowTitle()]
    texts += [x.text() for x in w.findChildren(QLabel)] + [x.text() for x in w.findChildren(QAbstractButton)]
    texts += [x.text() for x in w.findChildren(QLineEdit)]
    for lw in w.findChildren(QListWidget):
        texts += [lw.item(i).text() for i in range(lw.count())]
    for tw in w.findChildren(QTableWidget):
        texts += [tw.item(r, c).text() for r in range(tw.rowCount()) for c in range(tw.columnCount())
                  if tw.item(r, c) is not None]
    for tv in w.findChildren(QTableView):
        m = tv.model()
        texts += [str(m.data(m.index(r, c))) for r in range(m.rowCount()) for c in range(m.columnCount())]
    return texts


def test_patient_identifiers_stay_out_of_the_window_log_and_csv(qtbot, window, tmp_path):
    """Sentinel identifiers in the DICOM headers appear in no text the window shows, not in
    the app's log, its settings, the predictions CSV or the export."""
    from app.state import setup_logging
    from test_hardening import SENTINELS, _plant_sentinels

    folder = tmp_path / "site" / "images"
    labels = write_synthetic_dataset(folder, n_patients=12, size=(96, 80), seed=4)
    _plant_sentinels(folder)
    log_path = setup_logging()
    w = window
    _new_project(w, tmp_path / "project")
    _import(qtbot, w, (folder, labels))
    _extract(qtbot, w)
    w.train_page.epochs.setValue(1)
    qtbot.mouseClick(w.train_page.train_button, qtbot_button())
    _wait_idle(qtbot, w)
    results = w.results_page
    results.split.setCurrentText("test")
    qtbot.mouseClick(results.evaluate_button, qtbot_button())
    _wait_idle(qtbot, w)
    qtbot.waitUntil(lambda: results.result is not None, timeout=LONG)
    cm = results.result["confusion_matrix"]
    i, j = next((a, b) for a in range(len(cm)) for b in range(len(cm)) if cm[a][b])
    results.select_cell(i, j)
    qtbot.mouseClick(results.view_cell, qtbot_button())
    qtbot.waitUntil(lambda: w.viewer_page.ids[0] in w.viewer_page.explained, timeout=LONG)
    _wait_idle(qtbot, w)
    predict = w.predict_page
    predict.export_dir.setText(str(tmp_path / "export"))
    qtbot.mouseClick(predict.export_button, qtbot_button())
    _wait_idle(qtbot, w)
    predict.files.setText(str(folder))
    predict.head_dir.setText(str(tmp_path / "export"))
    qtbot.mouseClick(predict.predict_button, qtbot_button())
    _wait_idle(qtbot, w)
    assert predict.table.rowCount() == 24
    predict.save_csv(str(tmp_path / "predictions.csv"))
    for page in (w.import_page, w.cache_page, w.train_page, w.results_page, w.viewer_page, w.predict_page):
        w.tabs.setCurrentWidget(page)
        qtbot.wait(20)
        shown = "\n".join(_visible_texts(w))
        assert "predicted" in shown or page is not w.viewer_page  # the texts were really collected
        for value in SENTINELS.values():
            for needle in {value, value.split("^")[0]}:
                assert needle not in shown, f"{needle!r} shown on the {page.__class__.__name__}"
    for handler in __import__("logging").getLogger("loff_studio").handlers:
        handler.flush()
    written = [log_path, tmp_path / "predictions.csv"] + [p for p in (tmp_path / "export").rglob("*")]
    written += [p for p in (tmp_path / "studio-config").rglob("*")] + [p for p in (tmp_path / "project").rglob("*")]
    assert log_path.stat().st_size > 0 and (tmp_path / "export" / "card.json").exists()
    needles = {v.encode() for v in SENTINELS.values()} | {v.split("^")[0].encode() for v in SENTINELS.values()}
    for path in written:
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"{needle!r} in {path}"


def test_twenty_thousand_rows_stay_smooth(qtbot, window, tmp_path):
    """A 20,000-image catalog: the table is a lazy model (rows are not widgets) that sorts
    and filters itself from precomputed strings, so neither freezes the window."""
    from loff_core.catalog import Catalog, CatalogEntry
    from loff_core.project import Project

    project = Project.create(tmp_path / "big")
    entries = [CatalogEntry(image_id=f"id{i:05d}", path=f"{i % 7}/img{i:05d}.dcm", patient_key=f"{i // 2:016x}",
                            label=str(1 + i % 8), split=("train", "val", "test")[i % 3], format="dicom",
                            modality="MG", view=("CC", "MLO")[i % 2], laterality=("L", "R")[(i // 2) % 2],
                            rows=64, cols=52, frames=1, pixel_spacing=None) for i in range(20000)]
    Catalog(entries, [str(k) for k in range(1, 9)]).save(project.catalog_path)
    w = window
    started = time.perf_counter()
    w.state.set_project(Project.open(tmp_path / "big"))
    page = w.import_page
    qtbot.waitUntil(lambda: page.model.rowCount() == 20000, timeout=LONG)
    opened = time.perf_counter() - started
    # no images exist for this catalog: the viewer says so instead of raising in a slot
    qtbot.waitUntil(lambda: "images folder is missing" in page.viewer.caption.text(), timeout=LONG)
    w.tabs.setCurrentWidget(page)
    started = time.perf_counter()
    page.filter.setText("img1999")  # img19990 .. img19999
    filtered = time.perf_counter() - started
    assert page.model.rowCount() == 10
    page.filter.setText("")
    started = time.perf_counter()
    page.table.sortByColumn(1, __import__("PySide6.QtCore", fromlist=["Qt"]).Qt.SortOrder.DescendingOrder)
    sorted_s = time.perf_counter() - started
    assert page.model.rowCount() == 20000
    m = page.model
    labels = [m.data(m.index(r, 1)) for r in range(m.rowCount())]
    assert labels == sorted(labels, reverse=True) and labels[0] == "8"
    print(f"20,000 rows: open {opened:.2f} s, filter {filtered * 1000:.0f} ms, sort {sorted_s * 1000:.0f} ms")
    # generous bounds for shared 2-core machines; Qt's QSortFilterProxyModel over the same
    # rows took 0.66 s to filter and 1.7 s to sort here, this model 2 ms and 12 ms
    assert filtered < 0.5 and sorted_s < 0.5 and opened < 20.0
