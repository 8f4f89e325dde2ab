"""`loff audit`: know the data from the cache (near-duplicates and leaks, suspected label
errors, outliers, shift between splits) and, when asked, leave images out."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ProjectError
from .terminal import run_with_progress


def _ids(text: str) -> list[str]:
    return [i for i in (part.strip() for part in text.split(",")) if i]


def cmd_audit(args: argparse.Namespace) -> Any:
    from .. import steps  # every command runs a step (loff_core/steps.py), as the app does
    from ..project import Project
    from ..settings import AuditSettings, all_fields

    project = Project.open(args.project)
    settings = AuditSettings(**{f.name: getattr(args, f.name) for f in all_fields(AuditSettings)})
    if args.on_leak is not None:
        if args.exclude is not None or args.include is not None:
            raise ProjectError("--on-leak and --exclude / --include: one at a time")
        return steps.on_leak(project, args.on_leak, settings)
    if args.exclude is not None or args.include is not None:
        if args.exclude is not None and args.include is not None:
            raise ProjectError("--exclude and --include: one at a time")
        if args.exclude is not None and not (args.reason or "").strip():
            raise ProjectError("--exclude needs --reason TEXT (recorded in the catalog)")
        ids = _ids(args.exclude if args.exclude is not None else args.include)
        return steps.exclude(project, ids, args.reason.strip() if args.exclude is not None else None)
    return run_with_progress("audit", args.quiet, lambda p: steps.audit(project, settings, progress=p))


def _describe_audit(out: dict[str, Any]) -> str:
    if "action" in out:  # --on-leak
        if out["action"] == "undo":
            return f"undid {out['undone']}: {out['changed']} catalog changes reversed"
        what = "excluded" if out["action"] == "drop-from-test" else "moved to another split"
        return (f"{out['changed']} images {what} (recorded in audit/on_leak.json; `loff audit PROJECT --on-leak undo` "
                f"reverses it)" if out["changed"] else "no near-duplicates across splits: nothing changed")
    if "changed" in out:  # --exclude / --include
        what = f"excluded ({out['reason']})" if out["reason"] is not None else "included again"
        return f"{out['changed']} of {len(out['images'])} images {what}; {out['excluded']} excluded in all"
    leaks = [g for g in out["duplicates"] if len(set(g["splits"])) > 1]
    lines = [f"audit of {out['images']} cached images (cache {out['cache']}); full lists in "
             f"{', '.join(out['saved'])}",
             f"near-duplicates: {out['n_duplicates']} groups, {out['leaks']} across splits (leaks)"]
    lines += [f"  {'LEAK ' if g in leaks else '     '}{g['similarity']:.3f}  "
              + "  ".join(f"{i} ({s})" for i, s in zip(g["images"], g["splits"])) for g in out["duplicates"][:10]]
    if out["leaks"]:
        lines.append("  to act: loff audit PROJECT --on-leak drop-from-test (exclude the val / test copies) or "
                     "--on-leak regroup (one split per patient group the duplicates join); --on-leak undo reverses")
    src = out.get("label_source") or {}
    made = (f"{src['from_group']} from group {src['group']}, {src['from_probe']} from the logistic-regression probe"
            if src.get("group") else "logistic-regression probe")
    lines.append(f"suspected label errors: {out['n_label_suspects']} (out-of-fold predictions: {made}; "
                 f"block {src.get('block', '?')})")
    lines += [f"  {s['image']}  label {s['label']}  predicted {s['predicted']}  score {s['score']:.3f}"
              for s in out["label_suspects"][:10]]
    lines.append("outliers (distance to the nearest class, relative to that class's own; 1 = typical):")
    lines += [f"  {o['image']}  {o['score']:.3f}" for o in out["outliers"][:10]]
    sh = out["shift"]
    for other in ("test", "val"):
        auc, ci = sh.get(f"{other}_vs_train_auc"), sh.get(f"{other}_vs_train_ci")
        lines.append(f"shift {other} vs train: AUC " + ("n/a" if auc is None else f"{auc:.3f}")
                     + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + " (0.5 = indistinguishable)")
    if sh.get("warning"):
        lines.append(f"WARNING: {sh['warning']}")
    return "\n".join(lines)


def add_audit(sub: Any, common: argparse.ArgumentParser) -> None:
    """`loff audit PROJECT`."""
    from ..settings import ON_LEAK_ACTIONS, AuditSettings, add_options

    p = sub.add_parser("audit", parents=[common], help="near-duplicates, label errors, outliers, split shift",
                       description="Look at the data through the cached embeddings (no forward pass): "
                                   "near-duplicates (across splits: leaks), suspected label errors (out-of-fold "
                                   "predictions of a patient-grouped logistic-regression probe), outliers and the "
                                   "shift between splits (AUC of a classifier telling test from train). Lists are "
                                   "most suspicious first, images named by the catalog's image_id, and saved as "
                                   "CSVs in PROJECT/audit/. Nothing else changes unless --exclude / --include / --on-leak.")
    p.add_argument("project", type=Path)
    add_options(p, AuditSettings)
    p.add_argument("--exclude", metavar="IDS", help="comma-separated image ids to leave out of training, cv, tune "
                                                    "and evaluation (recorded in the catalog; needs --reason)")
    p.add_argument("--reason", metavar="TEXT", help="why the images of --exclude are left out")
    p.add_argument("--on-leak", choices=list(ON_LEAK_ACTIONS),
                   help="act on near-duplicates across splits: " + "; ".join(f"{k}: {v}" for k, v in
                                                                          ON_LEAK_ACTIONS.items()))
    p.add_argument("--include", metavar="IDS", help="comma-separated image ids to use again (undoes --exclude)")
    p.set_defaults(func=cmd_audit, describe=_describe_audit)
