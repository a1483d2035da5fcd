"""`streamer render ... --cluster ADDRESS`: the same render on a Ray cluster.

A video is cut into chunks (streamer.chunks); each chunk goes to a Ray actor that holds one loaded engine and
renders many chunks, one at a time, with the local render's own pipeline (video.render_video_file with a
window). The style code is computed once, on one worker, and reaches the others through the object store.
The driver hands the next chunk to whichever worker is free, shows one progress bar over the whole video,
then joins the chunks without re-encoding (source timestamps, audio copied once). A folder is one task per
file with the local folder's rules.

Data: a worker reads the input where it sees the same file (a shared filesystem: same path, size and
mtime); otherwise the driver puts the file's bytes into the object store once (up to :data:`MAX_SEND_BYTES`).
Chunk outputs are written straight into the driver's chunk folder where the worker sees it, else they come
back as bytes. Faults: an actor whose process dies is restarted and its chunk runs again (chunks are
deterministic, so the output equals an uninterrupted run). Ctrl-C cancels what is queued, stops the workers
and joins the finished prefix into a playable file.
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engines.errors import DeviceError, InputError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'streamer[cluster]'"
#: largest input sent through the object store to workers that cannot see it (bigger: use a shared filesystem)
MAX_SEND_BYTES = 2 << 30
#: object store per node for `--cluster local` (chunks and inputs pass through it; small is enough)
LOCAL_OBJECT_STORE = 200 << 20
#: seconds to wait for a TCP answer from a cluster address before calling it unreachable
CONNECT_TIMEOUT = 3.0
#: seconds for the workers to start (import torch, connect); longer means the cluster has no room for them
ACTOR_START_TIMEOUT = 180.0
#: a worker process killed mid-chunk: how often Ray restarts the actor and retries its chunk
RETRIES = 3
#: test seam: a worker that finds this file (and deletes it) kills its own process mid-chunk
FAULT_ENV = "STREAMER_CLUSTER_FAULT"
#: test seam: workers act as if on another machine (no shared filesystem): bytes travel through Ray
PRIVATE_ENV = "STREAMER_CLUSTER_PRIVATE"
_MARKER = ".streamer-chunks"


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


# -- connecting ------------------------------------------------------------------------------------
def import_ray():
    try:
        import ray
    except ImportError:
        raise DeviceError(f"--cluster needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` or ``ray://host:port``; None for ``auto``/``local``."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"--cluster must be host:port, ray://host:port, auto or local, not '{address}'")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail in seconds, in one line, when nothing listens at ``address`` (Ray itself retries for a minute)."""
    target = host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        raise DeviceError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                          "`ray start --head` or use --cluster local") from None


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[1])


class Cluster:
    """A connection to Ray (or a local cluster it starts) and the engine actors; closed on exit."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ray = import_ray()
        self.address = args.cluster
        if args.workers is not None and args.workers <= 0:
            raise InputError("--workers must be a positive number of processes")
        if args.worker_threads <= 0:
            raise InputError("--worker-threads must be a positive number of threads")
        if args.chunk_frames < 0:
            raise InputError("--chunk-frames must be 0 (automatic) or a positive number of frames")
        check_reachable(self.address)
        self.actors: list[Any] = []
        self.progress = None

    def __enter__(self) -> Cluster:
        ray, args = self.ray, self.args
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (_project_root(), os.environ.get("PYTHONPATH")) if p)}}
        for name in (FAULT_ENV, PRIVATE_ENV):  # the test seams reach the workers
            if os.environ.get(name):
                runtime_env["env_vars"][name] = os.environ[name]
        quiet = {"log_to_driver": args.verbose > 0, "logging_level": logging.WARNING if args.verbose == 0 else
                 logging.INFO, "runtime_env": runtime_env}
        try:
            if self.address == "local":
                workers = args.workers or 2
                ray.init(num_cpus=workers * args.worker_threads, object_store_memory=LOCAL_OBJECT_STORE,
                         include_dashboard=False, **quiet)
            else:
                target = host_port(self.address)
                if target is not None and target[0] in ("127.0.0.1", "localhost") and "://" not in self.address:
                    quiet["_node_ip_address"] = "127.0.0.1"  # a cluster on this machine's loopback: join it there
                ray.init(address=self.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise DeviceError(f"cannot join the Ray cluster at {self.address}: {str(exc).splitlines()[0]}") from None
        try:
            self._start_actors()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_actors(self) -> None:
        ray, args = self.ray, self.args
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0)) if args.device != "cpu" else 0
        count = args.workers or (gpus or max(1, int(res.get("CPU", 1)) // args.worker_threads))
        options = {"num_cpus": args.worker_threads, "num_gpus": 1 if gpus else 0, "max_restarts": RETRIES,
                   "max_task_retries": RETRIES}
        remote = ray.remote(**options)(ChunkWorker)
        opts = {k: v for k, v in vars(args).items() if k not in ("run",)}
        self.actors = [remote.remote(opts, slot) for slot in range(count)]
        self.progress = ray.remote(num_cpus=0)(Progress).remote()
        try:
            infos = ray.get([a.info.remote() for a in self.actors], timeout=ACTOR_START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise DeviceError(f"the cluster did not start {count} workers of {args.worker_threads} CPUs"
                              f"{' and 1 GPU' if gpus else ''} each in {ACTOR_START_TIMEOUT:.0f} s: it has "
                              f"{res.get('CPU', 0):g} CPUs; ask for fewer --workers") from None
        log.info("cluster %s: %d workers (%s)", self.address, len(infos),
                 ", ".join(f"{i['host']}:{i['pid']}" for i in infos))

    def __exit__(self, *exc_info) -> None:
        for actor in [*self.actors, self.progress]:
            if actor is not None:
                try:
                    self.ray.kill(actor)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.actors = []
        self.ray.shutdown()

    # -- data ------------------------------------------------------------------------------------
    def input_for(self, path: Path) -> list | None:
        """None when every worker sees ``path``; else [object ref of its bytes] (put once, read by all)."""
        st = path.stat()
        seen = self.ray.get([a.sees.remote(str(path.resolve()), st.st_size, st.st_mtime_ns) for a in self.actors])
        if all(seen):
            return None
        if st.st_size > MAX_SEND_BYTES:
            raise InputError(f"{path} ({st.st_size >> 20} MiB) is not visible to every worker and is larger than "
                             f"{MAX_SEND_BYTES >> 20} MiB, the most sent through Ray: put it on a shared filesystem")
        log.info("%s is not visible to %d of %d workers: sending its %d KiB through Ray", path,
                 seen.count(False), len(seen), st.st_size >> 10)
        return [self.ray.put(path.read_bytes())]


class Progress:
    """Frames done per task, max of what its attempts reported (a retried chunk does not count twice)."""

    def __init__(self) -> None:
        self.done: dict[Any, int] = {}

    def set(self, key: Any, frames: int) -> None:
        self.done[key] = max(self.done.get(key, 0), frames)

    def total(self) -> int:
        return sum(self.done.values())


# -- the worker ------------------------------------------------------------------------------------
def _pin_threads(slot: int, threads: int) -> None:
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

    def __init__(self, opts: dict, slot: int) -> None:
        from streamer.cli import setup_logging

        self.args = argparse.Namespace(**opts)
        setup_logging(self.args.verbose, self.args.quiet)
        _pin_threads(slot, self.args.worker_threads)
        self.stylizer = None
        self.inputs: dict[str, Path] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="streamer-worker-"))

    def info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname()}

    def sees(self, path: str, size: int, mtime_ns: int) -> bool:
        if os.environ.get(PRIVATE_ENV):
            return False
        try:
            st = os.stat(path)
        except OSError:
            return False
        return st.st_size == size and st.st_mtime_ns == mtime_ns

    def _stylizer(self, shape: tuple[int, int] | None):
        if self.stylizer is None:
            from streamer.options import build_stylizer

            self.stylizer = build_stylizer(self.args, shape_hint=shape)
        return self.stylizer

    def style_code(self, images: list[tuple[str, Any]], weights: list[float] | None):
        """The mixed style code of the driver's style images (computed once, shared by reference)."""
        from streamer.options import Style, mixed_code

        stylizer = self._stylizer(None)
        styles = [Style(name, Path(name), stylizer.encode_style(rgb, self.args.style_size)) for name, rgb in images]
        return mixed_code(styles, weights)

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

    def _out_dir(self, out_dir: str, token: str) -> Path | None:
        if os.environ.get(PRIVATE_ENV):
            return None
        try:
            return Path(out_dir) if (Path(out_dir) / _MARKER).read_text() == token else None
        except OSError:
            return None

    def render_chunk(self, job: dict, chunk, code, data: list | None, progress) -> dict:
        """Render one chunk into the chunk folder (or return its bytes where the folder is not visible here)."""
        from engines.stylizer import short_side_shape
        from streamer.temporal import make_temporal
        from streamer.video import render_video_file

        src = self._local_input(job["src"], data)
        shared = self._out_dir(job["out_dir"], job["token"])
        name = f"chunk-{chunk.index:05d}{job['suffix']}"
        out = (shared or self.tmp) / name
        stylizer = self._stylizer(short_side_shape(job["height"], job["width"], self.args.size))
        written = 0
        last = 0.0

        def on_frames(n: int) -> None:
            nonlocal written, last
            written += n
            _maybe_fault(written)
            if time.monotonic() - last > 0.3 or written == chunk.frames:
                last = time.monotonic()
                progress.set.remote(chunk.index, written)

        stats = render_video_file(src, out, stylizer, code, self.args.alpha, self.args.preserve_color,
                                  codec=job["codec"], crf=self.args.crf, progress=False,
                                  temporal=make_temporal(self.args), size=self.args.size, preset=self.args.preset,
                                  window=chunk, on_frames=on_frames, upscale=self.args.upscale)
        result = {"index": chunk.index, "frames": stats.frames, "name": name}
        if shared is None:
            result["bytes"] = out.read_bytes()
            out.unlink()
        return result

    def render_file(self, job: dict, code, data: list | None) -> dict:
        """A folder's file: one image, or one whole video (with its audio), as the local render does it."""
        from streamer import render, video
        from streamer.imageio import load_image_with_alpha, save_image
        from streamer.temporal import make_temporal

        src = self._local_input(job["src"], data)
        shared = self._out_dir(job["out_dir"], job["token"])
        out = (shared or self.tmp) / job["name"]
        if job["kind"] == "video":
            container, info = video.open_video(src)
            container.close()
            stylizer = self._stylizer(video.short_side_shape(info.height, info.width, self.args.size))
            video.render_video_file(src, out, stylizer, code, self.args.alpha, self.args.preserve_color,
                                    codec=video.check_output(out, self.args.codec), crf=self.args.crf,
                                    progress=False, temporal=make_temporal(self.args),
                                    max_frames=self.args.max_frames, size=self.args.size, preset=self.args.preset,
                                    upscale=self.args.upscale)
        else:
            rgb, alpha_channel = load_image_with_alpha(src, "input image")
            save_image(out, render.render_image(self._stylizer(None), rgb, code, self.args), alpha_channel)
        result = {"name": job["name"]}
        if shared is None:
            result["bytes"] = out.read_bytes()
            out.unlink()
        return result


def _maybe_fault(written: int) -> None:
    """Test seam (:data:`FAULT_ENV`): the first worker to claim the marker file dies here, mid-chunk."""
    marker = os.environ.get(FAULT_ENV)
    if marker and written >= 3:
        try:
            os.unlink(marker)
        except OSError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


# -- the driver ------------------------------------------------------------------------------------
class _ChunkDir:
    """A temp folder beside the output for chunk files, with a token that tells a worker it sees this folder."""

    def __init__(self, dst: Path) -> None:
        try:
            self.path = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".chunks", dir=dst.parent))
        except OSError as exc:
            raise InputError(f"cannot write beside {dst}: {exc.strerror or exc}") from None
        self.token = secrets.token_hex(8)
        (self.path / _MARKER).write_text(self.token)

    def store(self, result: dict) -> Path:
        path = self.path / result["name"]
        if "bytes" in result:
            path.write_bytes(result["bytes"])
        return path

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _style_images(args: argparse.Namespace) -> list[tuple[str, Any]]:
    from streamer.imageio import load_image
    from streamer.options import check_style_weights, expand_style_paths

    paths = expand_style_paths(args.style, args.style_size)
    check_style_weights(args.style_weights, len(paths))
    return [(p.stem, load_image(p, "style image")) for p in paths]


def _run_queue(cluster: Cluster, tasks: deque, submit, on_done, bar: tqdm, progress_total: bool,
               on_error=None) -> None:
    """Keep every actor busy with one task; ``submit(actor, task) -> ref``; ``on_done(task, result)``;
    ``on_error(task, StreamerError)`` for a task the user's input broke (default: stop and raise it)."""
    ray = cluster.ray
    inflight: dict[Any, tuple[Any, Any]] = {}
    idle = list(cluster.actors)
    try:
        while tasks or inflight:
            while idle and tasks:
                actor = idle.pop()
                task = tasks.popleft()
                inflight[submit(actor, task)] = (actor, task)
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=0.3)
            for ref in done:
                actor, task = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    error = _task_error(exc)
                    if on_error is None or isinstance(error, DeviceError):
                        raise error from None
                    on_error(task, error)
                else:
                    on_done(task, result)
                idle.append(actor)
            if progress_total:
                bar.n = ray.get(cluster.progress.total.remote())
                bar.refresh()
    except BaseException:
        for ref in inflight:  # a running actor task finishes its chunk; the caller then stops the actors
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - already done or its worker gone
                pass
        raise


def _task_error(exc: BaseException) -> BaseException:
    """A worker's StreamerError is the user's error (one line); anything else stays an internal error."""
    from engines.errors import StreamerError

    cause = getattr(exc, "cause", None)
    if isinstance(cause, StreamerError):
        return cause
    first = str(exc).strip().splitlines()
    return DeviceError(f"a cluster worker failed: {first[-1] if first else exc.__class__.__name__}")


def check_video_on_cluster(args: argparse.Namespace) -> dict:
    """The local render's checks and the frame index, before Ray starts: a bad input fails in a second."""
    from streamer import chunks as ch
    from streamer.temporal import make_temporal
    from streamer.video import check_video_job

    src, dst, encoder, info = check_video_job(args)
    codec = encoder["codec"]
    images = _style_images(args)
    make_temporal(args)
    index = ch.scan_frames(src)
    if not index.pts:
        raise InputError(f"cannot decode any video frame of {src}: the file is corrupt or unsupported")
    return {"src": src, "dst": dst, "codec": codec, "info": info, "images": images, "index": index}


def render_video_on_cluster(args: argparse.Namespace, cluster: Cluster, checked: dict) -> int:
    from streamer import chunks as ch

    src, dst, codec, info = checked["src"], checked["dst"], checked["codec"], checked["info"]
    images, index = checked["images"], checked["index"]
    total = len(index.pts) if args.max_frames is None else min(args.max_frames, len(index.pts))
    size = args.chunk_frames or ch.auto_chunk_frames(total, len(cluster.actors))
    plan = ch.plan_chunks(index, size, ch.TEMPORAL_WARMUP if args.temporal else 0, args.max_frames)
    log.info("rendering %s (%dx%d, %d frames) on %d workers in %d chunks of about %d frames", src, info.width,
             info.height, total, len(cluster.actors), len(plan), size)
    data = cluster.input_for(src)
    code = cluster.actors[0].style_code.remote(images, args.style_weights)
    work = _ChunkDir(dst)
    job = {"src": str(src.resolve()), "out_dir": str(work.path), "token": work.token, "suffix": dst.suffix,
           "codec": codec, "width": info.width, "height": info.height}
    done: dict[int, Path] = {}
    bar = tqdm(total=total, desc="render", unit="frame", disable=args.quiet, dynamic_ncols=True, file=sys.stderr)
    t0 = time.perf_counter()
    interrupted = False
    try:
        try:
            _run_queue(cluster, deque(plan), lambda a, c: a.render_chunk.remote(job, c, code, data, cluster.progress),
                       lambda c, r: done.__setitem__(c.index, work.store(r)), bar, True)
        except KeyboardInterrupt:
            interrupted = True
        prefix = []
        for chunk in plan:
            if chunk.index not in done:
                break
            prefix.append((chunk, done[chunk.index]))
        if interrupted and not prefix:
            print("streamer: interrupted before the first chunk was done; nothing was written", file=sys.stderr)
            return 130
        until = None
        if interrupted or args.max_frames is not None:
            last = prefix[-1][0]
            until = float(last.end_pts * info.time_base) if last.end_pts is not None else None
        frames = ch.join_chunks(src, dst, prefix, codec=codec, crf=args.crf, preset=args.preset, audio_until=until)
    finally:
        bar.close()
        work.remove()
    seconds = time.perf_counter() - t0
    if interrupted:
        print(f"streamer: interrupted: {dst} holds the first {frames} frames and plays", file=sys.stderr)
        return 130
    log.info("wrote %s: %d frames in %.1f s (%.1f frames/s) on %d workers", dst, frames, seconds,
             frames / seconds if seconds else 0.0, len(cluster.actors))
    return 0


def render_on_cluster(args: argparse.Namespace) -> int:
    """The `--cluster` path of `streamer render`: a video in chunks, a folder one task per file."""
    from streamer import video

    src = Path(args.input)
    is_video = video.is_video_path(src)
    if not is_video and not src.is_dir():
        raise InputError("--cluster renders a video file or a folder; render a single image without it")
    checked = check_video_on_cluster(args) if is_video else check_folder_on_cluster(args)
    with Cluster(args) as cluster:
        if is_video:
            return render_video_on_cluster(args, cluster, checked)
        return render_folder_on_cluster(args, cluster, checked)


def folder_tasks(src: Path, dst: Path) -> list[dict]:
    """The local folder render's jobs (images, same names) plus the folder's videos: one task per file."""
    from streamer import video
    from streamer.render import folder_jobs

    videos = sorted(p for p in src.iterdir() if p.is_file() and video.is_video_path(p))
    try:
        images = folder_jobs(src, dst)
    except InputError:
        if not videos:
            raise InputError(f"no images or videos in folder {src}") from None
        dst.mkdir(parents=True, exist_ok=True)
        images = []
    tasks = [{"kind": "image", "src": p, "dst": d} for p, d in images]
    tasks += [{"kind": "video", "src": p, "dst": video._output_path(p, dst)} for p in videos]  # noqa: SLF001
    return tasks


def check_folder_on_cluster(args: argparse.Namespace) -> dict:
    """A folder's tasks and the style images, before Ray starts."""
    src, dst = Path(args.input), Path(args.output)
    if args.mask:
        raise InputError("--mask works with a single image, not a folder")
    from streamer.render import check_folder_outputs

    images = _style_images(args)
    tasks = folder_tasks(src, dst)
    check_folder_outputs([(t["src"], t["dst"]) for t in tasks], dst, args)  # the local folder's rules
    return {"tasks": tasks, "images": images}


def render_folder_on_cluster(args: argparse.Namespace, cluster: Cluster, checked: dict) -> int:
    """A folder: each file is one task on a free worker; a file that fails is skipped, the others rendered."""
    from streamer.render import skipped_summary

    dst = Path(args.output)
    tasks, images = checked["tasks"], checked["images"]
    todo = deque(tasks)
    code = cluster.actors[0].style_code.remote(images, args.style_weights)
    work = _ChunkDir(dst / "x")
    failed: list[str] = []
    written = 0

    def submit(actor, task):
        job = {"kind": task["kind"], "src": str(task["src"].resolve()), "name": task["dst"].name,
               "out_dir": str(work.path), "token": work.token}
        return actor.render_file.remote(job, code, cluster.input_for(task["src"]))

    def on_done(task, result):
        nonlocal written
        os.replace(work.store(result), task["dst"])  # same folder: the output appears whole or not at all
        written += 1
        bar.update(1)

    bar = tqdm(total=len(todo), desc="render", unit="file", disable=args.quiet or len(todo) < 2, file=sys.stderr)
    def on_error(task, exc):  # one bad file: say so, render the others
        failed.append(task["src"].name)
        log.warning("skipped: %s: %s", task["src"].name, exc)

    try:
        _run_queue(cluster, todo, submit, on_done, bar, False, on_error)
    finally:
        bar.close()
        work.remove()
    if failed:
        raise InputError(skipped_summary(failed, len(tasks), written, dst, "files"))
    log.info("wrote %d files into %s", written, dst)
    return 0
