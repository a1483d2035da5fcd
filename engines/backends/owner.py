"""One thread that runs every call of an engine, whichever thread asks.

Some engine state belongs to the thread that made it: before torch 2.13, inductor's CUDA-graph
bookkeeping exists only in the thread that set it up, and a compiled graph called from another thread
asserts (pytorch issue 123177). The video pipeline calls the engine from its stylize thread and live
from its engine thread, after a warm-up in the main thread; routing every call (prepare, run, close)
through one :class:`OwnerThread` makes that safe on every torch version. A call waits for its result,
so calls stay in order and the engine never runs two at once.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = object()


class OwnerThread:
    """A daemon thread running the calls given to :meth:`call`, one at a time, in order.

    ``setup`` runs first, in the thread (state that must be made there; if it fails, every call raises
    its error). A call from the owner thread
    itself runs at once (an engine method calling another). After :meth:`stop`, calls raise.
    """

    def __init__(self, name: str, setup: Callable[[], None] | None = None) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, args=(setup,), name=name, daemon=True)
        self._thread.start()

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _serve(self, setup: Callable[[], None] | None) -> None:
        failed: BaseException | None = None
        if setup is not None:
            try:
                setup()
            except Exception as exc:  # every call then raises it: never a caller waiting forever
                failed = exc
        while True:
            item = self._calls.get()
            if item is _STOP:
                return
            fn, args, kwargs, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                if failed is not None:
                    raise failed
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the caller, which raises it
                future.set_exception(exc)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` run on the owner thread; its result, or its exception raised here."""
        if threading.get_ident() == self._thread.ident:
            return fn(*args, **kwargs)
        if self._stopped:
            raise RuntimeError(f"{self._thread.name}: the engine is closed")
        future: Future = Future()
        self._calls.put((fn, args, kwargs, future))
        return future.result()

    def stop(self) -> None:
        """Let the thread end once the calls already given have run (waits for them, unless called from it)."""
        if self._stopped:
            return
        self._stopped = True
        self._calls.put(_STOP)
        if threading.get_ident() != self._thread.ident:
            self._thread.join()
