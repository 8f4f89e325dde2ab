"""Run `loff` in-process the way a script would, and read its JSON (shared by the tests)."""

from __future__ import annotations

import json

from loff_core.cli import main


def loff_json(capsys, *args: object) -> dict:
    """`loff ARGS --json --quiet`; fails the test with loff's own message on a non-zero exit."""
    capsys.readouterr()
    code = main([str(a) for a in args] + ["--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, f"loff {args[0]} failed: {captured.err}"
    return json.loads(captured.out)


def oom_once(at_batch_size: int | None = None) -> tuple:
    """A training-step fault (see `train_step_faults`) that raises CUDA out of memory once, at
    the first step of this many images (None: the first step); returns (fault, list of the
    step sizes it raised at)."""
    import torch

    raised: list[int] = []

    def inject(batch_size: int) -> None:
        if (at_batch_size is None or batch_size == at_batch_size) and not raised:
            raised.append(batch_size)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
    return inject, raised


class Faults:
    """What a fault fixture calls (`fn`); setting `fn` (None: nothing) restarts its count."""

    def __init__(self) -> None:
        self._fn = None
        self.count = 0

    @property
    def fn(self):
        return self._fn

    @fn.setter
    def fn(self, value) -> None:
        self._fn, self.count = value, 0


def train_step_faults(monkeypatch) -> Faults:
    """Before every training step, `faults.fn(n)` with the step's number of images (e.g. to
    raise a GPU out-of-memory). Wraps `training._read` where a training step reads its batch;
    validation and prediction read under inference mode and are left alone. No hook in the
    engine: the fixture wraps a real function."""
    import torch

    from loff_core import training

    faults, real = Faults(), training._read

    def read(source, indices, device, grid=True):
        if faults.fn is not None and not torch.is_inference_mode_enabled():
            faults.fn(len(indices))
        return real(source, indices, device, grid)
    monkeypatch.setattr(training, "_read", read)
    return faults


def extraction_faults(monkeypatch) -> Faults:
    """`faults.fn(stage, n)` during extraction: stage "forward" before each backbone forward
    pass (n: its images; e.g. a CUDA out-of-memory), stage "write" before each feature shard
    is written (n: 0 for the first shard this extraction writes; e.g. a full disk). Wraps
    the forward engines (`FrozenBackbone.blocks_tokens`, which the torch engine and `tokens`
    call, and the ONNX Runtime engine) and `cache._write_shard`."""
    from loff_core import cache
    from loff_core.backbones import FrozenBackbone
    from loff_core.engines import OnnxRuntimeEngine

    faults, write = Faults(), cache._write_shard

    def wrap(fn):
        def forward(self, batch):
            if faults.fn is not None:
                faults.fn("forward", len(batch))
            return fn(self, batch)
        return forward
    monkeypatch.setattr(OnnxRuntimeEngine, "__call__", wrap(OnnxRuntimeEngine.__call__))
    forward = wrap(FrozenBackbone.blocks_tokens)

    def write_shard(*args, **kwargs):
        if faults.fn is not None:
            n, faults.count = faults.count, faults.count + 1
            faults.fn("write", n)
        return write(*args, **kwargs)
    monkeypatch.setattr(FrozenBackbone, "blocks_tokens", forward)
    monkeypatch.setattr(cache, "_write_shard", write_shard)
    return faults


def binary_png_project(tmp_path, capsys, *, normal: int = 14, pneumonia: int = 22):
    """A two-class project (class folders `normal` / `pneumonia` of noisy 40 x 40 PNGs, dark vs
    bright) imported and extracted with a random-init ViT-Tiny at 32 px (a 2 x 2 grid)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, value, n in (("normal", 60, normal), ("pneumonia", 190, pneumonia)):
        for i in range(n):
            path = tmp_path / "img" / cls / f"{cls}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(rng.normal(value, 40, (40, 40)), 0, 255).astype(np.uint8)).save(path)
    project = tmp_path / "p"
    loff_json(capsys, "import", project, tmp_path / "img")
    loff_json(capsys, "extract", project, "--backbone", "vit_tiny_patch16_224", "--random-init", "--image-size", "32",
              "--grid", "2", "--workers", "0", "--device", "cpu")
    return project


#: a random-init ViT-Tiny at 32 px, pooled to 2 x 2: the smallest real extraction
TINY = ["--backbone", "vit_tiny_patch16_224", "--random-init", "--image-size", "32", "--grid", "2", "--workers", "0"]


def trained_demo_project(root) -> object:
    """The synthetic demo (10 patients) imported, extracted with TINY and trained for one epoch.
    Tests take it from the session fixture `trained_demo` (tests/conftest.py: built once per
    test run) and work on a `copy_project` of it."""
    assert main(["demo", str(root), "--patients", "10", "--quiet", "--json"]) == 0
    assert main(["extract", str(root), *TINY, "--quiet", "--json"]) == 0
    assert main(["train", str(root), "--epochs", "1", "--quiet", "--json"]) == 0
    return root


def copy_project(src, dst):
    """A copy of project SRC at DST (its images too when they live inside it, as the demo's
    do); the lock file stays behind. A copy takes milliseconds where building takes seconds."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst
