"""A cluster worker: one Ray actor process holding one loaded engine, rendering chunks and files until done.

It is given a :class:`WorkerSettings` (small, typed, picklable: what a worker needs of the command line and
nothing else) and never sees argparse. A worker reads an input where it sees the same file (same path, size
and mtime: a shared filesystem), else from bytes the driver put in the object store; it writes a chunk into
the driver's chunk folder where it sees that folder (its token file), else returns the bytes.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.encoding import Encoding
from streamer.job import Job

#: the file in a chunk folder whose token tells a worker it sees the driver's folder
MARKER = ".streamer-chunks"
#: seconds between two progress reports of a worker
PROGRESS_EVERY = 0.3


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker builds and renders with: the driver's checked job (its size clamped to the video) and
    encoding, and how the worker runs."""

    job: Job
    encoding: Encoding
    max_frames: int | None
    worker_threads: int
    verbose: int
    quiet: bool


def pin_threads(slot: int, threads: int) -> None:
    """``threads`` CPUs for this worker (distinct per slot on one machine), so engines size their pools to it."""
    import torch

    torch.set_num_threads(threads)
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > threads:
            start = (slot * threads) % len(cpus)
            os.sched_setaffinity(0, {cpus[(start + i) % len(cpus)] for i in range(threads)})
    except (AttributeError, OSError):
        pass


class ChunkWorker:
    """One engine process: built once, then renders chunks and files until the driver is done."""

    def __init__(self, settings: WorkerSettings, slot: int) -> None:
        from streamer.cli import setup_logging

        self.settings = settings
        setup_logging(settings.verbose, settings.quiet)
        pin_threads(slot, settings.worker_threads)
        self.stylizer = None
        self.inputs: dict[str, Path] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="streamer-worker-"))

    def info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname()}

    def sees(self, path: str, size: int, mtime_ns: int) -> bool:
        """Whether this worker reads the driver's ``path`` as the same file (a shared filesystem)."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        return st.st_size == size and st.st_mtime_ns == mtime_ns

    def sees_all(self, files: list[tuple[str, int, int]]) -> list[bool]:
        return [self.sees(*f) for f in files]

    def out_dir(self, out_dir: str, token: str) -> Path | None:
        """The driver's chunk folder where this worker sees it (its token matches), else None (send bytes)."""
        try:
            return Path(out_dir) if (Path(out_dir) / MARKER).read_text() == token else None
        except OSError:
            return None

    def _stylizer(self, shape: tuple[int, int] | None):
        if self.stylizer is None:
            from streamer.options import build_stylizer

            self.stylizer = build_stylizer(self.settings.job, shape_hint=shape)
        return self.stylizer

    def style_code(self, images: list[tuple[str, Any]], weights: list[float] | None):
        """The mixed style code of the driver's style images (computed once, shared by reference)."""
        from streamer.options import Style, mixed_code

        stylizer = self._stylizer(None)
        size = self.settings.job.style_size
        return mixed_code([Style(name, Path(name), stylizer.encode_style(rgb, size)) for name, rgb in images], weights)

    def _local_input(self, path: str, data: list | None) -> Path:
        if data is None:
            return Path(path)
        key = data[0].hex()
        if key not in self.inputs:
            import ray

            local = self.tmp / f"input-{len(self.inputs)}{Path(path).suffix}"
            local.write_bytes(ray.get(data[0]))
            self.inputs[key] = local
        return self.inputs[key]

    def frames_written(self, progress, index: int, written: int, total: int) -> None:
        """After each frame of a chunk: report to the driver's progress now and then (and at the end)."""
        now = time.monotonic()
        if now - getattr(self, "_reported", 0.0) > PROGRESS_EVERY or written == total:
            self._reported = now
            progress.set.remote(index, written)

    def render_chunk(self, job: dict, chunk, code, data: list | None, progress) -> dict:
        """Render one chunk into the chunk folder (or return its bytes where the folder is not visible here)."""
        from engines.stylizer import short_side_shape
        from streamer.temporal import make_temporal
        from streamer.video import render_video_file

        s = self.settings.job
        src = self._local_input(job["src"], data)
        shared = self.out_dir(job["out_dir"], job["token"])
        name = f"chunk-{chunk.index:05d}{job['suffix']}"
        out = (shared or self.tmp) / name
        stylizer = self._stylizer(short_side_shape(job["height"], job["width"], s.size))
        written = 0

        def on_frames(n: int) -> None:
            nonlocal written
            written += n
            self.frames_written(progress, chunk.index, written, chunk.frames)

        encoding = self.settings.encoding
        stats = render_video_file(src, out, stylizer, code, s.alpha, s.preserve_color, codec=job["codec"],
                                  crf=encoding.crf, progress=False, temporal=make_temporal(s), size=s.size,
                                  preset=encoding.preset,
                                  window=chunk, on_frames=on_frames, upscale=s.upscale)
        result = {"index": chunk.index, "frames": stats.frames, "name": name, "bad_packets": stats.bad_packets,
                  "first_pts": stats.first_pts}
        return self._deliver(result, out, shared)

    def render_file(self, job: dict, code, data: list | None) -> dict:
        """A folder's file: one image, or one whole video (with its audio), as the local folder render does it.
        A file the user's input breaks comes back as {"error": StreamerError} (the others go on)."""
        from engines.errors import StreamerError
        from streamer.folder import FolderTask, render_video_task
        from streamer.imageio import save_image
        from streamer.stills import render_file

        s = self.settings.job
        src = self._local_input(job["src"], data)
        shared = self.out_dir(job["out_dir"], job["token"])
        out = (shared or self.tmp) / job["name"]
        try:
            if job["kind"] == "video":
                render_video_task(self._stylizer(None), FolderTask("video", src, out), code, s,
                                  self.settings.encoding, self.settings.max_frames)
            else:
                rgb, alpha_channel = render_file(self._stylizer(None), src, code, size=s.size, alpha=s.alpha,
                                                 upscale=s.upscale, keep_color=s.preserve_color)
                save_image(out, rgb, alpha_channel)
        except StreamerError as exc:
            return {"name": job["name"], "error": exc}
        return self._deliver({"name": job["name"]}, out, shared)

    @staticmethod
    def _deliver(result: dict, out: Path, shared: Path | None) -> dict:
        if shared is None:
            result["bytes"] = out.read_bytes()
            out.unlink()
        return result
