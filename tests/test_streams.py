"""`streamer live --stream URL` and sound: real servers on 127.0.0.1, started and stopped by the test (by PID).

An RTMP server is FFmpeg's listen mode through PyAV in a subprocess (tests/rtmp_server.py) that saves what it
receives; a microphone is a real PulseAudio started by the test with a sine source. A/V offsets are measured
on a clip whose picture and sound mark the same instants (tests/avclock.py).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.cli import main
from tests.avclock import make_clip, offsets, picture_onsets
from tests.fakes import stand_in_model
from tests.test_live import FakeStylizer, fake_styles, frames_of

ROOT = Path(__file__).resolve().parents[1]
SYNC = 0.045  # seconds: EBU R37 asks at most 40 ms early, 60 ms late


def run_cli(*argv: str) -> int:
    return main(["live", "--no-stdin", *argv])


@pytest.fixture
def fake_model():
    """`streamer live` with an instant pass-through stand-in (the picture as captured)."""
    stylizer = FakeStylizer()
    with stand_in_model(stylizer, lambda paths: fake_styles(None), any_style_path=True):
        yield stylizer


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "marks.mp4"
    make_clip(path, seconds=6.0, fps=30)  # five jumps with a burst each, at 1..5 s
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc: a probe would take the one connection)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                return True
    return False


class RtmpServer:
    """tests/rtmp_server.py in a subprocess: one publisher, saved to ``out`` (Matroska)."""

    def __init__(self, tmp_path: Path, port: int | None = None, name: str = "received.mkv") -> None:
        self.port = port or free_port()
        self.url = f"rtmp://127.0.0.1:{self.port}/live/secretkey"
        self.out = tmp_path / name
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "rtmp_server.py"), self.url, str(self.out)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the test RTMP server did not start: {self.proc.stderr.read().decode()[-500:]}")
            time.sleep(0.05)

    def arrivals(self) -> list[tuple[float, float]]:
        path = Path(str(self.out) + ".arrivals")
        if not path.exists():
            return []
        return [tuple(map(float, line.split())) for line in path.read_text().splitlines() if line.count(" ") == 1]

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def rtmp(tmp_path):
    server = RtmpServer(tmp_path)
    yield server
    server.stop()


def sound_of(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        assert c.streams.audio, f"{path.name} has no sound"
        assert c.streams.audio[0].codec_context.sample_rate == 48000
        return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])


# -- a stylized stream and recording, with the file's sound, in sync ---------------------------------------
def test_rtmp_stream_and_recording_carry_the_stylized_picture_and_the_sound_in_sync(tmp_path, rtmp, clip, weights_dir,
                                                                                    media, capsys):
    rec = tmp_path / "rec.mp4"
    rc = run_cli("--source", str(clip), "--stream", rtmp.url, "--record", str(rec), "--size", "64", "--max-frames",
                 "170", "--style", str(media / "style" / "la_muse.jpg"), "--weights-dir", str(weights_dir))
    assert rc == 0
    assert rtmp.wait() == 0  # the stream ended cleanly: the server saw the publisher hang up
    err = capsys.readouterr().err
    assert "secretkey" not in err  # a stream key stays out of the log
    for path in (rec, rtmp.out):
        frames = frames_of(path)
        if path == rec:
            assert len(frames) == 170
        else:  # constant rate: at least every frame sent, repeats filling the engine's gaps
            assert 160 <= len(frames) <= 260
            with av.open(str(path)) as c:
                assert c.streams.video[0].codec_context.name == "h264"
                assert c.streams.audio[0].codec_context.name == "aac"
                assert c.streams.audio[0].codec_context.channels == 2
        picture = frames[len(frames) // 2]
        assert picture.std() > 10 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 50  # stylized, not the clip's
        # two flat colours
        assert np.abs(sound_of(path)).max() > 0.3  # the clip's tone bursts
        found = offsets(path)  # the jumps whose frames all reached the output (a busy CPU drops some)
        assert len(found) >= 2, (path.name, picture_onsets(path), found)
        assert all(abs(o) <= SYNC for o in found), (path.name, found)


def test_a_server_killed_mid_stream_leaves_the_session_and_the_recording_whole(tmp_path, rtmp, fake_model, capsys):
    rec = tmp_path / "rec.mp4"

    def kill_when_streaming() -> None:
        deadline = time.monotonic() + 30
        while len(rtmp.arrivals()) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        rtmp.stop()

    killer = threading.Thread(target=kill_when_streaming)
    killer.start()
    rc = run_cli("--source", "test", "--capture-size", "96x64", "--stream", rtmp.url, "--record", str(rec),
                 "--max-frames", "90", "--style", "x.png")
    killer.join()
    assert rc == 0
    assert len(frames_of(rec)) == 90  # the recording went on, whole
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if "reconnect" in line or "gave up" in line]
    assert len(warnings) == 1 and "reconnecting" in warnings[0], warnings  # one warning, not one a frame
    (summary,) = [line.split("streamer: ", 1)[1] for line in err if line.startswith("streamer: rtmp://127.0.0.1")
                  and "frames" in line]
    sent, dropped = [int(w) for w in summary.split(": ")[1].replace(",", "").split() if w.isdigit()][:2]
    assert sent >= 1 and dropped > 0 and sent + dropped == 90, summary  # every frame counted, sent or dropped


class NoisyStylizer(FakeStylizer):
    """Pictures no encoder can squeeze: a stream at --bitrate fills the sockets' buffers within seconds."""

    def stylize(self, frame, code, alpha=1.0, keep_color=False):
        self.calls += 1
        return np.random.default_rng(self.calls).integers(0, 256, frame.shape, np.uint8)


def test_a_server_that_comes_back_gets_the_stream_again(tmp_path, rtmp, fake_model, capsys):
    """Killed mid-stream and started again on the same port: the sink reconnects (back-off 1 s) and the new server
    receives pictures and sound."""
    rec = tmp_path / "rec.mp4"
    again: list[RtmpServer] = []

    def restart_when_streaming() -> None:
        deadline = time.monotonic() + 30
        while len(rtmp.arrivals()) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        rtmp.stop()
        again.append(RtmpServer(tmp_path, rtmp.port, "again.mkv"))

    restarter = threading.Thread(target=restart_when_streaming)
    restarter.start()
    try:
        rc = run_cli("--source", "test", "--capture-size", "96x64", "--stream", rtmp.url, "--record", str(rec),
                     "--max-frames", "150", "--style", "x.png")
    finally:
        restarter.join()
    assert rc == 0 and len(frames_of(rec)) == 150
    (server,) = again
    try:
        assert server.wait() == 0
    finally:
        server.stop()
    err = capsys.readouterr().err
    assert "connected again" in err and ", 1 reconnect" in err
    assert len(frames_of(server.out)) >= 30  # a second or more of pictures on the new connection
    with av.open(str(server.out)) as c:
        assert c.streams.audio  # and its (silent) sound track


def test_a_server_that_stalls_is_cut_and_the_session_goes_on(tmp_path, rtmp, capsys):
    """A server that stops reading (SIGSTOP) blocks FFmpeg's write for good once the sockets' buffers are full:
    the sink's watchdog cuts it after 5 s, warns once and reconnects; the recording beside it stays whole."""
    rec = tmp_path / "rec.mkv"

    def stop_when_streaming() -> None:
        deadline = time.monotonic() + 30
        while len(rtmp.arrivals()) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(rtmp.proc.pid, signal.SIGSTOP)

    stopper = threading.Thread(target=stop_when_streaming)
    stopper.start()
    try:
        with stand_in_model(NoisyStylizer(), lambda paths: fake_styles(0), any_style_path=True):
            rc = run_cli("--source", "test", "--capture-size", "320x240", "--stream", rtmp.url, "--bitrate", "30000",
                         "--record", str(rec), "--codec", "ffv1", "--max-frames", "360", "--style", "x.png")
    finally:
        stopper.join()
        os.kill(rtmp.proc.pid, signal.SIGCONT)
    assert rc == 0 and len(frames_of(rec)) == 360
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if "reconnect" in line or "gave up" in line]
    assert len(warnings) == 1 and "the server took nothing for 5 s" in warnings[0], err[-3:]
    (summary,) = [line for line in err if line.startswith("streamer: rtmp://127.0.0.1") and "frames," in line]
    assert "dropped" in summary and ", 0 dropped" not in summary


def test_a_server_that_is_not_there_costs_the_other_outputs_nothing(tmp_path, fake_model, capsys):
    rec = tmp_path / "rec.mp4"
    url = f"rtmp://127.0.0.1:{free_port()}/live/x"
    rc = run_cli("--source", "test", "--capture-size", "96x64", "--stream", url, "--stream-retries", "1",
                 "--record", str(rec), "--max-frames", "60", "--style", "x.png")
    assert rc == 0 and len(frames_of(rec)) == 60
    err = capsys.readouterr().err
    assert "reconnecting (up to 1 times" in err and "gave up after 1 reconnects" in err
    assert "/live/***: 0 frames, 60 dropped (gave up)" in err


# -- bad input: one line, before anything loads ---------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (("--stream", "http://example.com/x"), "http:// is not a streaming protocol streamer sends to"),
    (("--stream", "rtmp:///live/x"), "no server named"),
    (("--stream", "rtmp://host:port/live/x"), "the port is not a number"),
    (("--stream", "srt://127.0.0.1:9000"), "this PyAV's FFmpeg cannot send srt://"),
    (("--stream", "live.twitch.tv/app/key"), "not a URL"),
    (("--stream", "rtmp://127.0.0.1/live/x", "--bitrate", "5"), "--bitrate is in kbit/s"),
    (("--record", "{tmp}/r.mp4", "--audio", "default", "--source", "{clip}"), "a file source plays its own sound"),
    (("--record", "{tmp}/r.mp4", "--audio", "alsa:hw:97,0"), "no such ALSA capture device"),
    (("--audio", "default", "--vcam"), "--audio goes into --record or --stream"),
])
def test_stream_and_sound_mistakes_are_one_line_before_anything_loads(tmp_path, clip, fake_model, capsys, argv,
                                                                       message):
    argv = [a.format(tmp=tmp_path, clip=clip) for a in argv]
    if "--source" not in argv:
        argv += ["--source", "test"]
    rc = run_cli(*argv, "--style", "x.png")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("streamer: error: ") and message in err[0], err
    assert fake_model.calls == 0 and not list(tmp_path.glob("r.mp4*"))


def test_help_names_the_protocols_this_ffmpeg_sends(capsys):
    with pytest.raises(SystemExit):
        main(["live", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "This FFmpeg sends: rtmp://, rtmps://" in out


# -- a microphone on a real sound server ----------------------------------------------------------------
@pytest.fixture
def pulse(tmp_path):
    """A private PulseAudio whose null sink plays a 440 Hz sine: its monitor, 'null.monitor', is a microphone
    paced by the server's clock (module-sine-source is not: it delivers 2 s at a time). Stopped by PID."""
    if not shutil.which("pulseaudio") or not shutil.which("parec"):
        pytest.skip("no PulseAudio here (apt install pulseaudio pulseaudio-utils; .ci/run installs them)")
    runtime = tmp_path / "pulse"
    runtime.mkdir()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), HOME=str(runtime), PULSE_RUNTIME_PATH=str(runtime))
    env.pop("PULSE_SERVER", None)
    proc = subprocess.Popen(["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "--disable-shm",
                             "--load=module-native-protocol-unix", "--load=module-null-sink sink_name=null",
                             "--load=module-sine sink=null frequency=440", "--load=module-null-sink sink_name=clicks"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    old = {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "HOME", "PULSE_RUNTIME_PATH")}
    os.environ.update(XDG_RUNTIME_DIR=str(runtime), HOME=str(runtime), PULSE_RUNTIME_PATH=str(runtime))
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["pactl", "info"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"PulseAudio does not start here: {proc.stderr.read().decode()[-300:]}")
            time.sleep(0.1)
        yield proc
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def test_a_microphone_on_pulseaudio_goes_into_the_recording(tmp_path, pulse, fake_model, capsys):
    listed = subprocess.run([sys.executable, "-m", "streamer", "live", "--list-audio"], capture_output=True,
                            text=True, cwd=ROOT, env=dict(os.environ), timeout=60)
    assert listed.returncode == 0 and "  null.monitor\t" in listed.stdout, listed.stdout
    rec = tmp_path / "rec.mkv"
    # parec takes up to 2 s to start delivering: with a real model that is hidden by the model's loading
    assert run_cli("--source", "test", "--capture-size", "96x64", "--audio", "null.monitor", "--record", str(rec),
                   "--max-frames", "120", "--style", "x.png") == 0
    with av.open(str(rec)) as c:
        planar = [f.to_ndarray() for f in c.decode(audio=0)]
    left = np.concatenate([p[0] for p in planar])
    tone = left[np.flatnonzero(np.abs(left) > 0.05)[0]:]
    assert len(tone) / 48000 > 1.0  # the tone, from when parec delivered to the end
    spectrum = np.abs(np.fft.rfft(tone))
    assert abs(np.argmax(spectrum) * 48000 / len(tone) - 440) < 5  # its pitch: 440 Hz
    assert np.mean(np.abs(tone) < 0.01) < 0.05  # no holes: the sound is continuous


def test_a_microphone_that_does_not_exist_is_one_line(tmp_path, pulse, fake_model, capsys):
    assert run_cli("--source", "test", "--audio", "nosuch", "--record", str(tmp_path / "r.mp4"),
                   "--style", "x.png") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--audio nosuch: no such input; there are: " in err[0] and "null.monitor" in err[0]
    assert fake_model.calls == 0 and not any(tmp_path.glob("r.mp4*"))


@pytest.mark.parametrize("name, codec", [("rec.webm", "opus"), ("rec.mkv", "aac")])
def test_a_recording_of_a_file_source_takes_its_sound_in_the_codec_its_container_holds(tmp_path, clip, fake_model,
                                                                                     name, codec):
    rec = tmp_path / name
    assert run_cli("--source", str(clip), "--record", str(rec), "--max-frames", "45", "--style", "x.png") == 0
    with av.open(str(rec)) as c:
        assert c.streams.audio[0].codec_context.name == codec
    assert np.abs(sound_of(rec)).max() > 0.3  # the burst at 1 s is in the first 1.5 s


def test_audio_none_leaves_a_file_sources_sound_out(tmp_path, clip, fake_model):
    rec = tmp_path / "rec.mp4"
    assert run_cli("--source", str(clip), "--record", str(rec), "--audio", "none", "--max-frames", "10",
                   "--style", "x.png") == 0
    with av.open(str(rec)) as c:
        assert not c.streams.audio and len(frames_of(rec)) == 10


class MarkSource:
    """A live picture (paced by the session at 30 fps) whose square jumps right at ``marks`` (perf_counter times) for
    0.3 s, as tests/avclock.py's clip does: what a camera would see of a hand clap."""

    width, height, fps, live = 96, 64, 30.0, False

    def __init__(self, marks: list[float]) -> None:
        self.marks = marks

    def read(self) -> np.ndarray:
        now = time.perf_counter()
        lit = any(m <= now < m + 0.3 for m in self.marks)
        img = np.full((64, 96, 3), 16, np.uint8)
        x0 = 60 if lit else 12
        img[16:48, x0:x0 + 24] = 235
        img[56:, (int(now * 120) % 88):(int(now * 120) % 88) + 8] = 160  # a bar moving every frame
        return img

    def describe(self) -> str:
        return "marks"

    def release(self) -> None:
        pass


def test_a_microphone_on_pulseaudio_is_in_sync_with_the_picture(tmp_path, pulse):
    """A burst played into a PulseAudio sink (``pactl play-sample``, a few ms to start) at each instant the
    picture's square jumps; the microphone is that sink's monitor. In the recording, sound minus picture within
    45 ms (the picture's own step is up to a frame, 33 ms, after the instant; the player adds its start)."""
    import wave

    from streamer.live.audio import PulseMic
    from streamer.live.hotkeys import LiveState
    from streamer.sinks import Recording
    from streamer.live.session import LiveSession

    burst = tmp_path / "burst.wav"
    with wave.open(str(burst), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(np.full((4800, 2), 26000, np.int16).tobytes())  # 0.1 s
    subprocess.run(["pactl", "upload-sample", str(burst), "burst"], check=True, timeout=20)
    mic = PulseMic("clicks.monitor")
    start = time.perf_counter() + 2.5  # parec takes up to 2 s to start delivering
    marks = [start + k for k in range(1, 4)]
    rec = tmp_path / "rec.mkv"
    played: list[float] = []

    def play() -> None:
        for m in marks:
            time.sleep(max(0.0, m - time.perf_counter()))
            subprocess.run(["pactl", "play-sample", "burst", "clicks"], timeout=10)
            played.append(time.perf_counter() - m)  # how long the player took, at most

    playing = threading.Thread(target=play)
    playing.start()
    time.sleep(max(0.0, start - time.perf_counter()))
    session = LiveSession(MarkSource(marks), FakeStylizer(), fake_styles(None), LiveState(1),
                          outputs=[Recording(rec, 96, 64, 30, sound=True)], fps=30, max_frames=130, sound=mic)
    try:
        session.run()
    finally:
        playing.join()
    found = offsets(rec)
    assert len(found) >= 2, (picture_onsets(rec), found)
    slow_player = max(0.0, max(played) - 0.03)  # pactl's start, usually 20-30 ms, can pass 45 ms on a busy machine
    assert all(-SYNC <= o <= SYNC + slow_player for o in found), (found, played)


def test_a_microphones_clock_is_not_shifted_by_one_late_chunk():
    """Chunks arrive late, never early: a late first chunk, a backlog at start, or one stalled read must not move
    the stamps of the rest; samples lost (the count falls behind for good) are followed."""
    from streamer.live.audio import ArrivalClock

    n, dt = 960, 0.02
    clock = ArrivalClock()
    delays = [0.06, 0.0, 0.001, 0.0, 0.08, 0.0, 0.002] + [0.001] * 20
    stamps = [clock.stamp(100.0 + k * dt + d, n) for k, d in enumerate(delays)]
    assert all(abs(t - (100.0 + k * dt)) < 0.003 for k, t in enumerate(stamps[2:], 2)), stamps
    lost = [clock.stamp(100.0 + (k + 0.1 / dt) * dt, n) for k in range(len(delays), len(delays) + 30)]
    assert abs(lost[-1] - (100.0 + (len(delays) + 29) * dt + 0.1)) < 0.003  # 0.1 s of samples went missing


def test_a_looped_file_source_keeps_its_sound_in_step(tmp_path, fake_model, tmp_path_factory):
    """--loop: the sound starts again with the pictures (it follows the frame the capture thread read last)."""
    short = tmp_path / "short.mp4"
    make_clip(short, seconds=3.0, fps=30)  # marks at 1 and 2 s; the second pass's at 4 and 5 s
    rec = tmp_path / "rec.mp4"
    assert run_cli("--source", str(short), "--loop", "--record", str(rec), "--max-frames", "170",
                   "--style", "x.png") == 0
    found = offsets(rec)
    assert len(found) >= 3 and any(t > 3.5 for t in picture_onsets(rec)), found  # marks of the second pass too
    assert all(abs(o) <= SYNC for o in found), found
