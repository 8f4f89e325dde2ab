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
