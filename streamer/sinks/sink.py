"""The sink: a recording or a stream, encoding and writing on its own thread behind a bounded queue (see
streamer.sinks)."""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from engines.errors import InputError
from engines.stylizer import resize_to
from engines.threads import came_up
from streamer.sinks.targets import DEFAULT_BITRATE, NETWORK_TIMEOUT, FileTarget, Target, UrlTarget
from streamer.sinks.urls import _CLAIMED, _CLAIMED_LOCK, _cut, _socket_fds, safe_url
from streamer.videoio import SOUND_RATE

log = logging.getLogger(__name__)

#: seconds of frames a stream's queue holds before it drops: a network hiccup passes, a stall does not grow memory
STREAM_QUEUE_SECONDS = 1.0
FILE_QUEUE_SECONDS = 2.0
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0)  # seconds between reconnects
RESYNC_SAMPLES = SOUND_RATE // 100  # 10 ms: sound further than this from where its clock says is put back there
MAX_REPEAT_SECONDS = 2.0  # a gap longer than this (a stall) starts the stream's clock again instead of repeating


@dataclass
class AudioChunk:
    """Sound captured at ``t_capture`` (``time.perf_counter()`` of its first sample)."""

    samples: np.ndarray  # (n, 2) float32 in -1..1 at SOUND_RATE
    t_capture: float


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
        self._start_lock = threading.Lock()
        self._launched = False

    def start(self) -> None:
        """Start the thread once, whichever of the live loop and the sound thread sends first (``ident`` stays
        None for a moment after ``start``: two starts broke the thread, and every frame was dropped).
        ``_launched`` is set once ``start()`` returned (or a signal cut it short): the other sender waits here
        meanwhile, never finding it launched and not alive (its first picture was counted as dropped)."""
        with self._start_lock:
            if self._launched:
                return
            try:
                super().start()
            finally:
                self._launched = True  # a signal inside start() too: the thread may run (close() sees to it)

    def _forbid_start(self) -> bool:
        """Whether the thread was started; from now on no send starts it (the sink is closing: ``_launched``
        then means "no more starts")."""
        with self._start_lock:
            launched, self._launched = self._launched, True
            return launched

    # -- the live loop's side: never waits ------------------------------------------------------------
    def send(self, frame_rgb: np.ndarray, t_capture: float) -> None:
        if self.error is not None and self.fatal:
            error, self.error = self.error, None
            self.fatal_raised = True
            raise error
        if not self._launched:
            self.start()
        with self._lock:
            full = self._frames_waiting >= self._max_frames or not self.is_alive()
            if not full:
                self._frames_waiting += 1  # first: a Ctrl-C just after the put leaves the count right
                try:
                    self.queue.put_nowait(("video", frame_rgb, t_capture))
                except queue.Full:
                    self._frames_waiting -= 1
                    full = True
        if full:
            self.dropped += 1
            if self.fatal and not self._warned:
                self._warned = True
                log.warning("%s: the encoder falls behind; frames it has no time for are dropped (counted)",
                            self.label)

    def send_audio(self, chunk: AudioChunk) -> None:
        if not self._launched:
            self.start()
        try:
            self.queue.put_nowait(("audio", chunk, chunk.t_capture))
        except queue.Full:
            pass  # the picture side counts the loss; sound waits with it

    def close(self) -> None:
        """Write what is queued, finish the container (a file: renamed into place); a file's failure is raised."""
        started = self._forbid_start() and came_up(self)
        if started and self.is_alive():
            wait = None if self.fatal else 3 * NETWORK_TIMEOUT  # a stalled server is not waited for long
            try:
                self.queue.put(_STOP, timeout=wait)
                self.join(wait)
            except queue.Full:
                pass
            if self.is_alive():
                log.warning("%s: the server did not take the end of the stream in time; left", self.label)
        elif not started:
            self._finish()
        if self.error is not None and self.fatal and not self.fatal_raised:
            raise self.error

    def abort(self) -> None:
        """Drop everything: a file leaves nothing behind."""
        if self._forbid_start() and came_up(self) and self.is_alive():
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
            if self.target is None:
                self._connect()  # started early (stream_outputs): connected by the first frame
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
                self._release_sockets()
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
        self._release_sockets()

    def _release_sockets(self) -> None:
        """Once closed, its socket numbers are free for the next connection to take (and claim)."""
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
    text = str(exc).strip()
    return getattr(exc, "strerror", None) or (text.splitlines()[0] if text else exc.__class__.__name__)


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
