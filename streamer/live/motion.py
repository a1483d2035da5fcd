"""`live --motion`: the output frames between two engine frames follow the scene.

On a CPU the engine makes about 12 frames/s while the window and the virtual camera tick at 30: without this,
each stylized frame is shown two or three times (motion stutters) and shows where things were an engine step
ago. With it, every output tick shows the last stylized frame carried along the optical flow from the captured
frame it was made from to the newest captured frame: motion shows at the output rate, and the picture matches
where things are now. Across a scene cut nothing is carried.

Where the flow is unreliable the stylized pixel stays where it was; "unreliable" is decided on the source
frames, per pixel: moving the source frame along the flow must explain the newest frame no worse than leaving
it (:func:`carry_weight`). The forward-backward occlusion check of ``--temporal`` was the first choice and is
wrong here: it rejects every disoccluded pixel, where the unmoved pixel is the occluder's old place, so a moving
object left a ghost of itself behind. Carrying each source frame 4 frames ahead and comparing it with the real
one (mean abs error, 0-255; test pattern / real clip): unmoved 12.2 / 3.03, forward-backward
confidence 9.5 / 2.27, the flow everywhere 7.6 / 1.95, this rule 6.0 / 1.80 (``tools/live_motion.py
--carry-check``).

The flow is ``--temporal``'s code (:mod:`streamer.flow`: DIS, warp, residual, cut test), here one direction
of DIS "fast" on grey copies whose short side is :data:`FLOW_SIDE`: about 7 ms of one core for a 640x360 tick,
most of it the full-size warp and blend (``tools/live_motion.py`` measures what it buys and costs).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from streamer import flow as fl
from streamer.live.slot import LatestSlot

log = logging.getLogger(__name__)

#: short side (px) of the grey frames the flow runs on: large motions need no finer flow to look right at 30 fps
FLOW_SIDE = 180
FLOW_PRESET = "fast"
#: how often (s) the motion thread looks for a newer captured frame or stylized frame
POLL = 0.004
#: grey copies kept, by captured frame index: the stylized frame's source and the last few newest frames
GRAYS_KEPT = 4
#: the most CPU the motion thread takes, as a share of one core (its own CPU time: wall time would also count
#: waiting for cores the engine holds): on big frames (a carry costs 2.5x as much at 1280x720, 4.6x at
#: 1920x1080) it carries less often rather than take the engine's time; at 640x360 (7-13 ms) it never binds
MAX_BUSY = 0.5
#: a pixel stays put when moving it leaves the newest frame this many grey levels worse explained than not
#: moving it (fading in from KEEP_FROM): the best of 2-10, 4-16 and 8-32 by the measurement above (5.95 / 6.09 /
#: 6.33 on the test pattern, 1.80 / 1.83 / 1.87 on the clip)
KEEP_FROM, KEEP_AT = 2.0, 10.0


def flow_scale(height: int, width: int) -> float:
    """The fraction of the frame's size the flow runs at (never above 1)."""
    return min(1.0, FLOW_SIDE / max(1, min(height, width)))


def carry_weight(newest: np.ndarray, source: np.ndarray, moved: np.ndarray, keep_from: float = KEEP_FROM,
                 keep_at: float = KEEP_AT) -> np.ndarray:
    """Per pixel, how far to carry (0..1, float32): 1 where ``moved`` (the source grey frame warped by the flow)
    explains the ``newest`` grey frame about as well as the unmoved ``source`` or better, 0 where clearly worse."""
    worse = cv2.absdiff(newest, moved).astype(np.float32) - cv2.absdiff(newest, source).astype(np.float32)
    weight = np.clip((keep_at - worse) * (1.0 / (keep_at - keep_from)), 0.0, 1.0)
    return cv2.GaussianBlur(weight, (5, 5), 0)  # no speckles, no seams


def carry(stylized: np.ndarray, backward: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``stylized`` moved along ``backward`` (the flow from the newest frame to its source, at any scale) where
    ``weight`` is 1, left where it was where it is 0, mixed between (bilinear, one warp, never recursive)."""
    h, w = stylized.shape[:2]
    moved = fl.warp(stylized, fl.resize_flow(backward, h, w))
    weight = cv2.resize(weight, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.blendLinear(moved, stylized, weight, 1.0 - weight)


@dataclass(frozen=True)
class Carried:
    """What one output tick shows: an image, and the captured frame it depicts."""

    image: np.ndarray
    index: int  # the captured frame whose content (positions) it shows
    t_capture: float
    trusted: float  # mean carry weight, 0..1: the share of pixels moved along the flow (0: nothing carried)


class MotionCarrier:
    """Carries stylized frames to newer captured frames, for one thread (DIS keeps state).

    Keeps grey copies by frame index, so each captured frame is converted once.
    """

    def __init__(self) -> None:
        self._flow = fl.FlowEstimator("dis", FLOW_PRESET)
        self._grays: dict[int, np.ndarray] = {}

    def _gray(self, index: int, image: np.ndarray, keep: int) -> np.ndarray:
        """The grey copy of captured frame ``index``; the oldest others are forgotten, never ``keep``'s."""
        g = self._grays.get(index)
        if g is None:
            g = fl.gray(image, flow_scale(*image.shape[:2]))
            self._grays[index] = g
            while len(self._grays) > GRAYS_KEPT:
                del self._grays[min(k for k in self._grays if k != keep)]
        return g

    def carry(self, stylized: np.ndarray, source_index: int, source: np.ndarray, t_source: float,
              newest_index: int, newest: np.ndarray, t_newest: float) -> Carried:
        """``stylized`` (made from captured frame ``source_index``) as it would look at frame ``newest_index``.

        Unchanged when the newest frame is not newer, has another size, or a scene cut lies between them.
        """
        unmoved = Carried(stylized, source_index, t_source, 0.0)
        if newest_index <= source_index or newest.shape != source.shape or stylized.shape != source.shape:
            return unmoved
        g_src = self._gray(source_index, source, source_index)
        g_new = self._gray(newest_index, newest, source_index)
        backward = self._flow(g_new, g_src)
        moved = fl.warp(g_src, backward)
        if fl.is_cut(g_new, g_src, cv2.absdiff(g_new, moved).astype(np.float32)):
            return unmoved
        weight = carry_weight(g_new, g_src, moved)
        return Carried(carry(stylized, backward, weight), newest_index, t_newest, float(weight.mean()))


def pause_after(cpu_s: float, interval: float) -> float:
    """Seconds from the start of one carry to the next: the output's ``interval``, or longer when a carry took
    so much CPU that carrying more often would take over :data:`MAX_BUSY` of a core."""
    return max(interval, cpu_s / MAX_BUSY)


@dataclass(frozen=True)
class CarriedFrom:
    """A carried frame and the engine result it was made from (its look: style, bypass, alpha, colours)."""

    result: Any
    shown: Carried


class MotionThread(threading.Thread):
    """Carries the newest stylized frame to each newer captured frame, into a latest-wins slot.

    Its own thread, so the output loop is never late because of it: on a CPU already busy with the engine a
    carry may take longer than a tick, and then the loop simply sends the newest carried frame it has. Reads
    the session's newest result and the capture's newest frame through ``get_result``/``get_newest``
    (single references: no lock); carries only while ``enabled()`` (key m), and at most once an ``interval``
    (the output's: a 60 fps camera into a 30 fps output needs no more) and no more often than keeps its
    CPU time under :data:`MAX_BUSY` of a core (:func:`pause_after`). OpenCV refusing a frame (a shape its
    flow cannot take, e.g. 4000x16) stops the carrying with one warning, not the session; any other error stops
    it and is kept in ``error`` for the output loop to raise.
    """

    def __init__(self, get_result: Callable[[], Any], get_newest: Callable[[], Any], enabled: Callable[[], bool],
                 stop: threading.Event, interval: float = 0.0) -> None:
        super().__init__(name="motion", daemon=True)
        self.get_result, self.get_newest, self.enabled, self.stop_event = get_result, get_newest, enabled, stop
        self.interval = interval
        self.slot = LatestSlot()
        self.error: BaseException | None = None
        self.carries = 0
        self.cpu_s = 0.0  # this thread's CPU time in carries: what --motion costs the engine on a busy CPU
        self.failed = False  # stopped by a frame OpenCV's flow cannot take: the session turns motion off

    def run(self) -> None:
        carrier = MotionCarrier()
        done: tuple[int, int] | None = None
        started, pause = -float("inf"), self.interval
        try:
            while not self.stop_event.is_set():
                result, newest = self.get_result(), self.get_newest()
                if result is None or newest is None or result.bypass or not self.enabled() \
                        or newest.index <= result.index or (result.index, newest.index) == done \
                        or time.perf_counter() - started < pause:
                    self.stop_event.wait(POLL)
                    continue
                done, started = (result.index, newest.index), time.perf_counter()
                cpu = time.thread_time()
                try:
                    shown = carrier.carry(result.image, result.index, result.source, result.t_capture,
                                          newest.index, newest.image, newest.t_capture)
                except cv2.error as exc:
                    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "OpenCV error"
                    log.warning("motion between engine frames stopped: the optical flow failed on %dx%d frames "
                                "(%s)", newest.image.shape[1], newest.image.shape[0], reason)
                    self.failed = True
                    return
                self.carries += 1
                cpu = time.thread_time() - cpu
                self.cpu_s += cpu
                pause = pause_after(cpu, self.interval)
                self.slot.put(CarriedFrom(result, shown))
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
            self.error = exc
