"""`--temporal`: make a per-frame stylization stable in time, from cheap parts one can explain.

AdaIN-style networks stylize every frame on its own, so texture that should stay put re-rolls from
frame to frame (codec noise and small motion are enough), and the global tone may "pump". Both parts
below run on the engine's *output*, so they work with every engine (torch, ONNX, TensorRT):

1. Texture (on): where the optical flow says a pixel of frame t was visible at p in frame t-1, the
   previous *output* warped by that flow is blended in: ``out = (1 - w) * stylized + w * warped``,
   ``w = strength * 0.9 * confidence``. Confidence is 0 where the forward-backward check fails
   (occlusions, disocclusions, flow errors) and where the previous *source* frame, warped the same
   way, does not reproduce the current one (what would otherwise leave ghost trails); it is eroded,
   so motion edges are left alone, and feathered, so no seam shows. The output feeds back, so the
   flicker decays like an EMA along motion trajectories; as the current frame keeps at least 10%,
   nothing freezes. The warp is bicubic: bilinear resampling softens a little more on each recursion.
2. Tone (off by default: it paid nothing on the real clip): AdaIN normalises each frame's content
   features with that frame's own per-channel mean/std, so when those statistics wobble, the whole
   decoded frame shifts in colour and contrast. Smoothing them inside the network needs the engine's
   internals (the Engine interface is fixed; tools/temporal_feature_stats.py does it for torch by
   patching ``adain`` and measured no gain on the real clip either). The engine-agnostic equivalent:
   to first order the decoder maps a global shift of its input statistics to a global shift of its
   output's, so each output colour channel's mean/std is moved to an exponential moving average of
   them, with a 256-entry lookup table per channel (< 1 ms). It does remove synthetic pumping.

A scene cut (most of the frame unexplained by motion, or a jump of the tone histogram) resets the
history, so nothing is ever blended across shots; ``reset()`` does the same on a style switch.

Cost: the flow is DIS ("fast" preset, refined to 1/4 of the frame) on a half-size grey image, in
both directions; warping and blending are single OpenCV calls at the output's size: ~13 ms of one
core per 640x360 frame, ~2% of a MicroAST or AdaIN-r31 render on this CPU (tools/temporal_numbers.py,
tools/temporal_render_fps.py). For live use, ``prepare(source)`` may be called as soon as a frame is
captured: the flow (about half the cost) then runs on a helper thread while the engine stylizes it
(OpenCV releases the GIL) and ``process`` only waits for it; otherwise it runs inline.
"""
from __future__ import annotations

import argparse
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from streamer import flow as fl

from streamer.job import check_strength

if TYPE_CHECKING:
    from streamer.job import Job

log = logging.getLogger(__name__)

DEFAULT_STRENGTH = 0.8
#: at strength 1 a fully trusted pixel takes this share from the warped history (never 1: no freezing)
MAX_HISTORY = 0.9
#: flow on a grey image at this fraction of the frame's size, with this DIS preset, down to this pyramid
#: level (DIS's presets stop at level 2, i.e. 1/8 of the frame here; level 1 = 1/4 of the frame).
#: Measured on the real clip (share of the warping error removed, AdaIN-r31 / MicroAST; CPU ms per
#: 640x360 frame for the whole process()): 1/2 "fast" level 1: 51% / ~65%, 13.5 ms; 1/2 "fast" (level 2):
#: 42% / 57-61%, 10 ms; 1/2 "ultrafast": 40% / 50-54%, 9 ms; full size "ultrafast": 46% / 61-64%, 19 ms;
#: 1/4 "ultrafast": 30% / 39-45%.
FLOW_SCALE = 0.5
FLOW_PRESET = "fast"
FLOW_FINEST = 1
#: forward-backward tolerance in full-resolution px^2 (Ruder et al. use 0.5 with full-size flow;
#: half-size flow is coarser, and 1.0 removed ~3 points more flicker at the same sharpness)
CONSISTENCY_PX2 = 1.0


# -- pure parts --------------------------------------------------------------------------------------
def channel_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64, shape (3,)) of a uint8 image."""
    mean, std = cv2.meanStdDev(rgb)
    return mean[:, 0], np.maximum(std[:, 0], 1e-3)


def match_stats_lut(mean: np.ndarray, std: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray,
                    max_gain: float = 1.25) -> np.ndarray:
    """A (1, 256, 3) uint8 table mapping each channel's ``mean``/``std`` to the targets (gain bounded:
    a correction, never a re-grade)."""
    gain = np.clip(target_std / std, 1 / max_gain, max_gain)
    levels = np.arange(256, dtype=np.float64)[:, None]
    out = (levels - mean) * gain + target_mean
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)[None]


def confidence(valid: np.ndarray, residual: np.ndarray, residual_lo: float = 8.0,
               residual_hi: float = 32.0) -> np.ndarray:
    """How far to trust the motion-compensated history at each (small-scale) pixel, float32 in [0, 1].

    The residual band 8-32 was measured against 6-24 and 10-40: 62/65/67% of the warping error removed
    on MicroAST, 46/51/54% on AdaIN-r31, sharpness falling a little with each; with the erosion, pixels
    the metric's own flow cannot vouch for stay *less* changed than the average pixel (no ghosts);
    without it they changed more, so it stays.

    0 where the forward-backward check failed (``valid`` False: occluded, disoccluded, flow lost) or
    where the warped previous source differs from the current source (``residual``, 0-255) by
    ``residual_hi`` levels or more, fading in from ``residual_lo`` (codec noise is a few levels);
    then eroded, so a band around every rejected region is rejected too (flow is least reliable at
    motion edges), and feathered so no seam shows.
    """
    conf = np.clip((residual_hi - residual) * (1.0 / (residual_hi - residual_lo)), 0.0, 1.0) * valid
    conf = cv2.erode(conf, np.ones((3, 3), np.uint8))
    return cv2.GaussianBlur(conf, (3, 3), 0)


@dataclass
class Motion:
    """What the flow step found between the previous and the current source frame (small scale)."""

    gray: np.ndarray
    prev_gray: np.ndarray | None = None  # the frame it was measured against (identity is checked)
    backward: np.ndarray | None = None
    confidence: np.ndarray | None = None
    cut: bool = False


# -- the stabilizer ----------------------------------------------------------------------------------
class Temporal(Protocol):
    """What render and live call on every frame in order (:class:`TemporalStabilizer`, or a test's stand-in)."""

    def process(self, source_rgb: np.ndarray, stylized_rgb: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


class TemporalStabilizer:
    """Call ``process(source, stylized)`` on every frame in order; ``reset()`` on a style switch.

    ``strength`` in [0, 1] scales both parts: 0 returns the stylized frames unchanged. ``texture`` and
    ``tone`` switch the two parts (see the module doc; tone is off by default).
    """

    def __init__(self, strength: float = DEFAULT_STRENGTH, *, flow_scale: float = FLOW_SCALE,
                 preset: str = FLOW_PRESET, tone: bool = False, texture: bool = True) -> None:
        self.strength = check_strength(strength)
        self.flow_scale = float(flow_scale)
        self.tone = tone
        self.texture = texture
        self.interpolation = cv2.INTER_CUBIC  # bilinear blurs a little more on every recursion
        self.preset = preset
        self._flow = fl.FlowEstimator("dis", preset, FLOW_FINEST)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending: deque[tuple[np.ndarray, Future]] = deque()
        self._last_prepared: Future | None = None
        self.cuts = 0
        self._said_small = False
        self.reset()

    def reset(self) -> None:
        """Forget all history (style switch, new clip): the next frame passes through unchanged."""
        self._prev_gray: np.ndarray | None = None
        self._prev_out: np.ndarray | None = None
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None

    # -- flow, possibly ahead of time on a helper thread -------------------------------------------
    def prepare(self, source_rgb: np.ndarray) -> None:
        """Optional: start the flow step for this source frame now, on a helper thread (e.g. when the frame
        is captured or decoded, while the engine is busy with earlier ones). Call it once per frame, in
        frame order, with the very array later given to ``process``; any number of frames may be ahead."""
        if self._pool is None:
            self._flow_ahead = fl.FlowEstimator("dis", self.preset, FLOW_FINEST)
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="temporal-flow")
        with self._lock:
            future = self._pool.submit(self._prepared_motion, source_rgb, self._last_prepared)
            self._last_prepared = future
            self._pending.append((source_rgb, future))

    def _prepared_motion(self, source_rgb: np.ndarray, prev: Future | None) -> Motion:
        prev_gray = prev.result().gray if prev is not None else None
        return self._motion(source_rgb, prev_gray, self._flow_ahead)

    def _motion(self, source_rgb: np.ndarray, prev_gray: np.ndarray | None,
                flow: fl.FlowEstimator | None = None) -> Motion:
        g = fl.gray(source_rgb, self.flow_scale)
        if prev_gray is None or prev_gray.shape != g.shape or min(g.shape) < fl.MIN_FLOW_SIDE:
            return Motion(g)  # nothing to compare with, or too few pixels for DIS to measure motion
        flow = flow or self._flow  # one estimator per thread: OpenCV's DIS object keeps state
        backward, forward = flow(g, prev_gray), flow(prev_gray, g)
        residual = fl.motion_residual(g, prev_gray, backward)
        valid = fl.consistent(backward, forward, rel=0.01, abs_px=CONSISTENCY_PX2 * self.flow_scale ** 2)
        if fl.is_cut(g, prev_gray, residual, float(valid.mean())):
            return Motion(g, prev_gray, cut=True)
        return Motion(g, prev_gray, backward, confidence(valid, residual) if self.texture else None)

    # -- per frame -----------------------------------------------------------------------------------
    def process(self, source_rgb: np.ndarray, stylized_rgb: np.ndarray) -> np.ndarray:
        """The stabilized version of ``stylized_rgb`` (uint8 HxWx3 RGB, same size); frames in order."""
        motion = self._take_prepared(source_rgb)
        if motion is not None and self._prev_gray is None:
            motion = Motion(motion.gray)  # first frame after a reset: keep the chain, drop the flow
        elif motion is None or motion.prev_gray is not self._prev_gray:
            motion = self._motion(source_rgb, self._prev_gray)  # not prepared, or against another frame
        out = stylized_rgb
        if self.strength == 0.0:
            return out
        if min(motion.gray.shape) < fl.MIN_FLOW_SIDE and not self._said_small:
            h, w = source_rgb.shape[:2]
            log.warning("--temporal needs frames of at least %d px a side to follow motion; these are %dx%d, so "
                        "they are written as stylized, without smoothing", round(fl.MIN_FLOW_SIDE / self.flow_scale),
                        w, h)
            self._said_small = True
        if self._prev_out is not None and (motion.cut or self._prev_out.shape != out.shape):
            if motion.cut:
                self.cuts += 1
                log.debug("scene cut: temporal history reset")
            self.reset()
        if self.tone:
            out = self._steady_tone(out)
        if self.texture and self._prev_out is not None and motion.confidence is not None:
            out = self._blend_history(out, motion)
        self._prev_gray = motion.gray
        self._prev_out = out
        return out

    def _take_prepared(self, source_rgb: np.ndarray) -> Motion | None:
        with self._lock:
            while self._pending:
                frame, future = self._pending.popleft()
                if frame is source_rgb:
                    return future.result()
                # a frame prepared but never processed (dropped): the next motion will not match, and
                # is recomputed inline against the frame really processed last
            self._last_prepared = None
        return None

    def _steady_tone(self, rgb: np.ndarray) -> np.ndarray:
        mean, std = channel_stats(rgb)
        if self._mean is None:
            self._mean, self._std = mean, std
            return rgb
        keep = 0.85 * self.strength  # EMA factor: ~6 frames of memory at strength 1
        self._mean = keep * self._mean + (1 - keep) * mean
        self._std = keep * self._std + (1 - keep) * std
        return cv2.LUT(rgb, match_stats_lut(mean, std, self._mean, self._std))

    def _blend_history(self, rgb: np.ndarray, motion: Motion) -> np.ndarray:
        h, w = rgb.shape[:2]
        backward = fl.resize_flow(motion.backward, h, w)
        warped = fl.warp(self._prev_out, backward, self.interpolation)
        weight = cv2.resize(motion.confidence, (w, h), interpolation=cv2.INTER_LINEAR)
        weight *= self.strength * MAX_HISTORY
        return cv2.blendLinear(warped, rgb, weight, 1.0 - weight)


# -- command-line options ------------------------------------------------------------------------------
def add_temporal_options(p: argparse.ArgumentParser) -> None:
    """``--temporal`` and ``--temporal-strength``, for render and live."""
    g = p.add_argument_group("temporal stability")
    g.add_argument("--temporal", action="store_true",
                   help="reduce flicker: carry the stylized texture along the optical flow where the flow "
                        "is reliable (never across scene cuts; reset on style switches)")
    g.add_argument("--temporal-strength", type=float, default=DEFAULT_STRENGTH, metavar="S",
                   help=f"0 (off) to 1 (steadiest); only with --temporal (default {DEFAULT_STRENGTH})")


def make_temporal(job: Job) -> TemporalStabilizer | None:
    """The stabilizer the job asks for, or None without ``temporal``: every command that renders frames calls this."""
    strength = check_strength(job.temporal_strength)
    if not job.temporal:
        if strength != DEFAULT_STRENGTH:
            log.warning("--temporal-strength has no effect without --temporal")
        return None
    return TemporalStabilizer(strength)
