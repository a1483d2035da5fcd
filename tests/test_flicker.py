"""The flicker metric (warping error, Lai et al. 2018) on synthetic motion with known answers, and its CLI."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from engines.errors import InputError
from streamer import flow as fl
from streamer.cli import main
from streamer.evaluate import pair_warping_error, warping_errors
from streamer.imageio import save_image

H, W = 96, 128


def texture(seed: int, h: int = H + 64, w: int = W + 64) -> np.ndarray:
    """A smooth, richly structured colour texture (blurred noise): something optical flow can track."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    img = (img - img.mean()) / img.std() * 50 + 128
    return np.clip(img, 0, 255).astype(np.uint8)


def panning(big: np.ndarray, n: int, dx: int = 2, dy: int = 1) -> list[np.ndarray]:
    """Frames of a camera panning over ``big``: frame t is the crop at (t*dy, t*dx)."""
    return [np.ascontiguousarray(big[t * dy:t * dy + H, t * dx:t * dx + W]) for t in range(n)]


def noisy(frames: list[np.ndarray], sigma: float, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(f + rng.normal(0, sigma, f.shape), 0, 255).astype(np.uint8) for f in frames]


@pytest.fixture(scope="module")
def pan() -> list[np.ndarray]:
    return panning(texture(0), 10)


def test_flow_recovers_a_known_shift(pan):
    a, b = fl.gray(pan[1]), fl.gray(pan[0])
    backward = fl.FlowEstimator("dis", "medium")(a, b)  # frame1(p) = frame0(p + (2, 1)): the crop moved
    inner = backward[16:-16, 16:-16]
    assert np.allclose(np.median(inner.reshape(-1, 2), axis=0), (2.0, 1.0), atol=0.1)
    assert fl.consistent(backward, fl.FlowEstimator("dis", "medium")(b, a))[16:-16, 16:-16].mean() > 0.95


def test_shifted_texture_has_near_zero_warping_error(pan):
    report = warping_errors(pan, pan, names=["copy"])
    assert report.pairs == 9 and not report.cuts
    assert report.mean(report.source) < 2e-4  # interpolation only
    assert report.mean(report.videos[0]) == pytest.approx(report.mean(report.source))


def test_added_noise_raises_it_by_the_expected_amount(pan):
    sigma = 8.0
    report = warping_errors(pan, noisy(pan, sigma), noisy(pan, 2 * sigma, seed=2))
    expected = 2 * (sigma / 255) ** 2  # two independent noises in each difference
    small, large = report.mean(report.videos[0]), report.mean(report.videos[1])
    # bilinear warping averages the warped frame's noise a little, so somewhat below 2 sigma^2
    assert 0.6 * expected < small < 1.1 * expected
    assert large == pytest.approx(4 * small, rel=0.2)
    assert small > 20 * report.mean(report.source)


def test_pair_error_ignores_masked_pixels():
    cur = np.zeros((8, 8, 3), np.uint8)
    prev = cur.copy()
    prev[:, :4] = 255  # differs only on the left half
    still = np.zeros((8, 8, 2), np.float32)
    right = np.zeros((8, 8), bool)
    right[:, 4:] = True
    assert pair_warping_error(cur, prev, still, right) == 0.0
    assert pair_warping_error(cur, prev, still, ~right) == pytest.approx(1.0)


def test_cut_is_detected_and_skipped(pan):
    other = panning(texture(7), 5)
    frames = pan[:5] + other
    g = [fl.gray(f) for f in frames]
    est = fl.FlowEstimator("dis", "ultrafast")
    cuts = [t for t in range(1, len(g))
            if fl.is_cut(g[t], g[t - 1], fl.motion_residual(g[t], g[t - 1], est(g[t], g[t - 1])))]
    assert cuts == [5]
    report = warping_errors(frames, frames)
    assert report.cuts == [5] and report.source[4] is None and report.pairs == 8


def test_mismatched_inputs_give_one_clear_error(pan):
    with pytest.raises(InputError, match="frames"):
        warping_errors(pan, pan[:-1])
    with pytest.raises(InputError, match="more frames"):
        warping_errors(pan[:-1], pan)
    small = [f[:-8, :-8] for f in pan]
    with pytest.raises(InputError, match="same size"):
        warping_errors(pan, small)
    padded = [np.pad(f, ((0, 1), (0, 1), (0, 0)), mode="edge") for f in pan]  # H.264's odd-size padding
    assert warping_errors(pan, padded).pairs == 9


def _folder(path, frames):
    path.mkdir()
    for i, f in enumerate(frames):
        save_image(path / f"{i:04d}.png", f)
    return path


def test_cli_prints_error_and_floor_and_json(pan, tmp_path, capsys):
    src = _folder(tmp_path / "src", pan)
    sty = _folder(tmp_path / "sty", noisy(pan, 8.0))
    assert main(["eval", "flicker", str(src), str(sty)]) == 0
    out = capsys.readouterr().out
    assert "warping error" in out and "source floor" in out
    assert main(["eval", "flicker", str(src), str(sty), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["frames"] == 10 and len(data["per_frame"]) == 9
    assert data["warping_error"] > 10 * data["source_warping_error"]
    short = _folder(tmp_path / "short", pan[:6])
    assert main(["eval", "flicker", str(src), str(short)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "6 frames" in err and "10" in err


def test_cli_reads_video_files(pan, tmp_path, capsys):
    from streamer.videoio import VideoWriter

    path = tmp_path / "pan.mkv"
    with VideoWriter(path, W, H, 24, codec="ffv1", pix_fmt="yuv444p") as w:
        for f in pan:
            w.write(f)
    assert main(["eval", "flicker", str(path), str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["frames"] == 10 and data["warping_error"] == pytest.approx(data["source_warping_error"])


def video_with_cover_art_first(path, frames: list[np.ndarray]) -> None:
    """An .mp4 whose first video stream is a cover picture (as iTunes-style taggers write it), then ``frames``."""
    import struct

    import av

    with av.open(str(path), "w") as out:
        art = out.add_stream("mjpeg", rate=1)
        art.width, art.height, art.pix_fmt = 32, 32, "yuvj420p"
        art.disposition = av.stream.Disposition.attached_pic
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        cover = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 250, np.uint8), format="rgb24")
        for packet in [*art.encode(cover.reformat(format="yuvj420p")), *art.encode()]:
            out.mux(packet)
        for t, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = t
            out.mux(video.encode(frame))
        out.mux(video.encode())
    # FFmpeg writes the cover ('udta') after the track; taggers put it first, so it becomes stream 0
    data = bytearray(path.read_bytes())
    i = 0
    while i < len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        if kind == b"moov":
            kids, j = [], i + 8
            while j < i + size:
                n = struct.unpack(">I", data[j:j + 4])[0]
                kids.append(bytes(data[j:j + n]))
                j += n
            kids.sort(key=lambda box: (box[4:8] != b"mvhd", box[4:8] != b"udta"))  # same size: offsets hold
            data[i + 8:i + size] = b"".join(kids)
        i += size
    path.write_bytes(data)
    with av.open(str(path)) as c:
        assert c.streams.video[0].disposition & av.stream.Disposition.attached_pic  # the case under test


def test_cli_reads_the_video_stream_not_the_cover_art(pan, tmp_path, capsys):
    src = tmp_path / "covered.mp4"
    video_with_cover_art_first(src, pan)
    code = main(["eval", "flicker", str(src), str(src), "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == len(pan)  # the old reader decoded the one cover picture: "no pairs"
