"""On-screen text for the preview window: the HUD (style, alpha, working size, fps, drops, latency) and the key help.

Drawn on a copy of the window's frame only: the virtual camera and the recording stay clean.
"""
from __future__ import annotations

import cv2
import numpy as np

from streamer.live.hotkeys import HELP, LiveState

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_box(frame: np.ndarray, lines: list[str], origin: tuple[int, int], scale: float) -> int:
    """White text on a darkened box, so it reads on any picture. A tab splits a line into two aligned columns."""
    thick = max(1, round(scale * 1.6))
    firsts = [line.split("\t")[0] for line in lines if "\t" in line]
    column = max((cv2.getTextSize(f + "  ", _FONT, scale, thick)[0][0] for f in firsts), default=0)

    def width(line: str) -> int:
        if "\t" in line:
            return column + cv2.getTextSize(line.split("\t", 1)[1], _FONT, scale, thick)[0][0]
        return cv2.getTextSize(line, _FONT, scale, thick)[0][0]

    sizes = [(width(line), cv2.getTextSize(line.replace("\t", " "), _FONT, scale, thick)[0][1]) for line in lines]
    line_h = max((h for _, h in sizes), default=10) + max(4, round(8 * scale))
    pad = max(3, round(6 * scale))
    x0, y0 = origin
    w = max((w for w, _ in sizes), default=0) + 2 * pad
    h = line_h * len(lines) + pad
    x1, y1 = min(frame.shape[1], x0 + w), min(frame.shape[0], y0 + h)
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1] = (frame[y0:y1, x0:x1] * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        y = y0 + pad + line_h * (i + 1) - max(4, round(8 * scale)) // 2 - pad // 2
        parts = line.split("\t", 1)
        cv2.putText(frame, parts[0], (x0 + pad, y), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
        if len(parts) == 2:
            cv2.putText(frame, parts[1], (x0 + pad + column, y), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return y1


def _box_height(lines: list[str], scale: float) -> int:
    thick = max(1, round(scale * 1.6))
    line_h = max(cv2.getTextSize(line.replace("\t", " "), _FONT, scale, thick)[0][1] for line in lines) + \
        max(4, round(8 * scale))
    return line_h * len(lines) + max(3, round(6 * scale))


def _scale(frame: np.ndarray) -> float:
    return max(0.42, min(1.2, frame.shape[0] / 800))


def hud_lines(state: LiveState, style_name: str, engine_fps: float, dropped: int, latency_ms: float,
              engine_label: str = "", sink_dropped: int | None = None) -> list[str]:
    """``sink_dropped``: frames the recordings and streams lost (queue full, server away); None: there are none."""
    mode = "BYPASS (raw camera)" if state.bypass else f"style {state.style_index + 1}/{state.n_styles}: {style_name}"
    colour = "  colours kept" if state.keep_color else ""
    how = (" pinned" if state.size_pinned else " auto") if state.sizes else ""
    size = f"size {state.size}{how} {state.upscale}" if state.size else "capture size"
    motion = "   motion" if state.motion and not state.bypass else ""
    return [mode, f"alpha {state.alpha:.2f}{colour}   {size}{motion}",
            f"engine{' ' + engine_label if engine_label else ''} {engine_fps:4.1f} fps   dropped {dropped}   "
            f"latency {latency_ms:3.0f} ms"
            + (f"   out dropped {sink_dropped}" if sink_dropped is not None else "")]


def draw_overlays(frame: np.ndarray, state: LiveState, style_name: str, engine_fps: float, dropped: int,
                  latency_ms: float, engine_label: str = "", sink_dropped: int | None = None) -> np.ndarray:
    """The frame with the HUD and/or help drawn on (a copy), or the frame itself when neither is on."""
    if not (state.hud or state.help):
        return frame
    out = frame.copy()
    scale = _scale(out)
    margin = max(4, round(10 * scale))
    top = margin
    if state.hud:
        top = _text_box(out, hud_lines(state, style_name, engine_fps, dropped, latency_ms, engine_label,
                                             sink_dropped),
                         (margin, margin), scale)
        top += margin
    if state.help:
        lines = ["keys (window focused):"] + [f"{k}\t{what}" for k, what in HELP]
        help_scale = scale * 0.9
        while help_scale > 0.25 and top + _box_height(lines, help_scale) > out.shape[0]:
            help_scale *= 0.9  # small windows: shrink the help until it fits under the HUD
        _text_box(out, lines, (margin, top), help_scale)
    return out
