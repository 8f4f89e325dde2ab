"""Breast-tissue classification (Fatty / Fatty-glandular / Dense-glandular) on the real
mini-MIAS mammograms with frozen EfficientNet-Lite0 features (real ImageNet weights):
5-fold cross-validation split by woman, comparing heads and tensor augmentations.

mini-MIAS lists films in pairs: left (even number) and right (odd number) of one woman
(README, note 1), so woman = (refnum + 1) // 2; both films of a woman are always in the same
fold (StratifiedGroupKFold). In each fold a further 20 % of the training women (again by
woman) is held out for the head's early stopping / best-epoch choice; metrics come from
`loff_core.metrics.evaluate_predictions` on the test fold only.

The fine-tuning arm (full mode, or `--finetune`) trains the same backbone end to end
(every weight, BatchNorm in train mode) plus a linear head, with pixel augmentations
(RandomResizedCrop 0.6-1 + horizontal flip) on the engine's own preprocessed images, the
same folds, epochs, patience and best-epoch rule (validation macro AUC).

Arms added for issue 13 (each optional, see --help): a scikit-learn logistic-regression
probe on the pooled embedding (C by inner grouped CV, `loff_core.validation.fit_logreg`),
each tensor augmentation switched off in turn (`--ablation`), and the `loff tune` winner
chosen inside each outer fold by grouped CV on that fold's training women only, retrained
on them and scored once on the outer test fold (`--nested-tune`: no peeking).

    python benchmarks/accuracy_minimias.py --quick
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_parser, parse_bench_args, machine_block, machine_info, table, write_json  # noqa: E402

DATA = Path("/work/shared/data/mini-mias")
CLASSES = ["F", "G", "D"]  # fatty < fatty-glandular < dense-glandular


def load_dataset(root: Path) -> tuple[list[tuple[str, Path]], list[int], list[int]]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    items, ys, women = [], [], []
    for r in rows:
        path = root / "images" / r["file"]
        if not path.exists() or r["tissue"] not in CLASSES:
            continue
        n = int(r["refnum"].lower().replace("mdb", ""))
        items.append((r["refnum"], path))
        ys.append(CLASSES.index(r["tissue"]))
        women.append((n + 1) // 2)
    return items, ys, women


def configs(mode: str) -> list[dict[str, Any]]:
    from loff_core.settings import AugmentConfig

    on, off = AugmentConfig(), AugmentConfig.off()
    out = [dict(name="linear probe (CLS), no aug", head="linear", augment=off),
           dict(name="attention, no aug", head="attention", augment=off),
           dict(name="attention + tensor aug", head="attention", augment=on),
           dict(name="vit, no aug", head="vit", augment=off),
           dict(name="vit + tensor aug", head="vit", augment=on)]
    if mode == "full":
        out.append(dict(name="attention + strong aug", head="attention",
                        augment=AugmentConfig(crop_scale=(0.4, 1.0), noise_std=0.1, token_dropout=0.2,
                                              mixup_alpha=0.4, mixup_prob=0.7)))
        out.append(dict(name="linear probe (CLS) + tensor aug", head="linear", augment=on))
    return out


ABLATION = {"hflip": dict(hflip=0.0), "crop": dict(crop_prob=0.0), "noise": dict(noise_std=0.0),
            "token dropout": dict(token_dropout=0.0), "mixup": dict(mixup_prob=0.0)}


def ablation_configs() -> list[dict[str, Any]]:
    """The attention head with the default tensor augmentations, each one switched off in turn."""
    from dataclasses import replace

    from loff_core.settings import AugmentConfig

    return [dict(name=f"attention + tensor aug without {name}", head="attention",
                 augment=replace(AugmentConfig(), **change)) for name, change in ABLATION.items()]


LOGREG_ARM = "logistic regression probe (sklearn, C by inner CV)"
TUNE_ARM = "tune winner (nested)"


FINETUNE = "fine-tune whole backbone + linear, pixel aug"


def finetune_fold(images: Any, y_all: Any, fit: Any, val: Any, te: Any, spec: Any, args: argparse.Namespace,
                  seed: int) -> dict[str, Any]:
    """Fine-tune the backbone (built by the engine's `load_backbone`) + a linear head on one
    fold; returns the test metrics at the best validation epoch."""
    import copy

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torchvision.transforms import v2

    from loff_core.backbones import load_backbone
    from loff_core.heads import HeadConfig, build_head
    from loff_core.metrics import evaluate_predictions
    from loff_core.training import _val_metrics, lr_schedule

    torch.manual_seed(seed)
    backbone = load_backbone(spec, device=args.device)
    dev = backbone.device
    body = backbone.token_module()
    body.model.requires_grad_(True)
    head = build_head(HeadConfig(kind="linear", task="classification", num_classes=len(CLASSES),
                                 feature_dim=backbone.feature_dim, grid_hw=backbone.grid_hw)).to(dev)
    params = list(body.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.finetune_lr, weight_decay=0.05)
    size = images.shape[-1]
    augment = v2.Compose([v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()])
    bs = 32
    steps_per_epoch = max(1, len(fit) // bs)
    total, warmup = args.epochs * steps_per_epoch, max(1, args.epochs * steps_per_epoch // 20)
    rng = np.random.default_rng(seed)
    scheduler = lr_schedule(optimizer, total, warmup, 1e-6)  # the engine's schedule (timm's cosine)

    def probabilities(idx: Any) -> Any:
        body.eval()
        head.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(idx), 64):
                cls, grid = body(images[idx[i:i + 64]].to(dev))
                out.append(torch.softmax(head(cls, grid).float(), dim=1).cpu())
        return torch.cat(out).numpy()

    best, best_state, best_epoch, bad, step = -float("inf"), None, 0, 0, 0
    epochs_run = 0
    for epoch in range(1, args.epochs + 1):
        body.train()
        head.train()
        order = rng.permutation(fit)
        for k in range(steps_per_epoch):  # full batches only (BatchNorm in train mode)
            idx = order[k * bs:(k + 1) * bs]
            scheduler.step_update(step)
            batch = torch.stack([augment(images[i]) for i in idx]).to(dev)
            cls, grid = body(batch)
            loss = F.cross_entropy(head(cls, grid), torch.as_tensor(y_all[idx], device=dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
        epochs_run = epoch
        score = _val_metrics("classification", "val_auc", y_all[val], probabilities(val), len(CLASSES))[2]
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            best_state = (copy.deepcopy(body.state_dict()), copy.deepcopy(head.state_dict()))
        else:
            bad += 1
            if bad >= args.patience:
                break
    assert best_state is not None
    body.load_state_dict(best_state[0])
    head.load_state_dict(best_state[1])
    m = evaluate_predictions(y_all[te], probabilities(te), CLASSES, "classification", n_bootstrap=0)["metrics"]
    m["best_epoch"] = best_epoch
    m["epochs_run"] = epochs_run
    return m


def preprocessed_images(items: list[tuple[str, Path]], spec: Any) -> Any:
    """All images decoded and preprocessed once by the engine (`load_pixels` + the backbone's
    own Preprocessor), as one float32 tensor [N, 3, S, S] in RAM."""
    import numpy as np
    import torch

    from loff_core.backbones import load_backbone
    from loff_core.images import load_pixels

    pre = load_backbone(spec, device="cpu").preprocessor
    return torch.from_numpy(np.stack([pre(load_pixels(path)) for _, path in items]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    from loff_core.backbones import BackboneSpec
    from loff_core.cache import extract_features
    from loff_core.cache_reader import FeatureCache
    from loff_core.metrics import evaluate_predictions
    from loff_core.settings import TrainConfig
    from loff_core.training import predict_probabilities, train_head

    items, ys, women = load_dataset(args.data)
    if args.limit:
        keep = [i for i in range(len(items)) if women[i] <= args.limit // 2]
        items, ys, women = [items[i] for i in keep], [ys[i] for i in keep], [women[i] for i in keep]
    y_all, g_all = np.asarray(ys), np.asarray(women)
    ids_all = np.asarray([i for i, _ in items])
    outer = list(StratifiedGroupKFold(n_splits=args.folds_total, shuffle=True, random_state=0)
                 .split(ids_all, y_all, g_all))[:args.folds]
    results = []
    extraction = []
    finetuned: set[int] = set()
    for backbone, layers, size, grid in [(b, la, s, g) for b in args.backbones for la in args.layers
                                         for s, g in args.settings]:
        spec = BackboneSpec(name=backbone, image_size=size or None, grid=grid, layers=layers)
        res = extract_features(items, spec, args.cache_dir, device=args.device, batch_size=16)
        cache = FeatureCache.open(res.cache_path)
        size = cache.backbone.get("image_size", size)
        extraction.append({"backbone": backbone, "layers": layers, "image_size": size, "grid": grid,
                           "seconds": res.seconds, "extracted": res.extracted, "skipped": res.skipped,
                           "failures": len(res.failures),
                           "images_per_s": res.extracted / res.seconds if res.extracted and res.seconds else None})
        source = cache.to_memory()
        setting = (f"{backbone}{'' if layers == 'last' else ' layers ' + layers}, {size or 'native'}px, "
                   f"grid {cache.grid_hw[0]}x{cache.grid_hw[1]}")
        per_cfg: dict[str, list[dict[str, Any]]] = {}
        walls: dict[str, float] = {}
        # once per input size: the fine-tuned model does not use the pooled grid
        finetune = (args.finetune and size not in finetuned
                    and (not args.only or any(o in FINETUNE for o in args.only)))
        if finetune:
            finetuned.add(size)
            t0 = time.perf_counter()
            images = preprocessed_images(items, spec)
            walls[FINETUNE] = time.perf_counter() - t0  # decoding once, counted in the arm's wall time
        for fold, (tr, te) in enumerate(outer):
            inner = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=fold)
            fit, val = next(inner.split(tr, y_all[tr], g_all[tr]))
            fit, val = tr[fit], tr[val]
            # majority-class baseline: training class frequencies as constant probabilities
            freq = np.bincount(y_all[tr], minlength=len(CLASSES)) / len(tr)
            probs = np.tile(freq, (len(te), 1))
            base = evaluate_predictions(y_all[te], probs, CLASSES, "classification", n_bootstrap=0)["metrics"]
            per_cfg.setdefault("majority class", []).append(base)
            walls.setdefault("majority class", 0.0)
            wanted = lambda name: not args.only or any(o in name for o in args.only)  # noqa: E731
            if args.logreg and wanted(LOGREG_ARM):
                from loff_core.validation import _logreg_features, _read_cls, fit_logreg, logreg_probabilities

                t0 = time.perf_counter()
                x_tr = _logreg_features(_read_cls(source, list(ids_all[tr])))
                fitted = fit_logreg(x_tr, y_all[tr], g_all[tr], len(CLASSES), fold)
                probs = logreg_probabilities(fitted, _logreg_features(_read_cls(source, list(ids_all[te]))))
                m = evaluate_predictions(y_all[te], probs, CLASSES, "classification", n_bootstrap=0)["metrics"]
                per_cfg.setdefault(LOGREG_ARM, []).append(m)
                walls[LOGREG_ARM] = walls.get(LOGREG_ARM, 0.0) + time.perf_counter() - t0
            if args.nested_tune and wanted(TUNE_ARM):
                from loff_core.search import retrain_final, tune_source
                from loff_core.validation import Pool, config_dict

                t0 = time.perf_counter()
                pool = Pool(list(ids_all[tr]), y_all[tr], g_all[tr])
                base = TrainConfig(epochs=args.epochs, patience=args.patience, batch_size=32, lr=args.lr,
                                   device=args.device)
                found = tune_source(source, pool, CLASSES, "classification", trials=args.tune_trials,
                                    folds=args.tune_folds, seed=fold, base=base, heads=args.tune_heads)
                head_config, state, _ = retrain_final(source, pool, CLASSES, "classification", found["best"], fold)
                probs = predict_probabilities(head_config, state, source, list(ids_all[te]), device=args.device)
                m = evaluate_predictions(y_all[te], probs, CLASSES, "classification", n_bootstrap=0)["metrics"]
                m["chosen"] = config_dict(found["best"]["_config"])
                per_cfg.setdefault(TUNE_ARM, []).append(m)
                walls[TUNE_ARM] = walls.get(TUNE_ARM, 0.0) + time.perf_counter() - t0
                print(f"fold {fold}: tune chose {m['chosen']} (inner cv auc "
                      f"{found['best']['cv']['auc']['mean']:.3f}); outer test acc {m['accuracy']:.3f} "
                      f"auc {m['auc']:.3f}; {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            arms = configs(args.mode) + (ablation_configs() if args.ablation else [])
            for cfg in arms:
                if args.only and not any(o in cfg["name"] for o in args.only):
                    continue
                t0 = time.perf_counter()
                config = TrainConfig(head=cfg["head"], epochs=args.epochs, patience=args.patience,
                                     batch_size=32, lr=args.lr, device=args.device, augment=cfg["augment"], seed=fold)
                tr_res = train_head(source, list(ids_all[fit]), list(y_all[fit]), list(ids_all[val]),
                                    list(y_all[val]), config, num_classes=len(CLASSES))
                probs = predict_probabilities(tr_res.head_config, tr_res.state_dict, source, list(ids_all[te]),
                                              device=args.device)
                m = evaluate_predictions(y_all[te], probs, CLASSES, "classification", n_bootstrap=0)["metrics"]
                m["best_epoch"] = tr_res.best_epoch
                m["epochs_run"] = len(tr_res.history)
                per_cfg.setdefault(cfg["name"], []).append(m)
                walls[cfg["name"]] = walls.get(cfg["name"], 0.0) + time.perf_counter() - t0
            if finetune:
                t0 = time.perf_counter()
                per_cfg.setdefault(FINETUNE, []).append(finetune_fold(images, y_all, fit, val, te, spec, args, fold))
                walls[FINETUNE] += time.perf_counter() - t0
        cache.close()
        for name, ms in per_cfg.items():
            row = {"setting": setting, "config": name, "folds": len(ms), "wall_s": walls[name]}
            if any("chosen" in m for m in ms):
                row["chosen"] = [m.get("chosen") for m in ms]
            for key in ("accuracy", "balanced_accuracy", "auc", "best_epoch"):
                vals = [m.get(key) for m in ms if m.get(key) is not None]
                row[key] = (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)
            results.append(row)
    return {"results": results, "extraction": extraction, "images": len(items), "women": len(set(women)),
            "class_counts": {c: int((y_all == i).sum()) for i, c in enumerate(CLASSES)}}


def pm(v: tuple) -> str:
    return "n/a" if v[0] is None else f"{v[0]:.3f} ± {v[1]:.3f}"


def report(out: dict[str, Any], info: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [[r["setting"], r["config"], pm(r["accuracy"]), pm(r["balanced_accuracy"]), pm(r["auc"]),
             "-" if r["best_epoch"][0] is None else f"{r['best_epoch'][0]:.1f}", r["wall_s"]] for r in out["results"]]
    ext = "; ".join(f"{e.get('backbone', '')} {e.get('layers', 'last')} {e['image_size']}px grid {e['grid']}: "
                    f"{e['seconds']:.1f} s ({e['extracted']} extracted"
                    + (f", {e['images_per_s']:.1f} images/s" if e.get("images_per_s") else "")
                    + f", {e['skipped']} already cached, {e['failures']} failed)"
                    for e in out["extraction"])
    return (f"## mini-MIAS tissue type (F/G/D), {', '.join(args.backbones)} frozen features\n\n{machine_block(info)}\n\n"
            + table(["features", "head / augmentation", "accuracy", "balanced acc.", "macro AUC (OvR)",
                     "best epoch", f"wall s ({args.folds} folds)"], rows)
            + f"\n\n- {out['images']} images of {out['women']} women; classes {out['class_counts']}. "
            f"{args.folds} of {args.folds_total} StratifiedGroupKFold folds by woman, mean ± std over folds; "
            f"up to {args.epochs} epochs, patience {args.patience}, lr {args.lr}, batch 32, best epoch by validation "
            f"macro AUC on 20 % of the training women.\n- Extraction (once per setting): {ext}."
            + "".join(f"\n- {r['config']} ({r['setting']}), chosen per outer fold: "
                      + "; ".join(", ".join(f"{k}={v}" for k, v in c.items()) for c in r["chosen"] if c)
                      for r in out["results"] if r.get("chosen")))


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/loff-bench-minimias-caches"),
                   help="feature caches (reused by later runs; extraction resumes)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--folds", type=int, default=None, help="how many of the 5 folds to run")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="input sizes (with each of --grids)")
    p.add_argument("--grids", type=int, nargs="+", default=[16], help="grid caps, with --sizes")
    p.add_argument("--backbones", nargs="+", default=["tf_efficientnet_lite0"],
                   help="backbone names (timm, registry or added); with --sizes 0 each at its native size")
    p.add_argument("--layers", nargs="+", default=["last"], help="--layers choices to compare (e.g. last -2)")
    p.add_argument("--only", nargs="+", default=None, help="run only configurations whose name contains one of these")
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=None,
                   help="also fine-tune the whole backbone (default: on in full and smoke mode, off in --quick)")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--logreg", action=argparse.BooleanOptionalAction, default=True,
                   help="the scikit-learn logistic-regression probe arm (default on)")
    p.add_argument("--ablation", action="store_true", help="each tensor augmentation switched off in turn")
    p.add_argument("--nested-tune", action="store_true", help="the `loff tune` winner chosen inside each outer fold")
    p.add_argument("--tune-trials", type=int, default=8, help="head configurations per nested tune (default 8)")
    p.add_argument("--tune-folds", type=int, default=5, help="inner folds of the nested tune (default 5)")
    p.add_argument("--tune-heads", nargs="+", default=None,
                   help="head kinds the nested tune searches (default: all, as `loff tune`)")
    args = parse_bench_args(p, argv)
    assert args is not None
    if not (args.data / "labels.csv").exists() or not (args.data / "images").is_dir():
        print(f"skipped: data absent ({args.data})")
        return 0
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    d = {"full": dict(folds=5, epochs=40, settings=[(224, 16), (448, 16), (448, 8)], limit=0),
         "quick": dict(folds=2, epochs=10, settings=[(224, 16)], limit=0),
         "smoke": dict(folds=2, epochs=2, settings=[(128, 16)], limit=60)}[args.mode]
    args.folds = args.folds or d["folds"]
    args.settings = [(s, g) for s in args.sizes for g in args.grids] if args.sizes else d["settings"]
    args.limit = d["limit"]
    if args.finetune is None:
        args.finetune = args.mode != "quick"
    args.folds_total = 5
    if args.epochs is None:
        args.epochs = d["epochs"]
    info = machine_info(args.device)
    out = run(args)
    print(report(out, info, args))
    write_json(args.json, {"benchmark": "accuracy_minimias", "mode": args.mode, "machine": info, **out,
                           "settings": {k: str(v) for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
