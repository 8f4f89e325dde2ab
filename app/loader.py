"""Decode images off the GUI thread for the viewers (a small thread pool; the newest
request for a widget wins, stale results are dropped)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PySide6.QtCore import QObject, Signal

from loff_core.errors import UnreadableImage

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="loff-decode")
_MAX_SIDE = 2048  # views are downsampled to this for display; the engine uses full pixels up to images.decode_max_side


class _Relay(QObject):
    """Lives on the GUI thread; the pool thread emits `done`, Qt queues it to the GUI."""

    done = Signal(object, object, object)  # token, pixels, error

    def __init__(self, parent: QObject):
        super().__init__(parent)
        self.token = 0
        self.callback: Optional[Callable[..., Any]] = None
        self.done.connect(self._deliver)

    def _deliver(self, token: int, pixels: Any, error: Any) -> None:
        if token == self.token and self.callback is not None:  # stale results are dropped
            self.callback(pixels, error)


def _decode(path: Path) -> tuple[Optional[np.ndarray], Optional[str]]:
    from loff_core.images import DECODE_MAX_SIDE_MIN, load_pixels

    try:  # a huge image (a decompression bomb) is downsampled while it is decoded
        pixels = load_pixels(path, DECODE_MAX_SIDE_MIN)
    except UnreadableImage as exc:
        return None, exc.reason
    step = max(1, int(np.ceil(max(pixels.shape) / _MAX_SIDE)))
    return (pixels[::step, ::step].copy() if step > 1 else pixels), None


def load_async(owner: QObject, path: Path, callback: Callable[[Optional[np.ndarray], Optional[str]], Any]) -> None:
    """Decode `path` in the pool; `callback(pixels, error)` runs on the GUI thread, only for
    the newest request of this `owner`."""
    relay = owner.findChild(_Relay, "loff-relay")
    if relay is None:
        relay = _Relay(owner)
        relay.setObjectName("loff-relay")
    relay.token += 1
    relay.callback = callback
    token = relay.token

    def done(future: Any) -> None:
        try:
            relay.done.emit(token, *future.result())
        except RuntimeError:  # the widget was closed meanwhile
            pass
    _POOL.submit(_decode, Path(path)).add_done_callback(done)


def wait_idle() -> None:
    """Block until queued decodes finish (tests)."""
    _POOL.submit(lambda: None).result()
