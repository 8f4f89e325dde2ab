"""`loff extract` under torchrun: N processes shard the batches and produce one cache,
identical to a single-process run (gloo on CPU here; NCCL on GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from loff_core.cli import main
from loff_core.project import Project
from loff_core.synthetic import write_synthetic_dataset

TINY = ["--backbone", "vit_tiny_patch16_224", "--random-init", "--image-size", "32", "--grid", "2",
        "--batch-size", "4", "--workers", "0"]


@pytest.mark.slow
def test_torchrun_two_processes_make_one_identical_cache(tmp_path, capsys):
    labels = write_synthetic_dataset(tmp_path / "img", n_patients=9, size=(64, 52), seed=2)
    for name in ("single", "multi"):
        assert main(["import", str(tmp_path / name), str(tmp_path / "img"), "--labels", str(labels),
                     "--label-column", "masking_level", "--quiet"]) == 0
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): other thread counts round differently
    try:
        assert main(["extract", str(tmp_path / "single"), *TINY, "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "LOFF_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", "-m", "loff_core.cli", "extract", str(tmp_path / "multi"),
                          *TINY, "--quiet", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = [json.loads(line) for line in _json_docs(run.stdout)]
    ranks = [o for o in outputs if "rank" in o]
    summary = [o for o in outputs if "cache" in o]
    assert len(ranks) == 1 and ranks[0]["world_size"] == 2 and len(summary) == 1
    assert summary[0]["world_size"] == 2 and summary[0]["images"] == 18
    assert 0 < summary[0]["extracted"] < 18 and ranks[0]["extracted"] == 18 - summary[0]["extracted"]
    a, b = Project.open(tmp_path / "single").open_cache(), Project.open(tmp_path / "multi").open_cache()
    assert a.fingerprint == b.fingerprint
    ma, mb = a.to_memory(), b.to_memory()
    order = mb.indices(ma.image_ids)
    assert sorted(ma.image_ids) == sorted(mb.image_ids)
    assert np.array_equal(ma.cls, mb.cls[order]) and np.array_equal(ma.grid, mb.grid[order])


def _json_docs(text: str) -> list[str]:
    """Split the concatenated pretty-printed JSON documents of the two ranks."""
    docs, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0 and start is not None:
                docs.append(text[start:i + 1])
    return docs
