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
while the job goes on. Partial results (an epoch's curves, a fold, a tuning trial) go
through `Job.emit_partial` -> `partial` (and `epoch` for training history entries).

Light jobs (`start_light`: decoding an image for a viewer, explaining one image, importing
the engine at start) run in a small pool beside the one heavy job, the way Orange's
FutureWatcher does: the pool thread hands the result to a `LightJob` that lives on the GUI
thread, whose `finished` / `failed` signals are delivered on a later turn of the event
loop, so a caller always connects them in time. `newest` keys make the newest request of a
widget win (stale results are dropped). `wire(job, ...)` is the one page helper: progress
to a strip, errors to the page's banner, the result to a slot.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import weakref
from typing import Any, Callable, Optional

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from loff_core.errors import LoffError, explain_file_error
from loff_core.progress import Cancelled, Progress

from .remedies import window_text

log = logging.getLogger("loff_studio")


class Job(QObject):
    progress = Signal(int, int, str)
    epoch = Signal(dict)  # training curves: one history entry per epoch
    partial = Signal(object)  # any partial result (an epoch, a fold, a tuning trial)
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
        self.partial.emit(dict(entry))

    def emit_partial(self, value: Any) -> None:
        self.partial.emit(value)

    @Slot()
    def run(self) -> None:
        self.thread_name = threading.current_thread().name
        try:
            result = self._fn(self.progress_state, *self._args, **self._kwargs)
        except Cancelled:
            log.info("%s cancelled", self.name)
            self.cancelled.emit()
        except Exception as exc:  # noqa: BLE001 - shown as one line, details in the log
            self.failed.emit(_failure_text(self.name, exc))
        else:
            self.finished.emit(result)

    def stop(self) -> None:
        self.progress_state.request_stop()

    def cancel(self) -> None:
        self.progress_state.cancel()


#: every worker QThread ever started (weakly held), so tests can check none is left running
ALL_THREADS: "weakref.WeakSet[QThread]" = weakref.WeakSet()


def _failure_text(name: str, exc: BaseException) -> str:
    """A job's error as the window shows it (`app.remedies.window_text`), logged: an error
    meant for the user (a `LoffError`, a full or read-only disk) as a warning, anything
    else with its traceback."""
    if isinstance(exc, LoffError) or explain_file_error(exc) is not None:
        log.warning("%s failed: %s", name, exc)
    else:
        log.error("%s: unexpected error\n%s", name, traceback.format_exc())
    return window_text(exc, job=name)


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


# -- light jobs --------------------------------------------------------------------------
_POOL = None


def _pool() -> Any:
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="loff-light")
    return _POOL


class LightJob(QObject):
    """A short call run in the light pool; lives on the GUI thread. `finished(result)` or
    `failed(text)` arrives on a later turn of the event loop, never while `start_light`
    is still running, and only if it is still the newest job of its `newest` key."""

    finished = Signal(object)
    failed = Signal(str)
    _delivered = Signal(object, object)  # result, error text (queued from the pool thread)

    def __init__(self, name: str, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.name = name
        self.stale = False
        self.done = False
        self._delivered.connect(self._deliver)

    def _deliver(self, result: Any, error: Any) -> None:
        self.done = True
        _LIVE.discard(self)
        if self.stale:
            return
        if error is not None:
            self.failed.emit(str(error))
        else:
            self.finished.emit(result)


_LIVE: "set[LightJob]" = set()  # light jobs in flight (kept alive until delivered)
_NEWEST: "dict[tuple[int, str], LightJob]" = {}


def start_light(name: str, fn: Callable[..., Any], *args: Any, newest: Optional[tuple[QObject, str]] = None,
                **kwargs: Any) -> LightJob:
    """Run `fn(*args, **kwargs)` in the light pool (never the GUI thread). `newest=(widget,
    key)`: an earlier job of the same widget and key is marked stale (its result dropped)."""
    job = LightJob(name)
    _LIVE.add(job)
    if newest is not None:
        key = (id(newest[0]), newest[1])
        old = _NEWEST.get(key)
        if old is not None:
            old.stale = True
        _NEWEST[key] = job

    def work() -> None:
        try:
            result, error = fn(*args, **kwargs), None
        except Exception as exc:  # noqa: BLE001 - one line for the user, details in the log
            result, error = None, _failure_text(name, exc)
        try:
            job._delivered.emit(result, error)
        except RuntimeError:  # the application is closing
            pass
    future = _pool().submit(work)
    _PENDING.add(future)
    future.add_done_callback(_PENDING.discard)
    return job


_PENDING: "set[Any]" = set()  # futures of light jobs not finished yet


def wait_light(timeout_s: float = 300.0) -> None:
    """Block until the light jobs started so far have run (tests); their results arrive
    when the event loop next turns."""
    from concurrent.futures import wait

    wait(list(_PENDING), timeout=timeout_s)


# -- images for the viewers --------------------------------------------------------------
_MAX_SIDE = 2048  # views are downsampled to this for display; the engine always uses full pixels


def _decode(path: Any) -> Any:
    import numpy as np

    from loff_core.errors import UnreadableImage
    from loff_core.images import DECODE_MAX_SIDE_MIN, load_pixels

    try:
        pixels = load_pixels(path, DECODE_MAX_SIDE_MIN)  # a decompression bomb is downsampled while decoded
    except UnreadableImage as exc:  # the reason only: the path may name a patient
        return None, exc.reason
    step = max(1, int(np.ceil(max(pixels.shape) / _MAX_SIDE)))
    return (pixels[::step, ::step].copy() if step > 1 else pixels), None


def load_image(owner: QObject, path: Any, callback: Callable[[Any, Optional[str]], Any]) -> LightJob:
    """Decode `path` as a light job; `callback(pixels, error)` runs on the GUI thread, only
    for the newest request of this `owner`. An unreadable file is `(None, reason)`."""
    from pathlib import Path

    job = start_light("load image", _decode, Path(path), newest=(owner, "image"))
    job.finished.connect(lambda out: callback(*out))
    job.failed.connect(lambda text: callback(None, text))
    return job


# -- the page helper -----------------------------------------------------------------------
class _OnGuiThread(QObject):
    """Calls a plain function (a lambda) on the GUI thread: connected to a signal of a job
    that lives on its worker thread, a lambda would run on that thread instead."""

    def __init__(self, fn: Callable[[Any], Any]):
        super().__init__()
        self.fn = fn

    @Slot(object)
    def call(self, value: Any) -> None:
        self.fn(value)


def _gui_slot(job: Any, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    if isinstance(getattr(fn, "__self__", None), QObject):
        return fn  # a QObject's method: Qt queues it to that object's (GUI) thread
    relay = _OnGuiThread(fn)
    job.__dict__.setdefault("_relays", []).append(relay)  # kept alive as long as the job
    return relay.call


def wire(job: Optional[Job], *, strip: Any = None, banner: Any = None, done: Optional[Callable[[Any], Any]] = None,
         partial: Optional[Callable[[Any], Any]] = None) -> Optional[Job]:
    """Connect a heavy job to a page: progress to its strip, failure to its banner (the
    window's Messages get it too, from `AppState.start`), the result to `done`, partial
    results to `partial`. Returns the job (None when it was refused)."""
    if job is None:
        return None
    if banner is not None:
        banner.clear()
        job.failed.connect(banner.show_error)
    if strip is not None:
        job.progress.connect(strip.report)
    if partial is not None:
        job.partial.connect(_gui_slot(job, partial))
    if done is not None:
        job.finished.connect(_gui_slot(job, done))
    return job
