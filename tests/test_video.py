"""`streamer render` on video files: every frame, timestamps, audio, Ctrl-C, and every bad input."""
from __future__ import annotations

import errno
import fractions
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from streamer import video
from streamer.cli import main
from streamer.video import render_video_file
from streamer.videoio import VideoWriter
from tests.fakes import InvertingStylizer
from tests.test_outputs_reliability import one_error


# -- helpers -----------------------------------------------------------------------------------------
def make_video(path: Path, pts: list[int], time_base: fractions.Fraction, size: tuple[int, int] = (96, 64),
               codec: str = "libx264", pix_fmt: str = "yuv420p", rate: int = 24, noise: bool = False,
               rotation: int = 0) -> Path:
    """A small synthetic clip whose frames have exactly the given timestamps."""
    w, h = size
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        s.codec_context.time_base = time_base
        s.time_base = time_base
        if rotation:
            s.set_display_rotation(rotation)
        ramp = np.linspace(0, 200, w, dtype=np.uint8)[None, :, None]
        rng = np.random.default_rng(0)
        for i, p in enumerate(pts):
            rgb = np.ascontiguousarray(np.broadcast_to(ramp + i, (h, w, 3)))
            if noise:  # incompressible, for filling a disk
                rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = p, time_base
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def frame_times(path: Path) -> list[fractions.Fraction]:
    with av.open(str(path)) as c:
        tb = c.streams.video[0].time_base
        return [f.pts * tb for f in c.decode(video=0)]


def count_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


@pytest.fixture(scope="module")
def style(media: Path) -> Path:
    return media / "style" / "brushstrokes.jpg"


# -- the whole real clip, once -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered(clip: Path, style: Path, weights_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video") / "bunny_styled.mp4"
    code = main(["-q", "render", str(clip), str(out), "--style", str(style), "--model", "microast",
                 "--size", "120", "--weights-dir", str(weights_dir)])
    assert code == 0
    return out


def test_whole_clip_keeps_frames_rate_duration_and_timestamps(rendered: Path, clip: Path) -> None:
    with av.open(str(rendered)) as out:
        v = out.streams.video[0]
        assert (v.codec_context.name, v.codec_context.width, v.codec_context.height) == ("h264", 640, 360)
        assert v.average_rate == 24
        assert out.duration / av.time_base == pytest.approx(10.0, abs=0.05)
        assert v.codec_context.pix_fmt == "yuv420p"
    assert frame_times(rendered) == frame_times(clip)
    assert len(frame_times(rendered)) == 240
    assert not leftovers(rendered.parent)


def test_audio_is_copied_bit_for_bit(rendered: Path, clip: Path) -> None:
    def packets(path: Path) -> list[tuple[int, bytes]]:
        with av.open(str(path)) as c:
            s = c.streams.audio[0]
            return [(p.pts * s.time_base, bytes(p)) for p in c.demux(s) if p.size]

    got, want = packets(rendered), packets(clip)
    assert len(want) == 432
    assert got == want


def test_frames_are_stylized(rendered: Path, clip: Path) -> None:
    with av.open(str(rendered)) as out, av.open(str(clip)) as src:
        pairs = zip(out.decode(video=0), src.decode(video=0))
        diffs = [np.abs(a.to_ndarray(format="rgb24").astype(int) - b.to_ndarray(format="rgb24")).mean()
                 for i, (a, b) in enumerate(pairs) if i % 60 == 0]
    assert len(diffs) == 4 and min(diffs) > 10


# -- timestamps, sizes, Ctrl-C ------------------------------------------------------------------------
def test_variable_frame_rate_keeps_each_timestamp(tmp_path: Path) -> None:
    tb = fractions.Fraction(1, 1000)
    pts = [0, 40, 80, 200, 233, 500, 510, 520, 1000, 1400]
    src = make_video(tmp_path / "vfr.mkv", pts, tb)
    for dst in (tmp_path / "out.mp4", tmp_path / "out.mkv"):
        stats = render_video_file(src, dst, InvertingStylizer(), {}, progress=False)
        assert stats.frames == 10 and not stats.interrupted
        assert frame_times(dst) == [p * tb for p in pts]


def test_odd_size_is_padded_by_one_pixel(tmp_path: Path) -> None:
    """4:2:0 H.264 needs even sizes: 97x63 becomes 98x64 with the edge repeated; 4:4:4 keeps it exact."""
    src = make_video(tmp_path / "odd.mkv", list(range(6)), fractions.Fraction(1, 24), size=(97, 63),
                     pix_fmt="yuv444p")
    dst = tmp_path / "odd.mp4"
    assert render_video_file(src, dst, InvertingStylizer(), {}, progress=False).frames == 6
    with av.open(str(dst)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (64, 98, 3)
    assert np.abs(frames[0][:, -1].astype(int) - frames[0][:, -2]).max() <= 6  # repeated edge, no black line
    with VideoWriter(tmp_path / "exact.mkv", 97, 63, 24, pix_fmt="yuv444p") as w:
        w.write(np.zeros((63, 97, 3), np.uint8))
    with av.open(str(tmp_path / "exact.mkv")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (97, 63)


def test_temporal_filter_sees_every_frame_in_order(tmp_path: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.log: list = []

        def reset(self) -> None:
            self.log.append("reset")

        def process(self, source, stylized):
            self.log.append(int(source[0, 0, 0]))
            assert np.array_equal(stylized, 255 - source)  # after stylize
            return np.zeros_like(stylized)  # and its result is what gets encoded

    src = make_video(tmp_path / "in.mkv", list(range(8)), fractions.Fraction(1, 24), codec="ffv1", pix_fmt="bgr0")
    rec = Recorder()
    render_video_file(src, tmp_path / "out.mkv", InvertingStylizer(), {}, progress=False, temporal=rec)
    assert rec.log == ["reset", *range(8)]
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert all(f.to_ndarray(format="rgb24").max() <= 2 for f in c.decode(video=0))


def test_temporal_option_renders(run, fake_model, clip: Path, style: Path, tmp_path: Path) -> None:
    out = tmp_path / "steady.mp4"
    code, err = run("render", clip, out, "--style", style, "--max-frames", "8", "--temporal")
    assert code == 0, err
    assert count_frames(out) == 8


def test_phone_rotation_is_kept(tmp_path: Path) -> None:
    src = make_video(tmp_path / "phone.mp4", list(range(4)), fractions.Fraction(1, 24), rotation=90)
    dst = tmp_path / "out.mp4"
    render_video_file(src, dst, InvertingStylizer(), {}, progress=False)
    with av.open(str(dst)) as c:
        assert next(c.decode(video=0)).rotation == 90


def test_webm_gets_vp9_and_audio_reencoded_to_opus(run, fake_model, clip: Path, style: Path, tmp_path: Path) -> None:
    out = tmp_path / "clip.webm"
    code, err = run("render", clip, out, "--style", style, "--max-frames", "6")
    assert code == 0, err
    with av.open(str(out)) as c:
        assert [(s.type, s.codec_context.name) for s in c.streams] == [("video", "vp9"), ("audio", "opus")]
        assert sum(f.samples for f in c.decode(audio=0)) > 0.1 * 48000
    assert count_frames(out) == 6


def test_ctrl_c_leaves_a_playable_partial_file(run, fake_model, clip: Path, style: Path, tmp_path: Path) -> None:
    fake_model.stop_at = 31
    out = tmp_path / "partial.mp4"
    code, err = run("render", clip, out, "--style", style)
    assert code == 130
    assert err.strip().count("\n") == 0 and "interrupted" in err and "30 frames" in err
    assert count_frames(out) == 30
    assert frame_times(out) == frame_times(clip)[:30]
    with av.open(str(out)) as c:
        assert c.streams.audio  # the audio so far is there too
    assert not leftovers(tmp_path)


def test_max_frames_and_preserve_color_and_overwrite(run, fake_model, clip: Path, style: Path, tmp_path: Path) -> None:
    out = tmp_path / "short.mkv"
    assert run("render", clip, out, "--style", style, "--max-frames", "12")[0] == 0
    assert count_frames(out) == 12
    code, err = run("render", clip, out, "--style", style, "--max-frames", "5")
    assert code == 2 and "--overwrite" in err
    assert run("render", clip, out, "--style", style, "--max-frames", "5", "--overwrite", "--preserve-color")[0] == 0
    assert count_frames(out) == 5


# -- errors: one line, an exit code, nothing at the final name ------------------------------------------

def test_corrupt_and_truncated_input(run, fake_model, clip: Path, style: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(50_000))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[:40_000])
    for bad in (garbage, truncated):
        out = tmp_path / f"out_{bad.stem}.mp4"
        code, err = run("render", bad, out, "--style", style)
        one_error(code, err, "cannot read video")
        assert not out.exists()
    assert not leftovers(tmp_path)


def test_bad_requests_fail_before_any_work(run, fake_model, clip: Path, style: Path, tmp_path: Path, media) -> None:
    audio_only = tmp_path / "audio_only.mp4"
    with av.open(str(clip)) as src, av.open(str(audio_only), "w") as dst:
        s = dst.add_stream_from_template(src.streams.audio[0])
        for p in src.demux(src.streams.audio[0]):
            if p.size:
                p.stream = s
                dst.mux(p)
    cases = [
        ((audio_only, tmp_path / "a.mp4"), (), "no video stream"),
        ((clip, tmp_path / "missing" / "a.mp4"), (), "output folder does not exist"),
        ((clip, tmp_path / "a.webm"), ("--codec", "libx264"), "cannot hold libx264"),
        ((clip, tmp_path / "a.mp4"), ("--codec", "nosuchcodec"), "not available"),
        ((clip, tmp_path / "a.gif"), (), "unsupported video output type"),
        ((clip, tmp_path / "a.mp4"), ("--mask", str(media / "mask" / "mask.png")), "still images only"),
        ((clip, clip), ("--overwrite",), "replace the input"),
    ]
    for (src, dst), extra, words in cases:
        code, err = run("render", src, dst, "--style", style, *extra)
        one_error(code, err, words)
    assert fake_model.calls == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio_only.mp4"]


def test_disk_full_removes_the_temp_file(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC from the muxer -> one clear error, no temp file, nothing at the final name."""
    src = make_video(tmp_path / "in.mkv", list(range(8)), fractions.Fraction(1, 24))
    real_mux = av.container.OutputContainer.mux
    calls = {"n": 0}

    def full_disk(self, packets):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mux(self, packets)

    monkeypatch.setattr(av.container.OutputContainer, "mux", full_disk)
    dst = tmp_path / "out.mp4"
    with pytest.raises(video.InputError, match="disk full"):
        render_video_file(src, dst, InvertingStylizer(), {}, progress=False)
    assert not dst.exists() and not leftovers(tmp_path)


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs root to mount a tiny tmpfs")
def test_real_disk_full_on_a_tiny_filesystem(tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        src = make_video(tmp_path / "in.mkv", list(range(24)), fractions.Fraction(1, 24), size=(160, 120),
                         noise=True)
        with pytest.raises(video.InputError, match="disk full"):
            render_video_file(src, mnt / "out.mp4", InvertingStylizer(), {}, progress=False, crf=0)
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_finished_video_is_closed_keeps_it_whole(tmp_path: Path, monkeypatch, signum) -> None:
    """Ctrl-C when the bar is at 100% and the encoder flushes (the moment a render seems to hang) threw the whole
    finished video away; now the file is closed whole and the run reports the stop (exit 130/143 upstream)."""
    import signal

    from streamer.signals import stop_signals_interrupt

    src = make_video(tmp_path / "in.mkv", list(range(12)), fractions.Fraction(1, 24))
    dst = tmp_path / "out.mp4"
    real_close = VideoWriter.close

    def close_under_a_signal(writer: VideoWriter) -> None:
        signal.raise_signal(getattr(signal, signum))  # lands while the encoder is flushed
        real_close(writer)

    monkeypatch.setattr(VideoWriter, "close", close_under_a_signal)
    before = signal.getsignal(signal.SIGTERM)
    try:
        with stop_signals_interrupt():
            stats = render_video_file(src, dst, InvertingStylizer(), {}, progress=False)
    except KeyboardInterrupt:
        pytest.fail(f"the {signum} while closing threw the finished video away: {sorted(os.listdir(tmp_path))}")
    assert signal.getsignal(signal.SIGTERM) is before
    assert stats.interrupted and stats.signum == getattr(signal, signum) and stats.frames == 12
    assert len(frame_times(dst)) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv", "out.mp4"]  # no .part left
