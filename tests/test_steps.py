"""Every long step the same shape (issue 10, point 3): evaluate and explain report progress
and can be cancelled like extract and train; a cancelled evaluation leaves the saved one
as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loff_cli import copy_project
from loff_core.progress import Cancelled, Progress
from loff_core import steps
from loff_core.project import Project
from loff_core.evaluation import evaluate_run
from loff_core.settings import EvaluateSettings
from loff_core.results import ExplainResult



@pytest.fixture(scope="module")
def trained(trained_demo, tmp_path_factory):
    """This file's own copy of the session's trained demo project (tests here write to it)."""
    return copy_project(trained_demo, tmp_path_factory.mktemp("steps") / "p")


def test_evaluate_reports_progress_over_its_images(trained):
    project = Project.open(trained)
    seen: list[tuple[int, int, str]] = []
    out = steps.evaluate(project, split="val", settings=EvaluateSettings(bootstrap=10),
                         progress=Progress(on_report=lambda *r: seen.append(r)))
    n = out.n
    assert n > 0 and seen[0][:2] == (0, n) and "predicting" in seen[0][2]
    assert (n, n) in [r[:2] for r in seen]
    assert any("10 bootstrap resamples" in r[2] for r in seen)
    assert all(done <= total for done, total, _ in seen)


def test_a_cancelled_evaluation_leaves_the_saved_one_as_it_was(trained):
    project = Project.open(trained)
    steps.evaluate(project, split="val", settings=EvaluateSettings(bootstrap=10))
    saved = project.run().path / "eval-val.json"
    before = saved.read_bytes()
    for at in ("predicting", "bootstrap"):  # cancelled while predicting, then after it
        progress = Progress()
        progress.on_report = lambda d, t, m, at=at, p=progress: p.cancel() if at in m else None
        with pytest.raises(Cancelled):
            steps.evaluate(project, split="val", settings=EvaluateSettings(bootstrap=20), progress=progress)
        assert saved.read_bytes() == before


def test_explain_reports_progress_in_batches_and_can_be_cancelled(trained, monkeypatch):
    project = Project.open(trained)
    ids = [e.image_id for e in project.catalog().entries][:5]
    monkeypatch.setattr(steps, "EXPLAIN_BATCH", 2)
    seen: list[tuple[int, int]] = []
    out = steps.explain(project, None, ids, progress=Progress(on_report=lambda d, t, m: seen.append((d, t))))
    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert isinstance(out, ExplainResult) and out.run == project.runs()[-1].run_id and out.image_ids == ids
    assert len(out.heat) == 5 and out.probabilities.shape == (5, len(out.classes)) and len(out.predicted) == 5
    assert set(out.to_json()) == {"run", "image_ids", "classes", "task", "probabilities", "predicted",
                                  "operating_point"}
    # the same numbers as one batch (up to float rounding of another batch size)
    monkeypatch.setattr(steps, "EXPLAIN_BATCH", 64)
    whole = steps.explain(project, None, ids)
    assert np.allclose(whole.probabilities, out.probabilities, atol=1e-5)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(whole.heat, out.heat))
    cancelled = Progress()
    cancelled.cancel()
    with pytest.raises(Cancelled):
        steps.explain(project, None, ids, progress=cancelled)


def test_typed_results_give_exactly_the_cli_json(trained, capsys, tmp_path):
    """Each step's record (loff_core.results) prints exactly what `--json` printed as a dict
    before: the same keys in the same order, the same values."""
    from loff_cli import loff_json

    from loff_core.results import EvaluateResult, ExportResult, TrainResult

    project = Project.open(trained)
    run = project.run()
    assert list(TrainResult.from_record(run.record, run.run_id).to_json()) == [
        "run", "head", "task", "classes", "best_epoch", "monitor", "best_score", "stopped", "epochs", "n_train",
        "n_val", "notes"]
    raw = evaluate_run(project, run.run_id, "val", n_bootstrap=10)  # the dict the record is made from
    record = EvaluateResult.from_dict(raw)
    assert record.to_json() == raw and list(record.to_json()) == list(raw)
    assert record.metrics == raw["metrics"] and record.n == raw["n"]
    printed = loff_json(capsys, "evaluate", trained, "--split", "val", "--bootstrap", "10")
    assert list(printed) == list(raw) and printed["metrics"] == json.loads(json.dumps(raw["metrics"]))
    exported = loff_json(capsys, "export", trained, tmp_path / "head")
    assert list(exported) == ["run", "out_dir", "files", "onnx"] and exported["onnx"] is None
    record = ExportResult(run=exported["run"], out_dir=exported["out_dir"], files=exported["files"], card={})
    assert record.to_json() == exported


def test_a_partial_cache_is_refused_by_loff_train_as_by_the_window(trained, tmp_path, capsys):
    """One rule in the engine (Project.cache_partial): a cache whose extraction was stopped
    (its batches folder still there, or fewer images than the catalog's readable ones) is
    refused by `loff train`, cross-validation and tuning, and the window's Train page reads
    the same rule."""
    import shutil

    from loff_core.cli import main
    from loff_core.errors import CacheError, Remedy
    from loff_core.settings import CVSettings, TrainConfig

    root = tmp_path / "p"
    shutil.copytree(trained, root)
    project = Project.open(root)
    fingerprint = project.settings.active_cache
    n = project.expected_images()
    assert project.cached_images(fingerprint) == n and not project.cache_partial()
    parts = project.caches_dir / f"{fingerprint}.parts"
    parts.mkdir()  # a stopped extraction's batches, not merged yet
    assert project.cache_partial()
    assert main(["train", str(root), "--epochs", "1", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "partial" in err and "loff extract" in err and "again to finish it" in err
    parts.rmdir()
    summary = project.caches_dir / f"{fingerprint}.json"
    saved = summary.read_text()
    summary.write_text(json.dumps({**json.loads(saved), "images": n - 3}))  # merged, but 3 images short
    project = Project.open(root)
    assert project.cache_partial()
    with pytest.raises(CacheError, match=f"{n - 3} of {n} images") as caught:
        steps.train(project, TrainConfig(epochs=1, task=project.settings.task))
    assert caught.value.remedy == Remedy.EXTRACT_AGAIN
    with pytest.raises(CacheError, match="partial"):
        steps.cross_validate(project, CVSettings(folds=2, train=TrainConfig(epochs=1, task=project.settings.task)))
    runs = len(project.runs())
    summary.write_text(saved)
    assert not Project.open(root).cache_partial()
    assert main(["train", str(root), "--epochs", "1", "--quiet"]) == 0
    assert len(Project.open(root).runs()) == runs + 1
