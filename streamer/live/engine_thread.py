"""The engine thread: stylizes the newest captured frame with the live controls, and what it hands on.

It owns torch's threads and stays about one engine step behind the capture; ``--size auto`` picks its working
size from the step times it measures (:mod:`streamer.live.sizing`).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from engines.backends.switch import EngineSpans, current_label
from engines.stylizer import Stylizer, short_side_shape
from engines.stylizer import stylize_frame as chain
from streamer.live.capture import Frame
from streamer.live.hotkeys import LiveState
from streamer.live.sizing import Sizing, next_size, pin, unpin
from streamer.live.slot import LatestSlot, SourceEnded
from streamer.temporal import Temporal

log = logging.getLogger(__name__)


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
    source: np.ndarray | None = None  # the captured frame it was made from (for --motion)
    look: tuple = ()  # style, bypass, alpha, colours, upscale: a carry of another look is not shown in its place


def stylize_frame(stylizer: Stylizer, image: np.ndarray, code, state: LiveState, size: int,
                  temporal: Temporal | None) -> np.ndarray:
    """The frame chain (:func:`engines.stylizer.stylize_frame`) with the live controls, fast resizing; in the
    engine thread, so ``--size auto`` counts the way back."""
    return chain(stylizer, image, code, alpha=state.alpha, size=size, upscale_method=state.upscale,
                 keep_color=state.keep_color, temporal=temporal, fast=True)


class EngineThread(threading.Thread):
    """Stylizes the newest captured frame with the current state; owns torch's threads."""

    def __init__(self, stylizer: Stylizer, codes: list, get_state, in_slot: LatestSlot, out_slot: LatestSlot,
                 stop: threading.Event, temporal: Temporal | None = None, size: int = 0,
                 sizing: Sizing | None = None, target_fps: float = 0.0) -> None:
        super().__init__(name="engine", daemon=True)
        self.stylizer, self.codes, self.get_state = stylizer, codes, get_state
        self.in_slot, self.out_slot, self.stop_event = in_slot, out_slot, stop
        self.temporal, self.size = temporal, size
        self.sizing, self.target_fps = sizing, target_fps  # --size auto: the controller picks self.size
        if sizing is not None:
            self.size = sizing.size
        self.meter = RateMeter()
        self.step_avg = 0.0
        self.sizes: dict[int, int] = {}  # working size -> frames stylized at it
        self.upscales: dict[str, int] = {}  # --upscale way -> frames that took it (frames smaller than captured)
        self.spans = EngineSpans()  # noted here: this thread is the one that switches engines

    def _pick_size(self, state: LiveState) -> int:
        """--size auto: the hand-pinned size, or the controller's."""
        if self.sizing is not None:
            self.sizing = pin(self.sizing, state.size) if state.size_pinned else unpin(self.sizing)
            self.size = self.sizing.size
        return self.size

    def _measured(self, step: float) -> None:
        if self.sizing is None:
            return
        before = self.sizing.size
        self.sizing = next_size(self.sizing, step, self.target_fps)
        if self.sizing.size != before:
            measured = self.sizing.seen[self.sizing.sizes.index(before)]
            log.info("working size %d -> %d (engine %.1f fps there, target %g)", before, self.sizing.size,
                     1.0 / max(1e-9, measured), self.target_fps)
            self.size = self.sizing.size

    def run(self) -> None:
        error: BaseException | None = None
        last: tuple[int, bool] | None = None
        last_size: int | None = None
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
                    size = self._pick_size(state)
                    if self.temporal is not None and last_size is not None and size != last_size:
                        self.temporal.reset()  # the previous output has another size
                    last_size = size
                    t0 = time.perf_counter()
                    if state.bypass:
                        image = frame.image
                    else:
                        image = stylize_frame(self.stylizer, frame.image, self.codes[state.style_index], state,
                                              size, self.temporal)
                    step = time.perf_counter() - t0
                    if not state.bypass:  # the stylize time, not the pass-through's
                        self.step_avg = step if self.step_avg == 0 else 0.9 * self.step_avg + 0.1 * step
                        self.sizes[size] = self.sizes.get(size, 0) + 1
                        self.spans.note(current_label(self.stylizer))
                        if short_side_shape(*frame.image.shape[:2], size) != frame.image.shape[:2]:
                            self.upscales[state.upscale] = self.upscales.get(state.upscale, 0) + 1
                        self._measured(step)
                    self.meter.tick()
                    self.out_slot.put(Result(image, frame.t_capture, frame.index, state.style_index, state.bypass,
                                             step, frame.image,
                                             (state.style_index, state.bypass, state.alpha, state.keep_color,
                                              state.upscale)))
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
            error = exc
        finally:
            self.out_slot.close(error)
