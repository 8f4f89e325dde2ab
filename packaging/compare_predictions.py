"""Compare two `loff predict --json` outputs (frozen build vs source install): same files,
same predicted class, probabilities equal within --atol. Also checks a list of expected
DICOM transfer syntaxes were all predicted (not in `failed`). Used by packaging/smoke.sh.

    python packaging/compare_predictions.py FROZEN.json SOURCE.json [--atol 1e-5] [--min N]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("frozen", type=Path)
    ap.add_argument("source", type=Path)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--min", type=int, default=1, help="at least this many predictions")
    args = ap.parse_args(argv)
    frozen, source = (json.loads(p.read_text()) for p in (args.frozen, args.source))
    problems = []
    for name, out in (("frozen", frozen), ("source", source)):
        if out.get("failed"):
            problems.append(f"{name} build could not read: " + "; ".join(f"{f['path']}: {f['reason']}"
                                                                         for f in out["failed"]))
    if frozen["classes"] != source["classes"]:
        problems.append(f"classes differ: {frozen['classes']} vs {source['classes']}")
    fp = {p["path"]: p for p in frozen["predictions"]}
    sp = {p["path"]: p for p in source["predictions"]}
    if set(fp) != set(sp):
        problems.append(f"different files predicted: only frozen {sorted(set(fp) - set(sp))}, "
                        f"only source {sorted(set(sp) - set(fp))}")
    if len(fp) < args.min:
        problems.append(f"only {len(fp)} predictions, expected at least {args.min}")
    worst = 0.0
    for path in sorted(set(fp) & set(sp)):
        a, b = fp[path], sp[path]
        diff = max(abs(x - y) for x, y in zip(a["probabilities"], b["probabilities"]))
        worst = max(worst, diff)
        if a["predicted"] != b["predicted"] or diff > args.atol:
            problems.append(f"{path}: frozen {a['predicted']} {a['probabilities']} vs source "
                            f"{b['predicted']} {b['probabilities']}")
    for line in problems:
        print("compare_predictions: " + line, file=sys.stderr)
    print(f"compare_predictions: {len(fp)} files, largest probability difference {worst:.2e} "
          f"(tolerance {args.atol:g}): {'FAIL' if problems else 'equal'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
