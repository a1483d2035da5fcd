"""One live session: the threads wired together, the loop that feeds the outputs, and what it did (Summary).

    capture thread --slot--> engine thread --slot--> output loop (main thread)

The engine thread (:mod:`streamer.live.engine_thread`) stylizes the newest captured frame with the current style,
so latency stays at about one engine step. The output loop runs at ``--fps`` in the main thread (GUI toolkits and
Ctrl-C both want it): it shows/sends the newest stylized frame, repeating it when the engine is
slower than the display, or, with ``--motion``, the newest frame a fourth thread made by carrying it along the
optical flow to the newest captured frame (:mod:`streamer.live.motion`), and handles keys (window) or typed
commands (stdin).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from engines.backends.switch import current_label
from engines.errors import InputError
from engines.threads import join_thread
from engines.stylizer import Stylizer
from streamer.live.audio import SoundSource, SoundThread
from streamer.live.capture import CaptureThread, Source
from streamer.live.engine_thread import EngineThread, Result
from streamer.live.hotkeys import Action, LiveState, handle_command, handle_key, status_line
from streamer.live.hud import draw_overlays
from streamer.live.motion import Carried, CarriedFrom, MotionThread
from streamer.live.outputs import Output, Window, timestamped
from streamer.live.sizing import Sizing
from streamer.live.slot import LatestSlot, SourceEnded
from streamer.live.stdin import StdinCommands
from streamer.options import Style
from streamer.temporal import Temporal
from streamer.signals import finishing

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 30.0  # seconds; an engine step on a slow device can take a while


# -- accounting ------------------------------------------------------------------------------
@dataclass
class Summary:
    """What a session did; logged at the end and checked by tests."""

    frames_out: int = 0
    frames_new: int = 0  # output frames that differ from the one before (a repeat does not count)
    frames_carried: int = 0  # new output frames carried along the flow (--motion)
    trusted: float = 0.0  # mean share of pixels the flow moved, over the carried frames
    motion: bool = False  # --motion was on at the end
    frames_captured: int = 0
    frames_stylized: int = 0
    dropped: int = 0
    engine_fps: float = 0.0
    step_ms: float = 0.0
    latency_ms: float = 0.0
    seconds: float = 0.0
    stop_reason: str = ""
    sizes: dict[int, int] = field(default_factory=dict)  # working short side -> frames stylized at it
    upscales: dict[str, int] = field(default_factory=dict)  # --upscale way -> frames that took it back up
    #: which engine stylized which frames (counting stylized frames from 0): ``torch fp32 for frames 0-41, then
    #: openvino fp32 for frames 42-300`` when the fast engine took over while running (engines.backends.switch)
    engines: str = ""
    sinks: list[str] = field(default_factory=list)  # each recording's and stream's frames, drops, reconnects
    sink_dropped: int = 0  # frames the recordings and streams had no time or connection for

    def motion_text(self) -> str:
        """``600 new frames, 410 carried along the motion (91% of pixels)``, or ``motion off``."""
        if not self.frames_carried:
            return "motion off" if not self.motion else f"motion on, none of {self.frames_new} new frames carried"
        return (f"{self.frames_new} new frames, {self.frames_carried} carried along the motion "
                f"({100 * self.trusted:.0f}% of pixels)")

    def upscale_text(self) -> str:
        """``upscale guided x300, bicubic x40`` (frames scaled back up each way), or ``no upscale``."""
        if not self.upscales:
            return "no upscale (stylized at the capture size)"
        return "upscale " + ", ".join(f"{m} x{n}" for m, n in sorted(self.upscales.items(), key=lambda kv: -kv[1]))

    def sizes_text(self) -> str:
        """``360 x40, 288 x160``: the working sizes used, with their frame counts (0 = the capture size)."""
        return ", ".join(f"{s or 'capture'} x{n}" for s, n in sorted(self.sizes.items(), reverse=True)) or "none"


# -- the session -------------------------------------------------------------------------------
class LiveSession:
    """Runs capture, engine and outputs until quit, ``max_frames``, the source's end, an error or Ctrl-C.

    ``window``: a :class:`~streamer.live.outputs.Window`; ``outputs``: :class:`~streamer.live.outputs.Output`
    sinks (a virtual camera, a recording). Whatever happens, the threads are joined, the source is released and every
    output is closed (a recording is finalised) before :meth:`run` returns or raises.
    """

    def __init__(self, source: Source, stylizer: Stylizer, styles: list[Style], state: LiveState, *,
                 window: Window | None = None, outputs: list[Output] | None = None, fps: float = 30.0, size: int = 0,
                 max_frames: int = 0, temporal: Temporal | None = None, snapshot_dir: Path = Path("."),
                 stdin: bool = False, sizing: Sizing | None = None, target_fps: float = 0.0,
                 sound: SoundSource | None = None) -> None:
        """``state.motion`` switches ``--motion`` (key m); it acts where frames are shown at a steady rate.
        ``sound``: what goes with the pictures into the outputs that take sound (recordings, streams)."""
        self.source, self.stylizer, self.styles = source, stylizer, styles
        self.state = state
        self.window, self.outputs = window, list(outputs or [])
        self.fps, self.size, self.max_frames = fps, size, max_frames
        self.snapshot_dir = Path(snapshot_dir)
        self.stop = threading.Event()
        self.in_slot, self.out_slot = LatestSlot(), LatestSlot()
        self.capture = CaptureThread(source, self.in_slot, self.stop)
        self.engine = EngineThread(stylizer, [s.code for s in styles], lambda: self.state, self.in_slot,
                                   self.out_slot, self.stop, temporal, size, sizing, target_fps)
        self.stdin = StdinCommands(self.stop) if stdin else None
        self._launched: list[threading.Thread] = []  # the threads whose start() was called, to join
        self.sound: SoundThread | None = None
        if sound is not None:
            if hasattr(sound, "follow"):  # a file's sound keeps pace with the frames read from it
                sound.follow(self._capture_position)
            self.sound = SoundThread(sound, [o for o in self.outputs if hasattr(o, "send_audio")], self.stop)
        self.summary = Summary()
        self.latency = 0.0
        self.current: Result | None = None
        self.shown: Carried | None = None  # what the outputs got last (the current result, maybe carried)
        self.motion = MotionThread(lambda: self.current, lambda: self.capture.latest,
                                   lambda: self.state.motion, self.stop, 0.9 / fps)
        self._carried: CarriedFrom | None = None
        self._snapshots = 0

    @property
    def engine_label(self) -> str:
        """The HUD's name for the engine running now: ``openvino bf16`` ('' for test stand-ins)."""
        return current_label(self.stylizer)

    def _capture_position(self) -> tuple[tuple[int, float], float] | None:
        frame = self.capture.latest
        return None if frame is None or frame.media is None else (frame.media, frame.t_capture)

    @property
    def _sinks(self) -> bool:
        return any(hasattr(o, "send_audio") for o in self.outputs)

    @property
    def sink_dropped(self) -> int:
        return sum(getattr(o, "dropped", 0) for o in self.outputs if hasattr(o, "send_audio"))

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
            elif action is Action.SIZE_CHANGED:
                log.info("working size %s", f"{new.size} (pinned; 'size auto' lets go)" if new.size_pinned
                         else "auto again")
            elif action is Action.SIZE_FIXED:
                log.info("the working size is fixed by --size: start with --size auto to step it with [ and ]")
            elif action is Action.UPSCALE_CHANGED:
                log.info("way back to full size: %s", new.upscale)
            elif action is Action.MOTION_CHANGED:
                if new.motion and not self.steady:
                    log.info("motion acts on a window or a virtual camera; a recording keeps each stylized frame")
                    self.state = replace(new, motion=False)
                else:
                    log.info("motion between engine frames %s", "on" if new.motion else "off")
            elif action is Action.SNAPSHOT:
                self.snapshot()
            elif action is Action.FULLSCREEN and self.window is not None:
                self.window.set_fullscreen(new.fullscreen)
        return True

    def snapshot(self) -> Path | None:
        """What the outputs show now (with --motion, maybe a carried frame), without the HUD, as a PNG."""
        if self.shown is None:
            return None
        from streamer.fileutil import numbered_output
        from streamer.imageio import save_image

        try:  # never over a file already there: another session's, in the same second
            output, self._snapshots = numbered_output(self.snapshot_dir / time.strftime("streamer-%Y%m%d-%H%M%S"),
                                                      ".png", self._snapshots + 1)
            save_image(output.path, self.shown.image, output=output)
        except InputError as exc:
            log.warning("snapshot failed: %s", exc)
            return None
        path = output.path
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

    def _follow_size(self) -> None:
        """--size auto: the state shows the size the controller picked (unless one is pinned by hand)."""
        if self.state.sizes and not self.state.size_pinned and self.state.size != self.engine.size:
            self.state = replace(self.state, size=self.engine.size)

    def _present(self, result: Result) -> Carried:
        """What this tick shows: the result as it is, or (--motion) the motion thread's newest carry when that
        shows a newer captured frame in the same look (style, alpha, colours). In one look, never a frame older
        than the one before: a carry that failed (a cut, a motion too large for the flow) leaves the last good one."""
        if self.motion.error is not None:
            raise self.motion.error
        if self.state.motion and self.motion.ident is None and self.steady:
            self._launched.append(self.motion)
            self.motion.start()  # on first use: a session without motion has no thread polling for it
        if self.motion.failed and self.state.motion:
            self.state = replace(self.state, motion=False)  # the HUD and 'motion' replies say so too
        item = self.motion.slot.poll()
        if item is not None and item.shown.index > item.result.index:
            self._carried = item
        as_is = Carried(result.image, result.index, result.t_capture, 0.0)
        carried = self._carried
        if self.state.motion and carried is not None and carried.shown.index > result.index \
                and carried.result.look == result.look:
            return carried.shown
        return as_is

    def _emit(self, shown: Carried, result: Result, fresh: bool) -> None:
        """Every tick to the window and steady-rate outputs (a repeat when nothing new came); each stylized
        frame once, with its capture time, to timestamped ones (a recording: never the frames --motion carries,
        which would double the encoder's work on a CPU that is already the bottleneck)."""
        for out in self.outputs:
            if not timestamped(out):
                out.send(shown.image)
            elif fresh:
                out.send(result.image, result.t_capture)
        if self.window is not None:
            style = self.styles[result.style_index].name
            image = draw_overlays(shown.image, self.state, style, self.engine.meter.rate,
                                  self.in_slot.dropped, self.latency * 1000, self.engine_label,
                                  self.sink_dropped if self._sinks else None)
            self.window.show(image)

    def _count_new(self, shown: Carried) -> None:
        """A new picture went out: its latency (the age of what it shows) and the motion counts."""
        age = time.perf_counter() - shown.t_capture
        self.latency = age if self.latency == 0 else 0.9 * self.latency + 0.1 * age
        s = self.summary
        s.frames_new += 1
        if shown.trusted > 0:
            s.trusted = (s.trusted * s.frames_carried + shown.trusted) / (s.frames_carried + 1)
            s.frames_carried += 1

    def run(self) -> Summary:
        t_start = time.perf_counter()
        try:
            for thread in (self.capture, self.engine, self.sound, self.stdin):
                if thread is not None:
                    self._launched.append(thread)  # first: a signal inside start() still has it joined
                    thread.start()
            self.summary.stop_reason = self._loop()
        except BaseException as exc:
            self.summary.stop_reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
            self.summary.seconds = time.perf_counter() - t_start
            with finishing():  # another signal while the recording is finished: it is finished all the same
                self.shutdown(raise_errors=False)  # the first error is the one the user sees
            raise
        self.summary.seconds = time.perf_counter() - t_start
        with finishing() as late:  # q, the source's end, --max-frames: a signal now must not lose the recording
            self.shutdown()
        if late.requested:
            self.summary.stop_reason = "interrupted"
            raise late.interrupt()
        return self.summary

    @property
    def steady(self) -> bool:
        """Whether something wants frames at a steady ``--fps`` (a window, a virtual camera); a recording
        alone takes each new frame when it comes, so then ``--max-frames`` counts recorded frames."""
        return self.window is not None or any(not timestamped(o) for o in self.outputs)

    def _loop(self) -> str:
        first = self._first_result()
        if first is None:
            return "quit before the first frame"
        interval = 1.0 / self.fps
        next_due = time.perf_counter()
        self.current = first
        fresh: Result | None = first
        while True:
            shown = self._present(self.current)
            new = self.shown is None or shown.image is not self.shown.image
            if new:
                self._count_new(shown)
            self.shown = shown
            self._follow_size()
            if fresh is not None or self.steady:
                self._emit(shown, self.current, fresh is not None)
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
        for thread in self._launched:
            if thread is self.stdin:  # POSIX: stops within 0.2 s; elsewhere it may sit in readline (a daemon)
                join_thread(thread, 0.5)
                continue
            join_thread(thread, JOIN_TIMEOUT if thread is self.engine else 5.0)
            if thread.is_alive():
                log.warning("%s thread did not stop in time", thread.name)
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
        s.sizes = dict(self.engine.sizes)
        s.upscales = dict(self.engine.upscales)
        s.engines = self.engine.spans.text() if self.engine.spans.spans else ""
        s.motion = self.state.motion
        s.sinks = [o.describe() for o in self.outputs if hasattr(o, "describe")]
        s.sink_dropped = self.sink_dropped
        error = error or self.motion.error
        if error is not None:
            if raise_errors:
                raise error
            log.warning("while stopping: %s", error)
