"""Stages in threads joined by bounded queues, so decode, stylize and encode overlap.

Each stage is a plain function item -> item run in its own thread; the last stage's output is
iterated in the caller's thread (which keeps Ctrl-C and the output file there). Queues are bounded,
so a fast stage waits for a slow one (back-pressure) and nothing is ever dropped; order is kept
because each stage has exactly one thread. Torch and PyAV release the GIL in their heavy work, so
the stages really run side by side, and the whole runs at the speed of its slowest stage.

An exception in any stage (KeyboardInterrupt included) travels down the queues in order and is
raised again in the caller's thread.

``nice`` lowers the CPU priority of chosen threads (Linux: priority is per thread), so light helper
stages (decode, encode) fill the gaps the compute-bound stage leaves instead of taking cores from it.
Threads a lowered thread creates (a codec's own workers) inherit its priority.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from engines.threads import join_thread

log = logging.getLogger(__name__)

_POLL = 0.1  # seconds between checks of the stop flag while waiting on a queue


def lower_thread_priority(increment: int) -> None:
    """Raise this thread's nice value by ``increment`` (no-op where threads have no own priority)."""
    if increment <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as exc:  # not allowed, or not Linux semantics: run at normal priority
        log.debug("cannot lower thread priority: %s", exc)


class _End:
    """Marks the end of the stream."""


@dataclass
class _Failure:
    exc: BaseException


class ThreadedPipeline:
    """``for out in ThreadedPipeline(source, [f, g]):`` == ``for x in source: out = g(f(x))``, overlapped.

    Use as a context manager (or call :meth:`close`) so the threads stop when the caller stops early.
    """

    def __init__(self, source: Iterable[Any], stages: Sequence[Callable[[Any], Any]], maxsize: int = 4,
                 names: Sequence[str] | None = None, nice: Sequence[int] | None = None) -> None:
        self.source = source
        self.stages = list(stages)
        self.names = list(names) if names else ["source"] + [f"stage{i}" for i in range(1, len(stages) + 1)]
        self.queues: list[queue.Queue] = [queue.Queue(maxsize) for _ in range(len(stages) + 1)]
        self.stop = threading.Event()
        self.busy = [0.0] * (len(stages) + 1)  # seconds each thread spent working (for logs and benchmarks)
        self.nice = list(nice) if nice else [0] * (len(stages) + 1)
        self.threads: list[threading.Thread] = []
        self._started = False

    # -- queue helpers that give up when asked to stop ----------------------------------------------
    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> Any:
        while not self.stop.is_set():
            try:
                return q.get(timeout=_POLL)
            except queue.Empty:
                continue
        return _End()

    # -- threads ------------------------------------------------------------------------------------
    def _run_source(self) -> None:
        out = self.queues[0]
        lower_thread_priority(self.nice[0])
        try:
            it = iter(self.source)
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                finally:
                    self.busy[0] += time.perf_counter() - t0
                if not self._put(out, item):
                    return
            self._put(out, _End())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._put(out, _Failure(exc))

    def _run_stage(self, k: int) -> None:
        fn, inq, outq = self.stages[k], self.queues[k], self.queues[k + 1]
        lower_thread_priority(self.nice[k + 1])
        while True:
            item = self._get(inq)
            if isinstance(item, (_End, _Failure)):
                self._put(outq, item)
                return
            try:
                t0 = time.perf_counter()
                result = fn(item)
                self.busy[k + 1] += time.perf_counter() - t0
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._put(outq, _Failure(exc))
                return
            if not self._put(outq, result):
                return

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        threads = [threading.Thread(target=self._run_source, name=f"pipeline-{self.names[0]}", daemon=True)]
        threads += [threading.Thread(target=self._run_stage, args=(k,), name=f"pipeline-{self.names[k + 1]}",
                                     daemon=True) for k in range(len(self.stages))]
        for t in threads:  # listed as each start is called: a signal between two leaves the rest unlisted
            self.threads.append(t)
            t.start()

    def __iter__(self) -> Iterator[Any]:
        self.start()
        last = self.queues[-1]
        while True:
            item = self._get(last)
            if isinstance(item, _End):
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def close(self, timeout: float = 30.0) -> None:
        """Ask every thread to stop and wait for them (a stage finishes the item it is working on)."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            join_thread(t, max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("pipeline thread %s did not stop in time", t.name)

    def __enter__(self) -> ThreadedPipeline:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def run_in_thread(fn: Callable[[], Any], nice: int = 0, name: str = "helper",
                  undo: Callable[[Any], None] | None = None) -> Any:
    """``fn()`` in a short-lived thread at lowered priority; returns its result or raises its exception.

    For opening an encoder: the worker threads it starts inherit the lowered priority. A Ctrl-C (or
    SIGTERM) while waiting waits for ``fn`` to finish, hands its result to ``undo`` (e.g. removing the
    file it opened) and is raised then: the thread never goes on creating things behind our back.
    """
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        lower_thread_priority(nice)
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller
            error.append(exc)

    t = threading.Thread(target=target, name=name, daemon=True)
    try:
        t.start()  # inside the try: fn may be running (and the signal come) before start() returns
        t.join()
    except KeyboardInterrupt:
        join_thread(t)
        if result and undo is not None:
            undo(result[0])
        raise
    if error:
        raise error[0]
    return result[0]
