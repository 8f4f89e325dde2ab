"""Install, offline, the wheels of a folder (benchmarks/gpu_wheels.sh fetched them) that this
Python lacks or has older, into a target folder put on PYTHONPATH; then the checkout itself
(--no-deps). Only the standard library: runs before anything else is there.

    python benchmarks/offline_install.py .whl .gpu-site --json OUT/install.json [--dry-run]

Without pip (a bare Python), the wheels are unpacked into the target instead (a wheel is a
zip of an importable tree). `--dry-run` only decides (the suite's --smoke on a CPU)."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

BUILD_ONLY = {"setuptools", "wheel", "packaging"}  # pip builds the checkout with these; never put on the path


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version_key(v: str) -> tuple:
    try:
        from packaging.version import Version

        return (0, Version(v))
    except Exception:  # noqa: BLE001 - packaging absent or an odd version: compare numbers
        return (1, tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.+-]", v)))


def decide(wheels: Path) -> tuple[list[Path], list[str]]:
    need, present = [], []
    for whl in sorted(wheels.glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        if _norm(name) in BUILD_ONLY:
            continue
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            try:
                have = md.version(_norm(name))
            except md.PackageNotFoundError:
                have = None
        if have is None or _version_key(have) < _version_key(version):
            need.append(whl)
        else:
            present.append(f"{_norm(name)} {have}")
    return need, present


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wheels", type=Path)
    p.add_argument("target", type=Path)
    p.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parents[1])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args()
    need, present = decide(a.wheels) if a.wheels.is_dir() else ([], [])
    out = {"mode": "dry-run" if a.dry_run else "install", "wheels_dir": str(a.wheels),
           "installed": [w.name for w in need], "present": present, "checkout": None, "method": None}
    if not a.wheels.is_dir():
        out["mode"] = f"no {a.wheels}/ (run benchmarks/gpu_wheels.sh on a connected machine first)"
    elif not a.dry_run:
        a.target.mkdir(parents=True, exist_ok=True)
        has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
        pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-index",
               "--find-links", str(a.wheels), "--no-deps", "--target", str(a.target)]
        if need:
            if has_pip:
                subprocess.run(pip + [str(w) for w in need], check=True)
                out["method"] = "pip --no-index --no-deps --target"
            else:
                for w in need:
                    with zipfile.ZipFile(w) as z:
                        z.extractall(a.target)
                out["method"] = "unzipped (no pip)"
        if has_pip:  # the checkout itself (the `loff` script); pip builds it with the wheels' setuptools
            r = subprocess.run(pip + ["--upgrade", str(a.checkout)], capture_output=True, text=True)
            out["checkout"] = "installed --no-deps" if r.returncode == 0 else f"not installed: {r.stderr.strip()[-300:]}"
        else:
            out["checkout"] = "not installed (no pip): run from the checkout on PYTHONPATH"
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    print(f"offline_install: {out['mode']}; to install: {', '.join(out['installed']) or 'nothing'}; "
          f"checkout: {out['checkout']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
