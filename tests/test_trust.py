"""A project and a head from someone else are input like any other (issue 11).

Each test plays one attack on a copy of a small trained project or exported head and
checks the promise: refused with one line naming the file (and row or field) and the
reason, or flagged, never a silently wrong result, never a file read outside where it
belongs, never a traceback, never unbounded memory. Every test here failed on the code
before the second hardening round (noted per test)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loff_cli import loff_json
from loff_core.cli import main
from loff_core.errors import ExportError, ProjectError
from loff_core.project import Project
from loff_core import steps
from loff_core.settings import EvaluateSettings

TINY = ["--backbone", "vit_tiny_patch16_224", "--random-init", "--image-size", "32", "--grid", "2",
        "--workers", "0"]


def _images(folder: Path, per_class: int = 8, names: tuple[str, str] = ("dark", "bright")) -> Path:
    rng = np.random.default_rng(1)
    for cls, level in zip(names, (60, 190)):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(rng.normal(level, 25, (40, 36)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / cls / f"{cls}-{i}.png")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Imported, extracted, two runs trained, the second exported (shared: tests copy it)."""
    root = tmp_path_factory.mktemp("trust")
    images = _images(root / "images")
    project = root / "p"
    for args in (["import", project, images], ["extract", project, *TINY],
                 ["train", project, "--epochs", "2", "--head", "linear"],
                 ["train", project, "--epochs", "2", "--head", "linear", "--seed", "1"],
                 ["export", project, root / "head"]):
        assert main([str(a) for a in args] + ["--quiet", "--json"]) == 0, args
    return root


def _copy(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the project and its images (same relative layout, so the images are found)."""
    shutil.copytree(trained / "images", tmp_path / "images")
    shutil.copytree(trained / "p", tmp_path / "p", ignore=shutil.ignore_patterns(".lock"))
    shutil.copytree(trained / "head", tmp_path / "head")
    return tmp_path / "p", tmp_path / "head"


def _run(capsys, *args: object) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args] + ["--quiet", "--json"])
    return code, capsys.readouterr().err.strip()


def _one_line(capsys, *args: object) -> str:
    """`loff ARGS` must fail with exit 1 and exactly one line (no traceback)."""
    code, err = _run(capsys, *args)
    assert code == 1, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _settings(project: Path) -> dict:
    return json.loads((project / "loff-project.json").read_text())


def _write_settings(project: Path, data: dict) -> None:
    (project / "loff-project.json").write_text(json.dumps(data))


def _runs(project: Path) -> list[Path]:
    return sorted(p for p in (project / "runs").iterdir() if not p.name.startswith("."))


def _cache(project: Path) -> Path:
    return project / "caches" / f"{_settings(project)['active_cache']}.h5"


# -- class 2: everything read from a project is checked ---------------------------------
def test_cache_whose_recorded_fingerprint_differs_from_its_name_is_refused(trained, tmp_path, capsys):
    """Old: used (evaluate exit 0)."""
    import h5py

    project, _ = _copy(trained, tmp_path)
    with h5py.File(_cache(project), "r+") as f:
        f.attrs["fingerprint"] = "0123456789abcdef"
    err = _one_line(capsys, "evaluate", project)
    assert str(_cache(project)) in err and "0123456789abcdef" in err and "not used" in err


def test_cache_of_another_backbone_under_the_active_name_is_refused(trained, tmp_path, capsys):
    """The file's own fingerprint kept, its backbone another: old: used, exit 0 (the swapped
    cache of the issue dropped Kendall's tau from 0.74 to 0.33 with no stale flag)."""
    import h5py

    project, _ = _copy(trained, tmp_path)
    with h5py.File(_cache(project), "r+") as f:
        backbone = json.loads(f.attrs["backbone"])
        backbone["name"] = "vit_small_patch16_224"
        f.attrs["backbone"] = json.dumps(backbone)
    err = _one_line(capsys, "evaluate", project)
    assert "does not give its fingerprint" in err


def test_tokens_of_the_wrong_width_are_refused(trained, tmp_path, capsys):
    """Old: a torch shape error (traceback) deep in the head."""
    import h5py

    project, _ = _copy(trained, tmp_path)
    with h5py.File(_cache(project), "r+") as f:
        n, h, w, c = f["tokens"].shape
        del f["tokens"], f["cls"]
        f.create_dataset("tokens", data=np.zeros((n, h, w, c // 2), np.float16))
        f.create_dataset("cls", data=np.zeros((n, c // 2), np.float16))
    err = _one_line(capsys, "evaluate", project)
    assert "wide" in err and str(c) in err


def test_nan_in_cached_features_is_refused_never_scored(trained, tmp_path, capsys):
    """Old: evaluate exit 0 with NaN probabilities scored as predictions."""
    import h5py

    project, _ = _copy(trained, tmp_path)
    with h5py.File(_cache(project), "r+") as f:
        tokens = f["tokens"][:]
        tokens[:, 0, 0, 0] = np.nan
        f["tokens"][:] = tokens
    assert "NaN or infinity" in _one_line(capsys, "evaluate", project)
    assert "NaN or infinity" in _one_line(capsys, "train", project, "--epochs", "1")


def test_run_whose_classes_do_not_match_its_head_is_named_and_the_others_still_work(trained, tmp_path, capsys):
    """Old: `info` and `evaluate` of every run crashed or used the wrong class count."""
    project, _ = _copy(trained, tmp_path)
    first, second = _runs(project)
    record = json.loads((first / "run.json").read_text())
    record["classes"] = ["a", "b", "c"]
    (first / "run.json").write_text(json.dumps(record))
    info = loff_json(capsys, "info", project)
    assert [r["run"] for r in info["runs"]] == [second.name]
    assert info["broken_runs"][0]["run"] == first.name and "3 classes" in info["broken_runs"][0]["reason"]
    assert "3 classes" in _one_line(capsys, "evaluate", project, "--run", first.name)
    assert loff_json(capsys, "evaluate", project, "--run", second.name)["n"] > 0


def test_corrupt_run_json_never_breaks_info_train_or_evaluate_of_the_others(trained, tmp_path, capsys):
    """Old: `info` ended in a JSONDecodeError traceback, and so did train and evaluate."""
    project, _ = _copy(trained, tmp_path)
    first, second = _runs(project)
    (first / "run.json").write_text('{"run_id": "x", "classes": [')  # truncated
    info = loff_json(capsys, "info", project)
    assert [r["run"] for r in info["runs"]] == [second.name]
    assert "unreadable run record" in info["broken_runs"][0]["reason"]
    assert loff_json(capsys, "evaluate", project)["run"] == second.name
    loff_json(capsys, "train", project, "--epochs", "1", "--head", "linear")
    assert "unreadable run record" in _one_line(capsys, "evaluate", project, "--run", first.name)


def test_runs_carry_a_checksum_over_settings_and_head(trained, tmp_path, capsys):
    """Old: a run.json edited after training (here its recorded cache) was used as if trained so."""
    project, _ = _copy(trained, tmp_path)
    run = _runs(project)[-1]
    record = json.loads((run / "run.json").read_text())
    assert len(record["checksum"]) == 64
    record["best_epoch"] = 99
    (run / "run.json").write_text(json.dumps(record))
    assert "checksum mismatch" in _one_line(capsys, "evaluate", project)


def test_catalog_label_outside_the_classes_is_refused_with_the_row(trained, tmp_path, capsys):
    """Old: a ValueError traceback (or the image scored under a class the head never had)."""
    project, _ = _copy(trained, tmp_path)
    lines = (project / "catalog.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    cells[header.index("label")] = "zebra"
    lines[1] = ",".join(cells)
    (project / "catalog.csv").write_text("\n".join(lines) + "\n")
    err = _one_line(capsys, "evaluate", project)
    assert "row 2" in err and "'zebra'" in err


# -- class 3: paths stay where they belong -----------------------------------------------
@pytest.mark.parametrize("bad", ["../outside.png", "/tmp/loff-outside.png", "dark/\0x.png"])
def test_catalog_paths_outside_the_images_folder_are_refused_with_the_row(trained, tmp_path, capsys, bad):
    """Old: extract read (and cached) the file outside the images folder, exit 0."""
    project, _ = _copy(trained, tmp_path)
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(tmp_path / "outside.png")
    text = (project / "catalog.csv").read_text()
    first_path = text.splitlines()[1].split(",")[1]
    (project / "catalog.csv").write_text(text.replace(first_path, bad.replace("\0", "%00"), 1).replace("%00", "\0"))
    shutil.rmtree(project / "caches")
    settings = _settings(project)
    settings["active_cache"] = None
    _write_settings(project, settings)
    err = _one_line(capsys, "extract", project, *TINY)
    assert "row 2" in err and "image path" in err


@pytest.mark.parametrize("bad", ["../../evil", "/etc/passwd", "a/b"])
def test_active_cache_and_run_fingerprints_are_names_not_paths(trained, tmp_path, capsys, bad):
    """Old: `active_cache` and a run's `cache_fingerprint` were joined to the caches folder as given."""
    project, _ = _copy(trained, tmp_path)
    settings = _settings(project)
    settings["active_cache"] = bad
    _write_settings(project, settings)
    assert "active_cache" in _one_line(capsys, "info", project)
    project2 = tmp_path / "second"
    shutil.copytree(trained / "p", project2, ignore=shutil.ignore_patterns(".lock"))
    run = _runs(project2)[-1]
    record = json.loads((run / "run.json").read_text())
    record["cache_fingerprint"] = bad
    (run / "run.json").write_text(json.dumps(record))
    assert "cache_fingerprint" in Project.open(project2).broken_runs()[0][1]


def test_a_cards_weights_file_is_never_opened(trained, tmp_path, monkeypatch):
    """Old: predict loaded whatever file the card's backbone.weights_file named."""
    import loff_core.models as models
    from loff_core import export as export_mod

    _, head = _copy(trained, tmp_path)
    planted = tmp_path / "planted.safetensors"
    planted.write_bytes(b"not weights")
    card = json.loads((head / "card.json").read_text())
    card["backbone"]["weights_file"] = str(planted)
    card["backbone"]["random_init"] = False
    from loff_core.export import card_seal
    card["files"]["card_sha256"] = card_seal(card)  # a forger re-seals the card
    (head / "card.json").write_text(json.dumps(card))
    opened = []
    real = models.read_weights_file
    monkeypatch.setattr(models, "read_weights_file", lambda p: opened.append(str(p)) or real(p))
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(Exception):
        export_mod.predict_files(head, [tmp_path / "x.png"], device="cpu")
    assert str(planted) not in opened


# -- class 4: bounded memory and time ---------------------------------------------------
_BOMB = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
    from loff_core.images import decode_max_side, load_pixels
    out = load_pixels(sys.argv[1], decode_max_side(224))
    print(out.shape[0], out.shape[1], out.dtype, float(out.max()))
""")


def _bomb(tmp_path: Path, kind: str) -> Path:
    from PIL import ImageDraw

    if kind == "png1":
        img, path = Image.new("1", (14000, 14000)), tmp_path / "bit1.png"
        ImageDraw.Draw(img).rectangle((3000, 3000, 9000, 11000), fill=1)
    elif kind == "palette":
        img, path = Image.new("P", (14000, 14000)), tmp_path / "palette.png"
        img.putpalette([v for i in range(256) for v in (i, 255 - i, i)])
        ImageDraw.Draw(img).rectangle((2000, 2000, 12000, 9000), fill=200)
    else:
        img, path = Image.new("RGB", (8000, 8000), (30, 60, 90)), tmp_path / "big.jpg"
        ImageDraw.Draw(img).rectangle((2000, 2000, 6000, 6000), fill=(250, 250, 250))
    img.save(path)
    return path


@pytest.mark.parametrize("kind", ["png1", "palette", "jpeg"])
def test_image_bombs_decode_within_one_and_a_half_gib(tmp_path, kind):
    """A 14000 x 14000 1-bit PNG (~30 KB) or palette PNG, an 8000 x 8000 JPEG, decoded for a
    224-px model in a process limited to 1.5 GiB of address space. Old: 8.6 / 8.6 / 4.8 GB
    peak, so here 'not enough memory to decode'."""
    path = _bomb(tmp_path, kind)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _BOMB, str(path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-500:]
    rows, cols, dtype, top = proc.stdout.split()
    assert max(int(rows), int(cols)) <= 8192 and dtype == "float32" and float(top) > 0.5


def test_images_under_the_cap_decode_exactly_as_the_whole_array_formula(tmp_path):
    """Band-by-band decoding at storage depth gives the very values of the old float64
    whole-array code (so existing caches stay valid)."""
    from loff_core.images import load_pixels

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (301, 203), dtype=np.uint8)
    rgb = np.stack([a, a[::-1], 255 - a], -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    Image.fromarray(a).save(tmp_path / "l.png")
    for name in ("rgb.png", "p.png", "l.png"):
        ref = np.asarray(Image.open(tmp_path / name).convert("RGB"), dtype=np.float64)
        ref = np.clip((ref[..., 0] * 0.299 + ref[..., 1] * 0.587 + ref[..., 2] * 0.114) / 255.0, 0, 1)
        assert np.array_equal(load_pixels(tmp_path / name), ref.astype(np.float32)), name


def test_card_with_shapes_out_of_bounds_is_refused_before_allocation(trained, tmp_path):
    """Old: the head was built first (5-12 GB, up to 150 s), then refused as not fitting."""
    from loff_core.export import load_exported_head

    for field, value in (("feature_dim", 100_000), ("num_classes", 5000), ("members", 100_000)):
        _, head = _copy(trained, tmp_path / field)
        card = json.loads((head / "card.json").read_text())
        card["head"][field] = value
        if field == "num_classes":
            card["classes"] = [f"c{i}" for i in range(value)]
        (head / "card.json").write_text(json.dumps(card))
        with pytest.raises(ExportError, match="maximum|out of bounds|is too long"):
            load_exported_head(head)


# -- class 5: untrusted heads and cards -------------------------------------------------
def test_nan_or_integer_head_weights_are_refused(trained, tmp_path):
    """Old: loaded; `predict --json` then printed NaN, which is not JSON."""
    import hashlib

    import torch
    from safetensors.torch import load_file, save_file

    from loff_core.export import load_exported_head

    for what, change in (("NaN", lambda t: t.fill_(float("nan"))), ("floating", lambda t: t.to(torch.int32))):
        _, head = _copy(trained, tmp_path / what)
        state = load_file(str(head / "head.safetensors"))
        name = next(iter(state))
        state[name] = change(state[name].clone())
        save_file(state, str(head / "head.safetensors"))
        card = json.loads((head / "card.json").read_text())
        card["files"]["head_sha256"] = hashlib.sha256((head / "head.safetensors").read_bytes()).hexdigest()
        from loff_core.export import card_seal
        card["files"]["card_sha256"] = card_seal(card)  # a forger re-seals the card
        (head / "card.json").write_text(json.dumps(card))
        with pytest.raises(ExportError, match=what):
            load_exported_head(head)


@pytest.mark.parametrize("names", [("Benign", "benign"), ("mass", "ma\u200bss"), ("A", "\uff21")])
def test_look_alike_class_names_are_refused_at_import(tmp_path, capsys, names):
    """Old: imported as two classes a person cannot tell apart."""
    images = _images(tmp_path / "images", per_class=2, names=names)
    err = _one_line(capsys, "import", tmp_path / "p", images)
    assert "only differ by case, width or invisible characters" in err


def test_class_names_are_nfc_normalised_and_stripped(tmp_path, capsys):
    """Old: 'Bénin' typed two ways (composed, decomposed + a space) were two classes."""
    images = _images(tmp_path / "images", per_class=3, names=("x", "y"))
    rows = ["file,label"] + [f"x/x-{i}.png,B\u00e9nin" for i in range(3)] + \
           [f"y/y-{i}.png,Be\u0301nin " if i else f"y/y-{i}.png,malin" for i in range(3)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = loff_json(capsys, "import", tmp_path / "p", images, "--labels", tmp_path / "labels.csv")
    assert sorted(out["classes"]) == ["B\u00e9nin", "malin"]


def test_card_with_look_alike_classes_is_refused(trained, tmp_path):
    from loff_core.export import load_exported_head

    _, head = _copy(trained, tmp_path)
    card = json.loads((head / "card.json").read_text())
    card["classes"] = ["dark", "Dark"]
    (head / "card.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match="only differ by case"):
        load_exported_head(head)


def test_csv_text_cells_that_a_spreadsheet_would_run_are_escaped(tmp_path, capsys):
    """Old: a file named '=HYPERLINK(...).png' reached catalog.csv and predictions CSVs as a formula."""
    from loff_core.catalog import Catalog
    from loff_core.predictions import read_predictions_csv, write_predictions_csv

    images = _images(tmp_path / "images", per_class=6, names=("=SUM(1)", "@bright"))
    project = tmp_path / "p"
    for args in (["import", project, images], ["extract", project, *TINY], ["train", project, "--epochs", "1"]):
        loff_json(capsys, *args)
    for line in (project / "catalog.csv").read_text().splitlines():
        assert ",=SUM" not in line and ",@bright" not in line, line
    entries = Catalog.load(project / "catalog.csv").entries
    assert {e.label for e in entries} == {"=SUM(1)", "@bright"} and entries[0].path.startswith(("=SUM", "@bright"))
    for split in ("train", "val", "test"):
        try:
            result = steps.evaluate(Project.open(project), split=split, settings=EvaluateSettings(bootstrap=10))
        except ProjectError:
            continue
        text = (Path(Project.open(project).run().path) / f"predictions-{split}.csv").read_text()
        for line in text.splitlines():
            assert ",=" not in line and ",@" not in line, line
    result = {"classes": ["dark", "bright"], "predictions": [{"path": "@SUM(1)", "predicted": "-dark",
                                                               "probabilities": [-0.5, 1.5]}],
              "failed": [{"path": "+x.png", "reason": "bad"}]}
    write_predictions_csv(tmp_path / "pred.csv", result)
    rows = (tmp_path / "pred.csv").read_text().splitlines()
    assert rows[1] == "'@SUM(1),'-dark,-0.5,1.5,,," and rows[2].startswith("'+x.png,")
    back = read_predictions_csv(tmp_path / "pred.csv")
    assert back[0]["path"] == "@SUM(1)" and back[0]["predicted"] == "-dark"


# -- class 6: one line, never a traceback -----------------------------------------------
@pytest.mark.parametrize("edit, words", [
    (lambda s: "[" * 100000, "nested"),
    (lambda s: '{"schema_version": 1' + "0" * 5000 + "}", "unreadable project file"),
    (lambda s: json.dumps({**s, "seed": "abc"}), "seed must be an integer"),
    (lambda s: json.dumps({**s, "salt": 12}), "salt must be text"),
    (lambda s: json.dumps({**s, "salt": ""}), "salt is empty"),
    (lambda s: json.dumps({**s, "classes": "dark"}), "classes must be a list"),
])
def test_bad_project_file_values_are_one_line(trained, tmp_path, capsys, edit, words):
    """Old: RecursionError / ValueError / TypeError tracebacks, or an empty salt accepted."""
    project, _ = _copy(trained, tmp_path)
    (project / "loff-project.json").write_text(edit(_settings(project)))
    err = _one_line(capsys, "import", project, tmp_path / "images")
    assert "loff-project.json" in err and words in err


@pytest.mark.parametrize("name, text", [("import-report.json", '{"failed": [{"path": "a"'),
                                        ("catalog.csv.meta.json", "[" * 50000),
                                        ("import-report.json", '{"failed": 3}')])
def test_truncated_or_odd_report_and_sidecar_are_one_line(trained, tmp_path, capsys, name, text):
    """Old: JSONDecodeError / RecursionError / TypeError tracebacks from `loff info`."""
    project, _ = _copy(trained, tmp_path)
    (project / name).write_text(text)
    assert name in _one_line(capsys, "info", project)


# -- class 1: interrupted writes, the lock ----------------------------------------------
def test_deleting_the_lock_file_cannot_let_stale_settings_be_written(tmp_path):
    """Old: the first process's save silently overwrote the second one's import."""
    _images(tmp_path / "images", per_class=3)
    Project.create(tmp_path / "p")
    first = Project.open(tmp_path / "p")
    with first.lock():
        (tmp_path / "p" / ".lock").unlink()  # someone 'cleans up'
        second = Project.open(tmp_path / "p")
        with second.lock():  # the lock held here, so the step's body
            steps._import_images(second, tmp_path / "images")
        first.settings.seed = 5
        with pytest.raises(ProjectError, match="changed by another process"):
            first.save()
    assert Project.open(tmp_path / "p").settings.catalog_version == 1


def test_every_engine_module_imports_without_fcntl():
    """Old: project.py imported fcntl at module level (no Windows)."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        sys.modules["fcntl"] = None  # as on Windows: import fcntl raises ImportError
        import loff_core
        names = [m.name for m in pkgutil.iter_modules(loff_core.__path__)]
        for name in names:
            importlib.import_module("loff_core." + name)
        from loff_core.project import Project
        print(len(names))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert int(proc.stdout.strip()) >= 15


def test_interrupted_export_keeps_the_previous_export_whole(trained, tmp_path, monkeypatch):
    """Old: head.safetensors of the new run was written over the old one before the card,
    and the interruption left a head that did not match its card."""
    from loff_core import export as export_mod
    from loff_core.export import export_head, load_exported_head

    project, head = _copy(trained, tmp_path)
    before = {p.name: p.read_bytes() for p in head.iterdir()}
    first = _runs(project)[0].name

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(export_mod, "_make_card", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_head(Project.open(project), head, run_id=first)
    assert {p.name: p.read_bytes() for p in head.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    load_exported_head(head)


def test_sigterm_is_handled_like_ctrl_c(tmp_path, capsys):
    """Old: SIGTERM killed `loff` outright (exit -15), temporaries left behind."""
    _images(tmp_path / "images", per_class=150)
    project = tmp_path / "p"
    loff_json(capsys, "import", project, tmp_path / "images")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "loff_core.cli", "extract", str(project), *TINY,
                             "--batch-size", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not list((project / "caches").glob("*.parts/*.h5")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-500:]
    assert "interrupted" in err
    assert not [p for p in project.rglob("*.tmp")]


def test_training_interrupted_after_some_epochs_keeps_the_best_head(trained, tmp_path):
    """Old: Ctrl-C (or SIGTERM) lost the whole run although the CLI said work was kept."""
    from loff_core.progress import Progress
    from loff_core.settings import TrainConfig

    project, _ = _copy(trained, tmp_path)
    before = len(_runs(project))
    reports = []

    def report(done, total, message):
        reports.append(message)
        if sum("epoch 3/" in m for m in reports) == 1 and "epoch 3/" in message:
            raise KeyboardInterrupt
    p = Project.open(project)
    with pytest.raises(KeyboardInterrupt):
        steps.train(p, TrainConfig(head="linear", epochs=20, batch_size=4), progress=Progress(on_report=report))
    runs = Project.open(project).runs()
    assert len(runs) == before + 1
    record = runs[-1].record
    assert record["stopped"] == "interrupted" and 1 <= record["best_epoch"] <= 2 and len(record["history"]) == 2
    assert "best head so far" in record["notes"][-1]


def _reimport_with_new_classes(tmp_path: Path) -> tuple[Path, Path]:
    first = _images(tmp_path / "first", per_class=3)
    second = _images(tmp_path / "second", per_class=3, names=("low", "high"))
    p = Project.create(tmp_path / "p")
    steps.import_images(p, first)
    return tmp_path / "p", second


def _consistent(project: Path) -> tuple[list[str], int]:
    p = Project.open(project)
    catalog = p.catalog()  # refuses a label outside the sidecar's classes
    assert catalog.classes == p.settings.classes
    assert {e.label for e in catalog.entries} <= set(catalog.classes)
    assert p.import_summary().imported == len(catalog.entries)
    return catalog.classes, p.settings.catalog_version


def test_reimport_killed_after_the_catalog_is_written_keeps_the_old_state_whole(tmp_path, monkeypatch):
    """Old: the kill after catalog.csv's rename left catalog (new classes), sidecar and settings
    (old classes, version not bumped) disagreeing, and later commands failed."""
    import loff_core.catalog as catalog_mod

    project, second = _reimport_with_new_classes(tmp_path)
    before = _consistent(project)

    def killed(*args, **kwargs):  # dies writing the sidecar, right after catalog.csv
        raise KeyboardInterrupt
    monkeypatch.setattr(catalog_mod, "atomic_write_json", killed)
    p = Project.open(project)
    with pytest.raises(KeyboardInterrupt):
        steps.import_images(p, second)
    monkeypatch.undo()
    assert _consistent(project) == before and before[1] == 1
    assert not [q.name for q in project.iterdir() if q.name in (".staging", ".commit")]


def test_reimport_killed_after_its_commit_point_is_finished_by_the_next_open(tmp_path, monkeypatch):
    project, second = _reimport_with_new_classes(tmp_path)
    moved = []
    real_replace = os.replace

    def dies_after_one_move(src, dst):
        if Path(src).parent.name == ".commit":
            if moved:
                raise KeyboardInterrupt  # killed between the moves
            moved.append(dst)
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", dies_after_one_move)
    p = Project.open(project)
    with pytest.raises(KeyboardInterrupt):
        steps.import_images(p, second)
    monkeypatch.undo()
    classes, version = _consistent(project)  # opening finishes the commit
    assert sorted(classes) == ["high", "low"] and version == 2


def test_big_images_decode_one_at_a_time_across_workers(tmp_path):
    """Decode workers (processes or threads) never hold two big images at once: the second
    waits for the first's decode slot. Old: every worker decoded its bomb at the same time."""
    import threading

    from loff_core.images import BIG_DECODE_PIXELS, _decode_slot, load_pixels

    side = int(BIG_DECODE_PIXELS ** 0.5) + 100
    Image.new("L", (side, side), 40).save(tmp_path / "big.png")
    Image.new("L", (64, 64), 40).save(tmp_path / "small.png")
    events: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with _decode_slot(tmp_path / "big.png", "png"):
            holding.set()
            time.sleep(1.0)
            events.append("first released")
    t = threading.Thread(target=first)
    t.start()
    assert holding.wait(30)
    load_pixels(tmp_path / "small.png")  # small images never wait
    events.append("small decoded")
    load_pixels(tmp_path / "big.png")
    events.append("second big decoded")
    t.join()
    assert events == ["small decoded", "first released", "second big decoded"]
