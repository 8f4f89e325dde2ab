"""Old vs new speed of cross-validation and of the search, side by side in one run (issue 20 point 3).

"Old" is the code at --old-commit (687326a, before the speed work), checked out in a temporary
`git worktree` and run in a subprocess with PYTHONPATH pointing there; "new" is this checkout,
also in a subprocess. Both read the same project (its cache is only read). The measurements
alternate (old, new, old, new, ...) so both see the same load on a shared machine.

Tables printed:
1. one configuration's K-fold CV (`validation.run_folds`, the TrainConfig defaults with each head
   kind): wall seconds, trainings, CV accuracy and macro AUC (mean over the folds), old vs new;
2. with --trials N > 0: the search (`validation.tune_source`: N head configurations + the
   logistic regression, K folds each): wall seconds, trainings, the best CV AUC, old vs new.

    python benchmarks/tune_speed.py                       # 5 folds, all head kinds, no search
    python benchmarks/tune_speed.py --quick               # 3 folds, 10 epochs, attention + linear
    python benchmarks/tune_speed.py --trials 8            # + the default search (24 min old on 2 cores)

Without --project a mini-MIAS project is made under /tmp/ts-bench-* (import by woman, label
tissue, default extract; /work/shared/data/mini-mias or --data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run in a subprocess against either checkout: prints one JSON line
DRIVER = r"""
import json, sys, time
args = json.loads(sys.argv[1])
import torch
if args["threads"]:
    torch.set_num_threads(args["threads"])
from dataclasses import replace
from loff_core.project import Project
from loff_core import validation as V
from loff_core.settings import TrainConfig
from loff_core.training import _in_memory
project = Project.open(args["project"])
cache = project.open_cache()
pool, classes = V.project_pool(project, cache)
task = "classification"
base = TrainConfig(task=task)
if args["epochs"]:
    base = replace(base, epochs=args["epochs"])
started = time.perf_counter()
data = _in_memory(cache)
if args["what"] == "cv":
    config = V.LOGREG if args["head"] == "logreg" else replace(base, head=args["head"])
    r = V.run_folds(data, pool, classes, task, config, folds=args["folds"], seed=0)
    m = r["metrics"]
    out = {"seconds": time.perf_counter() - started, "trainings": r["completed"],
           "accuracy": m["accuracy"]["mean"], "auc": m["auc"]["mean"], "best_epochs": r["best_epochs"],
           "per_fold_auc": m["auc"]["per_fold"]}
else:
    r = V.tune_source(data, pool, classes, task, trials=args["trials"], folds=args["folds"], seed=0, base=base)
    best = r["best"]
    out = {"seconds": time.perf_counter() - started, "trainings": len(r["leaderboard"]) * args["folds"],
           "best": best["config"], "auc": best["cv"]["auc"]["mean"], "accuracy": best["cv"]["accuracy"]["mean"]}
out["threads"] = torch.get_num_threads()
print("RESULT " + json.dumps(out))
"""


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def make_project(data: Path, env: dict) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ts-bench-")) / "project"
    loff = [sys.executable, "-m", "loff_core.cli"]
    sh(loff + ["import", str(folder), str(data / "images"), "--labels", str(data / "labels.csv"),
               "--label-column", "tissue", "--patient-column", "woman", "--classes", "F,G,D", "--quiet"], env=env)
    sh(loff + ["extract", str(folder), "--quiet"], env=env)
    return folder


def old_checkout(commit: str) -> Path:
    where = Path(tempfile.gettempdir()) / f"ts-old-{commit[:7]}"
    if not (where / "loff_core").is_dir():
        sh(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), commit])
    return where


def measure(code_root: Path, args: dict, env: dict) -> dict:
    env = dict(env, PYTHONPATH=str(code_root))
    if args["threads"]:  # before torch starts, for both (the new code keeps a thread count the user set)
        env["OMP_NUM_THREADS"] = str(args["threads"])
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)], env=env, text=True, capture_output=True,
                          cwd=str(code_root))
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"{code_root}: {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def vmap_probe(folds: int, grid: int, reps: int) -> None:
    """Would training the K fold heads of a configuration together pay on this CPU? One
    training step (forward + backward, batch 32, 120-dim tokens on a grid x grid grid) of K
    heads one after another vs the K heads stacked and run as one (torch.func.vmap over
    stack_module_state), interleaved, median of `reps`."""
    import copy
    import statistics

    import torch
    from torch.func import functional_call, stack_module_state, vmap

    from loff_core.heads import HeadConfig, build_head

    print(f"\n{folds} fold heads, one step each (ms, median of {reps}; {torch.get_num_threads()} thread(s)):\n")
    print("| head | one after another | stacked (vmap) |")
    print("|---|---|---|")
    for kind in ("attention", "linear", "vit"):
        heads = [build_head(HeadConfig(kind=kind, task="classification", num_classes=3, feature_dim=120,
                                       grid_hw=(grid, grid))) for _ in range(folds)]
        cls, tokens = torch.randn(folds, 32, 120), torch.randn(folds, 32, 120, grid, grid)
        params, buffers = stack_module_state(heads)
        skeleton = copy.deepcopy(heads[0]).to("meta")

        def one(p, b, c, g):
            return functional_call(skeleton, (p, b), (c, g))

        def apart():
            for i, h in enumerate(heads):
                h(cls[i], tokens[i]).sum().backward()

        def together():
            vmap(one, randomness="different")(params, buffers, cls, tokens).sum().backward()

        times: dict[str, list[float]] = {"apart": [], "together": []}
        for r in range(reps + 1):
            for name, fn in (("apart", apart), ("together", together)):
                start = time.perf_counter()
                fn()
                if r:  # the first round warms up
                    times[name].append(1000 * (time.perf_counter() - start))
        print(f"| {kind} | {statistics.median(times['apart']):.1f} | {statistics.median(times['together']):.1f} |")


def fmt(v: object, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--project", type=Path, help="an imported and extracted project (default: make one)")
    p.add_argument("--data", type=Path, default=Path("/work/shared/data/mini-mias"))
    p.add_argument("--old-commit", default="687326a")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--heads", default="attention,linear,vit,logreg")
    p.add_argument("--epochs", type=int, default=0, help="epochs of every configuration (0: the default 30)")
    p.add_argument("--trials", type=int, default=0, help="also compare the search of N configurations (0: no)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for old and new (0: each one's own choice)")
    p.add_argument("--quick", action="store_true", help="3 folds, 10 epochs, attention and linear")
    p.add_argument("--json", type=Path, help="also write the measurements here")
    p.add_argument("--vmap-probe", action="store_true", help="only time one step of K fold heads one after another "
                   "vs stacked with torch.func.vmap (this process, --threads or 1 thread)")
    a = p.parse_args()
    if a.vmap_probe:
        import torch

        torch.set_num_threads(a.threads or 1)
        return vmap_probe(a.folds, 16, 5)
    if a.quick:
        a.folds, a.epochs, a.heads = 3, a.epochs or 10, "attention,linear"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    project = a.project or make_project(a.data, env)
    old = old_checkout(a.old_commit)
    print(f"project {project}; old = {a.old_commit} ({old}), new = {ROOT}; folds {a.folds}, "
          f"epochs {a.epochs or 'default'}, threads {a.threads or 'own choice'}; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for head in a.heads.split(","):
        job = {"what": "cv", "project": str(project), "head": head, "folds": a.folds, "epochs": a.epochs,
               "threads": a.threads}
        pair = {side: measure(root, job, env) for side, root in (("old", old), ("new", ROOT))}
        if a.json:  # what is measured so far
            a.json.write_text(json.dumps({"cv": dict(rows + [(head, pair)])}, indent=1))
        rows.append((head, pair))
        o, n = pair["old"], pair["new"]
        print(f"  cv {head}: old {o['seconds']:.1f} s (acc {fmt(o['accuracy'])}, AUC {fmt(o['auc'])}, best epochs "
              f"{o.get('best_epochs')}), new {n['seconds']:.1f} s (acc {fmt(n['accuracy'])}, AUC {fmt(n['auc'])}, "
              f"best epochs {n.get('best_epochs')}); load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n{a.folds}-fold CV of one configuration (TrainConfig defaults, head as named), old vs new, same run:\n")
    print("| head | old s | new s | speed-up | old acc / AUC | new acc / AUC | old / new threads |")
    print("|---|---|---|---|---|---|---|")
    for head, pair in rows:
        o, n = pair["old"], pair["new"]
        print(f"| {head} | {o['seconds']:.1f} | {n['seconds']:.1f} | {o['seconds'] / n['seconds']:.2f}x | "
              f"{fmt(o['accuracy'])} / {fmt(o['auc'])} | {fmt(n['accuracy'])} / {fmt(n['auc'])} | "
              f"{o['threads']} / {n['threads']} |")
    search = None
    if a.trials > 0:
        job = {"what": "search", "project": str(project), "trials": a.trials, "folds": a.folds, "epochs": a.epochs,
               "threads": a.threads}
        search = {side: measure(root, job, env) for side, root in (("old", old), ("new", ROOT))}
        o, n = search["old"], search["new"]
        print(f"\nSearch (tune_source: {a.trials} configurations + logistic regression, {a.folds} folds each):\n")
        print("| code | wall s | trainings | best | best CV acc / AUC |")
        print("|---|---|---|---|---|")
        for side, r in (("old", o), ("new", n)):
            print(f"| {side} | {r['seconds']:.1f} | {r['trainings']} | {r['best']} | {fmt(r['accuracy'])} / "
                  f"{fmt(r['auc'])} |")
        print(f"\nspeed-up {o['seconds'] / n['seconds']:.2f}x")
    if a.json:
        a.json.write_text(json.dumps({"cv": dict(rows), "search": search, "args": {k: str(v) for k, v in
                                                                               vars(a).items()}}, indent=1))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
