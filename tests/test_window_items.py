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
    # a stale winner is no candidate
    assert choose_run(_Runs(high_val, tuned, stale={"tuned"}))[0] == "val-high"
    assert choose_run(_Runs(high_val, stale={"val-high"})) == ("val-high", "the newest run (none is up to date "
                                                                            "with the active cache and labels)")


def test_a_tuned_logistic_regression_is_named_one_way_with_its_score_kind():
    from loff_core.results import epochs_text, head_name, model_of, score_text

    logreg = {"monitor": "cv_auc", "best_score": 0.84, "history": [], "best_epoch": 0, "stopped": "completed",
              "head_config": {"kind": "linear"}, "train_config": {"head": "logistic_regression", "C": 1.0}}
    trained = _record("val_auc", 0.836)
    assert head_name(logreg) == "logistic regression" and head_name(trained) == "attention"
    assert score_text(logreg) == "CV auc 0.840" and score_text(trained) == "val auc 0.836"
    assert "0 (best 0)" not in epochs_text(logreg) and epochs_text(logreg).startswith("none")
    assert epochs_text(trained) == "5 (best 3), completed"
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
