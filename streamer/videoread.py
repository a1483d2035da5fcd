"""Reading video files with PyAV: one clear error for each way opening one can fail, what a writer needs to
know of it (VideoInfo), and timestamps a decoder can be trusted with (BestEffortPts)."""
from __future__ import annotations

import fractions
from dataclasses import dataclass
from pathlib import Path

import av
import av.container

from engines.errors import InputError
from streamer.fileutil import existing_file


class BestEffortPts:
    """A decoded frame's timestamp the way FFmpeg's ``best_effort_timestamp`` guesses it: its pts while pts run
    forward at least as well as dts do, else its dts (an AVI holding B-frames has reordered pts); None when the
    frame has neither (the caller counts frames then)."""

    def __init__(self) -> None:
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts: int | None = None
        self.last_dts: int | None = None

    def __call__(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
            return pts
        return dts



@dataclass
class VideoInfo:
    width: int
    height: int
    fps: fractions.Fraction
    time_base: fractions.Fraction
    frames: int  # 0 when the container does not say
    duration: float  # seconds, 0 when unknown
    has_audio: bool
    stream_index: int = 0  # the picture stream (cover art and thumbnails are skipped)
    rotation: int = 0  # degrees counter-clockwise the player turns the picture (phone videos)
    frames_exact: bool = False  # ``frames`` is the container's own count (MP4/MOV), not duration x rate


def video_stream(container: av.container.InputContainer, info: VideoInfo) -> av.video.stream.VideoStream:
    return next(s for s in container.streams.video if s.index == info.stream_index)


def _first_frame_rotation(path: Path, index: int) -> int:
    """The display rotation phones store; read from the first frame (PyAV shows it there)."""
    try:
        with av.open(str(path), "r") as c:
            stream = next(s for s in c.streams.video if s.index == index)
            for frame in c.decode(stream):
                return int(round(frame.rotation or 0))
    except (av.FFmpegError, OSError, ValueError, StopIteration):
        pass
    return 0


def open_video(path: Path) -> tuple[av.container.InputContainer, VideoInfo]:
    """Open a video file for decoding with one clear error for each way it can fail."""
    path = existing_file(path, "input video", "a video file")
    try:
        container = av.open(str(path), "r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"cannot read video {path}: not a supported or intact video file ({exc.__class__.__name__})") \
            from None
    pictures = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not pictures:
        container.close()
        raise InputError(f"{path} has no video stream")
    stream = pictures[0]
    ctx = stream.codec_context
    if not ctx.width or not ctx.height:
        container.close()
        raise InputError(f"cannot read video {path}: the video stream has no frame size (corrupt or unsupported)")
    rate = stream.average_rate or stream.base_rate or stream.guessed_rate or fractions.Fraction(25)
    duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else (
        container.duration / av.time_base if container.duration else 0.0)
    info = VideoInfo(ctx.width, ctx.height, fractions.Fraction(rate), stream.time_base or 1 / fractions.Fraction(rate),
                     stream.frames or round(duration * rate), duration, bool(container.streams.audio),
                     stream.index, _first_frame_rotation(path, stream.index), frames_exact=bool(stream.frames))
    return container, info
