"""Video files: `streamer render in.mp4 out.mp4 --style S`.

Every frame is stylized in order and written with the source's timestamps (variable frame rate
included); audio is copied without re-encoding where the container allows it. Decoding, stylizing
and encoding run in separate threads joined by bounded queues (streamer.pipeline), so the render
goes at the speed of the engine rather than the sum of the stages. The output is written to a temp
file and renamed at the end; Ctrl-C finishes a valid, shorter file.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm import tqdm

from engines.backends.switch import EngineSpans, current_label
from engines.errors import InputError
from engines.progress import bars_enabled, tqdm_disable
from engines.models import StyleCode
from engines.stylizer import Stylizer, back_to_source, short_side_shape, to_working_size
from engines.upscale import UPSCALE_METHODS
from streamer.encoding import CONTAINERS, DEFAULT_PRESET, Encoding, add_encoder_options
from streamer.job import Job
from streamer.fileutil import AtomicOutput, check_overwrite, refuse_same_file
from streamer.pipeline import ThreadedPipeline, run_in_thread
from streamer.signals import exit_code, finishing, signal_number, stopped_by
from streamer.temporal import add_temporal_options, make_temporal
from streamer.videoio import VideoWriter
from streamer.videoread import BestEffortPts, VideoInfo, open_video, video_stream

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
#: frames waiting between two stages; a few are enough to absorb jitter, more only costs memory
QUEUE_FRAMES = 4
#: frames per engine call when frames stay on the device (offline render: throughput over latency)
DEVICE_BATCH = 8
#: how much lower the decode and encode threads' CPU priority is than the network's: they fill its gaps
HELPER_NICE = 10


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def add_video_options(p: argparse.ArgumentParser) -> None:
    """Options only video renders use (codec, quality, frame limit)."""
    g = p.add_argument_group("video files")
    add_encoder_options(g)
    g.add_argument("--max-frames", type=int, default=None, metavar="N",
                   help="stop after the first N frames (for previews and scripts)")
    add_temporal_options(p)


@dataclass
class RenderStats:
    frames: int
    seconds: float
    fps: float
    interrupted: bool = False
    #: the signal that interrupted the render (SIGINT for Ctrl-C; streamer.signals)
    signum: int = int(signal.SIGINT)
    #: video packets that could not be decoded (skipped, said once by the caller)
    bad_packets: int = 0
    #: with a window (a chunk): the source pts of its first written frame, where its file's time 0 is
    first_pts: int | None = None
    #: which engine stylized which frames: ``torch fp32 for frames 0-41, then openvino fp32 for frames 42-239``
    engines: str = ""


# -- decoding (first thread) ---------------------------------------------------------------------
@dataclass
class _Decoded:
    """What the decode thread learned, read by the caller once it is done."""

    frames: int = 0
    bad_packets: int = 0


def _decode(container: av.container.InputContainer, info: VideoInfo, size: int, max_frames: int | None,
            report: _Decoded, batch: int = 0, window=None) -> Iterator[tuple[str, Any, int | None]]:
    """Demux in file order: ("audio", packet, None) for audio and subtitle packets and ("video", (rgb at
    working size, rgb as decoded), pts).

    ``window`` (a :class:`streamer.cluster.chunks.Chunk`: one piece of a cluster render): seek to its keyframe, yield
    ("warm", rgb, pts) for its warm-up frames, then its frames, no audio, and stop at its end.

    ``batch`` > 0 (frames that go to the GPU): ("videos", [rgb at source size, ...], [pts, ...]) of
    ``batch`` consecutive frames instead (fewer only at the end), resizing being the device's job. Audio
    packets that arrive while a batch fills follow it (a file interleaves audio between most frames:
    flushing there made batches of one); the muxer orders the output by time.
    """
    vstream = video_stream(container, info)
    vstream.thread_type = "AUTO"
    streams = [vstream, *container.streams.audio, *container.streams.subtitles] if window is None else [vstream]
    if window is not None and window.seek_pts > 0:
        container.seek(window.seek_pts, stream=vstream, backward=True)
    step = 1 / (info.fps * info.time_base)  # one frame in time-base units, for frames without any timestamp
    best_effort = BestEffortPts()
    held: list[np.ndarray] = []
    held_pts: list[int] = []
    held_audio: list[av.Packet] = []

    def flush() -> Iterator[tuple[str, Any, Any]]:
        if held:
            yield "videos", list(held), list(held_pts)
            held.clear()
            held_pts.clear()
        for audio in held_audio:
            yield "audio", audio, None
        held_audio.clear()

    for packet in container.demux(*streams):
        if packet.stream.type != "video":  # audio and subtitles: copied, in file order
            if held:
                held_audio.append(packet)
            else:
                yield "audio", packet, None
            continue
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            if window is None or packet.pts is None or window.start_pts <= packet.pts and not window.is_after(packet.pts):
                report.bad_packets += 1  # a chunk counts only its own frames' packets, as the whole file would
            log.debug("undecodable video packet skipped: %s", exc)
            continue
        for frame in frames:
            pts = best_effort(frame.pts, frame.dts)
            if pts is None:
                pts = round(report.frames * step)
            if window is not None and (pts < window.warm_pts or window.is_after(pts)):
                if window.is_after(pts):
                    yield from flush()
                    return
                continue
            rgb = frame.to_ndarray(format="rgb24")
            if window is not None and pts < window.start_pts:
                yield "warm", (to_working_size(rgb, size), rgb), pts  # not counted, not written
                continue
            report.frames += 1
            if batch > 0:
                held.append(rgb)
                held_pts.append(pts)
                if len(held) >= batch:
                    yield from flush()
            else:
                yield "video", (to_working_size(rgb, size), rgb), pts
            if max_frames is not None and report.frames >= max_frames:
                yield from flush()
                return
    yield from flush()


def full_batch(frames: list[np.ndarray], batch: int) -> np.ndarray:
    """``frames`` stacked, the last one repeated up to ``batch``: a short last batch (end of the video, of a
    chunk, of --max-frames) would be one more shape for a compiled engine to build (a 20-40 s compile,
    and one step nearer its limit); its outputs past ``len(frames)`` are dropped."""
    return np.stack(frames + [frames[-1]] * max(0, batch - len(frames)))


# -- the render ------------------------------------------------------------------------------------
def render_video_file(src: Path, dst: Path, stylizer: Stylizer, code: StyleCode, alpha: float = 1.0,
                      keep_color: bool = False, codec: str = "libx264", crf: int = 18, progress: bool = True,
                      temporal=None, max_frames: int | None = None, *, size: int = 0,
                      preset: str = DEFAULT_PRESET, x264_threads: int | None = None,
                      device_frames: bool | None = None, output: AtomicOutput | None = None, window=None,
                      on_frames: Callable[[int], None] | None = None,
                      upscale: str = UPSCALE_METHODS[0]) -> RenderStats:
    """Stylize every frame of ``src`` into ``dst`` (replaced if present), keeping timestamps and audio.

    ``size``: stylize with the short side at ``size`` px and scale back (``upscale``: guided or bicubic, see
    engines.upscale), so ``dst`` has ``src``'s size; colours are kept (``keep_color``) at that size.
    ``temporal``: optional filter with ``process(source_rgb, stylized_rgb) -> rgb`` and ``reset()``, called on
    every frame in order, at the working size, between stylize and encode.
    A Ctrl-C (or SIGTERM/SIGHUP, streamer.signals) returns stats with ``interrupted=True`` and a valid ``dst``
    holding the frames done so far. ``output``: ``dst`` taken (locked) by the caller before loading a model.
    ``device_frames`` (default: on a CUDA engine without ``temporal``): frames go to the engine's device
    as uint8 in batches of :data:`DEVICE_BATCH` (the last one padded: :func:`full_batch`) and every per-pixel
    step runs there (Stylizer.stylize_frames); the CPU threads only decode and encode.
    ``window``: render only that chunk (see :func:`_decode`), written without audio and with timestamps
    relative to its first written frame (``first_pts``; streamer.cluster.chunks joins the chunks); ``on_frames(n)``: after each n written.
    """
    src, dst = Path(src), Path(dst)
    if device_frames is None:
        device_frames = getattr(getattr(stylizer, "device", None), "type", None) == "cuda" and temporal is None
    batch = max(1, min(DEVICE_BATCH, stylizer.engine.max_batch)) if device_frames else 0
    mover = None
    if device_frames:
        from engines.device_frames import FrameMover

        mover = FrameMover(stylizer.device)
    container, info = open_video(src)
    decoded = _Decoded()
    spans = EngineSpans()  # noted in the stylize thread, the one that switches engines (engines.backends.switch)
    if temporal is not None:
        temporal.reset()

    def stylize(item: tuple[str, Any, int | None]) -> tuple[str, Any, int | None]:
        kind, data, pts = item
        if kind == "videos":
            dev = mover.upload(full_batch(data, batch))
            out = stylizer.stylize_frames(dev, code, alpha, keep_color=keep_color, size=size, upscale_method=upscale)
            spans.note(current_label(stylizer), len(data))
            return kind, mover.download(out).result()[:len(data)], pts  # back at the source size
        if kind not in ("video", "warm"):
            return item
        work, source = data
        out = stylizer.stylize(work, code, alpha)
        if kind == "video":
            spans.note(current_label(stylizer))
        if temporal is not None:
            out = temporal.process(work, out)
        return kind, (out, source), pts

    def encode(item: tuple[str, Any, int | None]) -> int:
        kind, data, pts = item
        if kind == "audio":
            writer.mux_audio(data)
            return 0
        if kind == "warm":
            return 0
        if kind == "videos":
            for frame, t in zip(data, pts):
                writer.write(frame, relative(t))
            return len(pts)
        writer.write(back_to_source(*data, upscale, keep_color), relative(pts))  # in this thread: beside the engine
        return 1

    total = info.frames if max_frames is None else min(max_frames, info.frames or max_frames)
    first: list[int] = []  # a chunk's first written frame's pts: its file's timestamps start at 0 there

    def relative(pts: int) -> int:
        if window is None:
            return pts
        if not first:
            first.append(pts)
        return pts - first[0]

    t0 = time.perf_counter()
    stop: KeyboardInterrupt | None = None
    writer: VideoWriter | None = None
    bar = tqdm(total=total or None, desc="render", unit="frame", disable=tqdm_disable(progress), dynamic_ncols=True,
               file=sys.stderr)
    try:
        # Opened in a lowered-priority thread so the encoder's own worker threads are lowered too.
        writer = run_in_thread(lambda: VideoWriter(dst, info.width, info.height, info.fps, codec=codec, crf=crf,
                                                   time_base=info.time_base, preset=preset,
                                                   audio_from=container if window is None else None,
                                                   threads=x264_threads, rotation=info.rotation, output=output,
                                                   subtitles=window is None),
                               nice=HELPER_NICE, name="open-encoder", undo=lambda w: w.abort())
        pipeline = ThreadedPipeline(_decode(container, info, size, max_frames, decoded, batch, window),
                                    [stylize, encode],
                                    maxsize=QUEUE_FRAMES, names=["decode", "stylize", "encode"],
                                    nice=[HELPER_NICE, 0, HELPER_NICE])
        with pipeline:
            try:
                for n in pipeline:
                    bar.update(n)
                    if on_frames is not None and n:
                        on_frames(n)
            except KeyboardInterrupt as exc:
                stop = exc
        # every thread has stopped here: the writer is ours alone
        log.debug("busy seconds: decode %.2f, stylize %.2f, encode %.2f, wall %.2f", *pipeline.busy,
                  time.perf_counter() - t0)
        if writer.frames == 0 and stop is None and window is None:  # a chunk may hold none (a damaged stretch)
            raise InputError(f"cannot decode any video frame of {src}: the file is corrupt or unsupported")
        if decoded.bad_packets and window is None:  # a chunk's are counted by the cluster's driver
            log.warning("%d damaged video packets in %s were skipped", decoded.bad_packets, src)
        with finishing() as late:  # the file is whole: a signal now must not throw it away
            writer.close()
        stop = stop or late.interrupt()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
        container.close()
    seconds = time.perf_counter() - t0
    return RenderStats(writer.frames, seconds, writer.frames / seconds if seconds > 0 else 0.0, stop is not None,
                       signum=signal_number(stop), bad_packets=decoded.bad_packets,
                       first_pts=first[0] if first else None, engines=spans.text())


# -- the command -----------------------------------------------------------------------------------
def _output_path(src: Path, dst: Path) -> Path:
    if dst.is_dir():
        dst = dst / (src.name if src.suffix.lower() in CONTAINERS else f"{src.stem}.mp4")
    if dst.suffix.lower() not in CONTAINERS:
        raise InputError(f"unsupported video output type '{dst.suffix or dst.name}': use one of "
                         f"{', '.join(CONTAINERS)}")
    if not dst.parent.is_dir():
        raise InputError(f"output folder does not exist: {dst.parent}")
    return dst


def check_max_frames(max_frames: int | None) -> None:
    """``--max-frames`` of a video render, a folder's videos or a cluster's: None (all) or positive."""
    if max_frames is not None and max_frames <= 0:
        raise InputError("--max-frames must be a positive number of frames")


def check_video_job(args: argparse.Namespace, job: Job) -> tuple[Path, Path, dict[str, Any], VideoInfo]:
    """Every cheap check of a video render, before any model loads: (input, output, encoder options, input info)."""
    src = Path(args.input)
    dst = _output_path(src, Path(args.output))
    if job.mask:
        raise InputError("--mask works with still images only, not with video")
    check_max_frames(args.max_frames)
    from streamer.options import expand_style_paths, run_inputs

    refuse_same_file([dst], [("input video", src), *run_inputs(job, expand_style_paths(args.style))])
    check_overwrite(dst, args.overwrite)
    encoder = Encoding.from_args(args).for_output(dst)
    container, info = open_video(src)  # fail on a broken input before loading any model
    container.close()
    return src, dst, encoder, info


def render_video(args: argparse.Namespace) -> int:
    """`streamer render IN.mp4 OUT.mp4`: check everything cheap first, then build the model and render."""
    from streamer.options import (build_stylizer, check_style_weights, expand_style_paths, finish_background_build,
                                  fit_short_side, load_styles, mixed_code)

    job = Job.from_args(args)
    src, dst, encoder, info = check_video_job(args, job)
    style_paths = expand_style_paths(args.style, job.style_size)
    check_style_weights(args.style_weights, len(style_paths))
    temporal = make_temporal(job)
    output = AtomicOutput(dst, overwrite=args.overwrite)  # read-only folder, or another run on it: fail now
    stylizer = None
    try:
        size = fit_short_side(job.size, info.height, info.width, "the video")
        work = short_side_shape(info.height, info.width, size)
        stylizer = build_stylizer(job, shape_hint=work, background=True)
        styles = load_styles(style_paths, stylizer, job.style_size, job.weights_dir)
        code = mixed_code(styles, job.style_weights)
        log.info("rendering %s (%dx%d, %s fps, %d frames) at %dx%d with %s", src, info.width, info.height,
                 f"{float(info.fps):.3g}", info.frames, work[1], work[0], ", ".join(s.name for s in styles))
        stats = render_video_file(src, dst, stylizer, code, job.alpha, job.preserve_color, **encoder,
                                  progress=bars_enabled(), temporal=temporal,
                                  max_frames=args.max_frames, size=size, output=output, upscale=job.upscale)
    except BaseException:
        finish_background_build(stylizer, wait=False)  # an error or Ctrl-C before the pipeline: the build stops
        raise
    finally:
        output.discard()  # a no-op once the writer has renamed it
    if stats.interrupted:
        finish_background_build(stylizer, wait=False)
        print(f"streamer: interrupted{stopped_by(stats.signum)}: {dst} holds the first {stats.frames} frames and "
              "plays", file=sys.stderr)
        return exit_code(stats.signum)
    missing = missing_frames(stats.frames, info, args.max_frames)
    if missing:
        finish_background_build(stylizer, wait=False)
        raise InputError(ended_early(src, dst, stats.frames, stats.frames + missing))
    log.info("wrote %s: %d frames in %.1f s (%.1f frames/s); engine %s", dst, stats.frames, stats.seconds, stats.fps,
             stats.engines)
    finish_background_build(stylizer)
    return 0


def ended_early(src: Path, dst: Path, written: int, announced: int) -> str:
    """The last line of a render whose input gave fewer frames than it announces (local and cluster alike)."""
    return (f"{src} ended early (truncated or damaged): {written} of the {announced} frames its container announces "
            f"could be read; {dst} holds those {written} and plays")


#: frames a duration-based count (MKV, WebM, AVI) may be off by, as a share of the count, before we call it short
ESTIMATE_SLACK = 0.02


def missing_frames(written: int, info: VideoInfo, max_frames: int | None) -> int:
    """How many of the frames the container announces (up to ``max_frames``) did not arrive; 0 when none.

    An exact count (MP4/MOV store it) must be met; one estimated from the duration may be off by a
    frame or two (rounding, a last frame's duration), so only a larger shortfall counts there.
    """
    if not info.frames:
        return 0
    expected = info.frames if max_frames is None else min(max_frames, info.frames)
    slack = 0 if info.frames_exact else max(2, round(ESTIMATE_SLACK * expected))
    return expected - written if expected - written > slack else 0
