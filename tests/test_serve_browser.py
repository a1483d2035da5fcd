"""`streamer serve` end to end in a real headless Chromium (Debian's `chromium`, driven by Playwright), everything
on 127.0.0.1: the server's source (a test pattern) stylized and moving in the page; another style and alpha 0 seen
in the picture; an uploaded style appears and applies; a second tab sees the stream; the browser's camera (Chromium's
fake camera playing frames of the real clip) comes back stylized; a second camera is told the server is busy; a
closed tab frees its session."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiortc")
playwright = pytest.importorskip("playwright.sync_api")

from tests.serve_helpers import Served  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
GRAB = """() => {
  const v = document.getElementById('video');
  if (!v.videoWidth) return null;
  const c = document.createElement('canvas'); c.width = 64; c.height = 36;
  const g = c.getContext('2d'); g.drawImage(v, 0, 0, 64, 36);
  return Array.from(g.getImageData(0, 0, 64, 36).data);
}"""


def make_y4m(clip: Path, out: Path, frames: int = 48, size: tuple[int, int] = (320, 180)) -> np.ndarray:
    """The clip's first ``frames`` frames as a y4m file (Chromium's fake camera loops it); their mean RGB."""
    import av

    w, h = size
    means = []
    with av.open(str(clip)) as container, open(out, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F24:1 Ip A1:1 C420jpeg\n".encode())
        for i, frame in enumerate(container.decode(video=0)):
            if i >= frames:
                break
            f.write(b"FRAME\n" + np.ascontiguousarray(frame.reformat(w, h, "yuv420p").to_ndarray()).tobytes())
            means.append(frame.reformat(w, h, "rgb24").to_ndarray().reshape(-1, 3).mean(0))
    return np.mean(means, axis=0)


def grab(page) -> np.ndarray:
    """The page's video now, 64x36 RGB float."""
    deadline = time.monotonic() + 30
    while True:
        data = page.evaluate(GRAB)
        if data is not None:
            return np.array(data, np.float32).reshape(36, 64, 4)[..., :3]
        assert time.monotonic() < deadline, "the page shows no video"
        time.sleep(0.2)


def look(page, n: int = 6, gap: float = 0.25) -> np.ndarray:
    """The mean colour over ``n`` grabs: what a picture looks like, whatever moved meanwhile."""
    frames = []
    for _ in range(n):
        frames.append(grab(page).reshape(-1, 3).mean(0))
        time.sleep(gap)
    return np.mean(frames, axis=0)


def state(server: Served, target: str = "server") -> dict:
    return server.request("GET", f"/api/state?target={target}")[1]


def until(condition, what: str, timeout: float = 30.0, explain=None):
    """``condition()``'s first true value; fails after ``timeout`` with ``what`` and ``explain()`` (what the page
    and the server said), so a failure on CI says why."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"never happened: {what}" + (f"\n{explain()}" if explain else "")
        time.sleep(0.2)


def said(page, server: Served) -> str:
    return f"page: {page.locator('#message').text_content()!r}\nserver's log:\n" + "".join(server.log[-30:])


def settle(page, server: Served, key: str, value, target: str = "server") -> None:
    """Wait until the session took the change and shows it (a frame made after it)."""
    until(lambda: state(server, target)["session"][key] == value, f"{key} = {value}")
    time.sleep(1.0)


@pytest.mark.slow
def test_studio_in_chromium(weights_dir: Path, media: Path, clip: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    clip_mean = make_y4m(clip, tmp_path / "clip.y4m")
    style = media / "style"
    server = Served("--source", "test", "--capture-size", "256x144", "--size", "64", "--fps", "15",
                    "--motion", "off", "--style", str(style / "la_muse.jpg"), str(style / "brick.jpg"),
                    weights_dir=weights_dir)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={tmp_path / 'clip.y4m'}", "--allow-loopback-in-peer-connection"]
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            page = context.new_page()
            page.goto(server.url)

            # the server's source: stylized, moving
            first = grab(page)
            time.sleep(1.0)
            assert np.abs(grab(page) - first).mean() > 2, "the picture does not move"
            until(lambda: state(server)["session"]["engine_fps"] > 0, "the engine runs")
            muse = look(page)

            # another style, by its button
            page.get_by_role("button", name="Style brick", exact=True).click()
            settle(page, server, "style_name", "brick")
            brick = look(page)
            assert np.abs(brick - muse).max() > 12, (brick, muse)

            # alpha 0 is near the source (bypass shows the source itself)
            page.get_by_role("checkbox", name="Bypass").check()
            settle(page, server, "bypass", True)
            source = look(page)
            page.get_by_role("checkbox", name="Bypass").uncheck()
            settle(page, server, "bypass", False)
            page.get_by_role("slider", name="alpha").fill("0")
            settle(page, server, "alpha", 0.0)
            plain = look(page)
            assert np.abs(plain - source).max() < 0.5 * np.abs(brick - source).max(), (plain, brick, source)
            page.get_by_role("slider", name="alpha").fill("1")
            settle(page, server, "alpha", 1.0)

            # a new style by the file picker: in the gallery, picked, applied
            page.get_by_label("Add a style image").set_input_files(str(style / "mondrian.jpg"))
            page.get_by_role("button", name="Style mondrian", exact=True).wait_for(timeout=60000)
            settle(page, server, "style_name", "mondrian")
            until(lambda: page.get_by_role("button", name="Style mondrian", exact=True).get_attribute("aria-pressed")
                  == "true", "mondrian shown as picked")
            mondrian = look(page)
            assert np.abs(mondrian - brick).max() > 12, (mondrian, brick)

            # a file that is not an image: refused, said on the page, the gallery unchanged
            (tmp_path / "notes.png").write_text("not a picture")
            page.get_by_label("Add a style image").set_input_files(str(tmp_path / "notes.png"))
            until(lambda: "not an image" in page.locator("#message").text_content(), "refusal shown")
            assert page.get_by_role("button", name="Style notes", exact=True).count() == 0

            # snapshot: a PNG download of what is shown, at the source's size
            with page.expect_download() as download:
                page.get_by_role("button", name="Snapshot").click()
            from PIL import Image

            assert Image.open(download.value.path()).size == (256, 144)

            # the window's keys work on the page: n goes to the next style (wraps to the first)
            page.locator("body").press("n")
            settle(page, server, "style_name", "la_muse")

            # a second tab sees the stream
            second = context.new_page()
            second.goto(server.url)
            frame = grab(second)
            time.sleep(1.0)
            assert np.abs(grab(second) - frame).mean() > 2
            until(lambda: state(server)["session"]["viewers"] == 2, "two viewers")
            page.screenshot(path=str(tmp_path / "studio.png"))

            # the browser's own camera: the clip comes back stylized
            page.get_by_role("switch", name="camera").check()
            until(lambda: "camera is stylized" in page.locator("#message").text_content(), "camera session",
                  explain=lambda: said(page, server))
            assert state(server, "none")["cameras"] == 1
            until(lambda: "your camera" in page.locator("#info").text_content(), "camera shown",
                  explain=lambda: said(page, server))
            camera = page.evaluate("() => target")  # the page's name for its camera session
            until(lambda: state(server, camera)["session"], "the camera's first frame",
                  explain=lambda: said(page, server))
            time.sleep(2.0)
            stylized = look(page)
            page.get_by_role("checkbox", name="Bypass").check()
            settle(page, server, "bypass", True, target=camera)
            assert page.locator("#size").input_value() == "64"  # the working size chosen stays shown, not blank
            raw = look(page)
            assert np.abs(raw - clip_mean).max() < 20, (raw, clip_mean)  # the clip itself, through the server
            assert np.abs(stylized - clip_mean).max() > 2 * np.abs(raw - clip_mean).max(), (stylized, raw, clip_mean)

            # a second camera is told the server is busy; the first one is not disturbed
            second.get_by_role("switch", name="camera").check()
            until(lambda: "busy" in second.locator("#message").text_content(), "busy message")
            assert not second.get_by_role("switch", name="camera").is_checked()
            until(lambda: second.evaluate("() => pc !== null && pc.connectionState === 'connected'"),
                  "the server's stream back in that tab", explain=lambda: said(second, server))
            time.sleep(1.0)
            assert "busy" in second.locator("#message").text_content()  # the refusal stays to be read
            assert state(server, "none")["cameras"] == 1

            # a closed tab frees its camera session
            page.close()
            until(lambda: state(server, "none")["cameras"] == 0, "the camera session ends", timeout=60)
            until(lambda: state(server)["session"]["viewers"] == 1, "one viewer left", timeout=60)
            browser.close()
    finally:
        assert server.stop() in (0, 130), "".join(server.log[-30:])
    assert not any("Traceback" in line for line in server.log), "".join(server.log)


@pytest.mark.slow
def test_record_button_in_chromium(weights_dir: Path, media: Path, tmp_path: Path) -> None:
    """The page's record button: started, stopped, and the download link gives an mp4 of moving stylized frames."""
    import av

    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    server = Served("--source", "test", "--capture-size", "256x144", "--size", "64", "--fps", "15",
                    "--style", str(media / "style" / "brick.jpg"), weights_dir=weights_dir)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(server.url)
            grab(page)
            page.get_by_role("button", name="Start recording").click()
            until(lambda: page.get_by_role("button", name="Stop recording").count() == 1, "the button says stop")
            until(lambda: state(server, "none")["recording"]["frames"] >= 10, "10 frames recorded")
            page.get_by_role("button", name="Stop recording").click()
            link = page.get_by_role("link", name="Download the recording")
            link.wait_for(timeout=30000)
            page.screenshot(path=str(tmp_path / "recorded.png"))
            with page.expect_download() as download:
                link.click()
            assert download.value.suggested_filename.endswith(".mp4")
            with av.open(download.value.path()) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            assert len(frames) >= 10 and frames[0].shape == (144, 256, 3)
            assert np.abs(frames[-1].astype(np.float32) - frames[0]).mean() > 2  # it moves
            assert page.get_by_role("button", name="Start recording").count() == 1
            browser.close()
    finally:
        assert server.stop() in (0, 130), "".join(server.log[-30:])
