"""The GPU suite's --smoke on the CPU (issue 26): `benchmarks/gpu_suite.sh OUT --smoke` runs
every section with a tiny ViT and writes, for each, a markdown table and JSON with numbers.
No timing assertion: only that each section ran and reported what it measured."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_gpu_suite_smoke_writes_every_section_with_numbers(tmp_path):
    out = tmp_path / "suite"
    env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out), "--smoke"],
                          capture_output=True, text=True, timeout=1450, env=env, cwd=ROOT)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(out.glob("*.log")))
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{logs}"
    doc = json.loads((out / "suite.json").read_text())
    assert doc["mode"] == "smoke" and doc["device"] == "cpu" and doc["machine"]["torch"]
    sections = doc["sections"]
    assert set(sections) >= {"install", "finetune", "extraction", "cuda_path", "oom", "window"}
    for name in ("finetune", "extraction", "cuda_path", "oom", "window"):
        assert sections[name]["status"] == "ok", (name, sections[name])
        assert _number(sections[name]["seconds"])

    assert sections["install"]["data"]["mode"].startswith(("dry-run", "no "))  # the smoke only decides

    ft = sections["finetune"]["data"]["results"]
    assert ft and all(_number(r[k]) for r in ft for k in ("ft_epoch_seconds", "loff_epoch_seconds", "speed_ratio",
                                                           "ft_peak_bytes", "loff_peak_bytes", "memory_ratio"))

    ext = sections["extraction"]["data"]["extract"]
    assert _number(ext["ratio"]) and _number(ext["forward_median"]) and len(ext["variants"]) == 2
    assert all(_number(v["ratio"]) for v in ext["variants"])

    cp = sections["cuda_path"]["data"]
    checks = cp["checks"]
    assert _number(checks["same_cache_max_abs_diff"]) and checks["same_cache_equal_within_1e-3"]
    assert _number(checks["predict_files_max_abs_diff"]) and _number(checks["onnx_max_abs_diff_vs_torch"])
    assert cp["extract"]["extracted"] == cp["extract"]["images"] > 0
    assert cp["train_device"] == "cpu" and cp["predict"]["predictions"] == cp["predict"]["files"]
    ws = cp["window_steps"]
    assert ws["extracted"] == ws["images"] > 0 and ws["train_device"] == "cpu" and ws["predicted"] > 0

    oom = sections["oom"]["data"]
    assert oom["simulated"] and oom["retried"] and oom["recovered"] and oom["cached"] == oom["images"]
    assert any("retrying with batch size" in n for n in oom["notes"])

    win = sections["window"]["data"]
    if "skipped" not in win:  # PySide6 is a dependency here: the window ran
        assert win["device_chosen"] == "cpu" and win["train_device"] == "cpu" and win["epochs"] >= 1

    md = (out / "suite.md").read_text()
    for title in ("LOFF-TA vs fine-tuning", "Extraction end to end", "The CUDA path", "Out of memory", "The window"):
        assert title in md
    assert md.count("|---") >= 6  # a table per section (the extraction section has two)
    assert "speed (a)/(b)" in md and "PASS (<= 1e-3)" in md
