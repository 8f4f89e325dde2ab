"""The one bridge between loff_core's long jobs and Qt.

A `Job` wraps a plain engine call `fn(progress, *args)`; it is moved to its own QThread
and turns the engine's `Progress` reports into Qt signals. `stop()` asks the job to finish
early and keep what it has (the best head so far, the images already cached); `cancel()`
asks it to drop the work (`Cancelled` is raised between batches). The GUI thread never
runs `fn` itself. `JobRunner` owns at most one running job per window.

Closing the window (`JobRunner.shutdown`) follows one rule: a job whose `on_close` is
"stop" (training, extraction: they keep what is done) is stopped, as the Stop button does;
any other job is cancelled. Never both, so the outcome does not depend on timing.

Engine notices (`Progress.notice`, e.g. "GPU out of memory: retrying with batch size 8")
are also emitted as `notice` the moment they happen, so the window shows them as warnings
while the job goes on.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import weakref
from typing import Any, Callable, Optional

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from loff_core.errors import LoffError
from loff_core.progress import Cancelled, Progress

log = logging.getLogger("loff_studio")


class Job(QObject):
    progress = Signal(int, int, str)
    epoch = Signal(dict)  # training curves: one history entry per epoch
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    notice = Signal(str)  # a report the user must see at once (the job goes on)

    def __init__(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        super().__init__()
        self.name = name
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self.progress_state = Progress(on_report=self._report, on_notice=self._notice)
        self.thread_name: Optional[str] = None  # recorded for tests: never the GUI thread
        self.on_close = "cancel"  # or "stop": what closing the window does to this job
        self.notices: list[str] = []  # the notices already emitted (pages skip them in the result)

    def _report(self, done: int, total: int, message: str) -> None:
        self.progress.emit(int(done), int(total), str(message))

    def _notice(self, message: str) -> None:
        if message not in self.notices:
            self.notices.append(message)
            self.notice.emit(str(message))

    def emit_epoch(self, entry: dict) -> None:
        self.epoch.emit(dict(entry))

    @Slot()
    def run(self) -> None:
        self.thread_name = threading.current_thread().name
        try:
            result = self._fn(self.progress_state, *self._args, **self._kwargs)
        except Cancelled:
            log.info("%s cancelled", self.name)
            self.cancelled.emit()
        except LoffError as exc:
            log.warning("%s failed: %s", self.name, exc)
            self.failed.emit(str(exc))
        except Exception as exc:  # noqa: BLE001 - shown as one line, details in the log
            log.error("%s: unexpected error\n%s", self.name, traceback.format_exc())
            self.failed.emit(f"Unexpected error in {self.name}: {type(exc).__name__}: {exc} (details in the log)")
        else:
            self.finished.emit(result)

    def stop(self) -> None:
        self.progress_state.request_stop()

    def cancel(self) -> None:
        self.progress_state.cancel()


#: every worker QThread ever started (weakly held), so tests can check none is left running
ALL_THREADS: "weakref.WeakSet[QThread]" = weakref.WeakSet()


def _join(thread: QThread, timeout_s: float, pump: bool = True) -> bool:
    """Wait for a QThread to end without holding the GIL.

    `QThread.wait()` called from Python blocks while holding the GIL; a worker thread that
    needs the GIL on its way out (emitting `finished` to Python slots) then deadlocks. So
    poll `isRunning()` and sleep (which releases the GIL), keeping the event loop alive."""
    from PySide6.QtCore import QCoreApplication

    deadline = time.monotonic() + timeout_s
    while thread.isRunning():
        if time.monotonic() > deadline:
            return False
        if pump:
            QCoreApplication.processEvents()
        time.sleep(0.005)
    return True


def running_threads() -> list[QThread]:
    out = []
    for t in list(ALL_THREADS):
        try:
            if t.isRunning():
                out.append(t)
        except RuntimeError:  # C++ object already deleted
            pass
    return out


class JobRunner(QObject):
    """Starts one job at a time on a QThread and cleans up after it."""

    busy_changed = Signal(bool)

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.job: Optional[Job] = None
        self.thread: Optional[QThread] = None

    @property
    def busy(self) -> bool:
        # True until `_done` ran on the GUI thread: the job's own result signals were queued
        # before the thread's `finished`, so pages have handled them when busy turns False.
        return self.thread is not None

    def start(self, job: Job) -> Job:
        if self.busy:
            raise RuntimeError(f"{self.job.name if self.job else 'a job'} is still running")
        thread = QThread()
        ALL_THREADS.add(thread)
        thread.setObjectName(f"loff-{job.name}")
        job.moveToThread(thread)
        thread.started.connect(job.run)
        for signal in (job.finished, job.failed, job.cancelled):
            signal.connect(thread.quit)
        thread.finished.connect(self._done)
        self.job, self.thread = job, thread
        # started on the next turn of the event loop, so the caller connects the job's
        # signals (progress, finished) before the job can emit them, however fast it is
        QTimer.singleShot(0, lambda: thread.start() if self.thread is thread else None)
        self.busy_changed.emit(True)
        return job

    @Slot()
    def _done(self) -> None:
        sender = self.sender()
        if sender is not None and sender is not self.thread:
            return  # a late `finished` of a thread `shutdown` already ended: not the job running now
        thread, self.thread = self.thread, None
        if thread is None:
            return
        _join(thread, 30.0, pump=False)  # `finished` is emitted just before the thread really ends
        thread.deleteLater()
        self.busy_changed.emit(False)

    def stop(self) -> None:
        if self.job is not None and self.busy:
            self.job.stop()

    def cancel(self) -> None:
        if self.job is not None and self.busy:
            self.job.cancel()

    def shutdown(self, timeout_ms: int = 120_000) -> bool:
        """Stop (`on_close == "stop"`) or else cancel the running job, and wait for its
        thread (window closing)."""
        if not self.busy:
            return True
        assert self.job is not None and self.thread is not None
        if self.job.on_close == "stop":
            self.job.stop()
        else:
            self.job.cancel()
        ok = _join(self.thread, timeout_ms / 1000)
        self._done()
        return ok
