"""`loff audit` (issue 22, point 1): problems planted in a copy of mini-MIAS are found from
the cache. Real images and the real offline weights (tf_efficientnet_lite0 from its installed
package), extracted once for the module at 192 px; everything is written under tmp_path."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from loff_cli import loff_json
from loff_core.catalog import Catalog
from loff_core.results import model_of
from loff_core.cli import main

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
if not (SHARED / "mini-mias" / "labels.csv").is_file():
    SHARED = Path("/work/shared/data")  # a worktree beside the main checkout
MIAS, CHEST = SHARED / "mini-mias", SHARED / "chest-xray-samples"

pytestmark = [pytest.mark.skipif(not (MIAS / "labels.csv").is_file() or not CHEST.is_dir(),
                                 reason=f"the shared real data ({SHARED}: mini-mias, chest-xray-samples) is absent"),
              pytest.mark.slow]  # extraction of 334 real images (Lite0 at 192 px)


def _plant(root: Path, seed: int = 0) -> dict:
    """mini-MIAS copied with a patient-grouped split (70/15/15) given in a split column; 5
    test images copied into train under new names and other patients (one re-encoded as
    JPEG, one shifted by a few pixels); 16 tissue labels (5 %) flipped to another class at
    random; the chest X-ray samples dropped in, unlabelled."""
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True)
    rows = list(csv.DictReader(open(MIAS / "labels.csv", newline="")))
    rng = np.random.default_rng(seed)
    women = sorted({r["woman"] for r in rows})
    side = {w: "test" if i < 0.15 * len(women) else "val" if i < 0.30 * len(women) else "train"
            for i, w in enumerate(np.asarray(women)[rng.permutation(len(women))])}
    for r in rows:
        shutil.copyfile(MIAS / "images" / r["file"], images / r["file"])
        r["split"] = side[r["woman"]]
    test_rows = [r for r in rows if r["split"] == "test"]
    copies = []
    for n, i in enumerate(rng.choice(len(test_rows), 5, replace=False)):
        src = images / test_rows[i]["file"]
        name = f"copy{n}.jpg" if n == 0 else f"copy{n}.png"
        if n == 0:
            Image.open(src).convert("L").save(images / name, quality=90)
        elif n == 1:
            Image.fromarray(np.roll(np.asarray(Image.open(src)), (6, -5), axis=(0, 1))).save(images / name)
        else:
            shutil.copyfile(src, images / name)
        copies.append((test_rows[i], name))
    flipped = [rows[i] for i in rng.choice(len(rows), 16, replace=False)]
    for r in flipped:
        others = [c for c in "FGD" if c != r["tissue"]]
        r["tissue"] = others[rng.integers(2)]
    out = [{"file": r["file"], "woman": r["woman"], "tissue": r["tissue"], "split": r["split"]} for r in rows]
    out += [{"file": name, "woman": f"X{n:03d}", "tissue": r["tissue"], "split": "train"}
            for n, (r, name) in enumerate(copies)]
    (images / "other").mkdir()
    chest = sorted(p for p in CHEST.iterdir() if p.is_file())
    for p in chest:
        shutil.copyfile(p, images / "other" / p.name)
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "woman", "tissue", "split"])
        writer.writeheader()
        writer.writerows(out)
    return {"copies": [(r["file"], name) for r, name in copies], "flipped": [r["file"] for r in flipped],
            "chest": [p.name for p in chest]}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    info = _plant(root)
    project = root / "project"
    assert main(["import", str(project), str(root / "images"), "--labels", str(root / "labels.csv"),
                 "--label-column", "tissue", "--patient-column", "woman", "--split-column", "split",
                 "--classes", "F,G,D", "--quiet"]) == 0
    assert main(["extract", str(project), "--backbone", "tf_efficientnet_lite0", "--image-size", "192",
                 "--workers", "0", "--quiet"]) == 0
    entries = Catalog.load(project / "catalog.csv").entries
    info["id"] = {Path(e.path).name: e.image_id for e in entries}
    info["project"] = project
    return info


@pytest.fixture(scope="module")
def audited(planted, tmp_path_factory):
    import contextlib
    import io
    import json

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["audit", str(planted["project"]), "--json", "--quiet", "--top", "1000"]) == 0
    return json.loads(out.getvalue())


def test_the_json_is_exactly_the_documented_document(audited):
    assert list(audited) == ["duplicates", "label_suspects", "outliers", "shift"]
    assert all(set(g) == {"images", "splits", "similarity"} for g in audited["duplicates"])
    assert all(set(s) == {"image", "label", "predicted", "score"} for s in audited["label_suspects"])
    assert all(set(o) == {"image", "score"} for o in audited["outliers"])
    scores = [o["score"] for o in audited["outliers"]]
    assert scores == sorted(scores, reverse=True)  # most suspicious first
    suspects = [s["score"] for s in audited["label_suspects"]]
    assert suspects == sorted(suspects, reverse=True)
    assert {"test_vs_train_auc", "test_vs_train_ci", "val_vs_train_auc", "warning"} <= set(audited["shift"])


def test_every_planted_copy_is_a_cross_split_duplicate(planted, audited):
    ids = planted["id"]
    for original, copy in planted["copies"]:  # one a JPEG re-encode, one shifted by (6, -5) pixels
        groups = [g for g in audited["duplicates"] if ids[original] in g["images"] and ids[copy] in g["images"]]
        assert groups, f"{copy} (a copy of test image {original}) not reported as a duplicate"
        g = groups[0]
        split = dict(zip(g["images"], g["splits"]))
        assert split[ids[original]] == "test" and split[ids[copy]] == "train"
    leaks = [g for g in audited["duplicates"] if len(set(g["splits"])) > 1]
    assert audited["duplicates"][:len(leaks)] == leaks  # leaks first


def test_flipped_labels_lead_the_suspects(planted, audited):
    flipped = {planted["id"][f] for f in planted["flipped"]}
    top = [s["image"] for s in audited["label_suspects"][:32]]
    found = len(flipped & set(top))
    print(f"label suspects: {found} of 16 flipped labels in the top 32 (precision at 32 {found / 32:.2f})")
    # the issue asks for 8; the probe on the cache's first block (-2) found 10 with two fold seeds
    # on uncropped films; with the default crop (body-fill) 7 or 8 while the folds followed the
    # project's salt, 9 since they do not (2026-12-04)
    assert found >= 8, f"only {found} of 16 flipped labels in the top 32"
    assert all(s["predicted"] != s["label"] for s in audited["label_suspects"])


def test_non_mammograms_are_the_top_outliers(planted, audited):
    chest = {planted["id"][n] for n in planted["chest"]}
    ranks = [i for i, o in enumerate(audited["outliers"]) if o["image"] in chest]
    assert len(ranks) == len(chest)
    assert max(ranks) < len(chest) + 3, f"chest films ranked {ranks} among the outliers"


def test_a_random_split_shows_no_shift_and_the_csvs_are_written(planted, audited):
    assert audited["shift"]["test_vs_train_auc"] < 0.7 and audited["shift"]["warning"] is None
    lo, hi = audited["shift"]["test_vs_train_ci"]
    assert lo <= audited["shift"]["test_vs_train_auc"] <= hi
    folder = planted["project"] / "audit"
    rows = list(csv.DictReader(open(folder / "duplicates.csv", newline="")))
    assert [r["images"].split(";") for r in rows] == [g["images"] for g in audited["duplicates"]]
    outliers = list(csv.DictReader(open(folder / "outliers.csv", newline="")))
    assert [r["image"] for r in outliers] == [o["image"] for o in audited["outliers"]]
    assert (folder / "label_suspects.csv").is_file() and (folder / "shift.csv").is_file()


def test_exclude_is_recorded_left_out_of_training_and_reversible(planted, audited, capsys):
    from loff_core.project import Project
    from loff_core.validation import project_pool

    project = planted["project"]
    before = (project / "catalog.csv").read_bytes()
    copy = planted["id"][planted["copies"][2][1]]  # a train copy of a test image
    code = main(["audit", str(project), "--exclude", f"{copy},nope", "--reason", "x", "--quiet"])
    assert code == 1 and "nope" in capsys.readouterr().err
    assert (project / "catalog.csv").read_bytes() == before  # refused: nothing changed
    assert main(["audit", str(project), "--exclude", copy, "--quiet"]) == 1  # a reason is required
    out = loff_json(capsys, "audit", project, "--exclude", copy, "--reason", "duplicate of a test image")
    assert out["changed"] == 1 and out["excluded"] == 1
    p = Project.open(project)
    entry = p.catalog().by_id()[copy]
    assert entry.excluded == "duplicate of a test image"
    cache = p.open_cache()
    try:
        train_ids, _, _ = p.labelled_split("train", cache)
        pool, _ = project_pool(p, cache)
    finally:
        cache.close()
    assert copy not in train_ids and copy not in pool.ids
    root = project.parent  # a re-import keeps the exclusion
    loff_json(capsys, "import", project, root / "images", "--labels", root / "labels.csv", "--label-column", "tissue",
              "--patient-column", "woman", "--split-column", "split", "--classes", "F,G,D")
    assert Project.open(project).catalog().by_id()[copy].excluded == "duplicate of a test image"
    out = loff_json(capsys, "audit", project, "--include", copy)
    assert out["changed"] == 1 and out["excluded"] == 0
    p = Project.open(project)
    assert p.catalog().by_id()[copy].excluded is None
    cache = p.open_cache()
    try:
        assert copy in p.labelled_split("train", cache)[0]
    finally:
        cache.close()


def test_a_catalog_written_before_exclusions_still_opens(planted, tmp_path):
    rows = list(csv.DictReader(open(planted["project"] / "catalog.csv", newline="")))
    names = [n for n in rows[0] if n != "excluded"]
    old = tmp_path / "catalog.csv"
    with open(old, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    catalog = Catalog.load(old)
    assert len(catalog.entries) == len(rows) and all(e.excluded is None for e in catalog.entries)


def _copy_project(planted, tmp_path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(planted["project"], copy)
    return copy


def _cv_groups(project: Path) -> dict:
    """image_id -> the group cross-validation folds it by (`validation.project_pool`)."""
    from loff_core.project import Project
    from loff_core.validation import project_pool

    p = Project.open(project)
    pool, _ = project_pool(p, p.open_cache())
    return dict(zip(pool.ids, pool.groups))


def test_on_leak_drop_from_test_regroup_and_undo(planted, audited, tmp_path, capsys):
    project = _copy_project(planted, tmp_path)
    before = (project / "catalog.csv").read_bytes()
    ids = planted["id"]
    out = loff_json(capsys, "audit", project, "--on-leak", "drop-from-test")
    dropped = {c["image"] for c in out["changes"]}
    assert dropped == {ids[original] for original, _ in planted["copies"]}  # the test copies; train keeps its own
    by_id = Catalog.load(project / "catalog.csv").by_id()
    assert all(by_id[i].excluded.startswith("audit: near-duplicate of ") for i in dropped)
    after = loff_json(capsys, "audit", project, "--top", "1000")
    assert not any(len(set(g["splits"])) > 1 for g in after["duplicates"])  # no leak left
    assert loff_json(capsys, "audit", project, "--on-leak", "undo")["changed"] == len(dropped)
    assert (project / "catalog.csv").read_bytes() == before
    out = loff_json(capsys, "audit", project, "--on-leak", "regroup")
    moved = {c["image"]: c for c in out["changes"]}
    by_id = Catalog.load(project / "catalog.csv").by_id()
    for original, copy in planted["copies"]:  # each copy now sits in its original's split
        assert by_id[ids[copy]].split == by_id[ids[original]].split
        assert ids[copy] in moved or ids[original] in moved
    assert all(by_id[i].split == c["split"] and c["was_split"] != c["split"] for i, c in moved.items())
    # the patients each duplicate links are recorded as joined (cross-validation groups them as one)
    from loff_core.project import Project
    from loff_core.splits import joined_patients

    joined = joined_patients(Project.open(project))
    for original, copy in planted["copies"]:
        assert joined[by_id[ids[copy]].patient_key] == joined[by_id[ids[original]].patient_key]
    regrouped = {e.image_id: e.split for e in Catalog.load(project / "catalog.csv").entries}
    root = planted["project"].parent  # a re-import draws the splits again: the regroup is applied again
    imported = loff_json(capsys, "import", project, root / "images", "--labels", root / "labels.csv", "--label-column",
                         "tissue", "--patient-column", "woman", "--split-column", "split", "--classes", "F,G,D")
    assert any(f"regroup applied again after the re-import: {len(moved)} images" in w for w in imported["warnings"])
    assert {e.image_id: e.split for e in Catalog.load(project / "catalog.csv").entries} == regrouped
    assert loff_json(capsys, "audit", project, "--on-leak", "undo")["changed"] == len(moved)
    assert (project / "catalog.csv").read_bytes() == before
    assert joined_patients(Project.open(project)) == {}  # undone: every patient is its own group again
    assert main(["audit", str(project), "--on-leak", "undo", "--quiet"]) == 1  # nothing left to undo
    assert "no --on-leak action to undo" in capsys.readouterr().err


def test_cross_validation_keeps_patients_a_regroup_joined_in_one_fold(planted, tmp_path):
    """Two train patients a regroup record joins are one group in the pool every CV, tune and
    auto search folds by (they were two groups: a near-duplicate pair could sit in two folds,
    one trained on and one scored); a record written before joins were recorded joins nothing."""
    import json

    from loff_core.splits import AUDIT_DIR, ON_LEAK_FILE

    project = _copy_project(planted, tmp_path)
    before = _cv_groups(project)
    entries = [e for e in Catalog.load(project / "catalog.csv").entries if e.split == "train" and e.label]
    a = entries[0]
    b = next(e for e in entries if e.patient_key != a.patient_key)
    assert before[a.image_id] != before[b.image_id]
    record = project / AUDIT_DIR / ON_LEAK_FILE
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps([{"action": "regroup", "date": "2026-12-02T00:00:00+00:00", "changes": []}]))
    assert _cv_groups(project) == before  # an older record: no joins
    record.write_text(json.dumps([{"action": "regroup", "date": "2026-12-03T00:00:00+00:00", "changes": [],
                                   "joined": [sorted([a.patient_key, b.patient_key])]}]))
    after = _cv_groups(project)
    assert after[a.image_id] == after[b.image_id]
    same = [i for i in after if before[i] in (before[a.image_id], before[b.image_id])]
    assert len({after[i] for i in same}) == 1 and len(set(after.values())) == len(set(before.values())) - 1
    record.write_text("not json")  # unreadable: patients as they are (the next import says so)
    assert _cv_groups(project) == before


def test_the_label_check_reuses_cvs_out_of_fold_predictions(planted, audited, tmp_path, capsys):
    project = _copy_project(planted, tmp_path)
    cv = loff_json(capsys, "cv", project, "--head", "logreg", "--folds", "3")
    folder = project / "groups" / cv["group"]
    with np.load(folder / "oof.npz") as data:
        stored = dict(zip(data["ids"], data["probabilities"]))
    from loff_core.project import Project
    from loff_core.steps import audit

    result = audit(Project.open(project))
    source = result.label_source
    train_val = [e for e in Catalog.load(project / "catalog.csv").entries if e.split in ("train", "val") and e.label]
    assert source["group"] == cv["group"] and source["from_group"] == len(train_val) == len(stored)
    assert source["from_probe"] > 0  # the test split's labels: the probe
    classes = ["F", "G", "D"]
    for s in result.label_suspects:
        if s["image"] in stored:  # ranked on the stored probabilities
            assert s["score"] == pytest.approx(1 - stored[s["image"]][classes.index(s["label"])], abs=1e-4)


def test_predict_flags_chest_films_with_a_mammogram_head_and_old_heads_still_predict(planted, tmp_path, capsys):
    """Issue 22 point 3: a head trained on mammograms flags every chest film as out of
    distribution, and at most 5 % of held-out mammograms (the test split it never saw)."""
    import json

    from loff_core.export import card_seal
    from loff_core.ood import NO_SUMMARY, OOD_FILE

    project = _copy_project(planted, tmp_path)
    loff_json(capsys, "train", project, "--head", "linear", "--epochs", "3")
    head = tmp_path / "head"
    loff_json(capsys, "export", project, head)
    card = json.loads((head / "card.json").read_text())
    assert card["format_version"] == (5 if card["backbone"]["crop"] != "none" else 4) and card["ood"]["n"] > 100 and (head / OOD_FILE).is_file()
    root = planted["project"].parent
    held_out = sorted(root / "images" / name for name in planted["id"] if name.startswith("mdb") and
                      Catalog.load(project / "catalog.csv").by_id()[planted["id"][name]].split == "test")
    out = loff_json(capsys, "predict", head, CHEST, *held_out, "--csv", tmp_path / "p.csv")
    chest = [p for p in out["predictions"] if Path(p["path"]).parent == CHEST]
    mammo = [p for p in out["predictions"] if Path(p["path"]).parent != CHEST]
    assert len(chest) == len(planted["chest"]) and len(mammo) == len(held_out) >= 30
    assert all(p["out_of_distribution"] and "far outside the training data" in p["out_of_distribution"]
               for p in chest), [p["out_of_distribution"] for p in chest]
    flagged = sum(bool(p["out_of_distribution"]) for p in mammo)
    print(f"out of distribution: {len(chest)} of {len(chest)} chest films, {flagged} of {len(mammo)} held-out "
          f"mammograms flagged")
    assert flagged <= 0.05 * len(mammo)
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="")))
    assert {r["run"] for r in rows} == {card["run"]} and {r["model"] for r in rows} == {model_of(card)["text"]}
    assert sum(bool(r["out_of_distribution"]) for r in rows) == len(chest) + flagged
    # the viewer's explain step flags the project's own chest films (unlabelled, never trained on)
    from loff_core import steps
    from loff_core.project import Project

    ids = planted["id"]
    shown = [ids[n] for n in planted["chest"]] + [ids[Path(f).name] for f in held_out[:10]]
    explained = steps.explain(Project.open(project), None, shown)
    flags = explained.out_of_distribution
    assert all(flags[:len(planted["chest"])]) and sum(bool(f) for f in flags[len(planted["chest"]):]) <= 1
    # a head exported before the summary (card version 3, no ood.safetensors) predicts, unflagged
    old = dict(card, format_version=3)
    del old["ood"]
    old["files"] = {k: v for k, v in card["files"].items() if k != "card_sha256"}
    old["files"]["card_sha256"] = card_seal(old)
    (head / "card.json").write_text(json.dumps(old))
    (head / OOD_FILE).unlink()
    out = loff_json(capsys, "predict", head, CHEST / "h0001.png", held_out[0])
    assert out["ood"] == NO_SUMMARY and all(p["out_of_distribution"] is None for p in out["predictions"])
    assert main(["predict", str(head), str(CHEST / "h0001.png"), "--quiet"]) == 0
    assert NO_SUMMARY in capsys.readouterr().out


def test_the_probes_folds_do_not_depend_on_the_projects_salted_keys():
    """Two projects of the same folder salt their patient keys differently; the audit's folds
    (label suspects, shift) must be the same, or its findings change from project to project
    (a planted-label count moved between 7 and 9 with the salt before this)."""
    from loff_core.audit import _folds

    rng = np.random.default_rng(0)
    patients = rng.integers(0, 40, 200)
    y = rng.integers(0, 3, 200)
    one = np.asarray([f"a{p:03d}" for p in patients])
    other = np.asarray([f"{(p * 7919) % 1000:03d}z" for p in patients])  # the same patients, other names, other order
    for a, b in zip(_folds(y, one, 5, 3), _folds(y, other, 5, 3)):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
