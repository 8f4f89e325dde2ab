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
_MAX_SIDE = 2048  # views are downsampled to this for display; the engine always uses full pixels


class _Relay(QObject):
    done = Signal(object, object, object)  # token, pixels, error


_relays: dict[int, _Relay] = {}
_latest: dict[int, int] = {}


def _decode(path: Path) -> tuple[Optional[np.ndarray], Optional[str]]:
    from loff_core.images import load_pixels

    try:
        pixels = load_pixels(path)
    except UnreadableImage as exc:
        return None, exc.reason
    step = max(1, int(np.ceil(max(pixels.shape) / _MAX_SIDE)))
    return (pixels[::step, ::step].copy() if step > 1 else pixels), None


def load_async(owner: QObject, path: Path, callback: Callable[[Optional[np.ndarray], Optional[str]], Any]) -> None:
    key = id(owner)
    relay = _relays.get(key)
    if relay is None:
        relay = _relays[key] = _Relay()
        relay.setParent(owner)
    token = _latest.get(key, 0) + 1
    _latest[key] = token
    try:
        relay.done.disconnect()
    except (RuntimeError, TypeError):
        pass

    def deliver(tok: int, pixels: Any, error: Any) -> None:
        if tok == _latest.get(key):
            callback(pixels, error)
    relay.done.connect(deliver)
    future = _POOL.submit(_decode, Path(path))
    future.add_done_callback(lambda f: relay.done.emit(token, *f.result()))


def wait_idle() -> None:
    """Block until queued decodes finish (tests)."""
    _POOL.submit(lambda: None).result()
