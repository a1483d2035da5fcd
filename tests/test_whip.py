"""`streamer live --stream whip://...`: a real WebRTC endpoint on 127.0.0.1 (aiohttp + aiortc in a subprocess,
tests/whip_server.py, started and stopped by the test by PID) answers FFmpeg's WHIP offer and decodes what arrives.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.avclock import make_clip
from tests.fakes import stand_in_model
from tests.test_live import FakeStylizer
from tests.test_streams import ROOT, free_port, listening, run_cli

pytest.importorskip("aiortc")
pytest.importorskip("aiohttp")


class WhipEndpoint:
    """tests/whip_server.py in a subprocess: one publisher; on its DELETE, a JSON report of what it received."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"whip://127.0.0.1:{self.port}/whip"
        self.out = tmp_path / "whip.json"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "whip_server.py"), str(self.port),
                                      str(self.out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the test WHIP endpoint did not start: {self.proc.stderr.read().decode()[-500:]}")
            time.sleep(0.05)

    def report(self, timeout: float = 30) -> dict:
        """What it received, once the publisher said goodbye (the endpoint exits then)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail("the WHIP endpoint got no DELETE: the stream did not end cleanly")
        assert rc == 0, self.proc.stderr.read().decode()[-1000:]
        return json.loads(self.out.read_text())

    def picture(self) -> np.ndarray:
        return np.load(str(self.out) + ".npy")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def whip(tmp_path):
    endpoint = WhipEndpoint(tmp_path)
    yield endpoint
    endpoint.stop()


def test_a_whip_stream_reaches_a_webrtc_endpoint_with_the_stylized_picture_and_the_sound(tmp_path, whip, weights_dir,
                                                                                         media, capsys):
    clip = tmp_path / "marks.mp4"
    make_clip(clip, seconds=4.0, fps=30)  # tone bursts at 1, 2 and 3 s
    rc = run_cli("--source", str(clip), "--stream", whip.url, "--size", "64", "--max-frames", "90",
                 "--style", str(media / "style" / "la_muse.jpg"), "--weights-dir", str(weights_dir))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "reconnecting" not in err and "gave up" not in err, err  # connected at the first try
    got = whip.report()
    assert got["state"] == "connected"
    assert {"H264/90000", "opus/48000/2"} <= set(got["codecs"])  # what the endpoint accepted of the offer
    # WebRTC's media on 127.0.0.1 only: the endpoint's candidates and the pair the packets took
    assert got["local_candidates"] and set(got["local_candidates"]) == {"127.0.0.1"}, got
    assert got["pair"] == ["127.0.0.1", "127.0.0.1"], got
    # the pictures: a constant 30 fps (a frame repeated while the engine is slower), less the first ones queued
    # past a second while DTLS shook hands
    assert 30 <= got["video_frames"] <= 270, got
    picture = whip.picture()
    assert picture.std() > 10 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 50  # stylized, not the clip's
    # two flat colours
    # the sound: Opus at 48 kHz, a second and more of it, with the clip's tone bursts in it
    assert got["audio_rate"] == 48000 and got["audio_samples"] / 48000 > 1.0, got
    assert got["audio_peak"] > 0.3, got


def test_whip_without_the_cryptography_package_is_one_line_before_anything_loads(monkeypatch, capsys):
    import importlib.util

    import streamer.sinks.urls as urls

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(urls.importlib.util, "find_spec",
                        lambda name, *args: None if name == "cryptography" else find_spec(name, *args))
    with stand_in_model(FakeStylizer(), any_style_path=True) as stand_in:
        rc = run_cli("--source", "test", "--stream", "whip://127.0.0.1:9/whip", "--max-frames", "5",
                     "--style", "x.png")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "whip:// needs the cryptography package" in err[0], err
    assert stand_in.built == 0
