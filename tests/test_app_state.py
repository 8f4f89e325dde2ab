"""One project state, many views (issue 23): after opening another project, choosing another
run or re-importing with another label column, no text anywhere in the window may come from
what was shown before. Two small projects A and B differ in class names, split sizes, run ids
and temperatures; each test walks every page of one, opens the other and reads EVERY text
of EVERY page (labels, buttons, combo box items, table / list / tree items and headers, tab
and group titles, plot titles, axis labels and ticks, legends and text items of the pyqtgraph
plots, the window title, the status bar, the docks). The Messages dock is the session's log
and is left out on purpose (docs/window.md: it is not cleared between projects).

Item 8 (1280 x 720): opening More settings and the validation panel keeps the window on the
screen, the Messages dock and the status bar visible and the tables' rows in view."""

from __future__ import annotations

import csv
import time
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from loff_cli import TINY, copy_project  # noqa: E402

pytestmark = pytest.mark.gui
LONG = 180_000

#: project A: three tissue classes (and a second label column for the re-import); project B:
#: two other classes, another size, other heads (so other run ids), another seed
SPEC_A = {"classes": ("fattyAx", "glandAx", "denseAx"), "per_class": 16, "other": ("lowReQ", "highReQ"),
          "heads": (("attention", 3, 1), ("linear", 2, 0)), "cv": "linear"}
SPEC_B = {"classes": ("benignBx", "malignBx"), "per_class": 11, "other": ("oneBq", "twoBq"),
          "heads": (("linear", 3, 5),), "cv": None}


def _loff(*args: object) -> None:
    from loff_core.cli import main

    assert main([str(a) for a in args] + ["--quiet", "--json"]) == 0, f"loff {args[0]} failed"


def build_project(root: Path, spec: dict, seed: int) -> Path:
    """A labelled PNG project (labels.csv: file, tissue, grade, patient), extracted with a tiny
    random ViT, with the spec's runs trained and its cross-validation saved."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = root.parent / f"{root.name}-images"
    images.mkdir(parents=True)
    rows = []
    for k, name in enumerate(spec["classes"]):
        for i in range(spec["per_class"]):
            file = f"img-{seed}-{k}-{i}.png"  # no class name in a file name: only the labels name classes
            value = 40 + 170 * k / max(1, len(spec["classes"]) - 1)
            Image.fromarray(np.clip(rng.normal(value, 35, (40, 40)), 0, 255).astype(np.uint8)).save(images / file)
            rows.append((file, name, spec["other"][i % 2], f"p{seed}-{k}-{i // 2}"))
    with open(images / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "tissue", "grade", "patient"])
        writer.writerows(rows)
    _loff("import", root, images, "--labels", images / "labels.csv", "--label-column", "tissue",
          "--file-column", "file", "--patient-column", "patient", "--task", "classification")
    _loff("extract", root, *TINY, "--device", "cpu")
    for head, epochs, train_seed in spec["heads"]:
        _loff("train", root, "--head", head, "--epochs", epochs, "--seed", train_seed, "--device", "cpu")
    if spec["cv"]:
        _loff("cv", root, "--head", spec["cv"], "--folds", 2, "--epochs", 2, "--device", "cpu")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("state")
    a = build_project(base / "project-A", SPEC_A, 1)
    time.sleep(1.1)  # run ids name the second they were made: B's differ from A's
    return a, build_project(base / "project-B", SPEC_B, 2)


@pytest.fixture()
def two(built, tmp_path):
    """Copies of A and B a test may write to (evaluations, settings)."""
    return copy_project(built[0], tmp_path / "project-A"), copy_project(built[1], tmp_path / "project-B")


@pytest.fixture()
def window(qtbot):
    from app.main import MainWindow

    w = MainWindow()
    w.confirm_close = True
    qtbot.addWidget(w)
    w.resize(1280, 720)
    w.show()
    yield w
    w.state.runner.shutdown()


# -- every text in the window --------------------------------------------------------------
def _model_texts(model, parent=None) -> list[str]:
    from PySide6.QtCore import QModelIndex, Qt

    parent = parent or QModelIndex()
    out = []
    try:
        columns = model.columnCount(parent)
    except TypeError:  # a list model's columnCount is private: one column
        columns = 1
    for r in range(model.rowCount(parent)):
        for c in range(columns):
            index = model.index(r, c, parent)
            value = model.data(index, Qt.ItemDataRole.DisplayRole)
            if value is not None:
                out.append(str(value))
            if c == 0 and _has_children(model, index):  # a tree's branches
                out += _model_texts(model, index)
    if not parent.isValid():
        for orient, n in ((Qt.Orientation.Horizontal, columns), (Qt.Orientation.Vertical, model.rowCount(parent))):
            out += [str(model.headerData(i, orient)) for i in range(n) if model.headerData(i, orient) is not None]
    return out


def _has_children(model, index) -> bool:
    try:
        return model.hasChildren(index)
    except TypeError:  # private in table and list models: no children
        return False


def _plot_texts(w) -> list[str]:
    """Titles, axis labels, manual ticks, legends and every text item of every pyqtgraph view."""
    import pyqtgraph as pg
    from PySide6.QtWidgets import QGraphicsTextItem, QGraphicsView

    out = []
    for view in w.findChildren(QGraphicsView):
        scene = view.scene()
        if scene is None:
            continue
        for item in scene.items():
            if isinstance(item, QGraphicsTextItem):
                out.append(item.toPlainText())
            elif isinstance(item, pg.LabelItem):
                out.append(item.text)
            elif isinstance(item, pg.AxisItem):
                out.append(item.labelText)
                for level in item._tickLevels or []:
                    out += [str(t[1]) for t in level]
            elif isinstance(item, pg.LegendItem):
                out += [label.text for _, label in item.items]
    return out


def all_texts(w) -> list[str]:
    """Every text any page of the window shows, or shows once a box is opened (hidden
    widgets too: a folded panel or another tab is one click away). Not the Messages log."""
    from PySide6.QtWidgets import (QAbstractButton, QAbstractItemView, QComboBox, QDockWidget, QGroupBox, QLabel,
                                   QLineEdit, QPlainTextEdit, QTabWidget, QTextEdit)

    texts = [w.windowTitle(), w.statusBar().currentMessage()]
    texts += [x.text() for x in w.findChildren(QLabel)] + [x.text() for x in w.findChildren(QAbstractButton)]
    texts += [x.text() for x in w.findChildren(QLineEdit)]
    texts += [x.toPlainText() for x in w.findChildren(QTextEdit)] + [x.toPlainText() for x in w.findChildren(QPlainTextEdit)]
    texts += [x.title() for x in w.findChildren(QGroupBox)] + [x.windowTitle() for x in w.findChildren(QDockWidget)]
    for combo in w.findChildren(QComboBox):
        texts += [combo.itemText(i) for i in range(combo.count())]
    for tabs in w.findChildren(QTabWidget):
        texts += [tabs.tabText(i) for i in range(tabs.count())]
    for view in w.findChildren(QAbstractItemView):
        if view is w.problems or view.model() is None or isinstance(view.parent(), QComboBox):
            continue
        texts += _model_texts(view.model())
    texts += _plot_texts(w)
    return [t for t in texts if t]


def leftovers(w, sentinels: dict[str, str]) -> list[str]:
    """The sentinels (text -> what it is) found in the window's texts, with where."""
    found = []
    for text in all_texts(w):
        for s, what in sentinels.items():
            if s in text:
                found.append(f"{what} {s!r} in {text[:160]!r}")
    return found


def sentinels_of(root: Path, other: Path) -> dict[str, str]:
    """What only project ROOT could have produced (and OTHER did not): its path and name, run
    ids, group ids, class names, split sizes and temperatures."""
    from loff_core.project import Project
    from loff_core.validation import list_groups

    p, q = Project.open(root), Project.open(other)
    out = {str(root): "path", root.name: "name"}
    theirs_ids = {r.run_id for r in q.runs()}  # run ids are times: two projects may share one
    out.update({r.run_id: "run id" for r in p.runs() if r.run_id not in theirs_ids})
    out.update({g["group"]: "group" for g in list_groups(p)})
    out.update({c: "class" for c in p.catalog().classes})

    def sizes(project):
        n = {}
        for e in project.catalog().entries:
            n[e.split] = n.get(e.split, 0) + 1
        return n

    mine, theirs = sizes(p), sizes(q)
    for split, n in mine.items():
        if theirs.get(split) != n:
            out[f"{split} split ({n} images)"] = "split size"
            out[f"{split} split: {n} images"] = "split size"

    def temps(project):
        return {f"temperature {(r.record.get('operating_point') or {}).get('temperature'):.3g}"
                for r in project.runs() if (r.record.get("operating_point") or {}).get("temperature") is not None}

    out.update({t: "temperature" for t in temps(p) - temps(q)})
    return out


# -- driving the window ----------------------------------------------------------------------
def _idle(qtbot, w):
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)


def evaluate(qtbot, w, run_id: str, split: str = "test") -> dict:
    from PySide6.QtCore import Qt

    results = w.results_page
    w.tabs.setCurrentWidget(results)
    results.run.setCurrentIndex(results.run.findData(run_id))
    results.split.setCurrentText(split)
    qtbot.mouseClick(results.evaluate_button, Qt.MouseButton.LeftButton)
    _idle(qtbot, w)
    qtbot.waitUntil(lambda: results.result is not None and results.result["run"] == run_id, timeout=LONG)
    return results.result


def visit_every_page(qtbot, w) -> None:
    """Every page as a user would: runs' curves and comparison, More settings and the
    validation panel, every run evaluated with its ROC compared, a confusion cell in the
    Viewer with its prediction and the exam view, two images predicted on the Predict page."""
    from PySide6.QtCore import Qt

    from app.workers import wait_light

    for k in range(w.tabs.count()):
        w.tabs.setCurrentIndex(k)
        qtbot.wait(5)
    train = w.train_page
    w.tabs.setCurrentWidget(train)
    train.more_box.set_expanded(True)
    train.validation_box.set_expanded(True)
    runs = [r.run_id for r in w.state.project_state.runs]
    for row in range(train.runs.rowCount()):
        train._run_clicked(row, 0)
    train.compare.setCurrentIndex(train.compare.count() - 1)
    for run_id in runs:
        evaluate(qtbot, w, run_id)
    results = w.results_page
    if len(runs) > 1:
        results.compare.setCurrentIndex(results.compare.findData(runs[0] if results.run_id() != runs[0] else runs[1]))
        qtbot.waitUntil(lambda: "computing" not in results.roc_legend.text(), timeout=LONG)
    results.threshold.setValue(300)
    results.select_cell(0, 0)
    results.view_cell.click() if results.view_cell.isEnabled() else results._browse_cell()
    viewer = w.viewer_page
    w.tabs.setCurrentWidget(viewer)
    if viewer.ids:
        qtbot.waitUntil(lambda: viewer.ids[viewer.index] in viewer.explained
                        or "no prediction" in viewer.details.text(), timeout=LONG)
        assert viewer.ids[viewer.index] in viewer.explained, (viewer.details.text(), viewer.position.text())
        viewer.exam_button.setChecked(True)  # the patient's images with their predictions, left open
    wait_light()
    predict = w.predict_page  # two of the project's images, predicted with its run
    w.tabs.setCurrentWidget(predict)
    images = sorted(w.state.project.images_root().glob("*.png"))[:2]
    predict.files.setText(";".join(str(p) for p in images))
    qtbot.mouseClick(predict.predict_button, Qt.MouseButton.LeftButton)
    _idle(qtbot, w)
    qtbot.waitUntil(lambda: predict.table.rowCount() == 2, timeout=LONG)
    wait_light()


def _open(qtbot, w, root: Path) -> None:
    from app.workers import wait_light

    assert w.open_project(root)
    wait_light()
    qtbot.wait(20)  # queued light-job results (late explanations, images) arrive now, and must be dropped


# -- the tests -------------------------------------------------------------------------------
def test_nothing_of_a_project_stays_after_opening_another_a_b_a(qtbot, window, two):
    """A -> B -> A: after each opening, no text anywhere in the window names the other
    project's runs, groups, classes, split sizes or temperatures (issue 23 item 1)."""
    w = window
    a, b = two
    only_a, only_b = sentinels_of(a, b), sentinels_of(b, a)
    assert {"class", "run id", "split size", "temperature"} <= set(only_a.values()), only_a  # a test that can fail
    assert {"class", "run id", "split size"} <= set(only_b.values()), only_b
    _open(qtbot, w, a)
    visit_every_page(qtbot, w)
    shown = "\n".join(all_texts(w))
    for s in ("fattyAx", "test split", "fold spread", "temperature"):  # the walk showed A's figures
        assert s in shown, s
    _open(qtbot, w, b)
    assert leftovers(w, only_a) == []
    visit_every_page(qtbot, w)
    _open(qtbot, w, a)
    assert leftovers(w, only_b) == []
    visit_every_page(qtbot, w)  # A works as before
    assert w.results_page.result is not None and w.results_page.result["classes"] == sorted(SPEC_A["classes"])


def test_another_run_shows_none_of_the_previous_runs_lines(qtbot, window, two):
    """Item 2: the fold spread, the small-split warning and the decision (temperature) shown
    belong to the selected run; choosing another run clears them; a linear head's CV is never
    shown beside the attention run."""
    from loff_core.project import Project
    from loff_core.validation import list_groups

    w = window
    a = two[0]
    _open(qtbot, w, a)
    project = Project.open(a)
    attention = next(r.run_id for r in project.runs() if r.record["head_config"]["kind"] == "attention")
    linear = next(r.run_id for r in project.runs() if r.record["head_config"]["kind"] == "linear")
    cv = list_groups(project)[-1]["group"]
    extras = w.results_page.extras
    result = evaluate(qtbot, w, linear)
    texts = [extras.spread.text(), extras.operating.text()]
    assert linear in extras.operating.text() and "temperature" in extras.operating.text()
    assert all(x in extras.warnings.text() for x in result["warnings"])  # the small-split warning, when there is one
    if result["warnings"]:
        assert f"run {linear}, test split" in extras.warnings.text()
    evaluate(qtbot, w, attention)
    assert cv not in extras.spread.text() and "linear" not in extras.spread.text()  # not this run's CV
    assert f"no cross-validation of run {attention}'s settings" in extras.spread.text()
    assert attention in extras.operating.text() and linear not in extras.operating.text()
    results = w.results_page
    results.run.setCurrentIndex(results.run.findData(linear))  # another run: its evaluation is not shown yet
    assert results.result is None and extras.warnings.text() == "" and extras.operating.text() == ""
    assert results.metrics.rowCount() == 0 and not extras.save_button.isEnabled()
    lines = [t for t in all_texts(w) if "fold spread" in t or "decision" in t or "warning" in t]
    assert not [t for t in lines if attention in t], lines  # nothing of the attention run beside the linear one
    assert all(texts)  # the linear run's lines were there before
    train = w.train_page  # the curves drawn say whose they are
    for row in range(train.runs.rowCount()):
        train._run_clicked(row, 0)
        assert f"run <b>{train.runs.item(row, 0).text()}</b>" in train.legend.text()


def test_a_reimport_with_another_label_column_leaves_no_old_class_and_marks_runs_stale(qtbot, window, two):
    """Item 3: re-import A with its `grade` column: no text shows the old classes (fatty /
    gland / dense) and every run is marked stale in the Train table and the run boxes."""
    from PySide6.QtCore import Qt

    w = window
    a = two[0]
    _open(qtbot, w, a)
    visit_every_page(qtbot, w)
    old = {c: "old class" for c in SPEC_A["classes"]}
    assert leftovers(w, old)  # they were shown
    page = w.import_page
    w.tabs.setCurrentWidget(page)
    page.import_box.set_expanded(True)
    page.label_column.setCurrentIndex(page.label_column.findData("grade"))
    page.classes.setText("")
    page.confirm = lambda text: True
    qtbot.mouseClick(page.import_button, Qt.MouseButton.LeftButton)
    _idle(qtbot, w)
    qtbot.waitUntil(lambda: w.state.project_state.classes == sorted(SPEC_A["other"]), timeout=LONG)
    from app.workers import wait_light

    wait_light()
    qtbot.wait(20)
    assert leftovers(w, old) == []
    results, train = w.results_page, w.train_page
    assert results.result is None
    labels = [results.run.itemText(i) for i in range(results.run.count())]
    assert labels and all("stale" in x for x in labels), labels
    stale_col = [train.runs.horizontalHeaderItem(c).text() for c in range(train.runs.columnCount())].index("stale?")
    assert all("re-imported" in train.runs.item(r, stale_col).text() for r in range(train.runs.rowCount()))


def test_1280_x_720_more_settings_and_validation_stay_on_the_screen(qtbot, window, two):
    """Item 8: at 1280 x 720 More settings and the validation panel open inside the window:
    it stays 720 px high, the Messages dock and the status bar stay visible, the CV table
    keeps rows in view and the tuning summary is not cut."""
    from PySide6.QtWidgets import QApplication

    w = window
    _open(qtbot, w, two[0])
    train = w.train_page
    w.tabs.setCurrentWidget(train)
    w.resize(1280, 720)
    qtbot.wait(20)
    panel = train.validation
    panel.result.setText("<b>best: head attention, lr 0.0005, epochs 30, augment default</b> (cross-validation "
                         "accuracy 0.652 ± 0.045, balanced accuracy 0.640 ± 0.050, auc 0.840 ± 0.030); retrained "
                         "on train + val as run 20261202-120000-attention; on the test split, once: accuracy "
                         "0.700, auc 0.810")
    for k in range(6):
        panel.add_entry({"config": {"head": "attention", "lr": 0.0005 * (k + 1)}, "per_fold": {"auc": [0.8, 0.8]},
                         "cv": {"accuracy": {"mean": 0.6, "sd": 0.05}, "auc": {"mean": 0.8 - k / 100, "sd": 0.03}}})
    for more, validation in ((True, False), (False, True), (True, True)):
        train.more_box.set_expanded(more)
        train.validation_box.set_expanded(validation)
        for _ in range(3):
            QApplication.processEvents()
        qtbot.wait(20)
        state = f"more settings {'open' if more else 'closed'}, validation {'open' if validation else 'closed'}"
        assert w.height() <= 720, (state, w.height())  # (offscreen adds a 2-px frame around it)
        dock = w.findChild(type(w.problems.parent()), "messages") or w.problems.parent()
        assert w.problems.isVisible() and w.problems.height() >= 40, (state, w.problems.height())
        assert dock.geometry().bottom() <= w.height() and w.statusBar().isVisible()
        assert w.statusBar().geometry().bottom() <= w.height(), state
        assert train.train_button.isVisible() and train.train_button.mapTo(w, train.train_button.rect().bottomLeft()).y() <= w.height()
        if validation:  # beside the curves: the leaderboard's rows in view, the summary whole
            board, result = panel.board, panel.result
            shown = board.visibleRegion().boundingRect().height() - board.horizontalHeader().height()
            assert shown >= (1 if more else 2) * board.rowHeight(0), (state, shown)
            assert result.height() >= result.heightForWidth(result.width()) - 2, (state, result.height())
            assert result.visibleRegion().boundingRect().height() >= result.height() - 2, state
            assert panel.cv_button.isVisible() and train.loss_plot.height() >= 120, state


def test_project_state_drops_what_belongs_to_another_project_run_or_catalog(qtbot, tmp_path):
    """The state's rules, without a window: a late evaluation for another project is
    dropped; another run or split drops the evaluation; a new catalog version drops it and
    marks the runs stale; a run's fold spread is its own tune group or a CV of exactly its
    settings, never another head's CV."""
    import json

    from app.state import ProjectState
    from loff_core.project import Project
    from loff_core.settings import TrainConfig, config_record
    from loff_core.validation import GROUPS_DIR
    from test_app import _evaluation, _write_run

    project = Project.create(tmp_path / "p")
    _write_run(project, "r-linear", head="linear", epochs=3)
    _write_run(project, "r-attention", head="attention", epochs=3)
    for run in project.runs():  # trained on the catalog as it is now
        record = dict(run.record, catalog_version=project.settings.catalog_version)
        (run.path / "run.json").write_text(json.dumps(record))

    def group(gid, kind, run=None, **config):
        folder = project.root / GROUPS_DIR / gid
        folder.mkdir(parents=True)
        record = {"group": gid, "kind": kind, "folds": 2, "completed": 2, "task": "classification", "run": run,
                  "catalog_version": project.settings.catalog_version,
                  "config": {"head": config.get("head")}, "train_config": config_record(TrainConfig(**config)),
                  "metrics": {"auc": {"mean": 0.8, "sd": 0.1}}, "best": {"cv": {"auc": {"mean": 0.8, "sd": 0.1}},
                                                                           "config": {"head": config.get("head")}}}
        (folder / "group.json").write_text(json.dumps(record))

    group("g1-cv", "cv", head="linear", epochs=3)
    group("g2-cv", "cv", head="linear", epochs=5)  # other settings: not the linear run's
    ps = ProjectState()
    events = []
    ps.evaluation_changed.connect(lambda r: events.append(None if r is None else r["run"]))
    ps.rebuild(project)
    assert [r.run_id for r in ps.runs] == ["r-attention", "r-linear"] and ps.classes == ["a", "b"]
    assert [g["group"] for g in ps.groups_of("r-linear")] == ["g1-cv"]
    assert ps.groups_of("r-attention") == []  # the linear head's CV is not the attention run's
    old = ps.generation
    ps.rebuild(Project.open(project.root))  # the project opened again (or another one)
    assert not ps.set_evaluation(_evaluation("r-linear"), old) and ps.evaluation is None  # late: dropped
    assert ps.set_evaluation(_evaluation("r-linear"), ps.generation) and ps.run_id == "r-linear"
    assert not ps.set_evaluation(_evaluation("no-such-run"))
    ps.select(split="val")  # another split: the test split's evaluation goes
    assert ps.evaluation is None and events == ["r-linear", None]
    ps.set_evaluation(_evaluation("r-linear"))
    ps.select(run_id="r-attention")
    assert ps.evaluation is None and events[-1] is None
    ps.set_evaluation(_evaluation("r-linear"))
    group("g3-tune", "tune", run="r-attention", head="attention")
    ps.reload_runs()
    assert [g["group"] for g in ps.groups_of("r-attention")] == ["g3-tune"]
    assert not any("re-imported" in " ".join(ps.stale[r.run_id]) for r in ps.runs)
    ps.project.settings.catalog_version += 1  # what the import step does to the open project
    ps.reload_catalog()
    assert ps.evaluation is None and all("re-imported" in " ".join(ps.stale[r.run_id]) for r in ps.runs)
