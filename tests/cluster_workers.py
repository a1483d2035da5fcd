"""Cluster workers for tests (Ray loads them by module name on the workers: the project root is on their path),
and ``python -m tests.cluster_workers KIND streamer-args...``: the command line with such a worker.

KIND: ``private`` (the worker acts as if on another machine: no shared filesystem, bytes travel through Ray)
or ``fault:MARKER`` (the first worker to claim the file MARKER kills its own process mid-chunk)."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from streamer.cluster.worker import ChunkWorker


class PrivateWorker(ChunkWorker):
    """Sees none of the driver's files or folders."""

    def sees(self, path: str, size: int, mtime_ns: int) -> bool:
        return False

    def out_dir(self, out_dir: str, token: str) -> Path | None:
        return None


def fault_worker(marker: str) -> type:
    """A worker class whose first instance to claim ``marker`` (deletes it) dies with SIGKILL after 3 frames."""

    class FaultWorker(ChunkWorker):
        def frames_written(self, progress, index: int, written: int, total: int) -> None:
            super().frames_written(progress, index, written, total)
            if written >= 3:
                try:
                    os.unlink(marker)
                except OSError:
                    return
                os.kill(os.getpid(), signal.SIGKILL)

    return FaultWorker  # a class made in a function: pickled by value, Ray ships it to the workers


def main(argv: list[str]) -> int:
    from streamer.cli import main as cli_main
    from streamer.cluster import driver

    kind, *rest = argv
    worker = PrivateWorker if kind == "private" else fault_worker(kind.split(":", 1)[1])
    plain = driver.render_on_cluster
    driver.render_on_cluster = lambda args: plain(args, worker_class=worker)
    import streamer.cluster as package

    package.render_on_cluster = driver.render_on_cluster
    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
