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


def oom_once(at_batch_size: int) -> tuple:
    """A training fault injector (`training._FAULT_INJECTOR`) that raises CUDA out of memory
    once, at the first step with this batch size; returns (injector, list of raises)."""
    import torch

    raised: list[int] = []

    def inject(batch_size: int) -> None:
        if batch_size == at_batch_size and not raised:
            raised.append(batch_size)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
    return inject, raised


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
