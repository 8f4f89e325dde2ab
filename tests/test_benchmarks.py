"""The benchmark scripts run (in their smallest mode) and print their markdown tables.

No timing assertions: only that each script exits 0 and prints a table header. Each runs in
a subprocess, like a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _run(script: str, *args: str, timeout: int = 300) -> str:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)
    assert proc.returncode == 0, f"{script} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _has_table(out: str, first_header: str) -> bool:
    return any(line.startswith(f"| {first_header} |") for line in out.splitlines()) and "|---|" in out


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_loff_vs_finetune_smoke(tmp_path: Path) -> None:
    out = _run("loff_vs_finetune.py", "--smoke", "--json", str(tmp_path / "r.json"))
    assert _has_table(out, "backbone")
    assert "speed (a)/(b)" in out and "memory (a)/(b)" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["results"] and data["machine"]["torch"]


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_extraction_smoke() -> None:
    out = _run("extraction.py", "--smoke")
    assert _has_table(out, "backbone")
    assert _has_table(out, "transfer syntax")


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_cache_reads_smoke() -> None:
    out = _run("cache_reads.py", "--smoke")
    assert _has_table(out, "features")
    assert _has_table(out, "grid")


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_accuracy_minimias_smoke(tmp_path: Path) -> None:
    out = _run("accuracy_minimias.py", "--smoke", "--cache-dir", str(tmp_path / "caches"))
    assert out.startswith("skipped: data absent") or _has_table(out, "features")


def test_accuracy_minimias_skips_without_data(tmp_path: Path) -> None:
    out = _run("accuracy_minimias.py", "--smoke", "--data", str(tmp_path / "nowhere"))
    assert out.startswith("skipped: data absent")


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_scale_smoke() -> None:
    out = _run("scale.py", "--smoke")
    assert _has_table(out, "N images")


@pytest.mark.timeout(600)
def test_encoders_smoke(tmp_path: Path) -> None:
    out = _run("encoders.py", "--smoke", "--threads", "1", "--json", str(tmp_path / "r.json"))
    assert _has_table(out, "encoder")
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["label"] for r in rows] == ["efficientnet-lite2", "dinov3-vits16"]
    assert rows[1]["grid"] == [16, 16] and rows[1]["feature_dim"] == 384 and rows[1]["gflops"] > rows[0]["gflops"]


@pytest.mark.timeout(300)
def test_data_map_smoke() -> None:
    out = _run("data_map.py", "--smoke")
    assert _has_table(out, "points") and "| 2000 |" in out
