"""The HTTP side of `streamer serve` (aiohttp): the page and its API (the WebRTC offers: :mod:`.peers`).

    GET    /                      the page (page/index.html, app.js, style.css: served as they are)
    GET    /api/state?target=T    a session's controls and figures (T: "server" or a browser-camera id)
    GET    /api/styles            the gallery; /api/styles/ID/thumb its thumbnails
    POST   /api/styles            an image in the body (its name in X-Style-Name): a new style
    DELETE /api/styles/ID         remove a style (never the last)
    POST   /api/control           {"target", "style"|"alpha"|"keep_color"|"bypass"|"motion"|"temporal"|"size"|"key"}
    POST   /api/offer             {"sdp", "type": "offer", "mode": "server"|"camera"} -> the answer
    POST   /api/bye               {"peer"}: a tab is going (its connection and, for a camera, its session end)
    GET    /api/snapshot.png?target=T   what the session shows now, as a PNG
    POST   /api/recordings        {"target"}: record what that session shows (one recording at a time) -> {"id"}
    POST   /api/recordings/stop   stop it -> {"id", "frames"}
    GET    /api/recordings/ID     the finished recording (an mp4 in the server's own temporary folder)

Every request passes :class:`~streamer.serve.security.Guard`; a refusal is a 4xx with ``{"error": line}``.
No request names a file: styles are known by the digest of their image, files are named by the server.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from streamer.serve.frames import GatedSource, PushSource
from streamer.serve.peers import close_peers, handle_bye, handle_offer
from streamer.serve.recordings import PageRecordings
from streamer.serve.security import (MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, TOKEN_COOKIE, TOKEN_HEADER, Guard, Refused,
                                     check_upload, read_body, read_json, style_name)
from streamer.serve.studio import (SESSION_KEYS, CameraSlots, Entry, SessionPlan, SessionRunner, build_session,
                                   thumbnail)

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page")
PAGE_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
              "/style.css": ("style.css", "text/css")}
MAX_UPLOADS = 2  # style images being checked and encoded at once
CONTROL_KEYS = {"style", "alpha", "keep_color", "bypass", "motion", "temporal", "size", "key"}


@dataclass
class Limits:
    upload_bytes: int = MAX_UPLOAD_BYTES
    upload_pixels: int = MAX_UPLOAD_PIXELS
    cameras: int = 1
    camera_start_s: float = 30.0  # a browser camera with no frame this long after the answer gives its slot back


@dataclass
class Studio:
    """Everything the routes use: the plan for sessions, the server's own session, the browser cameras."""

    plan: SessionPlan
    guard: Guard
    info: dict  # model, engine, source: shown on the page
    upload_dir: Path
    style_size: int = 512
    weights_dir: str | None = None
    limits: Limits = field(default_factory=Limits)
    source: Any = None  # the server's own source (None: browser cameras only)
    server: SessionRunner | None = None
    cameras: CameraSlots = field(default_factory=lambda: CameraSlots(1))
    peers: set = field(default_factory=set)
    uploads: int = 0  # in flight
    outputs: list = field(default_factory=list)  # the server's source session's own: --record, --vcam
    recordings: PageRecordings = field(default_factory=PageRecordings)

    def start(self) -> None:
        self.cameras = CameraSlots(self.limits.cameras)
        if self.source is not None:
            gated = GatedSource(self.source, threading.Event())
            self.server = build_session(self.plan, gated, "server", on_viewers=gated.watched, outputs=self.outputs)
            gated.stop = self.server.session.stop
            if self.outputs:  # a recording or a virtual camera takes every frame, watched or not
                gated.hold(+1)
                self.outputs.clear()  # the session owns them now (it closes them at its end): the caller lets go
            self.server.start()

    def runner(self, target: str) -> SessionRunner:
        if target == "server":
            if self.server is None:
                raise Refused(404, "this server has no source of its own: use your camera")
            return self.server
        if self.cameras.starting(target):
            raise Refused(409, "your camera session is starting: no frame from the camera yet")
        runner = self.cameras.held.get(target) if isinstance(target, str) else None
        if runner is None:
            raise Refused(404, "no such camera session (it ended)")
        return runner

    def stop(self) -> None:
        self.recordings.close()
        runners = [r for r in [self.server, *self.cameras.held.values()] if r is not None]
        for r in runners:
            r.session.stop.set()
            if isinstance(r.session.source, PushSource):
                r.session.source.close()
        for r in runners:
            r.stop()


# -- the styles -------------------------------------------------------------------------------------
def load_entry(path: Path, stylizer: Any, style_size: int, weights_dir: str | None, rgb=None) -> Entry:
    """A style ready for sessions: its code (from the cache, or computed and cached) and its thumbnail."""
    from engines.files import file_sha256
    from streamer.imageio import load_image
    from streamer.options import load_styles

    style = load_styles([path], stylizer, style_size, weights_dir)[0]
    if rgb is None:
        rgb = load_image(path, "style image")
    return Entry(file_sha256(path)[:32], style, thumbnail(rgb))


def styles_json(studio: Studio) -> list[dict]:
    return [{"id": e.ident, "name": e.style.name, "index": i, "thumb": f"/api/styles/{e.ident}/thumb"}
            for i, e in enumerate(studio.plan.book.entries)]


# -- the app ----------------------------------------------------------------------------------------
def make_app(studio: Studio) -> web.Application:
    app = web.Application(middlewares=[_guarded], client_max_size=studio.limits.upload_bytes + 1024)
    app["studio"] = studio
    pages = {route: ((PAGE / name).read_bytes(), kind) for route, (name, kind) in PAGE_FILES.items()}

    async def page(request: web.Request) -> web.Response:
        body, kind = pages[request.path]
        response = web.Response(body=body, content_type=kind,
                                headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                         "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                                                    "media-src 'self' blob:; frame-ancestors 'none'",
                                         "Referrer-Policy": "no-referrer"})
        token = request.query.get("token")
        if token and studio.guard.token and request.path == "/":
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict",
                                secure=studio.guard.scheme == "https")
        return response

    for route in PAGE_FILES:
        app.router.add_get(route, page)
    app.router.add_get("/favicon.ico", lambda request: web.Response(status=204))
    app.router.add_get("/api/state", _state)
    app.router.add_get("/api/styles", _styles)
    app.router.add_get("/api/styles/{ident}/thumb", _thumb)
    app.router.add_post("/api/styles", _upload)
    app.router.add_delete("/api/styles/{ident}", _remove)
    app.router.add_post("/api/control", _control)
    app.router.add_post("/api/offer", handle_offer)
    app.router.add_post("/api/bye", handle_bye)
    app.router.add_get("/api/snapshot.png", _snapshot)
    app.router.add_post("/api/recordings", _record_start)
    app.router.add_post("/api/recordings/stop", _record_stop)
    app.router.add_get("/api/recordings/{ident}", _record_file)
    app.on_shutdown.append(close_peers)
    return app


@web.middleware
async def _guarded(request: web.Request, handler):
    studio: Studio = request.app["studio"]
    given = request.headers.get(TOKEN_HEADER) or request.query.get("token") or request.cookies.get(TOKEN_COOKIE)
    try:
        studio.guard.check(request.method, request.headers.get("Host", ""), request.headers.get("Origin"), given)
        return await handler(request)
    except Refused as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return web.json_response({"error": exc.reason}, status=exc.status)
        raise
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception:  # noqa: BLE001 - the session goes on for the others
        log.exception("request %s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error (see the server's log)"}, status=500)


async def _state(request: web.Request) -> web.Response:
    studio: Studio = request.app["studio"]
    target = request.query.get("target", "server")
    body: dict = {"info": studio.info, "cameras": len(studio.cameras), "camera_limit": studio.limits.cameras,
                  "has_source": studio.server is not None, "recording": studio.recordings.status(),
                  "style_ids": [e.ident for e in studio.plan.book.entries]}
    if studio.cameras.starting(target):  # answered, its first frame not here yet: not an ended session
        body["session"], body["starting"] = None, True
    elif target != "none":
        body["session"] = studio.runner(target).status()
    return web.json_response(body)


async def _styles(request: web.Request) -> web.Response:
    return web.json_response({"styles": styles_json(request.app["studio"])})


async def _thumb(request: web.Request) -> web.Response:
    studio: Studio = request.app["studio"]
    index = studio.plan.book.find(request.match_info["ident"])
    if index < 0:
        raise Refused(404, "no such style")
    return web.Response(body=studio.plan.book.entries[index].thumb, content_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})


async def _upload(request: web.Request) -> web.Response:
    studio: Studio = request.app["studio"]
    if studio.uploads >= MAX_UPLOADS:
        raise Refused(429, "another style is being added: try again in a moment")
    studio.uploads += 1
    try:
        return await _add_style(request, studio)
    finally:
        studio.uploads -= 1


async def _add_style(request: web.Request, studio: Studio) -> web.Response:
    cap = studio.limits.upload_bytes
    if request.content_length is not None and request.content_length > cap:
        raise Refused(413, f"the file is too large ({request.content_length / 1e6:.1f} MB); the limit is "
                           f"{cap / 1e6:.0f} MB")
    data = await read_body(request, cap)
    loop = asyncio.get_running_loop()
    rgb = await loop.run_in_executor(None, check_upload, data, cap, studio.limits.upload_pixels)
    digest = hashlib.sha256(data).hexdigest()
    name = style_name(unquote(request.headers.get("X-Style-Name", "")), f"style-{digest[:8]}")
    existing = studio.plan.book.find(digest[:32])
    if existing >= 0:
        return web.json_response({"added": False, "index": existing, "styles": styles_json(studio)})
    studio.upload_dir.mkdir(parents=True, exist_ok=True)
    folder = studio.upload_dir / digest[:32]  # named by the server; the display name is only the file's stem
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.png"
    if not path.exists():
        from streamer.imageio import save_image

        await loop.run_in_executor(None, save_image, path, rgb)
    entry = await loop.run_in_executor(None, load_entry, path, studio.plan.stylizer, studio.style_size,
                                       studio.weights_dir, rgb)
    entry = Entry(digest[:32], entry.style, entry.thumb)
    index, added = studio.plan.book.add(entry)
    if added:
        log.info("style added from the page: %s", entry.style.name)
        for runner in _runners(studio):
            runner.styles_changed()
    return web.json_response({"added": added, "index": index, "styles": styles_json(studio)}, status=201)


async def _remove(request: web.Request) -> web.Response:
    studio: Studio = request.app["studio"]
    index = studio.plan.book.remove(request.match_info["ident"])
    if index == -1:
        raise Refused(404, "no such style")
    if index == -2:
        raise Refused(409, "the last style stays: add another before removing this one")
    for runner in _runners(studio):
        runner.styles_changed(removed=index)
    return web.json_response({"styles": styles_json(studio)})


def _runners(studio: Studio) -> list[SessionRunner]:
    return [r for r in [studio.server, *studio.cameras.held.values()] if r is not None]


def check_control(body: dict, n_styles: int) -> dict:
    """The page's control request, checked: known names, values of the right kind and range."""
    params = {k: v for k, v in body.items() if k in CONTROL_KEYS}
    if not params:
        raise Refused(400, f"nothing to change: name one of {', '.join(sorted(CONTROL_KEYS))}")
    for flag in ("keep_color", "bypass", "motion", "temporal"):
        if flag in params and not isinstance(params[flag], bool):
            raise Refused(400, f"{flag} must be true or false")
    if "style" in params and (not isinstance(params["style"], int) or not 0 <= params["style"] < n_styles):
        raise Refused(400, f"style must be a number from 0 to {n_styles - 1}")
    if "alpha" in params and (not isinstance(params["alpha"], (int, float)) or not 0 <= params["alpha"] <= 1):
        raise Refused(400, "alpha must be a number from 0 to 1")
    if "size" in params and not (params["size"] == "auto" or (isinstance(params["size"], int) and
                                                              0 < params["size"] <= 16384)):
        raise Refused(400, "size must be 'auto' or a number of pixels")
    if "key" in params and params["key"] not in SESSION_KEYS:
        raise Refused(400, "that key does nothing here")
    return params


async def _control(request: web.Request) -> web.Response:
    studio: Studio = request.app["studio"]
    body = await read_json(request)
    target = str(body.get("target", "server"))
    params = check_control(body, len(studio.plan.book))
    if not studio.cameras.defer(target, params):  # a camera still connecting takes it when it starts
        studio.runner(target).request(params)
    return web.json_response({"ok": True})


async def _snapshot(request: web.Request) -> web.Response:
    studio: Studio = request.app["studio"]
    shown = studio.runner(request.query.get("target", "server")).session.shown
    if shown is None:
        raise Refused(409, "nothing shown yet")
    from PIL import Image

    buf = io.BytesIO()
    await asyncio.get_running_loop().run_in_executor(None, lambda: Image.fromarray(shown.image).save(buf, "PNG"))
    return web.Response(body=buf.getvalue(), content_type="image/png",
                        headers={"Content-Disposition": 'attachment; filename="streamer-snapshot.png"'})


# -- recordings -------------------------------------------------------------------------------------
async def _record_start(request: web.Request) -> web.Response:
    studio: Studio = request.app["studio"]
    body = await read_json(request)
    runner = studio.runner(str(body.get("target", "server")))
    if not runner.alive:
        raise Refused(409, "that session has ended: nothing to record")
    ident = await asyncio.get_running_loop().run_in_executor(None, studio.recordings.start, runner)
    return web.json_response({"id": ident, "recording": studio.recordings.status()}, status=201)


async def _record_stop(request: web.Request) -> web.Response:
    studio: Studio = request.app["studio"]
    await read_json(request)
    done = await asyncio.get_running_loop().run_in_executor(None, studio.recordings.stop)
    if done["id"] is not None:
        done["url"] = f"/api/recordings/{done['id']}"
    return web.json_response(done)


async def _record_file(request: web.Request) -> web.StreamResponse:
    studio: Studio = request.app["studio"]
    path = studio.recordings.file(request.match_info["ident"])  # looked up by id: a client never names a path
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    return web.FileResponse(path, headers={"Content-Type": "video/mp4", "Cache-Control": "no-store",
                                           "Content-Disposition": f'attachment; filename="streamer-{stamp}.mp4"'})
