"""Evidence for the CPU defaults (issue 20 point 4, issue 23 item 9): nested cross-validation
on BOTH real data sets for each candidate cache (backbone x input size x block), and the
decision rule (Youden's J on validation vs plain argmax) on the same outer folds.

Data sets (`/work/shared/data`, see its README; the script prints `skipped: data absent` and
exits 0 without them):
- mini-MIAS, 322 films, label `tissue` (F / G / D), outer folds grouped by woman
  (woman = (refnum + 1) // 2); `mini-mias-dense`: the binary "dense (D) vs not" for the rule.
- the pediatric chest radiographs (Kermany, train part: 5,216 JPEGs of 224 x 224, NORMAL vs
  PNEUMONIA, 1:3), outer folds grouped by patient (from the file name); `--chest-n N` takes a
  stratified, patient-grouped subset of about N images, `--chest-halve` half of that.

Per candidate cache, block and data set, 5 outer folds (StratifiedGroupKFold, seed 0). Inside
each outer fold, on its training part only (the outer test fold is never seen): each candidate
head (`--heads`: the logistic-regression probe on the pooled vector, the attention head with
the default tensor augmentation) is fitted on five sixths of the training groups and scored on
the other sixth (`validation.inner_split`, as `loff train` holds out a validation split); the
outer test fold is scored once, its predictions decided by argmax and by the operating point
`train` used to fit by default (temperature, then a Youden's J threshold on the validation
part). `--tables` prints the markdown tables: every (cache, block, head), the nested choice
(the best validation AUC inside each outer fold) and both decision rules. A compact search, not
the full `loff tune` (one validation part instead of inner K-fold CV): see docs/benchmarks.md.

Folds are the outer loop, so a stopped run has the same folds for every candidate; `--json`
appends one line per (fold, cache, block) and a run resumes from it; `--fold-list` runs chosen
outer folds (processes side by side, one file).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/defaults_evidence.py --json out.jsonl
    python benchmarks/defaults_evidence.py --tables out.jsonl
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = Path("/work/shared/data")
PATIENT_RX = re.compile(r"^(person[0-9]+|NORMAL2-IM-[0-9]+|IM-[0-9]+)")
#: candidate caches: (data set, backbone, input px); every cache stores the blocks -2 and last
CANDIDATES = {
    "mini-mias": [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite2", 260),
                  ("tf_efficientnet_lite0", 512), ("tf_efficientnet_lite2", 512)],
    "chest": [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite2", 260)],
}
BLOCKS = ("-2", "last")


def load_minimias(root: Path) -> dict[str, Any]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    classes = ["F", "G", "D"]
    items, ys, groups = [], [], []
    for r in rows:
        path = root / "images" / r["file"]
        if not path.exists() or r["tissue"] not in classes:
            continue
        n = int(r["refnum"].lower().replace("mdb", ""))
        items.append((r["refnum"], path))
        ys.append(classes.index(r["tissue"]))
        groups.append((n + 1) // 2)
    return {"name": "mini-mias", "items": items, "y": ys, "groups": groups, "classes": classes,
            "group_word": "woman"}


def load_chest(root: Path, n: int | None, halve: bool = False) -> dict[str, Any]:
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    classes = ["NORMAL", "PNEUMONIA"]
    items, ys, groups = [], [], []
    for ci, c in enumerate(classes):
        for f in sorted((root / "train" / c).glob("*.jpeg")):
            items.append((f"{c}/{f.stem}", f))
            ys.append(ci)
            groups.append(PATIENT_RX.match(f.name).group(1))
    if n and n < len(items):
        k = max(2, round(len(items) / n))
        _, keep = next(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=0)
                       .split(np.zeros(len(ys)), ys, groups))
        keep = sorted(keep)
        items, ys, groups = [items[i] for i in keep], [ys[i] for i in keep], [groups[i] for i in keep]
    if halve:  # half of that subset, again stratified and grouped by patient (its features are cached)
        _, keep = next(StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=0)
                       .split(np.zeros(len(ys)), ys, groups))
        keep = sorted(keep)
        items, ys, groups = [items[i] for i in keep], [ys[i] for i in keep], [groups[i] for i in keep]
    return {"name": "chest", "items": items, "y": ys, "groups": groups, "classes": classes,
            "group_word": "patient"}


def extract(ds: dict[str, Any], backbone: str, size: int, cache_dir: Path, engine: str) -> tuple[Path, dict]:
    from loff_core.backbones import BackboneSpec
    from loff_core.cache import extract_features

    spec = BackboneSpec(name=backbone, image_size=size, grid=16, layers=",".join(BLOCKS))
    t0 = time.perf_counter()
    res = extract_features(ds["items"], spec, cache_dir / ds["name"], device="cpu", batch_size=16, engine=engine)
    info = {"data": ds["name"], "backbone": backbone, "size": size, "extracted": res.extracted,
            "skipped": res.skipped, "seconds": round(time.perf_counter() - t0, 1),
            "images_per_s": round(res.extracted / res.seconds, 2) if res.extracted and res.seconds else None,
            "failures": len(res.failures)}
    print(f"extracted {info}", file=sys.stderr, flush=True)
    return res.cache_path, info


def _decisions(y: Any, pred: Any) -> dict[str, float]:
    """Accuracy, balanced accuracy and (binary: the second class positive) sensitivity and
    specificity of class decisions."""
    import numpy as np

    y, pred = np.asarray(y), np.asarray(pred)
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    out = {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(np.mean(recalls))}
    if len(recalls) == 2:
        out["sensitivity"] = float((pred[y == 1] == 1).mean())
        out["specificity"] = float((pred[y == 0] == 0).mean())
    return out


def _rules(probs_fit: Any, y_fit: Any, probs_test: Any, y_test: Any, classes: list[str]) -> dict[str, dict]:
    """The test predictions decided by argmax and by the operating point `loff train` / `tune`
    fit by default (temperature, then Youden's J threshold) on (probs_fit, y_fit)."""
    import numpy as np

    from loff_core.calibration import adjust, decide, fit_operating_point

    out = {"argmax": _decisions(y_test, np.asarray(probs_test).argmax(axis=1))}
    if len(classes) == 2:
        op = fit_operating_point(np.asarray(probs_fit), np.asarray(y_fit), classes, "classification",
                                 source=[0.5, 0.5], fitted_on="validation", criterion="youden")
        out["youden"] = _decisions(y_test, decide(adjust(np.asarray(probs_test), op), "classification", op))
        out["youden"]["threshold"] = op["threshold"]["value"]
    return out


def _metrics(y: Any, probs: Any, classes: list[str]) -> dict[str, float]:
    from loff_core.metrics import evaluate_predictions

    m = evaluate_predictions(list(y), probs, classes, "classification", n_bootstrap=0)["metrics"]
    return {"auc": m["auc"], **{k: v for k, v in m.items() if k in ("accuracy", "balanced_accuracy")}}


def run_fold(ds: dict[str, Any], source: Any, fold: int, tr: Any, te: Any, args: argparse.Namespace) -> dict:
    """One outer fold on one cache block: each candidate head (the logistic-regression probe on
    the pooled vector, the attention head with the default tensor augmentation) fitted on the
    fit part of the outer training part and scored on its validation part (a grouped sixth,
    as `loff train` holds out), then once on the outer test fold; both decision rules."""
    import numpy as np

    from loff_core.settings import TrainConfig
    from loff_core.training import predict_probabilities, train_head
    from loff_core.validation import _logreg_features, _read_cls, fit_logreg, inner_split, logreg_probabilities

    classes = ds["classes"]
    ids = np.asarray([i for i, _ in ds["items"]])
    y, g = np.asarray(ds["y"]), np.asarray([str(x) for x in ds["groups"]])
    fit, val = inner_split(tr, y, g, fold)
    rec: dict[str, Any] = {"fold": fold, "n_test": int(len(te)), "n_fit": int(len(fit)), "n_val": int(len(val))}
    for head in args.heads:
        t0 = time.perf_counter()
        if head == "logreg":
            fitted = fit_logreg(_logreg_features(_read_cls(source, list(ids[fit]))), y[fit], g[fit], len(classes), fold)
            p_val, p_te = (logreg_probabilities(fitted, _logreg_features(_read_cls(source, list(ids[part]))))
                           for part in (val, te))
            extra = {"C": fitted.get("C")}
        else:
            base = TrainConfig(head=head, epochs=args.epochs, patience=args.patience, device="cpu", seed=fold)
            res = train_head(source, list(ids[fit]), list(y[fit]), list(ids[val]), list(y[val]), base,
                             num_classes=len(classes))
            p_val, p_te = (predict_probabilities(res.head_config, res.state_dict, source, list(ids[part]), device="cpu")
                           for part in (val, te))
            extra = {"best_epoch": res.best_epoch}
        rec[head] = {**_metrics(y[te], p_te, classes), **extra, "val_auc": _metrics(y[val], p_val, classes)["auc"],
                     "rules": _rules(p_val, y[val], p_te, y[te], classes), "seconds": round(time.perf_counter() - t0, 1)}
    return rec


def dense_vs_not(ds: dict[str, Any]) -> dict[str, Any]:
    """mini-MIAS as a binary task for the decision rule: dense (D) vs not (F, G), 1:2."""
    return dict(ds, name="mini-mias-dense", classes=["F or G", "D"], y=[int(v == 2) for v in ds["y"]])


def main(argv: list[str] | None = None) -> int:
    import json

    import numpy as np
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/defaults-ev/caches"))
    p.add_argument("--sets", nargs="+", default=["mini-mias", "mini-mias-dense", "chest"])
    p.add_argument("--chest-n", type=int, default=None, help="a stratified patient-grouped subset of about N images")
    p.add_argument("--chest-halve", action="store_true", help="half of the --chest-n subset (stratified, grouped)")
    p.add_argument("--candidates", nargs="+", default=None, help="backbone@px to run (default: all of CANDIDATES)")
    p.add_argument("--blocks", nargs="+", default=list(BLOCKS))
    p.add_argument("--folds", type=int, default=5, help="how many of the 5 outer folds to run")
    p.add_argument("--fold-list", type=int, nargs="+", default=None, help="run these outer folds (0-4) only: "
                   "processes side by side, appending to one --json")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--engine", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extract-only", action="store_true")
    p.add_argument("--heads", nargs="+", default=["logreg", "attention"], help="candidate heads (logreg, attention, "
                   "linear, vit)")
    p.add_argument("--json", type=Path, default=None, help="append each cache's result as one JSON line")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.data / "mini-mias").is_dir() or not (args.data / "chest-xray-pneumonia").is_dir():
        print("skipped: data absent")
        return 0
    plan = []  # (data set, backbone, size, cache path, extraction info)
    for name in args.sets:
        if name == "chest":
            ds = load_chest(args.data / "chest-xray-pneumonia", args.chest_n, args.chest_halve)
        else:
            ds = load_minimias(args.data / "mini-mias")
        cands = CANDIDATES["chest" if name == "chest" else "mini-mias"]
        if args.candidates:
            cands = [c for c in cands if f"{c[0].replace('tf_efficientnet_', '')}@{c[1]}" in args.candidates]
        for backbone, size in cands:
            path, info = extract(ds, backbone, size, args.cache_dir, args.engine)
            plan.append((dense_vs_not(ds) if name == "mini-mias-dense" else ds, backbone, size, path, info))
    if args.extract_only:
        return 0
    from loff_core.cache_reader import FeatureCache
    from loff_core.validation import grouped_folds

    sources = {}
    for ds, backbone, size, path, info in plan:
        for block in args.blocks:
            cache = FeatureCache.open(path, block=block)
            sources[(ds["name"], backbone, size, block)] = cache.to_memory()
            cache.close()
    done = set()  # (data, backbone, size, block, fold) already in --json: a stopped run resumes
    if args.json and args.json.is_file():
        for line in args.json.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            done.add((r["data"], r["backbone"], r["size"], r["block"], r["fold"]))
    # folds outermost: whenever the run is stopped, every candidate has the same folds done
    for fold in args.fold_list or range(args.folds):
        for ds, backbone, size, path, info in plan:
            y, g = np.asarray(ds["y"]), np.asarray([str(x) for x in ds["groups"]])
            tr, te = grouped_folds(y, g, 5, 0)[fold]
            for block in args.blocks:
                if (ds["name"], backbone, size, block, fold) in done:
                    continue
                rec = run_fold(ds, sources[(ds["name"], backbone, size, block)], fold, tr, te, args)
                rec.update(data=ds["name"], n=len(ds["items"]), groups=len(set(ds["groups"])), backbone=backbone,
                           size=size, block=block, extraction=info)
                short = {h: f"val {rec[h]['val_auc']:.3f} test auc {rec[h]['auc']:.3f} acc {rec[h]['accuracy']:.3f} "
                            f"{rec[h]['seconds']} s" for h in args.heads}
                print(f"{ds['name']} {backbone} {size} {block} fold {fold}: {short}", flush=True)
                if args.json:
                    with open(args.json, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(rec) + "\n")
    return 0


def _pm(vals: list) -> str:
    import numpy as np

    vals = [v for v in vals if v is not None]
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "-"


def _short(backbone: str) -> str:
    return backbone.replace("tf_efficientnet_", "").replace("lite", "Lite")


def tables(recs: list[dict[str, Any]], heads: tuple[str, ...] = ("logreg", "attention")) -> str:
    """Markdown tables from the JSON lines: outer-fold test metrics per cache, block and head;
    the nested choice (by validation AUC inside each outer fold); both decision rules."""
    import numpy as np

    out = []
    names = {"logreg": "logistic-regression probe", "attention": "attention head + tensor aug"}
    for data in dict.fromkeys(r["data"] for r in recs):
        rs = [r for r in recs if r["data"] == data]
        folds = sorted({r["fold"] for r in rs})
        caches = list(dict.fromkeys((r["backbone"], r["size"]) for r in rs))
        blocks = list(dict.fromkeys(r["block"] for r in rs))
        # only folds every cache and block finished: the rows compare like with like
        full = [f for f in folds if all(any(r["fold"] == f and (r["backbone"], r["size"]) == c and r["block"] == b
                                            for r in rs) for c in caches for b in blocks)]
        r0 = rs[0]
        out.append(f"#### {data}: {r0['n']} images, {r0['groups']} groups; outer folds done: {len(full)} of 5 "
                   f"({', '.join(map(str, full))})\n")
        out.append("| cache | block | head | accuracy | balanced acc. | AUC | validation AUC |")
        out.append("|---|---|---|---|---|---|---|")
        for c in caches:
            for b in blocks:
                sel = [r for r in rs if (r["backbone"], r["size"]) == c and r["block"] == b and r["fold"] in full]
                for h in heads:
                    if not sel or h not in sel[0]:
                        continue
                    out.append(f"| {_short(c[0])} {c[1]} px | `{b}` | {names.get(h, h)} | "
                               + " | ".join(_pm([r[h][k] for r in sel]) for k in ("accuracy", "balanced_accuracy",
                                                                                   "auc", "val_auc")) + " |")
        # nested: inside each outer fold the candidate with the best validation AUC
        def chosen(pool: list[dict[str, Any]]) -> tuple[list[dict], list[str]]:
            picks, what = [], []
            for f in full:
                cands = [(r[h]["val_auc"], r, h) for r in pool if r["fold"] == f for h in heads if h in r]
                _, r, h = max(cands, key=lambda t: t[0])
                picks.append(r[h])
                what.append(f"{_short(r['backbone'])} {r['size']} `{r['block']}` {h}")
            return picks, what
        for c in caches:
            picks, what = chosen([r for r in rs if (r["backbone"], r["size"]) == c])
            out.append(f"| {_short(c[0])} {c[1]} px | chosen inside | **nested: best validation AUC** | "
                       + " | ".join(_pm([m[k] for m in picks]) for k in ("accuracy", "balanced_accuracy", "auc",
                                                                        "val_auc")) + " |")
        picks, what = chosen(rs)
        out.append("| all caches | chosen inside | **nested: best validation AUC** | "
                   + " | ".join(_pm([m[k] for m in picks]) for k in ("accuracy", "balanced_accuracy", "auc",
                                                                    "val_auc")) + " |")
        out.append(f"\nNested choices per fold (all caches): {'; '.join(what)}.\n")
        if any("youden" in r[h]["rules"] for r in rs for h in heads if h in r):
            out.append(f"Decision rule on {data} (the same test predictions decided two ways; Youden's J threshold "
                       f"fitted on the validation part):\n")
            out.append("| cache | block | head | rule | accuracy | balanced acc. | sensitivity | specificity |")
            out.append("|---|---|---|---|---|---|---|---|")
            diffs: dict[str, list] = {"accuracy": [], "balanced_accuracy": []}
            for c in caches:
                for b in blocks:
                    sel = [r for r in rs if (r["backbone"], r["size"]) == c and r["block"] == b and r["fold"] in full]
                    for h in heads:
                        if not sel or h not in sel[0]:
                            continue
                        for rule in ("argmax", "youden"):
                            out.append(f"| {_short(c[0])} {c[1]} px | `{b}` | {names.get(h, h)} | {rule} | "
                                       + " | ".join(_pm([r[h]["rules"][rule][k] for r in sel])
                                                    for k in ("accuracy", "balanced_accuracy", "sensitivity",
                                                              "specificity")) + " |")
                        for k in diffs:
                            diffs[k] += [r[h]["rules"]["youden"][k] - r[h]["rules"]["argmax"][k] for r in sel]
            for k, d in diffs.items():
                d = np.asarray(d)
                out.append(f"\n- Youden minus argmax, {k}: mean {d.mean():+.3f} over {len(d)} (model, fold) pairs; "
                           f"Youden better in {(d > 1e-9).sum()}, worse in {(d < -1e-9).sum()}, equal in "
                           f"{(abs(d) <= 1e-9).sum()}.")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--tables":  # tables from earlier runs' JSON lines
        import json

        print(tables([json.loads(line) for f in sys.argv[2:] for line in open(f, encoding="utf-8")]))
        raise SystemExit(0)
    raise SystemExit(main())
