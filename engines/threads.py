"""Joining a thread whose ``start()`` a signal may have cut short.

Ctrl-C or SIGTERM raise in the main thread wherever it is, inside ``Thread.start()`` too: the new thread may
then be running, about to run, or never have started, and a plain ``join()`` raises RuntimeError ("cannot join
thread before it is started") in the clean-up that should finish the user's file.
"""
from __future__ import annotations

import threading

#: how long a thread cut short in its start() is given to come up (it starts within microseconds when it does)
START_WAIT_S = 1.0


def came_up(thread: threading.Thread) -> bool:
    """Whether a thread whose ``start()`` was called runs or ran (waiting briefly if a signal cut it short)."""
    # Thread has no public "started" that holds while start() is cut short; its own event says it
    return thread._started.wait(START_WAIT_S)  # noqa: SLF001


def join_thread(thread: threading.Thread, timeout: float | None = None) -> None:
    """``thread.join(timeout)`` for a thread whose ``start()`` was called, even if a signal cut it short; one
    that did not come up is nothing to join."""
    if came_up(thread):
        thread.join(timeout)
