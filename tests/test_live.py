"""`streamer live` without a camera or a display: test pattern and file sources into a recording and a
registered pyvirtualcam test backend; latest-frame-wins under a slow engine; camera errors; no display;
a real window under Xvfb when Xvfb is installed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

import streamer.live.capture as capture
from engines.errors import InputError
from streamer.cli import main
from streamer.live.capture import PatternSource
from streamer.live.hotkeys import LiveState
from streamer.live.session import LiveSession
from streamer.live.slot import LatestSlot
from streamer.options import Style
from tests.fakes import stand_in_model

ROOT = Path(__file__).resolve().parents[1]


class FakeCamera:
    """A pyvirtualcam backend that keeps what it is sent (registered with --vcam-backend tests.test_live:FakeCamera)."""

    instances: list[FakeCamera] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device, **kw) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.frames: list[np.ndarray] = []
        self.closed = False
        self.fail_at: int | None = None
        FakeCamera.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.reshape(self.height, self.width, 3).copy())
        if self.fail_at is not None and len(self.frames) >= self.fail_at:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C here

    def close(self) -> None:
        self.closed = True

    def device(self) -> str:
        return "fake"

    def native_fourcc(self):
        return None


class FakeStylizer:
    """Instant (or deliberately slow) stand-in where the model does not matter.

    A style code ``{"fill": v}`` paints the frame v; ``{"fill": None}`` passes it through unchanged.
    """

    name = "fake"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def stylize(self, frame, code, alpha=1.0, keep_color=False):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if code["fill"] is None:
            return frame.copy()
        return np.full_like(frame, code["fill"])


def fake_styles(*fills) -> list[Style]:
    return [Style(f"s{i}", Path(f"s{i}.png"), {"fill": f}) for i, f in enumerate(fills)]


@pytest.fixture
def fake_model():
    """`streamer live` with the FakeStylizer and two styles: pass-through and grey 128."""
    stylizer = FakeStylizer()
    with stand_in_model(stylizer, lambda paths: fake_styles(None, 128)[:max(1, len(paths))], any_style_path=True):
        yield stylizer


@pytest.fixture(autouse=True)
def _fresh_cameras():
    FakeCamera.instances.clear()
    yield
    FakeCamera.instances.clear()


@pytest.fixture
def style_image(media) -> str:
    return str(media / "style" / "la_muse.jpg")


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def timestamps_of(path: Path) -> list[float]:
    """Each frame's presentation time in seconds, in decode order."""
    with av.open(str(path)) as c:
        return [float(f.pts * f.time_base) for f in c.decode(video=0)]


def distinct_in_a_row(frames: list[np.ndarray]) -> bool:
    """No frame repeats the one before it (encoding noise aside)."""
    return all(np.abs(a.astype(int) - b.astype(int)).mean() > 1.0 for a, b in zip(frames, frames[1:]))


def run_cli(*argv: str) -> int:
    return main(["live", "--no-stdin", *argv])


# -- the real model ----------------------------------------------------------------------------
def test_test_pattern_into_vcam_and_recording_with_microast(tmp_path, weights_dir, style_image, capsys):
    out = tmp_path / "x.mp4"
    rc = run_cli("--source", "test", "--capture-size", "160x96", "--vcam", "--vcam-backend",
                 "tests.test_live:FakeCamera", "--record", str(out), "--max-frames", "20", "--style", style_image,
                 "--style-size", "128", "--model", "microast", "--weights-dir", str(weights_dir))
    assert rc == 0, capsys.readouterr().err
    (cam,) = FakeCamera.instances
    assert cam.closed and len(cam.frames) == 20
    assert all(f.shape == (96, 160, 3) and f.dtype == np.uint8 for f in cam.frames)
    recorded = frames_of(out)
    err = capsys.readouterr().err
    # the vcam gets a frame every tick; the recording each stylized frame once (the engine may be slower)
    assert 1 <= len(recorded) <= 20 and recorded[0].shape == (96, 160, 3)
    assert f"wrote {out} ({len(recorded)} frames)" in err and distinct_in_a_row(recorded)
    assert cam.frames[-1].std() > 10  # a picture, not a blank frame
    assert "20 frames out" in err


def test_file_source_with_microast(tmp_path, weights_dir, clip, style_image, capsys):
    out = tmp_path / "clip.mp4"
    rc = run_cli("--source", str(clip), "--capture-size", "160x90", "--record", str(out), "--max-frames", "12",
                 "--style", style_image, "--style-size", "128", "--model", "microast", "--weights-dir",
                 str(weights_dir))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "file" in err and "160x90" in err
    recorded = frames_of(out)
    assert len(recorded) == 12 and recorded[0].shape == (90, 160, 3)


# -- outputs, with a fake model ------------------------------------------------------------------
def test_vcam_gets_rgb_at_the_capture_or_out_size(tmp_path, fake_model, monkeypatch):
    """Pass-through style: the pattern's red/green/blue bars must arrive as red/green/blue (not BGR)."""
    monkeypatch.setenv("STREAMER_VCAM_BACKEND", "tests.test_live:FakeCamera")  # the documented env route
    assert run_cli("--source", "test", "--capture-size", "160x96", "--vcam", "--max-frames", "5",
                   "--style", "x.png") == 0
    frame = FakeCamera.instances[0].frames[-1]
    assert frame.shape == (96, 160, 3)
    assert tuple(frame[2, 20]) == (255, 0, 0) and tuple(frame[2, 60]) == (0, 255, 0)
    assert tuple(frame[2, 100]) == (0, 0, 255)
    FakeCamera.instances.clear()
    assert run_cli("--source", "test", "--capture-size", "160x96", "--vcam", "--out-size", "320x192",
                   "--max-frames", "3", "--style", "x.png") == 0
    assert FakeCamera.instances[0].frames[-1].shape == (192, 320, 3)


def test_no_virtual_camera_driver_says_how_to_get_one(fake_model, monkeypatch, capsys):
    class Missing:
        def __init__(self, **kw):
            raise RuntimeError("No v4l2 loopback device found at /dev/video[0-99]")

    import pyvirtualcam

    monkeypatch.setitem(pyvirtualcam.camera.BACKENDS, "missing", Missing)
    rc = run_cli("--source", "test", "--vcam", "--vcam-backend", "missing", "--max-frames", "3", "--style", "x.png")
    err = capsys.readouterr().err
    assert rc == 3
    assert "no virtual camera" in err and ("v4l2loopback" in err or "OBS" in err) and "Traceback" not in err


def test_ctrl_c_finalises_the_recording(tmp_path, fake_model, capsys):
    out = tmp_path / "cut.mp4"

    class Interrupting(FakeCamera):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.fail_at = 8

    import pyvirtualcam

    pyvirtualcam.register_backend("interrupting", Interrupting)
    rc = run_cli("--source", "test", "--capture-size", "160x96", "--vcam", "--vcam-backend", "interrupting",
                 "--record", str(out), "--max-frames", "100", "--style", "x.png")
    assert rc == 130
    recorded = frames_of(out)  # the new frames before the interrupt (at most one a tick), in a playable file
    assert 1 <= len(recorded) <= 7 and f"wrote {out} ({len(recorded)} frames)" in capsys.readouterr().err
    assert FakeCamera.instances[0].closed
    assert [p.name for p in tmp_path.iterdir()] == ["cut.mp4"]  # no temp file left behind


def test_disk_full_while_recording_is_one_line(tmp_path, fake_model, monkeypatch, capsys):
    import streamer.videoio as videoio

    real_write = videoio.VideoWriter.write

    def filling_write(self, frame, pts=None):
        if self.frames >= 3:
            self.abort()
            raise InputError(f"cannot write {self.path}: disk full (nothing was written)")
        real_write(self, frame, pts)

    monkeypatch.setattr(videoio.VideoWriter, "write", filling_write)
    out = tmp_path / "full.mp4"
    rc = run_cli("--source", "test", "--capture-size", "160x96", "--vcam", "--vcam-backend",
                 "tests.test_live:FakeCamera", "--record", str(out), "--max-frames", "50", "--style", "x.png")
    err = capsys.readouterr().err
    assert rc == 2
    assert [line for line in err.splitlines() if "error" in line] == \
        [f"streamer: error: cannot write {out}: disk full (nothing was written)"]
    assert FakeCamera.instances[0].closed  # the other output was still closed properly
    assert not any(tmp_path.iterdir())


def test_record_alone_holds_n_distinct_frames_at_their_capture_times(tmp_path, fake_model, capsys):
    """A recording alone takes each new frame when it comes: --max-frames N gives N frames, none repeated,
    timestamped at capture (the pattern is paced at --fps, so they are at least ~1/fps apart)."""
    out = tmp_path / "rec.mp4"
    fake_model.delay = 0.1  # an engine slower than --fps 30, as on a CPU
    assert run_cli("--source", "test", "--capture-size", "160x96", "--record", str(out), "--max-frames", "12",
                   "--style", "x.png") == 0
    recorded, pts = frames_of(out), timestamps_of(out)
    assert len(recorded) == 12 and distinct_in_a_row(recorded)
    assert pts[0] == 0 and all(b > a for a, b in zip(pts, pts[1:]))
    assert pts[-1] >= 0.9 * 11 * 0.1  # real time: the engine's pace, not squeezed to 1/fps


@pytest.mark.parametrize("name, codec", [("x.webm", "vp9"), ("x.mkv", "hevc")])
def test_record_takes_render_encoder_options_and_fits_the_codec_to_the_container(tmp_path, fake_model, name, codec):
    out = tmp_path / name
    extra = ("--codec", "libx265", "--crf", "30", "--preset", "ultrafast") if codec == "hevc" else ()
    assert run_cli("--source", "test", "--capture-size", "160x96", "--record", str(out), "--max-frames", "4",
                   "--style", "x.png", *extra) == 0
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == codec
    assert len(frames_of(out)) == 4


def test_record_encoder_mistakes_are_one_line_before_anything_loads(tmp_path, fake_model, capsys):
    webm = tmp_path / "x.webm"
    assert run_cli("--source", "test", "--record", str(webm), "--codec", "libx264", "--style", "x.png") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["streamer: error: a .webm file cannot hold libx264 video; use another codec (--codec) or "
                   "container (e.g. .mkv)"]
    assert run_cli("--source", "test", "--record", str(tmp_path / "x.mp4"), "--crf", "99", "--style", "x.png") == 2
    assert capsys.readouterr().err.strip() == "streamer: error: --crf must be between 0 and 63 (x264: 0-51)"
    assert fake_model.calls == 0 and not any(tmp_path.iterdir())


class GraySource:
    """Frame i is two flat greys, 8 * (i % 30) + 8 left and 8 * (i // 30 % 30) + 8 right: its index can be
    read back from a recording (up to 900 frames)."""

    live = False

    def __init__(self, fps: float = 30.0) -> None:
        self.width, self.height, self.fps, self.count = 64, 48, fps, 0

    def read(self) -> np.ndarray:
        frame = np.full((self.height, self.width, 3), 8 * (self.count % 30) + 8, np.uint8)
        frame[:, self.width // 2:] = 8 * (self.count // 30 % 30) + 8
        self.count += 1
        return frame

    def describe(self) -> str:
        return "grey"

    def release(self) -> None:
        pass


def test_recording_is_vfr_at_capture_times_while_the_vcam_keeps_a_steady_rate(tmp_path):
    """What a 60-frame CPU recording got wrong (6 distinct frames, each repeated at 1/fps): with an engine
    slower than the output rate, the steady output still gets every tick, the recording each stylized frame
    once, stamped with its capture time to the millisecond."""
    from streamer.sinks import Recording

    captured: dict[int, float] = {}
    session = LiveSession(GraySource(), FakeStylizer(delay=0.15), fake_styles(None), LiveState(1),
                          outputs=[vcam := Collector(), Recording(tmp_path / "r.mp4", 64, 48, 30)], fps=30,
                          max_frames=20)
    put = session.in_slot.put

    def spy(frame):
        captured[frame.index] = frame.t_capture
        put(frame)

    session.in_slot.put = spy
    summary = session.run()
    assert summary.frames_out == 20 and len(vcam.frames) == 20  # steady: one frame a tick
    recorded, pts = frames_of(tmp_path / "r.mp4"), timestamps_of(tmp_path / "r.mp4")
    assert 2 <= len(recorded) < 20 and distinct_in_a_row(recorded)  # each stylized frame once, no repeats
    grey = lambda half: round((float(np.median(half)) - 8) / 8)  # noqa: E731
    indices = [grey(f[:, :32]) + 30 * grey(f[:, 32:]) for f in recorded]
    t0 = captured[indices[0]]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    for i, t in zip(indices, pts):
        assert abs(t - (captured[i] - t0)) <= 0.0015, (i, t, captured[i] - t0)


def test_record_refuses_to_overwrite(tmp_path, fake_model, capsys):
    out = tmp_path / "x.mp4"
    out.write_bytes(b"keep me")
    assert run_cli("--source", "test", "--record", str(out), "--style", "x.png") == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"


# -- the session ---------------------------------------------------------------------------------
def type_after(session: LiveSession, out: Collector, frames: int, *lines: str) -> None:
    """As if ``lines`` were typed on the session's stdin once ``out`` has ``frames`` frames."""
    typed: list[str] = []

    def drain() -> list[str]:
        if len(out.frames) >= frames and not typed:
            typed.extend(line + "\n" for line in lines)
            return typed
        return []

    session.stdin.drain = drain


class Collector:
    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.closed = False

    def send(self, frame) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        self.closed = True


def test_slot_keeps_only_the_newest_and_delivers_it_before_the_error():
    slot = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.pending == 1 and slot.dropped == 4
    slot.close(RuntimeError("camera gone"))
    assert slot.take(timeout=0) == 4  # the last good frame still gets through
    with pytest.raises(RuntimeError, match="camera gone"):
        slot.take(timeout=1)
    assert slot.put_count == 5


def test_latest_frame_wins_under_a_slow_engine():
    """A 100 fps source and a 10 fps engine: frames are dropped and counted, latency stays ~one step."""
    step = 0.1
    stylizer = FakeStylizer(delay=step)
    source = PatternSource(64, 48, fps=100)
    out = Collector()
    session = LiveSession(source, stylizer, fake_styles(None), LiveState(1), outputs=[out], fps=30, max_frames=45)
    pending: list[int] = []
    sampler_stop = threading.Event()

    def sample():
        while not sampler_stop.is_set():
            pending.append(session.in_slot.pending)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        summary = session.run()
    finally:
        sampler_stop.set()
        sampler.join()
    assert max(pending) <= 1  # never more than one frame waiting, however slow the engine
    assert summary.frames_out == 45 and out.closed
    assert summary.frames_captured > 3 * summary.frames_stylized  # the source really was faster
    # every captured frame was either stylized or dropped (the last one may still wait in the slot)
    assert summary.frames_captured - summary.frames_stylized - summary.dropped in (0, 1)
    assert summary.latency_ms < 3 * step * 1000  # a queue would have grown to seconds by now
    assert not session.capture.is_alive() and not session.engine.is_alive()


def test_stdin_commands_switch_style_on_the_next_frame_and_reset_temporal(tmp_path):
    class Temporal:
        resets = 0

        def process(self, source, stylized):
            return stylized

        def reset(self):
            Temporal.resets += 1

    stylizer = FakeStylizer(delay=0.01)
    out = Collector()
    session = LiveSession(PatternSource(64, 48, fps=60), stylizer, fake_styles(10, 200), LiveState(2), outputs=[out],
                          fps=30, max_frames=30, temporal=Temporal(), snapshot_dir=tmp_path, stdin=True)
    type_after(session, out, 6, "2", "s")  # after six frames: switch to style 2, take a snapshot
    session.run()
    fills = [int(f[0, 0, 0]) for f in out.frames]
    assert fills[0] == 10 and fills[-1] == 200
    switch = fills.index(200)
    assert all(v == 10 for v in fills[:switch]) and all(v == 200 for v in fills[switch:])
    assert 6 <= switch <= 10  # typed after frame 6; shows within a step or two (timing is noisy on a busy CPU)
    assert Temporal.resets == 2  # once at the start, once at the switch
    (snap,) = tmp_path.glob("streamer-*.png")
    assert snap.stat().st_size > 0


# -- sources ---------------------------------------------------------------------------------------
class FakeCapture:
    """cv2.VideoCapture stand-in: a camera that delivers ``good`` frames, then nothing, and never comes back."""

    opened = 0
    released = 0
    good = 5

    def __init__(self, *args) -> None:
        FakeCapture.opened += 1
        self.first = FakeCapture.opened == 1
        self.n = 0

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.first

    def set(self, *args) -> bool:
        return True

    def get(self, prop) -> float:
        return 30.0

    def read(self):
        self.n += 1
        if self.first and self.n <= FakeCapture.good:
            return True, np.full((48, 64, 3), 90, np.uint8)
        return False, None

    def release(self) -> None:
        FakeCapture.released += 1


@pytest.fixture
def fake_capture(monkeypatch):
    FakeCapture.opened = FakeCapture.released = 0
    monkeypatch.setattr(capture.cv2, "VideoCapture", FakeCapture)
    monkeypatch.setattr(capture, "RETRY_DELAY", 0.01)
    return FakeCapture


def test_camera_unplugged_mid_stream_gives_a_clear_error(tmp_path, fake_model, fake_capture, capsys):
    out = tmp_path / "cam.mp4"
    rc = run_cli("--source", "0", "--record", str(out), "--style", "x.png", "--fps", "100")
    err = capsys.readouterr().err
    assert rc == 3
    assert "camera 0 stopped delivering frames" in err and "Traceback" not in err
    assert fake_capture.opened >= 1 + capture.RETRIES  # it tried to re-open
    assert fake_capture.released >= fake_capture.opened  # and released every handle
    assert len(frames_of(out)) >= 1  # what was recorded before the loss is kept, playable


def test_missing_camera(tmp_path, fake_model, fake_capture, capsys):
    fake_capture.opened = 1  # so the next capture is not "first": it never opens
    assert run_cli("--source", "3", "--record", str(tmp_path / "never.mp4"), "--style", "x.png") == 3
    err = capsys.readouterr().err
    assert "cannot open camera 3" in err and "--source test" in err
    assert not any(tmp_path.iterdir())


def test_missing_file_source(tmp_path, fake_model, capsys):
    assert run_cli("--source", str(tmp_path / "nope.mp4"), "--record", str(tmp_path / "x.mp4"),
                   "--style", "x.png") == 2
    assert "no such file" in capsys.readouterr().err


def test_file_source_ends_cleanly(tmp_path, fake_model, clip, capsys):
    """A short file without --loop: the session stops when it ends, exit 0."""
    short = tmp_path / "short.mp4"
    with av.open(str(clip)) as src, av.open(str(short), "w") as dst:
        stream = dst.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 160, 90, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i == 6:
                break
            dst.mux(stream.encode(frame.reformat(160, 90, "yuv420p")))
        dst.mux(stream.encode(None))
    out = tmp_path / "out.mp4"
    assert run_cli("--source", str(short), "--record", str(out), "--style", "x.png") == 0
    assert "source ended" in capsys.readouterr().err
    assert len(frames_of(out)) >= 4  # all six frames, give or take the output clock's jitter


# -- display -------------------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY/WAYLAND_DISPLAY is how Linux says it")
def test_no_display_says_to_use_vcam_or_record(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    for extra in ([], ["--window", "--record", "never.mp4"]):
        assert run_cli("--source", "test", "--style", "x.png", *extra) == 3
        err = capsys.readouterr().err
        assert "no display" in err and "--vcam" in err and "--record" in err and "Traceback" not in err
    assert not Path("never.mp4").exists()


@pytest.fixture
def xvfb():
    if not shutil.which("Xvfb"):
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    pytest.importorskip("tkinter", reason="the window needs tkinter")
    for number in range(150, 170):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    proc = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            break
        time.sleep(0.05)
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


def test_real_window_under_xvfb(xvfb, weights_dir, style_image):
    """The real CLI (PyAV loaded, microast) opens a window on an X display and runs to --max-frames."""
    env = {**os.environ, "DISPLAY": xvfb}
    env.pop("WAYLAND_DISPLAY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "streamer", "live", "--source", "test", "--capture-size", "160x96", "--window", "--hud",
         "--max-frames", "15", "--style", style_image, "--style-size", "128", "--model", "microast",
         "--weights-dir", str(weights_dir)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "window open (tk)" in proc.stderr and "15 frames out" in proc.stderr


def test_live_temporal_option_builds_a_stabilizer() -> None:
    from streamer.cli import build_parser
    from streamer.temporal import make_temporal as temporal_filter
    from streamer.temporal import TemporalStabilizer

    parser = build_parser()
    on = parser.parse_args(["live", "--style", "x.jpg", "--temporal", "--temporal-strength", "0.5"])
    off = parser.parse_args(["live", "--style", "x.jpg"])
    assert isinstance(temporal_filter(on), TemporalStabilizer)
    assert temporal_filter(off) is None


def test_a_signal_while_live_starts_its_threads_still_closes_the_outputs(monkeypatch):
    """Ctrl-C/SIGTERM inside the engine thread's start(): the session still shuts down (the capture thread
    stopped, the recording closed) and the interrupt reaches the caller, not a RuntimeError from a join."""
    real_start = threading.Thread.start
    calls = []

    def start_then_a_signal(thread: threading.Thread) -> None:
        calls.append(thread.name)
        if len(calls) == 2:
            real_start(thread)
            thread._started.clear()  # noqa: SLF001 - as seen while start() still waits for it
            real_start(threading.Timer(0.05, thread._started.set))  # noqa: SLF001
            raise KeyboardInterrupt
        real_start(thread)

    out = Collector()
    session = LiveSession(PatternSource(64, 48, fps=100), FakeStylizer(), fake_styles(None), LiveState(1),
                          outputs=[out], fps=30, max_frames=45)
    monkeypatch.setattr(threading.Thread, "start", start_then_a_signal)
    with pytest.raises(KeyboardInterrupt):
        session.run()
    monkeypatch.undo()
    assert out.closed and session.summary.stop_reason == "interrupted"
    assert not session.capture.is_alive() and not session.engine.is_alive()


def test_a_signal_while_live_finishes_its_recording_keeps_the_recording(tmp_path, monkeypatch):
    """The session ended (q, --max-frames, the source's end) and the recording is being finished: a SIGTERM then
    left a hidden .part and no file. Now the recording is finished whole, then the stop is reported."""
    import signal

    from streamer.signals import Interrupted, stop_signals_interrupt
    from streamer.sinks import Recording

    class SignalledRecording(Recording):
        def close(self) -> None:
            signal.raise_signal(signal.SIGTERM)  # while the encoder is flushed
            super().close()

    rec = tmp_path / "rec.mp4"
    session = LiveSession(PatternSource(64, 48, fps=100), FakeStylizer(), fake_styles(None), LiveState(1),
                          outputs=[SignalledRecording(rec, 64, 48, 30)], fps=30, max_frames=10)
    try:
        with stop_signals_interrupt():
            with pytest.raises(Interrupted):
                session.run()
    except KeyboardInterrupt:
        pytest.fail(f"the signal cut the recording's finish: {sorted(os.listdir(tmp_path))}")
    assert sorted(os.listdir(tmp_path)) == ["rec.mp4"] and session.summary.stop_reason == "interrupted"
    with av.open(str(rec)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10
