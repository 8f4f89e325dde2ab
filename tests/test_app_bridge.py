"""The one bridge (app/workers.py): heavy and light jobs are the same `Job` class, pages
wire them with one helper, and every slot (a plain lambda too) runs on the GUI thread."""

from __future__ import annotations

import os
import threading
import time

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui
LONG = 60_000


def test_heavy_job_partial_results_and_lambdas_run_on_the_gui_thread(qtbot):
    from app.state import AppState
    from app.workers import Job, running_threads, wire

    state = AppState()
    seen: dict[str, list] = {"partial": [], "progress": [], "done": [], "threads": []}

    def work(progress):  # the job knows only its Progress: partial results go through it too
        for k in range(3):
            progress.report(k, 3, f"step {k}")
            progress.partial("fold", {"fold": k})  # e.g. one cross-validation fold
            progress.partial("epoch", {"epoch": k})  # a kind this page does not take
        return "all"
    job = state.start("folds", work)  # the job may finish before the page wires it: nothing is lost
    assert isinstance(job, Job)

    class Strip:
        def report(self, done, total, text):
            seen["progress"].append(text)
            seen["threads"].append(threading.current_thread().name)

    strip = Strip()  # (a slot's object must live: Qt holds bound methods weakly)
    wire(job, strip=strip, partial={"fold": lambda v: (seen["partial"].append(v["fold"]),
                                                          seen["threads"].append(threading.current_thread().name))},
         done=lambda r: (seen["done"].append(r), seen["threads"].append(threading.current_thread().name)))
    qtbot.waitUntil(lambda: not state.busy, timeout=LONG)
    assert seen["partial"] == [0, 1, 2] and seen["done"] == ["all"]
    assert seen["progress"] == ["step 0", "step 1", "step 2"]
    assert set(seen["threads"]) == {threading.main_thread().name}  # never the worker's thread
    assert job.thread_name != threading.main_thread().name
    assert not running_threads()


def test_cancel_drops_and_stop_keeps(qtbot):
    from app.state import AppState
    from app.workers import wire

    state = AppState()
    out: list = []

    def loop(progress):
        done = 0
        while True:
            progress.check()  # a cancel raises here
            if progress.stop_requested:
                return f"kept {done}"
            done += 1
            time.sleep(0.005)
    job = wire(state.start("loop", loop), done=out.append, cancelled=lambda: out.append("dropped"))
    qtbot.wait(50)
    job.cancel()
    qtbot.waitUntil(lambda: not state.busy, timeout=LONG)
    job = wire(state.start("loop", loop), done=out.append, cancelled=lambda: out.append("dropped"))
    qtbot.wait(50)
    job.stop()
    qtbot.waitUntil(lambda: not state.busy, timeout=LONG)
    assert out[0] == "dropped" and out[1].startswith("kept ") and int(out[1].split()[1]) > 0


def test_light_job_failure_is_one_line_on_the_page(qtbot):
    from app.workers import start_light, wire

    class Banner:
        def __init__(self):
            self.shown: list[str] = []

        def clear(self):
            self.shown.clear()

        def show_error(self, text):
            self.shown.append(text)
    banner, failed = Banner(), []

    def boom():
        raise KeyError("no such image")
    job = wire(start_light("explain", boom), banner=banner, failed=failed.append)
    qtbot.waitUntil(lambda: job.done, timeout=LONG)
    assert failed == banner.shown and len(failed) == 1
    assert failed[0].startswith("Unexpected error in explain: KeyError") and "\n" not in failed[0]
