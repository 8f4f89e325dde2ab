"""`loff auto`: from an image folder to an exported head and its report in one command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from .project import _labels_args
from .terminal import declared, run_with_progress


def cmd_auto(args: argparse.Namespace) -> dict[str, Any]:
    from ..auto import build_model
    from ..errors import ProjectError
    from ..settings import AutoSettings, ImportSettings

    if not args.images_dir.is_dir():  # before a project is created for nothing
        raise ProjectError(f"{args.images_dir}: not a folder")
    project = args.project or Path.cwd() / f"{args.images_dir.resolve().name}-loff"
    classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else None
    imports = ImportSettings(**declared(args, ImportSettings, skip=("labels_csv", "classes")),
                             labels_csv=_labels_args(args.labels), classes=classes)
    settings = AutoSettings(budget=args.budget)
    return run_with_progress("auto", args.quiet, lambda p: build_model(args.images_dir, project, imports, settings,
                                                                         progress=p))


def _interval(ci: Optional[list[float]]) -> str:
    return f"  [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def describe_auto(out: dict[str, Any]) -> str:
    """The human summary: what was guessed, what each step did, the test metrics with their
    95 % intervals, sensitivity and specificity for a binary task, where the head and the
    report are."""
    from ..progress import format_duration

    imp = out.get("import") or {}
    lines = [f"project {out['project']}: {imp.get('imported', 0)} images ({imp.get('labelled', 0)} labelled), "
             "classes " + ", ".join(f"{c} ({n})" for c, n in (imp.get("per_class") or {}).items())
             + "; split " + ", ".join(f"{k} {v}" for k, v in sorted((imp.get("splits") or {}).items()))]
    lines += ["found without being told:"] + [f"  {g}" for g in out.get("guesses", [])]
    lines.append("steps: " + "; ".join(f"{name} {s['done']} ({format_duration(s['seconds'])})"
                                        for name, s in out["steps"].items()))
    ext = out.get("extract")
    if ext:
        lines.append(f"features: backbone {ext['backbone']}, cache {ext['cache']} ({ext['images']} images)")
    search = out.get("search")
    if search:
        plan = search.get("plan") or {}
        best = ", ".join(f"{k}={v}" for k, v in (search.get("best") or {}).items())
        lines.append(f"head search: {search['trials']} configurations x {search['folds']} patient-grouped folds "
                     f"within the budget of {format_duration(out['budget'])}"
                     + (f" (one fold of the default head: about {plan['fold_seconds']:.0f} s)"
                        if plan.get("fold_seconds") else "")
                     + f"; winner: {best}")
        if search.get("test"):
            lines.append(f"test split ({search['n_test']} images), evaluated once, with 95% intervals:")
            lines += [f"  {name:22s} {'n/a' if v is None else f'{v:.3f}'}{_interval((search.get('test_ci') or {}).get(name))}"
                      for name, v in search["test"].items()]
        else:
            lines.append("no test split with features: the head was not tested")
    op = out.get("operating_point")
    if op:
        lines.append(f"at the operating point (positive class {op['positive']}; {op['decision']}):")
        for name in ("sensitivity", "specificity"):
            value = "n/a" if op[name] is None else f"{op[name]:.3f}"
            lines.append(f"  {name:22s} {value}{_interval(op[f'{name}_ci'])}")
    if out.get("stopped_after"):
        lines.append(f"stopped during {out['stopped_after']}: what was finished is kept; run the same command "
                     f"again to go on")
    if out.get("head"):
        lines.append(f"exported head: {out['head']}")
    if out.get("report"):
        lines.append(f"report: {out['report']}")
    lines.append(f"total {format_duration(out.get('seconds', 0))}")
    return "\n".join(lines)


def add_auto(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff auto IMAGES_DIR`."""
    from ..progress import parse_duration
    from ..settings import AutoSettings, ImportSettings, add_options, field_info

    def duration(text: str) -> float:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    duration.__name__ = "duration"

    p = sub.add_parser("auto", parents=[common], help="from an image folder to an exported head and its report",
                       description="Import the folder (columns, patients and a given split found as `loff import` "
                                   "finds them; what was guessed is printed), extract features with the default "
                                   "backbone, find the best head by patient-grouped cross-validation within the "
                                   "time budget, fit its operating point on the out-of-fold predictions, test it "
                                   "once, export it and write its report. Running it again reuses what is done.")
    p.add_argument("images_dir", type=Path, metavar="IMAGES")
    p.add_argument("--project", type=Path, help="the project folder (default: IMAGES' name + '-loff' in the "
                                                "current folder)")
    p.add_argument("--labels", action="append", metavar="[SPLIT=]CSV",
                   help="CSV with a file column and a label column (as `loff import --labels`); without it the "
                        "sub-folder names are the labels")
    budget = field_info(AutoSettings, "budget")
    p.add_argument("--budget", type=duration, default=budget.default,
                   help=f"{budget.help} (default: {budget.default:g} s)".replace("%", "%%"))
    add_options(p, ImportSettings)
    p.add_argument("--classes", help="comma-separated class order (low to high for ordinal labels), e.g. F,G,D")
    p.set_defaults(func=cmd_auto, describe=describe_auto)
