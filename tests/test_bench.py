"""`streamer bench`: a quick real run gives a table and JSON a reader can trust (baseline, ratios, FLOPs,
machine), and says when weights are random."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engines.backends.graph import content_flops
from streamer.bench import frame_size
from streamer.bench_report import format_report, time_side_by_side
from engines.errors import InputError
from streamer.imageio import parse_size
from streamer.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_parse_size():
    """One parser for every size a user types: bench's squares too, live's WxH only."""
    assert frame_size("640x360") == (640, 360) == parse_size(" 640 x 360 ", "--out-size")
    assert frame_size("512") == (512, 512)
    assert parse_size("auto") is None and parse_size(None) is None
    for bad in ("640x", "big", "8x8", "99999", "0", "auto"):
        with pytest.raises(argparse.ArgumentTypeError):
            frame_size(bad)
    with pytest.raises(InputError, match="--out-size must look like 640x360"):
        parse_size("512", "--out-size")


def test_flops_are_counted_without_running_and_scale_with_pixels(microast):
    small, big = content_flops(microast, 64, 96), content_flops(microast, 128, 192)
    assert small > 0 and 3.9 < big / small < 4.1
    assert 12e9 < content_flops(microast, 360, 640) < 14e9  # MicroAST at 640x360: ~12.8 GFLOP


def test_bench_finds_its_default_media_under_streamer_shared(tmp_path, monkeypatch):
    """The bench's defaults come from $STREAMER_SHARED, by kind, not by file name, and from nowhere else (no
    folder beside the checkout)."""
    from streamer import bench

    monkeypatch.delenv("STREAMER_SHARED", raising=False)
    assert bench.default_clip() is None and bench.default_style() is None
    monkeypatch.setenv("STREAMER_SHARED", str(tmp_path))
    assert bench.default_clip() is None and bench.default_style() is None
    (tmp_path / "media" / "video").mkdir(parents=True)
    (tmp_path / "media" / "style").mkdir()
    (tmp_path / "media" / "video" / "notes.txt").write_text("not a video")
    (tmp_path / "media" / "video" / "b.mp4").write_bytes(b"")
    (tmp_path / "media" / "style" / "z.png").write_bytes(b"")
    assert bench.default_clip() == tmp_path / "media" / "video" / "b.mp4"
    assert bench.default_style() == tmp_path / "media" / "style" / "z.png"


def test_side_by_side_timing_interleaves_and_respects_the_budget():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_side_by_side(runs, repeats=3, warmup=1, budget_s=10.0)
    assert calls == ["a", "b"] * 4 and all(len(v) == 3 for v in times.values())
    import time as _time

    slow = {"s": lambda: _time.sleep(0.05)}
    assert len(time_side_by_side(slow, repeats=50, warmup=0, budget_s=0.01)["s"]) == 2  # stops early, not < 2


def test_quick_bench_table_and_json(weights_dir, clip, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--models", "microast", "--engines", "onnxruntime", "--sizes", "96x64", "--repeats", "2",
                 "--render-frames", "8", "--clip", str(clip), "--weights-dir", str(weights_dir), "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert table.startswith("machine: ") and "GFLOP/s" in table and "x torch" in table
    report = json.loads(out.read_text())
    assert report["machine"]["physical_cores"] >= 1 and report["peak_gflops"] > 0
    if sys.platform.startswith("linux"):  # the CLI keeps freed memory for reuse, and the report says so
        assert report["machine"]["freed_memory_reused"] and "freed memory reused" in table.splitlines()[0]
    assert report["models"]["microast"]["weights"] == "real weights"
    assert report["models"]["microast"]["style_encode_ms"] > 0
    rows = {r["engine"]: r for r in report["content"]}
    assert set(rows) == {"torch", "onnxruntime"}
    assert rows["torch"]["speedup"] == 1.0 and rows["torch"]["runs"] == 2
    ort = rows["onnxruntime"]
    assert ort["ms"] > 0 and ort["psnr_db"] >= 45.0 and ort["gflops"] > 0 and 0 < ort["peak_pct"]
    assert ort["speedup"] == pytest.approx(rows["torch"]["ms"] / ort["ms"], rel=0.02)
    renders = {r["engine"]: r for r in report["render"]}
    assert set(renders) == {"torch", "onnxruntime"}
    assert all(r["frames"] == 8 and r["fps"] > 0 for r in renders.values()), renders
    (way_back,) = report["upscale"]  # --upscale's cost at each bench size
    assert way_back["size"] == "96x64" and way_back["from"] == "40x27"
    assert way_back["guided_ms"] > 0 and way_back["bicubic_ms"] > 0 and "way back to the output size" in table
    assert format_report(report) == table.rstrip("\n")


_HEAP_SCRIPT = textwrap.dedent("""
    import ctypes, json, sys, threading, torch
    from engines.backends.machine import reuse_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                  "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tuned":
        assert reuse_freed_memory()

    def frame(out):
        before = libc.mallinfo2()
        x = torch.ones(1, 32, 720, 1280)  # 118 MB: a 720p frame's large tensor, past every mmap threshold
        alive = libc.mallinfo2()
        del x
        out.update(mmapped=alive.hblkhd - before.hblkhd, kept_free=libc.mallinfo2().fordblks)

    out = {}
    worker = threading.Thread(target=frame, args=(out,))  # where engines run frames
    worker.start()
    worker.join()
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
@pytest.mark.parametrize("allocator", ["tuned", "default"])
def test_freed_frame_memory_stays_in_the_heap_for_the_next_frame(allocator):
    """What made torch eager frames 275 instead of 213 ms (and 1430 instead of 875 at 720p): every large
    tensor of a frame was a fresh mmap, handed back on free and paged in afresh by the next frame. After
    reuse_freed_memory a frame's large tensor, allocated in a worker thread, comes from the heap (no
    mmap) and its memory stays there, free, when it is freed. glibc's own books (mallinfo2) say so:
    unlike a page-fault count, which the kernel's proactive reclaim disturbed (7200 faults once), nothing
    outside the process changes them. The default allocator is measured too, so the check can fail."""
    out = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT, allocator], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    heap = json.loads(out.stdout)
    frame_bytes = 32 * 720 * 1280 * 4
    if allocator == "tuned":
        assert heap["mmapped"] == 0 and heap["kept_free"] >= frame_bytes, heap
    else:  # glibc's default: an mmap per large tensor, returned to the kernel on free
        assert heap["mmapped"] >= frame_bytes and heap["kept_free"] < frame_bytes, heap


def test_missing_weights_bench_random_weights_and_say_so(weights_dir, capsys):
    if (weights_dir / "adain").exists():
        pytest.skip("the adain weights are present here")
    code = main(["bench", "--models", "adain", "--engines", "torch", "--sizes", "32", "--repeats", "1",
                 "--render-frames", "0", "--weights-dir", str(weights_dir)])
    assert code == 0
    assert "adain: RANDOM weights (speed only)" in capsys.readouterr().out


def test_a_stop_during_the_render_phase_stops_the_bench(monkeypatch, tmp_path: Path) -> None:
    """The render phase's render keeps its frames and returns when a Ctrl-C or SIGTERM comes: the bench went on
    to the next engine and round (every later SIGTERM then ignored) and exited 0 with a short render's figure."""
    import signal

    from engines import stylizer
    from streamer import bench, video
    from streamer.signals import Interrupted

    calls = []

    def interrupted_render(*args, **kwargs):
        calls.append(1)
        return video.RenderStats(5, 0.5, 10.0, interrupted=True, signum=int(signal.SIGTERM))

    monkeypatch.setattr(video, "render_video_file", interrupted_render)
    monkeypatch.setattr(stylizer, "Stylizer", lambda model, engine: None)
    args = argparse.Namespace(render_frames=20, budget=1.0)
    with pytest.raises(Interrupted) as info:
        bench._bench_render("microast", object(), {"torch/fp32": object(), "openvino/fp32": object()}, "torch/fp32",
                            {}, tmp_path / "clip.mp4", args, [])
    assert info.value.signum == signal.SIGTERM and calls == [1]
