"""Forward engines for extraction: who runs the frozen backbone's token module (issue 20).

The features are the same whichever engine computes them (within the cache's float16
precision: tests/test_engines.py compares the engines' tokens), so the engine is NOT part
of the cache fingerprint; the cache records which engine wrote it (attribute `engine`).

    torch        PyTorch eager; CNNs in channels_last memory format (on the CPU too: 1.1-3x
                 NCHW here), bf16 autocast on CUDA
    onnxruntime  the token module exported to ONNX (once per machine and backbone: the
                 graph is kept in the engine cache, `engine_cache_dir()`) and run by ONNX
                 Runtime's CPU provider: on the 2-core machine 2.7x torch channels_last
                 for Lite0 at 224 px and 2.4x for Lite2 at 260 px (1 thread; docs/benchmarks.md,
                 section 2), 1.5x torch eager for a ViT-S/14 in a one-off check

`choose_engine(backbone, "auto", images=N)`: CUDA -> torch; CPU -> onnxruntime when there are
at least ONNX_MIN_IMAGES images to extract (an export takes 1-4 s, which torch's slower
forward only costs after some 40-70 images) or the graph is cached already, and the export
works (else torch, with the reason as a note). Threads: `cpu_threads()` (torch's setting, at
most the cores this process may run on); ONNX Runtime runs N > 1 of them as N parallel
1-thread runs over pieces of the batch (`OnnxRuntimeEngine`), and its threads do not spin
while waiting (on a busy machine spinning threads steal the cores the work needs). Decode
workers: see `cache._default_workers`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Optional

from .settings import ENGINES  # noqa: F401 - engines a user can ask for (`loff extract --engine`)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_threads() -> int:
    """Intra-op threads for a CPU forward: torch's own setting (the user's OMP_NUM_THREADS
    or torch.set_num_threads), at most the cores available."""
    import torch

    return max(1, min(torch.get_num_threads(), available_cores()))


def is_vit(model: Any) -> bool:
    return hasattr(model, "patch_embed")


class TorchEngine:
    """PyTorch eager: image batch -> list of (cls [B,C], grid [B,C,h,w]) float32, one per block."""

    name = "torch"

    def __init__(self, backbone: Any):
        import torch

        self.backbone = backbone
        if backbone.device.type == "cpu" and torch.get_num_threads() > available_cores():
            torch.set_num_threads(available_cores())  # no more threads than the cores this process may use
        self.channels_last = not is_vit(backbone.model)
        if self.channels_last:
            backbone.model.to(memory_format=torch.channels_last)
        self.label = "torch channels_last" if self.channels_last else "torch"
        if backbone.device.type == "cuda":
            self.label += " bf16"

    def __call__(self, batch: Any) -> list[tuple[Any, Any]]:
        return self.backbone.blocks_tokens(batch)


#: the exported graph's ONNX opset; part of the engine cache's key
ONNX_OPSET = 18
#: bump when `backbones._TokenModule` computes something else: old cached graphs are then not used
EXPORT_FORMAT = 1
#: exported graphs kept in the engine cache (the newest; a ViT-S graph is about 90 MB)
ENGINE_CACHE_KEEP = 6


def engine_cache_dir() -> Path:
    """Where exported ONNX graphs are kept between extractions: $LOFF_ENGINE_CACHE_DIR, else
    the user cache folder (platformdirs)."""
    env = os.environ.get("LOFF_ENGINE_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("loff-studio", appauthor=False)) / "onnx"


def _graph_key(backbone: Any) -> str:
    """Names one exported graph: the backbone's fingerprint (weights, input size, grid, blocks),
    and what the export depends on beyond it (torch, the opset, this package's version)."""
    import torch

    from . import __version__

    parts = [backbone.fingerprint, torch.__version__, ONNX_OPSET, EXPORT_FORMAT, __version__, len(backbone.blocks)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def cached_graph_path(backbone: Any) -> Path:
    """Where the engine cache keeps (or would keep) `backbone`'s exported graph."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in backbone.spec.name)
    return engine_cache_dir() / f"{safe}-{_graph_key(backbone)}.onnx"


def _export(backbone: Any) -> bytes:
    """The backbone's token module as an ONNX graph (a second or two for an EfficientNet)."""
    import contextlib
    import warnings

    import torch

    module = backbone.token_module()
    size = backbone.preprocessor.image_size
    sample = torch.zeros(2, 3, size, size)
    names = [f"out{i}" for i in range(2 * len(backbone.blocks))]
    buffer = io.BytesIO()
    # redirect: on failure the exporter prints its whole graph; the reason is in the exception
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer warnings about shapes taken as constants (fixed size)
        torch.onnx.export(module, (sample,), buffer, input_names=["image"], output_names=names,
                          dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          opset_version=ONNX_OPSET, dynamo=False,
                          do_constant_folding=False)  # ONNX Runtime folds them itself; 2x faster export
    return buffer.getvalue()


def _keep_graph(path: Path, graph: bytes) -> None:
    """Write an exported graph to the engine cache (atomically) and keep only the newest
    ENGINE_CACHE_KEEP; a cache that cannot be written is simply not used."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(graph)
        os.replace(tmp, path)
        graphs = sorted(path.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in graphs[ENGINE_CACHE_KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


class OnnxRuntimeEngine:
    """The backbone's token module exported to ONNX, run by ONNX Runtime (CPU).

    The export (1-2 s for an EfficientNet, more for a ViT) is kept in the engine cache
    (`engine_cache_dir()`), so later extractions with the same backbone start at once.

    With N > 1 threads the batch is cut into N pieces run side by side, each on one thread
    of its own (`parallel=True`, the default), instead of one run over N intra-op threads:
    the pieces never wait for each other inside an operator, which on the 2-core machine
    gave 1.15-1.2x the throughput of intra-op threads at 2 threads (docs/benchmarks.md,
    section 2), and holds up better beside a decode worker or another program.
    """

    name = "onnxruntime"
    PIECES_PER_RUN = 4

    def __init__(self, backbone: Any, threads: Optional[int] = None, *, parallel: bool = True,
                 use_cache: bool = True):
        import onnxruntime as ort

        self.backbone = backbone
        self.threads = threads or cpu_threads()
        self.runs = self.threads if parallel else 1
        self.from_cache = False
        path = cached_graph_path(backbone)
        if use_cache and path.is_file():
            try:
                self.session = self._session(ort, str(path))
                self.from_cache = True
                os.utime(path)  # the newest are kept
            except Exception:  # noqa: BLE001 - a damaged or foreign file: export again
                path.unlink(missing_ok=True)
        if not self.from_cache:
            graph = _export(backbone)
            self.session = self._session(ort, graph)
            if use_cache:
                _keep_graph(path, graph)
        self._pool = None
        if self.runs > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.runs, thread_name_prefix="loff-onnx")
        how = f"{self.runs} parallel runs of 1 thread" if self.runs > 1 else f"{self.threads} threads"
        self.label = f"onnxruntime {ort.__version__} ({how})"

    def _session(self, ort: Any, graph: Any) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if self.runs > 1 else self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # the memory pattern stays on (ONNX Runtime's default): without it a shape's second run
        # is faster (Lite0, 1 thread, 16 images: 0.21 instead of 0.27 s) and one run after
        # another as fast, but `loff extract` on mini-MIAS (2 parallel runs beside the decode
        # worker) took 7.7-8.8 s (median 8.55) against 7.7-7.8 s with it (6 alternating runs each)
        options.log_severity_level = 3
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def _pieces(self, images: int) -> int:
        # more pieces than runs: a run slowed by another program (the decode worker) takes
        # fewer of them, instead of the whole batch waiting for its half
        return min(self.PIECES_PER_RUN * self.runs, images)

    def warm_up(self, batch: int, size: int) -> None:
        """One run of the input shape the runs of a `batch`-image call will get, on black
        images, output dropped: ONNX Runtime's first run of a shape is slower (it sizes its
        memory then). With parallel runs that is ONE piece on one thread, not the batch: a
        batch warm-up took both cores from the decode worker while it started (Lite2, 2
        threads: its first batch came at 0.83 s, with one piece at 0.52 s) to save 0.01-0.04 s."""
        import numpy as np

        pieces = self._pieces(batch)
        rows = batch if self._pool is None or pieces < 2 else -(-batch // pieces)
        self.session.run(None, {"image": np.zeros((rows, 3, size, size), np.float32)})

    def __call__(self, batch: Any) -> list[tuple[Any, Any]]:
        import numpy as np
        import torch

        image = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        pieces = self._pieces(len(image))
        if self._pool is None or pieces < 2:
            outs = self.session.run(None, {"image": image})
        else:  # ONNX Runtime's run releases the GIL: the pieces run at the same time
            results = list(self._pool.map(lambda x: self.session.run(None, {"image": x}),
                                          np.array_split(image, pieces)))
            outs = [np.concatenate([r[i] for r in results]) for i in range(len(results[0]))]
        tensors = [torch.from_numpy(o) for o in outs]
        return [(tensors[2 * i], tensors[2 * i + 1]) for i in range(len(tensors) // 2)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __del__(self) -> None:
        self.close()


#: "auto" uses ONNX Runtime on the CPU from this many images to extract
ONNX_MIN_IMAGES = 64


def choose_engine(backbone: Any, requested: str = "auto", notes: Optional[list[str]] = None,
                  images: Optional[int] = None) -> Any:
    """The forward engine for `backbone` on its device (see the module docstring)."""
    from .errors import BackboneError

    requested = requested or "auto"
    if requested not in ENGINES:
        raise BackboneError(f"engine {requested!r}: expected one of {', '.join(ENGINES)}")
    on_cpu = backbone.device.type == "cpu"
    if requested == "onnxruntime" and not on_cpu:
        raise BackboneError(f"engine onnxruntime runs on the CPU; the device here is {backbone.device}")
    # few images: the export would cost more than ONNX Runtime saves, unless it is cached
    few = (requested == "auto" and images is not None and images < ONNX_MIN_IMAGES
           and not cached_graph_path(backbone).is_file())
    if requested == "torch" or not on_cpu or few:
        return TorchEngine(backbone)
    try:
        return OnnxRuntimeEngine(backbone)
    except Exception as exc:  # noqa: BLE001 - an operator ONNX lacks, onnxruntime missing: torch does it
        if requested == "onnxruntime":
            raise BackboneError(f"engine onnxruntime: the backbone {backbone.spec.name} does not run in ONNX "
                                f"Runtime ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        if notes is not None:
            notes.append(f"ONNX Runtime could not run {backbone.spec.name} ({type(exc).__name__}); "
                         f"extracting with PyTorch")
        return TorchEngine(backbone)
