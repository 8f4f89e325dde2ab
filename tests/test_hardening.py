"""Promises to a clinician's workstation, each proven here: kills never corrupt, patient
data never leave the project, untrusted model files never run code, and memory stays
bounded at 20,000 images."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from loff_core.cache import extract_features
from loff_core.cache_reader import FeatureCache
from loff_core.cli import main
from loff_cli import loff_json
from loff_core.project import Project
from loff_core.synthetic import write_synthetic_dataset

TINY = ["--backbone", "vit_tiny_patch16_224", "--random-init", "--image-size", "32", "--grid", "2"]


def _loff(*args: object, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "loff_core.cli", *map(str, args), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, **kw)




def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 2. killing never corrupts -----------------------------------------------------------
@pytest.mark.slow
def test_sigkill_extract_at_ten_points_resumes_to_an_identical_cache(tmp_path, capsys):
    labels = write_synthetic_dataset(tmp_path / "img", n_patients=30, size=(64, 52), seed=4)
    project = tmp_path / "p"
    loff_json(capsys, "import", project, tmp_path / "img", "--labels", labels, "--label-column", "masking_level")
    p = Project.open(project)
    items = [(e.image_id, p.image_path(e)) for e in p.catalog().entries]
    from loff_core.backbones import BackboneSpec

    from loff_core.settings import ExtractSettings

    # what `loff extract` with TINY runs: the default crop too
    spec = BackboneSpec(name="vit_tiny_patch16_224", random_init=True, image_size=32, grid=2, crop=ExtractSettings.crop)
    reference = extract_features(items, spec, tmp_path / "reference", device="cpu", batch_size=4, num_workers=0)

    rng = random.Random(11)
    n_batches = (len(items) + 3) // 4
    kill_after = sorted(rng.sample(range(0, n_batches), 10))  # shards present when the kill lands
    kills = 0
    for target in kill_after:
        proc = _loff("extract", project, *TINY, "--batch-size", "4", "--workers", "0")
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            parts = list((project / "caches").glob("*.parts/*.h5"))
            if len(parts) >= target:
                time.sleep(rng.uniform(0, 0.05))  # land anywhere, also in the middle of a write
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
        proc.stderr.close()
        kills += proc.returncode == -signal.SIGKILL
        Project.open(project)  # opens every time; the lock died with the process
    assert kills >= 8  # a run may finish before its kill point on a fast machine
    # one more kill lands inside the merge: a shim (test-only) makes every HDF5 read-open slow,
    # and the kill comes as soon as the merge's temp file `.<fingerprint>.h5.<pid>.tmp` appears
    caches = project / "caches"
    if not list(caches.glob("*.parts")):  # a run above finished everything: give the merge work again
        for done_file in caches.glob("*.h5"):
            done_file.unlink()
    slow_merge = ("import sys, time, h5py\n"
                  "class SlowRead(h5py.File):\n"
                  "    def __init__(self, name, mode='r', *a, **k):\n"
                  "        if mode == 'r': time.sleep(0.04)\n"
                  "        super().__init__(name, mode, *a, **k)\n"
                  "h5py.File = SlowRead\n"
                  "from loff_core.cli import main\n"
                  "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", slow_merge, "extract", str(project), *TINY, "--batch-size", "4",
                             "--workers", "0", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(caches.glob(".*.tmp")):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL and list(caches.glob(".*.h5.*.tmp")), "the kill missed the merge"
    loff_json(capsys, "extract", project, *TINY, "--batch-size", "4", "--workers", "0")
    done = Project.open(project).open_cache()
    with FeatureCache.open(reference.cache_path) as ref:
        assert done.image_ids == ref.image_ids
        a, b = ref.to_memory(), done.to_memory()
        assert np.array_equal(a.cls, b.cls) and np.array_equal(a.grid, b.grid)  # bit for bit
    assert not list((project / "caches").glob("*.parts")) and not list((project / "caches").glob(".*.tmp"))


@pytest.mark.slow
def test_the_lock_dies_with_a_killed_extract_not_with_its_decode_workers(tmp_path, capsys):
    """Decode workers are forked while the project lock is held; they drop their copy, so a
    SIGKILLed `loff extract` frees the project at once (its orphaned workers linger for
    seconds, until they notice the parent is gone)."""
    labels = write_synthetic_dataset(tmp_path / "img", n_patients=40, size=(64, 52), seed=5)
    project = tmp_path / "p"
    loff_json(capsys, "import", project, tmp_path / "img", "--labels", labels, "--label-column", "masking_level")
    proc = _loff("extract", project, *TINY, "--batch-size", "2", "--workers", "2")
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if list((project / "caches").glob("*.parts/*.h5")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "extraction ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    with Project.open(project).lock():  # free at once, while the orphaned workers may still run
        pass


@pytest.mark.slow
def test_sigkill_during_training_keeps_the_previous_head_and_project(tmp_path, capsys):
    labels = write_synthetic_dataset(tmp_path / "img", n_patients=16, size=(64, 52), seed=4)
    project = tmp_path / "p"
    loff_json(capsys, "import", project, tmp_path / "img", "--labels", labels, "--label-column", "masking_level")
    loff_json(capsys, "extract", project, *TINY, "--workers", "0")
    first = loff_json(capsys, "train", project, "--head", "linear", "--epochs", "2")["run"]
    run_dir = project / "runs" / first
    before = {f.name: _sha(f) for f in run_dir.iterdir()}
    settings = _sha(project / "loff-project.json")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "loff_core.cli", "train", str(project), "--head", "vit",
                             "--epochs", "100000", "--patience", "100000"],  # not --quiet: its first line
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    # well into training: stderr (not a terminal) gets its first line ("train: 1/100000 epoch
    # 1/100000 loss ...") when the first epoch is done. A fixed sleep of 8 s waited longer than
    # needed and, on a busy machine, could land before training had started.
    lines = [proc.stderr.readline()]
    while lines[-1] and b"/100000 loss" not in lines[-1]:  # past any warning printed before
        lines.append(proc.stderr.readline())
    assert lines[-1], f"training ended before its first epoch: {b''.join(lines)[-2000:]!r}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert {f.name: _sha(f) for f in run_dir.iterdir()} == before
    assert _sha(project / "loff-project.json") == settings
    info = loff_json(capsys, "info", project)
    assert [r["run"] for r in info["runs"]] == [first]  # no half-written run shows up
    loff_json(capsys, "evaluate", project, "--run", first, "--bootstrap", "10")


# -- 4. no patient data leaves the project ---------------------------------------------
SENTINELS = {
    "PatientName": "Zzyzx^Sentinelname",
    "PatientID": "PID-SENTINEL-4711",
    "PatientBirthDate": "19230417",
    "AccessionNumber": "ACC-SENTINEL-99",
    "InstitutionName": "Sentinel General Hospital",
    "ReferringPhysicianName": "Quux^Sentineldoctor",
}


def _plant_sentinels(folder: Path) -> None:
    for i, path in enumerate(sorted(folder.rglob("*.dcm"))):
        ds = pydicom.dcmread(path)
        for key, value in SENTINELS.items():
            setattr(ds, key, value if key != "PatientID" else f"{value}-{i // 2}")
        ds.save_as(path)


@pytest.mark.slow
def test_patient_identifiers_never_leave_the_project(tmp_path):
    labels = write_synthetic_dataset(tmp_path / "img", n_patients=12, size=(64, 52), seed=6)
    _plant_sentinels(tmp_path / "img")
    labels.unlink()  # patients come from the DICOM PatientID only
    # folder-name labels: two classes by sub-folder
    for d in sorted((tmp_path / "img").iterdir()):
        target = tmp_path / "site" / ("dense" if int(d.name[-4:]) % 2 else "fatty") / d.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(d), target)
    out_dir = tmp_path / "outside"
    out_dir.mkdir()
    project, export = out_dir / "project", out_dir / "export"
    log = out_dir / "terminal.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    steps = [
        ["import", project, tmp_path / "site"],
        ["extract", project, *TINY, "--workers", "1"],
        ["train", project, "--head", "attention", "--epochs", "2"],
        ["evaluate", project],
        ["export", project, export, "--onnx"],  # with the model report beside the card
        ["report", project, "--out", out_dir / "report.html"],
        ["predict", export, tmp_path / "site", "--random-init", "--csv", out_dir / "predictions.csv"],
        ["info", project],
    ]
    with open(log, "w") as fh:
        for step in steps:
            code = subprocess.run([sys.executable, "-m", "loff_core.cli", *map(str, step), "--json"],
                                  stdout=fh, stderr=fh, env=env).returncode
            assert code == 0, (step, log.read_text()[-2000:])
    written = [f for f in out_dir.rglob("*") if f.is_file()]
    assert len(written) > 10 and any(f.suffix == ".onnx" for f in written)
    reports = [out_dir / "report.html", export / "report.html"]
    assert all(r in written for r in reports)
    for r in reports:  # no path outside the project either (the images' folder, where the project lives)
        html = r.read_text(encoding="utf-8")
        assert str(tmp_path) not in html and "site" + os.sep not in html, r
    needles = [v.encode() for v in SENTINELS.values()] + [b"Sentinel", b"SENTINEL", b"Zzyzx", b"Quux"]
    needles += [v.split("^")[0].encode() for v in SENTINELS.values() if "^" in v]
    for f in written:
        data = f.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {f.relative_to(out_dir)}"
    # the de-identified key is a salted hash; the salt stays in the project file
    salt = json.loads((project / "loff-project.json").read_text())["salt"]
    catalog = (project / "catalog.csv").read_text()
    import hmac

    key = hmac.new(bytes.fromhex(salt), b"PID-SENTINEL-4711-0", hashlib.sha256).hexdigest()[:16]
    assert key in catalog
    for f in written:
        if f.name != "loff-project.json":
            assert salt.encode() not in f.read_bytes(), f"salt leaked into {f.name}"


# -- 5. untrusted model files ----------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    labels = write_synthetic_dataset(root / "img", n_patients=10, size=(64, 52), seed=8)
    project = root / "p"
    for args in (["import", project, root / "img", "--labels", labels, "--label-column", "masking_level"],
                 ["extract", project, *TINY, "--workers", "0"],
                 ["train", project, "--head", "linear", "--epochs", "1"],
                 ["export", project, root / "head"]):
        assert main([str(a) for a in args] + ["--quiet"]) == 0
    return root


def test_card_of_a_run_never_evaluated_still_carries_its_metrics(exported):
    """The fixture exports right after training; export evaluates the missing splits."""
    card = json.loads((exported / "head" / "card.json").read_text())
    for split in ("val", "test"):
        m = card["metrics"][split]
        assert m["n"] > 0 and 0.0 <= m["metrics"]["accuracy"] <= 1.0 and "auc" in m["metrics"], m


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_an_export_killed_midway_is_tidied_by_the_next_one(exported, tmp_path):
    """SIGKILL during an export leaves a hidden staging folder (and, between its two renames, the
    previous export moved aside): the next export deletes the staging of a dead process, keeps
    that of a running one, and puts a moved-aside previous export back."""
    from loff_core.export import _clean_killed_exports, export_head

    project = Project.open(exported / "p")
    out = tmp_path / "head"
    dead, alive = _dead_pid(), os.getppid()
    (tmp_path / f".head.partial-{dead}").mkdir()
    (tmp_path / f".head.partial-{dead}" / "head.safetensors").write_bytes(b"half")
    (tmp_path / f".head.partial-{alive}").mkdir()
    export_head(project, out)
    assert (out / "card.json").is_file()
    assert not (tmp_path / f".head.partial-{dead}").exists()
    assert (tmp_path / f".head.partial-{alive}").is_dir()  # another export may still be writing it

    shutil.move(str(out), str(tmp_path / f".head.old-{dead}"))  # killed between the two renames
    _clean_killed_exports(out)
    assert (out / "card.json").is_file() and not (tmp_path / f".head.old-{dead}").exists()


def test_tampered_or_foreign_heads_are_refused_with_the_reason(exported, tmp_path, capsys):
    from loff_core.errors import ExportError
    from loff_core.export import load_exported_head

    load_exported_head(exported / "head")  # the genuine one loads
    bad = _copy(exported / "head", tmp_path / "schema")
    card = json.loads((bad / "card.json").read_text())
    card["task"] = "regression"
    (bad / "card.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match="not valid at task"):
        load_exported_head(bad)

    swapped = _copy(exported / "head", tmp_path / "swapped")
    raw = bytearray((swapped / "head.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (swapped / "head.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ExportError, match="checksum"):
        load_exported_head(swapped)

    # a working malicious pickle posing as the head, with the card's checksum updated to
    # match it, is refused by the safetensors parser and never executed
    marker = tmp_path / "pwned"
    payload = _malicious_pickle(marker)
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=payload, check=True)
    assert marker.exists(), "the planted pickle must really run code when unpickled"
    marker.unlink()
    evil = _copy(exported / "head", tmp_path / "evil")
    (evil / "head.safetensors").write_bytes(payload)
    card = json.loads((evil / "card.json").read_text())
    card["files"]["head_sha256"] = hashlib.sha256(payload).hexdigest()
    from loff_core.export import card_seal
    card["files"]["card_sha256"] = card_seal(card)  # a forger re-seals the card
    (evil / "card.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match="cannot read head weights"):
        load_exported_head(evil)
    assert not marker.exists()

    # a head trained on one backbone's features is refused on another's
    img = next((exported / "img").rglob("*.dcm"))
    capsys.readouterr()
    code = main(["predict", str(exported / "head"), str(img), "--weights", str(_other_weights(tmp_path)), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "trained on features of vit_tiny_patch16_224 with weights" in err


class _Touch:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _malicious_pickle(marker: Path) -> bytes:
    import pickle

    return pickle.dumps(_Touch(marker), protocol=4)


@pytest.mark.parametrize("edits, reason", [
    ({"head": {"width": "abc"}}, "not valid at head/width"),
    ({"head": {"num_heads": 0}}, "not valid at head/num_heads"),
    ({"head": {"kind": "attention", "num_heads": 5}}, "not divisible by num_heads"),
    ({"head": {"kind": "attention"}}, "do not fit the head described"),
    ({"head": {"dropout": "x"}}, "not valid at head/dropout"),
    ({"head": {"task": "ordinal"}}, "head was built for ordinal"),
    ({"backbone": {"grid": "x"}}, "not valid at backbone/grid"),
    ({"backbone": {"seed": "abc"}}, "not valid at backbone/seed"),
    ({"preprocessing": {"image_size": -3}}, "not valid at preprocessing/image_size"),
])
def test_a_tampered_card_is_refused_with_a_one_line_reason(exported, tmp_path, capsys, edits, reason):
    bad = _copy(exported / "head", tmp_path / "bad")
    card = json.loads((bad / "card.json").read_text())
    for section, values in edits.items():
        card[section].update(values)
    from loff_core.export import card_seal
    card["files"]["card_sha256"] = card_seal(card)  # a forger re-seals: the checks behind the seal still hold
    (bad / "card.json").write_text(json.dumps(card))
    img = next((exported / "img").rglob("*.dcm"))
    capsys.readouterr()
    code = main(["predict", str(bad), str(img), "--random-init", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert reason in err and "card.json" in err and "Traceback" not in err


def _other_weights(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    from loff_core.backbones import BackboneSpec, load_backbone

    b = load_backbone(BackboneSpec(name="vit_tiny_patch16_224", random_init=True, seed=99, image_size=32, grid=2), "cpu")
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in b.model.state_dict().items()}, str(path))
    return path


# -- 6. scale ---------------------------------------------------------------------------
@pytest.mark.slow
def test_twenty_thousand_image_import_stays_bounded(tmp_path):
    """20,000 small PNGs: import finishes with peak memory well under a bound (measured in
    a fresh process, so other tests do not count)."""
    from PIL import Image

    folder = tmp_path / "many"
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (16, 16), dtype=np.uint8)
    buf = folder / "a" / "0.png"
    buf.parent.mkdir(parents=True)
    Image.fromarray(tile).save(buf)
    data = buf.read_bytes()
    for i in range(20000):
        d = folder / ("a" if i % 2 else "b") / f"{i // 1000:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.png").write_bytes(data)
    buf.unlink()
    code = (
        "import re, json; from loff_core.cli import main; "
        f"rc = main(['import', {str(tmp_path / 'p')!r}, {str(folder)!r}, '--quiet']); "
        # VmHWM (peak RSS of this process image); ru_maxrss would include the forking pytest process
        "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
        "print(json.dumps({'rc': rc, 'peak_mb': hwm / 1024}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, out.stderr[-2000:]
    project = Project.open(tmp_path / "p")
    assert len(project.catalog().entries) == 20000
    assert result["peak_mb"] < 150, result  # python + numpy + PIL + pydicom ~55 MB; < 5 KB per catalog entry
    print(f"20,000-image import: peak RSS {result['peak_mb']:.0f} MB")
