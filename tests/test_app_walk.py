"""Problems found walking through the window as a new user (docs/window.md, "The walk"):
Help > About names the licence of every backbone the Cache page offers (it listed four of
ten, not the CPU default Lite2 nor RAD-DINO's research licence); a project with no
remembered page settings gets the defaults, not the previous project's."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_about_lists_the_licence_of_every_backbone_offered():
    from app.about import about_html
    from loff_core.weights import KNOWN, TEST_MODEL, suggested

    text = about_html(None, Path("/tmp/loff-studio.log"))
    for k in [*suggested(), TEST_MODEL]:
        assert k.architecture in text, k.architecture
    assert "rad-dino" in text and "MSRLA" in text
    assert all(k.licence.split(" ")[0] in text for k in KNOWN)


def test_a_project_with_nothing_remembered_gets_the_defaults_not_the_previous_projects(qtbot, tmp_path):
    """Walk: after training mini-MIAS with Lite0, opening the demo showed Lite0 (not the
    default) and the previous project's epochs on its Cache and Train pages."""
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from app.main import MainWindow
    from loff_core.project import Project

    w = MainWindow()
    w.confirm_close = True
    qtbot.addWidget(w)
    a, b = Project.create(tmp_path / "a"), Project.create(tmp_path / "b")
    w.state.set_project(b)
    default_backbone, default_epochs = w.cache_page.backbone.currentText(), w.train_page.epochs.value()
    w.state.set_project(a)
    w.cache_page.backbone.setCurrentText("vit_tiny_patch16_224")
    w.cache_page.image_size.setValue(512)
    w.cache_page.save_settings()
    w.train_page.epochs.setValue(7)
    w.train_page.head.setCurrentText("linear")
    w.train_page.save_settings()
    w.state.set_project(Project.open(b.root))  # nothing saved for b
    assert w.cache_page.backbone.currentText() == default_backbone != "vit_tiny_patch16_224"
    assert w.cache_page.image_size.value() == 0
    assert w.train_page.epochs.value() == default_epochs != 7 and w.train_page.head.currentText() == "attention"
    w.state.set_project(Project.open(a.root))
    assert w.cache_page.backbone.currentText() == "vit_tiny_patch16_224" and w.train_page.epochs.value() == 7
    w.state.runner.shutdown()


@pytest.mark.slow
def test_a_stopped_extraction_is_partial_and_not_offered_to_train(qtbot, tmp_path):
    """Walk: Stop during the demo's extraction merged 64 of 120 images into the cache and
    removed its batches folder; the Cache page said "active" (not PARTIAL) and Train was
    enabled. Here a real Stop after the first batch, then Extract again to finish."""
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from test_app import _new_project, _wait_idle, qtbot_button

    from app.main import MainWindow
    from loff_core.synthetic import write_synthetic_dataset

    labels = write_synthetic_dataset(tmp_path / "images", n_patients=6, size=(96, 80))
    w = MainWindow()
    w.confirm_close = True
    qtbot.addWidget(w)
    w.show()
    _new_project(w, tmp_path / "p")
    page = w.import_page
    page.folder.setText(str(tmp_path / "images"))
    page.labels.setText(str(labels))
    page._read_columns()
    page.task.setCurrentText("classification")
    qtbot.mouseClick(page.import_button, qtbot_button())
    _wait_idle(qtbot, w)
    n = len(w.state.project.catalog().entries)
    cache = w.cache_page
    cache.backbone.setCurrentText("vit_tiny_patch16_224")
    cache.random_init.setChecked(True)
    cache.image_size.setValue(32)
    cache.grid.setValue(2)
    cache.batch.setValue(2)
    qtbot.mouseClick(cache.extract_button, qtbot_button())
    job = w.state.runner.job
    job.progress.connect(lambda done, total, _text: job.stop() if 0 < done < total else None)
    _wait_idle(qtbot, w)
    project = w.state.project
    got = project.cached_images(project.settings.active_cache)
    assert got is not None and 0 < got < n, (got, n)
    assert not (project.caches_dir / f"{project.settings.active_cache}.parts").exists()
    assert "(partial: " in cache.info.text()
    assert not w.train_page.train_button.isEnabled() and "partial" in w.train_page.status.text()
    qtbot.mouseClick(cache.extract_button, qtbot_button())  # Extract again finishes it
    _wait_idle(qtbot, w)
    assert project.cached_images(project.settings.active_cache) == n
    assert "partial" not in cache.info.text() and w.train_page.train_button.isEnabled()
    w.state.runner.shutdown()
