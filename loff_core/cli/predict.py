"""`loff export`, `loff predict`: a run as a head package, predictions on new images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .terminal import declared, metric_lines, run_with_progress

def cmd_export(args: argparse.Namespace) -> Any:
    from .. import steps  # every command runs a step (loff_core/steps.py), as the app does
    from ..project import Project

    project = Project.open(args.project)  # the step takes the reader lock, also while it writes eval-*.json
    return run_with_progress("export", args.quiet, lambda p: steps.export(
        project, args.out_dir, run_id=args.run, onnx=args.onnx, progress=p))



def _describe_export(out: dict[str, Any]) -> str:
    lines = [f"exported run {out['run']} to {out['out_dir']}"]
    lines += [f"  {kind:5s} {path}" for kind, path in out["files"].items()]
    if out.get("onnx") and "max_abs_diff_vs_torch" in out["onnx"]:
        lines.append(f"  ONNX checked against torch: max difference {out['onnx']['max_abs_diff_vs_torch']:.2e}")
    lines += [f"warning: {w}" for w in out.get("warnings", [])]
    return "\n".join(lines)



def cmd_predict(args: argparse.Namespace) -> Any:
    from .. import steps  # every command runs a step (loff_core/steps.py), as the app does
    from ..settings import PredictSettings

    settings = PredictSettings(**declared(args, PredictSettings, skip=("random_init",)),
                               random_init=True if args.random_init else None)
    result = run_with_progress("predict", args.quiet, lambda p: steps.predict(args.head_dir, args.files, settings,
                                                                              progress=p))
    if args.csv:
        from ..predictions import write_predictions_csv
        from ..steps import default_predictions_csv

        # --csv alone: into the project the head belongs to (PROJECT/predictions/), not the working folder
        path = default_predictions_csv(args.head_dir, result.run or (result.model or {}).get("run")) \
            if args.csv is DEFAULT_CSV else Path(args.csv)
        args.csv = path  # what a file-system error is about
        write_predictions_csv(path, result.to_json(), with_failed=False)
        out = result.to_json()
        out["csv"] = str(path)
        return out
    return result


#: `--csv` given without a file name
DEFAULT_CSV = object()



def _describe_predict(out: dict[str, Any]) -> str:
    classes = out["classes"]
    lines = [f"{len(out['predictions'])} predictions ({out['task']}; classes {', '.join(classes)})"]
    for row in out["predictions"]:
        p = row["probabilities"][classes.index(row["predicted"])] if row["predicted"] in classes else None
        lines.append(f"  {row['path']}: {row['predicted']}" + (f"  (P {p:.2f})" if p is not None else "")
                     + (f"  OUT OF DISTRIBUTION: {row['out_of_distribution']}" if row.get("out_of_distribution")
                        else ""))
    if out.get("ood"):
        lines.append(f"({out['ood']}: images far from its training data are not flagged)")
    lines += [f"  failed {f['path']}: {f['reason']}" for f in out.get("failed", [])]
    if out.get("model"):
        lines.insert(1, f"  by run {out['model'].get('run')}: {out['model'].get('text')}")
    if out.get("csv"):
        lines.append(f"saved to {out['csv']}")
    if out.get("labelled"):
        lines.append(f"metrics on the {out['labelled']} labelled files:")
        lines += metric_lines(out)
    return "\n".join(lines)



def add_export(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff export PROJECT OUT_DIR`."""
    p = sub.add_parser("export", parents=[common],
                       help="write head.safetensors + card.json (+ model.onnx) and the model report report.html")
    p.add_argument("project", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--run")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (backbone + head), checked against torch")
    p.set_defaults(func=cmd_export, describe=_describe_export)



def add_predict(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff predict HEAD_DIR_OR_PROJECT FILES`."""
    from ..settings import PredictSettings, add_options, field_info

    p = sub.add_parser("predict", parents=[common], help="predict new images with an exported head or a project's run")
    p.add_argument("head_dir", type=Path, metavar="HEAD_DIR_OR_PROJECT",
                   help="an exported head folder, or a project folder (its latest run, or --run ID)")
    p.add_argument("files", nargs="+", type=Path)
    add_options(p, PredictSettings)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--weights", help=field_info(PredictSettings, "weights").help)
    g.add_argument("--random-init", action="store_true", help=field_info(PredictSettings, "random_init").help)
    p.add_argument("--csv", nargs="?", const=DEFAULT_CSV, metavar="OUT",
                   help="also save the predictions as CSV (columns path, predicted, p_CLASS..., run, model); "
                        "OUT left out: PROJECT/predictions/RUN-TIME.csv in the project the head belongs to")
    p.set_defaults(func=cmd_predict, describe=_describe_predict)

