"""The one-item "latest frame wins" slot that joins live's threads, and the end-of-stream signal.

A threading primitive, nothing live-specific: ``put`` never blocks and never queues, so a slow
reader only ever sees the newest item.
"""
from __future__ import annotations

import threading
from typing import Any


class SourceEnded(Exception):
    """A file source reached its end (not an error: the session stops normally)."""


class LatestSlot:
    """Holds at most one item; ``put`` replaces an unread one (counted in ``dropped``), ``take`` waits for a new one.

    ``close(exc)`` ends the stream: waiting takers wake, and once the last item is read they get
    ``exc`` raised (``None`` -> :class:`SourceEnded`).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._fresh = False
        self._closed = False
        self._error: BaseException | None = None
        self.put_count = 0
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._fresh:
                self.dropped += 1
            self._item, self._fresh = item, True
            self.put_count += 1
            self._cond.notify_all()

    def take(self, timeout: float | None = None) -> Any:
        """The newest unread item; ``None`` after ``timeout`` seconds without one."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._fresh or self._closed, timeout):
                return None
            if self._fresh:
                self._fresh = False
                return self._item
            raise self._error if self._error is not None else SourceEnded()

    def poll(self) -> Any:
        """The newest unread item or ``None``, without waiting (raises like :meth:`take` once closed and empty)."""
        return self.take(timeout=0)

    @property
    def pending(self) -> int:
        """Unread items: 0 or 1, never more, however slow the reader."""
        return int(self._fresh)

    def close(self, error: BaseException | None = None) -> None:
        with self._cond:
            if not self._closed:
                self._closed, self._error = True, error
            self._cond.notify_all()
