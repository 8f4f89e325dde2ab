"""`loff train`, `loff evaluate`, `loff calibrate`: a head on the cached features, its metrics, its operating point."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from ..errors import TrainingError
from .terminal import METRICS_HELP, declared, metric_lines, print_notes, run_with_progress

def cmd_train(args: argparse.Namespace) -> Any:
    from .. import steps  # every command runs a step (loff_core/steps.py), as the app does
    from ..project import Project

    project = Project.open(args.project)
    config = train_config_from_args(args, project)
    result = run_with_progress("train", args.quiet, lambda p: steps.train(project, config, progress=p))
    print_notes("train", result.notes)
    return result



def train_config_from_args(args: argparse.Namespace, project: Any, skip: tuple[str, ...] = ()) -> Any:
    """The one place `loff` builds a TrainConfig (train, cv, tune): the declared training
    options the command has (left out or None: TrainConfig's default; the task: the
    project's), the augmentations from --no-augment / --augment; checked as it is built."""
    from ..settings import AugmentConfig, TrainConfig

    given = declared(args, TrainConfig, skip=("augment", *skip))
    given.setdefault("task", project.settings.task)
    augment = (AugmentConfig.off() if getattr(args, "no_augment", False)
               else _augment_from_args(getattr(args, "augment", None), AugmentConfig()))
    return TrainConfig(**given, augment=augment)


def _describe_train(out: dict[str, Any]) -> str:
    why = {"completed": "all epochs", "early_stopping": "early stopping", "user_stop": "stopped by the user"}
    score = "n/a" if out["best_score"] is None else f"{out['best_score']:.3f}"
    return "\n".join([
        f"run {out['run']}: {out['head']} head, {out['task']} ({', '.join(out['classes'])})",
        f"best {out['monitor']} {score} at epoch {out['best_epoch']} of {out['epochs']} "
        f"({why.get(out['stopped'], out['stopped'])}); {out['n_train']} train / {out['n_val']} val images",
        *([out["decision"]] if out.get("decision") else [])])



def _augment_help() -> dict[str, tuple[str, str]]:
    """The tensor augmentations as `loff train --help` shows them: name -> (default, help),
    from their one declaration (loff_core.settings.AugmentConfig)."""
    from ..settings import AugmentConfig, all_fields

    return {f.name: (",".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default), f.help)
            for f in all_fields(AugmentConfig) if f.option is not None}


AUGMENT_HELP = _augment_help()


def _augment_from_args(pairs: Optional[list[str]], base: Any) -> Any:
    from dataclasses import replace

    from ..settings import AugmentConfig, field_info

    changes: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in AUGMENT_HELP:
            raise TrainingError(f"--augment {pair}: expected NAME=VALUE with NAME one of {', '.join(AUGMENT_HELP)}")
        info = field_info(AugmentConfig, key)
        try:
            numbers = tuple(info.check(v) for v in value.split(","))
        except ValueError as exc:
            raise TrainingError(f"--augment {pair}: {exc}") from None
        if isinstance(info.default, tuple):
            if len(numbers) != 2 or numbers[0] > numbers[1]:
                raise TrainingError(f"--augment {pair}: expected two numbers LOW,HIGH with 0 < LOW <= HIGH <= 1")
            changes[key] = numbers
        elif len(numbers) != 1:
            raise TrainingError(f"--augment {pair}: expected one number")
        else:
            changes[key] = numbers[0]
    return replace(base, **changes) if changes else base



def cmd_evaluate(args: argparse.Namespace) -> Any:
    from .. import steps  # every command runs a step (loff_core/steps.py), as the app does
    from ..project import Project
    from ..settings import EvaluateSettings

    project = Project.open(args.project)  # the step takes the reader lock: never waits for a training
    return run_with_progress("evaluate", args.quiet, lambda p: steps.evaluate(
        project, args.run, args.split, EvaluateSettings(bootstrap=args.bootstrap), progress=p))



def _describe_evaluate(out: dict[str, Any]) -> str:
    lines = [f"run {out['run']} on the {out['split']} split ({out['n']} images)", *metric_lines(out)]
    lines += [f"warning: stale head: {s}" for s in out.get("stale", [])]
    return "\n".join(lines)



def cmd_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    from ..calibration import calibrate_run, describe
    from ..project import Project

    project = Project.open(args.project)
    prevalence = None
    if args.prevalence:
        try:
            prevalence = [float(v) for v in args.prevalence.split(",")]
        except ValueError:
            raise TrainingError(f"--prevalence {args.prevalence}: expected numbers separated by commas") from None
    with project.lock():
        op = calibrate_run(project, args.run, criterion=args.criterion, target=args.target, threshold=args.threshold,
                           prevalence=prevalence, prevalence_from_test=args.prevalence_from_test)
    return {"run": project.run(args.run).run_id, "operating_point": op, "summary": describe(op)}



def _describe_calibrate(out: dict[str, Any]) -> str:
    op = out["operating_point"]
    lines = [f"run {out['run']}: operating point saved (fitted on {op['fitted_on']})", f"  {out['summary']}"]
    thr = op.get("threshold")
    if thr and thr.get("sensitivity") is not None:
        lines.append(f"  there: sensitivity {thr['sensitivity']:.3f}, specificity {thr['specificity']:.3f}")
    return "\n".join(lines)



def add_train(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff train PROJECT`."""
    from ..settings import TrainConfig, add_options

    p = sub.add_parser("train", parents=[common], help="train a compact head on the cached features")
    p.add_argument("project", type=Path)
    add_options(p, TrainConfig, names=["task"], defaults=False)  # default: the project's task
    add_options(p, TrainConfig, names=["head", "epochs", "seed", "lr", "batch_size", "patience", "device", "block"])
    p.add_argument("--no-augment", action="store_true", help="train without tensor augmentations")
    p.add_argument("--augment", action="append", metavar="NAME=VALUE",
                   help="change one tensor augmentation (repeatable); defaults: "
                        + "; ".join(f"{k}={v} ({d})" for k, (v, d) in AUGMENT_HELP.items()) + ". 0 turns one off")
    p.set_defaults(func=cmd_train, describe=_describe_train)



def add_evaluate(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff evaluate PROJECT`."""
    from ..settings import EvaluateSettings, add_options

    p = sub.add_parser("evaluate", parents=[common], help="metrics and per-image predictions of a run",
                       description=METRICS_HELP)
    p.add_argument("project", type=Path)
    p.add_argument("--run", help="run id (default: the latest)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    add_options(p, EvaluateSettings)
    p.set_defaults(func=cmd_evaluate, describe=_describe_evaluate)



def add_calibrate(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff calibrate PROJECT`."""
    from ..calibration import FITTED
    from ..settings import DECISION_RULES, DEFAULT_DECISION, DEFAULT_DECISION_WHY

    p = sub.add_parser("calibrate", parents=[common], help="fit a run's operating point: temperature, prevalence, "
                                                           "binary threshold",
                       description="Temperature scaling fitted on the validation split (tune winners: on the "
                                   "cross-validation's out-of-fold predictions), an optional prevalence correction "
                                   "(Bayes' prior shift) and, for binary tasks, the decision threshold by a criterion. "
                                   "Saved in run.json; evaluate, predict (via the exported card) and the viewer use it. "
                                   "`loff train` already fits the default rule (" + DEFAULT_DECISION + ").")
    p.add_argument("project", type=Path)
    p.add_argument("--run", help="run id (default: the latest)")
    p.add_argument("--criterion", choices=list(FITTED), default=None,
                   help=f"binary runs: {'; '.join(f'{k}: {v}' for k, v in DECISION_RULES.items())}; sensitivity / "
                        f"specificity: reach --target on validation (default: {DEFAULT_DECISION}, "
                        f"{DEFAULT_DECISION_WHY})")
    p.add_argument("--target", type=float, help="the sensitivity or specificity to reach, e.g. 0.9")
    p.add_argument("--threshold", type=float, help="set the threshold by hand (probability of the second class)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prevalence", help="class shares expected where the model is used, in class order, e.g. 0.3,0.7 "
                                        "(finite, above 0). It moves the probabilities (Bayes' prior shift); for a "
                                        "binary run whose threshold is refitted by youden, sensitivity or specificity "
                                        "the decisions stay the same (the threshold moves with them); with argmax, "
                                        "--threshold or more than two classes it changes decisions. The summary says how many changed")
    g.add_argument("--prevalence-from-test", action="store_true",
                   help="take the prevalence from the test split's labels (you say the test split is like the use); "
                        "does to the decision what --prevalence does, and marks the operating point as using test "
                        "labels (run.json, card, Results page, summary): its test metrics are then not independent")
    p.set_defaults(func=cmd_calibrate, describe=_describe_calibrate)

