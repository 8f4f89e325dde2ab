"""Training curves as the issue asked (driven with epochs as the bridge delivers them):
integer epoch ticks from the first epoch, the best epoch marked, the legend outside the
plots, the time left in the progress text, and nothing of a previous project's range."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from test_app import window  # noqa: E402,F401

pytestmark = pytest.mark.gui


def _entry(epoch, auc):
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 0.5 + 0.01 * epoch, "val_accuracy": 0.5,
            "val_auc": auc}


def test_integer_epochs_best_epoch_marked_legend_outside_time_left(qtbot, window):
    page = window.train_page
    for k, auc in enumerate([0.70, 0.80, 0.91, 0.85, 0.88], start=1):
        page._epoch(_entry(k, auc))
    axis = page.loss_plot.getAxis("bottom")
    for plot in (page.loss_plot, page.metric_plot):
        (x0, x1), _ = plot.getViewBox().viewRange()
        assert x0 == pytest.approx(0.5) and x1 == pytest.approx(5.5)  # from the first epoch, never negative
    ticks = [v for level in axis.tickValues(0.5, 5.5, 600) for v in level[1]]
    assert ticks and all(float(v).is_integer() for v in ticks)
    assert all(line.isVisible() and line.value() == 3 for line in page.best_lines)  # val auc 0.91 at epoch 3
    assert "best epoch 3" in page.legend.text() and "val auc" in page.legend.text()
    assert not page.loss_plot.getPlotItem().legend  # no pyqtgraph legend over the curves
    import time

    page._started = time.monotonic() - 10  # 10 s for 5 of 30 epochs
    page._progress(5, 30, "epoch 5/30")
    assert "left" in page.strip.label.text()
