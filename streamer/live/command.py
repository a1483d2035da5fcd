"""`streamer live`: the command. Its flags, their checks before anything loads, and the wiring of a source,
a model, styles and outputs into a :class:`~streamer.live.session.LiveSession`.

Three threads, joined by one-item "latest frame wins" slots, so no queue can grow:

    capture thread --slot--> engine thread --slot--> output loop (main thread)

The capture thread reads the source as fast as it delivers (files and the test pattern are paced at
their frame rate) and overwrites its slot; frames the engine had no time for are dropped and
counted. All style codes are computed before the first frame, so a style switch shows on the next frame.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engines.backends.switch import UpgradingEngine
from engines.errors import DeviceError, InputError
from engines.stylizer import short_side_shape
from streamer.encoding import Encoding, add_encoder_options
from streamer.job import Job
from streamer.fileutil import AtomicOutput, check_overwrite, refuse_same_file
from streamer.imageio import parse_size
from streamer.live.capture import open_source
from streamer.live.engine_thread import stylize_frame
from streamer.live.hotkeys import LiveState
from streamer.live.outputs import Output, VirtualCamera, Window, display_problem, open_window
from streamer.live.session import LiveSession
from streamer.live.sizing import (AUTO_MIN_SOURCE, CPU_TARGET_FPS, Sizing, auto_sizing, first_size, target_rate,
                                  working_size)
from streamer.live.streaming import add_stream_options, check_stream_args, open_sound, stream_outputs
from streamer.options import (add_engine_wait_option, add_model_options, add_style_options, add_upscale_option,
                              alpha_value, build_stylizer, check_live_precision, expand_style_paths,
                              finish_background_build, fit_short_side, load_styles, pick_device, run_inputs)
from streamer.sinks import Recording
from streamer.temporal import add_temporal_options, make_temporal

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "live", help="stylize a camera (or file, stream, test pattern) live: window, virtual camera, recording",
        description="Stylize a live source in real time. Outputs, any combination: --window (the default when "
                    "no other output is named), --vcam, --record FILE. Keys in the window: n/p next/previous "
                    "style, 1-9 pick, +/- alpha, c colours, space bypass, [/] size, m motion, u upscale, s snapshot, i HUD, "
                    "h help, f fullscreen, q/Esc quit. Without a window, type the same keys (and 'help') on stdin.")
    p.add_argument("--source", default="0",
                   help="camera number (default 0), video file, URL/stream, or 'test' for a moving test pattern")
    p.add_argument("--capture-size", default=None, metavar="WxH",
                   help="camera: size to ask for (default 1280x720); files/streams: scale down to fit; "
                        "test: pattern size (default 640x360)")
    p.add_argument("--fps", type=float, default=30.0,
                   help="camera rate to ask for, test pattern rate, and output rate (default 30)")
    p.add_argument("--size", default=None, metavar="N|auto",
                   help="stylize with the short side at N px, shown at the capture size (0 = capture size; "
                        "smaller is faster); auto: picked and adjusted while running to hold --target-fps, from "
                        "a short ladder of sizes all built before the first frame ([ and ] or 'size N' pin one). "
                        f"Default: 0 on a GPU; auto on a CPU (sources up to {AUTO_MIN_SOURCE} px: their own size)")
    add_upscale_option(p)
    p.add_argument("--target-fps", type=float, default=None,
                   help=f"the engine rate --size auto holds (default: {CPU_TARGET_FPS:g} on a CPU, what it "
                        "can reach at a watchable size; --fps on a GPU, as fast as the output shows)")
    p.add_argument("--motion", default="auto", choices=("auto", "on", "off"),
                   help="between two engine frames, show the last stylized frame carried along the optical flow to "
                        "the newest captured frame, so motion shows at --fps and matches where things are now "
                        "(key m switches it). auto (default): on with a CPU engine, which is slower than the output; "
                        "off on a GPU. Acts on the window and the virtual camera; a recording keeps each stylized frame once")
    p.add_argument("--loop", action="store_true", help="file source: start again at the end instead of stopping")
    add_style_options(p, several_means="switched live with n/p or 1..9 (all precomputed before the first frame)")
    o = p.add_argument_group("outputs")
    o.add_argument("--window", action="store_true",
                   help="preview window (the default when neither --vcam nor --record is given)")
    add_vcam_record_options(p, o, with_sound=", with the sound (a file source's own, or --audio)")
    o.add_argument("--window-toolkit", default="auto", choices=("auto", "opencv", "tk"),
                   help="auto: Tk (default), else OpenCV's window where that works (needs opencv-python)")
    add_stream_options(p)
    c = p.add_argument_group("control")
    c.add_argument("--hud", action="store_true", help="start with the HUD on (key i toggles it)")
    c.add_argument("--snapshot-dir", default=".", help="where s saves PNG snapshots (default: current folder)")
    c.add_argument("--max-frames", type=int, default=0,
                   help="stop after N output frames (with --record/--stream alone: N new frames; 0 = until q/Ctrl-C)")
    c.add_argument("--no-stdin", action="store_true", help="do not read commands from stdin")
    add_model_options(p)
    add_engine_wait_option(p)
    add_temporal_options(p)
    p.set_defaults(run=run)


def add_vcam_record_options(p: argparse.ArgumentParser, group, with_sound: str = "") -> None:
    """--vcam, --record and their settings: one definition for live and serve."""
    group.add_argument("--vcam", action="store_true",
                       help="send to a virtual camera (v4l2loopback on Linux, OBS on Windows/macOS) at --fps "
                            "(default 30)")
    group.add_argument("--record", default=None, metavar="FILE",
                       help="record the output to a video file (.mp4, .mkv, .webm, ...): each stylized frame once, "
                            "at its capture time (variable frame rate), encoded with --codec/--crf/--preset"
                            + with_sound)
    group.add_argument("--out-size", default=None, metavar="WxH",
                       help="size of the virtual camera and recording (default: the capture size)")
    group.add_argument("--vcam-backend", default=None, metavar="NAME|module:Class",
                       help="pyvirtualcam backend: a name (v4l2loopback, obs, unitycapture) or a class to register; "
                            "also STREAMER_VCAM_BACKEND")
    group.add_argument("--vcam-device", default=None, help="virtual camera device, e.g. /dev/video10")
    group.add_argument("--overwrite", action="store_true", help="replace an existing --record file")
    add_encoder_options(p.add_argument_group("recording (--record)"))


def check_record(args: argparse.Namespace) -> dict:
    """--record's file, before the model loads: not an existing one without --overwrite, an existing folder, a
    container and codec that go together. Returns the recording's encoder options ({} without --record)."""
    if not args.record:
        return {}
    rec = Path(args.record)
    check_overwrite(rec, args.overwrite)
    if not rec.parent.is_dir():
        raise InputError(f"output folder does not exist: {rec.parent}")
    return Encoding.from_args(args).for_output(rec)  # container, codec and crf checked before the model


def refuse_record_over_inputs(args: argparse.Namespace, job: Job, style_paths: list[Path]) -> None:
    """--record never onto the source file, a style, the decoder..."""
    if args.record:
        source_file = [("--source video", Path(args.source))] if Path(args.source).is_file() else []
        refuse_same_file([args.record], [*source_file, *run_inputs(job, style_paths)])


def _check_args(args: argparse.Namespace) -> dict:
    """Every flag checked before anything loads; returns the recording's encoder options."""
    args.alpha = alpha_value(args.alpha)
    working_size(args.size)
    if args.target_fps is not None and not 0 < args.target_fps <= 240:
        raise InputError(f"--target-fps must be greater than 0 and at most 240, not {args.target_fps:g}")
    if args.max_frames < 0:
        raise InputError("--max-frames must be 0 (no limit) or positive")
    if not args.fps > 0:
        raise InputError(f"--fps must be greater than 0, not {args.fps:g}")
    if args.fps > 240:
        raise InputError(f"--fps must be at most 240, not {args.fps:g}")
    if args.style_weights:
        raise InputError("--style-weights mixes styles for render; in live, several styles are switched with n/p/1-9")
    encoder = check_record(args)
    if not Path(args.snapshot_dir).is_dir():
        raise InputError(f"--snapshot-dir is not a folder: {args.snapshot_dir}")
    check_stream_args(args)
    return encoder


def run(args: argparse.Namespace) -> int:
    encoder = _check_args(args)
    want_window = args.window or not (args.vcam or args.record or args.stream)
    if want_window:
        problem = display_problem()  # before the camera and the model: fail in a second, not after loading
        if problem:
            raise DeviceError(problem)
    capture_size = parse_size(args.capture_size, "--capture-size")
    out_size = parse_size(args.out_size, "--out-size")
    job = Job.from_args(args)  # its size stays 0: live sizes itself, below
    asked_size = working_size(args.size)
    style_paths = expand_style_paths(args.style, job.style_size)
    temporal = make_temporal(job)
    refuse_record_over_inputs(args, job, style_paths)
    # the recording's file (and its lock) first: a read-only folder or another run on it fails before the model
    record_output = AtomicOutput(args.record, overwrite=args.overwrite) if args.record else None
    sound = None
    try:
        sound = open_sound(args)  # a microphone that does not exist fails here, in one line
        source = open_source(args.source, capture_size, args.fps, loop=args.loop)
    except BaseException:
        if record_output is not None:
            record_output.discard()
        if sound is not None:
            sound.close()
        raise
    outputs: list[Output] = []
    window: Window | None = None
    stylizer = None
    try:
        if sound is not None:
            log.info("sound: %s%s", sound.describe(),
                     f", {args.audio_delay:+g} ms" if args.audio_delay else "")
        log.info("source: %s", source.describe())
        w, h = source.width, source.height
        gpu = pick_device(job.device).type == "cuda"
        size, auto = first_size(asked_size, min(w, h), gpu)
        target_fps = target_rate(args.target_fps, args.fps, gpu)
        if args.target_fps and not auto:  # the size as asked (a --size too large is said next)
            log.warning("--target-fps only steers --size auto: the size stays at --size %d",
                        asked_size if isinstance(asked_size, int) else size)
        if isinstance(asked_size, int) and size != asked_size:
            fit_short_side(asked_size, h, w, "the source")  # says so
        out_w, out_h = out_size or (w, h)
        if args.vcam:  # before the model: a missing driver fails in a second
            outputs.append(VirtualCamera(out_w, out_h, args.fps, args.vcam_backend, args.vcam_device))
        work_h, work_w = short_side_shape(h, w, size)
        if (work_w, work_h) != (w, h) and not auto:
            log.info("stylizing at %dx%d, shown at %dx%d (--size %d)", work_w, work_h, w, h, size)
        stylizer = build_stylizer(job, shape_hint=(work_h, work_w), use="live", background=True)
        sizing: Sizing | None = None
        if auto:
            factor = getattr(getattr(stylizer, "model", None), "factor", 1)  # a stylizer of the API's own may have none
            sizing = auto_sizing(factor, min(w, h), size)
            size = sizing.size
            log.info("--size auto: working sizes %s, starting at %d, holding the engine at %g fps",
                     ", ".join(map(str, sizing.sizes)), sizing.size, target_fps)
        t0 = time.perf_counter()
        if len(style_paths) > 1:
            log.info("encoding %d styles (cached after the first time)...", len(style_paths))
        styles = load_styles(style_paths, stylizer, job.style_size, job.weights_dir)
        log.info("%d style%s ready in %.1f s%s", len(styles), "s" if len(styles) > 1 else "", time.perf_counter() - t0,
                 "; 1-9 pick the first nine, n/p go through all" if len(styles) > 9 else "")
        stylizer = check_live_precision(stylizer, job, lambda: _check_picture(style_paths[0], size, w, h),
                                        styles[0].code, (work_h, work_w))
        motion = _motion_on(args.motion, gpu, steady=want_window or args.vcam)
        state = LiveState(n_styles=len(styles), alpha=job.alpha, keep_color=job.preserve_color, hud=args.hud,
                          sizes=sizing.sizes if sizing else (), size=size, motion=motion, upscale=job.upscale)
        if isinstance(getattr(stylizer, "engine", None), UpgradingEngine):  # torch now: nothing to build; the fast
            for rung in sizing.sizes if sizing else (size,):  # engine is warmed at these before it takes over
                stylizer.engine.prepare(*short_side_shape(h, w, rung))
        else:
            with torch.inference_mode():  # warm-up: the first run allocates and picks kernels; auto builds every size
                for rung in sizing.sizes if sizing else (size,):
                    stylize_frame(stylizer, np.zeros((h, w, 3), np.uint8), styles[0].code, state, rung, None)
        if args.record:
            outputs.append(Recording(args.record, out_w, out_h, args.fps, args.overwrite, output=record_output,
                                     sound=sound is not None, audio_delay=args.audio_delay / 1000, **encoder))
        outputs += stream_outputs(args, out_w, out_h)
        if want_window:
            window = open_window(args.window_toolkit)
            log.info("window open (%s): h for keys, q or Esc to quit", window.toolkit)
        elif not args.no_stdin and _stdin_is_terminal():
            log.info("no window: type n, p, 1-9, +, -, c, space, s or q then Enter ('help' for more)")
        session = LiveSession(source, stylizer, styles, state, window=window, outputs=outputs, fps=args.fps,
                              size=size, max_frames=args.max_frames, temporal=temporal,
                              snapshot_dir=Path(args.snapshot_dir), stdin=not args.no_stdin, sizing=sizing,
                              target_fps=target_fps, sound=sound)
    except BaseException:
        finish_background_build(stylizer, wait=False)
        source.release()
        if sound is not None:
            sound.close()
        if record_output is not None:
            record_output.discard()  # a no-op once the recording owns it (its abort removes it)
        for out in outputs:
            out.abort()  # nothing was sent yet: a recording leaves no file
        if window is not None:
            window.close()
        raise
    try:  # straight after the set-up's own clean-up: the session's run closes everything from here on
        summary = session.run()  # SIGTERM/SIGHUP arrive as Ctrl-C (streamer.signals, installed by the CLI)
    except BaseException:
        finish_background_build(stylizer, wait=False)
        raise
    log.info("%d frames out in %.1f s; engine %.1f fps (%.0f ms a frame)%s; captured %d, dropped %d; "
             "latency %.0f ms; working size %s; %s; %s; stopped: %s", summary.frames_out, summary.seconds,
             summary.engine_fps, summary.step_ms, f" ({summary.engines})" if summary.engines else "",
             summary.frames_captured, summary.dropped, summary.latency_ms,
             summary.sizes_text(), summary.upscale_text(), summary.motion_text(), summary.stop_reason)
    for line in summary.sinks:
        log.info("%s", line)
    finish_background_build(stylizer)
    return 0


def _check_picture(path: Path, size: int, width: int, height: int) -> np.ndarray:
    """A real picture at the first working size, for the bf16 check: the first style image, stretched to it (the
    engine compares numbers, not looks, and a shape it has not built would evict one it has)."""
    from engines.stylizer import resize_to
    from streamer.imageio import load_image

    work_h, work_w = short_side_shape(height, width, size)
    return np.ascontiguousarray(resize_to(load_image(path, "style image"), (work_w, work_h)))


def _motion_on(choice: str, gpu: bool, steady: bool) -> bool:
    """``--motion``: auto is on where it pays (a CPU engine, slower than the output; see streamer.live.motion),
    and only where frames are shown at a steady rate: a recording alone takes each stylized frame once."""
    if choice == "on" and not steady:
        log.warning("--motion acts on the window and the virtual camera: a recording keeps each stylized frame "
                    "once, at its capture time")
    on = choice == "on" or (choice == "auto" and not gpu)
    if on and steady:
        log.info("motion between engine frames: on (m switches it)")
    return on and steady


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError, AttributeError):
        return False
