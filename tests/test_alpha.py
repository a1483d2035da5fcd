"""`--alpha`, the content/style trade-off, on every model and engine, and the weights that mix styles.

MicroAST's own feature blend gave a solid cyan image at alpha 0.5: these tests look at what a user
sees (distance to the content and to the full style, flat or saturated pictures, exit codes).
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from engines.backends import create_engine, engine_class
from engines.stylizer import Stylizer, resize_short_side, to_tensor, to_uint8
from streamer.cli import main
from streamer.imageio import load_image

CPU = torch.device("cpu")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
ENGINES = ["torch", *(pytest.param(k, marks=pytest.mark.skipif(
    engine_class(k).unavailable_reason(CPU, "fp32") is not None, reason=f"{k} not installed"))
    for k in ("openvino", "onnxruntime"))]


def saturated_share(rgb: np.ndarray) -> float:
    """Share of pixels with every channel at (within 3 levels of, for lossy video) 0 or 255: the old alpha
    0.5 gave all of them, (0, 255, 255)."""
    return float(((rgb <= 3) | (rgb >= 252)).all(axis=2).mean())


def assert_a_picture(rgb: np.ndarray) -> None:
    assert rgb.astype(np.float32).mean(axis=2).std() > 15, "flat output"  # spatial, not across channels
    assert saturated_share(rgb) < 0.05, "saturated output"


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.fixture(scope="module")
def photo(media: Path) -> np.ndarray:
    return resize_short_side(load_image(media / "content" / "lenna.jpg"), 96)[:96, :128]


@pytest.fixture(scope="module")
def style_rgb(media: Path) -> np.ndarray:
    return load_image(media / "style" / "la_muse.jpg")


@pytest.mark.parametrize("kind", ENGINES)
def test_microast_alpha_trades_content_for_style_monotonically(microast, photo, style_rgb, kind) -> None:
    st = Stylizer(microast, create_engine(kind, microast, CPU))
    code = st.encode_style(style_rgb, 256)
    outs = [st.stylize(photo, code, a) for a in ALPHAS]
    for out in outs:
        assert_a_picture(out)
    to_content = [distance(o, photo) for o in outs]
    to_full = [distance(o, outs[-1]) for o in outs]
    assert all(x < y for x, y in zip(to_content, to_content[1:])), to_content
    assert all(x > y for x, y in zip(to_full, to_full[1:])), to_full
    assert to_content[0] < 0.6 * to_content[-1]  # alpha 0 is close to the content ...
    assert to_content[0] < to_full[0]  # ... closer than to the full style
    # alpha 1 is the full style: exactly what the engine gives for the style's own code
    full = st.engine.run(to_tensor(photo), torch.tensor(1.0), microast.code_tensors(code))
    assert distance(outs[-1], to_uint8(full)) == 0.0


def test_alpha_one_costs_nothing_extra(microast, photo, style_rgb, monkeypatch) -> None:
    st = Stylizer(microast, create_engine("torch", microast, CPU))
    code = st.encode_style(style_rgb, 128)

    def no_own_code(image):
        raise AssertionError("alpha 1 must not encode the frame")

    monkeypatch.setattr(st, "own_code", no_own_code)
    assert_a_picture(st.stylize(photo, code, 1.0))
    with pytest.raises(AssertionError):
        st.stylize(photo, code, 0.5)


def test_adain_keeps_the_paper_feature_blend(adain_r31, photo, style_rgb, monkeypatch) -> None:
    """The VGG models blend features (exact for AdaIN): the engine gets alpha itself, no frame code."""
    st = Stylizer(adain_r31, create_engine("torch", adain_r31, CPU))
    code = st.encode_style(style_rgb, 128)
    seen = []
    run = st.engine.run
    monkeypatch.setattr(st.engine, "run", lambda image, alpha, c: seen.append(float(alpha)) or run(image, alpha, c))
    outs = [st.stylize(photo, code, a) for a in (0.0, 0.5, 1.0)]
    assert seen == [0.0, 0.5, 1.0]
    d = [distance(o, photo) for o in outs]
    assert d[0] < d[1] < d[2]


def test_masked_microast_alpha_is_a_picture_between_content_and_style(microast, photo, style_rgb, media) -> None:
    st = Stylizer(microast, create_engine("torch", microast, CPU))
    codes = [st.encode_style(style_rgb, 128), st.encode_style(load_image(media / "style" / "brushstrokes.jpg"), 128)]
    masks = np.zeros((2, *photo.shape[:2]), bool)
    masks[0, :, :64], masks[1, :, 64:] = True, True
    outs = [st.stylize_masked(photo, codes, masks, a) for a in (0.0, 0.5, 1.0)]
    for out in outs:
        assert_a_picture(out)
    d = [distance(o, photo) for o in outs]
    assert d[0] < d[1] < d[2]


# -- the command line ----------------------------------------------------------------------------------
def _one_line_error(capsys, code: int, *words: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("streamer: error: "), err
    for word in words:
        assert word in err[0]


@pytest.mark.parametrize("bad, kind", [("nan", "image"), ("inf", "image"), ("inf", "video"), ("nan", "video")])
def test_non_finite_style_weights_are_refused(bad, kind, weights_dir, media, clip, tmp_path, capsys) -> None:
    """Refused before any model is loaded: the error is the only line."""
    src, out = (media / "content" / "lenna.jpg", tmp_path / "out.png") if kind == "image" else (clip, tmp_path / "o.mp4")
    code = main(["render", str(src), str(out), "--style",
                 str(media / "style" / "la_muse.jpg"), str(media / "style" / "brushstrokes.jpg"), "--style-weights",
                 bad, "1", "--model", "microast", "--size", "32", "--style-size", "64", "--weights-dir", str(weights_dir)])
    _one_line_error(capsys, code, "--style-weights", "finite")
    assert not out.exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_render_image_at_half_alpha_is_a_picture(engine, weights_dir, media, tmp_path, capsys) -> None:
    out = tmp_path / "half.png"
    code = main(["render", str(media / "content" / "lenna.jpg"), str(out), "--style", str(media / "style" / "la_muse.jpg"),
                 "--alpha", "0.5", "--size", "96", "--style-size", "128", "--model", "microast", "--engine", engine,
                 "--weights-dir", str(weights_dir)])
    assert code == 0, capsys.readouterr().err
    assert_a_picture(np.asarray(Image.open(out).convert("RGB")))


def test_render_video_at_half_alpha_is_a_picture(weights_dir, media, clip, tmp_path, capsys) -> None:
    out = tmp_path / "half.mp4"
    code = main(["render", str(clip), str(out), "--style", str(media / "style" / "la_muse.jpg"), "--alpha", "0.5",
                 "--size", "64", "--style-size", "128", "--max-frames", "3", "--model", "microast", "--engine", "torch",
                 "--weights-dir", str(weights_dir)])
    assert code == 0, capsys.readouterr().err
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 3
    for frame in frames:
        assert_a_picture(frame)


def test_live_at_half_alpha_is_a_picture(weights_dir, media, capsys) -> None:
    from tests.test_live import FakeCamera

    FakeCamera.instances.clear()
    code = main(["live", "--no-stdin", "--source", "test", "--capture-size", "160x96", "--vcam", "--vcam-backend",
                 "tests.test_live:FakeCamera", "--max-frames", "4", "--alpha", "0.5", "--style",
                 str(media / "style" / "la_muse.jpg"), "--style-size", "128", "--model", "microast", "--engine", "torch",
                 "--weights-dir", str(weights_dir)])
    assert code == 0, capsys.readouterr().err
    (cam,) = FakeCamera.instances
    FakeCamera.instances.clear()
    assert len(cam.frames) == 4
    assert_a_picture(cam.frames[-1])


def test_live_stdin_alpha_out_of_range_says_so(tmp_path, capsys) -> None:
    from streamer.live.capture import PatternSource
    from streamer.live.hotkeys import LiveState
    from streamer.live.session import LiveSession
    from tests.test_live import Collector, FakeStylizer, fake_styles, type_after

    out = Collector()
    session = LiveSession(PatternSource(64, 48, fps=60), FakeStylizer(), fake_styles(10), LiveState(1, alpha=0.5),
                          outputs=[out], fps=30, max_frames=8, snapshot_dir=tmp_path, stdin=True)
    type_after(session, out, 2, "alpha 7", "alpha nan")
    session.run()
    printed = capsys.readouterr().out
    assert "alpha 7 is outside 0..1: using 1.00" in printed
    assert "alpha needs a number between 0 and 1, not 'nan'" in printed
    assert session.state.alpha == 1.0
