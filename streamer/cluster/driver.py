"""`streamer render ... --cluster ADDRESS`: the same render on a Ray cluster (the driver's side).

A video is cut into chunks (streamer.cluster.chunks); each chunk goes to a worker (streamer.cluster.worker) that
holds one loaded engine and renders many chunks with the local render's own pipeline. The style code is
computed once, on one worker, and reaches the others through the object store. The workers form a
``ray.util.ActorPool``: the next chunk goes to whichever is free; one progress bar over the whole video; then
the chunks are joined without re-encoding (source timestamps, audio copied once). A folder is one task per
file with the local folder's rules (streamer.folder). Everything a local render checks is checked before Ray
starts, the same way (``--size`` clamp, output and folder locks, codecs, the decoding rule).

Faults: an actor whose process dies is restarted and its chunk runs again (chunks are deterministic, so the
output equals an uninterrupted run). Ctrl-C, SIGTERM and SIGHUP (streamer.signals) stop the workers and join
the finished prefix into a playable file; exit 130, 143, 129.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engines.errors import DeviceError, InputError, StreamerError
from streamer.cluster.connect import Cluster
from streamer.cluster.worker import MARKER, WorkerSettings
from streamer.encoding import Encoding
from streamer.job import Job
from streamer.fileutil import AtomicOutput, part_path
from streamer.signals import exit_code, finishing, signal_number, stopped_by

log = logging.getLogger(__name__)

#: largest input sent through the object store to workers that cannot see it (bigger: use a shared filesystem)
MAX_SEND_BYTES = 2 << 30


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster (Ray; pip install 'streamer[cluster]')")
    g.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="render on a Ray cluster: host:port, ray://host:10001, auto (RAY_ADDRESS), or local "
                        "(start one on this machine with --workers processes)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="--cluster: engine processes (default: local 2; a cluster: one per GPU, or per "
                        "--worker-threads CPUs)")
    g.add_argument("--worker-threads", type=int, default=1, metavar="T",
                   help="--cluster: CPU threads (and Ray CPUs) per worker (default 1)")
    g.add_argument("--chunk-frames", type=int, default=0, metavar="N",
                   help="--cluster: frames per video chunk (default 0 = about three chunks per worker)")


# -- the chunk folder ------------------------------------------------------------------------------
def chunk_folder_path(dst: Path) -> Path:
    """``.NAME.chunks`` beside ``dst`` (the output's ``.part`` name with another ending)."""
    return part_path(dst).with_suffix(".chunks")


#: removals of a chunk folder tried, 0.1 s apart
REMOVE_TRIES = 30


class ChunkFolder:
    """A folder beside the output for chunk files, with a token that tells a worker it sees this folder.

    Made while the caller holds the output's lock (its ``.part``, or the folder lock), so a folder of that
    name, or of the older ``.NAME.XXXX.chunks`` form, left by a killed run is stale: taken over and removed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        for stale in [path, *path.parent.glob(f"{path.stem}.*.chunks")]:
            if stale.is_dir() and not stale.is_symlink() and (stale == path or (stale / MARKER).is_file()):
                log.info("removing %s, left by a run that was killed", stale)
                shutil.rmtree(stale, ignore_errors=True)
        try:
            path.mkdir()
            self.token = secrets.token_hex(8)
            (path / MARKER).write_text(self.token)
        except OSError as exc:
            raise InputError(f"cannot write beside {path.parent}: {exc.strerror or exc}") from None

    def store(self, result: dict) -> Path:
        path = self.path / result["name"]
        if "bytes" in result:
            path.write_bytes(result["bytes"])
        return path

    def remove(self) -> None:
        """Gone, even if a worker stopped a moment ago renamed a last file into it while it was being removed."""
        for _ in range(REMOVE_TRIES):
            shutil.rmtree(self.path, ignore_errors=True)
            if not self.path.exists():
                return
            time.sleep(0.1)
        log.warning("could not remove %s: remove it by hand", self.path)


# -- running tasks ---------------------------------------------------------------------------------
def run_tasks(cluster: Cluster, tasks: list, submit: Callable[[Any, Any], Any], on_done: Callable[[dict], None],
              tick: Callable[[], None] | None = None) -> None:
    """Every task on a free worker (``ray.util.ActorPool``): ``submit(actor, task) -> ref``, ``on_done(result)``
    as each finishes, ``tick()`` a few times a second. A worker lost for good stops the run in one line."""
    from ray.util import ActorPool

    ray = cluster.ray
    pool = ActorPool(cluster.actors)
    for task in tasks:
        pool.submit(submit, task)
    try:
        while pool.has_next():
            try:
                result = pool.get_next_unordered(timeout=0.3)
            except TimeoutError:
                if tick is not None:
                    tick()
                continue
            except ray.exceptions.RayError as exc:
                raise _task_error(exc) from None
            on_done(result)
            if tick is not None:
                tick()
    except BaseException:
        cluster.stop_workers()  # a stop or a failure: no worker goes on writing into the caller's chunk folder
        raise


def _task_error(exc: BaseException) -> BaseException:
    """A worker's StreamerError is the user's error (one line); anything else is a lost worker."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, StreamerError):
        return cause
    first = str(exc).strip().splitlines()
    return DeviceError(f"a cluster worker failed: {first[-1] if first else exc.__class__.__name__}")


def _style_images(args: argparse.Namespace) -> list[tuple[str, Any]]:
    from streamer.imageio import load_image
    from streamer.options import check_style_weights, expand_style_paths

    paths = expand_style_paths(args.style, args.style_size)
    check_style_weights(args.style_weights, len(paths))
    return [(p.stem, load_image(p, "style image")) for p in paths]


def worker_settings(args: argparse.Namespace, job: Job) -> WorkerSettings:
    """What every worker is given: the checked job, the encoding and the run's own flags."""
    return WorkerSettings(job, Encoding.from_args(args), args.max_frames, args.worker_threads, args.verbose,
                          args.quiet)


def _open(args: argparse.Namespace, job: Job, worker_class: type | None) -> Cluster:
    return Cluster(worker_settings(args, job), args.cluster, args.workers, device=job.device,
                   worker_class=worker_class)


# -- a video ---------------------------------------------------------------------------------------
@dataclass
class VideoJob:
    """A checked video render: input, output (taken: its ``.part`` is locked), encoder, info, styles, frames,
    and the job with its ``size`` clamped to the video as a local render clamps it."""

    job: Job
    src: Path
    dst: Path
    output: AtomicOutput
    codec: str
    info: Any
    images: list
    index: Any


def check_video(args: argparse.Namespace, job: Job) -> VideoJob:
    """The local render's checks (the same ``--size`` clamp too) and the frame index, before Ray starts."""
    from streamer.cluster import chunks as ch
    from streamer.options import fit_short_side
    from streamer.temporal import make_temporal
    from streamer.video import check_video_job

    src, dst, encoder, info = check_video_job(args, job)
    if args.chunk_frames < 0:
        raise InputError("--chunk-frames must be 0 (automatic) or a positive number of frames")
    images = _style_images(args)
    make_temporal(job)
    job = replace(job, size=fit_short_side(job.size, info.height, info.width, "the video"))
    index = ch.scan_frames(src)
    if not index.pts:
        raise InputError(f"cannot decode any video frame of {src}: the file is corrupt or unsupported")
    output = AtomicOutput(dst, overwrite=args.overwrite)  # another run on it, a read-only folder: fail now
    return VideoJob(job, src, dst, output, encoder["codec"], info, images, index)


def render_video(args: argparse.Namespace, cluster: Cluster, job: VideoJob) -> int:
    from streamer.cluster import chunks as ch
    from streamer.video import ended_early

    src, dst, info, index = job.src, job.dst, job.info, job.index
    total = len(index.pts) if args.max_frames is None else min(args.max_frames, len(index.pts))
    size = args.chunk_frames or ch.auto_chunk_frames(total, len(cluster.actors))
    plan = ch.plan_chunks(index, size, ch.TEMPORAL_WARMUP if job.job.temporal else 0, args.max_frames)
    log.info("rendering %s (%dx%d, %d frames) on %d workers in %d chunks of about %d frames", src, info.width,
             info.height, total, len(cluster.actors), len(plan), size)
    data = None if all(cluster.visible([src])) else cluster.send(src, MAX_SEND_BYTES)
    code = cluster.actors[0].style_code.remote(job.images, args.style_weights)
    done: dict[int, tuple[Path, dict]] = {}
    bar = tqdm(total=total, desc="render", unit="frame", disable=args.quiet, dynamic_ncols=True, file=sys.stderr)
    t0 = time.perf_counter()
    stop: KeyboardInterrupt | None = None

    def on_done(result: dict) -> None:
        done[result["index"]] = (work.store(result), result)
        log.info("chunk %d of %d done (%d frames)", result["index"] + 1, len(plan), result["frames"])

    def tick() -> None:
        bar.n = cluster.ray.get(cluster.progress.total.remote())
        bar.refresh()

    work = ChunkFolder(chunk_folder_path(dst))  # removed by the block right after it
    try:
        spec = {"src": str(src.resolve()), "out_dir": str(work.path), "token": work.token, "suffix": dst.suffix,
                "codec": job.codec, "width": info.width, "height": info.height}
        try:
            run_tasks(cluster, plan, lambda a, c: a.render_chunk.remote(spec, c, code, data, cluster.progress),
                      on_done, tick)
        except KeyboardInterrupt as exc:
            stop = exc
        prefix = []  # the chunks finished from the start; one that held no frame (a damaged stretch) adds nothing
        for chunk in plan:
            if chunk.index not in done:
                break
            path, result = done[chunk.index]
            prefix.append((chunk, path, result["first_pts"]))
        if stop is not None and not prefix:
            job.output.discard()
            print(f"streamer: interrupted{stopped_by(signal_number(stop))} before the first chunk was done; "
                  "nothing was written", file=sys.stderr)
            return exit_code(signal_number(stop))
        if stop is None and all(first is None for _, _, first in prefix):  # as a local render: nothing to write
            raise InputError(f"cannot decode any video frame of {src}: the file is corrupt or unsupported")
        until = None
        if stop is not None or args.max_frames is not None:
            last = prefix[-1][0]
            until = float(last.end_pts * info.time_base) if last.end_pts is not None else None
        with finishing() as late:  # the chunks are done: a signal now must not throw them away
            frames = ch.join_chunks(src, dst, [(first, path) for _, path, first in prefix if first is not None],
                                    codec=job.codec, crf=args.crf, preset=args.preset, audio_until=until,
                                    output=job.output)
        stop = stop or late.interrupt()
    finally:
        bar.close()
        work.remove()
        job.output.discard()  # a no-op once the join renamed it
    seconds = time.perf_counter() - t0
    if stop is not None:
        signum = signal_number(stop)
        print(f"streamer: interrupted{stopped_by(signum)}: {dst} holds the first {frames} frames and plays",
              file=sys.stderr)
        return exit_code(signum)
    bad = sum(r.get("bad_packets", 0) for _, r in done.values())
    if bad:
        log.warning("%d damaged video packets in %s were skipped", bad, src)
    if frames < total:  # the one decoding rule: as the local render says it
        raise InputError(ended_early(src, dst, frames, total))
    log.info("wrote %s: %d frames in %.1f s (%.1f frames/s) on %d workers", dst, frames, seconds,
             frames / seconds if seconds else 0.0, len(cluster.actors))
    return 0


# -- a folder --------------------------------------------------------------------------------------
@dataclass
class FolderJob:
    job: Job
    tasks: list
    images: list
    out: Any  # streamer.folder.FolderOutput (made and locked)
    skipped: list


def check_folder(args: argparse.Namespace, job: Job) -> FolderJob:
    """A folder's tasks, checks and lock, the way the local folder render takes them, before Ray starts."""
    from streamer.folder import FolderOutput, check_folder_outputs, folder_tasks
    from streamer.imageio import not_files
    from streamer.options import expand_style_paths

    src, dst = Path(args.input), Path(args.output)
    tasks = folder_tasks(src, dst)
    style_paths = expand_style_paths(args.style, job.style_size)
    check_folder_outputs(tasks, dst, job, style_paths, Encoding.from_args(args), args.overwrite, args.max_frames)
    images = _style_images(args)
    skipped = []
    for path, what in not_files(src):  # never opened: a FIFO would block the render
        log.warning("skipped: %s is %s", path, what)
        skipped.append(path.name)
    return FolderJob(job, tasks, images, FolderOutput(dst), skipped)


def render_folder(args: argparse.Namespace, cluster: Cluster, job: FolderJob) -> int:
    """A folder: each file is one task on a free worker; a file that fails is skipped, the others rendered."""
    from streamer.folder import files_word, skipped_summary

    dst = Path(args.output)
    what = files_word(job.tasks)
    total = len(job.tasks) + len(job.skipped)
    code = cluster.actors[0].style_code.remote(job.images, args.style_weights)
    shared = cluster.visible([t.src for t in job.tasks])
    by_name = {t.dst.name: t for t in job.tasks}
    failed = list(job.skipped)
    bar = tqdm(total=len(job.tasks), desc="render", unit="file", disable=args.quiet or len(job.tasks) < 2,
               file=sys.stderr)

    def submit(actor, i: int):
        task = job.tasks[i]
        spec = {"kind": task.kind, "src": str(task.src.resolve()), "name": task.dst.name, "out_dir": str(work.path),
                "token": work.token}
        return actor.render_file.remote(spec, code, None if shared[i] else cluster.send(task.src, MAX_SEND_BYTES))

    def on_done(result: dict) -> None:
        task = by_name[result["name"]]
        if "error" in result:  # one bad file: say so, render the others
            failed.append(task.src.name)
            log.warning("skipped: %s: %s", task.src.name, result["error"])
        else:
            os.replace(work.store(result), task.dst)  # same folder: the output appears whole or not at all
            job.out.written += 1
            bar.update(1)

    work = ChunkFolder(dst / ".streamer.chunks")  # removed by the block right after it
    try:
        run_tasks(cluster, list(range(len(job.tasks))), submit, on_done)
    except KeyboardInterrupt as exc:
        signum = signal_number(exc)
        kept = f"{job.out.written} of {total} {what} are in {dst}" if job.out.written else f"no {what[:-1]} was finished"
        print(f"streamer: interrupted{stopped_by(signum)}: {kept}", file=sys.stderr)
        return exit_code(signum)
    finally:
        bar.close()
        work.remove()
    if failed:
        raise InputError(skipped_summary(failed, total, job.out.written, dst, what))
    log.info("wrote %d %s into %s", job.out.written, what, dst)
    return 0


def render_on_cluster(args: argparse.Namespace, worker_class: type | None = None) -> int:
    """The `--cluster` path of `streamer render`: a video in chunks, a folder one task per file."""
    from streamer.video import is_video_path

    src = Path(args.input)
    is_video = is_video_path(src)
    if not is_video and not src.is_dir():
        raise InputError("--cluster renders a video file or a folder; render a single image without it")
    if args.mask:
        raise InputError("--mask works with a single image, not with --cluster")
    job = check_video(args, Job.from_args(args)) if is_video else check_folder(args, Job.from_args(args))
    try:
        with _open(args, job.job, worker_class) as cluster:
            if is_video:
                return render_video(args, cluster, job)
            return render_folder(args, cluster, job)
    finally:
        with contextlib.suppress(Exception):
            (job.output.discard if is_video else job.out.close)()
