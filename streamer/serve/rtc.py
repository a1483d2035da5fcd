"""WebRTC for the page (aiortc, following its examples/server): a track out of a session's frames, and a browser
camera's frames into a session.

ICE stays where the server is bound: a loopback server offers 127.0.0.1 only (aioice leaves loopback out of its
host candidates, so :func:`keep_ice_on` replaces its address list), a server bound to one address offers that
one; no STUN or TURN server is ever contacted.
"""
from __future__ import annotations

import asyncio
import fractions
import logging
import time

import aioice.ice
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamer.serve.frames import FrameHub, PushSource

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
MAX_SDP_CHARS = 64_000


def keep_ice_on(host: str) -> None:
    """Host candidates only on ``host`` (127.0.0.1 for a loopback server); ``0.0.0.0``/``::``: every address."""
    if host in ("0.0.0.0", "::", ""):
        return
    address = "127.0.0.1" if host in ("localhost", "::1") else host
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: [address]


def new_peer() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def parse_offer(body: object, loopback: bool = False) -> RTCSessionDescription:
    """The page's offer, or ValueError with why (the server answers 400). ``loopback``: the browser's candidates
    on other addresses are dropped, so the media stays on 127.0.0.1 as the server does."""
    if not isinstance(body, dict):
        raise ValueError("the offer must be a JSON object")
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer" or not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP_CHARS:
        raise ValueError("not a WebRTC offer")
    if "m=video" not in sdp:
        raise ValueError("the offer has no video")
    if loopback:
        sdp = loopback_candidates(sdp)
    return RTCSessionDescription(sdp=sdp, type="offer")


def loopback_candidates(sdp: str) -> str:
    """``sdp`` without the ICE candidates whose address is not a loopback one (a=candidate's fifth field)."""
    from streamer.serve.security import is_loopback

    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 6 or not is_loopback(fields[4]):
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


class HubTrack(MediaStreamTrack):
    """A session's frames as a video track: the newest frame at the session's rate (a black one until the first)."""

    kind = "video"

    def __init__(self, hub: FrameHub, fps: float, size: tuple[int, int]) -> None:
        super().__init__()
        self.hub, self.interval = hub, 1.0 / max(1.0, fps)
        self.size = size  # (w, h) of the black frame before the first
        self._start: float | None = None
        self._pts = 0
        self._last_frame: np.ndarray | None = None
        self._last_video: av.VideoFrame | None = None
        self.sent = 0
        hub.watch(+1)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.perf_counter()
        else:
            self._pts += int(self.interval * VIDEO_CLOCK)
            wait = self._start + self._pts / VIDEO_CLOCK - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        if self.hub.closed:
            self.stop()
            raise MediaStreamError
        image = self.hub.frame
        if image is None:
            image = np.zeros((self.size[1], self.size[0], 3), np.uint8)
        if image is not self._last_frame or self._last_video is None:  # a repeat is not converted again
            self._last_frame = image
            self._last_video = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame = self._last_video
        frame.pts, frame.time_base = self._pts, fractions.Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return frame

    def stop(self) -> None:
        if self.readyState == "live":
            self.hub.watch(-1)
        super().stop()


async def pump_camera(track: MediaStreamTrack, on_first) -> None:
    """Read the browser's camera track: ``on_first(w, h)`` makes the session's :class:`PushSource` on the first
    frame; every frame after goes into it. Ends when the track ends (the tab went)."""
    source: PushSource | None = None
    try:
        while True:
            frame = await track.recv()
            rgb = frame.to_ndarray(format="rgb24")
            if source is None:
                source = on_first(rgb.shape[1], rgb.shape[0])
                if source is None:
                    return
            source.push(rgb)
    except MediaStreamError:
        pass
    finally:
        if source is not None:
            source.close()
