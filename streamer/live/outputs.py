"""Where live frames go: a preview window, a virtual camera, a recording, streams. Any combination.

Window: Tk by default (tkinter ships with Python): it works with the ``opencv-python-headless``
dependency (which imports on servers without X or OpenGL libraries) and beside PyAV. OpenCV's own
window (``--window-toolkit opencv``, needs ``opencv-python``) livelocks on Linux once PyAV is
loaded, so it is for Windows/macOS or when tkinter is missing.

Virtual camera: pyvirtualcam (v4l2loopback on Linux, OBS on Windows/macOS). A custom backend class
can be registered for tests or other drivers with ``--vcam-backend module:Class`` or the
environment variable ``STREAMER_VCAM_BACKEND``.
"""
from __future__ import annotations

import importlib
import logging
import os
import platform
import sys
from typing import ClassVar, Protocol

import cv2
import numpy as np

from engines.errors import DeviceError, InputError
from engines.stylizer import resize_to

log = logging.getLogger(__name__)

WINDOW_TITLE = "streamer"
VCAM_ENV = "STREAMER_VCAM_BACKEND"


# -- what the session talks to -----------------------------------------------------------------
class Output(Protocol):
    """A place live frames go besides the window: a new kind of output implements this.

    ``timestamped`` False (a virtual camera): ``send(frame)`` every output tick at ``--fps``, the newest
    frame repeated when no new one is ready. True (a recording): ``send(frame, t_capture)`` once per new
    frame, with its capture time. ``close()`` finishes it at the end of a session; ``abort()`` drops it
    when the session never started (a recording leaves no file).
    """

    timestamped: ClassVar[bool]

    def send(self, frame_rgb: np.ndarray, *t_capture: float) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def timestamped(out: Output) -> bool:
    """Whether ``out`` takes each new frame once with its capture time (False when it does not say)."""
    return getattr(out, "timestamped", False)


class Window(Protocol):
    """The preview window, driven from the main thread: frames in, keys out."""

    toolkit: ClassVar[str]
    closed: bool

    def show(self, frame_rgb: np.ndarray) -> None: ...

    def wait(self, seconds: float) -> list[str]:
        """Process window events for about ``seconds``; the keys pressed meanwhile (normalised names)."""

    def set_fullscreen(self, on: bool) -> None: ...

    def close(self) -> None: ...


# -- window ------------------------------------------------------------------------------------
def display_problem() -> str | None:
    """Why no window can open here (one line), or ``None`` if one probably can."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return ("no display (neither DISPLAY nor WAYLAND_DISPLAY is set), so no window can open: "
                "use --vcam and/or --record to run headless")
    return None


def opencv_has_gui() -> bool:
    """False for opencv-python-headless (its build information says ``GUI: NONE``)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() not in ("NONE", "NO", "")
    return False


def _opencv_window_hangs() -> bool:
    """OpenCV's Qt window livelocks at 100% CPU on Linux once PyAV (which bundles its own libxcb) is loaded.

    PyAV-Org/PyAV#1050, opencv/opencv#29195. The streamer CLI always loads PyAV, so on Linux the
    OpenCV window is only safe before that, which we cannot promise.
    """
    return sys.platform.startswith("linux") and "av" in sys.modules


def open_window(toolkit: str = "auto", title: str = WINDOW_TITLE) -> Window:
    """A window of ``toolkit`` (auto, tk, opencv) or one clear DeviceError saying what to do.

    auto = Tk (in the standard library, works with opencv-python-headless and beside PyAV), else
    OpenCV's window where that is safe.
    """
    problem = display_problem()
    if problem:
        raise DeviceError(problem)
    if toolkit in ("auto", "tk"):
        try:
            return TkWindow(title)
        except ImportError:
            if toolkit == "tk" or not opencv_has_gui() or _opencv_window_hangs():
                raise DeviceError("cannot open a window: this Python has no tkinter (install it, e.g. "
                                  "sudo apt install python3-tk); or use --vcam and/or --record") from None
        except Exception as exc:  # tkinter.TclError: a display we cannot talk to
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise DeviceError(f"cannot open a window on this display ({first}); "
                              "use --vcam and/or --record to run headless") from None
    if not opencv_has_gui():
        raise DeviceError("this OpenCV has no GUI (opencv-python-headless): use --window-toolkit tk, or "
                          "pip uninstall opencv-python-headless && pip install opencv-python")
    if _opencv_window_hangs():
        raise DeviceError("OpenCV's window hangs on Linux once PyAV is loaded (PyAV issue 1050); "
                          "use --window-toolkit tk (the default)")
    try:
        return CvWindow(title)
    except cv2.error as exc:
        raise DeviceError(f"OpenCV could not open a window ({exc}); use --vcam and/or --record") from None


class CvWindow:
    """OpenCV's HighGUI window (needs opencv-python, not -headless): keys via waitKeyEx, which also paces."""

    toolkit = "opencv"

    def __init__(self, title: str) -> None:
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        self._shown = False
        self.closed = False

    def show(self, frame_rgb: np.ndarray) -> None:
        if not self._shown:
            cv2.resizeWindow(self.title, frame_rgb.shape[1], frame_rgb.shape[0])
            self._shown = True
        cv2.imshow(self.title, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))

    def wait(self, seconds: float) -> list[str]:
        """Process window events for about ``seconds``; the keys pressed meanwhile (normalised names)."""
        from streamer.live.hotkeys import normalise_key

        code = cv2.waitKeyEx(max(1, int(seconds * 1000)))
        keys = []
        if code != -1:
            ch = code & 0xFF if code < 0x10000 else None  # arrows etc. have large codes; we ignore them
            key = normalise_key(chr(ch)) if ch is not None else None
            if key:
                keys.append(key)
        if self._shown:
            try:
                if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                    self.closed = True
            except cv2.error:
                self.closed = True
        return keys

    def set_fullscreen(self, on: bool) -> None:
        cv2.setWindowProperty(self.title, cv2.WND_PROP_FULLSCREEN,
                              cv2.WINDOW_FULLSCREEN if on else cv2.WINDOW_NORMAL)

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


class TkWindow:
    """A Tk window (works with opencv-python-headless). Must live in the thread that created it: the output loop."""

    toolkit = "tk"

    def __init__(self, title: str) -> None:
        import tkinter as tk

        self._tk = tk
        self.root = tk.Tk()
        self.root.title(title)
        self.root.configure(background="black")
        self.root.protocol("WM_DELETE_WINDOW", self._on_close)
        self.root.bind("<Key>", self._on_key)
        self.label = tk.Label(self.root, bd=0, background="black")
        self.label.pack(fill="both", expand=True)
        self.photo: object | None = None
        self._size: tuple[int, int] | None = None
        self._keys: list[str] = []
        self.closed = False
        self.fullscreen = False
        self.root.update()

    def _on_close(self) -> None:
        self.closed = True

    def _on_key(self, event) -> None:
        from streamer.live.hotkeys import normalise_key

        key = normalise_key(event.char) if event.char and event.char.isprintable() else normalise_key(event.keysym)
        if key:
            self._keys.append(key)

    def show(self, frame_rgb: np.ndarray) -> None:
        if self.closed:
            return
        if self.fullscreen:  # fit the frame to the screen, aspect kept
            sw, sh = self.root.winfo_width(), self.root.winfo_height()
            h, w = frame_rgb.shape[:2]
            if sw > 1 and sh > 1 and (sw, sh) != (w, h):
                scale = min(sw / w, sh / h)
                frame_rgb = resize_to(frame_rgb, (max(1, round(w * scale)), max(1, round(h * scale))))
        h, w = frame_rgb.shape[:2]
        ppm = b"P6 %d %d 255 " % (w, h) + np.ascontiguousarray(frame_rgb).tobytes()
        if self.photo is None or self._size != (w, h):
            self.photo = self._tk.PhotoImage(width=w, height=h)
            self.label.configure(image=self.photo)
            self._size = (w, h)
        self.photo.configure(data=ppm, format="PPM")

    def wait(self, seconds: float) -> list[str]:
        import time

        end = time.perf_counter() + seconds
        while True:
            try:
                self.root.update()
            except self._tk.TclError:
                self.closed = True
                break
            left = end - time.perf_counter()
            if left <= 0 or self._keys or self.closed:
                break
            time.sleep(min(left, 0.005))
        keys, self._keys = self._keys, []
        return keys

    def set_fullscreen(self, on: bool) -> None:
        self.fullscreen = on
        self.root.attributes("-fullscreen", on)
        self.root.update()
        sw, sh = self.root.winfo_screenwidth(), self.root.winfo_screenheight()
        if on and self.root.winfo_width() < sw * 0.9:  # no window manager honoured -fullscreen: cover the screen
            self.root.geometry(f"{sw}x{sh}+0+0")
        elif not on:
            self.root.geometry("")  # back to the frame's natural size

    def close(self) -> None:
        try:
            self.root.destroy()
        except Exception:  # noqa: BLE001 - already gone
            pass


# -- virtual camera ----------------------------------------------------------------------------
VCAM_HOWTO = {
    "Linux": "install v4l2loopback and load it: sudo apt install v4l2loopback-dkms && sudo modprobe v4l2loopback "
             "devices=1 exclusive_caps=1 card_label=streamer (exclusive_caps=1 lets Chrome/Zoom see it)",
    "Windows": "install OBS Studio 26 or newer and start its virtual camera once (Tools > Start Virtual Camera)",
    "Darwin": "install OBS Studio 30 or newer and start its virtual camera once, allowing the system extension",
}


def register_vcam_backend(spec: str | None) -> str | None:
    """``module:Class`` -> registered with pyvirtualcam under the class's name; a plain name is used as is."""
    if not spec:
        return None
    import pyvirtualcam

    if ":" not in spec:
        return spec
    module_name, attr = spec.split(":", 1)
    if not module_name.strip() or not attr.isidentifier():
        raise InputError(f"virtual camera backend '{spec}' must look like module:Class (e.g. mypkg.cams:MyCamera), "
                         "or be a backend name")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # noqa: BLE001 - a user's module may raise anything while importing
        raise InputError(f"virtual camera backend '{spec}' cannot be loaded: {exc.__class__.__name__}: {exc}") from None
    pyvirtualcam.register_backend(attr, cls)
    return attr


class VirtualCamera:
    """pyvirtualcam at a fixed size and rate; frames in RGB. An :class:`Output` fed at a steady rate."""

    timestamped = False

    def __init__(self, width: int, height: int, fps: float, backend: str | None = None,
                 device: str | None = None) -> None:
        try:
            import pyvirtualcam
        except ImportError:
            raise DeviceError("pyvirtualcam is not installed: pip install pyvirtualcam") from None
        backend = register_vcam_backend(backend or os.environ.get(VCAM_ENV) or None)
        if backend and backend not in pyvirtualcam.camera.BACKENDS:
            raise InputError(f"unknown virtual camera backend '{backend}'; known: "
                             f"{', '.join(pyvirtualcam.camera.BACKENDS) or 'none on this system'}")
        self.size = (width, height)
        self.failed = False
        try:
            self.cam = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB, device=device,
                                           backend=backend)
        except Exception as exc:  # noqa: BLE001 - pyvirtualcam raises RuntimeError with one line per backend
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            how = VCAM_HOWTO.get(platform.system(), "install a virtual camera driver pyvirtualcam supports")
            raise DeviceError(f"no virtual camera available ({reason}); {how}") from None
        log.info("virtual camera: %s (%s) %dx%d at %g fps", self.cam.device, self.cam.backend, width, height, fps)

    def send(self, frame_rgb: np.ndarray) -> None:
        """One frame; a camera that stops taking them (device removed, driver unloaded) ends the session: exit 3."""
        try:
            self.cam.send(np.ascontiguousarray(resize_to(frame_rgb, self.size)))
        except Exception as exc:  # noqa: BLE001 - pyvirtualcam's backends raise whatever their driver does
            self.failed = True
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise DeviceError(f"the virtual camera {self.cam.device} stopped taking frames ({reason}): it was "
                              "removed or its driver unloaded") from None

    def close(self) -> None:
        try:
            self.cam.close()
        except Exception:  # noqa: BLE001 - a camera that already failed may fail to close too: said once, in send
            self.cam._backend = None  # noqa: SLF001 - else pyvirtualcam closes it again when collected, and prints
            if not self.failed:
                raise

    def abort(self) -> None:
        self.cam.close()  # nothing to undo: a virtual camera keeps no frames
