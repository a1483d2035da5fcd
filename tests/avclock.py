"""Clips that show their own time, and how far apart sound and picture are in what comes out.

A clip: a dark frame with a bright square on its left half, which jumps to the right half for ``FLASH``
seconds at each whole second from 1 s (a style keeps where things are, not how bright a flat frame is),
and a 1 kHz tone burst starting at the same instants. In an output, each jump's first frame and each
burst's first loud sample give one offset (sound minus picture, in seconds; positive: sound late).
"""
from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np

FLASH = 0.3  # seconds white
BURST = 0.1  # seconds of tone
RATE = 48000


def make_clip(path: Path, seconds: float = 4.0, fps: int = 30, size: tuple[int, int] = (96, 64)) -> list[float]:
    """Write the clip (H.264 + AAC); the flash/burst times in seconds."""
    marks = [float(s) for s in range(1, int(seconds))]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
        v.options = {"preset": "ultrafast", "crf": "18"}
        a = c.add_stream("aac", rate=RATE)
        a.layout = "stereo"
        n_frames = round(seconds * fps)
        for i in range(n_frames):
            t = i / fps
            lit = any(m <= t + 1e-9 < m + FLASH for m in marks)
            img = np.full((size[1], size[0], 3), 16, np.uint8)
            w, h = size
            x0 = w // 2 + w // 8 if lit else w // 8
            img[h // 4:3 * h // 4, x0:x0 + w // 4] = 235
            bx = (4 * i) % (w - 8)  # a bar moving every frame: a repeated frame shows as one
            img[h - h // 8:, bx:bx + 8] = 160
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            c.mux(v.encode(frame))
        t = np.arange(round(seconds * RATE)) / RATE
        wave = np.zeros_like(t)
        for m in marks:
            on = (t >= m) & (t < m + BURST)
            wave[on] = 0.8 * np.sin(2 * np.pi * 1000 * (t[on] - m))
        samples = np.stack([wave, wave]).astype(np.float32)
        step = a.codec_context.frame_size or 1024
        for start in range(0, samples.shape[1], step):
            chunk = np.ascontiguousarray(samples[:, start:start + step])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, fractions.Fraction(1, RATE)
            c.mux(a.encode(frame))
        c.mux(v.encode(None))
        c.mux(a.encode(None))
    return marks


def picture_onsets(path: Path, fps: float = 30.0) -> list[float]:
    """Times (s, from the file's first frame) where the square jumps right, each shown by a fresh frame right
    after a fresh one: where the engine dropped the frames around a jump (a busy CPU), the output cannot say
    when it happened, so that jump is left out."""
    with av.open(str(path)) as c:
        grey = [(float(f.pts * f.time_base), f.to_ndarray(format="gray").astype(np.float32))
                for f in c.decode(video=0)]
    t0 = grey[0][0]
    found = []
    for j in range(2, len(grey)):
        (t, now), (t1, before), (_, earlier) = grey[j], grey[j - 1], grey[j - 2]
        if not _right_minus_left(now) > 0 >= _right_minus_left(before):
            continue
        fresh = t - t1 <= 1.5 / fps and np.abs(before - earlier).mean() > 0.3
        if fresh:
            found.append(t - t0)
    return found


def _right_minus_left(gray: np.ndarray) -> float:
    half = gray.shape[1] // 2
    return float(gray[:, half:].mean() - gray[:, :half].mean())


def sound_onsets(path: Path) -> list[float]:
    """Times (s, from the first frame's time) where a tone burst starts."""
    with av.open(str(path)) as c:
        v0 = None
        for f in c.decode(video=0):
            v0 = float(f.pts * f.time_base)
            break
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        chunks, start = [], None
        for f in c.decode(audio=0):
            if start is None:
                start = float(f.pts * f.time_base)
            chunks.append(np.abs(f.to_ndarray()).max(axis=0))
        rate = stream.codec_context.sample_rate
    loud = np.concatenate(chunks) > 0.2
    edges = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
    onsets: list[float] = []
    for e in edges:
        t = start + e / rate - v0
        if not onsets or t - onsets[-1] > 0.5:  # a burst's first loud sample, not its later zero crossings
            onsets.append(t)
    return onsets


def offsets(path: Path) -> list[float]:
    """Sound minus picture (s) for each flash whose burst is in the output."""
    pictures, sounds = picture_onsets(path), sound_onsets(path)
    found = []
    for p in pictures:
        near = [s - p for s in sounds if abs(s - p) < 0.4]
        if near:
            found.append(min(near, key=abs))
    return found
