"""The project folder: relative paths survive a move, a second writer is refused, files
from a newer version are refused, and the engine never imports Qt."""

from __future__ import annotations

import ast
import json
import multiprocessing as mp
import shutil
from pathlib import Path

import pytest
from PIL import Image

from loff_core.errors import ProjectError
from loff_core.project import Project
from loff_core.project_file import PROJECT_FILE
from loff_core import steps
from loff_core.settings import ExtractSettings


def _png_folder(root: Path, n: int = 6) -> Path:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (32, 24), color=40 * i).save(root / label / f"{label}{i}.png")
    return root


def test_project_folder_can_be_moved(tmp_path):
    work = tmp_path / "work"
    images = _png_folder(work / "images")
    project = Project.create(work / "proj")
    summary = steps.import_images(project, images)
    assert summary.imported == 12 and summary.classes == ["a", "b"]
    assert project.settings.images_root == "../images"

    shutil.move(str(work), str(tmp_path / "moved"))
    moved = Project.open(tmp_path / "moved" / "proj")
    entry = moved.catalog().entries[0]
    assert moved.image_path(entry).is_file()
    assert str(tmp_path / "moved") in str(moved.image_path(entry))


def test_settings_round_trip_and_unknown_keys_are_kept(tmp_path):
    project = Project.create(tmp_path / "p")
    data = json.loads(project.settings_path.read_text())
    data["added_by_a_newer_minor_version"] = {"x": 1}
    project.settings_path.write_text(json.dumps(data))
    again = Project.open(tmp_path / "p")
    again.save()
    assert json.loads(again.settings_path.read_text())["added_by_a_newer_minor_version"] == {"x": 1}
    assert again.settings.salt == project.settings.salt and len(bytes.fromhex(again.settings.salt)) == 16


def test_newer_schema_is_refused(tmp_path):
    project = Project.create(tmp_path / "p")
    data = json.loads(project.settings_path.read_text())
    data["schema_version"] = 99
    project.settings_path.write_text(json.dumps(data))
    with pytest.raises(ProjectError, match="newer LOFF Studio"):
        Project.open(tmp_path / "p")


def test_corrupt_project_file_is_named(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / PROJECT_FILE).write_text("{ not json")
    with pytest.raises(ProjectError, match=PROJECT_FILE):
        Project.open(tmp_path / "p")


def _hold_lock(root: str, ready, release) -> None:
    with Project.open(root).lock():
        ready.set()
        release.wait(30)


def test_second_process_is_refused_by_the_lock(tmp_path):
    Project.create(tmp_path / "p")
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path / "p"), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(ProjectError, match="being changed by process"):
            with Project.open(tmp_path / "p").lock():
                pass
    finally:
        release.set()
        holder.join(30)
    with Project.open(tmp_path / "p").lock():  # free again once the other process is done
        pass


def test_work_under_the_lock_starts_from_the_project_on_disk(tmp_path):
    """The app keeps a project open for hours; if another process re-imports meanwhile, the
    app's next extraction must not write its stale settings (old catalog version and
    classes) back over the new ones."""
    from loff_core.backbones import BackboneSpec

    steps.import_images(Project.create(tmp_path / "p"), _png_folder(tmp_path / "first"))
    long_open = Project.open(tmp_path / "p")  # e.g. the app's window
    assert long_open.settings.classes == ["a", "b"]

    other = Project.open(tmp_path / "p")  # e.g. `loff import` in a terminal
    folder = tmp_path / "second"
    for label in ("x", "y", "z"):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (32, 24), color=60 * i).save(folder / label / f"{label}{i}.png")
    steps.import_images(other, folder)
    version = other.settings.catalog_version

    steps.extract(long_open, BackboneSpec(name="vit_tiny_patch16_224", random_init=True, image_size=32, grid=2),
                  ExtractSettings(device="cpu", batch_size=4, workers=0))
    on_disk = Project.open(tmp_path / "p").settings
    assert on_disk.catalog_version == version
    assert on_disk.classes == ["x", "y", "z"]
    assert on_disk.active_cache is not None
    assert len(long_open.catalog().entries) == 6  # the new catalog, not the cached old one


def test_engine_never_imports_qt():
    engine = Path(__file__).resolve().parents[1] / "loff_core"
    offenders = []
    for path in engine.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in {"PySide6", "pyqtgraph", "shiboken6", "app"}]
    assert offenders == []


def test_changed_files_are_extracted_again_after_a_re_import(tmp_path):
    """The cache is keyed by the file's content at import (path + size + mtime), so features
    of replaced or edited images are never silently reused."""
    import os

    from loff_core.backbones import BackboneSpec

    spec = BackboneSpec(name="vit_tiny_patch16_224", random_init=True, image_size=32, grid=2)
    images = _png_folder(tmp_path / "images", n=3)
    project = Project.create(tmp_path / "p")
    steps.import_images(project, images)
    assert steps.extract(project, spec, ExtractSettings(device="cpu", workers=0)).extracted == 6

    steps.import_images(project, images)  # nothing changed: nothing to extract
    assert steps.extract(project, spec, ExtractSettings(device="cpu", workers=0)).extracted == 0

    edited = images / "a" / "a1.png"
    Image.new("L", (32, 24), color=250).save(edited)
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    steps.import_images(project, images)
    assert steps.extract(project, spec, ExtractSettings(device="cpu", workers=0)).extracted == 1

    shutil.rmtree(images)  # another folder with the same file names
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (40, 30), color=200 - 30 * i).save(images / label / f"{label}{i}.png")
    steps.import_images(project, images)
    assert steps.extract(project, spec, ExtractSettings(device="cpu", workers=0)).extracted == 6


def test_a_stopped_extraction_does_not_replace_the_cache_training_uses(tmp_path):
    from loff_core.backbones import BackboneSpec
    from loff_core.progress import Progress

    project = Project.create(tmp_path / "p")
    steps.import_images(project, _png_folder(tmp_path / "images", n=4))
    first = BackboneSpec(name="vit_tiny_patch16_224", random_init=True, image_size=32, grid=2)
    steps.extract(project, first, ExtractSettings(device="cpu", workers=0))
    complete = project.settings.active_cache

    progress = Progress()
    progress.on_report = lambda d, t, m: progress.request_stop() if d >= 2 else None
    other = BackboneSpec(name="vit_tiny_patch16_224", random_init=True, image_size=48, grid=2)
    result = steps.extract(project, other, ExtractSettings(device="cpu", workers=0, batch_size=2), progress=progress)
    assert result.stopped and result.extracted < 8
    assert Project.open(tmp_path / "p").settings.active_cache == complete
    assert any("keeps using the previous cache" in n for n in result.notes)

    finished = steps.extract(project, other, ExtractSettings(device="cpu", workers=0, batch_size=2))  # resumed to the end
    assert not finished.stopped
    assert Project.open(tmp_path / "p").settings.active_cache != complete
