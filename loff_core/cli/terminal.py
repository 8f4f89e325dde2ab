"""What every `loff` command group shares: the progress bar on stderr, notes, argparse
types and the metric lines of `evaluate` / `predict`."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional

from ..progress import Progress


class TerminalProgress:
    """A tqdm bar on stderr fed by a `Progress`. When stderr is not a terminal (a log file,
    CI), no bar: one plain line at most every 10 seconds and at the end, so logs stay
    readable."""

    LOG_INTERVAL = 10.0

    def __init__(self, desc: str, quiet: bool = False):
        import time

        self.desc, self.quiet = desc, quiet
        self._bar = None
        self._tty = sys.stderr.isatty()
        self._clock = time.monotonic
        self._last_line = -1e9
        self._last: tuple[int, int, str] = (0, 0, "")
        self._printed: Optional[tuple[int, int, str]] = None  # the state the last plain line showed
        self.progress = Progress(on_report=self._on_report, on_notice=self._on_notice)

    def _on_notice(self, message: str) -> None:
        """A notice (e.g. extract's estimate from its first batch) is a line of its own, at once."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(f"{self.desc}: {message}", file=sys.stderr)
        else:
            print(f"{self.desc}: {message}", file=sys.stderr, flush=True)

    def _on_report(self, done: int, total: int, message: str) -> None:
        if self.quiet:
            return
        self._last = (done, total, message)
        if not self._tty:
            now = self._clock()
            if now - self._last_line >= self.LOG_INTERVAL:
                self._last_line = now
                self._print_line()
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total or None, desc=self.desc, file=sys.stderr, leave=True,
                             dynamic_ncols=True, mininterval=0.5)
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def _print_line(self) -> None:
        done, total, message = self._printed = self._last
        count = f"{done}/{total}" if total else str(done)
        print(f"{self.desc}: {count} {message}".rstrip(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self.quiet and not self._tty and self._last not in ((0, 0, ""), self._printed):
            self._print_line()  # the last state, unless the line before already showed it


def run_with_progress(desc: str, quiet: bool, fn: Callable[[Progress], Any]) -> Any:
    terminal = TerminalProgress(desc, quiet)
    try:
        return fn(terminal.progress)
    except KeyboardInterrupt:
        terminal.progress.cancel()
        raise
    finally:
        terminal.close()


def print_notes(command: str, notes: list[str]) -> None:
    """What a step did differently (e.g. a smaller batch after a GPU out-of-memory): on
    stderr even with --quiet, since it can change results and speed."""
    for note in notes:
        print(f"loff {command}: note: {note}", file=sys.stderr)


def metric_lines(out: dict[str, Any]) -> list[str]:
    lines = []
    for name, value in out["metrics"].items():
        ci = out.get("ci", {}).get(name)
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(f"  {name:22s} {shown}" + (f"  [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    lines.append("confusion matrix (rows true, columns predicted): " + " ".join(out["classes"]))
    lines += ["  " + " ".join(f"{v:4d}" for v in row) for row in out["confusion_matrix"]]
    from ..calibration import decision_line, describe

    lines.append(f"decision: {describe(out.get('operating_point'))}")
    lines.append(decision_line(out.get("operating_point"), out.get("task", "classification"), len(out["classes"])))
    pc = out.get("per_class_auc") or {}
    if pc and len(out["classes"]) > 2:
        lines.append("per-class AUC (one vs rest): " + ", ".join(
            f"{c} {v['auc']:.3f}" + (f" [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" if v.get("ci") else "")
            for c, v in pc.items() if v.get("auc") is not None))
    lines += [f"warning: {w}" for w in out.get("warnings", [])]
    return lines


#: what each metric name of `evaluate` / `cv` / `tune` means (shown in --help and docs/cli.md)
METRICS_HELP = ("Metrics: accuracy (share right); balanced_accuracy (mean recall over classes); auc (ROC AUC; "
                "macro one-vs-rest over classes); binary classification also: sensitivity and specificity (recall of the "
                "positive / negative class at the run's operating point); ordinal tasks also: kendall_tau (Kendall's tau-b between true and "
                "predicted levels), kendall_tau_score (tau-b between true level and the expected level, a "
                "continuous score: no ties from rounding), amae (mean absolute error per true level, averaged), "
                "mae, accuracy_within_1 (predicted level at most one off).")

def at_least(low: float, kind: type = int) -> Any:
    """argparse type: a number >= low (a clear usage error instead of a traceback later)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < low or (kind is float and value != value):
            raise argparse.ArgumentTypeError(f"{text} is too small (at least {low})")
        return value
    return parse


def declared(args: argparse.Namespace, cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings of `cls` given on the command line (options left out or None: the
    declaration's default holds)."""
    from dataclasses import fields

    return {f.name: getattr(args, f.name) for f in fields(cls)
            if f.name not in skip and getattr(args, f.name, None) is not None}
