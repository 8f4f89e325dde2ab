"""The model report (issue 21, points 2-3): `loff report`, its sections and plots for a binary
and a 3-class project, the numbers `loff evaluate` prints, no patient data, the report in
an exported head folder, and the page rendered by a real browser (headless Chromium)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from loff_cli import TINY, copy_project
from loff_core.cli import main
from loff_core.project import Project
from loff_core.report import REPORTS_DIR, best_run, embedded_images, write_report
from loff_core.synthetic import write_synthetic_dataset

SECTIONS = ("data", "protocol", "results", "examples", "limitations", "claim")


def _loff(*args: object) -> None:
    """Run a `loff` command in-process (its --json document is not needed)."""
    assert main([str(a) for a in args] + ["--quiet"]) == 0, args


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """Two classes of noisy PNGs (dark vs bright), a linear head with a fitted threshold."""
    root = tmp_path_factory.mktemp("binary")
    rng = np.random.default_rng(1)
    for cls, value, n in (("normal", 70, 24), ("pneumonia", 180, 32)):
        for i in range(n):
            path = root / "img" / cls / f"{cls}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(rng.normal(value, 45, (40, 40)), 0, 255).astype(np.uint8)).save(path)
    (root / "img" / "normal" / "scanner-dump-7731.png").write_bytes(b"not a PNG at all")  # refused by the import
    project = root / "p"
    _loff("import", project, root / "img")
    _loff("extract", project, *TINY, "--device", "cpu")
    _loff("train", project, "--head", "attention", "--epochs", "4")
    _loff("calibrate", project)
    return project


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    """Synthetic DICOMs (two views, two sides per patient) with a 3-class label, chosen by
    `loff tune` (its leaderboard), audited (its findings go into the limitations)."""
    root = tmp_path_factory.mktemp("three")
    labels = write_synthetic_dataset(root / "img", n_patients=16, size=(64, 52), seed=3)
    with open(labels, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(labels, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "density", "patient"])
        for r in rows:
            level = int(r["masking_level"])
            writer.writerow([r["file"], "low" if level <= 3 else "mid" if level <= 5 else "high", r["patient"]])
    project = root / "p"
    _loff("import", project, root / "img", "--labels", labels, "--label-column", "density")
    _loff("extract", project, *TINY, "--device", "cpu")
    _loff("tune", project, "--trials", "1", "--folds", "3")
    _loff("audit", project)
    return project


def _sections(html: str) -> dict[str, str]:
    return {s: html.split(f'<section id="{s}">', 1)[1].split("</section>", 1)[0] for s in SECTIONS}


def _pngs_ok(html: str) -> list[tuple[int, int]]:
    sizes = []
    for data in embedded_images(html):
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            sizes.append(im.size)
    assert all(w > 50 and h > 50 for w, h in sizes), sizes
    return sizes


def test_binary_report_has_every_section_plot_and_the_operating_point(binary, capsys):
    project = Project.open(binary)
    out = write_report(project)
    assert out == binary / REPORTS_DIR / f"{project.runs()[-1].run_id}.html"
    html = out.read_text(encoding="utf-8")
    parts = _sections(html)
    # data: images per split and label, patients per split, how the split was found
    assert "normal" in parts["data"] and "pneumonia" in parts["data"] and "patients" in parts["data"]
    assert "random by patient" in parts["data"]
    # what the import refused: counted by reason, never named (a file name may name a patient)
    assert "Refused by import and extraction (1 files)" in parts["data"] and "scanner-dump" not in html
    # protocol: backbone, weights hash, licence (random weights here), head, augmentations, versions
    run = project.runs()[-1].record
    for text in (run["backbone"]["name"], run["backbone"]["weights_hash"], "random weights", "attention",
                 "hflip", "torch", "matplotlib", "Nested cross-validation"):
        assert text in parts["protocol"], text
    # results: the numbers `loff evaluate` prints (same bootstrap, same seed)
    assert main(["evaluate", str(binary), "--json", "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert {"sensitivity", "specificity"} <= set(evaluated["metrics"])
    for name, value in evaluated["metrics"].items():
        if value is not None:
            assert f"{value:.3f}" in parts["results"], name
        ci = evaluated["ci"].get(name)
        if ci:
            assert f"[{ci[0]:.3f}, {ci[1]:.3f}]" in parts["results"], name
    assert "At the operating point (threshold" in parts["results"]
    assert main(["evaluate", str(binary), "--quiet"]) == 0  # the summary shows them too
    summary = capsys.readouterr().out
    assert re.search(r"sensitivity\s+\d\.\d{3}", summary) and re.search(r"specificity\s+\d\.\d{3}", summary)
    for alt in ("ROC curve", "precision-recall curve", "reliability diagram", "confusion matrix", "per-class AUC"):
        assert f'alt="{alt}"' in parts["results"], alt
    # examples: named by image_id only, each with its heat map
    ids = {e.image_id for e in project.catalog().entries}
    shown = re.findall(r'alt="(?:error|correct) ([0-9a-f]+)"', parts["examples"])
    assert shown and set(shown) <= ids
    # limitations: the random-init backbone and the missing audit are said
    assert "random weights" in parts["limitations"] and "not audited" in parts["limitations"]
    assert "for the author" in parts["claim"] and "filled" in parts["claim"]
    sizes = _pngs_ok(html)
    assert len(sizes) == 5 + len(shown)
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # no network


def test_three_class_report_shows_the_tune_leaderboard_subgroups_and_audit(three_class):
    project = Project.open(three_class)
    group = next((three_class / "groups").glob("*/group.json"))
    winner = json.loads(group.read_text())["run"]
    assert best_run(project).run_id == winner  # the latest tune winner by default
    html = write_report(project, out=three_class / "elsewhere" / "r.html").read_text(encoding="utf-8")
    parts = _sections(html)
    assert "loff tune (group" in parts["protocol"] and "mean &plusmn; SD" in parts["protocol"]
    assert "logistic_regression" in parts["protocol"]  # a leaderboard row
    assert "side L" in parts["results"] and "side R" in parts["results"]
    assert "view CC" in parts["results"] and "view MLO" in parts["results"]
    for c in ("low", "mid", "high"):
        assert f"<td>{c}</td>" in parts["results"]
    assert "sensitivity" not in parts["results"]  # a binary figure only
    assert "audit: shift" in parts["limitations"] and "model selection" in parts["limitations"]
    assert len(_pngs_ok(html)) >= 5


def test_report_of_an_ordinal_run_has_kendall_tau_and_amae(trained_demo, tmp_path):
    project = Project.open(copy_project(trained_demo, tmp_path / "p"))
    html = write_report(project).read_text(encoding="utf-8")
    parts = _sections(html)
    assert "Kendall&#39;s tau-b" in parts["results"] and "AMAE" in parts["results"]
    assert "SYNTHETIC DATA" in html and "synthetic data:" in parts["limitations"]


def test_no_run_is_a_clear_error(tmp_path):
    from loff_core.errors import LoffError

    write_synthetic_dataset(tmp_path / "img", n_patients=6, size=(64, 52), seed=1)
    _loff("import", tmp_path / "p", tmp_path / "img", "--labels", tmp_path / "img" / "labels.csv",
          "--label-column", "masking_level")
    with pytest.raises(LoffError):
        write_report(Project.open(tmp_path / "p"))


def test_cli_report_and_the_exported_folder_carry_it(binary, tmp_path, capsys):
    project = copy_project(binary, tmp_path / "p")
    out = tmp_path / "r.html"
    assert main(["report", str(project), "--out", str(out), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out) == {"report": str(out)}
    assert main(["export", str(project), str(tmp_path / "head"), "--json", "--quiet"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["files"]["report"] == str(tmp_path / "head" / "report.html")
    html = (tmp_path / "head" / "report.html").read_text(encoding="utf-8")
    assert all(f'<section id="{s}">' in html for s in SECTIONS)
    assert str(tmp_path) not in html and str(project) not in html


def test_a_report_that_fails_does_not_lose_the_export(binary, tmp_path, monkeypatch, capsys):
    import loff_core.report as report

    def broken(*args, **kwargs):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(report, "write_report", broken)
    project = copy_project(binary, tmp_path / "p")
    assert main(["export", str(project), str(tmp_path / "head"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "warning: the export has no report.html: template exploded" in captured.out
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["card.json", "head.safetensors", "ood.safetensors"]


def test_check_private_refuses_a_page_with_a_patient_path(trained_demo, tmp_path):
    from loff_core.report import ReportError, check_private, scrub

    project = Project.open(copy_project(trained_demo, tmp_path / "p"))
    entry = next(e for e in project.catalog().entries if e.masked_path)
    patient_part = entry.path.split("/")[0]
    with pytest.raises(ReportError):
        check_private(f"<p>{patient_part}</p>", project)
    with pytest.raises(ReportError):
        check_private(f"<p>{tmp_path}</p>", project)
    assert patient_part not in scrub(f"cannot read {entry.path} in /home/someone/scans/x.dcm", project)
    assert "/home/someone" not in scrub("in /home/someone/scans/x.dcm", project)
    check_private('<img src="data:image/png;base64,AAAA">', project)  # plots are pixels, not text


# -- a real browser --------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(binary, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here (Debian package `chromium`): the page is not rendered by a browser")
    page = write_report(Project.open(binary), out=tmp_path / "report.html")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}"]
    # the DOM after the page loaded: every section, every image decoded with a size
    script = tmp_path / "count.html"
    script.write_text(
        "<!DOCTYPE html><html><body><iframe id='f' src='report.html' style='width:1200px;height:800px'></iframe>"
        "<script>document.getElementById('f').onload=function(){var d=this.contentDocument;"
        "var imgs=[].slice.call(d.images);var out=document.createElement('pre');out.id='result';"
        "out.textContent=JSON.stringify({sections:[].slice.call(d.querySelectorAll('section')).map(function(s){return s.id}),"
        "images:imgs.map(function(i){return [i.complete,i.naturalWidth,i.naturalHeight]})});"
        "document.body.appendChild(out);};</script></body></html>", encoding="utf-8")
    dom = subprocess.run([*flags, "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                          script.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="result">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:] + dom.stderr[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"'))
    assert seen["sections"] == list(SECTIONS)
    html = page.read_text(encoding="utf-8")
    assert len(seen["images"]) == len(embedded_images(html)) >= 5
    assert all(done and w > 50 and h > 50 for done, w, h in seen["images"]), seen["images"]
    # printed to PDF by the browser: a real PDF of more than one page
    pdf = tmp_path / "report.pdf"
    subprocess.run([*flags, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri()],
                   capture_output=True, timeout=180)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 2


def test_the_leaderboard_says_which_rows_were_pruned(monkeypatch):
    """A pruned trial was scored on fewer folds than the others: the report's leaderboard says
    so beside it (it showed one value with no SD and no word why)."""
    from types import SimpleNamespace

    from loff_core import report

    group = {"group": "g1", "kind": "tune", "folds": 5, "trials": 2, "leaderboard": [
        {"config": {"head": "attention"}, "cv": {"auc": {"mean": 0.9, "sd": 0.02}}, "best_epochs": [3] * 5},
        {"config": {"head": "vit"}, "cv": {"auc": {"mean": 0.7, "sd": None}}, "best_epochs": [4], "pruned": True}]}
    monkeypatch.setattr(report, "_groups", lambda project: [group])
    run = SimpleNamespace(record={"task": "classification", "group": "g1"})
    rows = report.head_choice(None, run)["board"]
    assert rows[0]["config"] == "head attention" and rows[1]["config"] == "head vit (pruned after 1 of 5 folds)"


def test_the_split_size_is_one_limitation_and_a_worse_calibration_on_test_is_said():
    """The test split's size was three lines (each interval, then the evaluation's small-split
    warning saying the accuracy's again); now one, with the evaluation's other warnings kept.
    A temperature that raised the calibration error on test is stated (seen in a mini-MIAS
    report: ECE 0.118 -> 0.141 on test, told only by the reliability plot)."""
    from loff_core.metrics import small_split_warning
    from loff_core.report import _calibration_on_test, _split_size

    class _P:  # scrub() reads the catalog's masked path parts: none here
        root = "/nowhere"

        class settings:  # noqa: N801
            catalog_version = 1

        @staticmethod
        def catalog():
            return type("C", (), {"entries": []})()

    said: list[tuple[str, str]] = []
    ci = {"auc": [0.865, 0.973], "accuracy": [0.625, 0.875]}
    evaluation = {"task": "classification", "ci": ci,
                  "warnings": [small_split_warning(48, ci["accuracy"]), "another warning"]}
    _split_size(48, evaluation, _P(), lambda topic, text: said.append((topic, text)))
    assert [t for t, _ in said] == ["test split size", "evaluation"]
    assert "ROC AUC [0.865, 0.973] (width 0.108), of accuracy [0.625, 0.875] (width 0.250)" in said[0][1]
    assert "too wide to tell heads apart" in said[0][1] and said[1][1] == "another warning"
    said.clear()
    _split_size(500, {"task": "classification", "ci": {"auc": [0.90, 0.95], "accuracy": [0.80, 0.86]},
                      "warnings": []}, _P(), lambda topic, text: said.append((topic, text)))
    assert len(said) == 1 and "too wide" not in said[0][1]
    said.clear()
    _calibration_on_test({"ece": {"before": 0.118, "after": 0.141}}, lambda t, x: said.append((t, x)))
    assert said and said[0][0] == "calibration" and "0.118 → 0.141" in said[0][1]
    said.clear()
    _calibration_on_test({"ece": {"before": 0.141, "after": 0.118}}, lambda t, x: said.append((t, x)))
    assert not said
