"""Nested cross-validation of the DEFAULT path (issue 20, "Done means"): outer folds grouped
by patient over every labelled image of a project that was imported and extracted with the
defaults; inside each outer fold the default `loff tune` search (`search.tune_source` with
`stop_rule(None, None)`: the same trials, budget, folds, blocks and baseline as a plain
`loff tune`), the winner made into tune's final model on the outer-train part
(`search.final_model`: by default its fold heads averaged; `--final retrain`: one head
retrained) and scored once on the held-out outer fold. Beside it, the logistic-regression probe on the same outer folds
(the first block, C chosen by inner grouped CV), so the two are compared fold by fold.

    python benchmarks/nested_default.py PROJECT [--outer 5] [--seed 0] [--json OUT]

Prints one table (mean +- SD over the outer folds; accuracy and macro AUC) and each fold's
winner. Timing is wall clock on whatever machine runs it (say how loaded it was).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loff_core.metrics import evaluate_predictions  # noqa: E402
from loff_core.project import Project  # noqa: E402
from loff_core.search import LOGREG, final_model, stop_rule, tune_base, tune_source  # noqa: E402
from loff_core.settings import TrainConfig  # noqa: E402
from loff_core.training import _in_memory, predict_probabilities  # noqa: E402
from loff_core.validation import (Pool, _logreg_features, _read_cls, fit_logreg, grouped_folds,  # noqa: E402
                                  logreg_probabilities)


def every_labelled(project: Project, cache) -> tuple[Pool, list[str]]:
    catalog = project.catalog()
    cached = set(cache.image_ids)
    entries = [e for e in catalog.entries if e.label is not None and e.excluded is None and e.image_id in cached]
    y = np.asarray([catalog.class_index(e.label) for e in entries], dtype=np.int64)
    return Pool([e.image_id for e in entries], y, np.asarray([e.patient_key for e in entries])), list(catalog.classes)


def sub(pool: Pool, idx: np.ndarray) -> Pool:
    return Pool([pool.ids[i] for i in idx], pool.y[idx], pool.groups[idx])


def default_setup(path: str) -> tuple[Any, list[str], dict[str, Any], Pool, list[str]]:
    """(tune's base config, the cache's blocks default first, {block: in-RAM features}, every
    labelled image as a Pool, classes) of a project imported and extracted with the defaults."""
    project = Project.open(path)
    base = tune_base(TrainConfig(task=project.settings.task))
    first = project.open_cache()
    blocks = [first.block] + [b for b in first.blocks if b != first.block]
    sources = {b: _in_memory(project.open_cache(block=b)) for b in blocks}
    pool, classes = every_labelled(project, first)
    return base, blocks, sources, pool, classes


def score(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, float]:
    m = evaluate_predictions(y, probs, classes, "classification", n_bootstrap=0)["metrics"]
    return {"accuracy": float(m["accuracy"]), "auc": float(m["auc"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("project")
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--final", default="fold-heads", choices=["fold-heads", "retrain"],
                    help="the final model, as `loff tune --final` (default: tune's)")
    ap.add_argument("--folds", type=int, default=5, help="the search's inner folds (tune's default)")
    ap.add_argument("--json")
    args = ap.parse_args()
    base, blocks, sources, pool, classes = default_setup(args.project)
    trials, budget = stop_rule(None, None)
    rows = {f"default tune (nested), final model {args.final}": [], f"logistic regression probe (block {blocks[0]})": []}
    winners, seconds = [], []
    for f, (tr, te) in enumerate(grouped_folds(pool.y, pool.groups, args.outer, args.seed)):
        inner, held = sub(pool, tr), sub(pool, te)
        t0 = time.monotonic()
        found = tune_source(sources, inner, classes, base.task, trials=trials, budget=budget, seed=base.seed,
                            base=base, with_logreg=True, folds=args.folds)
        best = found["best"]
        block = best["config"].get("block") or blocks[0]
        head_config, state, _ = final_model(sources[block], inner, classes, base.task, best, base.seed,
                                            folds=args.folds, final=args.final)
        probs = predict_probabilities(head_config, state, sources[block], held.ids, device="cpu")
        seconds.append(time.monotonic() - t0)
        rows[f"default tune (nested), final model {args.final}"].append(score(held.y, probs, classes))
        winners.append({k: best["config"].get(k) for k in ("head", "block", "lr", "epochs", "augment")})
        x = _logreg_features(_read_cls(sources[blocks[0]], pool.ids))
        fitted = fit_logreg(x[tr], pool.y[tr], pool.groups[tr], len(classes), args.seed + f)
        rows[f"logistic regression probe (block {blocks[0]})"].append(
            score(held.y, logreg_probabilities(fitted, x[te]), classes))
        print(f"outer fold {f + 1}/{args.outer}: {seconds[-1]:.0f} s, winner {winners[-1]}, "
              f"test {rows[f'default tune (nested), final model {args.final}'][-1]}", flush=True)
    print(f"\n{len(pool.ids)} images, {len(set(pool.groups))} patients, outer {args.outer} folds grouped by "
          f"patient, seed {args.seed}; blocks searched {blocks}; search per outer fold "
          f"{np.mean(seconds):.0f} s mean\n")
    print("| arm | accuracy | macro AUC | per-fold AUC |")
    print("|---|---|---|---|")
    for name, per in rows.items():
        acc = np.array([p["accuracy"] for p in per])
        auc = np.array([p["auc"] for p in per])
        print(f"| {name} | {acc.mean():.3f} ± {acc.std(ddof=1):.3f} | {auc.mean():.3f} ± {auc.std(ddof=1):.3f} | "
              + ", ".join(f"{v:.3f}" for v in auc) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "winners": winners, "seconds": seconds,
                                               "LOGREG": LOGREG}, indent=1, default=str))


if __name__ == "__main__":
    main()
