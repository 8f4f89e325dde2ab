"""Forward engines for extraction: who runs the frozen backbone's token module (issue 20).

The features are the same whichever engine computes them (within the cache's float16
precision: tests/test_engines.py compares the engines' tokens), so the engine is NOT part
of the cache fingerprint; the cache records which engine wrote it (attribute `engine`).

    torch        PyTorch eager; CNNs in channels_last memory format (on the CPU too: 1.1-3x
                 NCHW here), bf16 autocast on CUDA
    onnxruntime  the token module exported to ONNX (in memory, a few seconds) and run by
                 ONNX Runtime's CPU provider: on the 2-core machine 2.7x torch channels_last
                 for Lite0 at 224 px and 2.4x for Lite2 at 260 px (1 thread; docs/benchmarks.md,
                 section 2), 1.5x torch eager for a ViT-S/14 in a one-off check

`choose_engine(backbone, "auto", images=N)`: CUDA -> torch; CPU -> onnxruntime when there are
at least ONNX_MIN_IMAGES images to extract (the export takes 2-4 s, which torch's slower
forward only costs after some 40-70 images) and the export works (else torch, with the
reason as a note). Threads: the engine uses `cpu_threads()` intra-op
threads (torch's setting, at most the cores this process may run on), one inter-op
thread, and ONNX Runtime's threads do not spin while waiting (on a busy machine spinning
threads steal the cores the work needs). Decode workers: see `cache._default_workers`.
"""

from __future__ import annotations

import io
import os
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


class OnnxRuntimeEngine:
    """The backbone's token module exported to ONNX in memory, run by ONNX Runtime (CPU)."""

    name = "onnxruntime"

    def __init__(self, backbone: Any, threads: Optional[int] = None):
        import onnxruntime as ort
        import torch

        self.backbone = backbone
        self.threads = threads or cpu_threads()
        module = backbone.token_module()
        size = backbone.preprocessor.image_size
        sample = torch.zeros(2, 3, size, size)
        n_out = 2 * len(backbone.blocks)
        names = [f"out{i}" for i in range(n_out)]
        buffer = io.BytesIO()
        import warnings

        import contextlib

        # redirect: on failure the exporter prints its whole graph; the reason is in the exception
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # tracer warnings about shapes taken as constants (fixed size)
            torch.onnx.export(module, (sample,), buffer, input_names=["image"], output_names=names,
                              dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                              opset_version=18, dynamo=False,
                              do_constant_folding=False)  # ONNX Runtime folds them itself; 2x faster export
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        self.label = f"onnxruntime {ort.__version__} ({self.threads} threads)"

    def __call__(self, batch: Any) -> list[tuple[Any, Any]]:
        import numpy as np
        import torch

        image = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        outs = self.session.run(None, {"image": image})
        tensors = [torch.from_numpy(o) for o in outs]
        return [(tensors[2 * i], tensors[2 * i + 1]) for i in range(len(tensors) // 2)]


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
    few = requested == "auto" and images is not None and images < ONNX_MIN_IMAGES
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
