"""Timestamps a container can hold and a decoder can trust (issue 20, root cause 5): AVI counts frames (time base
1/fps, no B-frames), x265's dts on short clips, FFmpeg's best-effort rule for frames, and one decoding rule for a
damaged input (the local side here; the cluster's in tests/test_cluster.py)."""
from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np

from streamer.cli import main
from streamer.videoio import VideoWriter, sane_dts
from streamer.videoread import BestEffortPts


def damaged_first_gop(path: Path, frames: int = 48, gop: int = 12) -> Path:
    """A 64x48 H.264 clip of ``frames`` frames, a keyframe every ``gop``, whose first keyframe is zeroed: its first
    GOP cannot be decoded (36 of 48 frames can)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=24, options={"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                                                        "bf": "0"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        base = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
        for i in range(frames):
            out.mux(s.encode(av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")))
        out.mux(s.encode(None))
    with av.open(str(path)) as c:
        first = next(p for p in c.demux(video=0) if p.size)
        pos, size = first.pos, first.size
    data = bytearray(path.read_bytes())
    data[pos + 8:pos + size] = bytes(size - 8)
    path.write_bytes(bytes(data))
    return path


def _common(media: Path, weights_dir: Path) -> list[str]:
    return ["-s", str(media / "style" / "la_muse.jpg"), "--model", "microast", "--size", "64", "--weights-dir",
            str(weights_dir)]


def test_avi_counts_frames_and_renders_again(clip, media, weights_dir, tmp_path, capsys):
    avi = tmp_path / "b.avi"
    assert main(["-q", "render", str(clip), str(avi), *_common(media, weights_dir), "--max-frames", "24"]) == 0
    with av.open(str(avi)) as c:
        stream = c.streams.video[0]
        assert stream.average_rate == 24 and stream.time_base == fractions.Fraction(1, 24)
        assert stream.frames == 24  # the header's count: 24, not 600
        pts = [f.pts for f in c.decode(video=0)]
    assert len(pts) == 24 and pts == sorted(pts) and len(set(pts)) == 24  # no reordered (B-) frames
    again = tmp_path / "again.mp4"
    assert main(["-q", "render", str(avi), str(again), *_common(media, weights_dir)]) == 0, capsys.readouterr().err
    assert "ended early" not in capsys.readouterr().err
    with av.open(str(again)) as c:
        assert len(list(c.decode(video=0))) == 24


def test_x265_short_clips_always_mux(tmp_path):
    """Two frames through x265 into MP4, many times: x265's dts for a clip shorter than its B-frame delay is
    garbage now and then ("pts/dts pair unsupported"); every file must be written and hold both frames."""
    rng = np.random.default_rng(1)
    for i in range(12):
        out = tmp_path / f"x{i}.mp4"
        writer = VideoWriter(out, 64, 36, 24, codec="libx265", time_base=fractions.Fraction(1, 12288))
        for k in range(2):
            writer.write((rng.random((36, 64, 3)) * 255).astype(np.uint8), k * 512)
        writer.close()
        with av.open(str(out)) as c:
            assert [f.pts for f in c.decode(video=0)] == [0, 512]


def test_sane_dts_keeps_real_ones_and_replaces_garbage():
    assert sane_dts(5, 3, 2, 16) == 3  # a B-frame's reorder: kept
    assert sane_dts(0, -60129542441, None, 16) == 0  # x265's unset delay: the pts stands in
    assert sane_dts(1, -60129542440, 0, 16) == 1
    assert sane_dts(4, 9, 3, 16) == 4  # after its own pts: impossible
    assert sane_dts(3, 9, 3, 16) == 4  # ... and kept after the previous dts
    assert sane_dts(None, 7, 3, 16) == 7
    assert sane_dts(12000, 100, 90, 16) == 100  # a frame after a 12 s pause: its dts is the frame before's, kept


def test_best_effort_pts_follows_ffmpegs_rule():
    clock = BestEffortPts()
    assert [clock(p, d) for p, d in ((0, -2), (1, -1), (2, 0), (3, 1))] == [0, 1, 2, 3]  # sane pts: pts
    avi = BestEffortPts()  # an AVI holding B-frames: pts jump back more often than dts do -> dts
    got = [avi(p, d) for p, d in ((25, 50), (100, 75), (75, 100), (125, 125), (50, 150), (200, 175))]
    assert got[-1] == 175 and got[-2] == 150
    assert BestEffortPts()(None, None) is None


def test_damaged_first_gop_is_said_and_exits_2(media, weights_dir, tmp_path, capsys):
    src = damaged_first_gop(tmp_path / "d.mp4")
    out = tmp_path / "o.mp4"
    assert main(["-q", "render", str(src), str(out), *_common(media, weights_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"streamer: 1 damaged video packets in {src} were skipped" in err
    assert err[-1] == (f"streamer: error: {src} ended early (truncated or damaged): 36 of the 48 frames its container "
                       f"announces could be read; {out} holds those 36 and plays")
    with av.open(str(out)) as c:
        assert len(list(c.decode(video=0))) == 36
