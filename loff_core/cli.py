"""The `loff` command: the whole engine from a terminal, headless.

Progress goes to stderr (a bar on long steps); with `--json` one JSON document goes to
stdout, else a short human summary. Exit status 0 on success; 1 with a one-line reason
for a problem the user can fix; 130 when interrupted (work already done is kept).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import LoffError, ProjectError, TrainingError, explain_file_error, one_line
from .progress import Cancelled, Progress


# -- progress on the terminal ------------------------------------------------------------
class TerminalProgress:
    """A tqdm bar on stderr fed by a `Progress`. When stderr is not a terminal (a log file,
    CI), no bar: one plain line at most every 10 seconds and at the end, so logs stay
    readable."""

    LOG_INTERVAL = 10.0

    def __init__(self, desc: str, quiet: bool = False):
        import time

        self.desc, self.quiet = desc, quiet
        self._bar = None
        self._tty = sys.stderr.isatty()
        self._clock = time.monotonic
        self._last_line = -1e9
        self._last: tuple[int, int, str] = (0, 0, "")
        self._printed: Optional[tuple[int, int, str]] = None  # the state the last plain line showed
        self.progress = Progress(on_report=self._on_report, on_notice=self._on_notice)

    def _on_notice(self, message: str) -> None:
        """A notice (e.g. extract's estimate from its first batch) is a line of its own, at once."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(f"{self.desc}: {message}", file=sys.stderr)
        else:
            print(f"{self.desc}: {message}", file=sys.stderr, flush=True)

    def _on_report(self, done: int, total: int, message: str) -> None:
        if self.quiet:
            return
        self._last = (done, total, message)
        if not self._tty:
            now = self._clock()
            if now - self._last_line >= self.LOG_INTERVAL:
                self._last_line = now
                self._print_line()
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total or None, desc=self.desc, file=sys.stderr, leave=True,
                             dynamic_ncols=True, mininterval=0.5)
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def _print_line(self) -> None:
        done, total, message = self._printed = self._last
        count = f"{done}/{total}" if total else str(done)
        print(f"{self.desc}: {count} {message}".rstrip(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self.quiet and not self._tty and self._last not in ((0, 0, ""), self._printed):
            self._print_line()  # the last state, unless the line before already showed it


def _run_with_progress(desc: str, quiet: bool, fn: Callable[[Progress], Any]) -> Any:
    terminal = TerminalProgress(desc, quiet)
    try:
        return fn(terminal.progress)
    except KeyboardInterrupt:
        terminal.progress.cancel()
        raise
    finally:
        terminal.close()


# -- commands ----------------------------------------------------------------------------
def cmd_import(args: argparse.Namespace) -> Any:
    from . import steps  # every command runs a step (loff_core/steps.py), as the app does
    from .project import Project

    if not args.images_dir.is_dir():  # before a project is created for nothing
        raise ProjectError(f"{args.images_dir}: not a folder")
    project = Project.open_or_create(args.project)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    return _run_with_progress("import", args.quiet, lambda p: steps.import_images(
        project, args.images_dir, labels_csv=_labels_args(args.labels), label_column=args.label_column,
        file_column=args.file_column, patient_column=args.patient_column, classes=classes,
        task=args.task, split_column=args.split_column, patient_from_name=args.patient_from_name,
        on_patient_overlap=args.on_patient_overlap, progress=p))


def _labels_args(values: Optional[list[str]]) -> Optional[list[tuple[Optional[str], Path]]]:
    """`--labels FILE` or `--labels SPLIT=FILE` (repeatable) -> [(split or None, path)]."""
    from .catalog import split_name

    if not values:
        return None
    out: list[tuple[Optional[str], Path]] = []
    for value in values:
        head, sep, tail = value.partition("=")
        if sep and split_name(head) is not None and not Path(value).exists():
            out.append((split_name(head), Path(tail)))
        else:
            out.append((None, Path(value)))
    return out


def describe_split_source(source: Optional[dict[str, Any]]) -> list[str]:
    """How an import split the images and found the patients, as lines for a person."""
    if not source:
        return []
    lines = [f"split: {source.get('from') or source.get('kind')}"
             + ("; val carved from train by patient" if source.get("val_carved") else "")]
    overlap = source.get("patient_overlap")
    if overlap:
        lines.append(f"patients on two sides of the given split: {overlap['patients']} ({overlap['images']} images), "
                     f"{'kept as given' if overlap['action'] == 'keep' else 're-split by patient'}")
    if source.get("patients_from"):
        lines.append("patients from: " + ", ".join(f"{k} ({v} images)" for k, v in source["patients_from"].items()))
    return lines


def _describe_import(out: dict[str, Any]) -> str:
    lines = [f"imported {out['imported']} images ({out['labelled']} labelled) into {out['project']}",
             "classes: " + (", ".join(f"{c} ({n})" for c, n in out["per_class"].items()) or "none"),
             "split: " + ", ".join(f"{k} {v}" for k, v in sorted(out["splits"].items()))]
    lines += describe_split_source(out.get("split_source"))
    if out["failed"]:
        lines.append(f"{len(out['failed'])} files could not be read:")
        lines += [f"  {f['path']}: {f['reason']}" for f in out["failed"][:50]]
        if len(out["failed"]) > 50:
            lines.append(f"  ... and {len(out['failed']) - 50} more (see import-report.json)")
    lines += [f"warning: {w}" for w in out["warnings"][:20]]
    return "\n".join(lines)


def backbone_spec_from_args(args: argparse.Namespace) -> Any:
    from .backbones import BackboneSpec, default_backbone_name
    from .settings import ExtractSettings

    name = args.backbone or default_backbone_name(args.device)
    return BackboneSpec(name=name, weights=args.weights, random_init=args.random_init, seed=args.weights_seed,
                        image_size=args.image_size, grid=args.grid, layers=args.layers or ExtractSettings.layers)


def cmd_extract(args: argparse.Namespace) -> Any:
    from . import steps  # every command runs a step (loff_core/steps.py), as the app does
    from .cache import distributed_rank_world
    from .project import Project
    from .settings import ExtractSettings

    project = Project.open(args.project)
    spec = backbone_spec_from_args(args)
    rank, _ = distributed_rank_world()  # under torchrun: N processes, one cache; rank 0 reports
    settings = ExtractSettings(device=args.device, batch_size=args.batch_size, workers=args.workers,
                               engine=args.engine)
    result = _run_with_progress("extract", args.quiet or rank != 0,
                                lambda p: steps.extract(project, spec, settings, progress=p))
    if rank == 0:
        _print_notes("extract", result.notes)
    return result


def _describe_extract(out: dict[str, Any]) -> str:
    if "rank" in out:  # a torchrun rank other than 0: rank 0 prints the summary
        return f"rank {out['rank']} of {out['world_size']}: extracted {out['extracted']} images"
    b = out["backbone"]
    h, w = b.get("grid_hw", ("?", "?"))
    state = "stopped early (run extract again to resume)" if out["stopped"] else "complete"
    lines = [f"cache {out['cache']} ({state}): {out['images']} images, backbone {b.get('name')} at "
             f"{b.get('image_size')} px, {h} x {w} tokens of {b.get('feature_dim')}, "
             f"{out['bytes_per_image'] / 1024:.0f} KiB per image",
             f"extracted {out['extracted']}, reused {out['skipped']}, failed {len(out['failed'])} "
             f"in {out['seconds']:.1f} s"]
    if b.get("blocks"):  # several blocks from one forward pass; training uses the first unless --block
        lines.insert(1, "blocks: " + ", ".join(f"{e['layers']} ({e['grid_hw'][0]} x {e['grid_hw'][1]} x "
                                               f"{e['feature_dim']})" for e in b["blocks"])
                     + f"; train, cv and tune use {b['blocks'][0]['layers']} unless --block says another")
    lines += [f"  {f['path']}: {f['reason']}" for f in out["failed"][:20]]
    if len(out["failed"]) > 20:
        lines.append(f"  ... and {len(out['failed']) - 20} more")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> Any:
    from . import steps  # every command runs a step (loff_core/steps.py), as the app does
    from dataclasses import fields

    from .project import Project
    from .settings import AugmentConfig, TrainConfig

    project = Project.open(args.project)
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    given.setdefault("task", project.settings.task)
    given["augment"] = AugmentConfig.off() if args.no_augment else _augment_from_args(args.augment, AugmentConfig())
    config = TrainConfig(**given)
    result = _run_with_progress("train", args.quiet, lambda p: steps.train(project, config, progress=p))
    _print_notes("train", result.notes)
    return result


def _describe_train(out: dict[str, Any]) -> str:
    why = {"completed": "all epochs", "early_stopping": "early stopping", "user_stop": "stopped by the user"}
    score = "n/a" if out["best_score"] is None else f"{out['best_score']:.3f}"
    return "\n".join([
        f"run {out['run']}: {out['head']} head, {out['task']} ({', '.join(out['classes'])})",
        f"best {out['monitor']} {score} at epoch {out['best_epoch']} of {out['epochs']} "
        f"({why.get(out['stopped'], out['stopped'])}); {out['n_train']} train / {out['n_val']} val images"])


def _augment_help() -> dict[str, tuple[str, str]]:
    """The tensor augmentations as `loff train --help` shows them: name -> (default, help),
    from their one declaration (loff_core.settings.AugmentConfig)."""
    from .settings import AugmentConfig, all_fields

    return {f.name: (",".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default), f.help)
            for f in all_fields(AugmentConfig) if f.option is not None}


AUGMENT_HELP = _augment_help()


def _augment_from_args(pairs: Optional[list[str]], base: Any) -> Any:
    from dataclasses import replace

    from .settings import AugmentConfig, field_info

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


def _print_notes(command: str, notes: list[str]) -> None:
    """What a step did differently (e.g. a smaller batch after a GPU out-of-memory): on
    stderr even with --quiet, since it can change results and speed."""
    for note in notes:
        print(f"loff {command}: note: {note}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> Any:
    from . import steps  # every command runs a step (loff_core/steps.py), as the app does
    from .project import Project
    from .settings import EvaluateSettings

    project = Project.open(args.project)  # the step takes the reader lock: never waits for a training
    return _run_with_progress("evaluate", args.quiet, lambda p: steps.evaluate(
        project, args.run, args.split, EvaluateSettings(bootstrap=args.bootstrap), progress=p))


def _describe_evaluate(out: dict[str, Any]) -> str:
    lines = [f"run {out['run']} on the {out['split']} split ({out['n']} images)", *_metric_lines(out)]
    lines += [f"warning: stale head: {s}" for s in out.get("stale", [])]
    return "\n".join(lines)


def _metric_lines(out: dict[str, Any]) -> list[str]:
    lines = []
    for name, value in out["metrics"].items():
        ci = out.get("ci", {}).get(name)
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(f"  {name:22s} {shown}" + (f"  [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    lines.append("confusion matrix (rows true, columns predicted): " + " ".join(out["classes"]))
    lines += ["  " + " ".join(f"{v:4d}" for v in row) for row in out["confusion_matrix"]]
    from .calibration import describe

    lines.append(f"decision: {describe(out.get('operating_point'))}")
    pc = out.get("per_class_auc") or {}
    if pc and len(out["classes"]) > 2:
        lines.append("per-class AUC (one vs rest): " + ", ".join(
            f"{c} {v['auc']:.3f}" + (f" [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" if v.get("ci") else "")
            for c, v in pc.items() if v.get("auc") is not None))
    lines += [f"warning: {w}" for w in out.get("warnings", [])]
    return lines


def cmd_export(args: argparse.Namespace) -> Any:
    from . import steps  # every command runs a step (loff_core/steps.py), as the app does
    from .project import Project

    project = Project.open(args.project)  # the step takes the reader lock, also while it writes eval-*.json
    return _run_with_progress("export", args.quiet, lambda p: steps.export(
        project, args.out_dir, run_id=args.run, onnx=args.onnx, progress=p))


def _describe_export(out: dict[str, Any]) -> str:
    lines = [f"exported run {out['run']} to {out['out_dir']}"]
    lines += [f"  {kind:5s} {path}" for kind, path in out["files"].items()]
    if out.get("onnx") and "max_abs_diff_vs_torch" in out["onnx"]:
        lines.append(f"  ONNX checked against torch: max difference {out['onnx']['max_abs_diff_vs_torch']:.2e}")
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> Any:
    from . import steps  # every command runs a step (loff_core/steps.py), as the app does
    from .settings import EvaluateSettings

    result = _run_with_progress("predict", args.quiet, lambda p: steps.predict(
        args.head_dir, args.files, run_id=args.run, labels=args.labels, label_column=args.label_column,
        file_column=args.file_column, settings=EvaluateSettings(bootstrap=args.bootstrap), weights=args.weights,
        random_init=True if args.random_init else None, device=args.device, batch_size=args.batch_size,
        progress=p))
    if args.csv:
        from .predictions import write_predictions_csv

        write_predictions_csv(Path(args.csv), result.to_json(), with_failed=False)
    return result


def _describe_predict(out: dict[str, Any]) -> str:
    classes = out["classes"]
    lines = [f"{len(out['predictions'])} predictions ({out['task']}; classes {', '.join(classes)})"]
    for row in out["predictions"]:
        p = row["probabilities"][classes.index(row["predicted"])] if row["predicted"] in classes else None
        lines.append(f"  {row['path']}: {row['predicted']}" + (f"  (P {p:.2f})" if p is not None else ""))
    lines += [f"  failed {f['path']}: {f['reason']}" for f in out.get("failed", [])]
    if out.get("labelled"):
        lines.append(f"metrics on the {out['labelled']} labelled files:")
        lines += _metric_lines(out)
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from .demo import create_demo_project

    project = _run_with_progress("demo", args.quiet, lambda p: create_demo_project(
        args.project, n_patients=args.patients, progress=p))
    summary = project.import_summary()
    return {"project": str(project.root), "imported": summary.imported, "classes": summary.classes,
            "task": project.settings.task, "synthetic": True, "splits": summary.splits}


def _train_config_from_args(args: argparse.Namespace, task: str) -> Any:
    from dataclasses import replace

    from .augment import AugmentConfig
    from .training import TrainConfig

    defaults = TrainConfig(head=args.head, task=task)
    return replace(
        defaults, seed=args.seed, device=args.device,
        epochs=args.epochs if args.epochs is not None else defaults.epochs,
        lr=args.lr if args.lr is not None else defaults.lr,
        patience=args.patience if args.patience is not None else defaults.patience,
        augment=AugmentConfig.off() if args.no_augment else defaults.augment, block=args.block)


def cmd_cv(args: argparse.Namespace) -> dict[str, Any]:
    from . import steps  # every command runs a step (loff_core/steps.py), as the app does
    from .project import Project
    from .validation import LOGREG

    project = Project.open(args.project)
    task = args.task or project.settings.task
    config = LOGREG if args.head == "logreg" else _train_config_from_args(args, task)
    if config == LOGREG and task != "classification":
        raise TrainingError("--head logreg (logistic regression on the pooled embedding) is for classification tasks")
    # --json: exactly the documented document; the rest is in groups/GROUP/group.json
    return _run_with_progress("cv", args.quiet, lambda p: steps.cross_validate(
        project, config, folds=args.folds, seed=args.seed, block=args.block, progress=p))


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
    from . import steps  # every command runs a step (loff_core/steps.py), as the app does
    from .project import Project
    from .settings import TuneSettings

    project = Project.open(args.project)
    # --json: exactly the documented document; the rest is in groups/GROUP/group.json
    return _run_with_progress("tune", args.quiet, lambda p: steps.tune(
        project, TuneSettings(trials=args.trials, folds=args.folds, block=args.block), seed=args.seed, task=args.task,
        device=args.device, progress=p))


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
    return "\n".join(lines)


def cmd_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    from .calibration import calibrate_run, describe
    from .project import Project

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


def _describe_demo(out: dict[str, Any]) -> str:
    return (f"demo project {out['project']} (SYNTHETIC): {out['imported']} images, {out['task']} classes "
            f"{', '.join(out['classes'])}; split " + ", ".join(f"{k} {v}" for k, v in sorted(out["splits"].items())))


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    from .project import Project

    project = Project.open(args.project)
    with project.read_lock():  # a consistent view (never a half-moved import); never waits for a training
        return _info(project)


def _info(project: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"project": str(project.root), "name": project.settings.name,
                           "task": project.settings.task, "classes": project.settings.classes,
                           "synthetic": project.settings.synthetic}
    if project.has_catalog():
        s = project.import_summary()
        out |= {"images": s.imported, "labelled": s.labelled, "splits": s.splits, "failed": len(s.failures),
                "split_source": project.settings.split_source}
    out["caches"] = [str(p.relative_to(project.root)) for p in project.cache_paths()]
    out["active_cache"] = project.settings.active_cache
    out["runs"] = [{"run": r.run_id, "head": r.record["head_config"]["kind"], "task": r.record["task"],
                    "best_score": r.record.get("best_score"), "monitor": r.record.get("monitor"),
                    "stale": project.stale_reasons(r)} for r in project.runs()]
    from .validation import list_groups

    out["groups"] = list_groups(project)
    # a damaged run folder is named, never breaks the listing of the others
    out["broken_runs"] = [{"run": name, "reason": reason} for name, reason in project.broken_runs()]
    return out


def _describe_info(out: dict[str, Any]) -> str:
    lines = [f"project {out['project']}: {out['name']}" + (" (SYNTHETIC)" if out.get("synthetic") else ""),
             f"task {out['task']}; classes {', '.join(out['classes'] or []) or 'none yet'}"]
    if "images" in out:
        lines.append(f"{out['images']} images ({out['labelled']} labelled, {out['failed']} unreadable); split "
                     + ", ".join(f"{k} {v}" for k, v in sorted(out["splits"].items())))
    lines += describe_split_source(out.get("split_source"))
    for cache in out["caches"]:
        active = " (active)" if out["active_cache"] and Path(cache).stem == out["active_cache"] else ""
        lines.append(f"cache {cache}{active}")
    for r in out["runs"]:
        score = "n/a" if r["best_score"] is None else f"{r['best_score']:.3f}"
        stale = f"  STALE: {'; '.join(r['stale'])}" if r["stale"] else ""
        lines.append(f"run {r['run']}: {r['head']} {r['task']}, best {r['monitor']} {score}{stale}")
    if not out["runs"]:
        lines.append("no runs yet")
    for g in out.get("groups", []):
        shown = ", ".join(f"{k} {v['mean']:.3f}" + (f" ± {v['sd']:.3f}" if v.get("sd") is not None else "")
                          for k, v in g.items() if isinstance(v, dict) and v.get("mean") is not None)
        lines.append(f"{g['kind']} group {g['group']}: {g.get('completed') or g.get('folds')} folds; {shown}"
                     + (f"; winner run {g['run']}" if g.get("run") else ""))
    return "\n".join(lines)


# -- parser ------------------------------------------------------------------------------
#: what each metric name of `evaluate` / `cv` / `tune` means (shown in --help and docs/cli.md)
METRICS_HELP = ("Metrics: accuracy (share right); balanced_accuracy (mean recall over classes); auc (ROC AUC; "
                "macro one-vs-rest over classes); ordinal tasks also: kendall_tau (Kendall's tau-b between true and "
                "predicted levels), kendall_tau_score (tau-b between true level and the expected level, a "
                "continuous score: no ties from rounding), amae (mean absolute error per true level, averaged), "
                "mae, accuracy_within_1 (predicted level at most one off).")

def _at_least(low: float, kind: type = int) -> Any:
    """argparse type: a number >= low (a clear usage error instead of a traceback later)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < low or (kind is float and value != value):
            raise argparse.ArgumentTypeError(f"{text} is too small (at least {low})")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    from .settings import TASKS, CVSettings, EvaluateSettings, ExtractSettings, TrainConfig, TuneSettings, add_options

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    common.add_argument("--quiet", action="store_true", help="no progress bar")

    parser = argparse.ArgumentParser(
        prog="loff", description="LOFF Studio engine: import medical images, cache frozen-backbone features, "
                                 "train a compact head with tensor augmentations, evaluate, export, predict.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import", parents=[common], help="scan an image folder (in place) into a project")
    p.add_argument("project", type=Path)
    p.add_argument("images_dir", type=Path)
    p.add_argument("--labels", action="append", metavar="[SPLIT=]CSV",
                   help="CSV with a file column and a label column (delimiter detected: , ; or tab). Repeatable; "
                        "SPLIT=CSV says the CSV's images are that split, e.g. --labels train=CSAW-M_train.csv "
                        "--labels test=CSAW-M_test.csv")
    p.add_argument("--label-column")
    p.add_argument("--file-column")
    p.add_argument("--patient-column", help="default: a column named patient_id, patient, subject, woman, ...")
    p.add_argument("--split-column", help="take the split from this CSV column (train / val / test, any case; "
                                          "validation accepted); a split without val gets one carved from train")
    p.add_argument("--patient-from-name", metavar="REGEX",
                   help="the patient from the file name: a regular expression with one capture group, e.g. "
                        "'^(\\d+)_' for NIH ChestX-ray14's PATIENT_FOLLOWUP.png")
    p.add_argument("--on-patient-overlap", choices=["keep", "resplit"],
                   help="when the given split puts a patient on two sides: keep it as given, or re-split by "
                        "patient (default: stop and report the counts)")
    p.add_argument("--classes", help="comma-separated class order (low to high for ordinal labels), e.g. F,G,D")
    p.add_argument("--task", choices=list(TASKS), help="the project's default task: "
                   + "; ".join(f"{k}: {v}" for k, v in TASKS.items()))
    p.set_defaults(func=cmd_import, describe=_describe_import)

    p = sub.add_parser("extract", parents=[common], help="run the frozen backbone once per image into the HDF5 cache")
    p.add_argument("project", type=Path)
    p.add_argument("--backbone", help="a name from `loff weights list`, an added backbone or a timm model name "
                                      "(default: the best DINOv2 present on a GPU, else the best shipped "
                                      "EfficientNet-Lite; see `loff weights list`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", help="local weights file (.safetensors or .pth, loaded without running code)")
    g.add_argument("--random-init", action="store_true", help="seeded random weights (tests, speed checks)")
    p.add_argument("--weights-seed", type=int, default=0, help="seed of --random-init weights")
    add_options(p, ExtractSettings)
    p.set_defaults(func=cmd_extract, describe=_describe_extract)

    p = sub.add_parser("train", parents=[common], help="train a compact head on the cached features")
    p.add_argument("project", type=Path)
    add_options(p, TrainConfig, names=["task"], defaults=False)  # default: the project's task
    add_options(p, TrainConfig, names=["head", "epochs", "seed", "lr", "batch_size", "patience", "device", "block"])
    p.add_argument("--no-augment", action="store_true", help="train without tensor augmentations")
    p.add_argument("--augment", action="append", metavar="NAME=VALUE",
                   help="change one tensor augmentation (repeatable); defaults: "
                        + "; ".join(f"{k}={v} ({d})" for k, (v, d) in AUGMENT_HELP.items()) + ". 0 turns one off")
    p.set_defaults(func=cmd_train, describe=_describe_train)

    p = sub.add_parser("cv", parents=[common], help="K-fold cross-validation over train + val, grouped by patient",
                       description="Train one head per fold over train + val (folds grouped by patient, stratified "
                                   "by label; the test split is never read) and report each metric of `evaluate` as "
                                   "mean, SD and per-fold values; saved as a group that `loff info` lists. " + METRICS_HELP)
    p.add_argument("project", type=Path)
    add_options(p, CVSettings)
    # None: TrainConfig's
    add_options(p, TrainConfig, names=["task", "epochs", "lr", "patience", "block"], defaults=False)
    add_options(p, TrainConfig, names=["seed", "device"])  # the seed of the folds and of training
    p.add_argument("--no-augment", action="store_true", help="train without tensor augmentations")
    p.set_defaults(func=cmd_cv, describe=_describe_cv)

    p = sub.add_parser("tune", parents=[common], help="find the best head by grouped cross-validation, test it once",
                       description="Score TRIALS head configurations (head kind, learning rate, epochs / patience, "
                                   "augmentation off / default / strong) plus a logistic regression on the pooled "
                                   "embedding by patient-grouped cross-validation on train + val; retrain the winner "
                                   "on train + val as a normal run and evaluate it once on test. " + METRICS_HELP)
    p.add_argument("project", type=Path)
    add_options(p, TuneSettings)
    add_options(p, TrainConfig, names=["task"], defaults=False)  # default: the project's task
    add_options(p, TrainConfig, names=["seed", "device"])
    p.set_defaults(func=cmd_tune, describe=_describe_tune)

    p = sub.add_parser("evaluate", parents=[common], help="metrics and per-image predictions of a run",
                       description=METRICS_HELP)
    p.add_argument("project", type=Path)
    p.add_argument("--run", help="run id (default: the latest)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    add_options(p, EvaluateSettings)
    p.set_defaults(func=cmd_evaluate, describe=_describe_evaluate)

    p = sub.add_parser("calibrate", parents=[common], help="fit a run's operating point: temperature, prevalence, "
                                                           "binary threshold",
                       description="Temperature scaling fitted on the validation split (tune winners: on the "
                                   "cross-validation's out-of-fold predictions), an optional prevalence correction "
                                   "(Bayes' prior shift) and, for binary tasks, the decision threshold by a criterion. "
                                   "Saved in run.json; evaluate, predict (via the exported card) and the viewer use it. "
                                   "`loff train` already fits the default (Youden's J).")
    p.add_argument("project", type=Path)
    p.add_argument("--run", help="run id (default: the latest)")
    p.add_argument("--criterion", choices=["youden", "sensitivity", "specificity"], default="youden",
                   help="youden (default): best balanced accuracy on validation; sensitivity / specificity: reach "
                        "--target on validation")
    p.add_argument("--target", type=float, help="the sensitivity or specificity to reach, e.g. 0.9")
    p.add_argument("--threshold", type=float, help="set the threshold by hand (probability of the second class)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prevalence", help="class shares expected where the model is used, in class order, e.g. 0.3,0.7")
    g.add_argument("--prevalence-from-test", action="store_true",
                   help="take the prevalence from the test split's labels (you say the test split is like the use)")
    p.set_defaults(func=cmd_calibrate, describe=_describe_calibrate)

    p = sub.add_parser("export", parents=[common], help="write head.safetensors + card.json (+ model.onnx)")
    p.add_argument("project", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--run")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (backbone + head), checked against torch")
    p.set_defaults(func=cmd_export, describe=_describe_export)

    p = sub.add_parser("predict", parents=[common], help="predict new images with an exported head or a project's run")
    p.add_argument("head_dir", type=Path, metavar="HEAD_DIR_OR_PROJECT",
                   help="an exported head folder, or a project folder (its latest run, or --run ID)")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--run", help="with a project folder: the run to predict with (default: the latest)")
    p.add_argument("--labels", type=Path, help="labels CSV for the files: metrics are reported as by evaluate "
                                               "(without it, class sub-folders of a given folder are the labels)")
    p.add_argument("--label-column", default="label", help="label column of --labels (default: label)")
    p.add_argument("--file-column", help="file column of --labels (default: file, filename, path or image)")
    add_options(p, EvaluateSettings)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights")
    g.add_argument("--random-init", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_at_least(1), default=8)
    p.add_argument("--csv", type=Path, help="also save the predictions as CSV")
    p.set_defaults(func=cmd_predict, describe=_describe_predict)

    p = sub.add_parser("demo", parents=[common], help="write a small synthetic demo project (no download)")
    p.add_argument("project", type=Path)
    p.add_argument("--patients", type=_at_least(2), default=60)
    p.set_defaults(func=cmd_demo, describe=_describe_demo)

    p = sub.add_parser("info", parents=[common], help="what a project holds: images, caches, runs")
    p.add_argument("project", type=Path)
    p.set_defaults(func=cmd_info, describe=_describe_info)

    from .cli_weights import register as register_weights  # `loff weights ...` (issue 12)

    register_weights(sub, common)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def file_error_reason(exc: BaseException, where: Optional[Path] = None) -> Optional[str]:
    """A one-line reason for a file-system error ("cannot write FILE: Read-only file
    system"), None when `exc` is no such error (`loff_core.errors.explain_file_error`)."""
    error = explain_file_error(exc, where)
    return None if error is None else str(error)


_one_line = one_line


def _written_location(args: argparse.Namespace) -> Optional[Path]:
    """Where a command writes: what a file-system error that names no file is about."""
    if args.command == "export":
        return args.out_dir
    if args.command == "predict":
        return args.csv
    return getattr(args, "project", None)


def _terminate_as_interrupt() -> Any:
    """SIGTERM (a scheduler's or `kill`'s stop) ends a command like Ctrl-C: temporary files
    removed, work already finished kept, exit 130. Returns the previous handler (None when
    not in the main thread or the platform has no SIGTERM)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, interrupt)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    previous = _terminate_as_interrupt()
    try:
        return _main(args)
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    try:
        out = args.func(args)
        if hasattr(out, "to_json"):  # a step's typed record (loff_core.results)
            out = out.to_json() if args.json else out.to_dict()
    except LoffError as exc:
        print(f"loff {args.command}: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - only file-system errors are turned into a reason
        reason = file_error_reason(exc, _written_location(args))
        if reason is None:
            raise
        print(f"loff {args.command}: {reason}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Cancelled):
        print(f"loff {args.command}: interrupted; work already finished is kept", file=sys.stderr)
        return 130
    if args.json:  # always valid JSON: an undefined metric (NaN) is null
        from .trust import finite_json

        json.dump(finite_json(json.loads(json.dumps(out, default=str))), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        describe = getattr(args, "describe", None)  # every command has one (tests/test_cli_args.py)
        text = describe(out) if describe else json.dumps(out, indent=2, default=str)
        # a non-UTF-8 file name (held as surrogates) is shown with U+FFFD, never a crash
        print(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
