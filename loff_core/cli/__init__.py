"""The `loff` command: the whole engine from a terminal, headless.

Progress goes to stderr (a bar on long steps); with `--json` one JSON document goes to
stdout, else a short human summary. Exit status 0 on success; 1 with a one-line reason
for a problem the user can fix; 130 when interrupted (work already done is kept).

One module per command group, each adding its sub-commands to the parser: `project`
(import, info, demo), `auto` (folder to report), `extract`, `train` (train, evaluate,
calibrate), `validate` (cv, tune), `predict` (export, predict), `report`, `weights`;
`terminal` holds what they share.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from ..errors import LoffError, explain_file_error, one_line
from ..progress import Cancelled
from . import audit, auto, extract, predict, project, report, train, validate, weights
from .remedies import terminal_text


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    common.add_argument("--quiet", action="store_true", help="no progress bar")

    parser = argparse.ArgumentParser(
        prog="loff", description="LOFF Studio engine: import medical images, cache frozen-backbone features, "
                                 "train a compact head with tensor augmentations, evaluate, export, predict.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (project.add_import, extract.add_extract, train.add_train, validate.add_cv, validate.add_tune, audit.add_audit,
                train.add_evaluate, train.add_calibrate, predict.add_export, report.add_report, predict.add_predict,
                project.add_demo, project.add_info, auto.add_auto, weights.register):  # the order `loff --help` lists them in
        add(sub, common)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__



def file_error_reason(exc: BaseException, where: Optional[Path] = None) -> Optional[str]:
    """A one-line reason for a file-system error ("cannot write FILE: Read-only file
    system"), None when `exc` is no such error (`loff_core.errors.explain_file_error`)."""
    error = explain_file_error(exc, where)
    return None if error is None else str(error)



def _written_location(args: argparse.Namespace) -> Optional[Path]:
    """Where a command writes: what a file-system error that names no file is about."""
    if args.command == "export":
        return args.out_dir
    if args.command == "predict":
        return args.csv
    if args.command == "report" and args.out is not None:
        return args.out
    return getattr(args, "project", None)


def _terminate_as_interrupt() -> Any:
    """SIGTERM (a scheduler's or `kill`'s stop) ends a command like Ctrl-C: temporary files
    removed, work already finished kept, exit 130. Returns the previous handler (None when
    not in the main thread or the platform has no SIGTERM)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, interrupt)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    previous = _terminate_as_interrupt()
    try:
        return _main(args)
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    try:
        out = args.func(args)
        if hasattr(out, "to_json"):  # a step's typed record (loff_core.results)
            out = out.to_json() if args.json else out.to_dict()
    except LoffError as exc:
        print(f"loff {args.command}: {one_line(terminal_text(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - only file-system errors are turned into a reason
        reason = file_error_reason(exc, _written_location(args))
        if reason is None:
            raise
        print(f"loff {args.command}: {reason}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Cancelled):
        print(f"loff {args.command}: interrupted; work already finished is kept", file=sys.stderr)
        return 130
    if args.json:  # always valid JSON: an undefined metric (NaN) is null
        from ..trust import finite_json

        json.dump(finite_json(json.loads(json.dumps(out, default=str))), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        describe = getattr(args, "describe", None)  # every command has one (tests/test_cli_args.py)
        text = describe(out) if describe else json.dumps(out, indent=2, default=str)
        # a non-UTF-8 file name (held as surrogates) is shown with U+FFFD, never a crash
        print(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    return 0

