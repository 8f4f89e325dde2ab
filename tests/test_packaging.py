"""Packaging (issue 15): resources found in every way the app runs, the icon set, the Linux
desktop files, install / uninstall of a release artefact under a temporary HOME, the
window's --quit-after option, and (slow) the wheel installed into a fresh virtual
environment outside the clone. The frozen build itself is tested by packaging/smoke.sh
(CI: packaging/ci.sh), not here: it takes minutes and gigabytes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINUX = REPO / "packaging" / "linux"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def test_resource_path_finds_the_checkout_resources():
    from app.resources import app_icon_path, resource_path, resources_root

    assert resources_root() == REPO / "resources"
    assert resource_path("icons", "loff-studio.svg") == REPO / "resources" / "icons" / "loff-studio.svg"
    assert app_icon_path().is_file()


def test_resource_path_prefers_the_frozen_bundle(tmp_path, monkeypatch):
    from app import resources

    (tmp_path / "resources" / "icons").mkdir(parents=True)
    (tmp_path / "resources" / "icons" / "x.png").write_bytes(b"png")
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert resources.resource_path("icons", "x.png") == tmp_path / "resources" / "icons" / "x.png"


def test_resource_path_says_plainly_when_nothing_is_found(tmp_path, monkeypatch):
    from app import resources

    monkeypatch.setattr(resources, "__file__", str(tmp_path / "app" / "resources.py"))
    monkeypatch.setattr(resources, "_PACKAGE", "loff_studio_resources_not_installed")
    with pytest.raises(FileNotFoundError, match="resources folder"):
        resources.resources_root()


def test_icon_set_is_complete_and_sized():
    from PIL import Image

    icons = REPO / "resources" / "icons"
    for size in SIZES:
        with Image.open(icons / "hicolor" / f"{size}x{size}" / "apps" / "org.loff.Studio.png") as im:
            assert im.size == (size, size) and im.mode == "RGBA"
            assert im.getpixel((size // 2, size // 2))[3] == 255  # drawn, not transparent
    with Image.open(icons / "loff-studio.ico") as ico:
        assert (256, 256) in ico.info["sizes"] and (16, 16) in ico.info["sizes"]
    with Image.open(icons / "loff-studio.icns") as icns:
        assert icns.size[0] >= 256
    assert (icons / "hicolor" / "scalable" / "apps" / "org.loff.Studio.svg").read_bytes() == \
        (icons / "loff-studio.svg").read_bytes()
    check = subprocess.run([sys.executable, str(REPO / "packaging" / "make_icons.py"), "--check"])
    assert check.returncode == 0


def test_window_icon_and_quit_after_option():
    from app.main import _app_icon, _pop_quit_after

    argv = ["proj", "--quit-after", "250"]
    assert _pop_quit_after(argv) == 250 and argv == ["proj"]
    assert _pop_quit_after(["proj"]) is None
    with pytest.raises(SystemExit, match="milliseconds"):
        _pop_quit_after(["--quit-after", "soon"])
    from PySide6.QtWidgets import QApplication

    _app = QApplication.instance() or QApplication([])
    icon = _app_icon()
    assert icon is not None and {s.width() for s in icon.availableSizes()} >= {16, 32, 256}


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None, reason="desktop-file-utils not installed "
                    "(packaging/ci.sh installs it and validates)")
def test_desktop_entry_is_valid():
    out = subprocess.run(["desktop-file-validate", str(LINUX / "org.loff.Studio.desktop")], capture_output=True,
                         text=True)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("appstreamcli") is None, reason="appstream not installed (packaging/ci.sh "
                    "installs it and validates)")
def test_appstream_metainfo_is_valid():
    out = subprocess.run(["appstreamcli", "validate", "--no-net", str(LINUX / "org.loff.Studio.metainfo.xml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _stand_in_bundle(root: Path) -> Path:
    """A folder shaped like dist/loff-studio (two programs, _internal/ with a link)."""
    dist = root / "loff-studio"
    (dist / "_internal").mkdir(parents=True)
    (dist / "loff").write_text('#!/bin/sh\necho "loff 0.0-stand-in"\n')
    (dist / "loff-studio").write_text('#!/bin/sh\necho "usage: loff-studio [PROJECT]"\n')
    for f in ("loff", "loff-studio"):
        (dist / f).chmod(0o755)
    (dist / "_internal" / "link").symlink_to("../loff")
    return dist


def test_release_artefact_installs_and_uninstalls_exactly(tmp_path):
    dist = _stand_in_bundle(tmp_path / "build")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    subprocess.run(["bash", str(REPO / "packaging" / "make_release.sh"), str(dist), "9.9", str(tmp_path / "out")],
                   check=True, env=env)
    tarball, = (tmp_path / "out").glob("loff-studio-9.9-linux-*.tar.gz")
    out = subprocess.run(["bash", str(LINUX / "test_install.sh"), str(tarball)], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "uninstall did not restore HOME" not in out.stderr and "ok" in out.stdout


def test_install_refuses_to_overwrite_a_file_it_does_not_own(tmp_path):
    dist = _stand_in_bundle(tmp_path / "release")
    for name in ("install.sh", "uninstall.sh", "org.loff.Studio.desktop", "org.loff.Studio.metainfo.xml"):
        shutil.copy(LINUX / name, dist.parent / name)
    shutil.copytree(REPO / "resources" / "icons" / "hicolor", dist.parent / "icons" / "hicolor")
    home = tmp_path / "home"
    theirs = home / ".local" / "share" / "applications" / "org.loff.Studio.desktop"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("someone else's\n")
    env = {k: v for k, v in os.environ.items() if k != "XDG_DATA_HOME"} | {"HOME": str(home)}
    out = subprocess.run(["bash", str(dist.parent / "install.sh")], capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "already exists" in out.stderr and str(theirs) in out.stderr
    assert theirs.read_text() == "someone else's\n"


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_with_working_commands_and_resources(tmp_path):
    """`pip install` of the built wheel (not editable) outside the clone: loff --help, loff
    demo, and the icon found through importlib (not the checkout). Minutes: torch installs
    from the local package index / pip cache."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True)
    wheel, = wheels.glob("loff_studio-*.whl")
    import zipfile

    assert "loff_core/templates/report.html.j2" in zipfile.ZipFile(wheel).namelist()  # the model report's page
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = dict(os.environ, HF_HUB_OFFLINE="1", QT_QPA_PLATFORM="offscreen")
    env.pop("PYTHONPATH", None)  # a checkout on the path (its .egg-info) would make pip skip the install
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], check=True,
                   cwd=tmp_path, env=env)
    run = lambda *cmd: subprocess.run(list(cmd), capture_output=True, text=True, cwd=tmp_path, env=env)  # noqa: E731
    out = run(str(venv / "bin" / "loff"), "--help")
    assert out.returncode == 0 and "COMMAND" in out.stdout, out.stderr
    out = run(str(venv / "bin" / "loff-studio"), "--help")
    assert out.returncode == 0 and "usage: loff-studio" in out.stdout, out.stderr
    out = run(str(venv / "bin" / "loff"), "demo", str(tmp_path / "demo"), "--patients", "4", "--json", "--quiet")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "demo" / "loff-project.json").is_file()
    out = run(str(py), "-c", "import app.resources as r; p = r.app_icon_path(); print(p); print(p.is_file()); "
              "print(r.resource_path('icons', 'hicolor', '256x256', 'apps', 'org.loff.Studio.png').is_file())")
    assert out.returncode == 0, out.stderr
    path, svg_found, png_found = out.stdout.split()
    assert svg_found == png_found == "True"
    assert Path(path).is_relative_to(venv) and "loff_studio_resources" in path  # the installed copy
