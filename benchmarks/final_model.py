"""Which final model the default path should export (issue 20, "Done means": nested accuracy
and macro AUC): the winner of the default `loff tune` search, made into a final model several
ways, each scored on the same held-out outer folds.

Outer folds grouped by patient over every labelled image of a project imported and extracted
with the defaults; inside each outer fold the default search (`tune_source`, as
`benchmarks/nested_default.py`), then from its winner:

  retrain        one head retrained on the whole outer-train part (the median best epoch of
                 the folds, no early stopping): what `loff tune` exported until now
  retrain x5     five such heads, seeds 0-4, probabilities averaged
  fold heads     the winner's K fold heads (each trained on its fold's training part, early
                 stopped on its validation part), probabilities averaged
  fold heads + retrain   the K fold heads and the retrained head averaged
  top-3 retrain  the three best configurations of the leaderboard, one retrained head each,
                 averaged
  probe          the logistic-regression probe (first block), as a baseline

    python benchmarks/final_model.py PROJECT [--outer 5] [--seed 0] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nested_default import default_setup, score, sub  # noqa: E402

from loff_core.search import LOGREG, retrain_final, stop_rule, tune_source  # noqa: E402
from loff_core.training import predict_probabilities, train_head  # noqa: E402
from loff_core.validation import (_logreg_features, _read_cls, augment_named, fit_logreg, grouped_folds,  # noqa: E402
                                  inner_split, logreg_probabilities)


def fold_heads(source, inner, classes, config, folds, seed, held_ids):
    """The K fold heads of `config` on `inner` (run_folds's splits and seeds), their held-out
    probabilities averaged."""
    probs = []
    for f, (train_idx, _test_idx) in enumerate(grouped_folds(inner.y, inner.groups, folds, seed)):
        fit_idx, val_idx = inner_split(train_idx, inner.y, inner.groups, seed + f)
        ids = np.asarray(inner.ids, dtype=object)
        r = train_head(source, list(ids[fit_idx]), inner.y[fit_idx].tolist(), list(ids[val_idx]),
                       inner.y[val_idx].tolist(), replace(config, seed=config.seed + f), num_classes=len(classes))
        probs.append(predict_probabilities(r.head_config, r.state_dict, source, held_ids, device="cpu"))
    return np.mean(probs, axis=0)


def config_of(entry, base):
    """A leaderboard row's TrainConfig (or LOGREG), from its recorded configuration."""
    c = entry["config"]
    if c["head"] == LOGREG:
        return LOGREG
    return replace(base, head=c["head"], lr=c["lr"], epochs=c["epochs"], patience=c["patience"],
                   augment=augment_named(c["augment"]), block=c.get("block"))


def final_probs(source, inner, classes, task, entry, seed, held_ids):
    head_config, state, _ = retrain_final(source, inner, classes, task, entry, seed)
    return predict_probabilities(head_config, state, source, held_ids, device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("project")
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5, help="the search's inner folds (tune's default)")
    ap.add_argument("--json")
    args = ap.parse_args()
    base, blocks, sources, pool, classes = default_setup(args.project)
    trials, budget = stop_rule(None, None)
    arms = ["retrain", "retrain x5", "fold heads", "fold heads + retrain", "top-3 retrain", "probe"]
    rows = {a: [] for a in arms}
    winners, seconds = [], []
    for f, (tr, te) in enumerate(grouped_folds(pool.y, pool.groups, args.outer, args.seed)):
        inner, held = sub(pool, tr), sub(pool, te)
        t0 = time.monotonic()
        found = tune_source(sources, inner, classes, base.task, trials=trials, budget=budget, seed=base.seed,
                            base=base, with_logreg=True)
        t_search = time.monotonic() - t0
        best = found["best"]
        block = best["config"].get("block") or blocks[0]
        src = sources[block]
        probs = {}
        probs["retrain"] = final_probs(src, inner, classes, base.task, best, base.seed, held.ids)
        if best["_config"] == LOGREG:
            probs["retrain x5"] = probs["fold heads"] = probs["fold heads + retrain"] = probs["retrain"]
        else:
            probs["retrain x5"] = np.mean([probs["retrain"]] + [
                final_probs(src, inner, classes, base.task, best, base.seed + s, held.ids) for s in range(1, 5)], axis=0)
            probs["fold heads"] = fold_heads(src, inner, classes, best["_config"], args.folds, base.seed, held.ids)
            probs["fold heads + retrain"] = (probs["fold heads"] * args.folds + probs["retrain"]) / (args.folds + 1)
        board = [e for e in found["leaderboard"] if not e.get("pruned")][:3]
        top = []
        for e in board:
            b = e["config"].get("block") or blocks[0]
            top.append(final_probs(sources[b], inner, classes, base.task, {**e, "_config": config_of(e, base)},
                                   base.seed, held.ids))
        probs["top-3 retrain"] = np.mean(top, axis=0)
        x = _logreg_features(_read_cls(sources[blocks[0]], pool.ids))
        fitted = fit_logreg(x[tr], pool.y[tr], pool.groups[tr], len(classes), args.seed + f)
        probs["probe"] = logreg_probabilities(fitted, x[te])
        for a in arms:
            rows[a].append(score(held.y, probs[a], classes))
        seconds.append((t_search, time.monotonic() - t0 - t_search))
        winners.append({k: best["config"].get(k) for k in ("head", "block", "lr", "epochs", "augment")})
        print(f"outer fold {f + 1}/{args.outer}: search {t_search:.0f} s, the rest {seconds[-1][1]:.0f} s, "
              f"winner {winners[-1]}, top-3 {[e['config'].get('head') for e in board]}", flush=True)
        print("   " + "; ".join(f"{a} {rows[a][-1]['accuracy']:.3f}/{rows[a][-1]['auc']:.3f}" for a in arms), flush=True)
    print(f"\n{len(pool.ids)} images, {len(set(pool.groups))} patients, outer {args.outer} folds grouped by "
          f"patient, seed {args.seed}; blocks searched {blocks}\n")
    print("| final model | accuracy | macro AUC | per-fold accuracy | per-fold AUC |")
    print("|---|---|---|---|---|")
    for name, per in rows.items():
        acc = np.array([p["accuracy"] for p in per])
        auc = np.array([p["auc"] for p in per])
        print(f"| {name} | {acc.mean():.3f} ± {acc.std(ddof=1):.3f} | {auc.mean():.3f} ± {auc.std(ddof=1):.3f} | "
              + ", ".join(f"{v:.3f}" for v in acc) + " | " + ", ".join(f"{v:.3f}" for v in auc) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "winners": winners, "seconds": seconds}, indent=1,
                                              default=str))


if __name__ == "__main__":
    main()
