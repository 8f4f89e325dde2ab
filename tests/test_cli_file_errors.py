"""The `loff` command on awkward file systems and file names: a read-only or full location
is a one-line reason (file + cause) and exit 1, never a traceback, and nothing written
before is lost; file names that are not UTF-8 go through the whole story (import,
extract, train, evaluate, export, predict); named pipes in an image folder never block
an import."""

from __future__ import annotations

import builtins
import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import loff_core.catalog as catalog_mod
import loff_core.fsutil as fsutil_mod
import loff_core.project as project_mod
from loff_cli import loff_json
from loff_core.cli import file_error_reason, main
from loff_core.predictions import read_predictions_csv
from loff_core.project import Project

TINY = ["--backbone", "vit_tiny_patch16_224", "--random-init", "--image-size", "32", "--grid", "2",
        "--workers", "0", "--batch-size", "8"]
ODD = b"caf\xe9"  # Latin-1 bytes: not UTF-8


def _png(path: Path | bytes, value: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(value, 20, (40, 36)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(os.fsdecode(path), format="PNG")


def _odd_named_images(root: Path) -> Path:
    """Two classes (folder names), every file named with non-UTF-8 bytes."""
    for label, value in (("dark", 60), ("bright", 190)):
        folder = os.fsencode(root / label)
        os.makedirs(folder, exist_ok=True)
        for i in range(8):
            _png(folder + b"/" + ODD + b"-%d.png" % i, value, seed=value + i)
    return root


def _run(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args] + ["--quiet"])
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project of non-UTF-8-named images, extracted and trained (shared, read-only use)."""
    root = tmp_path_factory.mktemp("odd")
    images = _odd_named_images(root / "images")
    project = root / "p"
    assert main(["import", str(project), str(images), "--quiet", "--json"]) == 0
    assert main(["extract", str(project), *TINY, "--quiet", "--json"]) == 0
    assert main(["train", str(project), "--epochs", "2", "--quiet", "--json"]) == 0
    return project, images


# -- 1. read-only / full locations -------------------------------------------------------
def test_read_only_project_lock_is_one_line_reason(trained, capsys, monkeypatch):
    project, images = trained
    real_open = builtins.open

    def read_only(file, mode="r", *args, **kwargs):
        if str(file).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(project_mod, "open", read_only, raising=False)  # the lock's open()
    for command in (["extract", project, *TINY], ["train", project, "--epochs", "1"],
                    ["import", project, images]):  # the lock comes before any scan
        code, err = _run(capsys, *command)
        line = _one_line(err)
        assert code == 1
        assert line == f"loff {command[0]}: cannot write {project / '.lock'}: Read-only file system", line
    # evaluate reads an existing run: it takes the shared reader lock, never the writer's .lock
    code, err = _run(capsys, "evaluate", project)
    assert code == 0, err


def test_full_disk_during_import_keeps_the_old_catalog(tmp_path, capsys, monkeypatch):
    images = _odd_named_images(tmp_path / "images")
    project = tmp_path / "p"
    loff_json(capsys, "import", project, images)
    before = {p.name: p.read_bytes() for p in project.iterdir() if p.is_file() and p.name != ".lock"}
    real_open = builtins.open

    class Full:
        """A file on a full disk: opening works, writing does not (as write(2) says ENOSPC)."""

        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def full_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return Full(fh) if "w" in mode else fh

    monkeypatch.setattr(catalog_mod, "open", full_open, raising=False)  # Catalog.save's write
    _png(images / "dark" / "new.png", 60, seed=99)  # an import that would change the catalog
    code, err = _run(capsys, "import", project, images)
    assert code == 1
    assert _one_line(err) == f"loff import: cannot write {project / 'catalog.csv'}: No space left on device"
    after = {p.name: p.read_bytes() for p in project.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before  # catalog, sidecar, report and settings as they were; no temporary left


def test_export_and_predict_csv_onto_a_read_only_location(trained, tmp_path, capsys, monkeypatch):
    project, images = trained
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):
        if self.name == "ro-head":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, err = _run(capsys, "export", project, tmp_path / "ro-head")
    assert code == 1
    assert _one_line(err) == f"loff export: cannot write {tmp_path / 'ro-head'}: Read-only file system"
    monkeypatch.undo()

    loff_json(capsys, "export", project, tmp_path / "head")
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, dir=None, prefix="", suffix="", **kw):
        if dir is not None and Path(dir).name == "ro":
            raise OSError(errno.EROFS, "Read-only file system", os.path.join(dir, f"{prefix}abcd1234{suffix}"))
        return real_mkstemp(*a, dir=dir, prefix=prefix, suffix=suffix, **kw)

    monkeypatch.setattr(fsutil_mod.tempfile, "mkstemp", mkstemp)
    (tmp_path / "ro").mkdir()
    target = tmp_path / "ro" / "predictions.csv"
    code, err = _run(capsys, "predict", tmp_path / "head", images / "dark", "--random-init", "--csv", target)
    assert code == 1  # the target is named, not the hidden temporary
    assert _one_line(err) == f"loff predict: cannot write {target}: Read-only file system"
    assert not target.exists()


def test_train_past_the_file_size_limit_is_one_line_and_leaves_no_run(trained, tmp_path):
    """A real write failure (RLIMIT_FSIZE: writes beyond the limit fail with EFBIG) in a
    separate process: whatever file it hits (head.safetensors, run.json), one line, exit 1,
    and no run (not even a half-written one) appears."""
    project, _ = trained
    runs_before = sorted(p.name for p in (project / "runs").iterdir())
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200)); "
            "from loff_core.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "train", str(project), "--epochs", "1", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent)
    assert done.returncode == 1, done.stderr
    line = _one_line(done.stderr)
    assert line.startswith("loff train: cannot write ") and "large" in line.lower(), line
    assert sorted(p.name for p in (project / "runs").iterdir()) == runs_before


def test_file_error_reason_reads_safetensors_io_errors():
    SafetensorError = type("SafetensorError", (Exception,), {})
    exc = SafetensorError('Error while serializing: I/O error: Read-only file system (os error 30) at path "/x/.tmp1"')
    assert file_error_reason(exc) == "cannot write /x/.tmp1: Read-only file system"
    exc = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert file_error_reason(exc, Path("p")) == "cannot write in p: No space left on device"
    assert file_error_reason(ValueError("I/O error: x (os error 28)")) is None
    assert file_error_reason(OSError("Unable to create file\n(errno 30)")) == "Unable to create file (errno 30)"


# -- 2. non-UTF-8 file names through the whole story ----------------------------------------
def test_non_utf8_names_through_evaluate_export_and_predict(trained, tmp_path, capsys):
    project, images = trained
    for split in ("train", "val", "test"):
        out = loff_json(capsys, "evaluate", project, "--split", split, "--bootstrap", "20")
        assert out["n"] > 0 and all(os.fsencode(p["path"]).split(b"/")[-1].startswith(ODD)
                                    for p in out["predictions"])
        for p in out["predictions"]:  # the JSON path (relative to the project) gives the file back
            assert os.path.isfile(os.fsencode(project) + b"/" + os.fsencode(p["path"]))
        run = Project.open(project).run(out["run"])
        csv_path = run.path / f"predictions-{split}.csv"
        assert ODD in csv_path.read_bytes()  # the original bytes, not an escape
        rows = read_predictions_csv(csv_path)
        assert [r["path"] for r in rows] == [p["path"] for p in out["predictions"]]
    code, _ = _run(capsys, "evaluate", project)  # the human summary too
    assert code == 0

    loff_json(capsys, "export", project, tmp_path / "head")
    one = Path(os.fsdecode(os.fsencode(images / "dark") + b"/" + ODD + b"-0.png"))
    predicted = loff_json(capsys, "predict", tmp_path / "head", one, images / "bright", "--random-init",
                          "--csv", tmp_path / "out.csv")
    assert len(predicted["predictions"]) == 9 and predicted["failed"] == []
    assert predicted["predictions"][0]["path"] == str(one)
    raw = (tmp_path / "out.csv").read_bytes()
    assert os.fsencode(one) in raw and raw.count(ODD) == 9
    code, _ = _run(capsys, "predict", tmp_path / "head", one, "--random-init")
    assert code == 0


def test_non_utf8_names_in_the_human_output_of_a_real_terminal(tmp_path):
    """Without --json, a strict UTF-8 stdout/stderr (not the test's capture) must not crash."""
    images = _odd_named_images(tmp_path / "images")
    os.mkfifo(os.fsencode(images / "dark") + b"/" + ODD + b"-pipe.png")  # a failure line with the odd name
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    done = subprocess.run([sys.executable, "-m", "loff_core.cli", "import", str(tmp_path / "p"), str(images),
                           "--quiet"], capture_output=True, env=env, timeout=120, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert "caf\ufffd-pipe.png".encode() in done.stdout


# -- 3. named pipes and other special files -----------------------------------------------
def test_fifo_in_the_images_folder_never_blocks_the_import(tmp_path):
    images = _odd_named_images(tmp_path / "images")
    os.mkfifo(images / "dark" / "pipe")  # no extension: would be opened to look for the DICOM magic
    os.mkfifo(images / "dark" / "pipe.dcm")
    os.mkfifo(images / "dark" / "pipe.txt")  # no image name: ignored like any other non-image
    done = subprocess.run([sys.executable, "-m", "loff_core.cli", "import", str(tmp_path / "p"), str(images),
                           "--json", "--quiet"], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    failed = {f["path"]: f["reason"] for f in out["failed"]}
    assert set(failed) == {"dark/pipe", "dark/pipe.dcm"}, failed
    assert all("named pipe" in r and "not a regular file" in r for r in failed.values()), failed
    assert out["imported"] == 16
