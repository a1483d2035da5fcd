"""`streamer serve` in a child process for tests: started on a free port, its printed address read, stopped after."""
from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Served:
    """A running ``streamer serve``; ``url`` is the address it printed (with its token, if any)."""

    def __init__(self, *flags: str, weights_dir: Path, timeout: float = 120.0) -> None:
        argv = [sys.executable, "-m", "streamer", "serve", "--no-browser", "--port", "0", "--model", "microast",
                "--weights-dir", str(weights_dir), *flags]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.log: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.url = ""
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                m = re.search(r"streamer serve: open (\S+)", line)
                if m:
                    self.url = m[1]
                    break
        finally:
            timer.cancel()
        if not self.url:
            self.stop()
            raise RuntimeError("streamer serve did not start:\n" + "".join(self.log[-30:]))
        m = re.match(r"(https?://[^/]+)/(?:\?token=(\S+))?", self.url)
        self.base, self.token = m[1], m[2]

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
                token: bool = True) -> tuple[int, dict | bytes]:
        """(status, JSON or bytes): never raises for a 4xx/5xx."""
        headers = dict(headers or {})
        if token and self.token:
            headers.setdefault("X-Streamer-Token", self.token)
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        context = ssl._create_unverified_context() if self.base.startswith("https") else None  # noqa: SLF001
        try:
            with urllib.request.urlopen(req, timeout=60, context=context) as r:
                status, raw, kind = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, raw, kind = e.code, e.read(), e.headers.get("Content-Type", "")
        return status, json.loads(raw) if "json" in kind else raw

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class CountingCamera:
    """A pyvirtualcam backend for a served child process (``--vcam-backend tests.serve_helpers:CountingCamera``):
    on close it writes how many frames it got and how varied the last one was to $STREAMER_TEST_VCAM_LOG."""

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device, **kw) -> None:
        self.width, self.height = width, height
        self.frames, self.spread = 0, 0.0

    def send(self, frame) -> None:
        self.frames += 1
        self.spread = float(frame.reshape(self.height, self.width, 3).std())

    def close(self) -> None:
        Path(os.environ["STREAMER_TEST_VCAM_LOG"]).write_text(
            json.dumps({"frames": self.frames, "spread": self.spread, "size": [self.width, self.height]}))

    def device(self) -> str:
        return "counting"

    def native_fourcc(self):
        return None
