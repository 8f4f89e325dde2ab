"""Frozen entry point shared by both executables of the bundle.

PyInstaller builds two executables from this one script (packaging/loff-studio.spec):
`loff-studio` (the window) and `loff` (the headless command). They share one analysis and
one folder of libraries; the executable's own name picks which program runs.
"""
import sys
from pathlib import Path


def _program() -> str:
    return Path(sys.executable).stem.lower()


if __name__ == "__main__":
    # DataLoader decode workers are separate processes; where they are spawned (Windows,
    # macOS) a frozen program must let a child run as a worker instead of as the program.
    import multiprocessing

    multiprocessing.freeze_support()
    if _program() == "loff":
        from loff_core.cli import main
    else:
        from app.main import main
    sys.exit(main())
