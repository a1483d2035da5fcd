"""`streamer serve`'s HTTP API, against a real server on 127.0.0.1 (the real microast at a tiny size): the styles,
uploads and their limits, removal, the Host/Origin/token guard, hostile requests. The page itself:
tests/test_serve_browser.py."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("aiohttp")
pytest.importorskip("aiortc")

from streamer.live.hotkeys import Action, LiveState  # noqa: E402
from streamer.serve.security import Guard, Refused, check_upload, style_name  # noqa: E402
from streamer.serve.studio import StyleBook, control  # noqa: E402
from tests.serve_helpers import Served  # noqa: E402


def png(width: int, height: int, noise: bool = False, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if noise:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 64 * 4], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 15000, height: int = 15000) -> bytes:
    """A few hundred bytes whose header claims a huge picture (a decompression bomb's first move)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width * 3 + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def served(weights_dir: Path, media: Path):
    server = Served("--source", "test", "--capture-size", "128x72", "--size", "64", "--fps", "10",
                    "--max-upload-mb", "0.2", "--max-upload-megapixels", "0.05",
                    "--style", str(media / "style" / "la_muse.jpg"), str(media / "style" / "brick.jpg"),
                    weights_dir=weights_dir)
    yield server
    assert server.stop() in (0, 130), "".join(server.log[-20:])


def names(server: Served) -> list[str]:
    status, body = server.request("GET", "/api/styles")
    assert status == 200
    return [s["name"] for s in body["styles"]]


def test_page_and_styles_listed(served: Served) -> None:
    assert served.base.startswith("http://127.0.0.1:") and served.token is None
    status, page = served.request("GET", "/")
    assert status == 200 and b"streamer studio" in page
    assert names(served)[:2] == ["la_muse", "brick"]
    _, body = served.request("GET", "/api/styles")
    status, thumb = served.request("GET", body["styles"][0]["thumb"])
    assert status == 200 and Image.open(io.BytesIO(thumb)).format == "JPEG"
    status, state = served.request("GET", "/api/state")
    assert status == 200 and state["info"]["model"] == "microast" and state["session"]["size"] == 64


def test_upload_adds_a_style_once_and_it_can_be_removed(served: Served) -> None:
    data = png(200, 150)
    status, body = served.request("POST", "/api/styles", data, {"X-Style-Name": "..%2F..%2Fetc%2Fmy%20paint.png"})
    assert status == 201 and body["added"]
    assert names(served)[-1] == "my paint"  # the client's name is a label, never a path
    status, again = served.request("POST", "/api/styles", data, {"X-Style-Name": "copy.png"})
    assert status == 200 and not again["added"] and names(served).count("my paint") == 1
    ident = body["styles"][-1]["id"]
    status, _ = served.request("POST", "/api/control", {"style": body["index"]})
    assert status == 200
    status, after = served.request("DELETE", f"/api/styles/{ident}")
    assert status == 200 and "my paint" not in names(served)
    assert served.request("DELETE", f"/api/styles/{ident}")[0] == 404


@pytest.mark.parametrize("data, status, words", [
    (b"GIF89a but not really an image at all", 415, "not an image"),
    (b"#!/bin/sh\nrm -rf /\n", 415, "not an image"),
    (b"", 415, "empty"),
    (png(300, 300), 413, "megapixels"),  # 90 000 pixels over this server's 50 000
    (png(400, 400, noise=True), 413, "MB"),  # ~480 kB over this server's 0.2 MB
    (bomb_png(), 413, "megapixels"),  # refused from its header: never decoded
    (png(200, 150)[:300], 415, "not an image"),  # cut short
])
def test_upload_refused_with_a_message(served: Served, data: bytes, status: int, words: str) -> None:
    before = names(served)
    got, body = served.request("POST", "/api/styles", data, {"X-Style-Name": "x.png"})
    assert got == status and words in body["error"]
    assert names(served) == before and served.alive()


def test_last_style_stays(weights_dir: Path, media: Path) -> None:
    server = Served("--source", "none", "--size", "64", "--style", str(media / "style" / "brick.jpg"),
                    weights_dir=weights_dir)
    try:
        _, body = server.request("GET", "/api/styles")
        status, refusal = server.request("DELETE", f"/api/styles/{body['styles'][0]['id']}")
        assert status == 409 and "last style" in refusal["error"]
        status, refusal = server.request("GET", "/api/state")  # no source of its own: a clear 404, not a crash
        assert status == 404 and "camera" in refusal["error"]
    finally:
        assert server.stop() in (0, 130)


def test_foreign_origin_and_host_refused(served: Served) -> None:
    status, body = served.request("POST", "/api/control", {"alpha": 0.5}, {"Origin": "http://evil.example"})
    assert status == 403 and "Origin" in body["error"]
    status, body = served.request("GET", "/api/styles", headers={"Host": "evil.example"})  # DNS rebinding
    assert status == 403 and "loopback" in body["error"]
    status, _ = served.request("POST", "/api/control", {"alpha": 0.5}, {"Origin": served.base})
    assert status == 200


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", {"type": "offer"}, {"type": "offer", "sdp": "hello"},
    {"type": "offer", "sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\ngarbage\r\n"},
    {"type": "offer", "sdp": "v=0\r\n" + "m=video x\r\n" * 9000},
    {"type": "answer", "sdp": "v=0"}, {"type": "offer", "sdp": "v=0\r\nm=video 9 RTP/AVP 0\r\n", "mode": "/etc/passwd"},
])
def test_garbage_offer_gets_4xx_and_the_server_goes_on(served: Served, body) -> None:
    status, answer = served.request("POST", "/api/offer", body,
                                    {"Content-Type": "application/json"} if isinstance(body, bytes) else None)
    assert 400 <= status < 500 and answer["error"]
    assert served.alive() and names(served)[:2] == ["la_muse", "brick"]


@pytest.mark.parametrize("body, status", [
    ({}, 400), ({"alpha": 7}, 400), ({"alpha": "x"}, 400), ({"style": 99}, 400), ({"bypass": "yes"}, 400),
    ({"size": -3}, 400), ({"key": "q"}, 400), ({"target": "../../x", "alpha": 0.5}, 404), ({"alpha": 0.5}, 200),
])
def test_control_checked(served: Served, body: dict, status: int) -> None:
    assert served.request("POST", "/api/control", body)[0] == status


def test_token_required_off_loopback(weights_dir: Path, media: Path) -> None:
    server = Served("--host", "0.0.0.0", "--source", "none", "--size", "64",
                    "--style", str(media / "style" / "brick.jpg"), weights_dir=weights_dir)
    try:
        assert server.url.startswith("https://0.0.0.0:") and server.token and len(server.token) >= 20
        server.base = server.base.replace("0.0.0.0", "127.0.0.1")  # every test talks to 127.0.0.1
        for path in ("/", "/api/styles", "/api/state?target=none"):
            status, body = server.request("GET", path, token=False)
            assert status == 403 and "token" in body["error"]
        assert server.request("GET", "/api/styles", headers={"X-Streamer-Token": "wrong-token"}, token=False)[0] == 403
        assert server.request("POST", "/api/styles", png(64, 64), token=False)[0] == 403
        assert server.request("POST", "/api/offer", {"type": "offer", "sdp": "v=0"}, token=False)[0] == 403
        assert server.request("GET", "/api/styles")[0] == 200
        assert server.request("GET", f"/?token={server.token}", token=False)[0] == 200
    finally:
        assert server.stop() in (0, 130)


# -- pure pieces --------------------------------------------------------------------------------------
def test_guard_rules() -> None:
    loop = Guard(loopback=True, token=None)
    loop.check("GET", "127.0.0.1:8765", None, None)
    loop.check("POST", "localhost:8765", "http://localhost:8765", None)
    for host, origin in (("evil.example:8765", None), ("127.0.0.1:8765", "http://127.0.0.1:9999"),
                         ("127.0.0.1:8765", "null"), ("127.0.0.1:8765", "https://127.0.0.1:8765")):
        with pytest.raises(Refused):
            loop.check("POST", host, origin, None)
    remote = Guard(loopback=False, token="secret-token", scheme="https")
    remote.check("GET", "box.lan:8765", "https://box.lan:8765", "secret-token")
    with pytest.raises(Refused):
        remote.check("GET", "box.lan:8765", None, "secret-tokeN")


def test_upload_check_and_names() -> None:
    rgb = check_upload(png(40, 30))
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    with pytest.raises(Refused, match="too small"):
        check_upload(png(8, 8))
    assert style_name("C:\\Users\\me\\Starry Night.jpg", "x") == "Starry Night"
    assert style_name("../../.bashrc", "fallback") == "bashrc"
    assert style_name("<script>", "fallback") == "script"
    assert style_name("", "fallback") == "fallback"


def test_controls_follow_live_rules() -> None:
    state = LiveState(n_styles=3, sizes=(64, 96, 128), size=96)
    new, actions, _ = control(state, ["a", "b", "c"], {"style": 2, "alpha": 0.25, "keep_color": True, "size": 128})
    assert (new.style_index, new.alpha, new.keep_color, new.size, new.size_pinned) == (2, 0.25, True, 128, True)
    assert Action.STYLE_CHANGED in actions
    new, actions, _ = control(new, ["a", "b", "c"], {"key": "q"})  # a page never quits the server
    assert Action.QUIT not in actions
    new, _, _ = control(new, ["a", "b", "c"], {"size": "auto", "bypass": True})
    assert not new.size_pinned and new.bypass


def test_controls_kept_for_a_starting_camera_keep_the_last_value_and_every_key() -> None:
    """A slider dragged while the camera connects sends dozens of values: the last one counts, and neither a
    box ticked before it nor the key presses are pushed out."""
    from streamer.serve.studio import merge_controls

    kept: list[dict] = []
    for params in [{"bypass": True}, {"key": "c"}, *({"alpha": a / 100} for a in range(100)), {"key": "m"}]:
        kept = merge_controls(kept, params, 32)
    assert kept == [{"bypass": True}, {"key": "c"}, {"alpha": 0.99}, {"key": "m"}]
    assert merge_controls(kept, {"bypass": False, "alpha": 0.5}, 32) == [{"key": "c"}, {"key": "m"},
                                                                           {"bypass": False, "alpha": 0.5}]
    flood = [{"key": "c"}] * 32
    assert merge_controls(flood, {"key": "m"}, 32) == flood  # a flood of presses: the newest is dropped


def test_style_book_never_fails_an_old_index() -> None:
    from streamer.serve.studio import Entry
    from streamer.options import Style

    book = StyleBook()
    for name in "abc":
        book.add(Entry(name, Style(name, Path(name), {"code": name}), b""))
    assert book.add(Entry("a", Style("a2", Path("a"), {}), b"")) == (0, False)
    assert book.remove("c") == 2 and len(book) == 2
    assert book.codes[2] == {"code": "b"}  # a session whose state still says 2 gets the last style
    assert book.remove("zz") == -1
    book.remove("b")
    assert book.remove("a") == -2  # the last one stays


def test_a_flood_of_bad_requests_gets_4xx_and_the_server_goes_on(served: Served) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bad = [("POST", "/api/offer", {"type": "offer", "sdp": "v=0\r\nm=video 9 x\r\n"}),
           ("POST", "/api/styles", b"\x89PNG\r\n\x1a\nnot really"), ("GET", "/etc/passwd", None),
           ("GET", "/api/styles/..%2F..%2Fetc%2Fpasswd/thumb", None), ("DELETE", "/api/styles/nope", None),
           ("POST", "/api/control", {"target": "x" * 5000, "alpha": 0.1}), ("PUT", "/api/styles", b"x")]
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda i: served.request(*bad[i % len(bad)])[0], range(350)))
    assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert served.alive() and names(served)[:2] == ["la_muse", "brick"]
    assert served.request("POST", "/api/control", {"alpha": 1.0})[0] == 200


def test_controls_reach_the_session(served: Served) -> None:
    import time

    change = {"alpha": 0.3, "keep_color": True, "temporal": True, "motion": False, "bypass": True}
    assert served.request("POST", "/api/control", change)[0] == 200
    deadline = time.monotonic() + 20
    while True:
        session = served.request("GET", "/api/state")[1]["session"]
        if all(session[k] == v for k, v in change.items()):
            break
        assert time.monotonic() < deadline, session
        time.sleep(0.1)
    undo = {"alpha": 1.0, "keep_color": False, "temporal": False, "bypass": False}
    assert served.request("POST", "/api/control", undo)[0] == 200


@pytest.mark.parametrize("flags, words", [
    (["--port", "70000"], "--port"),
    (["--tls-cert", "cert.pem"], "go together"),
    (["--token", "short"], "--token"),
    (["--size", "big"], "--size"),
    (["--camera-sessions", "-1"], "--camera-sessions"),
    (["--max-upload-mb", "0"], "--max-upload-mb"),
])
def test_bad_flags_one_line_before_the_model(run, no_model, media: Path, flags: list[str], words: str) -> None:
    code, err = run("serve", "--no-browser", "--style", media / "style" / "brick.jpg", *flags)
    assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err


def test_port_in_use_one_line_before_the_model(run, no_model, media: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, err = run("serve", "--no-browser", "--port", busy.getsockname()[1], "--style", media / "style" / "brick.jpg")
    assert code == 3 and "cannot listen on 127.0.0.1" in err and err.count("\n") == 1


def test_webrtc_answer_stays_on_loopback_and_streams(served: Served, monkeypatch) -> None:
    """A WebRTC client (aiortc, held to 127.0.0.1 too) watches the server's source: the answer offers 127.0.0.1
    candidates only, and frames of the source's size arrive."""
    import asyncio
    import re

    import aioice.ice
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from streamer.serve.rtc import keep_ice_on

    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)  # undone after the test
    keep_ice_on("127.0.0.1")

    async def watch() -> tuple[str, tuple[int, int]]:
        pc = RTCPeerConnection()
        try:
            pc.addTransceiver("video", direction="recvonly")
            got: asyncio.Future = asyncio.get_running_loop().create_future()
            pc.on("track", lambda track: got.done() or got.set_result(track))
            await pc.setLocalDescription(await pc.createOffer())
            status, answer = await asyncio.to_thread(served.request, "POST", "/api/offer",
                                                     {"sdp": pc.localDescription.sdp, "type": "offer"})
            assert status == 200, answer
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            track = await asyncio.wait_for(got, 30)
            for _ in range(3):  # past the black frames sent before the first stylized one
                frame = await asyncio.wait_for(track.recv(), 30)
            return answer["sdp"], (frame.width, frame.height)
        finally:
            await pc.close()

    sdp, size = asyncio.run(watch())
    addresses = re.findall(r"a=candidate:\S+ \d+ \S+ \d+ (\S+) ", sdp)
    assert addresses and set(addresses) == {"127.0.0.1"}
    assert size == (128, 72)


def camera_offer() -> tuple[object, dict]:
    """An aiortc peer offering a camera that never sends a frame (a slow link, a stuck camera), and the body the
    page posts (its "sdp" set once the offer is made; call inside a running loop)."""
    import asyncio

    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import MediaStreamTrack

    class SilentCamera(MediaStreamTrack):
        kind = "video"

        async def recv(self):
            await asyncio.sleep(3600)

    pc = RTCPeerConnection()
    pc.addTrack(SilentCamera())
    return pc, {"type": "offer", "mode": "camera"}


def test_a_camera_session_before_its_first_frame_is_starting_not_ended(served: Served, monkeypatch) -> None:
    """Between the answer and the camera's first frame (a second or more on a slow link) the page asks for the
    session's state every 0.7 s: it is "starting", not "no such camera session", which made the page give up on
    a camera that was still connecting. A goodbye then ends it."""
    import asyncio

    import aioice.ice

    from streamer.serve.rtc import keep_ice_on

    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)  # undone after the test
    keep_ice_on("127.0.0.1")

    async def offer() -> dict:
        pc, body = camera_offer()
        try:
            await pc.setLocalDescription(await pc.createOffer())
            body["sdp"] = pc.localDescription.sdp
            status, answer = await asyncio.to_thread(served.request, "POST", "/api/offer", body)
            assert status == 200, answer
            return answer
        finally:
            await pc.close()

    answer = asyncio.run(offer())
    ident = answer["session"]
    try:
        status, body = served.request("GET", f"/api/state?target={ident}")
        assert status == 200 and body["starting"] is True and body["session"] is None, body
        assert body["cameras"] == 1
        status, body = served.request("POST", "/api/control", {"target": ident, "alpha": 0.5})
        assert status == 200, body  # kept for the session's start
        status, body = served.request("POST", "/api/control", {"target": ident, "alpha": 7})
        assert status == 400, body  # checked all the same
        status, body = served.request("POST", "/api/recordings", {"target": ident})
        assert status == 409 and "starting" in body["error"], body
    finally:
        assert served.request("POST", "/api/bye", {"peer": answer["peer"]})[0] == 200
    status, body = served.request("GET", f"/api/state?target={ident}")
    assert status == 404 and "no such camera session" in body["error"]
    assert served.request("GET", "/api/state")[1]["cameras"] == 0


def test_controls_changed_while_a_camera_connects_reach_its_session(tmp_path: Path, monkeypatch) -> None:
    """A user who moves the slider or ticks Bypass while their camera is still connecting sees it applied when
    the session starts, in order (it was refused, and the page showed the change as made)."""
    import asyncio
    import json
    from fractions import Fraction
    from types import SimpleNamespace

    import av
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamTrack

    import aioice.ice

    from streamer.serve import peers
    from streamer.serve.rtc import keep_ice_on, parse_offer
    from streamer.serve.server import Limits, Studio

    class LateCamera(MediaStreamTrack):
        kind = "video"
        pts = 0

        async def recv(self):
            await asyncio.sleep(1.0 if self.pts == 0 else 0.1)
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 90, np.uint8), format="rgb24")
            frame.pts, frame.time_base = self.pts, Fraction(1, 90000)
            self.pts += 9000
            return frame

    calls: list = []

    def fake_session(plan, source, label, **_):
        return SimpleNamespace(request=lambda params: calls.append(params), start=lambda: calls.append("start"),
                               stop=lambda: None, session=SimpleNamespace(source=source))

    monkeypatch.setattr(peers, "build_session", fake_session)
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)  # undone after the test
    keep_ice_on("127.0.0.1")  # a machine with loopback only still connects
    studio = Studio(plan=SimpleNamespace(fps=10.0), guard=None, info={}, upload_dir=tmp_path, limits=Limits())

    async def connect_then_control() -> None:
        pc = RTCPeerConnection()
        pc.addTrack(LateCamera())
        try:
            await pc.setLocalDescription(await pc.createOffer())
            response = await peers._camera(studio, parse_offer({"sdp": pc.localDescription.sdp, "type": "offer"}))  # noqa: SLF001
            answer = json.loads(response.text)
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            ident = answer["session"]
            assert studio.cameras.defer(ident, {"alpha": 0.5}) and studio.cameras.defer(ident, {"bypass": True})
            for _ in range(100):
                if "start" in calls:
                    break
                await asyncio.sleep(0.1)
            assert not studio.cameras.defer(ident, {"alpha": 1.0})  # started: controls go to the session
        finally:
            await pc.close()
            for server_side in list(studio.peers):
                await server_side.streamer_cleanup()

    asyncio.run(connect_then_control())
    assert calls == [{"alpha": 0.5}, {"bypass": True}, "start"]


def test_a_camera_that_never_sends_a_frame_gives_its_slot_back(monkeypatch) -> None:
    """A tab that offers a camera and then sends nothing would hold the only camera slot for ever: after
    ``camera_start_s`` with no frame the slot is free again and its peer closed."""
    import asyncio
    from types import SimpleNamespace

    import aioice.ice

    from streamer.serve import peers
    from streamer.serve.rtc import keep_ice_on, parse_offer
    from streamer.serve.server import Limits
    from streamer.serve.studio import CameraSlots

    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)  # undone after the test
    keep_ice_on("127.0.0.1")
    studio = SimpleNamespace(cameras=CameraSlots(1), peers=set(), limits=Limits(camera_start_s=0.5),
                             plan=SimpleNamespace(fps=10.0))

    async def offer_then_wait() -> tuple[bool, int, int]:
        pc, body = camera_offer()
        try:
            await pc.setLocalDescription(await pc.createOffer())
            body["sdp"] = pc.localDescription.sdp
            response = await peers._camera(studio, parse_offer(body))  # noqa: SLF001
            assert response.status == 200
            ident = next(iter(studio.cameras.held))
            starting = studio.cameras.starting(ident)
            await asyncio.sleep(2.0)
            return starting, len(studio.cameras), len(studio.peers)
        finally:
            await pc.close()

    starting, held, open_peers = asyncio.run(offer_then_wait())
    assert starting and held == 0 and open_peers == 0


def test_own_certificate_serves_https(weights_dir: Path, media: Path, tmp_path: Path) -> None:
    from streamer.serve.security import self_signed

    cert, key = self_signed(tmp_path, "127.0.0.1")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    server = Served("--source", "none", "--size", "64", "--tls-cert", str(cert), "--tls-key", str(key),
                    "--style", str(media / "style" / "brick.jpg"), weights_dir=weights_dir)
    try:
        assert server.url.startswith("https://127.0.0.1:") and server.token is None  # loopback: no token
        assert server.request("GET", "/api/styles")[0] == 200
    finally:
        assert server.stop() in (0, 130)


# -- recordings --------------------------------------------------------------------------------------
def video_frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def wait_for(check, what: str, seconds: float = 60.0):
    import time

    deadline = time.monotonic() + seconds
    while not (got := check()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)
    return got


def test_page_records_and_the_recording_downloads(served: Served, tmp_path: Path) -> None:
    """Start, a refused second start, stop, download: an mp4 with moving stylized frames (no tab watches: the
    recording keeps the source running)."""
    status, body = served.request("POST", "/api/recordings", {"target": "server"})
    assert status == 201, body
    try:
        status, again = served.request("POST", "/api/recordings", {})
        assert status == 409 and "already running" in again["error"]
        wait_for(lambda: served.request("GET", "/api/state")[1]["recording"]["frames"] >= 5, "5 frames recorded")
    finally:
        status, done = served.request("POST", "/api/recordings/stop", {})
    assert status == 200 and done["frames"] >= 5 and done["url"] == f"/api/recordings/{body['id']}"
    status, data = served.request("GET", done["url"])
    assert status == 200 and isinstance(data, bytes)
    (tmp_path / "got.mp4").write_bytes(data)
    frames = video_frames(tmp_path / "got.mp4")
    assert len(frames) == done["frames"] and frames[0].shape == (72, 128, 3)
    assert frames[-1].std() > 10  # a picture, not a flat frame
    assert served.request("GET", "/api/state")[1]["recording"]["running"] is False
    assert served.request("POST", "/api/recordings/stop", {})[0] == 409  # nothing running


def test_recordings_refused_where_they_must_be(served: Served) -> None:
    status, body = served.request("GET", "/api/recordings/0123456789abcdef")
    assert status == 404 and "no such recording" in body["error"]
    assert served.request("GET", "/api/recordings/..%2F..%2Fetc%2Fpasswd")[0] == 404
    status, body = served.request("POST", "/api/recordings", {"target": "/tmp/mine.mp4"})  # never a path
    assert status == 404 and "no such camera session" in body["error"]
    status, body = served.request("POST", "/api/recordings", {}, {"Origin": "http://evil.example"})
    assert status == 403 and "Origin" in body["error"]
    assert served.request("GET", "/api/state")[1]["recording"]["running"] is False


def test_record_flag_leaves_a_playable_file_after_sigterm(weights_dir: Path, media: Path, tmp_path: Path) -> None:
    """`serve --record` records the server's source from the start, watched or not; SIGTERM finishes the file
    (exit 143), and more SIGTERMs while it is being finished are ignored (they killed the process once the
    server's loop had closed); `--vcam` gets the same frames."""
    import json
    import signal
    import time

    out, vcam_log = tmp_path / "out.mp4", tmp_path / "vcam.json"
    import os

    os.environ["STREAMER_TEST_VCAM_LOG"] = str(vcam_log)  # read by the child, which inherits it
    try:
        server = Served("--source", "test", "--capture-size", "128x72", "--size", "64", "--fps", "10",
                        "--record", str(out), "--vcam", "--vcam-backend", "tests.serve_helpers:CountingCamera",
                        "--style", str(media / "style" / "brick.jpg"), weights_dir=weights_dir)
    finally:
        del os.environ["STREAMER_TEST_VCAM_LOG"]
    try:
        wait_for(lambda: server.request("GET", "/api/snapshot.png")[0] == 200, "a first frame out")
        wait_for(lambda: not (server.request("GET", "/api/state")[1]["session"]["engine_fps"] == 0), "frames going")
    finally:
        deadline = time.monotonic() + 60
        while server.proc.poll() is None and time.monotonic() < deadline:  # an impatient `kill`, again and again
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
        code = server.stop()  # already ended: its exit status; else SIGINT, then killed
    assert code == 143, "".join(server.log[-20:])
    frames = video_frames(out)
    assert len(frames) > 0 and frames[-1].shape == (72, 128, 3) and frames[-1].std() > 10
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no .part left
    vcam = json.loads(vcam_log.read_text())
    assert vcam["frames"] > 0 and vcam["spread"] > 10 and vcam["size"] == [128, 72]


def test_record_flag_refusals_one_line_before_the_model(run, no_model, media: Path, tmp_path: Path) -> None:
    style = media / "style" / "brick.jpg"
    existing = tmp_path / "taken.mp4"
    existing.write_bytes(b"mine")
    cases = [(["--record", existing], "exists"),
             (["--source", existing, "--record", existing, "--overwrite"], "--source video"),
             (["--record", tmp_path / "out.notavideo"], ".notavideo"),
             (["--source", "none", "--record", tmp_path / "out.mp4"], "--source"),
             (["--record", tmp_path / "missing" / "out.mp4"], "does not exist"),
             (["--vcam", "--vcam-backend", "nosuchcamera"], "nosuchcamera")]
    for flags, words in cases:
        code, err = run("serve", "--no-browser", "--style", style, *(["--source", "test"] * ("--source" not in flags)),
                        *flags)
        assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err, (flags, err)
    assert existing.read_bytes() == b"mine" and not (tmp_path / "out.mp4").exists()
