"""The house (docs/architecture.md, "The house"; issue 24): the import contracts hold, and no
function grows past 100 lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    """`lint-imports` with pyproject.toml's [tool.importlinter]: every loff_core module on its
    floor, no arrow running up, no circle, the engine free of the app and Qt. Its report
    names the offending import."""
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.exists() else [sys.executable, "-c",
                                                 "import sys; from importlinter.cli import lint_imports_command; "
                                                 "sys.exit(lint_imports_command())"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
