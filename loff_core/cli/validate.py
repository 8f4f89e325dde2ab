"""`loff cv`, `loff tune`: patient-grouped cross-validation and the head search."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .terminal import METRICS_HELP, declared, run_with_progress
from .train import train_config_from_args

def cmd_cv(args: argparse.Namespace) -> dict[str, Any]:
    from .. import steps  # every command runs a step (loff_core/steps.py), as the app does
    from ..project import Project
    from ..settings import CVSettings

    project = Project.open(args.project)
    config = train_config_from_args(args, project, skip=("head",))  # the head scored is CVSettings'
    settings = CVSettings(**declared(args, CVSettings, skip=("train",)), train=config)
    # --json: exactly the documented document; the rest is in groups/GROUP/group.json
    return run_with_progress("cv", args.quiet, lambda p: steps.cross_validate(project, settings, progress=p))



def _describe_cv(out: dict[str, Any]) -> str:
    lines = [f"cross-validation group {out['group']}: {out['completed']} of {out['folds']} folds over train + val "
             f"({out['n_images']} images, {out['n_patients']} patients; grouped by patient, stratified by label; "
             f"test untouched)" + (" - stopped early" if out["stopped"] else "")]
    for name, m in out["metrics"].items():
        mean = "n/a" if m["mean"] is None else f"{m['mean']:.3f}"
        sd = "" if m["sd"] is None else f" +- {m['sd']:.3f}"
        folds = " ".join("n/a" if v is None else f"{v:.3f}" for v in m["per_fold"])
        lines.append(f"  {name:22s} {mean}{sd}   folds: {folds}")
    return "\n".join(lines)



def cmd_tune(args: argparse.Namespace) -> Any:
    from .. import steps  # every command runs a step (loff_core/steps.py), as the app does
    from ..project import Project
    from ..settings import TuneSettings

    project = Project.open(args.project)
    settings = TuneSettings(**declared(args, TuneSettings, skip=("train",)),
                            train=train_config_from_args(args, project))

    def run(progress: Any) -> Any:
        restore = _stop_on_signals(progress)
        try:
            return steps.tune(project, settings, progress=progress)
        finally:
            restore()
    # --json: exactly the documented document; the rest is in groups/GROUP/group.json
    return run_with_progress("tune", args.quiet, run)


def _stop_on_signals(progress: Any) -> Any:
    """Ctrl-C or SIGTERM during `loff tune` is Stop: the trial in progress is dropped (the next
    tune with the same settings runs it again), the best so far is retrained and saved; a
    second one aborts. (Without this, the interrupt would end one fold's training early and
    that fold would be scored as if complete.) Returns what restores the handlers."""
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum: int, frame: Any) -> None:
        if progress.stop_requested:
            raise KeyboardInterrupt
        progress.request_stop()
        print("loff tune: stopping: the trial in progress is dropped (the next tune resumes it), the best so far is "
              "retrained and saved; interrupt again to abort", file=sys.stderr, flush=True)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in previous.items()]



def _describe_tune(out: dict[str, Any]) -> str:
    search = out.get("search") or {}
    lines = [f"leaderboard (grouped cross-validation on train + val, mean +- SD; {out['folds']} folds"
             + (f", {search['pruned']} pruned after 1-2 folds" if search.get("pruned") else "")
             + (f", {search['resumed']} trials from the stopped tune resumed" if search.get("resumed") else "")
             + (", stopped early" if out.get("stopped") else "") + "):"]
    for i, e in enumerate(out["leaderboard"], 1):
        shown = ", ".join(f"{k}={v}" for k, v in e["config"].items() if v is not None)
        cv = "  ".join(f"{n} {v['mean']:.3f}" + (f"+-{v['sd']:.3f}" if v["sd"] is not None else "")
                       for n, v in e["cv"].items() if v["mean"] is not None)
        mark = f" [pruned after {len(e.get('best_epochs') or [])} folds]" if e.get("pruned") else ""
        lines.append(f"  {i:2d}. {shown}{mark}\n      {cv}")
    final = out.get("final") or {}
    kept = (f"the winner's {final.get('members')} fold heads, averaged," if final.get("model") == "fold-heads"
            else "winner retrained on train + val")
    lines.append(f"{kept} saved as run {out['run']}")
    if out.get("test"):
        lines.append(f"test split ({out['n_test']} images), evaluated once:")
        for name, v in out["test"].items():
            ci = (out.get("test_ci") or {}).get(name)
            lines.append(f"  {name:22s} {'n/a' if v is None else f'{v:.3f}'}"
                         + (f"  [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    lines += [out["decision"]] if out.get("decision") else []
    return "\n".join(lines)



def add_cv(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff cv PROJECT`."""
    from ..settings import CVSettings, TrainConfig, add_options

    p = sub.add_parser("cv", parents=[common], help="K-fold cross-validation over train + val, grouped by patient",
                       description="Train one head per fold over train + val (folds grouped by patient, stratified "
                                   "by label; the test split is never read) and report each metric of `evaluate` as "
                                   "mean, SD and per-fold values; saved as a group that `loff info` lists. " + METRICS_HELP)
    p.add_argument("project", type=Path)
    add_options(p, CVSettings)
    # None: TrainConfig's
    add_options(p, TrainConfig, names=["task", "epochs", "lr", "patience", "batch_size", "block"], defaults=False)
    add_options(p, TrainConfig, names=["seed", "device"])  # the seed of the folds and of training
    p.add_argument("--no-augment", action="store_true", help="train without tensor augmentations")
    p.set_defaults(func=cmd_cv, describe=_describe_cv)



def add_tune(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff tune PROJECT`."""
    from ..settings import TrainConfig, TuneSettings, add_options, field_info

    p = sub.add_parser("tune", parents=[common], help="find the best head by grouped cross-validation, test it once",
                       description="Search head configurations (the cache's block, head kind, learning rate, "
                                   "augmentation off / default / strong, length: --epochs or twice that) with "
                                   "Optuna's seeded TPE sampler, scored by patient-grouped cross-validation on train "
                                   "+ val after a logistic regression on the pooled embedding; a trial clearly behind "
                                   "after fold 1-2 is pruned. The study is kept in PROJECT/tune/, so a stopped or "
                                   "killed tune resumes when run again with the same settings. The winner's fold "
                                   "heads, averaged, are saved as a normal run (--final retrain: one head retrained "
                                   "on train + val) and evaluated once on test. "
                                   + METRICS_HELP)
    p.add_argument("project", type=Path)
    add_options(p, TuneSettings, names=["folds", "final"])
    trials, budget = field_info(TuneSettings, "trials"), field_info(TuneSettings, "budget")
    p.add_argument("--trials", type=_trials, default=None, help=trials.help.replace("%", "%%"))
    p.add_argument("--budget", type=_duration, default=None, metavar="DURATION",
                   help=budget.help.replace("%", "%%") + "; with no --trials, trials until it is spent")
    p.add_argument("--heads", type=_heads, default=None, metavar="KIND[,KIND]",
                   help=field_info(TuneSettings, "heads").help)
    # None: the project's task, TrainConfig's; --epochs / --patience: the search's base length
    add_options(p, TrainConfig, names=["task", "batch_size", "block", "epochs", "patience"], defaults=False)
    add_options(p, TrainConfig, names=["seed", "device"])
    p.set_defaults(func=cmd_tune, describe=_describe_tune)


def _trials(text: str) -> int:
    """--trials: a positive count; 0 is refused with what to do instead."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of trials") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: a search needs at least 1 trial (trial 1 is the default "
                                         "configuration); to score one configuration use `loff cv`, to limit the "
                                         "time use --budget")
    return value


def _duration(text: str) -> float:
    from ..progress import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _heads(text: str) -> tuple[str, ...]:
    from ..settings import HEAD_KINDS

    heads = tuple(h.strip() for h in text.split(",") if h.strip())
    unknown = [h for h in heads if h not in HEAD_KINDS]
    if unknown or not heads:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or text!r}: expected head kinds among "
                                         f"{', '.join(HEAD_KINDS)}, separated by commas")
    return heads

