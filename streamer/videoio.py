"""Writing video files with PyAV, the way a user expects (what an output may be: :mod:`streamer.encoding`).

The writer encodes to a temporary file beside the target and renames it on close, so a crash never
leaves a half-written file at the final name; closing after Ctrl-C still yields a valid, playable
file (the encoder is flushed and the container's index written). Audio is copied packet for packet
when the container accepts the codec, and re-encoded (AAC, or Opus for WebM) when it does not.

Odd frame sizes: H.264 in 4:2:0 (``yuv420p``, the default and the only format every player
supports) needs even width and height. For such formats an odd-sized frame is padded by one pixel
(the last row/column repeated, so nothing shows) and the file is one pixel larger on that side.
A caller passing a format without chroma subsampling (``VideoWriter(..., pix_fmt="yuv444p")``) keeps
the exact size; the command line has no pixel-format flag and always encodes ``yuv420p``.
"""
from __future__ import annotations

import errno
import fractions
import logging
from pathlib import Path

import av
import av.container
import numpy as np

from engines.errors import InputError
from streamer.encoding import PRESET_NAMES, check_output, container_format, encoder_settings
from streamer.fileutil import AtomicOutput

log = logging.getLogger(__name__)

#: muxers that get the index at the front, so players and browsers can start before the end
FASTSTART = {"mp4", "mov"}
#: muxers that count frames rather than store timestamps: their time base is one frame (1/fps), and they
#: cannot hold B-frames (a reordered frame has no place of its own)
FRAME_COUNTING = {"avi"}
#: seconds a dts may lie before its pts: far more than any encoder reorders (B-frames: a few frames, even at a
#: live recording's slowest rate); x265's unset delay gives dts hours or years before it
MAX_REORDER_SECONDS = 10


def _fraction(value: fractions.Fraction | float | int) -> fractions.Fraction:
    """A frame rate as an exact fraction; 29.97 and friends become the NTSC 30000/1001."""
    if isinstance(value, fractions.Fraction):
        return value
    if isinstance(value, int):
        return fractions.Fraction(value)
    return fractions.Fraction(value).limit_denominator(1001)


#: live sound: the rate and layout every streaming service takes (AAC 48 kHz stereo)
SOUND_RATE = 48000
SOUND_CODECS = ("aac", "libopus", "libmp3lame")  # first the container takes; WebM takes Opus only


def add_sound_stream(container: av.container.OutputContainer, what: str, codec: str | None = None,
                     bitrate: int = 128_000) -> av.audio.stream.AudioStream:
    """A 48 kHz stereo sound stream in ``container``: ``codec``, or the first of :data:`SOUND_CODECS` it takes."""
    supported = container.supported_codecs
    codec = codec or next((c for c in SOUND_CODECS if c in supported), None)
    if codec is None:
        raise InputError(f"a {what} output cannot hold sound in any codec this FFmpeg has ({', '.join(SOUND_CODECS)})")
    stream = container.add_stream(codec, rate=SOUND_RATE)
    stream.codec_context.layout = "stereo"
    formats = [f.name for f in av.Codec(codec, "w").audio_formats or ()]
    stream.codec_context.format = next((f for f in ("fltp", "flt", "s16p", "s16") if f in formats), "fltp")
    stream.codec_context.bit_rate = bitrate
    stream.time_base = fractions.Fraction(1, SOUND_RATE)
    return stream


def sound_frame(samples: np.ndarray, pts: int, fmt: str = "fltp") -> av.AudioFrame:
    """``(n, 2)`` float32 samples in -1..1 as a 48 kHz stereo frame in ``fmt`` (the encoder's) from sample ``pts``."""
    data = samples.T if fmt.endswith("p") else samples.reshape(1, -1)  # planar: one row a channel
    data = np.ascontiguousarray(data, dtype=np.float32)
    if fmt.startswith("s16"):
        data = np.ascontiguousarray((np.clip(data, -1, 1) * 32767).astype(np.int16))
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="stereo")
    frame.sample_rate = SOUND_RATE
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, SOUND_RATE)
    return frame


def _subsampled(pix_fmt: str) -> tuple[bool, bool]:
    """(width must be even, height must be even) for a pixel format."""
    try:
        desc = av.VideoFormat(pix_fmt)
    except (ValueError, av.FFmpegError):
        raise InputError(f"unknown pixel format '{pix_fmt}'") from None
    if len(desc.components) < 2 or desc.name.startswith(("rgb", "bgr", "gbr", "gray")):
        return False, False
    chroma = desc.components[1]
    return chroma.width != desc.components[0].width or desc.name.startswith(("yuv420", "yuv422", "nv")), \
        chroma.height != desc.components[0].height or desc.name.startswith(("yuv420", "nv"))


def even_padding(width: int, height: int, pix_fmt: str) -> tuple[int, int]:
    """(extra columns, extra rows) the pixel format needs to encode a ``width`` x ``height`` frame."""
    need_w, need_h = _subsampled(pix_fmt)
    return (width % 2 if need_w else 0), (height % 2 if need_h else 0)


def pad_edges(rgb: np.ndarray, pad_w: int, pad_h: int) -> np.ndarray:
    if not pad_w and not pad_h:
        return rgb
    return np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class VideoWriter:
    """H.264 (default) MP4/MKV writer with PyAV; writes to a temp file beside the target and renames on close,
    so a crash never leaves a half-written file at the final name; close() after Ctrl-C still yields a valid,
    playable file.

    ``time_base`` is the unit of ``write``'s ``pts`` (default ``1/fps``); give the source stream's time base
    and its frames' pts to keep every timestamp, including variable frame rate. ``audio_from``: an open
    input container whose audio (and with ``subtitles``, subtitle) streams are carried over; feed its packets
    to :meth:`mux_audio` in demux order (copied when the container accepts the codec, audio re-encoded otherwise).
    ``rotation``: degrees counter-clockwise players should turn the picture (copied from a phone video's display
    matrix).
    ``preset``: x264/x265 speed preset (default ``veryfast``); ``threads``: encoder threads (default: FFmpeg's).
    ``realtime``: the encoder keeps up with a live source (VP9's realtime deadline; x264 has its preset).
    ``output``: an :class:`~streamer.fileutil.AtomicOutput` taken earlier (default: one is taken here).
    ``sound``: an encoded sound track (AAC 48 kHz stereo, Opus in WebM) fed by :meth:`write_audio` (live's).
    """

    def __init__(self, path: Path, width: int, height: int, fps: fractions.Fraction | float, codec: str = "libx264",
                 crf: int = 18, pix_fmt: str = "yuv420p", time_base: fractions.Fraction | None = None,
                 audio_from: av.container.InputContainer | None = None, *, preset: str | None = None,
                 threads: int | None = None, faststart: bool = True, rotation: int = 0,
                 realtime: bool = False, output: AtomicOutput | None = None, subtitles: bool = False,
                 sound: bool = False) -> None:
        self.path = Path(path)
        if width <= 0 or height <= 0:
            raise InputError(f"cannot write a {width}x{height} video")
        fmt = container_format(self.path)
        codec = check_output(self.path, codec)
        if preset is not None and preset not in PRESET_NAMES:
            raise InputError(f"unknown preset '{preset}': use one of {', '.join(PRESET_NAMES)}")
        self.width, self.height = width, height
        self.fps = _fraction(fps)
        if self.fps <= 0:
            raise InputError(f"frame rate must be positive, not {fps}")
        self.time_base = time_base or 1 / self.fps  # the unit of write()'s pts
        self.frame_counting = fmt in FRAME_COUNTING
        #: what the file stores: the caller's unit, or one frame where the container counts frames (AVI)
        self.stream_time_base = 1 / self.fps if self.frame_counting else self.time_base
        self._max_delay = max(1, round(MAX_REORDER_SECONDS / self.stream_time_base))
        self._last_dts: int | None = None
        self.pad_w, self.pad_h = even_padding(width, height, pix_fmt)
        if self.pad_w or self.pad_h:
            log.info("%s needs even sizes: %dx%d is encoded as %dx%d (edge pixels repeated)", pix_fmt, width, height,
                     width + self.pad_w, height + self.pad_h)
        self.frames = 0
        self._last_pts: int | None = None
        self._closed = False
        self._audio: dict[int, av.stream.Stream] = {}
        self._audio_shift: dict[int, int] = {}
        self._reencode: dict[int, tuple[av.codec.context.CodecContext, av.stream.Stream]] = {}
        self.sound: av.audio.stream.AudioStream | None = None

        # the caller may have taken the output (and its lock) before loading a model: see streamer.fileutil
        self.output = output if output is not None else AtomicOutput(self.path)
        self.tmp_path = self.output.tmp_path
        try:
            options = {"movflags": "+faststart"} if faststart and fmt in FASTSTART else {}
            self.container = av.open(str(self.tmp_path), "w", format=fmt, options=options)
            self._add_video_stream(codec, crf, pix_fmt, preset, threads, realtime)
            if rotation:
                self.stream.set_display_rotation(rotation)  # players turn it, as they did the source
            if audio_from is not None:
                self._add_audio_streams(audio_from, subtitles)
            if sound:
                self.sound = add_sound_stream(self.container, self.path.suffix)
            self.container.start_encoding()  # fail now, not after the first frame, on bad combinations
        except InputError:
            self.abort()
            raise
        except (av.FFmpegError, ValueError, OSError) as exc:
            self.abort()
            if _is_disk_full(exc):
                raise InputError(f"cannot write {self.path}: disk full") from None
            raise InputError(f"cannot write {self.path} with codec {codec}: {exc}") from None
        except BaseException:
            self.abort()
            raise

    # -- setup -------------------------------------------------------------------------------------
    def _add_video_stream(self, codec: str, crf: int, pix_fmt: str, preset: str | None, threads: int | None,
                          realtime: bool = False) -> None:
        options = encoder_settings(codec, crf, preset, realtime)
        if self.frame_counting:
            options["bf"] = "0"  # no B-frames where frames are counted, not stamped
        stream = self.container.add_stream(codec, rate=self.fps, options=options)
        ctx = stream.codec_context
        ctx.width, ctx.height = self.width + self.pad_w, self.height + self.pad_h
        try:
            ctx.pix_fmt = pix_fmt
        except (ValueError, av.FFmpegError):
            raise InputError(f"unknown pixel format '{pix_fmt}'") from None
        ctx.time_base = self.stream_time_base
        stream.time_base = self.stream_time_base
        if threads is not None:
            ctx.thread_count = threads
        if not pix_fmt.startswith(("rgb", "bgr", "gbr", "gray")):
            # Say which RGB->YUV matrix we used, so players convert back with the same one.
            ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = 1, 1, 1, 1  # BT.709, limited range
        self.stream = stream

    def _add_audio_streams(self, source: av.container.InputContainer, subtitles: bool = False) -> None:
        supported = self.container.supported_codecs
        for in_stream in source.streams.audio:
            name = in_stream.codec_context.name
            if name in supported:
                self._audio[in_stream.index] = self.container.add_stream_from_template(in_stream)
                log.debug("audio stream %d: copying %s", in_stream.index, name)
                continue
            target = next((c for c in ("aac", "libopus", "libvorbis", "libmp3lame") if c in supported), None)
            if target is None:
                log.warning("audio stream %d (%s) cannot go into a %s file; it is left out", in_stream.index, name,
                            self.path.suffix)
                continue
            rate = 48000 if target == "libopus" else in_stream.codec_context.sample_rate or 48000
            out = self.container.add_stream(target, rate=rate)
            layout = in_stream.codec_context.layout
            if layout is not None and layout.nb_channels <= 2:
                out.codec_context.layout = layout
            else:
                out.codec_context.layout = "stereo"
            decoder = av.CodecContext.create(in_stream.codec_context.name, "r")
            decoder.extradata = in_stream.codec_context.extradata
            if in_stream.codec_context.sample_rate:
                decoder.sample_rate = in_stream.codec_context.sample_rate
            decoder.layout = in_stream.codec_context.layout
            self._reencode[in_stream.index] = (decoder, out)
            log.info("audio stream %d: %s cannot go into %s, re-encoding to %s", in_stream.index, name,
                     self.path.suffix, target)
        for in_stream in source.streams.subtitles if subtitles else ():  # copied as they are, where the container
            # takes them
            name = in_stream.codec_context.name
            if name in supported:
                self._audio[in_stream.index] = self.container.add_stream_from_template(in_stream)
            else:
                log.warning("subtitle stream %d (%s) cannot go into a %s file; it is left out (a .mkv file holds it)",
                            in_stream.index, name, self.path.suffix)

    # -- writing -----------------------------------------------------------------------------------
    def write(self, frame_rgb: np.ndarray, pts: int | None = None) -> None:
        """Encode one RGB uint8 (H, W, 3) frame; ``pts`` in ``time_base`` units (default: the next 1/fps step)."""
        if frame_rgb.shape != (self.height, self.width, 3) or frame_rgb.dtype != np.uint8:
            raise ValueError(f"expected a {self.height}x{self.width}x3 uint8 frame, got {frame_rgb.shape} "
                             f"{frame_rgb.dtype}")
        if pts is None:
            pts = round(self.frames / (self.fps * self.time_base))
        if self.stream_time_base != self.time_base:
            pts = round(pts * self.time_base / self.stream_time_base)
        if self._last_pts is not None and pts <= self._last_pts:
            log.debug("pts %d not after %d: moved to %d", pts, self._last_pts, self._last_pts + 1)
            pts = self._last_pts + 1
        rgb = np.ascontiguousarray(pad_edges(frame_rgb, self.pad_w, self.pad_h))
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        ctx = self.stream.codec_context
        if frame.format.name != ctx.pix_fmt:
            frame = frame.reformat(format=ctx.pix_fmt, dst_colorspace="itu709", dst_color_range="MPEG")
        frame.pts = pts
        frame.time_base = self.stream_time_base
        self._mux(self._sane(self.stream.encode(frame)))
        self._last_pts = pts
        self.frames += 1

    def mux_audio(self, packet: av.Packet) -> None:
        """Copy an audio or subtitle packet from ``audio_from``'s stream (audio may be re-encoded, see the class
        doc); a packet of a stream that was left out is dropped."""
        index = packet.stream.index
        if index in self._audio:
            if packet.dts is None and packet.pts is None:
                return  # the demuxer's end-of-stream flush packet
            if self.frame_counting:  # AVI has no negative time (AAC's priming): audio starts at 0, not the video later
                shift = self._audio_shift.setdefault(index, max(0, -min(t for t in (packet.dts, packet.pts, 0)
                                                                         if t is not None)))
                packet.pts, packet.dts = (t + shift if t is not None else None for t in (packet.pts, packet.dts))
            packet.stream = self._audio[index]
            self._mux(packet)
        elif index in self._reencode:
            decoder, out = self._reencode[index]
            try:
                frames = decoder.decode(packet if packet.size else None)
            except av.FFmpegError as exc:
                log.debug("undecodable audio packet skipped: %s", exc)
                return
            for frame in frames:
                frame.pts = None  # let the encoder count samples: keeps audio gapless
                self._mux(out.encode(frame))

    def write_audio(self, samples: np.ndarray, pts: int) -> None:
        """Encode ``(n, 2)`` float32 samples at :data:`SOUND_RATE` starting at sample ``pts`` (``sound=True``)."""
        self._mux(self.sound.encode(sound_frame(samples, pts, self.sound.codec_context.format.name)))

    def mux_encoded(self, packet: av.Packet) -> None:
        """Copy one already-encoded video packet (pts/dts in its ``time_base``) from a stream encoded with this
        writer's settings: streamer.cluster.chunks joins a cluster's chunks this way, without re-encoding."""
        packet.stream = self.stream
        self._mux(packet)
        self.frames += 1

    def _sane(self, packets: list[av.Packet]) -> list[av.Packet]:
        """The encoder's packets with a dts a muxer takes (see :func:`sane_dts`)."""
        for packet in packets:
            packet.dts = sane_dts(packet.pts, packet.dts, self._last_dts, self._max_delay)
            if packet.dts is not None:
                self._last_dts = packet.dts
        return packets

    def _mux(self, packets) -> None:
        try:
            self.container.mux(packets)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError):
        self.abort()
        if _is_disk_full(exc):
            raise InputError(f"cannot write {self.path}: disk full (nothing was written)") from None
        raise InputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    # -- finishing ---------------------------------------------------------------------------------
    def close(self) -> Path:
        """Flush the encoders, finish the container and move it to its final name; returns that name."""
        if self._closed:
            return self.path
        try:
            self._mux(self._sane(self.stream.encode(None)))
            if self.sound is not None:
                self._mux(self.sound.encode(None))
            for decoder, out in self._reencode.values():
                for frame in decoder.decode(None):
                    frame.pts = None
                    self._mux(out.encode(frame))
                self._mux(out.encode(None))
            self.container.close()
        except OSError as exc:
            self._fail(exc)
        self._closed = True
        return self.output.commit()

    def abort(self) -> None:
        """Stop and remove the temp file; nothing appears at the final name."""
        if not self._closed:
            self._closed = True
            container = getattr(self, "container", None)
            if container is not None:
                try:
                    container.close()
                except Exception:  # noqa: BLE001 - we are throwing the file away anyway
                    pass
        self.output.discard()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.close()  # a partial but valid file after Ctrl-C
        else:
            self.abort()


def sane_dts(pts: int | None, dts: int | None, last_dts: int | None, max_delay: int) -> int | None:
    """An encoded video packet's dts as a muxer can take it. libx265 derives dts from its B-frame delay, which it
    leaves unset on a clip shorter than that delay (MP4: "pts/dts pair unsupported", now and then): a dts after
    its pts, or further before it than any encoder reorders (``max_delay``), is not a real one, and the pts
    stands in, kept after the previous dts."""
    if pts is None or (dts is not None and dts <= pts and pts - dts <= max_delay):
        return dts
    return pts if last_dts is None or pts > last_dts else last_dts + 1
