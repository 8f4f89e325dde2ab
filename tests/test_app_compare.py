"""The Results page's ROC overlay computes another run's ROC on demand (a light job,
nothing written) when that run has no saved evaluation on the split."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from test_app import LONG, _extract, _import, _new_project, _wait_idle, images, qtbot_button, window  # noqa: E402,F401
from test_app_window import _train  # noqa: E402

from loff_core import steps  # noqa: E402
from loff_core.settings import EvaluateSettings  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.mark.slow
def test_overlay_of_a_run_never_evaluated_is_computed_on_demand(qtbot, window, images, tmp_path):
    w = window
    _new_project(w, tmp_path / "p")
    _import(qtbot, w, images)
    _extract(qtbot, w)
    _train(qtbot, w, epochs=1)
    _train(qtbot, w, epochs=2)
    project = w.state.project
    first, second = [r.run_id for r in project.runs()]
    results = w.results_page
    results.run.setCurrentIndex(results.run.findData(first))
    qtbot.mouseClick(results.evaluate_button, qtbot_button())
    _wait_idle(qtbot, w)
    qtbot.waitUntil(lambda: results.result is not None and results.result["run"] == first, timeout=LONG)
    split = results.result["split"]
    assert not (project.runs_dir / second / f"eval-{split}.json").exists()
    results.compare.setCurrentIndex(results.compare.findData(second))
    assert "computing run" in results.roc_legend.text()
    qtbot.waitUntil(lambda: bool(results.compare_items), timeout=LONG)
    assert f"dashed: run {second}" in results.roc_legend.text() and "not saved" in results.roc_legend.text()
    assert not (project.runs_dir / second / f"eval-{split}.json").exists()  # nothing written
    expected = steps.evaluate(project, second, split, EvaluateSettings(bootstrap=0), save=False).evaluation["roc"]
    curves = [expected] if "fpr" in expected else list(expected.values())
    assert [list(i.getData()[0]) for i in results.compare_items] == [list(c["fpr"]) for c in curves]
    # choosing it again does not compute again; a saved evaluation is preferred when there is one
    results.compare.setCurrentIndex(0)
    results.compare.setCurrentIndex(results.compare.findData(second))
    assert results.compare_items and "computing" not in results.roc_legend.text()
