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
