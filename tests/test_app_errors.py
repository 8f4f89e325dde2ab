"""The window words the engine's errors its own way (issue 10, point 2): a missing cache
names the Cache page's Extract, a full disk names the file and the reason, not
"Unexpected error" (headless, pytest-qt)."""

from __future__ import annotations

import errno
import os

import pytest

pytest.importorskip("pytestqt")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from test_app import LONG, window  # noqa: E402,F401  (the app's window fixture: one copy)

pytestmark = pytest.mark.gui


def _problems(w) -> list[str]:
    return [w.problems.item(i).text() for i in range(w.problems.count())]


def _fail_in_a_job(qtbot, w, name, fn):
    before = len(_problems(w))
    assert w.state.start(name, fn) is not None
    qtbot.waitUntil(lambda: any(t.startswith("Problem: ") for t in _problems(w)[before:]), timeout=LONG)
    qtbot.waitUntil(lambda: not w.state.busy, timeout=LONG)
    return next(t for t in _problems(w)[before:] if t.startswith("Problem: "))


def test_missing_cache_reads_as_the_cache_page(qtbot, window, tmp_path):
    from loff_core.project import Project

    project = Project.create(tmp_path / "proj")
    window.state.set_project(project)
    text = _fail_in_a_job(qtbot, window, "train", lambda progress: project.open_cache())
    assert text == f"Problem: {project.root}: no feature cache yet; run Extract on the Cache page"
    assert "loff" not in text.split(";", 1)[1]


def test_full_disk_in_a_job_names_the_file(qtbot, window, tmp_path):
    target = tmp_path / "proj" / "caches" / "abc.h5"

    def full(progress):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))
    text = _fail_in_a_job(qtbot, window, "extract", full)
    assert text == f"Problem: cannot write {target}: No space left on device"


def test_light_job_full_disk_and_unexpected_error(qtbot, tmp_path):
    """A light job (a page's quick read) words a full disk the same way; anything else is
    still an unexpected error, in one line."""
    from app.workers import start_light, wait_light

    errors: list[str] = []

    def full():
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x.csv"))

    def boom():
        raise ZeroDivisionError("division by zero")
    for name, fn in (("read", full), ("boom", boom)):
        job = start_light(name, fn)
        job.failed.connect(errors.append)
        wait_light()
    qtbot.waitUntil(lambda: len(errors) == 2, timeout=LONG)
    assert errors[0] == f"cannot access {tmp_path / 'x.csv'}: Permission denied"
    assert errors[1].startswith("Unexpected error in boom: ZeroDivisionError") and "\n" not in errors[1]
