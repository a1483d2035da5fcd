"""Sound for live recordings and streams: a file source's own sound, or a microphone.

Every chunk is stamped with its capture time on the picture's clock (``time.perf_counter()``); the sinks
(streamer.sinks) place sound and pictures by those times, so the sound waits for its picture, which comes
an engine step later.

* A file source's sound is decoded with PyAV and paced by the picture: a chunk at ``m`` seconds into the
  file is handed on when the capture thread has read the frame at ``m``, stamped with that frame's capture
  time (plus the difference), so a slow decode or ``--loop`` never lets them drift apart.
* A microphone, Linux: PulseAudio or PipeWire through ``parec`` (pulseaudio-utils; PyAV's own FFmpeg has no
  PulseAudio input, and its bundled ALSA library finds neither the system's ALSA configuration nor its
  PulseAudio plugin), else ALSA hardware (``alsa:hw:0``) through PyAV's FFmpeg ALSA input. macOS and
  Windows: not yet (``--audio`` says so).
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from engines.errors import DeviceError, InputError
from streamer.sinks import AudioChunk, SOUND_RATE

log = logging.getLogger(__name__)

CHUNK_SECONDS = 0.02  # a microphone's chunk: 20 ms (parec's latency is asked for the same)
DRIFT = 0.05  # seconds a microphone's sample count may stray from its chunks' arrival times
SYSTEM_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")


class SoundSource(Protocol):
    """Chunks of sound with their capture times, until stopped or the end."""

    def chunks(self, stop: threading.Event) -> Iterator[AudioChunk]: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


# -- a file's own sound --------------------------------------------------------------------------------
def has_sound(path: str) -> bool:
    import av

    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except (av.FFmpegError, OSError, ValueError):
        return False


class FileSound:
    """The sound of the file the pictures come from, paced by the frame the capture thread read last.

    :meth:`follow` gives it the capture thread's ``position()``: the last frame's ((pass, seconds into the
    file), capture time), or None before the first.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.position: Callable[[], tuple[tuple[int, float], float] | None] = lambda: None

    def follow(self, position: Callable[[], tuple[tuple[int, float], float] | None]) -> None:
        self.position = position

    def describe(self) -> str:
        return f"the sound of {self.path}"

    def chunks(self, stop: threading.Event) -> Iterator[AudioChunk]:
        import av

        passes = 0
        while not stop.is_set():
            with av.open(self.path) as c:
                video = c.streams.video[0] if c.streams.video else None
                start = float(video.start_time * video.time_base) if video and video.start_time else 0.0
                resampler = av.AudioResampler(format="flt", layout="stereo", rate=SOUND_RATE)
                n_out = 0
                first: float | None = None
                for frame in c.decode(audio=0):
                    for out in resampler.resample(frame):
                        if first is None:
                            first = float(frame.pts * frame.time_base) - start if frame.pts is not None else 0.0
                        m = first + n_out / SOUND_RATE  # counted in samples: gapless whatever the packets say
                        n_out += out.samples
                        t = self._wait_for(passes, m, stop)
                        if t is None:
                            return
                        yield AudioChunk(out.to_ndarray().reshape(-1, 2).astype(np.float32), t)
            passes += 1
            if not self._loops(passes, stop):
                return

    def _wait_for(self, passes: int, m: float, stop: threading.Event) -> float | None:
        """The capture time of ``m`` seconds into pass ``passes``, once the pictures are there; None when stopped
        (or the pictures moved on to a later pass: the rest of this one's sound is left out)."""
        while not stop.is_set():
            now = self.position()
            if now is not None:
                (p, v), t = now
                if p > passes:
                    return t  # the pictures started again: catch up at once
                if p == passes and v + 0.001 >= m:
                    return t + (m - v)
            stop.wait(0.004)
        return None

    def _loops(self, passes: int, stop: threading.Event) -> bool:
        """After the sound's end: wait for the pictures' next pass (--loop), or the end."""
        while not stop.is_set():
            now = self.position()
            if now is not None and now[0][0] >= passes:
                return True
            stop.wait(0.02)
        return False

    def close(self) -> None:
        pass


# -- microphones ---------------------------------------------------------------------------------------
def _pulse_env() -> dict[str, str]:
    return dict(os.environ, LC_ALL="C")


def pulse_sources() -> list[tuple[str, str]] | None:
    """(name, description) of each PulseAudio/PipeWire input; None when no sound server answers."""
    if shutil.which("pactl") is None:
        return None
    try:
        out = subprocess.run(["pactl", "list", "short", "sources"], capture_output=True, text=True, timeout=5,
                             env=_pulse_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    found = []
    for line in out.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            found.append((fields[1], " ".join(fields[2:]).strip()))
    return found


def alsa_devices() -> list[tuple[str, str]]:
    """(``hw:CARD,DEVICE``, name) of each ALSA capture device (from /proc/asound)."""
    found = []
    try:
        lines = Path("/proc/asound/pcm").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        m = re.match(r"(\d+)-(\d+): ([^:]*) : .*capture", line)
        if m:
            found.append((f"hw:{int(m[1])},{int(m[2])}", m[3].strip()))
    return found


def list_audio() -> str:
    """``streamer live --list-audio``: every input ``--audio`` can take, one a line."""
    lines = []
    pulse = pulse_sources()
    if pulse is None:
        lines.append("PulseAudio/PipeWire: no sound server answers (or pactl is missing: apt install pulseaudio-utils)")
    else:
        lines.append(f"PulseAudio/PipeWire inputs (--audio NAME, or default): {len(pulse)}")
        lines += [f"  {name}\t{what}" for name, what in pulse]
    alsa = alsa_devices()
    lines.append(f"ALSA capture devices (--audio alsa:hw:C,D): {len(alsa)}")
    lines += [f"  alsa:{name}\t{what}" for name, what in alsa]
    return "\n".join(lines)


class ArrivalClock:
    """Capture times for a stream of sound chunks known only by when they arrive. A chunk can arrive late (the
    scheduler, a backlog at start) but never early, so the stream's start is the least of the starts its recent
    chunks imply (sample count against arrival): one late first chunk no longer shifts a whole recording (it made
    a microphone's sound 0-65 ms late, run to run). The window lets the estimate follow a sound card's clock
    drift; when every chunk of the last ``settle_s`` implies a start more than DRIFT later (samples were lost),
    the older ones are forgotten."""

    def __init__(self, window_s: float = 5.0, settle_s: float = 0.2, rate: int = SOUND_RATE) -> None:
        self.rate = rate
        self.starts: collections.deque[float] = collections.deque(maxlen=max(2, round(window_s / CHUNK_SECONDS)))
        self.settle = max(1, round(settle_s / CHUNK_SECONDS))
        self.counted = 0

    def stamp(self, arrived: float, samples: int) -> float:
        """The capture time of a chunk of ``samples`` whose first sample would have been captured at ``arrived``
        had it come without delay."""
        self.starts.append(arrived - self.counted / self.rate)
        older = len(self.starts) - self.settle
        if older > 0:
            recent = min(itertools.islice(self.starts, older, None))
            if recent - min(itertools.islice(self.starts, 0, older)) > DRIFT:
                for _ in range(older):
                    self.starts.popleft()
        t = min(self.starts) + self.counted / self.rate
        self.counted += samples
        return t


class PulseMic:
    """A PulseAudio/PipeWire input read by ``parec`` as 48 kHz stereo float, stamped by an ArrivalClock."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        cmd = ["parec", "--raw", "--format=float32le", f"--rate={SOUND_RATE}", "--channels=2",
               f"--latency-msec={round(CHUNK_SECONDS * 1000)}", "--client-name=streamer"]
        if source:
            cmd.append(f"--device={source}")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_pulse_env(),
                                     start_new_session=True)  # a terminal's Ctrl-C stops live, which stops parec

    def describe(self) -> str:
        return f"microphone {self.source or 'default'} (PulseAudio/PipeWire)"

    def chunks(self, stop: threading.Event) -> Iterator[AudioChunk]:
        size = round(SOUND_RATE * CHUNK_SECONDS) * 8
        clock = ArrivalClock()
        while not stop.is_set():
            data = self.proc.stdout.read(size)
            if not data:
                err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise DeviceError(f"the microphone {self.source or 'default'} stopped"
                                  f"{': ' + err[0] if err else ''}")
            samples = np.frombuffer(data[:len(data) // 8 * 8], np.float32).reshape(-1, 2)
            # the chunk's first sample, as it arrived (taking off parec's asked latency too made the stamps 16-21 ms
            # early against the moment a burst was played into PulseAudio, measured with pacat)
            yield AudioChunk(samples, clock.stamp(time.perf_counter() - len(samples) / SOUND_RATE, len(samples)))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class AlsaMic:
    """ALSA hardware through PyAV's FFmpeg ``alsa`` input; its frames carry the wall-clock time they were
    captured (the driver's delay taken off), which is moved onto the picture's clock."""

    def __init__(self, device: str) -> None:
        import av

        if "ALSA_CONFIG_PATH" not in os.environ and SYSTEM_ALSA_CONF.is_file():
            os.environ["ALSA_CONFIG_PATH"] = str(SYSTEM_ALSA_CONF)  # PyAV's own ALSA looks in its build folder
        self.device = device
        try:
            self.container = av.open(device, format="alsa", options={"sample_rate": str(SOUND_RATE),
                                                                      "channels": "2"})
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise InputError(f"--audio alsa:{device}: no such ALSA capture device, or it is busy "
                             f"({getattr(exc, 'strerror', None) or exc}); see streamer live --list-audio") from None

    def describe(self) -> str:
        return f"microphone alsa:{self.device}"

    def chunks(self, stop: threading.Event) -> Iterator[AudioChunk]:
        import av

        resampler = av.AudioResampler(format="flt", layout="stereo", rate=SOUND_RATE)
        offset = time.time() - time.perf_counter()
        for frame in self.container.decode(audio=0):
            if stop.is_set():
                return
            t = float(frame.pts * frame.time_base) - offset if frame.pts is not None else time.perf_counter()
            for out in resampler.resample(frame):
                yield AudioChunk(out.to_ndarray().reshape(-1, 2).astype(np.float32), t)

    def close(self) -> None:
        self.container.close()


def open_microphone(spec: str) -> SoundSource:
    """``--audio DEVICE|default``: a PulseAudio/PipeWire input by name, or ``alsa:hw:C,D``; checked now (one
    line, before any model loads) so a device that does not exist fails at once."""
    import sys

    if not sys.platform.startswith("linux"):
        raise InputError("--audio takes a microphone on Linux only so far (PulseAudio, PipeWire or ALSA)")
    if spec.startswith("alsa:"):
        return AlsaMic(spec[len("alsa:"):])
    if shutil.which("parec") is None:
        raise InputError(f"--audio {spec}: parec is missing (apt install pulseaudio-utils), or name an ALSA "
                         "device: --audio alsa:hw:0,0 (see streamer live --list-audio)")
    sources = pulse_sources()
    if sources is None:
        raise DeviceError(f"--audio {spec}: no PulseAudio/PipeWire server answers; start one, or name an ALSA "
                          "device: --audio alsa:hw:0,0 (see streamer live --list-audio)")
    if spec != "default" and spec not in [name for name, _ in sources]:
        raise InputError(f"--audio {spec}: no such input; there are: "
                         f"{', '.join(name for name, _ in sources) or 'none'} (streamer live --list-audio)")
    return PulseMic(None if spec == "default" else spec)


# -- the thread ----------------------------------------------------------------------------------------
class SoundThread(threading.Thread):
    """Reads a sound source and hands each chunk to every sink that takes sound; never waits on them
    (their queues are bounded and drop). A microphone that fails is warned about once; the pictures go on."""

    def __init__(self, source: SoundSource, sinks: list, stop: threading.Event) -> None:
        super().__init__(name="sound", daemon=True)
        self.source, self.sinks, self.stop_event = source, sinks, stop
        for sink in sinks:
            sink.sound_fed = True
        self.chunks = 0

    def run(self) -> None:
        try:
            for chunk in self.source.chunks(self.stop_event):
                for sink in self.sinks:
                    sink.send_audio(chunk)
                self.chunks += 1
                if self.stop_event.is_set():
                    break
        except Exception as exc:  # noqa: BLE001 - sound lost: the pictures go on
            log.warning("sound stopped: %s; the pictures go on without it", str(exc).splitlines()[0] if str(exc)
                        else exc.__class__.__name__)
        finally:
            self.source.close()
