"""Stream URLs: the schemes this PyAV's FFmpeg can send, their checks before anything loads, a URL fit for logs;
and the one way to unblock a connection to a server that stalls (PyAV gives outputs no timeout)."""
from __future__ import annotations

import importlib.util
import os
import re
import socket
import threading
from urllib.parse import urlsplit

import av

from engines.errors import InputError

#: URL scheme -> (FFmpeg muxer, protocol the URL is opened with)
SCHEMES = {"rtmp": ("flv", "rtmp"), "rtmps": ("flv", "rtmps"), "rtsp": ("rtsp", "tcp"),
           "whip": ("whip", "http"), "whips": ("whip", "https"), "srt": ("mpegts", "srt")}


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
    if scheme.startswith("whip") and importlib.util.find_spec("cryptography") is None:
        raise InputError(f"--stream {url}: whip:// needs the cryptography package for its DTLS key "
                         "(pip install cryptography)")
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
