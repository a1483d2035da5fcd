"""What a hostile user tried (issue 20, root cause 4 and "Also"): each is one line and the documented exit code,
before any model loads where it can be, or the silent loss is said or avoided.
"""
from __future__ import annotations

import errno
import fractions
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import streamer.train
from engines.backends.cache import EngineCache
from engines.style_cache import StyleCache
from streamer.cli import main
from streamer.live.capture import CvSource
from tests.test_outputs_reliability import one_error, parts

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def style(media: Path) -> Path:
    return media / "style" / "la_muse.jpg"


def make_video(path: Path, frames: int, size: tuple[int, int] = (64, 48), subtitles: Path | None = None) -> Path:
    """A small H.264 video (yuv444p, so any size works), with the subtitles of an .srt file if given."""
    w, h = size
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = w, h, "yuv444p"
        sub = None
        if subtitles is not None:
            srt = av.open(str(subtitles))
            sub = c.add_stream_from_template(srt.streams.subtitles[0])
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 20 + 9 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, 24)
            c.mux(v.encode(frame))
        if sub is not None:
            for packet in srt.demux(srt.streams.subtitles[0]):
                if packet.dts is not None:
                    packet.stream = sub
                    c.mux(packet)
            srt.close()
        c.mux(v.encode(None))
    return path


def frames_of(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# -- root cause 4: checked before any model loads -----------------------------------------------------
def test_an_image_too_wide_for_webp_fails_before_the_model(run, no_model, style, tmp_path) -> None:
    wide = tmp_path / "wide.png"
    Image.new("RGB", (16384, 8), (90, 40, 10)).save(wide)
    code, err = run("render", wide, tmp_path / "out.webp", "-s", style)
    one_error(code, err, "at most 16383 px", "use .png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.png"]


@pytest.mark.parametrize("argv", [
    ("render", "{clip}", "{tmp}/out.mp4", "--codec", "mjpeg"),
    ("render", "{clip}", "{tmp}/out.mkv", "--codec", "mjpeg"),
    ("live", "--source", "test", "--no-stdin", "--max-frames", "2", "--record", "{tmp}/rec.mp4", "--codec", "mjpeg"),
])
def test_a_codec_the_encoder_refuses_fails_before_the_model(run, no_model, clip, style, tmp_path, argv) -> None:
    argv = [a.format(clip=clip, tmp=tmp_path) for a in argv]
    code, err = run(*argv, "-s", style)
    one_error(code, err, "mjpeg encoder cannot write this output", "--codec")
    assert "avcodec_open2" not in err and list(tmp_path.iterdir()) == []


def test_the_container_advice_never_names_the_container_in_use(run, no_model, clip, style, tmp_path) -> None:
    code, err = run("render", clip, tmp_path / "out.mkv", "-s", style, "--codec", "gif")
    line = one_error(code, err, "cannot hold gif video")
    assert ".mkv)" not in line
    code, err = run("render", clip, tmp_path / "out.mp4", "-s", style, "--codec", "gif")
    one_error(code, err, "or container (e.g. .mkv)")


@pytest.mark.parametrize("flag,value", [("--style-weight", "nan"), ("--style-weight", "inf"), ("--lr", "inf"),
                                        ("--lr", "nan"), ("--lr", "-1"), ("--lr-decay", "nan"),
                                        ("--lr-decay", "-0.5"), ("--style-weight", "-1")])
def test_train_refuses_numbers_that_are_not_finite_or_negative(flag, value, media, tmp_path, capsys,
                                                                monkeypatch) -> None:
    monkeypatch.setattr(streamer.train, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    code = main(["-q", "train", "--model", "adain-r31", "--content", str(media / "content"), "--style",
                 str(media / "style"), "--out", str(tmp_path / "run"), flag, value])
    one_error(code, capsys.readouterr().err, flag, "finite number")
    assert not (tmp_path / "run").exists()


def test_temporal_on_frames_too_small_for_flow_renders_without_it(run, fake_model, style, tmp_path) -> None:
    src = make_video(tmp_path / "tiny.mp4", 6, (2, 2))
    out = tmp_path / "out.mkv"
    code, err = run("render", src, out, "-s", style, "--temporal")
    assert code == 0, err
    assert frames_of(out) == 6
    said = [line for line in err.splitlines() if "--temporal needs frames of at least 24 px" in line]
    assert len(said) == 1 and "2x2" in said[0], err


def test_the_flicker_metric_on_frames_too_small_is_one_line(tmp_path, capsys) -> None:
    src = make_video(tmp_path / "tiny.mp4", 4, (4, 4))
    code = main(["eval", "flicker", str(src), str(src)])
    one_error(code, capsys.readouterr().err, "at least 12 px")


@pytest.mark.parametrize("message", [
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 70368744177664 bytes. Error code 12 (Cannot allocate memory)",
    "CUDA out of memory. Tried to allocate 20.00 GiB",
    "Exception from src/inference/src/cpp/infer_request.cpp:223: std::bad_alloc",
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer of size 123",
])
def test_out_of_memory_from_a_runtime_is_the_documented_line(run, style, media, tmp_path, message) -> None:
    from tests.fakes import stand_in_model

    class Exhausted:
        def stylize(self, *args, **kwargs):
            raise RuntimeError(message)

    with stand_in_model(Exhausted()):
        code, err = run("render", media / "content" / "cornell.jpg", tmp_path / "o.png", "-s", style)
    one_error(code, err, "out of memory; try a smaller --size")
    assert list(tmp_path.iterdir()) == []


def test_a_virtual_camera_that_goes_away_mid_session_ends_with_exit_3(run, fake_model, style, tmp_path,
                                                                     monkeypatch) -> None:
    import pyvirtualcam

    from tests.test_live import FakeCamera

    class Unplugged(FakeCamera):
        """Takes a few frames, then its device is gone (and closing it fails too)."""

        def send(self, frame):
            if len(self.frames) >= 3:
                raise OSError(errno.ENODEV, "No such device")
            super().send(frame)

        def close(self):
            raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setitem(pyvirtualcam.camera.BACKENDS, "unplugged", Unplugged)
    rec = tmp_path / "rec.mp4"
    code, err = run("live", "--source", "test", "--no-stdin", "--max-frames", "200", "--vcam", "--vcam-backend",
                    "unplugged", "--record", rec, "-s", style, "--size", "0", "--motion", "off")
    assert code == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamer: error: the virtual camera") and "stopped" in lines[0]
    assert rec.exists() and frames_of(rec) >= 1  # the recording beside it is finalised
    assert parts(tmp_path) == []


@pytest.mark.parametrize("spec", [":Ok", "mod:", ":", "os:not a name"])
def test_a_malformed_vcam_backend_is_one_line_and_exit_2(run, no_model, style, spec) -> None:
    code, err = run("live", "--source", "test", "--no-stdin", "--max-frames", "2", "--vcam", "--vcam-backend", spec,
                    "-s", style)
    one_error(code, err, "virtual camera backend")


# -- Also: weights, caches, leftovers ------------------------------------------------------------------
def test_a_decoder_full_of_nan_is_refused_like_a_corrupt_one(run, weights_dir, media, tmp_path) -> None:
    state = torch.load(weights_dir / "adain-r31" / "feature_invertor_conv3_1.pth", weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    bad = tmp_path / "decoder.pth"
    torch.save(state, bad)
    code, err = run("render", media / "content" / "cornell.jpg", tmp_path / "o.png", "-s",
                    media / "style" / "la_muse.jpg", "--model", "adain-r31", "--decoder", bad, "--size", "64")
    one_error(code, err, "NaN or infinite", str(bad))
    assert not (tmp_path / "o.png").exists()


def test_cache_clear_all_keeps_the_weights_folder_the_user_pointed_at(tmp_path, capsys, monkeypatch) -> None:
    from engines.weights import cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    weights = cache_dir()
    (weights / "microast").mkdir(parents=True)
    mine = weights / "microast" / "decoder.pth"
    mine.write_bytes(b"weights I put here")
    monkeypatch.setenv("STREAMER_WEIGHTS_DIR", str(weights))
    assert main(["cache", "info"]) == 0
    assert "never cleared" in capsys.readouterr().out
    assert main(["cache", "clear", "--all"]) == 0
    assert "is (or holds, or is inside) your weights folder" in capsys.readouterr().err
    assert mine.read_bytes() == b"weights I put here"
    monkeypatch.delenv("STREAMER_WEIGHTS_DIR")
    assert main(["cache", "clear", "--all", "--weights-dir", str(weights.parent)]) == 0  # a folder holding the cache
    assert mine.exists()
    assert main(["cache", "clear", "--all"]) == 0  # nobody's folder: the cache is cleared as asked
    assert not mine.exists()


def test_two_live_sessions_in_one_second_never_overwrite_a_snapshot(tmp_path, monkeypatch) -> None:
    import streamer.live.session as session_module
    from streamer.live.capture import PatternSource
    from streamer.live.hotkeys import LiveState
    from streamer.live.session import LiveSession
    from tests.test_live import Collector, FakeStylizer, fake_styles, type_after

    monkeypatch.setattr(session_module.time, "strftime", lambda fmt, *a: "streamer-20260101-120000")
    earlier = tmp_path / "streamer-20260101-120000-001.png"  # the other session's, in the same second
    Image.new("RGB", (8, 8), (1, 2, 3)).save(earlier)
    kept = earlier.read_bytes()
    out = Collector()
    session = LiveSession(PatternSource(64, 48, fps=60), FakeStylizer(delay=0.01), fake_styles(10), LiveState(1),
                          outputs=[out], fps=30, max_frames=12, snapshot_dir=tmp_path, stdin=True)
    type_after(session, out, 4, "s", "s")
    session.run()
    assert earlier.read_bytes() == kept
    names = sorted(p.name for p in tmp_path.glob("streamer-*.png"))
    assert names == [earlier.name, "streamer-20260101-120000-002.png", "streamer-20260101-120000-003.png"]
    assert parts(tmp_path) == []


def test_a_style_code_that_cannot_be_stored_leaves_no_temp_file(tmp_path, monkeypatch) -> None:
    import engines.style_cache

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(engines.style_cache.torch, "save", disk_full)
    image = tmp_path / "s.png"
    Image.new("RGB", (8, 8)).save(image)
    cache = StyleCache("m", "w", tmp_path / "styles")
    for _ in range(3):  # one run after another on a full disk
        assert cache.get_or_compute(image, 64, lambda: {"mean": torch.zeros(3)})["mean"].shape == (3,)
    assert list((tmp_path / "styles").iterdir()) == []


def test_a_folder_at_an_engine_cache_entry_is_removed_and_the_entry_built(tmp_path, caplog) -> None:
    cache = EngineCache(tmp_path)
    key = {"model": "m", "engine": "openvino"}
    squatter = cache.path_for("m-openvino", key, "onnx")
    (squatter / "inside").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        got = cache.load("m-openvino", key, "onnx", lambda p: p.write_bytes(b"model"), lambda p: p.read_bytes())
    assert got == b"model" and squatter.is_file()
    assert any("is a folder" in r.getMessage() for r in caplog.records)
    assert cache.load("m-openvino", key, "onnx", lambda p: pytest.fail("built again"), lambda p: p.read_bytes())


def test_loop_on_a_one_frame_file_keeps_looping(tmp_path) -> None:
    src = make_video(tmp_path / "one.mp4", 1)
    looping = CvSource(str(src), "file", None, 30, loop=True)
    assert all(looping.read() is not None for _ in range(6))
    looping.release()
    once = CvSource(str(src), "file", None, 30, loop=False)
    assert once.read() is not None and once.read() is None
    once.release()


def test_dangling_links_and_fifos_in_a_folder_are_skipped_said_and_counted(run, fake_model, media, style,
                                                                          tmp_path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png"):
        Image.open(media / "content" / "cornell.jpg").resize((40, 30)).save(src / name)
    os.symlink(tmp_path / "gone.png", src / "c.png")
    os.mkfifo(src / "d.png")  # opening it would wait for a writer forever
    code, err = run("render", src, tmp_path / "out", "-s", style)
    assert code == 2, err
    assert "c.png is a link to nothing" in err and "d.png is not a regular file" in err
    assert err.strip().splitlines()[-1].startswith("streamer: error: 2 of 4 images could not be read")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]


def test_mkv_subtitles_are_copied_or_their_loss_said(run, fake_model, style, tmp_path) -> None:
    srt = tmp_path / "s.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,300\nhello\n\n2\n00:00:00,400 --> 00:00:00,700\nthere\n")
    src = make_video(tmp_path / "in.mkv", 24, subtitles=srt)
    code, err = run("render", src, tmp_path / "out.mkv", "-s", style)
    assert code == 0, err
    with av.open(str(tmp_path / "out.mkv")) as c:
        (sub,) = c.streams.subtitles
        texts = [bytes(p) for p in c.demux(sub) if p.size]
    assert texts == [b"hello", b"there"]
    code, err = run("render", src, tmp_path / "out.mp4", "-s", style)
    assert code == 0, err
    assert "subtitle stream 1 (srt) cannot go into a .mp4 file; it is left out" in err


def test_a_float_tiff_in_0_to_1_is_not_black(run, style, tmp_path) -> None:
    from tests.fakes import stand_in_model

    class AsIs:
        def stylize(self, frame, *args, **kwargs):
            return frame

    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (16, 1))
    src = tmp_path / "f.tif"
    Image.fromarray(ramp, mode="F").save(src)
    with stand_in_model(AsIs()):
        code, err = run("render", src, tmp_path / "o.png", "-s", style)
    assert code == 0, err
    out = np.asarray(Image.open(tmp_path / "o.png"))[..., 0].astype(int)
    assert out[:, 0].max() <= 1 and out[:, -1].min() >= 254 and 100 < out.mean() < 155


@pytest.mark.parametrize("kind", ["multi-page TIFF", "animated WebP"])
def test_only_the_first_page_or_frame_is_rendered_and_that_is_said(run, fake_model, style, tmp_path, kind) -> None:
    pages = [Image.new("RGB", (32, 24), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    src = tmp_path / ("in.tif" if kind == "multi-page TIFF" else "in.webp")
    pages[0].save(src, save_all=True, append_images=pages[1:], **({"lossless": True} if src.suffix == ".webp" else {}))
    code, err = run("render", src, tmp_path / "o.png", "-s", style)
    assert code == 0, err
    assert f"input image {src.name} holds 3 pages or frames; only the first is used" in err
    assert tuple(np.asarray(Image.open(tmp_path / "o.png"))[0, 0]) == (55, 255, 255)  # the first page, inverted


def test_weights_dir_that_is_a_file_is_called_a_file(tmp_path, capsys, caplog) -> None:
    from engines.errors import WeightsError
    from engines.models import weight_spec
    from engines.weights import resolve_weights

    afile = tmp_path / "weights.txt"
    afile.write_text("not a folder")
    with caplog.at_level(logging.WARNING), pytest.raises(WeightsError):
        resolve_weights(weight_spec("microast"), afile, download=False)
    assert any("is a file, not a folder" in r.getMessage() for r in caplog.records)
    assert main(["cache", "info", "--weights-dir", str(afile)]) == 0
    assert "a file, not a folder" in capsys.readouterr().out


# -- standard streams that cannot be written ------------------------------------------------------------
def _frames(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def test_a_user_error_exits_2_when_stderr_cannot_be_written(tmp_path) -> None:
    argv = [sys.executable, "-m", "streamer", "render", str(tmp_path / "missing.png"), str(tmp_path / "o.png"),
            "-s", str(tmp_path / "s.png")]
    with open("/dev/full", "w") as full:
        assert subprocess.run(argv, cwd=ROOT, stderr=full, timeout=120).returncode == 2
    read, write = os.pipe()
    os.close(read)  # nobody reads stderr any more
    try:
        assert subprocess.run(argv, cwd=ROOT, stderr=write, timeout=120).returncode == 2
    finally:
        os.close(write)


def test_eval_json_to_a_full_or_closed_stdout_is_one_line(tmp_path) -> None:
    frames = _frames(tmp_path / "frames")
    argv = [sys.executable, "-m", "streamer", "eval", "flicker", str(frames), str(frames), "--json"]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(argv, cwd=ROOT, stdout=full, stderr=subprocess.PIPE, timeout=120)
    one_error(proc.returncode, proc.stderr.decode(), "cannot write standard output: disk full")
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
                          preexec_fn=lambda: os.close(1))
    one_error(proc.returncode, proc.stderr.decode(), "standard output is closed")


def _run_sh_ready() -> bool:
    """Whether run.sh would start at once in this venv (its install stamp matches), rather than install."""
    env = f"{os.environ.get('STREAMER_TORCH', 'torch==2.13.0')}|{os.environ.get('STREAMER_TORCH_INDEX', '')}|" \
          f"{os.environ.get('STREAMER_EXTRAS', 'test')}\n"
    stamp = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + env.encode()).hexdigest()[:16]
    return (Path(sys.prefix) / f".streamer-installed-{stamp}").exists()


@pytest.mark.skipif(not _run_sh_ready(), reason="run.sh would install a virtualenv first")
def test_run_sh_keeps_the_callers_folder_for_relative_paths(tmp_path) -> None:
    _frames(tmp_path / "frames")
    proc = subprocess.run([str(ROOT / "run.sh"), "eval", "flicker", "frames", "frames", "--json"], cwd=tmp_path,
                          env={**os.environ, "STREAMER_VENV": sys.prefix}, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert '"frames": 3' in proc.stdout.decode()


# -- issue 21: the Job is built before some of a command's own checks: the same one line ------------------------
_WEIGHTS_LINES = [(["--style-weights", "nan"], "--style-weights must be finite numbers, not nan"),
                  (["--style-weights", "-1", "1"], "--style-weights must be non-negative and not all zero")]
_SHARED_LINES = [(["--style-size", "-1"], "--style-size must be 0 (original) or a positive number of pixels"),
                 (["--temporal", "--temporal-strength", "2"], "--temporal-strength must be between 0 and 1, not 2")]


@pytest.mark.parametrize("command,flags,line", [*(("render", f, line) for f, line in _WEIGHTS_LINES + _SHARED_LINES),
                                                *(("live", f, line) for f, line in _SHARED_LINES)])
def test_a_video_or_live_bad_number_is_the_documented_line(run, no_model, clip, media, tmp_path, command, flags,
                                                           line) -> None:
    two = flags[0] == "--style-weights" and len(flags) == 3
    styles = [media / "style" / "la_muse.jpg", media / "style" / "brick.jpg"][:2 if two else 1]
    where = (["render", clip, tmp_path / "out.mp4", "--max-frames", "2"] if command == "render" else
             ["live", "--source", clip, "--no-stdin", "--max-frames", "2", "--record", tmp_path / "rec.mp4"])
    code, err = run(*where, "-s", *styles, *flags)
    assert one_error(code, err) == f"streamer: error: {line}"
    assert list(tmp_path.iterdir()) == []
