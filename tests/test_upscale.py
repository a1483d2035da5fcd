"""The way back from the working size (engines.upscale, --upscale): known answers, the flag, the live switch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.stylizer import back_to_source, to_tensor
from engines.upscale import STROKES, bicubic_upscale, guided_upscale, guided_upscale_tensor, upscale
from streamer.evaluate import gradient_correlation, mean_distance, sharpness


def _area_down(rgb: np.ndarray, factor: int) -> np.ndarray:
    h, w = rgb.shape[0] // factor, rgb.shape[1] // factor
    return rgb[:h * factor, :w * factor].reshape(h, factor, w, factor, -1).mean(axis=(1, 3)).round().astype(np.uint8)


def _paint(small_source: np.ndarray) -> np.ndarray:
    """A stand-in stylization: dark -> deep blue, light -> orange, by luma (what a style does to tones)."""
    y = small_source.astype(np.float32).mean(axis=2, keepdims=True) / 255.0
    dark, light = np.array([20, 30, 140], np.float32), np.array([250, 160, 40], np.float32)
    return (dark + (light - dark) * y).round().astype(np.uint8)


def _edge_width(row: np.ndarray) -> int:
    """Pixels a profile takes to go from 10% to 90% of its rise (a step edge: 1 or 2)."""
    lo, hi = float(row.min()), float(row.max())
    t = (row.astype(np.float32) - lo) / max(1e-6, hi - lo)
    return int(np.argmax(t >= 0.9) - np.argmax(t >= 0.1))


@pytest.fixture()
def step_edge() -> np.ndarray:
    """A 256x256 grey photo with one vertical step edge at x = 130 (not on the 4-pixel grid of the small copy)."""
    img = np.full((256, 256, 3), 40, np.uint8)
    img[:, 130:] = 210
    return img


def test_a_sharp_edge_in_the_source_comes_out_sharp(step_edge: np.ndarray) -> None:
    small = _paint(_area_down(step_edge, 4))  # the network worked at 64x64
    guided = guided_upscale(small, step_edge)
    plain = bicubic_upscale(small, 256, 256)
    row = 128
    assert guided.shape == step_edge.shape
    # blue channel falls across the edge: as steep as the source's in the guided picture, 4x softer in bicubic
    assert _edge_width(guided[row, 100:160, 2].astype(np.float32) * -1 + 255) <= 2
    assert _edge_width(plain[row, 100:160, 2].astype(np.float32) * -1 + 255) >= 4
    # and the colours on each side are the stylization's, not the photo's grey
    assert np.abs(guided[row, 20].astype(int) - small[32, 5]).max() <= 3
    assert np.abs(guided[row, 240].astype(int) - small[32, 60]).max() <= 3


def test_a_flat_region_keeps_the_stylization_colour() -> None:
    source = np.full((180, 320, 3), 128, np.uint8)
    source[60:120, 100:200] = (200, 60, 60)  # an object, so the frame is not flat everywhere
    small = np.empty((45, 80, 3), np.uint8)
    small[:] = (30, 120, 200)
    small[15:30, 25:50] = (240, 220, 20)
    out = guided_upscale(small, source)
    flat = out[10:40, 10:80].reshape(-1, 3).astype(int)
    assert np.abs(flat - (30, 120, 200)).max() <= 1
    inside = out[75:105, 120:180].reshape(-1, 3).astype(int)
    assert np.abs(inside - (240, 220, 20)).max() <= 2


def test_strokes_the_source_cannot_explain_are_kept_at_their_share() -> None:
    """Brush strokes over a flat wall (nothing in the photo to follow): STROKES of their contrast stays."""
    source = np.full((200, 200, 3), 90, np.uint8)
    small = np.full((50, 50, 3), 100, np.uint8)
    small[:, ::10] = 200  # thin vertical strokes of the painting
    small[:, 1::10] = 200
    middle = slice(60, 140)  # away from the borders, where the windows are cut
    out = guided_upscale(small, source)[100, middle, 0].astype(np.float32)
    plain = bicubic_upscale(small, 200, 200)[100, middle, 0].astype(np.float32)
    ratio = (out.max() - out.min()) / (plain.max() - plain.min())
    assert STROKES - 0.1 < ratio < STROKES + 0.1


def test_tensor_form_agrees_with_the_cpu_form(media) -> None:
    from streamer.imageio import load_image

    photo = load_image(media / "content" / "lenna.jpg", "content")[:360, :480]
    small = _paint(_area_down(photo, 3))
    cpu = guided_upscale(small, photo).astype(np.float32)
    t = guided_upscale_tensor(to_tensor(small), to_tensor(photo))
    dev = (t[0].permute(1, 2, 0) * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy().astype(np.float32)
    assert dev.shape == cpu.shape
    assert np.abs(dev - cpu).mean() < 1.0


@pytest.mark.parametrize("small_shape", [(1, 1), (2, 3), (3, 40), (5, 5)])
def test_tiny_working_sizes(small_shape) -> None:
    source = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    small = (np.random.default_rng(1).random((*small_shape, 3)) * 255).astype(np.uint8)
    for method in ("guided", "bicubic"):
        assert upscale(small, source, method).shape == source.shape
    t = guided_upscale_tensor(to_tensor(small), to_tensor(source))
    assert tuple(t.shape) == (1, 3, 64, 96) and torch.isfinite(t).all()


def test_same_size_is_untouched_and_larger_shrinks() -> None:
    source = np.zeros((40, 60, 3), np.uint8)
    same = np.full((40, 60, 3), 7, np.uint8)
    assert upscale(same, source) is same
    assert upscale(np.zeros((80, 120, 3), np.uint8), source).shape == (40, 60, 3)
    with pytest.raises(ValueError):
        upscale(np.zeros((20, 30, 3), np.uint8), source, "nearest")


def test_colours_are_kept_at_full_size(step_edge: np.ndarray) -> None:
    """--preserve-color after the way back: the source's chroma at its own sharpness."""
    coloured = step_edge.copy()
    coloured[:, 130:] = (220, 40, 40)  # a red half
    small = _paint(_area_down(coloured, 4))
    out = back_to_source(small, coloured, "guided", keep_color=True)
    red = out[128, 134:200].astype(int)
    assert (red[:, 0] > red[:, 1] + 40).all()  # red right after the edge: no chroma smear across it


# -- the flag, through the command ----------------------------------------------------------------------
class _PaintingStylizer:
    """Paints by tone like :func:`_paint`, instantly."""

    name = "paint"

    def stylize(self, frame, code, alpha=1.0, keep_color=False):
        return _paint(frame)


def test_render_upscale_flag_changes_the_way_back(media, tmp_path, capsys) -> None:
    from streamer.cli import main
    from streamer.imageio import load_image
    from tests.fakes import stand_in_model

    content = media / "content" / "lenna.jpg"
    source = load_image(content, "content")
    outs = {}
    with stand_in_model(_PaintingStylizer()):
        for method in ("guided", "bicubic"):
            dst = tmp_path / f"{method}.png"
            code = main(["-q", "render", str(content), str(dst), "--style", str(media / "style" / "la_muse.jpg"),
                         "--size", "128", "--upscale", method])
            assert code == 0, capsys.readouterr().err
            outs[method] = load_image(dst, "out")
        with pytest.raises(SystemExit) as refused:
            main(["-q", "render", str(content), str(tmp_path / "x.png"), "--style",
                  str(media / "style" / "la_muse.jpg"), "--upscale", "lanczos"])
        assert refused.value.code == 2 and "--upscale" in capsys.readouterr().err
    full = _paint(source)
    g, b = outs["guided"], outs["bicubic"]
    assert g.shape == b.shape == source.shape
    assert gradient_correlation(g, full) > gradient_correlation(b, full) + 0.1
    assert abs(mean_distance(g, source) - mean_distance(full, source)) < 0.15 * mean_distance(full, source)


def test_live_switch_by_stdin_shows_in_frames_hud_and_summary(capsys) -> None:
    """`upscale bicubic` typed mid-session: later frames are softer, the HUD says which, the summary counts both."""
    from streamer.live.capture import PatternSource
    from streamer.live.hotkeys import LiveState
    from streamer.live.hud import hud_lines
    from streamer.live.session import LiveSession
    from streamer.options import Style
    from tests.test_live import Collector, type_after

    out = Collector()
    state = LiveState(n_styles=1, size=48)
    assert "guided" in hud_lines(state, "paint", 10.0, 0, 50.0)[1]
    session = LiveSession(PatternSource(192, 144, fps=60), _PaintingStylizer(), [Style("paint", None, {})], state,
                          outputs=[out], fps=30, size=48, max_frames=40, stdin=True)
    type_after(session, out, 10, "upscale bicubic")
    summary = session.run()
    assert "upscale bicubic" in capsys.readouterr().out  # the reply
    assert set(summary.upscales) == {"guided", "bicubic"} and "guided x" in summary.upscale_text()
    guided = [sharpness(f) for f in out.frames[2:8]]  # the moving pattern's edges, back at 192x144 from 48 px
    bicubic = [sharpness(f) for f in out.frames[-6:]]
    assert min(guided) > 2 * max(bicubic)


def test_the_quality_tool_runs_and_guided_scores_sharper(weights_dir, clip, tmp_path):
    """tools/upscale_quality.py, behind the README's tables, on a few frames: its JSON holds both ways back, and
    guided follows the full-size render's edges better than bicubic (what the tables say at 72 frames)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "q.json"
    proc = subprocess.run([sys.executable, "-m", "tools.upscale_quality", "--styles", "la_muse", "--sizes", "96",
                           "--frames", "4", "--json", str(out), "--strips", str(tmp_path)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    renders = json.loads(out.read_text())["styles"]["la_muse"]["renders"]
    guided, bicubic = renders["96 px guided"], renders["96 px bicubic"]
    assert set(guided) == set(bicubic) and len(guided) >= 4
    assert min(guided.values()) > 0  # no empty figure
    assert guided["gradcorr_vs_full"] > bicubic["gradcorr_vs_full"]
    assert guided["gradcorr_vs_source"] > bicubic["gradcorr_vs_source"]
    assert (tmp_path / "la_muse-96.png").stat().st_size > 0
