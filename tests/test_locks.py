"""Readers and writers of one project (issue 10, point 4): a long `train` (the writer lock,
held by another process) does not hold up `evaluate` of an existing run, `info`, `export`
or `predict`; two writers still exclude each other; a writer's commit waits for the readers
of that moment and readers wait for a commit in progress. No timing is asserted: processes
and threads are ordered by events."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading

import pytest

from loff_cli import copy_project, loff_json

from loff_core.cli import main
from loff_core.errors import ProjectError
from loff_core.project import Project



@pytest.fixture(scope="module")
def trained(trained_demo, tmp_path_factory):
    """This file's own copy of the session's trained demo project (tests here write to it)."""
    return copy_project(trained_demo, tmp_path_factory.mktemp("locks") / "p")


def _hold_writer_lock(root: str, ready, release) -> None:
    """Stands in for `loff train` of another run: holds the writer lock until released."""
    with Project.open(root).lock():
        ready.set()
        release.wait(120)


@pytest.fixture
def training_elsewhere(trained):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_writer_lock, args=(str(trained), ready, release))
    holder.start()
    try:
        assert ready.wait(120), "the holder process did not take the lock"
        yield trained
    finally:
        release.set()
        holder.join(60)


def test_readers_do_not_wait_for_a_training_in_another_process(training_elsewhere, capsys, tmp_path):
    root = training_elsewhere
    run_id = Project.open(root).run().run_id
    evaluated = loff_json(capsys, "evaluate", root, "--split", "val", "--bootstrap", "20")
    assert evaluated["run"] == run_id and evaluated["split"] == "val" and evaluated["n"] > 0
    saved = json.loads((root / "runs" / run_id / "eval-val.json").read_text())
    assert saved["metrics"] == evaluated["metrics"]  # written (atomically) under the shared lock
    info = loff_json(capsys, "info", root)
    assert [r["run"] for r in info["runs"]] == [run_id]
    exported = loff_json(capsys, "export", root, tmp_path / "head")
    assert exported["run"] == run_id and (tmp_path / "head" / "card.json").is_file()
    assert (root / "runs" / run_id / "eval-test.json").is_file()  # export evaluated the missing split
    project = Project.open(root)
    image = project.image_path(project.catalog().entries[0])
    predicted = loff_json(capsys, "predict", root, image)
    assert predicted["run"] == run_id and len(predicted["predictions"]) == 1
    # ... while a second writer is still refused, at once
    with pytest.raises(ProjectError, match="being changed by process"):
        with Project.open(root).lock():
            pass
    capsys.readouterr()
    assert main(["train", str(root), "--epochs", "1", "--quiet"]) == 1
    assert "being changed by process" in capsys.readouterr().err


def _in_thread(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_a_commit_waits_for_the_readers_of_that_moment(tmp_path):
    project = Project.create(tmp_path / "p")
    reading, done_reading, committed = threading.Event(), threading.Event(), threading.Event()

    def reader() -> None:
        with Project.open(project.root).read_lock():
            reading.set()
            done_reading.wait(60)

    def writer() -> None:
        p = Project.open(project.root)
        with p.lock():
            p.settings.name = "renamed"
            p.save()  # the settings are replaced under the exclusive commit lock
        committed.set()

    r = _in_thread(reader)
    assert reading.wait(60)
    w = _in_thread(writer)
    assert not committed.wait(1.0), "the settings were replaced while a reader was reading"
    assert Project.open(project.root).settings.name != "renamed"
    done_reading.set()
    assert committed.wait(60)
    r.join(60), w.join(60)
    assert Project.open(project.root).settings.name == "renamed"


def test_a_reader_waits_for_a_commit_in_progress(tmp_path):
    project = Project.create(tmp_path / "p")
    committing, finish, read = threading.Event(), threading.Event(), threading.Event()

    def writer() -> None:
        with Project.open(project.root).committing():
            committing.set()
            finish.wait(60)

    def reader() -> None:
        with Project.open(project.root).read_lock():
            read.set()

    w = _in_thread(writer)
    assert committing.wait(60)
    r = _in_thread(reader)
    assert not read.wait(1.0), "a reader read while files were being replaced"
    finish.set()
    assert read.wait(60)
    w.join(60), r.join(60)


def test_readers_share_the_lock(tmp_path):
    project = Project.create(tmp_path / "p")
    first_in, second_in, leave = threading.Event(), threading.Event(), threading.Event()

    def reader(inside: threading.Event) -> None:
        with Project.open(project.root).read_lock():
            inside.set()
            leave.wait(60)

    a = _in_thread(lambda: reader(first_in))
    assert first_in.wait(60)
    b = _in_thread(lambda: reader(second_in))
    assert second_in.wait(60), "a second reader waited for the first"
    leave.set()
    a.join(60), b.join(60)


def test_nested_reads_and_a_read_inside_a_commit_do_not_deadlock(tmp_path):
    project = Project.create(tmp_path / "p")
    with project.read_lock():
        with project.read_lock():  # export -> evaluate of a missing split
            pass
    with project.committing():
        with project.read_lock():  # covered by the exclusive hold
            pass
    with project.read_lock():
        with pytest.raises(RuntimeError, match="commit inside a read"):
            with project.committing():
                pass


def test_a_project_that_cannot_hold_the_reader_lock_is_still_read(tmp_path, monkeypatch):
    """A read-only medium: nobody can change the project, so readers read without the lock;
    a writer's commit names the file."""
    import filelock

    project = Project.create(tmp_path / "p")

    class ReadOnly:
        def __init__(self, *args, **kwargs):
            import sqlite3

            raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(filelock, "ReadWriteLock", ReadOnly)
    with project.read_lock():
        assert project.settings.name == "p"
    with pytest.raises(ProjectError, match=r"cannot write .*\.lock-readers"):
        project.save()
