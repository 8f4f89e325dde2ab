"""Progress reporting and cooperative cancellation for long engine jobs.

Every long function in `loff_core` takes a `Progress`. It calls `progress.report(done,
total, message)` as it goes and `progress.check()` between batches; `check()` raises
`Cancelled` once somebody asked to stop. Who cancels (the GUI's Stop button, Ctrl-C in
the CLI) only calls `progress.cancel()`; who works only calls `check()`.

The CLI wraps this in a tqdm bar on stderr; the app's worker bridge turns `report` into a
Qt signal. A plain `Progress()` is silent and never cancelled, handy in tests and scripts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

ReportFn = Callable[[int, int, str], None]

#: how a report's message starts when it is a notice: the job goes on, but the user must be
#: told at once (the GUI shows it as a warning, not only as the passing progress text)
class Cancelled(Exception):
    """Raised by `Progress.check()` when the job was asked to stop."""


@dataclass
class Progress:
    """A report callback plus a cancel flag, shared between a job and whoever watches it."""

    on_report: Optional[ReportFn] = None
    #: called with a message the user must see at once while the job goes on (e.g. "GPU out
    #: of memory: retrying with batch size 8"); the app shows it as a warning
    on_notice: Optional[Callable[[str], None]] = None
    _event: threading.Event = field(default_factory=threading.Event, repr=False)
    _last: tuple[int, int, str] = (0, 0, "")
    _stop: bool = False
    started: float = field(default_factory=time.monotonic)

    def report(self, done: int, total: int, message: str = "") -> None:
        self._last = (done, total, message)
        if self.on_report is not None:
            self.on_report(done, total, message)

    def notice(self, message: str) -> None:
        """Report `message` (it shows where progress shows) and flag it as a notice."""
        self.report(self._last[0], self._last[1], message)
        if self.on_notice is not None:
            self.on_notice(message)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def request_stop(self) -> None:
        """Ask the job to finish early and keep what it has (best head so far, done images)."""
        self._stop = True

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()

    @property
    def last(self) -> tuple[int, int, str]:
        return self._last

    def child(self, offset: int, total: int) -> "Progress":
        """A Progress for a sub-step that shares this one's cancel flag and maps its
        counts into [offset, offset + its own total] of an overall `total`."""
        parent = self

        def forward(done: int, sub_total: int, message: str) -> None:
            parent.report(offset + done, total, message)

        child = Progress(on_report=forward, on_notice=self.on_notice, _event=self._event)
        child._stop = self._stop
        return child

