"""`loff tune`'s search (loff_core/search.py, issue 20): Optuna TPE seeded, the default
configuration first, the logistic-regression baseline before it, pruning after the first
folds (marked, never a winner), the time budget, `--trials 0` refused, the study kept in the
project so a tune killed with SIGKILL resumes to the same leaderboard, and old group records
still read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from loff_cli import binary_png_project, copy_project
from loff_core import search
from loff_core.errors import SettingError, TrainingError
from loff_core.progress import Progress, parse_duration
from loff_core.search import LOGREG, config_for, default_params, search_space, tune_source
from loff_core.settings import TrainConfig, TuneSettings
from test_validation import _cfg, _pool

CLASSES = ["a", "b", "c"]


def _search(**kw):
    src, pool = _pool(n=60)
    args = dict(trials=3, folds=2, seed=0, base=_cfg(epochs=2))
    args.update(kw)
    return tune_source(src, pool, CLASSES, "classification", **args)


def _rows(out):
    return [(e["config"], e.get("pruned", False), e["cv"]["auc"]["mean"]) for e in out["leaderboard"]]


def test_search_is_seeded_default_first_baseline_first_and_searches_every_axis():
    seen = []
    out = _search(progress=Progress(on_partial=lambda p: seen.append(p.value) if p.kind == "trial" else None))
    # the baseline came first, then trial 1: the defaults (the base's head, learning rate, augmentation, length)
    assert seen[0]["config"]["head"] == LOGREG
    first = seen[1]
    assert first["trial"] == 1
    assert {k: first["config"][k] for k in ("head", "lr", "epochs", "patience", "augment")} == \
        {"head": "attention", "lr": _cfg().lr, "epochs": 2, "patience": 4, "augment": "default"}
    assert len(out["leaderboard"]) == len(seen) == 4
    assert not out["best"].get("pruned") and out["best"]["config"] == out["leaderboard"][0]["config"]
    # the same seed, the same search; another seed, another (after the default)
    again = _search()
    assert _rows(again) == _rows(out)
    other = _search(seed=1)
    assert [r[0] for r in _rows(other)] != [r[0] for r in _rows(out)]
    # the space: heads, one lr range, augmentation strengths, the base length and twice it
    space = search_space("classification", _cfg(epochs=10, patience=3), ["linear", "vit"], ["-2", "last"])
    assert space["head"] == ["linear", "vit"] and space["block"] == ["-2", "last"]
    assert space["length"] == {"base": (10, 3), "long": (20, 6)}
    params = default_params(space, _cfg(epochs=10, patience=3))
    assert params["head"] == "linear" and params["block"] == "-2" and params["length"] == "base"
    config = config_for({**params, "length": "long", "augment": "strong"}, space, _cfg(epochs=10, patience=3))
    assert (config.head, config.block, config.epochs, config.patience) == ("linear", "-2", 20, 6)
    assert config.augment.mixup_alpha > TrainConfig().augment.mixup_alpha
    with pytest.raises(TrainingError, match="unknown head kind"):
        search_space("classification", _cfg(), ["mlp"])


def test_heads_restrict_the_search():
    out = _search(heads=["linear"], trials=3, with_logreg=False)
    assert {e["config"]["head"] for e in out["leaderboard"]} == {"linear"}
    assert len(out["leaderboard"]) == 3


def test_a_trial_clearly_behind_after_its_first_fold_is_pruned_marked_and_never_wins(monkeypatch):
    # a margin of -1: every trial after the first completed one is "behind" after fold 1
    monkeypatch.setattr(search, "PRUNE_MARGIN", -1.0)
    out = _search(trials=3, folds=3, with_logreg=False)
    board = out["leaderboard"]
    assert [e.get("pruned", False) for e in board] == [False, True, True]
    assert board[0]["trial"] == 1 and out["best"]["trial"] == 1
    for e in board[1:]:  # scored on the folds it ran: one
        assert len(e["per_fold"]["auc"]) == 1 and len(e["best_epochs"]) == 1
    # the real margin: clearly separable data, nothing is 0.05 behind the default on every fold
    monkeypatch.setattr(search, "PRUNE_MARGIN", 0.05)
    pruner = search._pruner()
    import optuna

    study = optuna.create_study(direction="maximize", pruner=pruner)
    done = study.ask()
    done.report(0.90, 1)
    study.tell(done, 0.9)
    for score, step, expected in ((0.86, 1, False), (0.84, 1, True), (0.80, 3, False)):
        t = study.ask()
        t.report(score, step)
        assert t.should_prune() is expected  # only after fold 1..2, only 0.05 behind
        study.tell(t, state=optuna.trial.TrialState.FAIL)


def test_budget_stops_new_trials_but_the_default_is_always_tried():
    out = _search(trials=None, budget=1e-3)
    heads = [e for e in out["leaderboard"] if e["config"]["head"] != LOGREG]
    assert len(heads) == 1 and heads[0]["trial"] == 1
    # the default: 8 trials, no new one after 150 s; a budget alone: trials until it is spent
    assert search.stop_rule(None, None) == (8, 150.0)
    assert search.stop_rule(5, None) == (5, None) and search.stop_rule(None, 60.0) == (None, 60.0)
    clock = search._Clock(None, 5, budget=10.0)
    clock.start -= 3.0  # 3 s spent, 7 s left
    assert not clock.spent()
    clock.trial_seconds.append(8.0)  # a trial takes 8 s: it would not end within the budget
    assert clock.spent()
    assert parse_duration("3m") == 180 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_trials_zero_is_refused(capsys):
    with pytest.raises(TrainingError, match="at least 1 trial"):
        _search(trials=0)
    with pytest.raises(SettingError):
        TuneSettings(trials=0)
    from loff_core.cli import main

    with pytest.raises(SystemExit):
        main(["tune", "nowhere", "--trials", "0"])
    assert "a search needs at least 1 trial" in capsys.readouterr().err


def test_stop_keeps_the_best_so_far():
    progress = Progress()
    progress.on_partial = lambda p: progress.request_stop() if p.kind == "trial" and p.value.get("trial") else None
    out = _search(trials=4, progress=progress)
    assert out["stopped"] and len(out["leaderboard"]) == 2  # the baseline and trial 1
    assert out["best"]["_oof"] is not None


def test_old_tune_group_records_still_list_and_load(tmp_path):
    """A group written before issue 20 (no block, no search, no pruned marks) reads as before."""
    from loff_core.validation import list_groups, load_group

    class P:
        root = tmp_path

    old = {"group": "20250101-120000-tune", "kind": "tune", "folds": 5, "trials": 2, "task": "classification",
           "leaderboard": [{"config": {"head": LOGREG}, "cv": {"auc": {"mean": 0.8, "sd": 0.02}},
                            "best_epochs": [], "fold_extra": [{"C": 1.0}]}],
           "best": {"config": {"head": LOGREG}, "cv": {"auc": {"mean": 0.8, "sd": 0.02}}}, "run": "r1",
           "test": None, "stopped": False, "seed": 0}
    folder = tmp_path / "groups" / old["group"]
    folder.mkdir(parents=True)
    (folder / "group.json").write_text(json.dumps(old))
    listed = list_groups(P())
    assert listed[0]["group"] == old["group"] and listed[0]["auc"]["mean"] == 0.8 and listed[0]["run"] == "r1"
    assert load_group(P(), old["group"])["leaderboard"] == old["leaderboard"]
    from loff_core.results import TuneResult

    assert TuneResult.from_dict(old).to_json()["leaderboard"] == [{"config": {"head": LOGREG},
                                                                   "cv": {"auc": {"mean": 0.8, "sd": 0.02}}}]


def _tune_cmd(project):
    return [sys.executable, "-m", "loff_core.cli", "tune", str(project), "--trials", "4", "--folds", "3",
            "--epochs", "2", "--device", "cpu", "--quiet", "--json"]


def _finished_trials(journal: Path) -> int:
    """Trials told COMPLETE or PRUNED in an Optuna journal file."""
    if not journal.is_file():
        return 0
    n = 0
    for line in journal.read_text(encoding="utf-8").splitlines():
        try:
            op = json.loads(line)
        except ValueError:
            continue  # a line being written
        if op.get("state") in (1, 2) and "trial_id" in op:
            n += 1
    return n


@pytest.mark.slow
def test_a_tune_killed_with_sigkill_resumes_to_the_same_leaderboard(tmp_path, capsys):
    project = binary_png_project(tmp_path, capsys)
    twin = copy_project(project, tmp_path / "twin")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    # killed after its first trial was told to the study (the journal in PROJECT/tune/ says so)
    proc = subprocess.Popen(_tune_cmd(project), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    journals: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        journals = list((project / "tune").glob("*.journal"))
        if journals and _finished_trials(journals[0]) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the tune ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert 1 <= _finished_trials(journals[0]) < 4 and not (project / "groups").exists()
    resumed = subprocess.run(_tune_cmd(project), env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = subprocess.run(_tune_cmd(twin), env=env, capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = json.loads(resumed.stdout), json.loads(whole.stdout)
    assert a["leaderboard"] == b["leaderboard"] and a["best"] == b["best"]

    def group(p, out):
        return json.loads((p / "groups" / next(iter(os.listdir(p / "groups"))) / "group.json").read_text())
    ga, gb = group(project, a), group(twin, b)
    assert ga["leaderboard"] == gb["leaderboard"]  # trial numbers, pruned marks, best epochs too
    assert ga["search"]["resumed"] >= 1 and gb["search"]["resumed"] == 0
    # the same final model: the winner's fold heads, bit for bit (trained again where the
    # winner was scored before the kill)
    from safetensors.numpy import load_file

    ha = load_file(str(project / "runs" / a["run"] / "head.safetensors"))
    hb = load_file(str(twin / "runs" / b["run"] / "head.safetensors"))
    assert ha.keys() == hb.keys() and all(np.array_equal(ha[k], hb[k]) for k in ha)
    assert len([e for e in ga["leaderboard"] if e["config"]["head"] != LOGREG]) == 4
    # the resumed tune told so; a second run of a finished study scores nothing again
    again = subprocess.run(_tune_cmd(twin), env=env, capture_output=True, text=True, timeout=900)
    assert json.loads(again.stdout)["leaderboard"] == b["leaderboard"]
    assert np.isfinite([e["cv"]["auc"]["mean"] for e in b["leaderboard"]]).all()


@pytest.mark.slow
def test_sigterm_stops_the_tune_keeping_the_best_so_far_and_the_next_tune_resumes(tmp_path, capsys):
    """Ctrl-C / SIGTERM is Stop: the winner among the finished configurations is saved at once,
    the dropped trial is not scored, and the next tune runs it and finishes the study."""
    project = binary_png_project(tmp_path, capsys)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_tune_cmd(project), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        journals = list((project / "tune").glob("*.journal"))
        if journals and _finished_trials(journals[0]) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "stopping: the trial in progress is dropped" in err
    stopped = json.loads(out)
    heads = [e for e in stopped["leaderboard"] if e["config"]["head"] != LOGREG]
    assert 1 <= len(heads) < 4
    record = json.loads(next((project / "groups").iterdir()).joinpath("group.json").read_text())
    assert record["stopped"] and record["run"] == stopped["run"]
    resumed = subprocess.run(_tune_cmd(project), env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    board = json.loads(resumed.stdout)["leaderboard"]
    assert len([e for e in board if e["config"]["head"] != LOGREG]) == 4
    assert all(e in board for e in heads)  # what was scored before the stop stands


def test_a_trial_that_runs_well_past_the_budget_is_cut_and_left_out(monkeypatch):
    """A slow trial (a ViT at twice the epochs) must not hold a budgeted search far past its
    time: once the budget is overrun (10 % and 10 s over it) the running trial stops and is
    left out (fewer folds are not comparable); the default configuration, trial 1, is never cut."""
    clock = search._Clock(None, 5, budget=100.0)
    clock.start -= 105.0
    assert not clock.overrun()  # 5 s over: within the grace
    clock.start -= 20.0
    assert clock.overrun() and not search._Clock(None, 5, budget=None).overrun()
    # cut as soon as its own folds say it cannot end by then: 50 s in, one fold of 30 s done, 4 to go
    early = search._Clock(None, 5, budget=100.0)
    early.start -= 50.0
    assert early.cannot_finish([30.0]) and not early.cannot_finish([10.0])  # 170 s > 120 s; 90 s fits
    assert not early.cannot_finish([]) and not early.cannot_finish([30.0] * 5)  # nothing known / nothing left
    assert not search._Clock(None, 5, budget=None).cannot_finish([30.0])
    monkeypatch.setattr(search._Clock, "overrun", lambda self: True)
    out = _search(trials=3, budget=1e6)
    heads = [e for e in out["leaderboard"] if e["config"]["head"] != LOGREG]
    assert [e["trial"] for e in heads] == [1] and not heads[0].get("pruned")
    assert out["stopped"]


def test_the_final_model_is_the_winners_fold_heads_averaged():
    """`loff tune` keeps the winner's K cross-validation heads as one averaging head (nested
    CV: docs/benchmarks.md, "Which final model"); a winner scored by an earlier, resumed tune
    has its folds trained again, which gives the same heads; `--final retrain` keeps one head."""
    import torch

    from loff_core.heads import build_head
    from loff_core.training import predict_probabilities

    src, pool = _pool(n=60)
    out = tune_source(src, pool, CLASSES, "classification", trials=2, folds=2, seed=0, base=_cfg(epochs=2),
                      with_logreg=False)
    best = out["best"]
    heads = best["_fold_heads"]
    assert len(heads) == 2
    head_config, state, notes = search.final_model(src, pool, CLASSES, "classification", best, 0, folds=2)
    assert head_config.members == 2 and notes["members"] == 2
    build_head(head_config).load_state_dict(state, strict=True)
    ids = pool.ids[:12]
    got = predict_probabilities(head_config, state, src, ids, device="cpu")
    members = [predict_probabilities(c, s, src, ids, device="cpu") for c, s in heads]
    assert np.allclose(got, np.mean(members, axis=0), atol=1e-6)
    assert not np.allclose(members[0], members[1], atol=1e-3)  # two different heads were averaged
    # the heads of a resumed study's winner are trained again: the same heads (CPU training is deterministic)
    again = search.final_model(src, pool, CLASSES, "classification", {**best, "_fold_heads": None}, 0, folds=2)[1]
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    one, one_state, _ = search.final_model(src, pool, CLASSES, "classification", best, 0, folds=2, final="retrain")
    assert one.members == 1 and not any(k.startswith("members.") for k in one_state)
