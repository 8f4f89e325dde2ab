"""The Results page's evaluation is a job like the others (issue 10, point 3): it shows the
engine's real progress (images predicted, then the bootstrap) and its Stop cancels it,
leaving the saved evaluation as it was."""

from __future__ import annotations

import os
import threading

import pytest

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from test_app import LONG, _wait_idle, qtbot_button, window  # noqa: E402,F401

from loff_cli import copy_project  # noqa: E402
from loff_core.project import Project  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def trained(trained_demo, tmp_path_factory):
    """This file's own copy of the session's trained demo project (tests here write to it)."""
    return copy_project(trained_demo, tmp_path_factory.mktemp("results") / "p")


def test_results_page_shows_real_progress_and_stop_cancels(qtbot, window, trained, monkeypatch):
    from loff_core import training

    w = window
    w.state.set_project(Project.open(trained))
    page = w.results_page
    w.tabs.setCurrentWidget(page)
    page.split.setCurrentText("val")
    run = w.state.project.run()
    saved = run.path / "eval-val.json"
    assert not saved.exists()

    real = training.predict_probabilities
    reported, release = threading.Event(), threading.Event()

    def held(*args, progress=None, **kwargs):
        """Report the first batch like the engine does, then wait until the job is cancelled."""
        progress.report(0, 7, "predicting 7 images")
        reported.set()
        release.wait(60)
        progress.check()
        return real(*args, progress=progress, **kwargs)

    monkeypatch.setattr(training, "predict_probabilities", held)
    messages: list[str] = []
    w.state.message.connect(lambda level, text: messages.append(text))
    qtbot.mouseClick(page.evaluate_button, qtbot_button())
    qtbot.waitUntil(lambda: page.strip.label.text() == "predicting 7 images", timeout=LONG)
    assert reported.is_set() and page.strip.bar.maximum() == 7  # the engine's count, not a faked busy bar
    assert page.strip.stop_button.isVisible() and page.strip.stop_button.isEnabled()
    qtbot.mouseClick(page.strip.stop_button, qtbot_button())
    assert w.state.runner.job.progress_state.cancelled
    release.set()
    _wait_idle(qtbot, w)
    assert page.result is None and not saved.exists()
    assert "evaluate cancelled; nothing was changed" in messages
    assert not page.strip.stop_button.isEnabled()

    monkeypatch.setattr(training, "predict_probabilities", real)
    qtbot.mouseClick(page.evaluate_button, qtbot_button())
    _wait_idle(qtbot, w)
    qtbot.waitUntil(lambda: page.result is not None, timeout=LONG)
    assert page.result["run"] == run.run_id and saved.exists()
