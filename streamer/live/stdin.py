"""Commands typed on stdin, for a live session without a window (``--vcam``/``--record`` only)."""
from __future__ import annotations

import os
import queue
import select
import sys
import threading


class StdinCommands(threading.Thread):
    """Lines typed on stdin, for switching styles without a window (``--vcam``/``--record`` only).

    POSIX: select() with a timeout, so the thread stops when asked, and nothing is read while the
    process is a background job (reading the terminal then would stop the whole process).
    """

    def __init__(self, stop: threading.Event) -> None:
        super().__init__(name="stdin", daemon=True)
        self.stop_event = stop
        self.lines: queue.Queue[str] = queue.Queue()

    def run(self) -> None:
        try:
            stream = sys.stdin
            if stream is None or stream.closed:
                return
            fd = stream.fileno()
        except (OSError, ValueError, AttributeError):  # pytest's captured stdin, a detached service
            return
        posix = os.name == "posix"
        while not self.stop_event.is_set():
            try:
                if posix:
                    if os.isatty(fd) and os.tcgetpgrp(fd) != os.getpgrp():
                        self.stop_event.wait(0.5)  # background job: leave the terminal alone
                        continue
                    ready, _, _ = select.select([fd], [], [], 0.2)
                    if not ready:
                        continue
                line = stream.readline()
            except (OSError, ValueError):
                return
            if not line:
                return  # end of input: keep running, just no more commands
            self.lines.put(line)

    def drain(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out
