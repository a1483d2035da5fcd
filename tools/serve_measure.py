"""`streamer serve` measured on this machine, everything on 127.0.0.1, in headless Chromium (Debian's chromium):

1. the browser-camera round trip: the page's camera is a canvas (640x360, 30 fps) whose two halves swap black and
   white once a second; the page times each swap from the moment it is drawn to the moment the stylized video coming
   back shows it (requestVideoFrameCallback), i.e. everything but the physical camera: browser encode, WebRTC up,
   decode, the session (engine), encode, WebRTC down, decode, display. Also: frames shown per second by the page and
   the engine's own rate.
2. what more viewers of the server's source cost: 1, 2 and 5 tabs on the test pattern; the server process's CPU
   (share of one core, from /proc), the engine rate, and the frames each tab shows per second. Chromium runs on the
   same cores, so its decoding of N streams is in the figures too.

    python -m tools.serve_measure --shared ../shared [--size auto] [--seconds 20]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from tools.shared import shared_dir

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection"]

CANVAS_CAMERA = """
window.__marks = []; window.__seen = []; window.__shown = 0;
navigator.mediaDevices.getUserMedia = async () => {
  const c = document.createElement('canvas'); c.width = 640; c.height = 360;
  const g = c.getContext('2d');
  let phase = 0, last = performance.now();
  const draw = () => {
    const now = performance.now();
    if (now - last > 1000) { phase ^= 1; last = now; window.__marks.push([now, phase]); }
    g.fillStyle = phase ? '#f0f0f0' : '#101010'; g.fillRect(0, 0, 320, 360);
    g.fillStyle = phase ? '#101010' : '#f0f0f0'; g.fillRect(320, 0, 320, 360);
    g.fillStyle = '#808080'; g.fillRect((now / 8) % 600, 160, 40, 40);
  };
  draw(); setInterval(draw, 1000 / 30);
  return c.captureStream(30);
};
window.__watch = () => {
  const v = document.getElementById('video');
  const small = document.createElement('canvas'); small.width = 32; small.height = 18;
  const g = small.getContext('2d');
  let prev = null;
  const tick = (now, meta) => {
    window.__shown++;
    g.drawImage(v, 0, 0, 32, 18);
    const d = g.getImageData(0, 0, 32, 18).data;
    let left = 0, right = 0;
    for (let y = 0; y < 18; y++) for (let x = 0; x < 32; x++) {
      const i = 4 * (y * 32 + x), l = d[i] + d[i + 1] + d[i + 2];
      if (x < 12) left += l; else if (x >= 20) right += l;
    }
    const phase = left > right ? 1 : 0;
    if (prev !== null && phase !== prev) window.__seen.push([performance.now(), phase]);
    prev = phase;
    v.requestVideoFrameCallback(tick);
  };
  v.requestVideoFrameCallback(tick);
};
"""


class Server:
    def __init__(self, shared: Path, *flags: str) -> None:
        style = shared / "media" / "style"
        argv = [sys.executable, "-m", "streamer", "serve", "--no-browser", "--port", "0", "--model", "microast",
                "--weights-dir", str(shared / "weights"), "--style", str(style / "la_muse.jpg"),
                str(style / "brick.jpg"), *flags]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            m = re.search(r"open (\S+)", line)
            if m:
                self.url = m[1]
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def state(self, target: str = "server") -> dict:
        with urllib.request.urlopen(self.url.rstrip("/") + f"/api/state?target={target}", timeout=10) as r:
            return json.loads(r.read())

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def round_trip(shared: Path, size: str, seconds: float) -> dict:
    server = Server(shared, "--source", "none", "--size", size, "--alpha", "0")  # the swap stays visible
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_context(bypass_csp=True).new_page()  # wait_for_function evaluates strings
            page.add_init_script(CANVAS_CAMERA)
            page.goto(server.url)
            page.get_by_role("switch", name="camera").check()
            page.wait_for_function("() => document.getElementById('video').videoWidth > 0", timeout=60000)
            time.sleep(5)  # the engine settles (--size auto finds its rung)
            page.evaluate("() => { window.__marks = []; window.__seen = []; window.__watch(); }")
            shown0, t0 = page.evaluate("() => window.__shown"), time.perf_counter()
            target = page.evaluate("() => document.querySelector('#stat-size').textContent")
            time.sleep(seconds)
            shown = (page.evaluate("() => window.__shown") - shown0) / (time.perf_counter() - t0)
            marks, seen = page.evaluate("() => [window.__marks, window.__seen]")
            engine = page.evaluate("() => document.getElementById('stat-fps').textContent")
            browser.close()
    finally:
        server.stop()
    delays = []
    for t_seen, phase in seen:
        before = [t for t, ph in marks if ph == phase and t <= t_seen]
        if before:
            delays.append(t_seen - before[-1])
    delays = [d for d in delays if d < 1000]  # a swap seen after the next one: missed, not a delay
    return {"size": size, "working size": target, "flips": len(marks), "seen": len(delays),
            "latency_ms_median": round(statistics.median(delays)) if delays else None,
            "latency_ms_min": round(min(delays)) if delays else None,
            "latency_ms_max": round(max(delays)) if delays else None,
            "page_frames_per_s": round(shown, 1), "engine": engine}


def viewers(shared: Path, counts: list[int], seconds: float) -> list[dict]:
    server = Server(shared, "--source", "test")
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            pages = []
            context = browser.new_context(bypass_csp=True)
            for n in counts:
                while len(pages) < n:
                    page = context.new_page()
                    page.goto(server.url)
                    page.wait_for_function("() => document.getElementById('video').videoWidth > 0", timeout=60000)
                    pages.append(page)
                time.sleep(5)
                frames0 = [pg.evaluate("() => document.getElementById('video').getVideoPlaybackQuality()"
                                       ".totalVideoFrames") for pg in pages]
                cpu0, t0 = server.cpu_seconds(), time.perf_counter()
                time.sleep(seconds)
                cpu1, t1 = server.cpu_seconds(), time.perf_counter()
                frames1 = [pg.evaluate("() => document.getElementById('video').getVideoPlaybackQuality()"
                                       ".totalVideoFrames") for pg in pages]
                st = server.state()["session"]
                rows.append({"viewers": n, "server_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0)),
                             "engine_fps": st["engine_fps"], "working_size": st["size"],
                             "tab_fps": [round((b - a) / (t1 - t0), 1) for a, b in zip(frames0, frames1)]})
            browser.close()
    finally:
        server.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=None)
    ap.add_argument("--size", default="auto")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--viewers", default="1,2,5")
    ap.add_argument("--skip-round-trip", action="store_true")
    a = ap.parse_args()
    shared = a.shared or shared_dir()
    if not a.skip_round_trip:
        print(json.dumps({"round_trip": round_trip(shared, a.size, a.seconds)}), flush=True)
    if a.viewers:
        print(json.dumps({"viewers": viewers(shared, [int(n) for n in a.viewers.split(",")], a.seconds)}), flush=True)


if __name__ == "__main__":
    main()
