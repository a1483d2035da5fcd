"""WebRTC peers of `streamer serve`: a tab's offer to watch the server's source or to send its camera, the
connection's clean-up when it fails, closes or says goodbye (``/api/bye``), and every peer closed at shutdown.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, NoReturn

from aiohttp import web

from streamer.serve import rtc
from streamer.serve.frames import FrameHub, PushSource
from streamer.serve.security import Refused, read_json
from streamer.serve.studio import build_session

if TYPE_CHECKING:
    from streamer.serve.server import Studio

log = logging.getLogger(__name__)

MAX_PEERS = 32  # WebRTC connections at once (each one encodes its own stream)


async def handle_offer(request: web.Request) -> web.Response:
    studio: Studio = request.app["studio"]
    body = await read_json(request)
    try:
        offer = rtc.parse_offer(body, loopback=studio.guard.loopback)
    except ValueError as exc:
        raise Refused(400, str(exc)) from None
    mode = body.get("mode", "server")
    if len(studio.peers) >= MAX_PEERS:
        raise Refused(503, f"busy: {MAX_PEERS} connections already; close a tab and try again")
    if mode == "server":
        return await _watch(studio, offer)
    if mode == "camera":
        return await _camera(studio, offer)
    raise Refused(400, "mode must be 'server' or 'camera'")


async def _refuse(exc: Exception, cleanup) -> NoReturn:
    """An offer that failed: the peer's resources freed, then a Refused (4xx) for anything the offer caused."""
    await cleanup()
    if isinstance(exc, Refused):
        raise exc
    log.debug("offer refused", exc_info=exc)
    raise Refused(400, f"the offer could not be used ({exc.__class__.__name__})") from None


def _on_closed(pc, cleanup) -> None:
    @pc.on("connectionstatechange")
    async def _changed() -> None:
        if pc.connectionState in ("failed", "closed"):
            await cleanup()


async def _watch(studio: Studio, offer) -> web.Response:
    if studio.server is None:
        raise Refused(404, "this server has no source of its own: use your camera")
    server = studio.server
    pc = rtc.new_peer()
    studio.peers.add(pc)
    tracks: list = []  # made once the offer is understood: a garbage offer never wakes the source

    async def cleanup() -> None:
        for track in tracks:
            track.stop()
        studio.peers.discard(pc)
        await pc.close()

    peer = _register(pc, cleanup)
    try:
        await pc.setRemoteDescription(offer)
        if not any(t.kind == "video" for t in pc.getTransceivers()):
            raise Refused(400, "the offer has no video")
        tracks.append(rtc.HubTrack(server.hub, server.session.fps, (studio.source.width, studio.source.height)))
        pc.addTrack(tracks[0])
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # noqa: BLE001 - a bad offer is the client's: a 4xx
        await _refuse(exc, cleanup)
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "peer": peer})


def _register(pc, cleanup) -> str:
    """A name for the connection (the page's /api/bye gives it back) and its clean-up when it fails or closes."""
    pc.streamer_peer, pc.streamer_cleanup = secrets.token_hex(8), cleanup
    _on_closed(pc, cleanup)
    return pc.streamer_peer


async def _camera(studio: Studio, offer) -> web.Response:
    ident = secrets.token_hex(8)
    if not studio.cameras.take(ident):
        raise Refused(503, f"busy: {studio.limits.cameras} browser camera session(s) already running here; "
                           "try again when it ends, or watch the server's source")
    pc = rtc.new_peer()
    studio.peers.add(pc)
    hub = FrameHub()
    state = {"track": None, "pump": None, "done": False, "timer": None}
    loop = asyncio.get_running_loop()

    async def cleanup() -> None:
        if state["done"]:
            return
        state["done"] = True
        if state["timer"] is not None:
            state["timer"].cancel()
        runner = studio.cameras.free(ident)
        if state["track"] is not None:
            state["track"].stop()
        if state["pump"] is not None:
            state["pump"].cancel()
        studio.peers.discard(pc)
        await pc.close()
        if runner is not None:
            await loop.run_in_executor(None, runner.stop)
        log.info("browser camera session %s closed", ident)

    def ended(_runner) -> None:
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(cleanup()))

    def no_frame() -> None:
        if not state["done"] and studio.cameras.starting(ident):
            log.warning("browser camera session %s: no frame from the camera %.0f s after its offer; its slot is "
                        "free again",
                        ident, studio.limits.camera_start_s)
            asyncio.ensure_future(cleanup())

    def on_first(width: int, height: int) -> PushSource | None:
        if state["done"]:
            return None
        source = PushSource(width, height, studio.plan.fps)
        runner = build_session(studio.plan, source, f"camera {ident}", hub=hub, on_end=ended)
        for params in studio.cameras.set(ident, runner):  # what the page changed while the camera connected
            runner.request(params)
        runner.start()
        log.info("browser camera session %s: %dx%d", ident, width, height)
        return source

    @pc.on("track")
    def _track(track) -> None:
        if track.kind != "video" or state["track"] is not None:
            return
        out = rtc.HubTrack(hub, studio.plan.fps, (640, 480))
        state["track"] = out
        pc.addTrack(out)
        state["pump"] = asyncio.ensure_future(rtc.pump_camera(track, on_first))

    peer = _register(pc, cleanup)
    state["timer"] = loop.call_later(studio.limits.camera_start_s, no_frame)  # an offer that stalls frees it too
    try:
        await pc.setRemoteDescription(offer)
        if state["track"] is None:
            raise Refused(400, "the offer sends no camera video")
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # noqa: BLE001 - a bad offer is the client's: a 4xx
        await _refuse(exc, cleanup)
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session": ident,
                              "peer": peer})


async def handle_bye(request: web.Request) -> web.Response:
    studio: Studio = request.app["studio"]
    body = await read_json(request)
    peer = body.get("peer")
    for pc in list(studio.peers):
        if isinstance(peer, str) and pc.streamer_peer == peer:
            await pc.streamer_cleanup()
    return web.json_response({"ok": True})


async def close_peers(app: web.Application) -> None:
    studio: Studio = app["studio"]
    for pc in list(studio.peers):
        await pc.streamer_cleanup()
    studio.peers.clear()
