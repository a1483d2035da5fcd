"""`streamer live`: a camera (or file, stream, test pattern) stylized in real time.

Three threads, joined by one-item "latest frame wins" slots, so no queue can grow:

    capture thread --slot--> engine thread --slot--> output loop (main thread)

The capture thread reads the source as fast as it delivers (files and the test pattern are paced at
their frame rate) and overwrites its slot; frames the engine had no time for are dropped and
counted. The engine thread stylizes the newest frame with the current style, so latency stays at
about one engine step. The output loop runs at ``--fps`` in the main thread (GUI toolkits and
Ctrl-C both want it): it shows/sends the newest stylized frame, repeating it when the engine is
slower than the display, and handles keys (window) or typed commands (stdin).

All style codes are computed before the first frame, so a style switch shows on the next frame.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import queue
import select
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from engines.errors import DeviceError, InputError
from engines.stylizer import Stylizer, short_side_shape
from streamer.capture import CaptureThread, Frame, LatestSlot, Source, SourceEnded, open_source, parse_size
from streamer.fileutil import AtomicOutput
from streamer.hotkeys import Action, LiveState, handle_command, handle_key, status_line
from streamer.hud import draw_overlays
from streamer.options import (Style, add_model_options, add_style_options, alpha_value, build_stylizer,
                              check_short_side, expand_style_paths, fit_short_side, load_styles, pick_device)
from streamer.outputs import Recording, VirtualCamera, display_problem, open_window, resize_to
from streamer.video import add_encoder_options, encoder_options

log = logging.getLogger(__name__)

CPU_SIZE = 360  # default working short side on a CPU: microast runs near real time there
JOIN_TIMEOUT = 30.0  # seconds; an engine step on a slow device can take a while


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "live", help="stylize a camera (or file, stream, test pattern) live: window, virtual camera, recording",
        description="Stylize a live source in real time. Outputs, any combination: --window (the default when "
                    "no other output is named), --vcam, --record FILE. Keys in the window: n/p next/previous "
                    "style, 1-9 pick, +/- alpha, c colours, space bypass, s snapshot, i HUD, h help, f fullscreen, "
                    "q/Esc quit. Without a window, type the same keys (and 'help') on stdin.")
    p.add_argument("--source", default="0",
                   help="camera number (default 0), video file, URL/stream, or 'test' for a moving test pattern")
    p.add_argument("--capture-size", default=None, metavar="WxH",
                   help="camera: size to ask for (default 1280x720); files/streams: scale down to fit; "
                        "test: pattern size (default 640x360)")
    p.add_argument("--fps", type=float, default=30.0,
                   help="camera rate to ask for, test pattern rate, and output rate (default 30)")
    p.add_argument("--size", type=int, default=None,
                   help="stylize with the short side at N px, shown at the capture size (0 = capture size; "
                        f"default: 0 on a GPU, {CPU_SIZE} on a CPU; smaller is faster)")
    p.add_argument("--loop", action="store_true", help="file source: start again at the end instead of stopping")
    add_style_options(p, several_means="switched live with n/p or 1..9 (all precomputed before the first frame)")
    o = p.add_argument_group("outputs")
    o.add_argument("--window", action="store_true",
                   help="preview window (the default when neither --vcam nor --record is given)")
    o.add_argument("--vcam", action="store_true",
                   help="send to a virtual camera (v4l2loopback on Linux, OBS on Windows/macOS) at --fps (default 30)")
    o.add_argument("--record", default=None, metavar="FILE",
                   help="record the output to a video file (.mp4, .mkv, .webm, ...): each stylized frame once, at "
                        "its capture time (variable frame rate), encoded with --codec/--crf/--preset")
    o.add_argument("--out-size", default=None, metavar="WxH",
                   help="size of the virtual camera and recording (default: the capture size)")
    o.add_argument("--vcam-backend", default=None, metavar="NAME|module:Class",
                   help="pyvirtualcam backend: a name (v4l2loopback, obs, unitycapture) or a class to register; "
                        "also STREAMER_VCAM_BACKEND")
    o.add_argument("--vcam-device", default=None, help="virtual camera device, e.g. /dev/video10")
    o.add_argument("--window-toolkit", default="auto", choices=("auto", "opencv", "tk"),
                   help="auto: Tk (default), else OpenCV's window where that works (needs opencv-python)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing --record file")
    add_encoder_options(p.add_argument_group("recording (--record)"))
    c = p.add_argument_group("control")
    c.add_argument("--hud", action="store_true", help="start with the HUD on (key i toggles it)")
    c.add_argument("--snapshot-dir", default=".", help="where s saves PNG snapshots (default: current folder)")
    c.add_argument("--max-frames", type=int, default=0,
                   help="stop after N output frames (with --record alone: N recorded frames; 0 = until q/Ctrl-C)")
    c.add_argument("--no-stdin", action="store_true", help="do not read commands from stdin")
    add_model_options(p)
    from streamer.temporal import add_temporal_options

    add_temporal_options(p)
    p.set_defaults(run=run)


# -- measuring ---------------------------------------------------------------------------------
class RateMeter:
    """Events per second over the last ``span`` seconds."""

    def __init__(self, span: float = 2.0) -> None:
        self.span = span
        self.times: collections.deque[float] = collections.deque()
        self.total = 0

    def tick(self, t: float | None = None) -> None:
        t = time.perf_counter() if t is None else t
        self.times.append(t)
        self.total += 1
        while len(self.times) > 2 and t - self.times[0] > self.span:
            self.times.popleft()

    @property
    def rate(self) -> float:
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


@dataclass
class Result:
    image: np.ndarray  # stylized (or raw, in bypass) RGB at the capture size
    t_capture: float
    index: int
    style_index: int
    bypass: bool
    step: float  # seconds the engine spent on it


@dataclass
class Summary:
    """What a session did; logged at the end and checked by tests."""

    frames_out: int = 0
    frames_captured: int = 0
    frames_stylized: int = 0
    dropped: int = 0
    engine_fps: float = 0.0
    step_ms: float = 0.0
    latency_ms: float = 0.0
    seconds: float = 0.0
    stop_reason: str = ""


class Temporal(Protocol):
    def process(self, source_rgb: np.ndarray, stylized_rgb: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


# -- engine thread -----------------------------------------------------------------------------
def stylize_frame(stylizer: Stylizer, image: np.ndarray, code, state: LiveState, size: int,
                  temporal: Temporal | None) -> np.ndarray:
    """One frame: scaled to ``size`` (short side, 0 = as is), stylized, temporally filtered, back to its size."""
    h, w = image.shape[:2]
    work_h, work_w = short_side_shape(h, w, size)
    work = resize_to(image, (work_w, work_h))
    out = stylizer.stylize(work, code, state.alpha, keep_color=state.keep_color)
    if temporal is not None:
        out = temporal.process(work, out)
    return resize_to(out, (w, h))


class EngineThread(threading.Thread):
    """Stylizes the newest captured frame with the current state; owns torch's threads."""

    def __init__(self, stylizer: Stylizer, codes: list, get_state, in_slot: LatestSlot, out_slot: LatestSlot,
                 stop: threading.Event, temporal: Temporal | None = None, size: int = 0) -> None:
        super().__init__(name="engine", daemon=True)
        self.stylizer, self.codes, self.get_state = stylizer, codes, get_state
        self.in_slot, self.out_slot, self.stop_event = in_slot, out_slot, stop
        self.temporal, self.size = temporal, size
        self.meter = RateMeter()
        self.step_avg = 0.0

    def run(self) -> None:
        error: BaseException | None = None
        last: tuple[int, bool] | None = None
        try:
            if self.temporal is not None:
                self.temporal.reset()
            with torch.inference_mode():
                while not self.stop_event.is_set():
                    try:
                        frame: Frame | None = self.in_slot.take(timeout=0.1)
                    except SourceEnded:
                        break
                    if frame is None:
                        continue
                    state = self.get_state()
                    if self.temporal is not None and last is not None and last != (state.style_index, state.bypass):
                        self.temporal.reset()  # the previous output belongs to another style
                    last = (state.style_index, state.bypass)
                    t0 = time.perf_counter()
                    if state.bypass:
                        image = frame.image
                    else:
                        image = stylize_frame(self.stylizer, frame.image, self.codes[state.style_index], state,
                                              self.size, self.temporal)
                    step = time.perf_counter() - t0
                    if not state.bypass:  # the stylize time, not the pass-through's
                        self.step_avg = step if self.step_avg == 0 else 0.9 * self.step_avg + 0.1 * step
                    self.meter.tick()
                    self.out_slot.put(Result(image, frame.t_capture, frame.index, state.style_index, state.bypass,
                                             step))
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
            error = exc
        finally:
            self.out_slot.close(error)


# -- stdin commands ----------------------------------------------------------------------------
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


# -- the session -------------------------------------------------------------------------------
class LiveSession:
    """Runs capture, engine and outputs until quit, ``max_frames``, the source's end, an error or Ctrl-C.

    ``window`` / ``outputs``: objects with ``show``+``wait``+``set_fullscreen``+``close`` and
    ``send``+``close``. Whatever happens, the threads are joined, the source is released and every
    output is closed (a recording is finalised) before :meth:`run` returns or raises.
    """

    def __init__(self, source: Source, stylizer: Stylizer, styles: list[Style], state: LiveState, *,
                 window: Any = None, outputs: list[Any] | None = None, fps: float = 30.0, size: int = 0,
                 max_frames: int = 0, temporal: Temporal | None = None, snapshot_dir: Path = Path("."),
                 stdin: bool = False) -> None:
        self.source, self.stylizer, self.styles = source, stylizer, styles
        self.state = state
        self.window, self.outputs = window, list(outputs or [])
        self.fps, self.size, self.max_frames = fps, size, max_frames
        self.snapshot_dir = Path(snapshot_dir)
        self.stop = threading.Event()
        self.in_slot, self.out_slot = LatestSlot(), LatestSlot()
        self.capture = CaptureThread(source, self.in_slot, self.stop)
        self.engine = EngineThread(stylizer, [s.code for s in styles], lambda: self.state, self.in_slot,
                                   self.out_slot, self.stop, temporal, size)
        self.stdin = StdinCommands(self.stop) if stdin else None
        self.summary = Summary()
        self.latency = 0.0
        self.current: Result | None = None
        self._snapshots = 0

    # state changes ----------------------------------------------------------------------------
    def apply(self, new: LiveState, actions: list[Action]) -> bool:
        """Adopt a new state and perform its actions; False when the user asked to quit."""
        self.state = new  # one reference assignment: the engine sees the old or the new state, never a mix
        for action in actions:
            if action is Action.QUIT:
                return False
            if action is Action.STYLE_CHANGED:
                log.info("style %d/%d: %s", new.style_index + 1, new.n_styles, self.styles[new.style_index].name)
            elif action is Action.BYPASS_CHANGED:
                log.info("bypass %s", "on (raw camera)" if new.bypass else "off")
            elif action is Action.SNAPSHOT:
                self.snapshot()
            elif action is Action.FULLSCREEN and self.window is not None:
                self.window.set_fullscreen(new.fullscreen)
        return True

    def snapshot(self) -> Path | None:
        if self.current is None:
            return None
        from streamer.imageio import save_image

        self._snapshots += 1
        name = time.strftime("streamer-%Y%m%d-%H%M%S") + f"-{self._snapshots:03d}.png"
        path = self.snapshot_dir / name
        try:
            save_image(path, self.current.image)
        except InputError as exc:
            log.warning("snapshot failed: %s", exc)
            return None
        log.info("snapshot: %s", path)
        return path

    def _handle_input(self, keys: list[str]) -> bool:
        for key in keys:
            if not self.apply(*handle_key(key, self.state)):
                return False
        if self.stdin is not None:
            for line in self.stdin.drain():
                names = [s.name for s in self.styles]
                new, actions, reply = handle_command(line, self.state, names)
                if reply is None and new != self.state:
                    reply = status_line(new, names)
                if reply:
                    print(reply, flush=True)
                if not self.apply(new, actions):
                    return False
        return True

    def _wait(self, seconds: float) -> list[str]:
        if self.window is not None:
            keys = self.window.wait(max(0.001, seconds))
            return keys
        if seconds > 0:
            time.sleep(seconds)
        return []

    # the loop ---------------------------------------------------------------------------------
    def _first_result(self) -> Result | None:
        """Wait for the engine's first frame, keeping the window and stdin responsive."""
        while True:
            try:
                result = self.out_slot.poll()
            except SourceEnded:
                return None
            if result is not None:
                return result
            if not self._handle_input(self._wait(0.02)):
                return None
            if self.window is not None and self.window.closed:
                return None

    def _emit(self, result: Result, fresh: bool) -> None:
        """Every tick to the window and steady-rate outputs (a repeat when no new frame came); a new frame
        once, with its capture time, to timestamped ones (a recording)."""
        for out in self.outputs:
            if not getattr(out, "timestamped", False):
                out.send(result.image)
            elif fresh:
                out.send(result.image, result.t_capture)
        if self.window is not None:
            style = self.styles[result.style_index].name
            shown = draw_overlays(result.image, self.state, style, self.engine.meter.rate,
                                  self.in_slot.dropped, self.latency * 1000)
            self.window.show(shown)

    def run(self) -> Summary:
        t_start = time.perf_counter()
        self.capture.start()
        self.engine.start()
        if self.stdin is not None:
            self.stdin.start()
        try:
            self.summary.stop_reason = self._loop()
        except BaseException as exc:
            self.summary.stop_reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
            self.summary.seconds = time.perf_counter() - t_start
            self.shutdown(raise_errors=False)  # the first error is the one the user sees
            raise
        self.summary.seconds = time.perf_counter() - t_start
        self.shutdown()
        return self.summary

    @property
    def steady(self) -> bool:
        """Whether something wants frames at a steady ``--fps`` (a window, a virtual camera); a recording
        alone takes each new frame when it comes, so then ``--max-frames`` counts recorded frames."""
        return self.window is not None or any(not getattr(o, "timestamped", False) for o in self.outputs)

    def _loop(self) -> str:
        first = self._first_result()
        if first is None:
            return "quit before the first frame"
        interval = 1.0 / self.fps
        next_due = time.perf_counter()
        self.current = first
        fresh: Result | None = first
        while True:
            if fresh is not None:
                self.latency = (time.perf_counter() - fresh.t_capture) if self.latency == 0 else \
                    0.9 * self.latency + 0.1 * (time.perf_counter() - fresh.t_capture)
            if fresh is not None or self.steady:
                self._emit(self.current, fresh is not None)
                self.summary.frames_out += 1
                if self.summary.frames_out == 1:  # every output (a recording too) has a frame from here on
                    log.info("first frame out (%.0f ms after its capture)", 1000 * (time.perf_counter() - first.t_capture))
                if self.max_frames and self.summary.frames_out >= self.max_frames:
                    return f"{self.max_frames} frames done"
            next_due += interval
            now = time.perf_counter()
            if now - next_due > interval:
                next_due = now  # output fell behind (slow window/encoder): no catch-up burst
            if not self._handle_input(self._wait(next_due - now if self.steady else 0.0)):
                return "quit"
            if self.window is not None and self.window.closed:
                return "window closed"
            try:  # a recording alone waits for the engine's next frame (briefly: stdin stays responsive)
                fresh = self.out_slot.poll() if self.steady else self.out_slot.take(timeout=0.05)
            except SourceEnded:
                return "source ended"
            if fresh is not None:
                self.current = fresh

    def shutdown(self, raise_errors: bool = True) -> None:
        """Stop and join the threads, release the source, close every output; the first error wins."""
        self.stop.set()
        self.in_slot.close()
        for thread, timeout in ((self.capture, 5.0), (self.engine, JOIN_TIMEOUT)):
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s thread did not stop in time", thread.name)
        if self.stdin is not None:
            self.stdin.join(0.5)  # POSIX: stops within 0.2 s; elsewhere it may sit in readline (a daemon thread)
        error: BaseException | None = None
        for out in [*self.outputs, self.window]:
            if out is None:
                continue
            try:
                out.close()
            except BaseException as exc:  # noqa: BLE001 - close the others first
                error = error or exc
        s = self.summary
        s.frames_captured = self.in_slot.put_count
        s.frames_stylized = self.engine.meter.total
        s.dropped = self.in_slot.dropped
        s.engine_fps = self.engine.meter.total / max(1e-9, s.seconds)
        s.step_ms = self.engine.step_avg * 1000
        s.latency_ms = self.latency * 1000
        if error is not None:
            if raise_errors:
                raise error
            log.warning("while stopping: %s", error)


# -- command -----------------------------------------------------------------------------------
def temporal_filter(args: argparse.Namespace) -> Temporal | None:
    """The temporal-stability filter ``--temporal`` asks for, or None."""
    from streamer.temporal import make_temporal

    return make_temporal(args)


def _check_args(args: argparse.Namespace) -> None:
    args.alpha = alpha_value(args.alpha)
    if args.size is not None and args.size < 0:
        raise InputError("--size must be 0 (capture size) or a positive number of pixels")
    if args.size is not None:
        check_short_side(args.size, "--size")
    if args.max_frames < 0:
        raise InputError("--max-frames must be 0 (no limit) or positive")
    if not args.fps > 0:
        raise InputError(f"--fps must be greater than 0, not {args.fps:g}")
    if args.fps > 240:
        raise InputError(f"--fps must be at most 240, not {args.fps:g}")
    if args.style_weights:
        raise InputError("--style-weights mixes styles for render; in live, several styles are switched with n/p/1-9")
    if args.record:
        rec = Path(args.record)
        if rec.exists() and not args.overwrite:
            raise InputError(f"output exists: {rec} (use --overwrite to replace it)")
        if not rec.parent.is_dir():
            raise InputError(f"output folder does not exist: {rec.parent}")
        args.encoder = encoder_options(args, rec)  # container, codec and crf checked before the model loads
    if not Path(args.snapshot_dir).is_dir():
        raise InputError(f"--snapshot-dir is not a folder: {args.snapshot_dir}")


def processing_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(H, W) the engine works at for ``--size`` (short side; 0 = as captured)."""
    if not size or min(width, height) == size:
        return height, width
    scale = size / min(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    want_window = args.window or not (args.vcam or args.record)
    if want_window:
        problem = display_problem()  # before the camera and the model: fail in a second, not after loading
        if problem:
            raise DeviceError(problem)
    capture_size = parse_size(args.capture_size, "--capture-size")
    out_size = parse_size(args.out_size, "--out-size")
    style_paths = expand_style_paths(args.style, args.style_size)
    temporal = temporal_filter(args)
    # the recording's file (and its lock) first: a read-only folder or another run on it fails before the model
    record_output = AtomicOutput(args.record, overwrite=args.overwrite) if args.record else None
    try:
        source = open_source(args.source, capture_size, args.fps, loop=args.loop)
    except BaseException:
        if record_output is not None:
            record_output.discard()
        raise
    outputs: list[Any] = []
    window = None
    try:
        log.info("source: %s", source.describe())
        w, h = source.width, source.height
        if args.size is None:
            small = min(w, h) <= CPU_SIZE
            args.size = 0 if small or pick_device(args.device).type == "cuda" else CPU_SIZE  # never upscale
        args.size = fit_short_side(args.size, h, w, "the source")
        out_w, out_h = out_size or (w, h)
        if args.vcam:  # before the model: a missing driver fails in a second
            outputs.append(VirtualCamera(out_w, out_h, args.fps, args.vcam_backend, args.vcam_device))
        work_h, work_w = processing_size(w, h, args.size)
        if (work_w, work_h) != (w, h):
            log.info("stylizing at %dx%d, shown at %dx%d (--size %d)", work_w, work_h, w, h, args.size)
        stylizer = build_stylizer(args, shape_hint=(work_h, work_w))
        t0 = time.perf_counter()
        if len(style_paths) > 1:
            log.info("encoding %d styles (cached after the first time)...", len(style_paths))
        styles = load_styles(style_paths, stylizer, args.style_size, args.weights_dir)
        log.info("%d style%s ready in %.1f s%s", len(styles), "s" if len(styles) > 1 else "", time.perf_counter() - t0,
                 "; 1-9 pick the first nine, n/p go through all" if len(styles) > 9 else "")
        state = LiveState(n_styles=len(styles), alpha=args.alpha, keep_color=args.preserve_color, hud=args.hud)
        with torch.inference_mode():  # warm-up: the first run allocates and picks kernels
            stylize_frame(stylizer, np.zeros((h, w, 3), np.uint8), styles[0].code, state, args.size, None)
        if args.record:
            outputs.append(Recording(args.record, out_w, out_h, args.fps, args.overwrite, output=record_output,
                                     **args.encoder))
        if want_window:
            window = open_window(args.window_toolkit)
        session = LiveSession(source, stylizer, styles, state, window=window, outputs=outputs, fps=args.fps,
                              size=args.size, max_frames=args.max_frames, temporal=temporal,
                              snapshot_dir=Path(args.snapshot_dir), stdin=not args.no_stdin)
    except BaseException:
        source.release()
        if record_output is not None:
            record_output.discard()  # a no-op once the recording owns it (its abort removes it)
        for out in [*outputs, window]:
            if out is not None:
                (out.abort if hasattr(out, "abort") else out.close)()
        raise
    if window is not None:
        log.info("window open (%s): h for keys, q or Esc to quit", window.toolkit)
    elif not args.no_stdin and _stdin_is_terminal():
        log.info("no window: type n, p, 1-9, +, -, c, space, s or q then Enter ('help' for more)")
    summary = session.run()  # SIGTERM/SIGHUP arrive as Ctrl-C (streamer.signals, installed by the CLI)
    log.info("%d frames out in %.1f s; engine %.1f fps (%.0f ms a frame); captured %d, dropped %d; "
             "latency %.0f ms; stopped: %s", summary.frames_out, summary.seconds, summary.engine_fps,
             summary.step_ms, summary.frames_captured, summary.dropped, summary.latency_ms, summary.stop_reason)
    return 0


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError, AttributeError):
        return False
