"""Sinks: an encoder and a muxer on their own thread behind a bounded queue, writing a file or a URL.

A sink takes each new frame once with its capture time (``send``) and sound with its capture time
(``send_audio``); both are put on a bounded queue and return at once, so the live output loop never waits
for an encoder, a disk or a network. When the queue is full the frame is dropped and counted.

Time: everything is placed on the capture clock (``time.perf_counter()``), from the sink's first frame. A
picture reaches the sink an engine step after its capture, the sound at once: since both are stamped
with their capture time, the sound is delayed to meet its picture and lips and sound agree.

* A file (:class:`FileTarget`): variable frame rate (each frame at its capture time, in ms), written to a
  hidden ``.part`` and renamed when closed (streamer.fileutil); a failure ends the session.
* A URL (:class:`UrlTarget`): constant frame rate at ``--fps`` (a frame repeated until the next),
  H.264 with a keyframe every 2 s at ``--bitrate``, yuv420p, AAC 48 kHz stereo (Opus for WHIP). A server
  that refuses, goes away or stalls: one warning, then reconnection with back-off, ``retries`` times;
  the other outputs go on, frames meanwhile are dropped and counted.
"""
from __future__ import annotations

import fractions
import logging
import os
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Protocol
from urllib.parse import urlsplit

import av
import numpy as np

from engines.errors import InputError
from engines.stylizer import resize_to
from streamer.videoio import (SOUND_RATE, VideoWriter, add_sound_stream, even_padding, pad_edges, sound_frame)

log = logging.getLogger(__name__)

#: URL scheme -> (FFmpeg muxer, protocol the URL is opened with, the URL FFmpeg is given)
SCHEMES = {"rtmp": ("flv", "rtmp"), "rtmps": ("flv", "rtmps"), "rtsp": ("rtsp", "tcp"),
           "whip": ("whip", "http"), "whips": ("whip", "https"), "srt": ("mpegts", "srt")}
DEFAULT_BITRATE = 2500  # kbit/s: what Twitch and YouTube suggest for 720p at 30 fps
KEYFRAME_SECONDS = 2.0
SOUND_BITRATE = 128_000
#: seconds of frames a stream's queue holds before it drops: a network hiccup passes, a stall does not grow memory
STREAM_QUEUE_SECONDS = 1.0
FILE_QUEUE_SECONDS = 2.0
NETWORK_TIMEOUT = 5.0  # seconds a connect or a write may take before the server counts as gone
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0)  # seconds between reconnects
RESYNC_SAMPLES = SOUND_RATE // 100  # 10 ms: sound further than this from where its clock says is put back there
MAX_REPEAT_SECONDS = 2.0  # a gap longer than this (a stall) starts the stream's clock again instead of repeating


@dataclass
class AudioChunk:
    """Sound captured at ``t_capture`` (``time.perf_counter()`` of its first sample)."""

    samples: np.ndarray  # (n, 2) float32 in -1..1 at SOUND_RATE
    t_capture: float


# -- URLs ----------------------------------------------------------------------------------------
def _protocols() -> set[str] | None:
    """The output protocols this PyAV's FFmpeg has (``rtmp``, ``tls``, ...); None where they cannot be listed."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            lib = next((line.split()[-1] for line in maps if "libavformat" in line and ".so" in line), None)
        if lib is None:
            return None
        enum = ctypes.CDLL(lib).avio_enum_protocols
    except (OSError, AttributeError):
        return None
    enum.restype, enum.argtypes = ctypes.c_char_p, [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    opaque, names = ctypes.c_void_p(None), set()
    while (name := enum(ctypes.byref(opaque), 1)) is not None:
        names.add(name.decode())
    return names


def supported_schemes() -> list[str]:
    """The ``--stream`` URL schemes this FFmpeg build can send to."""
    protocols = _protocols()
    return [s for s, (fmt, proto) in SCHEMES.items()
            if fmt in av.formats_available and (protocols is None or proto in protocols)]


def check_stream_url(url: str) -> str:
    """``--stream URL`` checked before anything loads: its muxer name, or one InputError line."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", url)
    if not m:
        raise InputError(f"--stream {url}: not a URL; give rtmp://host/app/key (or {', '.join(supported_schemes())})")
    scheme = m[1].lower()
    if scheme not in SCHEMES:
        raise InputError(f"--stream {url}: {scheme}:// is not a streaming protocol streamer sends to; use "
                         f"{', '.join(s + '://' for s in supported_schemes())}")
    if scheme not in supported_schemes():
        raise InputError(f"--stream {url}: this PyAV's FFmpeg cannot send {scheme}:// (built without it); it can "
                         f"send {', '.join(s + '://' for s in supported_schemes())}")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise InputError(f"--stream {url}: the port is not a number") from None
    if not parts.hostname:
        raise InputError(f"--stream {url}: no server named; e.g. rtmp://live.twitch.tv/app/KEY")
    if scheme.startswith("rtmp") and len([p for p in parts.path.split("/") if p]) < 1:
        raise InputError(f"--stream {url}: an RTMP URL names an application, e.g. rtmp://host/live/KEY")
    return SCHEMES[scheme][0]


def safe_url(url: str) -> str:
    """A URL for logs: a stream key (the last part of an RTMP path) and passwords hidden."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    path = parts.path.rsplit("/", 1)[0] + "/***" if parts.path.count("/") >= 2 else parts.path
    return f"{parts.scheme}://{host}{port}{path}"


# -- a stalled server ------------------------------------------------------------------------------------
#: sockets a stream has taken as its own (so another stream's watchdog never cuts them)
_CLAIMED: set[int] = set()
_CLAIMED_LOCK = threading.Lock()


def _socket_fds() -> set[int]:
    """This process's open sockets (Linux: /proc/self/fd; elsewhere none are known, and a stall is not cut)."""
    found = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.add(int(name))
        except (OSError, ValueError):
            pass
    return found


def _cut(fds: set[int]) -> None:
    """Shut these sockets down under FFmpeg: its blocked connect or write returns an error. PyAV opens an output's
    connection with no timeout and no interrupt callback, so this is the only way to unblock it."""
    for fd in fds:
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()


# -- what a sink writes into -------------------------------------------------------------------------
class Target(Protocol):
    """An open container: pictures at ``pts`` in ``time_base``, sound at sample ``pts``."""

    time_base: fractions.Fraction
    has_sound: bool

    def write(self, rgb: np.ndarray, pts: int) -> None: ...

    def write_audio(self, samples: np.ndarray, pts: int) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class UrlTarget:
    """A live stream to a server: H.264 CBR-ish at ``bitrate``, keyframe every 2 s, AAC 48 kHz stereo."""

    has_sound = True

    def __init__(self, url: str, width: int, height: int, fps: float, bitrate_kbps: int = DEFAULT_BITRATE) -> None:
        fmt = check_stream_url(url)
        scheme = url.split(":", 1)[0].lower()
        target = re.sub(r"^whips?", "https" if scheme == "whips" else "http", url) if fmt == "whip" else url
        self.fps = fractions.Fraction(fps).limit_denominator(1001)
        self.time_base = 1 / self.fps
        self.pad_w, self.pad_h = even_padding(width, height, "yuv420p")
        self.priming_shift, self._priming = fmt == "flv", None
        # each packet to the network at once (no 32 KB buffer in the delay), and never held long waiting for
        # the other stream's packets to interleave with
        options = {"flush_packets": "1", "max_interleave_delta": "500000"}
        if fmt == "flv":
            options["flvflags"] = "no_duration_filesize"  # a live server cannot seek back to fill them in
        if fmt == "rtsp":
            options["rtsp_transport"] = "tcp"
        self.container = av.open(target, "w", format=fmt, options=options,
                                 timeout=(NETWORK_TIMEOUT, NETWORK_TIMEOUT))
        try:
            gop = max(1, round(float(self.fps) * KEYFRAME_SECONDS))
            bits = bitrate_kbps * 1000
            stream = self.container.add_stream("libx264", rate=self.fps, options={
                "preset": "veryfast", "tune": "zerolatency", "g": str(gop), "keyint_min": str(gop),
                "sc_threshold": "0", "maxrate": str(bits), "bufsize": str(2 * bits), "b": str(bits)})
            ctx = stream.codec_context
            ctx.width, ctx.height = width + self.pad_w, height + self.pad_h
            ctx.pix_fmt = "yuv420p"
            ctx.time_base = self.time_base
            ctx.framerate = self.fps
            stream.time_base = self.time_base
            ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = 1, 1, 1, 1
            self.stream = stream
            self.sound = add_sound_stream(self.container, f"{scheme}://", "libopus" if fmt == "whip" else "aac",
                                          SOUND_BITRATE)
            self.container.start_encoding()
        except BaseException:
            self.abort()
            raise

    def write(self, rgb: np.ndarray, pts: int) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_edges(rgb, self.pad_w, self.pad_h)), "rgb24")
        frame = frame.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG")
        frame.pts, frame.time_base = pts, self.time_base
        self.container.mux(self.stream.encode(frame))

    def write_audio(self, samples: np.ndarray, pts: int) -> None:
        self._mux_sound(self.sound.encode(sound_frame(samples, pts, self.sound.codec_context.format.name)))

    def _mux_sound(self, packets: list[av.Packet]) -> None:
        """FLV has no field for the encoder's priming (AAC: 1024 samples before the first, at pts -1024) and
        players play it: measured 21 ms early on a 127.0.0.1 stream; so the packets move later by it."""
        for packet in packets:
            if self._priming is None:
                self._priming = max(0, -(packet.pts or 0)) if self.priming_shift else 0
            if self._priming:
                packet.pts, packet.dts = packet.pts + self._priming, packet.dts + self._priming
            self.container.mux(packet)

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))
            self._mux_sound(self.sound.encode(None))
        finally:
            self.container.close()

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - a connection already gone
            pass


class FileTarget:
    """A video file with sound: streamer.videoio's writer (``.part`` then rename), timestamps in ms."""

    time_base = fractions.Fraction(1, 1000)  # every container holds ms exactly (WebM/Matroska count in ms)

    def __init__(self, path: Path, width: int, height: int, fps: float, sound: bool, **encoder) -> None:
        self.writer = VideoWriter(path, width, height, fps, time_base=self.time_base, realtime=True, sound=sound,
                                  **encoder)
        self.has_sound = sound

    def write(self, rgb: np.ndarray, pts: int) -> None:
        self.writer.write(rgb, pts=pts)

    def write_audio(self, samples: np.ndarray, pts: int) -> None:
        self.writer.write_audio(samples, pts)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


# -- the sink ----------------------------------------------------------------------------------------
class _SoundClock:
    """Sound on the sink's clock: each chunk placed at its capture time, kept gapless (a jitter below 20 ms is
    absorbed; beyond, silence fills a gap and an overlap is cut), handed out in the encoder's frame size."""

    def __init__(self, frame_size: int) -> None:
        self.frame_size = frame_size or 1024
        self.next: int | None = None  # the sample the next chunk should start at
        self.buffer = np.zeros((0, 2), np.float32)
        self.buffer_pts = 0

    def add(self, samples: np.ndarray, start: int) -> list[tuple[np.ndarray, int]]:
        """Frames of ``frame_size`` samples and their pts, for ``samples`` captured at sample ``start``."""
        if self.next is None:
            if start + len(samples) <= 0:
                return []  # before the first picture
            if start < 0:
                samples, start = samples[-start:], 0
            self.next = self.buffer_pts = start
        gap = start - self.next
        if gap > 5 * SOUND_RATE:  # a long silence (the source stalled): the clock jumps
            self.buffer, self.buffer_pts = np.zeros((0, 2), np.float32), start
            self.next = start
        elif gap > RESYNC_SAMPLES:
            samples = np.concatenate([np.zeros((gap, 2), np.float32), samples])
            self.next = start - gap
        elif gap < -RESYNC_SAMPLES:
            samples = samples[-gap:]
            self.next = start - gap
        self.next += len(samples)
        self.buffer = np.concatenate([self.buffer, samples]) if len(self.buffer) else samples
        out = []
        while len(self.buffer) >= self.frame_size:
            out.append((self.buffer[:self.frame_size], self.buffer_pts))
            self.buffer, self.buffer_pts = self.buffer[self.frame_size:], self.buffer_pts + self.frame_size
        return out


_STOP = object()


class Sink(threading.Thread):
    """One output (a file or a URL) encoding and writing on its own thread; an :class:`~streamer.live.outputs.Output`.

    ``open_target`` opens the container (called on this thread, again on each reconnect). ``fatal``: a failure
    ends the session (a file); else it is warned about once and the target re-opened ``retries`` times with
    back-off (a stream). ``cfr``: constant frame rate at ``fps`` (a frame repeated until the next); else each
    frame at its capture time.
    """

    timestamped: ClassVar[bool] = True

    def __init__(self, name: str, open_target: Callable[[], Target], size: tuple[int, int], fps: float, *,
                 cfr: bool, fatal: bool, retries: int = 5, audio_delay: float = 0.0,
                 queue_seconds: float = STREAM_QUEUE_SECONDS, target: Target | None = None) -> None:
        super().__init__(name=f"sink {name}", daemon=True)
        self.label, self.open_target, self.size, self.fps = name, open_target, size, fps
        self.cfr, self.fatal, self.retries, self.audio_delay = cfr, fatal, retries, audio_delay
        self.queue: queue.Queue = queue.Queue(maxsize=max(4, round(fps * queue_seconds)) * 4)
        self._frames_waiting = 0  # pictures in the queue (sound chunks are small and do not count)
        self._max_frames = max(4, round(fps * queue_seconds))
        self.error: BaseException | None = None
        self.frames = 0  # pictures written (a repeat for a constant rate does not count)
        self.dropped = 0  # pictures lost: queue full, or while the server was away
        self.reconnects = 0
        self.connected = False
        self.gave_up = False
        self.target: Target | None = target  # a file is opened by its maker, so its errors come early
        self._t0: float | None = None
        self._last: tuple[np.ndarray, int] | None = None
        self._sound: _SoundClock | None = None
        self._pending_sound: list[AudioChunk] = []
        self._attempts = 0
        self._retry_at = 0.0
        self._warned = False
        self._aborting = False
        self.fatal_raised = False  # a file's failure was raised in the live loop already
        #: a sound source feeds this sink (set by the live session); else a stream gets silence
        self.sound_fed = False
        self._busy_since: float | None = None  # when the current connect or write began (the watchdog's)
        self._sockets_before: set[int] = set()
        self._own_sockets: set[int] = set()
        self._stalled = False
        self._lock = threading.Lock()

    # -- the live loop's side: never waits ------------------------------------------------------------
    def send(self, frame_rgb: np.ndarray, t_capture: float) -> None:
        if self.error is not None and self.fatal:
            error, self.error = self.error, None
            self.fatal_raised = True
            raise error
        if self.ident is None:
            self.start()
        with self._lock:
            full = self._frames_waiting >= self._max_frames or not self.is_alive()
            if not full:
                try:
                    self.queue.put_nowait(("video", frame_rgb, t_capture))
                    self._frames_waiting += 1
                except queue.Full:
                    full = True
        if full:
            self.dropped += 1
            if self.fatal and not self._warned:
                self._warned = True
                log.warning("%s: the encoder falls behind; frames it has no time for are dropped (counted)",
                            self.label)

    def send_audio(self, chunk: AudioChunk) -> None:
        if self.ident is None:
            self.start()
        try:
            self.queue.put_nowait(("audio", chunk, chunk.t_capture))
        except queue.Full:
            pass  # the picture side counts the loss; sound waits with it

    def close(self) -> None:
        """Write what is queued, finish the container (a file: renamed into place); a file's failure is raised."""
        if self.ident is not None and self.is_alive():
            wait = None if self.fatal else 3 * NETWORK_TIMEOUT  # a stalled server is not waited for long
            try:
                self.queue.put(_STOP, timeout=wait)
                self.join(wait)
            except queue.Full:
                pass
            if self.is_alive():
                log.warning("%s: the server did not take the end of the stream in time; left", self.label)
        elif self.ident is None:
            self._finish()
        if self.error is not None and self.fatal and not self.fatal_raised:
            raise self.error

    def abort(self) -> None:
        """Drop everything: a file leaves nothing behind."""
        if self.ident is not None and self.is_alive():
            self._aborting = True
            try:
                self.queue.put(_STOP, timeout=NETWORK_TIMEOUT)
                self.join(NETWORK_TIMEOUT)
            except queue.Full:
                pass
        if self.target is not None:
            self.target.abort()
            self.target = None

    def describe(self) -> str:
        """``rtmp://host/live/*** 300 frames, 4 dropped, 1 reconnect``."""
        reconnects = f", {self.reconnects} reconnect{'s' if self.reconnects != 1 else ''}" if self.reconnects else ""
        return f"{self.label}: {self.frames} frames, {self.dropped} dropped{reconnects}" + \
            (" (gave up)" if self.gave_up else "")

    # -- the sink's thread ------------------------------------------------------------------------------
    def _watch(self) -> None:
        """A stream whose connect or write has hung for NETWORK_TIMEOUT (a server that stalls): cut its socket."""
        while self.is_alive():
            time.sleep(0.25)
            since = self._busy_since
            if since is None or self._stalled or time.perf_counter() - since < NETWORK_TIMEOUT:
                continue
            with _CLAIMED_LOCK:
                mine = self._own_sockets or (_socket_fds() - self._sockets_before - _CLAIMED)
            self._stalled = True
            _cut(mine)

    def run(self) -> None:
        if not self.fatal:
            threading.Thread(target=self._watch, name=f"{self.name} watchdog", daemon=True).start()
        try:
            while True:
                item = self.queue.get()
                if item is _STOP or self._aborting:
                    break
                kind, payload, t = item
                if kind == "video":
                    with self._lock:
                        self._frames_waiting -= 1
                if self.error is not None and self.fatal:
                    continue
                if self.target is None and not self._connect():
                    if kind == "video":
                        self.dropped += 1
                    continue
                try:
                    self._busy_since = time.perf_counter()
                    if kind == "video":
                        self._picture(payload, t)
                    else:
                        self._audio(payload)
                    self._busy_since = None
                except Exception as exc:  # noqa: BLE001 - a file: raised in the live loop; a stream: reconnect
                    self._busy_since = None
                    if self.fatal:
                        self.error = exc
                        self._drop_target()
                    else:
                        self._lost(exc)
                    if kind == "video":
                        self.dropped += 1
        except BaseException as exc:  # noqa: BLE001 - raised in the live loop
            self.error = exc
        if self._aborting:
            return
        self._finish()

    def _finish(self) -> None:
        if self.target is None:
            if self.fatal and self.error is None and self.frames == 0:
                self._drop_target()
            return
        try:
            if self.frames == 0:
                self._drop_target()
            else:
                self._busy_since = time.perf_counter()  # a stalled server cannot hold the end either
                self.target.close()
                self.target = None
        except Exception as exc:  # noqa: BLE001
            if self.fatal:
                self.error = self.error or exc
            else:
                log.warning("%s: closing failed (%s)", self.label, _reason(exc))
            self._drop_target()

    def _drop_target(self) -> None:
        if self.target is not None:
            self.target.abort()
            self.target = None
        with _CLAIMED_LOCK:
            _CLAIMED.difference_update(self._own_sockets)
            self._own_sockets = set()

    def _connect(self) -> bool:
        """Open the target now, or at the next back-off time; False while it is not open."""
        if self.gave_up or time.perf_counter() < self._retry_at:
            return False
        self._sockets_before = _socket_fds()
        self._busy_since, self._stalled = time.perf_counter(), False
        try:
            self.target = self.open_target()
        except Exception as exc:  # noqa: BLE001 - a server that refuses: warned once, tried again later
            self._busy_since = None
            if self.fatal:
                raise
            self._lost(exc)
            return False
        self._busy_since = None
        with _CLAIMED_LOCK:
            self._own_sockets = _socket_fds() - self._sockets_before - _CLAIMED
            _CLAIMED.update(self._own_sockets)
        if self._attempts:
            self.reconnects += 1
            log.warning("%s: connected again", self.label)
        self._attempts = 0
        self._t0, self._last, self._sound = None, None, None
        self.connected = True
        return True

    def _lost(self, exc: BaseException) -> None:
        self._drop_target()
        self.connected = False
        if self._stalled:
            exc = ConnectionError(f"the server took nothing for {NETWORK_TIMEOUT:g} s")
            self._stalled = False
        if self._attempts >= self.retries:
            self.gave_up = True
            log.warning("%s: gave up after %d reconnects (%s); the other outputs go on", self.label, self.retries,
                        _reason(exc))
            return
        wait = BACKOFF[min(self._attempts, len(BACKOFF) - 1)]
        if not self._warned or self._attempts == 0:
            log.warning("%s: %s; reconnecting (up to %d times, back-off from %g s); the other outputs go on",
                        self.label, _reason(exc), self.retries, wait)
            self._warned = True
        self._attempts += 1
        self._retry_at = time.perf_counter() + wait

    def _picture(self, frame_rgb: np.ndarray, t: float) -> None:
        rgb = np.ascontiguousarray(resize_to(frame_rgb, self.size))
        if self._t0 is None:
            self._t0 = t
            self._flush_pending_sound()
        if not self.cfr:
            self.target.write(rgb, round((t - self._t0) / self.target.time_base))
            self.frames += 1
            return
        k = round((t - self._t0) * self.fps)
        if self._last is not None:
            last_rgb, last_k = self._last
            if k <= last_k:
                k = last_k + 1  # two frames in one slot: the newer takes the next
            elif k - last_k > self.fps * MAX_REPEAT_SECONDS:
                k = last_k + 1  # a stall: the stream goes on from here, no burst of repeats
                self._t0 = t - k / self.fps
            for j in range(last_k + 1, k):  # a constant rate: the last picture until this one's slot
                self.target.write(last_rgb, j)
        if not self.sound_fed and self.target.has_sound:  # silence: a stream without sound holds pictures back
            self._silence_until(self._t0 + (k + 1) / self.fps)
        self.target.write(rgb, k)
        self._last = (rgb, k)
        self.frames += 1

    def _silence_until(self, t: float) -> None:
        clock = self._sound
        have = clock.next if clock is not None and clock.next is not None else 0
        need = round((t - self._t0) * SOUND_RATE) - have
        if need > 0:
            self._audio(AudioChunk(np.zeros((need, 2), np.float32), self._t0 + have / SOUND_RATE - self.audio_delay))

    def _flush_pending_sound(self) -> None:
        pending, self._pending_sound = self._pending_sound, []
        for chunk in pending:
            self._audio(chunk)

    def _audio(self, chunk: AudioChunk) -> None:
        if not self.target.has_sound:
            return
        if self._t0 is None:  # before the first picture: kept until it sets the clock (a few seconds at most)
            self._pending_sound.append(chunk)
            while self._pending_sound and chunk.t_capture - self._pending_sound[0].t_capture > 5.0:
                self._pending_sound.pop(0)
            return
        if self._sound is None:
            sound = getattr(self.target, "sound", None) or getattr(getattr(self.target, "writer", None), "sound")
            self._sound = _SoundClock(sound.codec_context.frame_size)
        start = round((chunk.t_capture + self.audio_delay - self._t0) * SOUND_RATE)
        for samples, pts in self._sound.add(chunk.samples, start):
            self.target.write_audio(samples, pts)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or exc.__class__.__name__


# -- the two kinds ---------------------------------------------------------------------------------------
class Recording(Sink):
    """``--record FILE``: each stylized frame once at its capture time (variable frame rate), with the sound if
    given, encoded with ``--codec/--crf/--preset`` on the sink's thread. Written to a hidden ``.part`` renamed
    when closed: a crash never leaves a broken file at the final name, and Ctrl-C, SIGTERM or SIGHUP still
    finalise a playable one. A failure (disk full) ends the session in one line; no frame: no file."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float, overwrite: bool = False,
                 codec: str = "auto", crf: int = 18, preset: str | None = None, output=None, *,
                 sound: bool = False, audio_delay: float = 0.0) -> None:
        from streamer.fileutil import AtomicOutput

        self.path = Path(path)
        if output is None:  # or taken earlier by the caller, before loading the model
            output = AtomicOutput(self.path, overwrite=overwrite)  # refuses an existing file, or another run's
        try:
            target = FileTarget(self.path, width, height, fps, sound, codec=codec, crf=crf, preset=preset,
                                output=output)
        except BaseException:
            output.discard()
            raise
        super().__init__(str(path), _closed_target, (width, height), fps, cfr=False, fatal=True,
                         audio_delay=audio_delay, queue_seconds=FILE_QUEUE_SECONDS, target=target)

    def close(self) -> None:
        super().close()
        if self.frames == 0:
            log.warning("nothing recorded: no frame reached the output, so %s was not written", self.path)
        else:
            log.info("wrote %s (%d frames%s)", self.path, self.frames,
                     f", {self.dropped} dropped: the encoder fell behind" if self.dropped else "")


def _closed_target() -> Target:
    raise InputError("the recording was closed after a failure")


def stream_sink(url: str, width: int, height: int, fps: float, *, bitrate_kbps: int = DEFAULT_BITRATE,
                retries: int = 5, audio_delay: float = 0.0) -> Sink:
    """``--stream URL``: a constant-rate H.264 + AAC stream, connected on its own thread."""
    return Sink(safe_url(url), lambda: UrlTarget(url, width, height, fps, bitrate_kbps), (width, height), fps,
                cfr=True, fatal=False, retries=retries, audio_delay=audio_delay)
