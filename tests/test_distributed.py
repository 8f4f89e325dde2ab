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


# -- two nodes (issue 26 point 4) ----------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(rank: int, port: int, project, extra_env=None) -> subprocess.Popen:
    """One torchrun agent as one node of two (c10d rendezvous on 127.0.0.1, gloo, one process)."""
    env = {**os.environ, "LOFF_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
         "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
         "--rdzv-id", "loff-two-nodes", "--max-restarts", "0", "-m", "loff_core.cli", "extract", str(project),
         *TINY, "--quiet", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _single_cache(tmp_path, labels):
    import torch

    assert main(["import", str(tmp_path / "single"), str(tmp_path / "img"), "--labels", str(labels),
                 "--label-column", "masking_level", "--quiet"]) == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1)
    try:
        assert main(["extract", str(tmp_path / "single"), *TINY, "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return Project.open(tmp_path / "single").open_cache()


def _same_cache(a, b) -> None:
    assert a.fingerprint == b.fingerprint
    ma, mb = a.to_memory(), b.to_memory()
    assert sorted(ma.image_ids) == sorted(mb.image_ids)
    order = mb.indices(ma.image_ids)
    assert np.array_equal(ma.cls, mb.cls[order]) and np.array_equal(ma.grid, mb.grid[order])


def test_two_torchrun_nodes_write_one_cache_into_one_project_folder(tmp_path):
    """Two agents started as two nodes (what a cluster's job script starts, one per machine,
    over a shared file system): one project folder, one cache, identical to one process's."""
    labels = write_synthetic_dataset(tmp_path / "img", n_patients=9, size=(64, 52), seed=2)
    assert main(["import", str(tmp_path / "multi"), str(tmp_path / "img"), "--labels", str(labels),
                 "--label-column", "masking_level", "--quiet"]) == 0
    port = _free_port()
    nodes = [_node(rank, port, tmp_path / "multi") for rank in (0, 1)]
    outs = [n.communicate(timeout=600) for n in nodes]
    for n, (out, err) in zip(nodes, outs):
        assert n.returncode == 0, err[-3000:]
    docs = [json.loads(d) for out, _ in outs for d in _json_docs(out)]
    summary = [d for d in docs if "cache" in d]
    ranks = [d for d in docs if "rank" in d]
    assert len(summary) == 1 and len(ranks) == 1 and summary[0]["world_size"] == 2
    assert summary[0]["images"] == 18 and summary[0]["extracted"] + ranks[0]["extracted"] == 18
    assert ranks[0]["extracted"] > 0 and summary[0]["extracted"] > 0  # both nodes did part of the work
    assert not (tmp_path / "multi" / "caches" / f"{summary[0]['fingerprint']}.parts").exists()
    _same_cache(_single_cache(tmp_path, labels), Project.open(tmp_path / "multi").open_cache())


def test_a_node_dies_mid_way_and_extract_resumes_without_losing_work(tmp_path):
    """Node 1 is killed (SIGKILL, its whole process group) once the job runs; node 0 fails at
    the end (its peer is gone) and its finished batches stay as shards. `loff extract` run
    again (here on one machine; on the cluster the same job again) computes only the rest and
    gives the same cache as one uninterrupted process."""
    import signal
    import time

    labels = write_synthetic_dataset(tmp_path / "img", n_patients=9, size=(64, 52), seed=2)
    project = tmp_path / "multi"
    assert main(["import", str(project), str(tmp_path / "img"), "--labels", str(labels),
                 "--label-column", "masking_level", "--quiet"]) == 0
    port = _free_port()
    # a short wait for the vanished peer, so node 0 gives up in seconds, not torch's 30 minutes
    nodes = [_node(rank, port, project, {"LOFF_DIST_TIMEOUT": "20"}) for rank in (0, 1)]
    caches = project / "caches"
    deadline = time.monotonic() + 300
    while not any(caches.glob("*.parts")) and time.monotonic() < deadline:  # both joined, backbone loaded
        time.sleep(0.02)
    os.killpg(nodes[1].pid, signal.SIGKILL)  # node 1 dies
    nodes[1].communicate(timeout=60)
    try:
        nodes[0].communicate(timeout=300)
    except subprocess.TimeoutExpired:  # a peer that vanished can leave gloo waiting: the job is killed
        os.killpg(nodes[0].pid, signal.SIGKILL)
        nodes[0].communicate(timeout=60)
    print(f"node 0 exit {nodes[0].returncode} after the kill")
    parts = list(caches.glob("*.parts"))
    kept = len([p for p in parts[0].glob("*") if not p.name.startswith(".")]) if parts else 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    again = subprocess.run([sys.executable, "-m", "loff_core.cli", "extract", str(project), *TINY, "--quiet",
                            "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    out = json.loads(again.stdout)
    print(f"kept shards {kept}; resumed: {out['skipped']} skipped, {out['extracted']} extracted")
    assert out["images"] == 18 and not out["failed"] and out["skipped"] + out["extracted"] == 18
    if nodes[0].returncode != 0 and kept:  # the job did not finish: the batches it finished were reused
        assert out["skipped"] > 0 and out["extracted"] < 18
    _same_cache(_single_cache(tmp_path, labels), Project.open(project).open_cache())
