"""`loff import`, `loff info`, `loff demo`: a project's images, what it holds, the demo project."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from ..errors import ProjectError
from .terminal import at_least, declared, run_with_progress

def cmd_import(args: argparse.Namespace) -> Any:
    from .. import steps  # every command runs a step (loff_core/steps.py), as the app does
    from ..project import Project
    from ..settings import ImportSettings

    if not args.images_dir.is_dir():  # before a project is created for nothing
        raise ProjectError(f"{args.images_dir}: not a folder")
    made_folder, made_project = not args.project.exists(), not (args.project / "loff-project.json").exists()
    project = Project.open_or_create(args.project)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    settings = ImportSettings(**declared(args, ImportSettings, skip=("labels_csv", "classes")),
                              labels_csv=_labels_args(args.labels), classes=classes)
    try:
        return run_with_progress("import", args.quiet, lambda p: steps.import_images(
            project, args.images_dir, settings, progress=p))
    except BaseException:
        if made_project:  # e.g. stopped by the patient-overlap question: no project left behind
            project.discard_if_never_imported(made_folder)
        raise



def _labels_args(values: Optional[list[str]]) -> Optional[list[tuple[Optional[str], Path]]]:
    """`--labels FILE` or `--labels SPLIT=FILE` (repeatable) -> [(split or None, path)]."""
    from ..catalog import split_name

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



def _describe_import(out: dict[str, Any]) -> str:
    lines = [f"imported {out['imported']} images ({out['labelled']} labelled) into {out['project']}",
             "classes: " + (", ".join(f"{c} ({n})" for c, n in out["per_class"].items()) or "none"),
             "split: " + ", ".join(f"{k} {v}" for k, v in sorted(out["splits"].items()))]
    from ..splits import describe_split_source

    lines += describe_split_source(out.get("split_source"))
    if out["failed"]:
        lines.append(f"{len(out['failed'])} files could not be read:")
        lines += [f"  {f['path']}: {f['reason']}" for f in out["failed"][:50]]
        if len(out["failed"]) > 50:
            lines.append(f"  ... and {len(out['failed']) - 50} more (see import-report.json)")
    lines += [f"warning: {w}" for w in out["warnings"][:20]]
    return "\n".join(lines)



def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from ..demo import create_demo_project

    project = run_with_progress("demo", args.quiet, lambda p: create_demo_project(
        args.project, n_patients=args.patients, with_cache=args.with_cache, progress=p))
    summary = project.import_summary()
    return {"project": str(project.root), "imported": summary.imported, "classes": summary.classes,
            "task": project.settings.task, "synthetic": True, "splits": summary.splits,
            "active_cache": project.settings.active_cache}



def _describe_demo(out: dict[str, Any]) -> str:
    return (f"demo project {out['project']} (SYNTHETIC): {out['imported']} images, {out['task']} classes "
            f"{', '.join(out['classes'])}; split " + ", ".join(f"{k} {v}" for k, v in sorted(out["splits"].items())))



def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    from ..project import Project

    project = Project.open(args.project)
    with project.read_lock():  # a consistent view (never a half-moved import); never waits for a training
        return _info(project)



def _info(project: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"project": str(project.root), "name": project.settings.name,
                           "task": project.settings.task, "classes": project.settings.classes,
                           "synthetic": project.settings.synthetic}
    if project.has_catalog():
        s = project.import_summary()
        out |= {"images": s.imported, "labelled": s.labelled, "splits": s.splits, "failed": len(s.failed),
                "split_source": project.settings.split_source}
    out["caches"] = [str(p.relative_to(project.root)) for p in project.cache_paths()]
    out["active_cache"] = project.settings.active_cache
    from ..results import head_name, score_text

    out["runs"] = [{"run": r.run_id, "head": head_name(r.record), "task": r.record["task"],
                    "best_score": r.record.get("best_score"), "monitor": r.record.get("monitor"),
                    "score": score_text(r.record), "stale": project.stale_reasons(r)} for r in project.runs()]
    from ..validation import list_groups

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
    from ..splits import describe_split_source

    lines += describe_split_source(out.get("split_source"))
    for cache in out["caches"]:
        active = " (active)" if out["active_cache"] and Path(cache).stem == out["active_cache"] else ""
        lines.append(f"cache {cache}{active}")
    for r in out["runs"]:
        stale = f"  STALE: {'; '.join(r['stale'])}" if r["stale"] else ""
        lines.append(f"run {r['run']}: {r['head']} {r['task']}, best {r['score']}{stale}")
    if not out["runs"]:
        lines.append("no runs yet")
    for g in out.get("groups", []):
        shown = ", ".join(f"{k} {v['mean']:.3f}" + (f" ± {v['sd']:.3f}" if v.get("sd") is not None else "")
                          for k, v in g.items() if isinstance(v, dict) and v.get("mean") is not None)
        lines.append(f"{g['kind']} group {g['group']}: {g.get('completed') or g.get('folds')} folds; {shown}"
                     + (f"; winner run {g['run']}" if g.get("run") else ""))
    return "\n".join(lines)



def add_import(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff import PROJECT IMAGES_DIR`."""
    from ..settings import ImportSettings, add_options

    p = sub.add_parser("import", parents=[common], help="scan an image folder (in place) into a project")
    p.add_argument("project", type=Path)
    p.add_argument("images_dir", type=Path)
    p.add_argument("--labels", action="append", metavar="[SPLIT=]CSV",
                   help="CSV with a file column and a label column (delimiter detected: , ; or tab). Repeatable; "
                        "SPLIT=CSV says the CSV's images are that split, e.g. --labels train=CSAW-M_train.csv "
                        "--labels test=CSAW-M_test.csv")
    add_options(p, ImportSettings)
    p.add_argument("--classes", help="comma-separated class order (low to high for ordinal labels), e.g. F,G,D")
    p.set_defaults(func=cmd_import, describe=_describe_import)



def add_demo(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff demo PROJECT`."""
    p = sub.add_parser("demo", parents=[common], help="write a small synthetic demo project (no download)")
    p.add_argument("project", type=Path)
    p.add_argument("--patients", type=at_least(2), default=60)
    p.add_argument("--with-cache", action="store_true",
                   help="also extract its features (EfficientNet-Lite0, shipped, at 192 px), as the window's demo does")
    p.set_defaults(func=cmd_demo, describe=_describe_demo)



def add_info(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff info PROJECT`."""
    p = sub.add_parser("info", parents=[common], help="what a project holds: images, caches, runs")
    p.add_argument("project", type=Path)
    p.set_defaults(func=cmd_info, describe=_describe_info)

