"""The one bridge between loff_core's long jobs and Qt.

One class, `Job`, in the pattern of Orange's `FutureWatcher`: a plain engine call runs on
a worker thread, and everything it reports comes back to the GUI thread as Qt signals
of the `Job` object, which lives on the GUI thread:

- `progress(done, total, text)`; `partial(Partial)`: a partial result the engine handed to
  its `Progress` (`progress.partial(kind, value)`: an "epoch", a finished "fold", a scored
  "trial"; loff_core.progress.PARTIAL_KINDS); `notice(text)`: a report the user must see
  at once while the job goes on (e.g. "GPU out of memory: retrying with batch size 8");
- then exactly one of `finished(result)`, `failed(text)` (one line; an unexpected error
  has its traceback in the log) or `cancelled()`; then `ended()`.

The worker thread only ever emits a private signal that Qt queues to the GUI thread, and
the public signals are emitted there, on a later turn of the event loop: a caller always
connects in time (however fast the job), and any slot, a plain lambda included, runs on
the GUI thread. `stop()` asks the job to finish early and keep what it has (the best head
so far, the images already cached); `cancel()` asks it to drop the work (`Cancelled` is
raised between batches).

Two ways to run a `Job`, one API for pages:
- **heavy** (`AppState.start` -> `JobRunner`): `fn(progress, *args)` on its own QThread,
  one at a time per window: import, extract, train, evaluate, export, predict.
  Closing the window (`JobRunner.shutdown`) follows one rule: a job whose `on_close` is
  "stop" (training, extraction: they keep what is done) is stopped, as the Stop button
  does; any other job is cancelled. Never both, so the outcome does not depend on timing.
- **light** (`start_light`): `fn(*args)` in a 2-thread pool beside the heavy job: decoding
  an image for a view, explaining images, listing GPUs, importing the engine at start.
  `newest=(widget, key)` makes the newest request of a widget win (a stale job's signals
  are dropped).

`wire(job, strip=, banner=, done=, partial={kind: slot}, failed=, cancelled=)` is the one page
helper: a page says what to run (`AppState.start(name, fn)`, fn calls a step with the job's
`Progress`) and what to do with its progress, partial results, result and error; nothing
else passes between the job and the page.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import weakref
from typing import Any, Callable, Optional

from PySide6.QtCore import QObject, QThread, Signal, Slot

from loff_core.errors import LoffError, explain_file_error
from loff_core.progress import Cancelled, Partial, Progress

from .remedies import window_text

log = logging.getLogger("loff_studio")


class Job(QObject):
    """One job (heavy or light); lives on the GUI thread, its `fn` runs on a worker thread."""

    progress = Signal(int, int, str)
    partial = Signal(object)  # a loff_core.progress.Partial: kind ("epoch", "fold", "trial") and value
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    notice = Signal(str)  # a warning the user must see at once (the job goes on)
    info = Signal(str)  # a line the user should see at once that is no warning (a plan, an estimate)
    ended = Signal()  # after finished / failed / cancelled (also for a stale light job)
    _relay = Signal(str, object)  # kind, payload: emitted on the worker thread, queued to the GUI thread

    def __init__(self, name: str, fn: Callable[..., Any], *args: Any, takes_progress: bool = True, **kwargs: Any):
        super().__init__()
        self.name = name
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._takes_progress = takes_progress
        self.progress_state = Progress(on_report=self._report, on_notice=self._notice, on_info=self._info,
                                       on_partial=self._partial)
        self.thread_name: Optional[str] = None  # recorded for tests: never the GUI thread
        self.on_close = "cancel"  # or "stop": what closing the window does to this job
        self.notices: list[str] = []  # the notices already emitted (pages skip them in the result)
        self.stale = False  # a newer light job of the same widget and key replaced it
        self.done = False  # its outcome reached the GUI thread
        self._relay.connect(self._deliver)  # a queued connection: the Job lives on the GUI thread

    # -- called on the worker thread ------------------------------------------------------
    def _send(self, kind: str, payload: Any = None) -> None:
        try:
            self._relay.emit(kind, payload)
        except RuntimeError:  # the application is closing: nobody is listening any more
            pass

    def _report(self, done: int, total: int, message: str) -> None:
        self._send("progress", (int(done), int(total), str(message)))

    def _notice(self, message: str) -> None:
        self._once("notice", message)

    def _info(self, message: str) -> None:
        self._once("info", message)

    def _once(self, kind: str, message: str) -> None:
        """A notice or note, sent once per job (the pages skip `notices` in the result)."""
        if message not in self.notices:
            self.notices.append(message)
            self._send(kind, str(message))

    def _partial(self, item: Partial) -> None:
        self._send("partial", item)

    def execute(self) -> None:
        """Run `fn` here (a worker thread) and send its outcome to the GUI thread."""
        self.thread_name = threading.current_thread().name
        try:
            if self._takes_progress:
                result = self._fn(self.progress_state, *self._args, **self._kwargs)
            else:
                result = self._fn(*self._args, **self._kwargs)
        except Cancelled:
            log.info("%s cancelled", self.name)
            self._send("cancelled")
        except Exception as exc:  # noqa: BLE001 - shown as one line, details in the log
            self._send("failed", _failure_text(self.name, exc))
        else:
            self._send("finished", result)

    # -- on the GUI thread ----------------------------------------------------------------
    @Slot(str, object)
    def _deliver(self, kind: str, payload: Any) -> None:
        final = kind in ("finished", "failed", "cancelled")
        if final:
            self.done = True
            _LIVE.discard(self)
        if not self.stale:
            if kind == "progress":
                self.progress.emit(*payload)
            elif kind == "partial":
                self.partial.emit(payload)
            elif kind == "notice":
                self.notice.emit(payload)
            elif kind == "info":
                self.info.emit(payload)
            elif kind == "finished":
                self.finished.emit(payload)
            elif kind == "failed":
                self.failed.emit(payload)
            elif kind == "cancelled":
                self.cancelled.emit()
        if final:
            self.ended.emit()

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


class _JobThread(QThread):
    """The QThread of one heavy job: `run` calls the job (no event loop needed)."""

    def __init__(self, job: Job):
        super().__init__()
        self._job = job

    def run(self) -> None:
        self._job.execute()


def _join(thread: QThread, timeout_s: float, pump: bool = True) -> bool:
    """Wait for a QThread to end without holding the GIL.

    `QThread.wait()` called from Python blocks while holding the GIL; a worker thread that
    needs the GIL on its way out then deadlocks. So poll `isRunning()` and sleep (which
    releases the GIL), keeping the event loop alive."""
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
    """Runs one heavy job at a time on its own QThread and cleans up after it."""

    busy_changed = Signal(bool)

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.job: Optional[Job] = None
        self.thread: Optional[QThread] = None

    @property
    def busy(self) -> bool:
        # True until the job's outcome was handled on the GUI thread (`ended` comes after
        # `finished` / `failed` / `cancelled`, whose slots have run by then)
        return self.thread is not None

    def start(self, job: Job) -> Job:
        if self.busy:
            raise RuntimeError(f"{self.job.name if self.job else 'a job'} is still running")
        thread = _JobThread(job)
        ALL_THREADS.add(thread)
        thread.setObjectName(f"loff-{job.name}")
        job.ended.connect(self._done)
        self.job, self.thread = job, thread
        thread.start()  # its signals reach the GUI thread on a later turn of the event loop
        self.busy_changed.emit(True)
        return job

    @Slot()
    def _done(self) -> None:
        sender = self.sender()
        if sender is not None and sender is not self.job:
            return  # a late `ended` of a job `shutdown` already ended: not the job running now
        thread, self.thread = self.thread, None
        if thread is None:
            return
        _join(thread, 30.0, pump=False)  # `ended` is sent just before the thread really ends
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
        thread (window closing); its outcome is delivered meanwhile."""
        if not self.busy:
            return True
        assert self.job is not None and self.thread is not None
        if self.job.on_close == "stop":
            self.job.stop()
        else:
            self.job.cancel()
        ok = _join(self.thread, timeout_ms / 1000)
        if ok and self.thread is not None and not self.job.done:
            from PySide6.QtCore import QCoreApplication

            QCoreApplication.processEvents()  # the outcome sent just before the thread ended
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


_LIVE: "set[Job]" = set()  # light jobs in flight (kept alive until delivered)
_NEWEST: "dict[tuple[int, str], Job]" = {}
_PENDING: "set[Any]" = set()  # futures of light jobs not finished yet


def start_light(name: str, fn: Callable[..., Any], *args: Any, newest: Optional[tuple[QObject, str]] = None,
                **kwargs: Any) -> Job:
    """Run `fn(*args, **kwargs)` in the light pool (never the GUI thread) as a `Job`.
    `newest=(widget, key)`: an earlier job of the same widget and key is marked stale (its
    signals are dropped)."""
    job = Job(name, fn, *args, takes_progress=False, **kwargs)
    _LIVE.add(job)
    if newest is not None:
        key = (id(newest[0]), newest[1])
        old = _NEWEST.get(key)
        if old is not None:
            old.stale = True
        _NEWEST[key] = job
    future = _pool().submit(job.execute)
    _PENDING.add(future)
    future.add_done_callback(_PENDING.discard)
    return job


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


def load_image(owner: QObject, path: Any, callback: Callable[[Any, Optional[str]], Any]) -> Job:
    """Decode `path` as a light job; `callback(pixels, error)` runs on the GUI thread, only
    for the newest request of this `owner`. An unreadable file is `(None, reason)`."""
    from pathlib import Path

    return wire(start_light("load image", _decode, Path(path), newest=(owner, "image")),
                done=lambda out: callback(*out), failed=lambda text: callback(None, text))


# -- the page helper -----------------------------------------------------------------------
def wire(job: Optional[Job], *, strip: Any = None, banner: Any = None, done: Optional[Callable[[Any], Any]] = None,
         partial: Optional[dict[str, Callable[[Any], Any]]] = None, failed: Optional[Callable[[str], Any]] = None,
         cancelled: Optional[Callable[[], Any]] = None) -> Optional[Job]:
    """Connect a job (heavy or light) to a page: progress to its strip, failure to its
    banner (a heavy job's failure reaches the window's Messages too, from `AppState.start`)
    and to `failed`, the result to `done`, each partial result of a kind in `partial`
    ({kind: slot(value)}; other kinds are not the page's) to its slot, a cancel to
    `cancelled`. Every slot runs on the GUI thread. Returns the job (None when refused)."""
    if job is None:
        return None
    if banner is not None:
        banner.clear()
        job.failed.connect(banner.show_error)
    if strip is not None:
        job.progress.connect(strip.report)
    if partial:
        slots = dict(partial)
        job.partial.connect(lambda item: slots[item.kind](item.value) if item.kind in slots else None)
    if done is not None:
        job.finished.connect(done)
    if failed is not None:
        job.failed.connect(failed)
    if cancelled is not None:
        job.cancelled.connect(cancelled)
    return job
