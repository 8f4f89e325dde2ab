"""The one progress channel (loff_core.progress): reports, partial results, cancel and Stop,
shared by a job and every part of it."""

from __future__ import annotations

import threading

import pytest

from loff_core.progress import Cancelled, Partial, Progress


def test_stop_reaches_a_child_made_before_the_stop():
    parent = Progress()
    child = parent.child(0, 10)
    grandchild = child.linked(lambda d, t, m: None)
    assert not child.stop_requested and not grandchild.stop_requested
    parent.request_stop()  # after the parts were made, as the Stop button does
    assert child.stop_requested and grandchild.stop_requested
    # and from a part up: one Stop for the whole job
    other = Progress()
    part = other.child(0, 1)
    part.request_stop()
    assert other.stop_requested


def test_stop_seen_by_a_child_working_on_another_thread():
    parent = Progress()
    child = parent.child(0, 1)
    started, seen = threading.Event(), []

    def work():
        started.set()
        while not child.stop_requested:
            child.check()
        seen.append("stopped")

    worker = threading.Thread(target=work)
    worker.start()
    started.wait(5)
    parent.request_stop()
    worker.join(5)
    assert seen == ["stopped"] and not worker.is_alive()


def test_cancel_reaches_children_and_a_part_that_must_finish_ignores_stop():
    parent = Progress()
    must_finish = parent.linked(None, stop=False)
    child = parent.child(5, 10)
    parent.request_stop()
    assert not must_finish.stop_requested and child.stop_requested
    parent.cancel()
    for p in (child, must_finish):
        with pytest.raises(Cancelled):
            p.check()


def test_reports_map_and_partials_and_notices_reach_the_watcher_of_the_top():
    reports, partials, notices = [], [], []
    parent = Progress(on_report=lambda d, t, m: reports.append((d, t, m)))
    child = parent.child(5, 10)
    grandchild = child.child(1, 10)
    parent.on_partial = partials.append  # a watcher set after the parts were made still hears them
    parent.on_notice = notices.append
    grandchild.report(2, 4, "half")
    grandchild.partial("epoch", {"epoch": 1})
    grandchild.notice("GPU out of memory: retrying with batch size 8")
    assert reports[0] == (8, 10, "half")
    assert partials == [Partial("epoch", {"epoch": 1})]
    assert notices == ["GPU out of memory: retrying with batch size 8"]
