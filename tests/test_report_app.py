"""Save report on the Results page (issue 21, point 2): a background job writes the chosen
run's report into the project's reports/ folder and the message names the file."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from loff_cli import copy_project  # noqa: E402
from test_app import window  # noqa: E402,F401

pytestmark = pytest.mark.gui


def test_save_report_writes_the_chosen_runs_report_and_says_where(qtbot, window, trained_demo, tmp_path):
    from loff_core.project import Project

    project = Project.open(copy_project(trained_demo, tmp_path / "p"))
    window.state.set_project(project)
    page = window.results_page
    run_id = page.run_id()
    assert run_id and page.report_button.isEnabled()
    messages: list[tuple[str, str]] = []
    window.state.message.connect(lambda kind, text: messages.append((kind, text)))
    page.report_button.click()
    assert not page.report_button.isEnabled()  # one heavy job at a time
    qtbot.waitUntil(lambda: not window.state.busy, timeout=180_000)
    path = project.root / "reports" / f"{run_id}.html"
    assert path.is_file() and '<section id="results">' in path.read_text(encoding="utf-8")
    assert ("info", f"report of run {run_id} saved: {path}") in messages
    assert str(path) in page.strip.label.text() and page.report_button.isEnabled()
