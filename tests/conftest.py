"""Shared fixtures. GUI tests (marked `gui`) get their own settings folder and fail if a
worker QThread is still running when they end."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "gui: drives the Qt window (headless, pytest-qt)")


@pytest.fixture(autouse=True)
def isolated_studio_config(tmp_path, monkeypatch):
    """LOFF Studio's settings, demo project and log go under tmp_path, never the user's."""
    monkeypatch.setenv("LOFF_STUDIO_CONFIG_DIR", str(tmp_path / "studio-config"))
    monkeypatch.setenv("LOFF_WEIGHTS_DIR", str(tmp_path / "weights"))  # added backbones (loff weights add)
    yield


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


@pytest.fixture
def two_torch_threads():
    """torch on 2 threads for the test, restored after it (a module-level set_num_threads would
    change every later test's thread count, and with it float16 rounding of features)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
