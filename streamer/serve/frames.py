"""Frames in and out of a served session: the newest stylized frame kept for the page's tracks, the server's
source read only while a tab watches, and a browser camera's frames pushed in over WebRTC.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import cv2
import numpy as np


# -- frames out ---------------------------------------------------------------------------------
class FrameHub:
    """A session :class:`~streamer.live.outputs.Output` (steady rate) that keeps the newest frame for the tracks.

    ``viewers`` counts the tracks reading it; ``on_viewers`` hears the count change (the gate of the source).
    """

    timestamped = False

    def __init__(self, on_viewers: Callable[[int], None] | None = None) -> None:
        self.frame: np.ndarray | None = None
        self.count = 0  # frames sent, new or repeated
        self.viewers = 0
        self.closed = False
        self._on_viewers = on_viewers
        self._lock = threading.Lock()

    def send(self, frame_rgb: np.ndarray, *t_capture: float) -> None:
        self.frame = frame_rgb
        self.count += 1

    def watch(self, delta: int) -> None:
        with self._lock:
            self.viewers = max(0, self.viewers + delta)
            count = self.viewers
        if self._on_viewers is not None:
            self._on_viewers(count)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


# -- frames in ----------------------------------------------------------------------------------
class GatedSource:
    """The server's source, read only while a tab watches: an unwatched server costs nothing."""

    def __init__(self, source: Any, stop: threading.Event) -> None:
        self.inner, self.stop = source, stop
        self.width, self.height, self.fps, self.live = source.width, source.height, source.fps, source.live
        self.open = threading.Event()
        self._viewers, self._holds = 0, 0
        self._lock = threading.Lock()

    def watched(self, viewers: int) -> None:
        """The number of tabs watching now."""
        with self._lock:
            self._viewers = viewers
            self._update()

    def hold(self, delta: int) -> None:
        """+1: read even while no tab watches (a recording, a virtual camera); -1: that need ended."""
        with self._lock:
            self._holds = max(0, self._holds + delta)
            self._update()

    def _update(self) -> None:
        (self.open.set if self._viewers > 0 or self._holds > 0 else self.open.clear)()

    def read(self) -> np.ndarray | None:
        while not self.open.wait(0.1):
            if self.stop.is_set():
                return None
        return self.inner.read()

    def describe(self) -> str:
        return self.inner.describe()

    def release(self) -> None:
        self.inner.release()


class PushSource:
    """A browser's camera: frames pushed in from the WebRTC receiver, the newest one read; ``close`` ends it."""

    live = True

    def __init__(self, width: int, height: int, fps: float = 30.0) -> None:
        self.width, self.height, self.fps = width, height, fps
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._closed = False

    def push(self, rgb: np.ndarray) -> None:
        if rgb.shape[:2] != (self.height, self.width):  # the browser changed its size: keep the session's
            rgb = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
        with self._cond:
            self._frame = rgb
            self._cond.notify_all()

    def read(self) -> np.ndarray | None:
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed, timeout=5.0)
            if self._closed or self._frame is None:
                return None  # the tab went (or sent nothing for 5 s): the session ends
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def describe(self) -> str:
        return f"browser camera {self.width}x{self.height}"

    def release(self) -> None:
        self.close()
