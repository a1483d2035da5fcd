"""Frame sources for ``streamer live`` and the capture thread that feeds a latest-frame-wins slot.

Sources: a camera index (``0``), a video file, a URL/stream (anything OpenCV's FFmpeg opens), and
``test``, a synthetic moving pattern so ``live`` runs on a machine without a camera. Every source
hands out RGB uint8 frames. Cameras are opened at the requested size and rate, asking for MJPG
first: raw YUYV over USB 2 caps most webcams at a few fps at 1080p.

Latest frame wins: the capture thread overwrites a one-item :class:`~streamer.live.slot.LatestSlot`,
so nothing ever queues up behind a slow engine; overwritten frames are counted as dropped.

A new kind of source: a class with the :class:`Source` protocol's attributes and methods, and a
branch in :func:`open_source` that recognises its ``--source`` text.
"""
from __future__ import annotations

import logging
import platform
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from engines.errors import DeviceError, InputError
from streamer.live.slot import LatestSlot

log = logging.getLogger(__name__)

#: how often and how far apart a camera or stream is re-opened after it stops delivering frames
RETRIES = 3
RETRY_DELAY = 1.0
#: a read that fails this many times in a row counts as "stopped delivering"
READ_FAILURES = 5


@dataclass
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    index: int  # counts frames read from the source
    t_capture: float  # time.perf_counter() when it was read
    #: a file's (pass, seconds into it) of this frame (a pass counts --loop's rounds); None for live sources
    media: tuple[int, float] | None = None


# -- sources -----------------------------------------------------------------------------------
class Source(Protocol):
    width: int
    height: int
    fps: float
    #: True: the source delivers frames at its own pace (a camera blocks in read); False: we pace it at ``fps``
    live: bool

    def read(self) -> np.ndarray | None:
        """The next RGB frame; ``None`` at the end of a file. Raises DeviceError when the source is lost."""

    def describe(self) -> str: ...

    def release(self) -> None: ...


def fit_size(width: int, height: int, box: tuple[int, int]) -> tuple[int, int]:
    """The largest size within ``box`` with the frame's aspect ratio (even numbers: encoders prefer them)."""
    scale = min(box[0] / width, box[1] / height)
    return max(16, 2 * round(width * scale / 2)), max(16, 2 * round(height * scale / 2))


class PatternSource:
    """Moving synthetic content: scrolling colour gradient, colour bars, a bouncing ball, a clock.

    The bars along the top are, left to right, red, green, blue, white: a quick check that a
    viewer (or a virtual camera) gets RGB in the right order.
    """

    live = False

    def __init__(self, width: int = 640, height: int = 360, fps: float = 30.0) -> None:
        self.width, self.height, self.fps = width, height, fps
        y, x = np.mgrid[0:height, 0:2 * width].astype(np.float32)
        phase = 2 * np.pi * x / width
        bg = np.stack([0.5 + 0.5 * np.sin(phase), 0.5 + 0.5 * np.sin(phase + 2.1 + y / height * 2),
                       0.5 + 0.5 * np.sin(phase + 4.2)], axis=-1)
        self._background = (bg * 200 + 30).astype(np.uint8)
        stripes = ((x[:, :width] + y[:, :width]) // max(4, height // 24) % 2).astype(bool)
        self._stripes = stripes
        self.count = 0

    def read(self) -> np.ndarray:
        w, h, t = self.width, self.height, self.count / self.fps
        shift = int(t * w / 6) % w
        frame = self._background[:, shift:shift + w].copy()
        frame[self._stripes & (np.arange(w) > w * 2 // 3)[None, :]] //= 2  # texture for the style to grab
        bar_h, bar_w = max(4, h // 12), w // 4
        for i, colour in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255))):
            frame[:bar_h, i * bar_w:(i + 1) * bar_w] = colour
        r = max(4, h // 8)
        period = 2 * (w - 2 * r)
        bx = r + abs((t * w / 2.5) % period - period / 2) * 2 * (w - 2 * r) / period
        by = h // 2 + int((h / 2 - r - bar_h) * np.sin(t * 2.0))
        cv2.circle(frame, (int(bx), int(by)), r, (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(frame, (int(bx), int(by)), r, (20, 20, 20), max(1, r // 8), cv2.LINE_AA)
        angle = t * 1.5
        cx, cy, L = w // 4, h * 2 // 3, h // 5
        pts = np.array([[cx + L * np.cos(angle + k * np.pi / 2), cy + L * np.sin(angle + k * np.pi / 2)]
                        for k in range(4)], np.int32)
        cv2.fillPoly(frame, [pts], (30, 30, 160), cv2.LINE_AA)
        scale = max(0.4, h / 360)
        cv2.putText(frame, f"streamer test  {self.count:05d}  {t:7.2f}s", (max(4, w // 40), h - max(6, h // 24)),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, round(2 * scale)), cv2.LINE_AA)
        self.count += 1
        return frame

    def describe(self) -> str:
        return f"test pattern {self.width}x{self.height} at {self.fps:g} fps"

    def release(self) -> None:
        pass


def _camera_api() -> int:
    """The capture API that honours MJPG/size requests on each OS."""
    system = platform.system()
    if system == "Linux":
        return cv2.CAP_V4L2
    if system == "Windows":
        return cv2.CAP_DSHOW  # MSMF often ignores the FOURCC request and is slow to open
    if system == "Darwin":
        return cv2.CAP_AVFOUNDATION
    return cv2.CAP_ANY


def _cameras_present() -> str:
    if platform.system() != "Linux":
        return ""
    found = sorted(Path("/dev").glob("video*"), key=lambda p: (len(p.name), p.name))
    if not found:
        return " (no /dev/video* device exists: is a camera plugged in?)"
    return f" (devices present: {', '.join(p.name for p in found)})"


class CvSource:
    """A camera, a video file or a stream, read with OpenCV; frames come out RGB.

    A camera or stream that stops delivering is re-opened ``RETRIES`` times before the session
    gives up with one clear line; a file source ends (or loops) at its end.
    """

    def __init__(self, target: int | str, kind: str, size: tuple[int, int] | None = None, fps: float = 30.0,
                 loop: bool = False) -> None:
        self.target, self.kind, self.loop = target, kind, loop
        self.requested_size, self.requested_fps = size, fps
        self.live = kind != "file"
        self.passes, self._in_pass = 0, 0  # for position: --loop's rounds, frames read in this one
        self.position: tuple[int, float] | None = None  # the last frame's (pass, seconds into the file)
        self.cap: cv2.VideoCapture | None = None
        self._open()
        first = self._first_frame()
        self.height, self.width = first.shape[:2]
        self._pending: np.ndarray | None = first
        native = self.cap.get(cv2.CAP_PROP_FPS) if self.cap is not None else 0
        self.fps = float(native) if kind != "camera" and native and 1 <= native <= 240 else float(fps)
        if kind == "camera" and size and (self.width, self.height) != size:
            log.warning("camera %s delivers %dx%d, not the requested %dx%d", target, self.width, self.height, *size)

    def describe(self) -> str:
        what = {"camera": f"camera {self.target}", "file": f"file {self.target}", "stream": f"stream {self.target}"}
        extra = ""
        if self.kind == "camera" and self.cap is not None:
            fourcc = int(self.cap.get(cv2.CAP_PROP_FOURCC))
            code = "".join(chr((fourcc >> 8 * i) & 0xFF) for i in range(4)).strip("\0 ")
            extra = f", {code}" if code.isprintable() and code else ""
        return f"{what[self.kind]} {self.width}x{self.height} at {self.fps:g} fps{extra}"

    def _open(self) -> None:
        if self.kind == "camera":
            cap = cv2.VideoCapture(int(self.target), _camera_api())
            if not cap.isOpened():
                cap.release()
                cap = cv2.VideoCapture(int(self.target))  # whatever backend OpenCV finds
        else:
            cap = cv2.VideoCapture(str(self.target))
        if not cap.isOpened():
            cap.release()
            if self.kind == "camera":
                raise DeviceError(f"cannot open camera {self.target}: no such camera, or another program is using it"
                                  f"{_cameras_present()}; use --source test to try without a camera")
            what = "video file" if self.kind == "file" else "stream"
            raise InputError(f"cannot open {what} {self.target}: not a readable video, or not reachable")
        if self.kind == "camera":
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))  # before the size, for V4L2
            if self.requested_size:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.requested_size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.requested_size[1])
            cap.set(cv2.CAP_PROP_FPS, self.requested_fps)
        if self.live:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue adds latency; not every backend obeys
        self.cap = cap

    def _first_frame(self) -> np.ndarray:
        for _ in range(READ_FAILURES * 4):  # cameras often return a few empty reads while starting
            frame = self._grab()
            if frame is not None:
                return frame
            if self.kind == "file":
                break
            time.sleep(0.05)
        self.release()
        if self.kind == "camera":
            raise DeviceError(f"camera {self.target} opened but delivers no frames (in use by another program?)")
        raise InputError(f"{self.target}: no frame could be read (empty, corrupt or unsupported video)")

    def _grab(self) -> np.ndarray | None:
        if self.cap is None:
            return None
        try:
            ok, bgr = self.cap.read()
        except cv2.error as exc:
            log.debug("read failed: %s", exc)
            return None
        if not ok or bgr is None or bgr.size == 0:
            return None
        if bgr.ndim == 2:
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def read(self) -> np.ndarray | None:
        frame = self._read()
        if frame is not None and self.kind == "file":
            self.position = (self.passes, self._in_pass / self.fps)  # where its sound is (streamer.live.audio)
            self._in_pass += 1
        return frame

    def _read(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        frame = self._grab()
        if frame is not None:
            return frame
        if self.kind == "file":
            return self._rewind() if self.loop else None
        return self._recover()

    def _rewind(self) -> np.ndarray | None:
        """``--loop``: the file's first frame again. Seeking back fails on some files (one with a single frame
        among them), so it is opened again then; None only when it no longer gives any frame."""
        self.passes, self._in_pass = self.passes + 1, 0
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        frame = self._grab()
        if frame is None:
            self.release()
            try:
                self._open()
            except InputError:  # removed or replaced meanwhile
                return None
            frame = self._grab()
        return frame

    def _recover(self) -> np.ndarray:
        """A camera/stream read failed: a few more reads, then re-open a few times, then give up clearly."""
        for _ in range(READ_FAILURES - 1):
            time.sleep(0.02)
            frame = self._grab()
            if frame is not None:
                return frame
        what = f"camera {self.target}" if self.kind == "camera" else f"stream {self.target}"
        for attempt in range(1, RETRIES + 1):
            log.warning("%s stopped delivering frames; re-opening (%d/%d)", what, attempt, RETRIES)
            self.release()
            time.sleep(RETRY_DELAY)
            try:
                self._open()
            except (DeviceError, InputError):
                continue
            for _ in range(READ_FAILURES * 4):
                frame = self._grab()
                if frame is not None:
                    if frame.shape[:2] != (self.height, self.width):
                        frame = cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)
                    log.info("%s is back", what)
                    return frame
                time.sleep(0.05)
        self.release()
        if self.kind == "camera":
            raise DeviceError(f"camera {self.target} stopped delivering frames (unplugged, or taken by another "
                              f"program?); gave up after {RETRIES} attempts to re-open it")
        raise DeviceError(f"stream {self.target} stopped delivering frames; gave up after {RETRIES} reconnects")

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class Resized:
    """A source whose frames are scaled to fit ``box`` (aspect kept): files and streams at --capture-size."""

    def __init__(self, source: Source, box: tuple[int, int]) -> None:
        self.source = source
        self.width, self.height = fit_size(source.width, source.height, box)
        self.fps, self.live = source.fps, source.live

    def read(self) -> np.ndarray | None:
        frame = self.source.read()
        if frame is None or frame.shape[:2] == (self.height, self.width):
            return frame
        return cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)

    @property
    def position(self) -> tuple[int, float] | None:
        return getattr(self.source, "position", None)

    def describe(self) -> str:
        return f"{self.source.describe()}, scaled to {self.width}x{self.height}"

    def release(self) -> None:
        self.source.release()


def open_source(text: str, size: tuple[int, int] | None, fps: float, loop: bool = False) -> Source:
    """``--source`` -> an open source: ``test``, a camera index, a URL, or a video file."""
    text = str(text).strip()
    if fps <= 0:
        raise InputError(f"--fps must be positive, not {fps:g}")
    if text.lower() == "test":
        w, h = size or (640, 360)
        return PatternSource(w, h, fps)
    if text.isdigit():
        return CvSource(int(text), "camera", size or (1280, 720), fps)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        source: Source = CvSource(text, "stream", None, fps)
    else:
        path = Path(text)
        if not path.exists():
            raise InputError(f"--source {text}: no such file; give a camera number (0), a video file, a URL, "
                             f"or 'test'")
        if path.is_dir():
            raise InputError(f"--source {text} is a folder; give a video file")
        source = CvSource(str(path), "file", None, fps, loop=loop)
    if size and (source.width, source.height) != fit_size(source.width, source.height, size):
        source = Resized(source, size)
    return source


# -- the thread --------------------------------------------------------------------------------
class CaptureThread(threading.Thread):
    """Reads the source into a LatestSlot until stopped; paces file and test sources at their frame rate.

    Owns the source: it is released when the thread ends, whatever the reason. An error (camera
    lost) or the end of a file closes the slot, which carries it to the engine and the output.
    """

    def __init__(self, source: Source, slot: LatestSlot, stop: threading.Event) -> None:
        super().__init__(name="capture", daemon=True)
        self.source, self.slot, self.stop_event = source, slot, stop
        self.count = 0
        self.latest: Frame | None = None  # the newest frame read, for whoever wants it now (--motion)

    def run(self) -> None:
        error: BaseException | None = None
        interval = 1.0 / self.source.fps
        next_due = time.perf_counter()
        try:
            while not self.stop_event.is_set():
                if not self.source.live:
                    delay = next_due - time.perf_counter()
                    if delay > 0:
                        self.stop_event.wait(delay)
                        if self.stop_event.is_set():
                            break
                    elif delay < -interval:
                        next_due = time.perf_counter()  # fell behind (slow decode): no catch-up burst
                    next_due += interval
                image = self.source.read()
                if image is None:
                    log.info("source ended after %d frames", self.count)
                    break
                frame = Frame(image, self.count, time.perf_counter(), getattr(self.source, "position", None))
                self.latest = frame  # one reference assignment: readers see the old frame or the new one
                self.slot.put(frame)
                self.count += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised in the main thread
            error = exc
        finally:
            self.source.release()
            self.slot.close(error)
