"""Shared helpers for the benchmark scripts: machine info, markdown tables, peak memory,
subprocess workers, medians. Nothing here re-implements the engine (`loff_core`)."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

if os.environ.get("LOFF_BENCH_THREADS"):  # set by --threads in the parent; applies to worker processes
    import torch as _torch

    _torch.set_num_threads(int(os.environ["LOFF_BENCH_THREADS"]))


def apply_threads(n: Optional[int]) -> None:
    """--threads N: torch intra-op threads here and in every worker process this run starts."""
    if n:
        import torch

        torch.set_num_threads(n)
        os.environ["LOFF_BENCH_THREADS"] = str(n)

# Dense bf16 tensor-core peak (no sparsity), FLOP/s, from NVIDIA's data sheets.
PEAK_BF16_FLOPS = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "A100": 312e12,
}


def peak_bf16_for(device_name: str) -> Optional[float]:
    name = device_name.upper()
    if "H200" in name:
        return PEAK_BF16_FLOPS["H200"]
    if "H100" in name:
        if "PCIE" in name:
            return PEAK_BF16_FLOPS["H100 PCIe"]
        if "NVL" in name:
            return PEAK_BF16_FLOPS["H100 NVL"]
        return PEAK_BF16_FLOPS["H100 SXM"]
    if "A100" in name:
        return PEAK_BF16_FLOPS["A100"]
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        info["timm"] = None
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["ram_gib"] = round(int(mem) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_block(info: dict[str, Any]) -> str:
    keys = ["date", "cpu", "cores", "torch_threads", "ram_gib", "python", "torch", "timm", "device", "gpu"]
    return "\n".join(f"- {k}: {info[k]}" for k in keys if k in info)


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if x != x:
            return "nan"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.1f}"
        return f"{x:.{digits}g}"
    return str(x)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else float("nan")


# -- memory -----------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> int:
    """Reset this process's VmHWM to its current RSS (Linux clear_refs '5'); returns RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """Peak resident set size of this process so far (VmHWM), bytes."""
    return _status_kib("VmHWM") * 1024


def preimport() -> None:
    """Import the heavy libraries up front so that their code pages do not count as a
    variant's peak memory increase."""
    import h5py  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import timm  # noqa: F401
    import torch
    import torchvision.transforms.v2  # noqa: F401

    import loff_core.backbones, loff_core.cache, loff_core.heads, loff_core.training  # noqa: E401,F401

    torch.nn.functional.linear(torch.zeros(2, 2, requires_grad=True), torch.zeros(2, 2)).sum().backward()


class MemoryMeter:
    """Peak memory increase of the work between start() and stop(): on CUDA
    torch.cuda.max_memory_allocated; on the CPU the VmHWM increase over the RSS at start."""

    def __init__(self, device: str):
        self.device = device

    def start(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = reset_peak_rss()

    def stop(self) -> dict[str, Any]:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return {"peak_bytes": int(torch.cuda.max_memory_allocated() - self.base),
                    "peak_kind": "cuda max_memory_allocated"}
        return {"peak_bytes": int(peak_rss() - self.base), "peak_kind": "peak RSS increase (VmHWM)"}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class Timer:
    def __init__(self, device: str = "cpu"):
        self.device = device

    def __enter__(self) -> "Timer":
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.t0


# -- workers ------------------------------------------------------------------------------
def run_worker(script: Path, task: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run `script --_worker JSON` in a fresh Python process; return the JSON it prints last."""
    import tempfile

    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="loff-bench-task-", delete=False) as fh:
        json.dump(task, fh)  # a file, not argv: 20,000 paths exceed the argument length limit
    try:
        proc = subprocess.run([sys.executable, str(script), "--_worker", "@" + fh.name],
                              capture_output=True, text=True, timeout=timeout, env=env)
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {task.get('kind')} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"worker {task.get('kind')} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def load_task(arg: str) -> dict[str, Any]:
    """The task of a worker process: `@FILE` (what run_worker passes) or inline JSON."""
    if arg.startswith("@"):
        return json.loads(Path(arg[1:]).read_text())
    return json.loads(arg)


def write_json(path: Optional[str], data: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2, default=str))


def mib(n: Optional[float]) -> Optional[float]:
    return None if n is None else n / 2**20


def synthetic_items(folder: Path, n_images: int, size: tuple[int, int], syntaxes: Optional[Sequence[str]] = None,
                    seed: int = 0) -> tuple[list[tuple[str, Path]], list[int]]:
    """Write (or reuse) a synthetic DICOM dataset with the engine; (image_id, path) items + labels 0..7."""
    import csv

    from loff_core.synthetic import write_synthetic_dataset

    folder = Path(folder)
    labels = folder / "labels.csv"
    if not labels.exists():
        n_patients = max(1, (n_images + 1) // 2)
        write_synthetic_dataset(folder, n_patients=n_patients, size=size, seed=seed, syntaxes=syntaxes)
    with open(labels, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:n_images]
    items = [(f"img{i:06d}", folder / r["file"]) for i, r in enumerate(rows)]
    ys = [int(r["masking_level"]) - 1 for r in rows]
    return items, ys


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark script takes: --quick, --smoke, --device, --threads,
    --json (and the hidden --_worker used to run one measurement in a fresh process)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small, CI-safe run")
    p.add_argument("--smoke", action="store_true", help="even smaller (tests)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's); 1 is far faster for small ops on a busy CPU")
    p.add_argument("--json", default=None)
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    return p


def parse_bench_args(p: argparse.ArgumentParser, argv: Optional[list[str]],
                     worker: Optional[Any] = None) -> Optional[argparse.Namespace]:
    """Parse, apply --threads; in a `--_worker` process run `worker(task)`, print its JSON
    result and return None (the caller then exits 0)."""
    args = p.parse_args(argv)
    apply_threads(args.threads)
    if args._worker:
        if worker is None:
            p.error("this benchmark has no worker processes")
        task = load_task(args._worker)
        preimport()
        print(json.dumps(worker(task)))
        return None
    return args
