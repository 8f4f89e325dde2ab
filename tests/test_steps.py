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
    assert len(out["heat"]) == 5 and out["probabilities"].shape[0] == 5
    # the same numbers as one batch (up to float rounding of another batch size)
    monkeypatch.setattr(steps, "EXPLAIN_BATCH", 64)
    whole = steps.explain(project, None, ids)
    assert np.allclose(whole["probabilities"], out["probabilities"], atol=1e-5)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(whole["heat"], out["heat"]))
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
