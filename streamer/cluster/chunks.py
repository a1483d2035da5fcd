"""Cutting a video into chunks that render independently, and joining the rendered chunks without re-encoding.

A chunk is a run of consecutive frames [first, stop) in presentation order. Its boundaries are put on the
source's keyframes where one is near (a worker then seeks straight to it); where the source has few
keyframes a boundary falls between them and the worker decodes from the keyframe before it, throwing
those frames away. With ``--temporal`` a chunk also runs ``warmup`` frames before its start through the
stabiliser (stylized, not written), so the state it starts with is close to the one an uninterrupted render
has there and the boundary does not pop.

Each chunk is encoded on its own (a keyframe first) with timestamps relative to its first frame; the join
puts the chunks' packets one after the other into the final container with the source's timestamps and
copies the source's audio once, packet for packet (as a local render does).
"""
from __future__ import annotations

import fractions
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.bitstream

from engines.errors import InputError
from streamer.fileutil import AtomicOutput
from streamer.videoio import VideoWriter
from streamer.videoread import VideoInfo, open_video, video_stream

log = logging.getLogger(__name__)

#: frames stylized (not written) before a chunk with --temporal: the stabiliser's blend reaches its steady
#: state within a few frames
TEMPORAL_WARMUP = 12
#: a boundary moves to a keyframe this close (as a fraction of the chunk length) to save decoding
SNAP_FRACTION = 0.25
ANNEXB_FILTERS = ("h264_mp4toannexb", "hevc_mp4toannexb")


@dataclass(frozen=True)
class FrameIndex:
    """Every video frame's pts in presentation order, and which frames are keyframes (by position)."""

    pts: tuple[int, ...]
    keyframes: tuple[int, ...]


@dataclass(frozen=True)
class Chunk:
    """Frames [first, stop) of a video; pts bounds in the source's time base (``end_pts`` None: to the end)."""

    index: int
    first: int
    stop: int
    seek_pts: int
    warm_pts: int
    start_pts: int
    end_pts: int | None

    @property
    def frames(self) -> int:
        return self.stop - self.first

    def is_after(self, pts: int) -> bool:
        return self.end_pts is not None and pts >= self.end_pts


def scan_frames(path: Path) -> FrameIndex:
    """Demux (no decoding) the video stream: each packet is one frame. Seconds for an hour of video."""
    container, info = open_video(path)
    try:
        stream = video_stream(container, info)
        pts: list[int] = []
        keys: set[int] = set()
        for packet in container.demux(stream):
            if packet.pts is None:
                if packet.size:
                    raise InputError(f"{path} has video packets without timestamps; render it without --cluster")
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.add(packet.pts)
    finally:
        container.close()
    pts.sort()
    return FrameIndex(tuple(pts), tuple(i for i, p in enumerate(pts) if p in keys))


def chunk_bounds(frames: int, keyframes: tuple[int, ...], chunk_frames: int) -> list[int]:
    """Boundaries 0 = b0 < b1 < ... < frames, about ``chunk_frames`` apart, moved onto nearby keyframes."""
    if frames <= 0:
        return [0]
    chunk_frames = max(1, chunk_frames)
    snap = int(chunk_frames * SNAP_FRACTION)
    bounds = [0]
    for target in range(chunk_frames, frames, chunk_frames):
        near = [k for k in keyframes if abs(k - target) <= snap and k > bounds[-1]]
        b = min(near, key=lambda k: abs(k - target)) if near else target
        if b > bounds[-1] and b < frames:
            bounds.append(b)
    bounds.append(frames)
    return bounds


def plan_chunks(index: FrameIndex, chunk_frames: int, warmup: int = 0, max_frames: int | None = None) -> list[Chunk]:
    """The chunks of the first ``max_frames`` frames (all by default), each with its seek point and warm-up."""
    total = len(index.pts) if max_frames is None else min(max_frames, len(index.pts))
    bounds = chunk_bounds(total, index.keyframes, chunk_frames)
    chunks = []
    for i, (first, stop) in enumerate(zip(bounds, bounds[1:])):
        warm_first = max(0, first - warmup)
        key = max((k for k in index.keyframes if k <= warm_first), default=0)
        end = index.pts[stop] if stop < len(index.pts) else None
        chunks.append(Chunk(i, first, stop, index.pts[key] if key else 0, index.pts[warm_first], index.pts[first], end))
    return chunks


def auto_chunk_frames(frames: int, workers: int) -> int:
    """About three chunks per worker (so a slow or restarted worker delays the end little), 24 to 3000 frames."""
    return max(24, min(3000, -(-frames // max(1, 3 * workers))))


def _rebased(packet: av.Packet, src: fractions.Fraction, dst: fractions.Fraction, offset: int) -> av.Packet:
    """The packet's pts/dts from the chunk's time base to the source's, shifted to the chunk's start."""
    for name in ("pts", "dts"):
        value = getattr(packet, name)
        if value is not None:
            setattr(packet, name, round(value * src / dst) + offset)
    packet.time_base = dst
    return packet


def _chunk_packets(path: Path, info: VideoInfo, offset: int, headers: list[bytes]) -> Iterator[av.Packet]:
    """The chunk's video packets on the source's clock; every chunk must carry the first one's codec headers."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        theirs = bytes(stream.codec_context.extradata or b"")
        if not headers:
            headers.append(theirs)
        if theirs != headers[0]:
            raise InputError(f"chunk {path.name} was encoded with other settings than the output; "
                             "all workers need the same FFmpeg/x264 build")
        # The output's encoder has Annex B headers, so its muxer expects Annex B packets (MP4/MKV store
        # length-prefixed NAL units: convert them back, as ffmpeg's own stream copy does).
        name = f"{stream.codec_context.name}_mp4toannexb"
        bsf = av.bitstream.BitStreamFilterContext(name, stream) if name in ANNEXB_FILTERS and theirs[:1] == b"\x01" \
            else None
        for packet in container.demux(stream):
            if packet.dts is None and packet.pts is None:
                continue
            for out in (bsf.filter(packet) if bsf is not None else [packet]):
                yield _rebased(out, stream.time_base, info.time_base, offset)


def join_chunks(src: Path, dst: Path, chunks: list[tuple[int, Path]], *, codec: str, crf: int, preset: str,
                audio_until: float | None = None, output: AtomicOutput | None = None) -> int:
    """Write ``dst`` (via a temp file, renamed at the end) from the rendered chunk files, in order, each given with
    the source pts of its first frame (its time 0), and the source's audio copied once. ``audio_until``: seconds of audio to keep (None: all of it); ``output``: ``dst`` taken
    (locked) by the caller. Returns the frames written."""
    container, info = open_video(src)
    writer = None
    try:
        writer = VideoWriter(dst, info.width, info.height, info.fps, codec=codec, crf=crf, time_base=info.time_base,
                             audio_from=container, preset=preset, rotation=info.rotation, output=output)
        headers: list[bytes] = []
        audio = _audio_packets(container, audio_until)
        pending = next(audio, None)
        for first_pts, path in chunks:
            for packet in _chunk_packets(path, info, first_pts, headers):
                t = float((packet.dts if packet.dts is not None else packet.pts) * info.time_base)
                while pending is not None and _seconds(pending) <= t:  # keep the file interleaved
                    writer.mux_audio(pending)
                    pending = next(audio, None)
                writer.mux_encoded(packet)
        while pending is not None:
            writer.mux_audio(pending)
            pending = next(audio, None)
        writer.close()
        return writer.frames
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        container.close()


def _seconds(packet: av.Packet) -> float:
    t = packet.dts if packet.dts is not None else packet.pts
    return float(t * packet.time_base) if t is not None else 0.0


def _audio_packets(container: av.container.InputContainer, until: float | None) -> Iterator[av.Packet]:
    if not container.streams.audio:
        return
    for packet in container.demux(*container.streams.audio):
        if until is not None and packet.pts is not None and packet.pts * packet.time_base >= until:
            continue
        yield packet
