"""Progress, partial results and cooperative cancellation for long engine jobs: the one
channel between a job and whoever watches it (in the spirit of Orange's TaskState).

Every long function in `loff_core` takes a `Progress`. As it goes it calls
`progress.report(done, total, message)`, `progress.partial(kind, value)` for each partial
result a watcher may show before the end (an epoch's curve point, a finished fold, a
scored tuning trial: see `PARTIAL_KINDS`), and `progress.check()` between batches; `check()`
raises `Cancelled` once somebody asked to drop the job, and `stop_requested` turns true once
somebody asked it to finish early and keep what it has. Who cancels or stops (the GUI's
buttons, Ctrl-C in the CLI) only calls `cancel()` / `request_stop()`; who works only reads.

A part of a job gets a child (`child`, or `linked` with its own count mapping): its reports
map into the parent's, and it SHARES the parent's cancel and Stop flags (a Stop asked after
the child was made reaches it) and passes notices and partial results up to the parent.

The CLI wraps this in a tqdm bar on stderr; the app's worker bridge (`app.workers.Job`)
turns reports, notices and partial results into Qt signals. A plain `Progress()` is silent
and never cancelled, handy in tests and scripts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

ReportFn = Callable[[int, int, str], None]

#: the partial results the engine sends, and what each value is
PARTIAL_KINDS = {
    "epoch": "one training epoch's history entry (train_loss, val_loss, the monitor, lr, ...), as in run.json",
    "fold": "a finished cross-validation fold: {fold, folds, label, metrics} (label names the tuning trial)",
    "trial": "a scored tuning configuration: {config, cv, per_fold, best_epochs, fold_extra} (+ trial: its number "
             "in the study, pruned: true when it stopped after its first folds)",
}


@dataclass(frozen=True)
class Partial:
    """One partial result of a job: `kind` (one of PARTIAL_KINDS) and its value."""

    kind: str
    value: Any


class Cancelled(Exception):
    """Raised by `Progress.check()` when the job was asked to stop."""


@dataclass
class Progress:
    """Reports, partial results, a cancel flag and a Stop flag, shared between a job (and its
    parts) and whoever watches it."""

    on_report: Optional[ReportFn] = None
    #: called with a message the user must see at once while the job goes on (e.g. "GPU out
    #: of memory: retrying with batch size 8"); the app shows it as a warning
    on_notice: Optional[Callable[[str], None]] = None
    #: called with a line the user should see at once that is no warning (a plan, an estimate,
    #: "resuming the study"); the app shows it as a note. Unset: `on_notice` gets it.
    on_info: Optional[Callable[[str], None]] = None
    #: called with each `Partial` result (an epoch, a fold, a trial), on the job's thread
    on_partial: Optional[Callable[[Partial], None]] = None
    _event: threading.Event = field(default_factory=threading.Event, repr=False)  # cancel
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)  # Stop: keep what is done
    _last: tuple[int, int, str] = (0, 0, "")
    started: float = field(default_factory=time.monotonic)

    def report(self, done: int, total: int, message: str = "") -> None:
        self._last = (done, total, message)
        if self.on_report is not None:
            self.on_report(done, total, message)

    def notice(self, message: str) -> None:
        """Report `message` (it shows where progress shows) and flag it as a notice."""
        self.report(self._last[0], self._last[1], message)
        self._send_notice(message)

    def _send_notice(self, message: str) -> None:
        if self.on_notice is not None:
            self.on_notice(message)

    def inform(self, message: str) -> None:
        """Like `notice`, for a line that is no warning (what the job plans, what it will cost)."""
        self.report(self._last[0], self._last[1], message)
        self._send_info(message)

    def _send_info(self, message: str) -> None:
        if self.on_info is not None:
            self.on_info(message)
        else:
            self._send_notice(message)

    def partial(self, kind: str, value: Any) -> None:
        """Hand a partial result to whoever watches (see PARTIAL_KINDS)."""
        self._send_partial(Partial(kind, value))

    def _send_partial(self, item: Partial) -> None:
        if self.on_partial is not None:
            self.on_partial(item)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def request_stop(self) -> None:
        """Ask the job to finish early and keep what it has (best head so far, done images);
        every part of the job made from this Progress sees it, before or after."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()

    @property
    def last(self) -> tuple[int, int, str]:
        return self._last

    def linked(self, on_report: Optional[ReportFn], *, stop: bool = True) -> "Progress":
        """A Progress for a part of this job with its own report callback (which maps the
        part's counts into this one's); it shares this one's cancel flag and, unless `stop`
        is False (a part that must run to its end), its Stop flag; its notices and partial
        results reach this one's watchers."""
        return Progress(on_report=on_report, on_notice=self._send_notice, on_info=self._send_info,
                        on_partial=self._send_partial,
                        _event=self._event, _stop=self._stop if stop else threading.Event())

    def child(self, offset: int, total: int) -> "Progress":
        """A part whose counts map into [offset, offset + its own total] of an overall
        `total` (see `linked`)."""
        def forward(done: int, sub_total: int, message: str) -> None:
            self.report(offset + done, total, message)

        return self.linked(forward)


class TimeLeft:
    """A steady "time left" for a job done in batches (issue 20: the window's estimate swung
    between 2,100 and 3,300 s on 5,840 images).

    The rate is an exponential moving average of seconds per item over batches, each batch
    weighted by its size (weight `alpha` per `unit` items, so small and large batches count
    alike: with the defaults the last ~350 items carry two thirds of it; before that many
    items it is their plain mean); the first batch, which pays warm-up costs (worker start,
    first allocations), only seeds it and is replaced as soon as later batches come.
    `update(done, now)` takes the count done so far and a clock reading; times are injected,
    so tests drive it with synthetic clocks."""

    def __init__(self, total: int, start: float, *, alpha: float = 0.05, unit: int = 16):
        self.total = total
        self.alpha, self.unit = alpha, max(1, unit)
        self._last_done = 0
        self._last_time = start
        self._per_item: Optional[float] = None
        self._counted = 0  # items in the average since the warm-up batch
        self._batches = 0

    def update(self, done: int, now: float) -> None:
        items = done - self._last_done
        if items <= 0:
            return
        per_item = max(now - self._last_time, 0.0) / items
        self._batches += 1
        if self._per_item is None or self._batches == 2:  # the second batch replaces the warm-up one
            self._per_item, self._counted = per_item, items
        else:
            self._counted += items
            # a plain running mean until the average holds as many items as the moving
            # average's memory, then the moving average (so the start is not one batch's luck)
            weight = max(1.0 - (1.0 - self.alpha) ** (items / self.unit), items / self._counted)
            self._per_item += weight * (per_item - self._per_item)
        self._last_done, self._last_time = done, now

    @property
    def batches(self) -> int:
        """Batches seen so far."""
        return self._batches

    @property
    def rate(self) -> float:
        """Items per second (0 before the first batch)."""
        return 1.0 / self._per_item if self._per_item else 0.0

    def seconds_left(self, done: Optional[int] = None) -> Optional[float]:
        if self._per_item is None:
            return None
        done = self._last_done if done is None else done
        return max(0, self.total - done) * self._per_item


def format_duration(seconds: float) -> str:
    """12 s, 4 min 10 s, 1 h 05 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def rough_duration(seconds: float) -> str:
    """An estimate, rounded as a person would say it: 45 s, 12 min, 1.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def parse_duration(text: str) -> float:
    """Seconds from '90', '90s', '3m', '1.5h' (a time budget on the command line); ValueError otherwise."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 3m, 1h)")
    return float(m.group(1)) * {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
