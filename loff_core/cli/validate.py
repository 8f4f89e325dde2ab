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
    # --json: exactly the documented document; the rest is in groups/GROUP/group.json
    return run_with_progress("tune", args.quiet, lambda p: steps.tune(project, settings, progress=p))



def _describe_tune(out: dict[str, Any]) -> str:
    lines = ["leaderboard (grouped cross-validation on train + val, mean +- SD):"]
    for i, e in enumerate(out["leaderboard"], 1):
        shown = ", ".join(f"{k}={v}" for k, v in e["config"].items())
        cv = "  ".join(f"{n} {v['mean']:.3f}" + (f"+-{v['sd']:.3f}" if v["sd"] is not None else "")
                       for n, v in e["cv"].items() if v["mean"] is not None)
        lines.append(f"  {i:2d}. {shown}\n      {cv}")
    lines.append(f"winner retrained on train + val as run {out['run']}")
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
    from ..settings import TrainConfig, TuneSettings, add_options

    p = sub.add_parser("tune", parents=[common], help="find the best head by grouped cross-validation, test it once",
                       description="Score TRIALS head configurations (head kind, learning rate, epochs / patience, "
                                   "augmentation off / default / strong) plus a logistic regression on the pooled "
                                   "embedding by patient-grouped cross-validation on train + val; retrain the winner "
                                   "on train + val as a normal run and evaluate it once on test. " + METRICS_HELP)
    p.add_argument("project", type=Path)
    add_options(p, TuneSettings)
    # None: the project's task, TrainConfig's
    add_options(p, TrainConfig, names=["task", "batch_size", "block"], defaults=False)
    add_options(p, TrainConfig, names=["seed", "device"])
    p.set_defaults(func=cmd_tune, describe=_describe_tune)

