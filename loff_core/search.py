"""`loff tune`: model selection by patient-grouped cross-validation, searched with Optuna.

The search (issue 20) varies what matters on a feature cache:

- block: among the blocks the cache holds (`loff extract --layers -2,last` stores two), unless
  `--block` names one;
- head kind: attention, linear, vit (`--heads` restricts them);
- learning rate: log-uniform in LR_RANGE;
- augmentation strength: off / default / strong (`validation.augment_named`);
- length: the base epochs / patience (TrainConfig's, or the Train page's epochs) or twice that.

Grid pooling is not an axis: the cache stores the token grid already pooled to `--grid` at
extraction, and a head trained on a coarser grid would need the same pooling at predict and
export time, which the exported card does not describe (docs/validation.md).

The sampler is Optuna's TPE, seeded: each trial's sampler is a fresh `TPESampler` whose seed
is a function of (seed, number of finished trials), and TPE reads only finished trials, so
the configurations tried are a deterministic function of the seed and the results so far.
The default configuration is always trial 1 (enqueued), and for classification the
logistic-regression baseline on each searched block is scored before any trial.

Pruning (`FoldPruner`): each fold's held-out score (run_folds' "fold" partial result) is
reported to the trial as the running mean of the primary metric; after fold 1 or 2 a trial
whose running mean is more than PRUNE_MARGIN below the best completed trial's running mean
over the same folds (the folds are the same for every trial: paired) stops. Pruned trials
are on the leaderboard, marked, and never win.

The study lives in the project (`tune/<key>.journal`, Optuna's JournalStorage on a file):
the key is a hash of the cache fingerprint, the catalog version and every setting that
changes what a trial scores, so a changed cache or setting starts a new study, and a tune
that was stopped or killed resumes when run again with the same settings: a trial left
RUNNING by a killed process is run again with the same parameters, and the leaderboard ends
the same as an uninterrupted run's. `trials` and `budget` only say when to stop.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .errors import TrainingError
from .fsutil import utc_now
from .progress import Progress, format_duration
from .settings import DEFAULT_TUNE_BUDGET, DEFAULT_TUNE_TRIALS, EvaluateSettings
from .validation import (GROUPS_DIR, LOGREG, LOGREG_CS, PRIMARY, Pool, _jsonable, _logreg_features, _new_group_id,
                         _read_cls, _save_group, augment_named, config_dict, fit_logreg, logreg_head_state,
                         project_pool, run_folds)

HEADS = ("attention", "linear", "vit")
#: learning rates searched (log-uniform), one range for every head (a fixed search space keeps
#: TPE multivariate): the old grid's 5e-4..2e-3 (attention, vit) and 1e-3..1e-2 (linear) inside
LR_RANGE = (2e-4, 1e-2)
AUGMENTS = ("default", "off", "strong")
LENGTHS = ("base", "long")  # the base epochs / patience, or twice that
#: a trial is pruned after fold 1 or 2 when its running mean primary score is this far below
#: the best completed trial's over the same folds
PRUNE_MARGIN = 0.05
PRUNE_FOLDS = 2
#: random configurations before TPE models the results (the default trial counts)
STARTUP_TRIALS = 4
TUNE_DIR = "tune"
STUDY_VERSION = 2  # 2: folds numbered patients by first appearance (validation.grouped_folds)


# -- the search space ------------------------------------------------------------------------
def search_space(task: str, base: Any, heads: Optional[Sequence[str]] = None,
                 blocks: Sequence[Optional[str]] = (None,)) -> dict[str, Any]:
    """The axes `tune` searches: {"block": [...], "head": [...], "lr": (low, high),
    "augment": [...], "length": {"base": (epochs, patience), "long": (2x, 2x)}}. `heads`
    restricts the head kinds (None: all); `blocks`: the cache's blocks searched."""
    heads = list(HEADS) if heads is None else list(dict.fromkeys(heads))
    unknown = sorted(set(heads) - set(HEADS))
    if unknown or not heads:
        raise TrainingError(f"unknown head kind(s) for tune: {', '.join(unknown) or '(none given)'}; "
                            "expected attention, linear or vit")
    return {"task": task, "block": list(blocks), "head": heads, "lr": LR_RANGE, "augment": list(AUGMENTS),
            "length": {"base": (base.epochs, base.patience), "long": (2 * base.epochs, 2 * base.patience)}}


def default_params(space: dict[str, Any], base: Any) -> dict[str, Any]:
    """Trial 1: the base's head (else the first allowed), learning rate and augmentation on
    the cache's default block, base length (only the axes with a choice are parameters)."""
    from .validation import _augment_name

    head = base.head if base.head in space["head"] else space["head"][0]
    augment = _augment_name(base.augment)
    params = {"block": space["block"][0], "head": head, "lr": float(np.clip(base.lr, *LR_RANGE)),
              "augment": augment if augment in AUGMENTS else "default", "length": "base"}
    return {k: v for k, v in params.items() if k not in ("block", "head") or len(space[k]) > 1}


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters (define-by-run; the same space for every trial)."""
    params: dict[str, Any] = {}
    for axis in ("block", "head"):
        if len(space[axis]) > 1:
            params[axis] = trial.suggest_categorical(axis, space[axis])
    params["lr"] = trial.suggest_float("lr", *space["lr"], log=True)
    params["augment"] = trial.suggest_categorical("augment", space["augment"])
    params["length"] = trial.suggest_categorical("length", list(LENGTHS))
    return params


def config_for(params: dict[str, Any], space: dict[str, Any], base: Any) -> Any:
    """The TrainConfig of a trial's parameters (learning rate rounded to 3 digits)."""
    epochs, patience = space["length"][params["length"]]
    return replace(base, task=space["task"], head=params.get("head", space["head"][0]),
                   lr=float(f"{params['lr']:.3g}"), epochs=epochs, patience=patience,
                   augment=augment_named(params["augment"]), block=params.get("block", space["block"][0]))


def entry_config(config: Any, block: Optional[str]) -> dict[str, Any]:
    """A leaderboard row's configuration: config_dict plus the block it was scored on."""
    return {**config_dict(config), "block": block}


# -- pruning -------------------------------------------------------------------------------
def _pruner() -> Any:
    import optuna

    class FoldPruner(optuna.pruners.BasePruner):
        """Prune after fold 1..PRUNE_FOLDS when the trial's running mean is more than
        PRUNE_MARGIN below the best completed trial's running mean at the same fold."""

        def prune(self, study: Any, trial: Any) -> bool:
            step = trial.last_step
            if step is None or step > PRUNE_FOLDS:
                return False
            done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            ref = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
            return bool(ref) and trial.intermediate_values[step] < max(ref) - PRUNE_MARGIN

    return FoldPruner()


def _sampler(seed: int, finished: int) -> Any:
    """A fresh TPE sampler for the next trial, seeded from (seed, finished trials): sampling
    is a function of the seed and the finished trials only, whoever ran them."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-argument warnings
        return optuna.samplers.TPESampler(seed=(seed * 1_000_003 + finished) % 2**32, n_startup_trials=STARTUP_TRIALS,
                                          multivariate=True, constant_liar=False)


# -- the study in the project ----------------------------------------------------------------
def study_key(fingerprint: str, catalog_version: Any, space: dict[str, Any], folds: int, seed: int,
              base: Any, with_logreg: bool) -> str:
    """What a trial's score depends on, hashed: a change starts a new study."""
    payload = {"v": STUDY_VERSION, "cache": fingerprint, "catalog": catalog_version, "folds": folds, "seed": seed,
               "space": space, "base": _jsonable(replace(base, head="attention", lr=1e-3, block=None)),
               "logreg": with_logreg}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _journal_lock(path: Path) -> Any:
    """The journal's lock: an OS file lock (filelock), released by the OS when its process
    dies, so a tune killed with SIGKILL leaves nothing to wait for (Optuna's own file locks
    leave a lock file that the next process waits 10 s on, then breaks)."""
    from filelock import FileLock

    class _Lock:  # what JournalFileBackend calls of its lock_obj (duck-typed)
        def __init__(self) -> None:
            self._lock = FileLock(str(path) + ".lock")

        def acquire(self) -> bool:
            self._lock.acquire()
            return True

        def release(self) -> None:
            self._lock.release()

    return _Lock()


def _drop_partial_line(path: Path) -> None:
    """A process killed in the middle of a journal write can leave a last line without its
    newline; the next appended line would join it into one unreadable line: cut it off."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


class Study:
    """An Optuna study on a journal file (or in memory: `path` None), with the baseline rows
    and each trial's out-of-fold predictions beside it."""

    def __init__(self, path: Optional[Path], pruner: Any):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.path = path
        if path is None:
            storage: Any = optuna.storages.InMemoryStorage()
        else:
            from optuna.storages.journal import JournalFileBackend

            path.parent.mkdir(parents=True, exist_ok=True)
            _drop_partial_line(path)
            backend = JournalFileBackend(str(path), lock_obj=_journal_lock(path))
            storage = optuna.storages.JournalStorage(backend)
        self.study = optuna.create_study(study_name="tune", storage=storage, direction="maximize",
                                         load_if_exists=True, pruner=pruner)
        self._oof: dict[str, np.ndarray] = {}

    def finished(self) -> list[Any]:
        from optuna.trial import TrialState

        return [t for t in self.study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]

    def recover(self, space: dict[str, Any], first: dict[str, Any]) -> None:
        """Trials left RUNNING (a killed process; the caller holds the project lock) fail and
        are queued again with the same parameters; the default is queued in a new study."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        for t in trials:
            if t.state == TrialState.RUNNING:
                self.study.tell(t.number, state=TrialState.FAIL)
                if set(t.params) == set(first) and not waiting:
                    self.study.enqueue_trial(dict(t.params))
                    waiting = True
        if not waiting and not self.finished():
            self.study.enqueue_trial(first)

    def save_oof(self, name: str, oof: np.ndarray) -> None:
        self._oof[name] = oof
        if self.path is not None:
            from .fsutil import atomic_path

            folder = self.path.with_suffix(".oof")
            folder.mkdir(exist_ok=True)
            with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, oof)

    def load_oof(self, name: str) -> Optional[np.ndarray]:
        if name in self._oof or self.path is None:
            return self._oof.get(name)
        file = self.path.with_suffix(".oof") / f"{name}.npy"
        return np.load(file) if file.is_file() else None


# -- one configuration, scored ----------------------------------------------------------------
def _entry(config: Any, block: Optional[str], result: dict[str, Any]) -> dict[str, Any]:
    return {"config": entry_config(config, block),
            "cv": {n: {"mean": v["mean"], "sd": v["sd"]} for n, v in result["metrics"].items()},
            "per_fold": {n: v["per_fold"] for n, v in result["metrics"].items()},
            "best_epochs": result["best_epochs"], "fold_extra": result["fold_extra"]}


def _primary_mean(entry: dict[str, Any], task: str) -> Optional[float]:
    return (entry["cv"].get(PRIMARY[task]) or {}).get("mean")


def rank_key(entry: dict[str, Any], task: str) -> tuple[int, float, float]:
    """Complete rows first, then by the primary metric's mean, then accuracy."""
    primary = _primary_mean(entry, task)
    acc = (entry["cv"].get("accuracy") or {}).get("mean")
    return (0 if entry.get("pruned") else 1, -math.inf if primary is None else primary,
            -math.inf if acc is None else acc)


def _score(source: Any, pool: Pool, classes: Sequence[str], task: str, config: Any, *, folds: int, seed: int,
           progress: Progress, report: Callable[[int, str], None], on_fold: Optional[Callable[[float], bool]] = None,
           over_budget: Optional[Callable[[], bool]] = None) -> tuple[dict[str, Any], bool]:
    """run_folds with its own Stop flag: set by the caller's Stop or by `over_budget` (both
    checked at each report) or by `on_fold` (given the running mean primary score after each
    fold; True: prune). Returns (run_folds' result, pruned)."""
    scores: list[float] = []
    pruned = [False]

    def on_report(done: int, total: int, message: str) -> None:
        if (progress.stop_requested or (over_budget is not None and over_budget())) and not sub.stop_requested:
            sub.request_stop()
        report(done, message)

    def on_partial(item: Any) -> None:
        progress.partial(item.kind, item.value)
        if item.kind == "fold" and on_fold is not None:
            value = item.value["metrics"].get(PRIMARY[task])
            scores.append(-1.0 if value is None else float(value))
            if on_fold(float(np.mean(scores))):
                pruned[0] = True
                sub.request_stop()

    sub = progress.linked(on_report, stop=False)
    sub.on_partial = on_partial
    if progress.stop_requested:
        sub.request_stop()
    result = run_folds(source, pool, classes, task, config, folds=folds, seed=seed, progress=sub)
    return result, pruned[0] and result["completed"] < folds


class _Clock:
    """Time left and the progress line of a search: "trial 3/8 (fold 2/5) · best so far
    0.861 (attention) · about 2 min left"."""

    def __init__(self, target: Optional[int], folds: int, budget: Optional[float]):
        self.target, self.folds, self.budget = target, folds, budget
        self.start = time.monotonic()
        self.fold_seconds: list[float] = []
        self.trial_seconds: list[float] = []
        self.best: Optional[tuple[float, str]] = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def spent(self) -> bool:
        """The budget is spent, or what is left of it is shorter than a trial of this search
        takes on average (so a budget ends near its time, not a whole trial after it)."""
        if self.budget is None:
            return False
        left = self.budget - self.elapsed()
        return left <= 0 or (bool(self.trial_seconds) and left < float(np.mean(self.trial_seconds)))

    def overrun(self) -> bool:
        """A running trial has gone well past the budget (10 % and 10 s over it): it is cut,
        so a slow trial (a ViT at twice the epochs) cannot hold the search far beyond it."""
        return self.budget is not None and self.elapsed() > 1.1 * self.budget + 10

    def cannot_finish(self, fold_seconds: list[float]) -> bool:
        """A running trial whose folds so far (`fold_seconds`) say its remaining ones would end
        past the overrun limit: cut now rather than at the limit (it would be left out then
        too; a ViT trial ran 25 s past a 150 s budget before the cut)."""
        if self.budget is None or not fold_seconds:
            return False
        left = (self.folds - len(fold_seconds)) * float(np.mean(fold_seconds))
        return left > 0 and self.elapsed() + left > 1.1 * self.budget + 10

    def seconds_left(self, trial_index: int, folds_done: int) -> Optional[float]:
        """Trials before this one: `trial_index`; folds of this one done: `folds_done`."""
        if not self.fold_seconds:
            return None
        per_fold = float(np.mean(self.fold_seconds))
        this = (self.folds - folds_done) * per_fold
        if self.target is None:
            return this + max(0.0, (self.budget or 0.0) - self.elapsed())
        left = this + max(0, self.target - trial_index - 1) * self.folds * per_fold
        if self.budget is not None:
            left = min(left, this + max(0.0, self.budget - self.elapsed()))
        return left

    def note_best(self, entry: dict[str, Any], task: str) -> None:
        score = _primary_mean(entry, task)
        if score is not None and not entry.get("pruned") and (self.best is None or score > self.best[0]):
            head = entry["config"]["head"]
            self.best = (score, "logistic regression" if head == LOGREG else head)

    def line(self, what: str, fold: int, trial_index: Optional[int] = None) -> str:
        parts = [f"{what} (fold {fold}/{self.folds})"]
        if self.best is not None:
            parts.append(f"best so far {self.best[0]:.3f} ({self.best[1]})")
        left = None if trial_index is None else self.seconds_left(trial_index, fold - 1)
        if left is not None:
            parts.append(f"about {format_duration(left)} left")
        return " · ".join(parts)


def stop_rule(trials: Optional[int], budget: Optional[float]) -> tuple[Optional[int], Optional[float]]:
    """(trials, budget) a search runs with: as given; a budget alone: trials until it is
    spent; neither: DEFAULT_TUNE_TRIALS, stopping early at DEFAULT_TUNE_BUDGET (the default
    tune fits in 3 minutes on a 2-core CPU; docs/validation.md)."""
    if trials is not None and trials < 1:
        raise TrainingError(f"--trials {trials}: a search needs at least 1 trial (the default configuration is "
                            "trial 1); to score one configuration use loff cv")
    if trials is None and budget is None:
        return DEFAULT_TUNE_TRIALS, DEFAULT_TUNE_BUDGET
    return trials, budget


def _sources(sources: Any) -> dict[Optional[str], Any]:
    if isinstance(sources, dict):
        return dict(sources)
    return {getattr(sources, "block", None): sources}


def _baselines(study: Study, sources: dict[Optional[str], Any], pool: Pool, classes: Sequence[str], task: str,
               folds: int, seed: int, progress: Progress, clock: _Clock) -> list[dict[str, Any]]:
    """The logistic regression on each searched block's pooled embedding, scored first (or
    read back from the study); stops when Stop is asked."""
    out = []
    for block, source in sources.items():
        name = f"baseline-{block}"
        entry = study.study.user_attrs.get(name)
        if entry is None:
            if progress.stop_requested:
                break
            done = [0]

            def report(units: int, message: str, block: Any = block) -> None:
                progress.report(0, 0, clock.line(f"logistic regression baseline (block {block})", done[0] + 1))

            def on_fold(_mean: float) -> bool:
                done[0] += 1
                return False
            result, _ = _score(source, pool, classes, task, LOGREG, folds=folds, seed=seed, progress=progress,
                               report=report, on_fold=on_fold)
            if result["completed"] < folds:
                break
            entry = _entry(LOGREG, block, result)
            study.save_oof(name, result["oof"])
            study.study.set_user_attr(name, entry)
        out.append({**entry, "_name": name})
        clock.note_best(entry, task)
        progress.partial("trial", entry)
    return out


def _run_trial(study: Study, space: dict[str, Any], base: Any, sources: dict[Optional[str], Any], pool: Pool,
               classes: Sequence[str], *, folds: int, seed: int, progress: Progress, clock: _Clock
               ) -> Optional[dict[str, Any]]:
    """Ask the study for the next configuration, score it fold by fold (pruned when clearly
    behind), tell the study. None when Stop interrupted it (the trial then fails and is run
    again with the same parameters by the next tune)."""
    import optuna

    task = space["task"]
    n = len(study.finished())
    study.study.sampler = _sampler(seed, n)
    trial = study.study.ask()
    params = suggest(trial, space)
    config = config_for(params, space, base)
    block = params.get("block", space["block"][0])
    state = {"folds": 0, "t0": time.monotonic(), "fold_seconds": []}
    total = None if clock.target is None else clock.target * folds
    what = f"trial {n + 1}" + ("" if clock.target is None else f"/{clock.target}")

    def report(units: int, message: str) -> None:
        done = n * folds + state["folds"]
        line = clock.line(what, min(folds, state["folds"] + 1), n)
        if total is None:
            progress.report(int(min(clock.elapsed(), clock.budget or 0)), int(clock.budget or 0), line)
        else:
            progress.report(done, total, line)

    def on_fold(mean: float) -> bool:
        now = time.monotonic()
        clock.fold_seconds.append(now - state["t0"])
        state["fold_seconds"].append(now - state["t0"])
        state["t0"] = now
        state["folds"] += 1
        _estimate(progress, clock, config.head, n)
        trial.report(mean, step=state["folds"])
        return state["folds"] < folds and trial.should_prune()

    started = time.monotonic()
    result, pruned = _score(sources[block], pool, classes, task, config, folds=folds, seed=seed,
                            progress=progress, report=report, on_fold=on_fold,
                            over_budget=lambda: n >= 1 and (clock.overrun()
                                                            or clock.cannot_finish(state["fold_seconds"])))
    clock.trial_seconds.append(time.monotonic() - started)
    if not pruned and result["completed"] < folds:
        study.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if not progress.stop_requested:
            progress.inform(f"the time budget ran out during trial {n + 1} ({config.head}): it is left out, "
                            f"as a trial scored on fewer folds is not comparable")
        return None
    entry = {**_entry(config, block, result), "trial": n + 1}
    if pruned:
        entry["pruned"] = True
    name = f"trial-{n + 1}"
    trial.set_user_attr("entry", entry)
    if pruned:
        study.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.save_oof(name, result["oof"])
        value = _primary_mean(entry, task)
        study.study.tell(trial, -1.0 if value is None else float(value))
    clock.note_best(entry, task)
    progress.partial("trial", entry)
    row = {**entry, "_name": name, "_params": params}
    if not pruned:
        row["_fold_heads"] = result["fold_heads"]  # kept for the best trial only (tune_source)
    return row


def _estimate(progress: Progress, clock: _Clock, head: str, done: int) -> None:
    """One line, once the first fold of this search's first trial is timed: "one fold of
    attention took 6 s: about 4 min 00 s for 8 trials x 5 folds" (or how many fit the budget)."""
    if len(clock.fold_seconds) != 1:
        return
    fold = clock.fold_seconds[0]
    per_trial = fold * clock.folds
    said = f"one fold of {head} took {format_duration(fold)}: "
    room = None if clock.budget is None else max(0.0, clock.budget - clock.elapsed()) + fold
    if clock.target is None:
        fits = max(1, int((room or 0.0) / per_trial))
        progress.inform(said + f"about {fits} trials x {clock.folds} folds fit the {format_duration(clock.budget or 0)}"
                               f" budget")
        return
    trials = clock.target - done
    total = trials * per_trial
    if room is not None and total > room:
        fits = max(1, min(trials, int(room / per_trial)))
        progress.inform(said + f"about {fits} of {trials} trials x {clock.folds} folds fit the "
                               f"{format_duration(clock.budget or 0)} budget (all would take about "
                               f"{format_duration(total)})")
    else:
        progress.inform(said + f"about {format_duration(total)} for {trials} trials x {clock.folds} folds")


def tune_source(sources: Any, pool: Pool, classes: Sequence[str], task: str, *, trials: Optional[int] = None,
                folds: int = 5, seed: int = 0, base: Any = None, with_logreg: bool = True,
                progress: Progress = Progress(), heads: Optional[Sequence[str]] = None,
                budget: Optional[float] = None, study_path: Optional[Path] = None) -> dict[str, Any]:
    """Search head configurations by grouped CV on `pool` (`sources`: a feature source, or
    {block: source} for the blocks searched). `trials`: configurations finished in the
    study (None: DEFAULT_TUNE_TRIALS, or unlimited with a `budget` in seconds, after which no
    new trial starts); `study_path`: the journal file (None: in memory, nothing resumes).
    Each scored row is a "trial" partial result as it finishes. Returns {"leaderboard" (best
    first; pruned rows last, marked), "best" (with "_config", "_oof"), "stopped", "space",
    "trials_run" (this call), "resumed" (trials found done)}."""
    from .settings import TrainConfig

    target, budget = stop_rule(trials, budget)
    base = base or TrainConfig(task=task)
    by_block = _sources(sources)
    space = search_space(task, base, heads, list(by_block))
    study = Study(study_path, _pruner())
    study.recover(space, default_params(space, base))
    clock = _Clock(target, folds, budget)
    rows = _baselines(study, by_block, pool, classes, task, folds, seed, progress, clock) \
        if with_logreg and task == "classification" else []
    baseline_stopped = with_logreg and task == "classification" and len(rows) < len(by_block)
    restored = study.finished()
    if restored:
        progress.inform(f"resuming the study {study.path.name if study.path else ''}: {len(restored)} trials were "
                        f"done by an earlier tune with these settings")
    for t in restored[:target]:  # what an earlier, stopped or killed, tune of this study scored
        entry = t.user_attrs["entry"]
        rows.append({**entry, "_name": f"trial-{entry['trial']}", "_params": dict(t.params)})
        clock.note_best(entry, task)
        progress.partial("trial", entry)
    ran, stopped = 0, False
    while target is None or len(study.finished()) < target:
        if progress.stop_requested or baseline_stopped:
            stopped = True
            break
        if clock.spent() and study.finished():  # the default configuration is always tried
            break
        progress.check()
        row = _run_trial(study, space, base, by_block, pool, classes, folds=folds, seed=seed, progress=progress,
                         clock=clock)
        if row is None:
            stopped = True
            break
        rows.append(row)
        ran += 1
        _keep_best_heads(rows, task)
    return _board(rows, study, space, base, task, stopped=stopped, ran=ran, resumed=len(restored))


def _keep_best_heads(rows: list[dict[str, Any]], task: str) -> None:
    """The fold heads stay in memory for the best row so far only (the final model's)."""
    best = max(rows, key=lambda e: rank_key(e, task))
    for r in rows:
        if r is not best:
            r.pop("_fold_heads", None)


def _board(rows: list[dict[str, Any]], study: Study, space: dict[str, Any], base: Any, task: str, *,
           stopped: bool, ran: int, resumed: int) -> dict[str, Any]:
    if not any(not r.get("pruned") for r in rows):
        raise TrainingError("tuning was stopped before the first configuration was scored")
    rows.sort(key=lambda e: rank_key(e, task), reverse=True)
    best = dict(rows[0])
    best["_config"] = LOGREG if best["config"]["head"] == LOGREG else config_for(best["_params"], space, base)
    best["_oof"] = study.load_oof(best["_name"])
    board = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    return {"leaderboard": board, "best": best, "stopped": stopped, "space": space, "trials_run": ran,
            "resumed": resumed, "study": None if study.path is None else study.path.name}


def retrain_final(source: Any, pool: Pool, classes: Sequence[str], task: str, best: dict[str, Any], seed: int,
                  progress: Progress = Progress()) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The winner trained on all of `pool` (train + val): a head for LOGREG (its C chosen by
    grouped CV again), else the TrainConfig for the median best epoch of the folds with no
    early stopping. Returns (HeadConfig, state dict, notes for the run record)."""
    from .heads import HeadConfig
    from .training import train_head

    config = best["_config"]
    k = len(classes)
    if config == LOGREG:
        x = _logreg_features(_read_cls(source, pool.ids))
        fitted = fit_logreg(x, pool.y, pool.groups, k, seed)
        head_config = HeadConfig(kind="linear", task="classification", num_classes=k,
                                 feature_dim=int(source.feature_dim), grid_hw=tuple(int(v) for v in source.grid_hw))
        progress.report(1, 1, "logistic regression on train + val")
        return head_config, logreg_head_state(fitted, int(source.feature_dim)), {"C": fitted["C"]}
    epochs = int(np.median(best["best_epochs"])) if best["best_epochs"] else config.epochs
    final = replace(config, epochs=max(1, epochs), patience=max(1, epochs), seed=seed)
    result = train_head(source, pool.ids, pool.y.tolist(), [], [], final, num_classes=k, progress=progress)
    return result.head_config, result.state_dict, {"epochs": final.epochs, "history": result.history,
                                                   "train_config": _jsonable(final)}


def final_model(source: Any, pool: Pool, classes: Sequence[str], task: str, best: dict[str, Any], seed: int, *,
                folds: int, final: str = "fold-heads", progress: Progress = Progress()
                ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The model `loff tune` keeps of its winner `best` (a tune_source "best"); returns
    (HeadConfig, state dict, notes for the run record) as retrain_final does.

    final "fold-heads" (the default): the winner's K cross-validation heads, each trained on
    its fold's training part and early-stopped on that part's validation patients, as one
    EnsembleHead averaging their probabilities (nested CV on mini-MIAS: accuracy and macro AUC
    above one head retrained on train + val, docs/benchmarks.md "Which final model"). The
    search's own heads are used; when it did not keep them (the winner was scored by an
    earlier, resumed tune) its folds are trained again with the same splits and seeds, which
    on the CPU gives the same heads. "retrain", and the logistic-regression baseline always:
    retrain_final."""
    from .heads import ensemble_state

    from .trust import MAX_MEMBERS

    config = best["_config"]
    if final != "fold-heads" or config == LOGREG or folds > MAX_MEMBERS:  # a card holds at most MAX_MEMBERS
        return retrain_final(source, pool, classes, task, best, seed, progress)
    heads = best.get("_fold_heads") or []
    if len(heads) < folds:
        progress.report(0, folds, "training the winner's fold heads again (its trial was scored by an earlier tune)")
        heads = run_folds(source, pool, classes, task, config, folds=folds, seed=seed, progress=progress)["fold_heads"]
    if len(heads) < folds:  # stopped meanwhile: one head on everything is still a model
        return retrain_final(source, pool, classes, task, best, seed, progress)
    head_config = replace(heads[0][0], members=len(heads))
    progress.report(1, 1, f"the winner's {len(heads)} fold heads averaged")
    epochs = int(np.median(best["best_epochs"])) if best.get("best_epochs") else config.epochs
    return head_config, ensemble_state([state for _, state in heads]), {
        "epochs": epochs, "history": [], "train_config": _jsonable(config), "members": len(heads)}


def tune_base(config: Any) -> Any:
    """The base of a search from a front end's TrainConfig: its task, seed, length (epochs /
    patience: the search tries them and twice them; issue 23: the Train page's epochs) and
    every setting the search does not vary (device, batch size, weight decay, ...); what it
    varies (head, learning rate, augmentation) starts from TrainConfig's defaults."""
    from .settings import TrainConfig

    default = TrainConfig()
    return replace(config, head=default.head, lr=default.lr, augment=default.augment)


def describe_search(space: dict[str, Any], target: Optional[int], folds: int, budget: Optional[float],
                    seed: int) -> str:
    """The one line `loff tune` prints before it starts: which search it runs."""
    from .settings import TuneSettings, field_info

    default = (target, budget) == (DEFAULT_TUNE_TRIALS, DEFAULT_TUNE_BUDGET) and \
        folds == field_info(TuneSettings, "folds").default
    count = "trials until the budget" if target is None else f"{target} trials"
    stop = "" if budget is None else f", at most {format_duration(budget)}"
    (e1, _), (e2, _) = space["length"]["base"], space["length"]["long"]
    blocks = ", ".join(str(b) for b in space["block"])
    return (f"{'default search' if default else 'search'}: {count} x {folds} folds{stop} (Optuna TPE, seed {seed}; "
            f"logistic-regression baseline first, then the default configuration) over head "
            f"{'/'.join(space['head'])}, block {blocks}, learning rate {LR_RANGE[0]:g}-{LR_RANGE[1]:g}, augmentation "
            f"off/default/strong, {e1} or {e2} epochs; a trial {PRUNE_MARGIN} behind the best after fold 1-"
            f"{PRUNE_FOLDS} is pruned (docs/validation.md)")


def _open_blocks(project: Any, base: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each block searched: ({block: FeatureCache}, {block: its features in memory}); the
    base's block when it names one, else every block the cache holds (its default first)."""
    from .training import _in_memory

    cache = project.open_cache(block=base.block)
    caches = {cache.block: cache}
    for b in ([] if base.block else cache.blocks):
        if b not in caches:
            caches[b] = project.open_cache(block=b)
    return caches, {b: _in_memory(c) for b, c in caches.items()}


def tune(project: Any, settings: Any, *, progress: Progress = Progress()) -> dict[str, Any]:
    """`loff tune`: the search scored by grouped CV on train + val (`settings`: TuneSettings;
    the study in PROJECT/tune/), the winner's final model (`final_model`) saved as a normal run, evaluated
    once on test. Returns {"group", "leaderboard", "best", "run", "test", ...}."""
    from .settings import TrainConfig

    target, budget = stop_rule(settings.trials, settings.budget)
    base = tune_base(settings.train or TrainConfig(task=project.settings.task))
    folds, seed, task = settings.folds, base.seed, base.task
    project.check_cache_complete()
    caches, sources = _open_blocks(project, base)
    cache = next(iter(caches.values()))
    pool, classes = project_pool(project, cache)
    if len(classes) < 2:
        raise TrainingError(f"{project.root}: tuning needs at least two classes")
    started = utc_now()
    heads = list(settings.heads) if settings.heads else None
    space = search_space(task, base, heads, list(sources))
    with_logreg = task == "classification"
    key = study_key(cache.fingerprint, project.settings.catalog_version, space, folds, seed, base, with_logreg)
    study_path = project.root / TUNE_DIR / f"{key}.journal"
    progress.inform(describe_search(space, target, folds, budget, seed))
    search = progress.linked(lambda d, n, m: progress.report(int(950 * d / n) if n else 0, 1000, m))
    found = tune_source(sources, pool, classes, task, trials=target, folds=folds, seed=seed, base=base,
                        progress=search, heads=heads, budget=budget, study_path=study_path,
                        with_logreg=with_logreg)
    return _finish(project, settings, found, caches, sources, pool, classes, task, seed, started, progress)


def _finish(project: Any, settings: Any, found: dict[str, Any], caches: dict[str, Any], sources: dict[str, Any],
            pool: Pool, classes: Sequence[str], task: str, seed: int, started: str,
            progress: Progress) -> dict[str, Any]:
    """The winner's final model (its fold heads, or retrained on train + val) saved as a run
    (calibrated on the out-of-fold predictions), evaluated once on test; the group record written."""
    best, folds = found["best"], settings.folds
    block = best["config"].get("block")
    cache, data = caches[block], sources[block]
    # not linked to Stop: the winner is always trained to the end (a few seconds)
    final_progress = progress.linked(lambda d, n, m: progress.report(950 + int(50 * d / n) if n else 950, 1000,
                                                                     f"final model: {m}"), stop=False)
    head_config, state, notes = final_model(data, pool, classes, task, best, seed, folds=folds,
                                            final=settings.final, progress=final_progress)
    group = _new_group_id(project, "tune")
    run_id = project.new_run_id(head_config.kind)
    record = {
        "run_id": run_id, "started": started, "finished": utc_now(), "task": task, "classes": list(classes),
        "train_config": notes.get("train_config", {"head": LOGREG, "C": notes.get("C"), "augment": {"enabled": False},
                                                   "Cs": list(LOGREG_CS), "block": block}),
        "head_config": head_config.to_dict(), "history": notes.get("history", []),
        "best_epoch": notes.get("epochs", 0), "best_score": _primary_mean(best, task) or 0.0,
        "monitor": f"cv_{PRIMARY[task]}", "stopped": "completed",
        "notes": [f"chosen by loff tune (group {group}): {folds}-fold grouped CV on train + val, then "
                  + (f"its {notes['members']} fold heads averaged (each trained on its fold's training part)"
                     if notes.get("members") else "retrained on train + val")],
        "n_train": len(pool.ids), "n_val": 0,
        "catalog_version": project.settings.catalog_version, "cache_fingerprint": cache.fingerprint,
        "block": cache.block, "backbone": cache.block_backbone, "group": group,
    }
    run = project.write_run(run_id, record, state)
    folder = project.root / GROUPS_DIR / group
    folder.mkdir(parents=True, exist_ok=True)
    oof = best["_oof"]
    if oof is not None:
        done = ~np.isnan(oof).any(axis=1)
        np.savez(folder / "oof.npz", probabilities=oof[done], labels=pool.y[done],
                 ids=np.asarray(pool.ids)[done])  # ids: `loff audit` ranks label suspects on them
        if len(np.unique(pool.y[done])) >= 2:  # calibrated / thresholded on the out-of-fold predictions
            from .calibration import calibrate_run

            calibrate_run(project, run.run_id)
    test = _test_once(project, run.run_id)
    leaderboard = [{k: v for k, v in e.items() if k != "per_fold"} for e in found["leaderboard"]]
    best_out = {k: v for k, v in best.items() if not k.startswith("_")}
    out = {"group": group, "kind": "tune", "folds": folds, "trials": len(leaderboard), "task": task,
           "leaderboard": leaderboard, "best": best_out, "run": run.run_id,
           "test": None if test is None else test["metrics"], "test_ci": None if test is None else test["ci"],
           "n_test": None if test is None else test["n"], "stopped": found["stopped"], "seed": seed,
           "started": started, "finished": utc_now(), "n_images": len(pool.ids),
           "final": {"model": "fold-heads" if notes.get("members") else "retrain", "members": notes.get("members", 1)},
           "catalog_version": project.settings.catalog_version, "cache_fingerprint": cache.fingerprint,
           "block": cache.block, "search": {"study": found["study"], "trials_run": found["trials_run"],
                                            "resumed": found["resumed"], "budget": settings.budget,
                                            "pruned": sum(1 for e in leaderboard if e.get("pruned")),
                                            "heads": found["space"]["head"], "blocks": found["space"]["block"]}}
    _save_group(project, out)
    return out


def _test_once(project: Any, run_id: str) -> Optional[dict[str, Any]]:
    """The run evaluated on the test split (None when the project has none)."""
    from .errors import LoffError
    from .evaluation import evaluate_run

    try:
        evaluation = evaluate_run(project, run_id, "test", n_bootstrap=EvaluateSettings().bootstrap)
    except LoffError:
        return None  # no test split: the run stands, test stays empty
    return {"metrics": evaluation["metrics"], "ci": evaluation["ci"], "n": evaluation["n"]}
