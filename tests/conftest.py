"""Shared fixtures. GUI tests (marked `gui`) get their own settings folder and fail if a
worker QThread is still running when they end."""

from __future__ import annotations

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (test.sh runs `-n 2` on a 2-core machine) each worker's torch gets one
    # thread, set before torch is imported and inherited by the `loff` subprocesses the tests
    # start, so features computed in the test and in a subprocess still round alike. Two
    # workers of two threads each on two cores ran extraction and training at half speed.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gui: drives the Qt window (headless, pytest-qt)")


@pytest.fixture(autouse=True)
def isolated_studio_config(tmp_path, monkeypatch):
    """LOFF Studio's settings, demo project, log, added backbones and exported engine graphs
    go under tmp_path, never the user's."""
    monkeypatch.setenv("LOFF_STUDIO_CONFIG_DIR", str(tmp_path / "studio-config"))
    monkeypatch.setenv("LOFF_WEIGHTS_DIR", str(tmp_path / "weights"))  # added backbones (loff weights add)
    monkeypatch.setenv("LOFF_ENGINE_CACHE_DIR", str(tmp_path / "engines"))  # exported ONNX graphs
    yield


@pytest.fixture(autouse=True)
def working_folder_restored(tmp_path):  # set up after tmp_path, so put back before it goes
    """A test that moves the working folder (os.chdir) gets it put back when it ends. A passed
    test's tmp_path is removed (pyproject: tmp_path_retention_policy), and a worker left inside
    a removed folder broke every later subprocess on it (CI: spawn's FileNotFoundError, "failed
    to make path absolute", oneMKL "Cannot load libtorch_cpu.so"): 9 tests failed in one run."""
    before = os.getcwd()
    yield
    try:
        moved = os.getcwd() != before
    except FileNotFoundError:  # already inside a removed folder
        moved = True
    if moved:
        os.chdir(before)


@pytest.fixture(autouse=True)
def no_qthread_left_running(request):
    yield
    if request.node.get_closest_marker("gui") is None:
        return
    import sys

    if "app.workers" not in sys.modules:
        return
    from app.workers import running_threads

    left = [t.objectName() for t in running_threads()]
    assert not left, f"worker QThread(s) left running: {left}"


@pytest.fixture(autouse=True)
def qt_widgets_deleted_after_test():
    """After a test that made widgets, every top-level widget left is deleted now. pytest-qt
    closes the windows a test gave it and calls deleteLater, which waits for an event loop
    that never came, so every window lived on (1591 widgets each: 1591, 3182, ... 7955 live at
    the fifth test of test_app_import; pyqtgraph's parentless menus and colour dialogs too),
    and each new window's QApplication.setStyleSheet re-polished them all (54 s of that file's
    116 s under cProfile; 11 s with this). Light jobs are let finish and deliver first."""
    yield
    import sys

    if "PySide6.QtWidgets" not in sys.modules:
        return
    from PySide6.QtCore import QCoreApplication, QEvent
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None or not app.topLevelWidgets():
        return
    if "app.workers" in sys.modules:
        from app.workers import wait_light

        wait_light()  # a light job (an explanation, an image) still running would answer a deleted page
    app.processEvents()  # queued signals (light jobs' results) reach their slots while the widgets live
    for widget in app.allWidgets():
        widget.blockSignals(True)  # being destroyed, a widget calls no slot of another one already gone
    for widget in app.topLevelWidgets():
        widget.deleteLater()  # no close(): a close event could ask a question
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory):
    """The trained tiny demo project (`loff_cli.trained_demo_project`), built once per test run
    (once per worker under pytest-xdist). Shared: never write to it; take a
    `loff_cli.copy_project` of it (a module fixture per file, or per test where a test writes)."""
    from loff_cli import trained_demo_project

    return trained_demo_project(tmp_path_factory.mktemp("trained-demo") / "p")


@pytest.fixture
def two_torch_threads():
    """torch on 2 threads for the test, restored after it (a module-level set_num_threads would
    change every later test's thread count, and with it float16 rounding of features)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
