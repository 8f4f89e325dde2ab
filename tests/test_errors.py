"""Errors with meaning, words at the edge (issue 10, point 2): the engine's errors carry a
reason, a file and a remedy key; the terminal and the window each word every remedy; no
engine message names a `loff` command or option; a file-system error reads the same in
the CLI and the app (tests/test_app_errors.py for the window)."""

from __future__ import annotations

import ast
import errno
import pickle
import re
from pathlib import Path

import pytest

from loff_core.errors import (CacheError, ExportError, FileSystemError, LoffError, ProjectError, Remedy,
                              UnreadableImage, explain_file_error)
from loff_core.cli.remedies import TERMINAL, terminal_text

ROOT = Path(__file__).resolve().parent.parent

#: parameters of every kind a remedy takes, so that each wording is rendered fully once
FULL = {"project": "/data/proj", "download": "dinov2-vits14", "size_mb": 88.0, "licence": "Apache-2.0",
        "name": "my-vit", "own": True, "backbone": "tf_efficientnet_lite0"}


def _window():
    from app.remedies import WINDOW  # Qt-free: no display needed

    return WINDOW


@pytest.mark.parametrize("remedy", list(Remedy))
def test_every_remedy_has_a_terminal_and_a_window_wording(remedy):
    window = _window()
    assert set(TERMINAL) == set(Remedy) and set(window) == set(Remedy)
    for params in ({}, FULL):  # optional parameters may be missing
        error = LoffError("something went wrong", "/data/x.csv", remedy, **params)
        terminal, shown = terminal_text(error), error.message(window)
        assert terminal.startswith("/data/x.csv: something went wrong; ") and len(terminal) > 40
        assert shown.startswith("/data/x.csv: something went wrong; ") and shown != terminal
        remedy_words = shown.split("; ", 1)[1]
        # the window names controls, never a command or an option
        assert "loff " not in remedy_words and not re.search(r"(^|\s|\()--[a-z]", remedy_words), remedy_words


def test_remedy_words_carry_their_parameters():
    error = CacheError("no feature cache yet", "/data/proj", Remedy.EXTRACT, project="/data/proj")
    assert terminal_text(error) == "/data/proj: no feature cache yet; run `loff extract /data/proj`"
    assert str(error) == "/data/proj: no feature cache yet"  # the engine's words: no front end's
    assert error.message(_window()) == "/data/proj: no feature cache yet; run Extract on the Cache page"
    assert error.reason == "no feature cache yet" and error.path == "/data/proj" and error.remedy is Remedy.EXTRACT
    weights = LoffError("no weights", remedy=Remedy.CHOOSE_WEIGHTS_OR_RANDOM, **FULL)
    assert "`loff weights get dinov2-vits14` downloads them (88 MB, licence Apache-2.0)" in terminal_text(weights)
    assert "--random-init" in terminal_text(weights) and "random weights on the Cache page" in weights.message(_window())


def test_old_constructor_shapes_and_pickling_keep_the_message():
    assert str(ProjectError("p: broken")) == "p: broken" and ProjectError("p: broken").path is None
    assert str(ExportError("refused", "/h")) == "/h: refused"
    image = UnreadableImage("/img.dcm", "not a DICOM file")
    assert str(image) == "/img.dcm: not a DICOM file" and image.path == "/img.dcm"
    error = ProjectError("no training runs yet", "/p", Remedy.TRAIN, project="/p")
    back = pickle.loads(pickle.dumps(error))  # a worker process hands its error back whole
    assert type(back) is ProjectError and terminal_text(back) == terminal_text(error) == \
        "/p: no training runs yet; run `loff train /p`"
    assert back.remedy is Remedy.TRAIN and back.params == {"project": "/p"}


def test_engine_messages_name_no_front_end():
    """The literals the app once rewrote with regular expressions are gone from the engine:
    only the terminal's table (and the CLI itself) names commands and options."""
    literals = ["`loff extract", "`loff import", "`loff train", "--device cpu", "--random-init", "--weights FILE",
                "--head linear", "--file-column", "--label-column", "--on-patient-overlap", "`loff weights",
                "--backbone", "--layers", "--patient-from-name"]
    edge = {"settings.py", "demo.py"}  # loff_core/cli/ (the terminal, its remedies.py) is not read
    found = []
    for path in sorted((ROOT / "loff_core").glob("*.py")):
        if path.name in edge:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # what an error says: the strings of every `raise` and of every `...Error(...)` call
            is_error = isinstance(node, ast.Raise) or (isinstance(node, ast.Call) and getattr(
                node.func, "id", getattr(node.func, "attr", "")).endswith("Error"))
            if not is_error:
                continue
            text = "".join(c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str))
            if any(literal in text for literal in literals):
                found.append(f"{path.name}:{node.lineno}: {text}")
    assert found == []
    app = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "app").rglob("*.py"))
    assert "re.sub" not in app and "_FOR_WINDOW" not in app and "for_window" not in app


def test_explain_file_error_names_the_file_and_the_reason():
    full = OSError(errno.ENOSPC, "No space left on device", "/proj/catalog.csv")
    error = explain_file_error(full)
    assert isinstance(error, FileSystemError) and error.errno == errno.ENOSPC
    assert str(error) == "cannot write /proj/catalog.csv: No space left on device"
    assert str(explain_file_error(PermissionError(errno.EACCES, "Permission denied", "/p/x"))) == \
        "cannot access /p/x: Permission denied"
    assert str(explain_file_error(OSError(errno.EROFS, "Read-only file system"), Path("/p"))) == \
        "cannot write in /p: Read-only file system"
    assert explain_file_error(ValueError("no file here")) is None
    assert explain_file_error(ZeroDivisionError()) is None


def _project_without_cache(tmp_path):
    from loff_core.cli import main
    from loff_core.synthetic import write_synthetic_dataset

    labels = write_synthetic_dataset(tmp_path / "images", n_patients=4, size=(64, 56), seed=1)
    project = tmp_path / "proj"
    assert main(["import", str(project), str(tmp_path / "images"), "--labels", str(labels), "--quiet"]) == 0
    return project


def test_cli_words_a_missing_cache_as_loff_extract(tmp_path, capsys):
    from loff_core.cli import main

    project = _project_without_cache(tmp_path)
    capsys.readouterr()
    assert main(["train", str(project), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == f"loff train: {project}: no feature cache yet; run `loff extract {project}`\n"
    assert main(["train", str(tmp_path / "images"), "--quiet"]) == 1  # no project at all
    err = capsys.readouterr().err
    assert "not a LOFF Studio project" in err and "create one with `loff import`" in err


def test_cli_words_a_full_disk_from_the_engine(tmp_path, capsys, monkeypatch):
    """The CLI's file-error explanation is the engine's `explain_file_error`."""
    from loff_core import cli
    from loff_core.cli import project as project_commands

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "proj" / "runs" / "x.json"))
    monkeypatch.setattr(project_commands, "cmd_info", full)
    assert cli.main(["info", str(tmp_path / "proj")]) == 1
    assert capsys.readouterr().err == f"loff info: cannot write {tmp_path / 'proj' / 'runs' / 'x.json'}: " \
                                      "No space left on device\n"
