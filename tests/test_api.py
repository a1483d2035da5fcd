"""The Python API (streamer.api): the README's example run as written, and what a caller would notice."""
from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from engines.errors import InputError
from streamer.job import Job

ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def _short_clip(src: Path, dst: Path, frames: int = 6) -> None:
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i == frames:
                break
            out.mux(stream.encode(frame.reformat(320, 180, "yuv420p")))
        out.mux(stream.encode(None))


def test_the_readme_example_runs_as_written(media, clip, weights_dir, tmp_path, monkeypatch, capsys):
    for name in ("la_muse", "mondrian"):
        shutil.copy(media / "style" / f"{name}.jpg", tmp_path / f"{name}.jpg")
    shutil.copy(media / "content" / "golden_gate.jpg", tmp_path / "photo.jpg")
    _short_clip(clip, tmp_path / "clip.mp4")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STREAMER_WEIGHTS_DIR", str(weights_dir))
    exec(compile(_readme_example(), "README.md", "exec"), {})
    photo = np.asarray(Image.open("photo.jpg").convert("RGB"))
    out = np.asarray(Image.open("photo-la_muse.png"))
    assert out.shape == photo.shape and out.std() > 20  # the photo's own size, not flat
    assert np.abs(out.astype(int) - photo).mean() > 20  # stylized, not the photo back
    assert "['la_muse', 'mondrian'] (512, 512)" in capsys.readouterr().out
    with av.open("clip-styled.mp4") as video:
        assert sum(1 for _ in video.decode(video=0)) == 6


def test_styles_switch_mix_and_controls_move_the_picture(media, weights_dir):
    from streamer import StyleTransfer

    st = StyleTransfer([media / "style" / "la_muse.jpg"], model="microast", size=128, weights_dir=str(weights_dir))
    st.add_style(np.asarray(Image.open(media / "style" / "mondrian.jpg").convert("RGB")), name="mondrian")
    photo = np.asarray(Image.open(media / "content" / "lenna.jpg").convert("RGB"))
    first = st(photo)
    assert first.shape == photo.shape and first.dtype == np.uint8
    st.use("mondrian")
    other = st(photo)
    st.use(0, 1, weights=[0.5, 0.5])
    mixed = st(photo)
    assert np.abs(first.astype(int) - other).mean() > 10
    halfway = np.abs(mixed.astype(int) - first).mean()
    assert 0 < halfway < np.abs(other.astype(int) - first).mean()
    distances = []
    for alpha in (1.0, 0.5, 0.0):  # alpha moves the picture towards the photo
        st.use("la_muse", alpha=alpha)
        distances.append(np.abs(st(photo).astype(int) - photo).mean())
    assert distances[0] > distances[1] > distances[2]
    with pytest.raises(InputError, match="no style named 'starry'"):
        st.use("starry")
    with pytest.raises(InputError, match="render\\(\\) needs style files"):
        st.use("mondrian")
        st.render("in.png", "out.png")


def test_frames_in_order_and_bad_input_in_one_line(media, weights_dir):
    from streamer import StyleTransfer

    st = StyleTransfer([media / "style" / "la_muse.jpg"], model="microast", size=64, temporal=True,
                       weights_dir=str(weights_dir))
    frames = [np.roll(np.asarray(Image.open(media / "content" / "lenna.jpg").convert("RGB").resize((96, 96))), i, 1)
              for i in range(3)]
    outs = list(st.frames(frames))
    assert len(outs) == 3 and all(o.shape == (96, 96, 3) for o in outs)
    with pytest.raises(InputError, match="must be \\(H, W, 3\\) uint8"):
        st(np.zeros((8, 8), np.float32))
    with pytest.raises(TypeError, match="unknown option"):
        StyleTransfer(colour=True)


def test_a_job_is_checked_once_and_pickles():
    job = Job(model="microast", size=256, style_weights=(1.0, 2.0))
    assert pickle.loads(pickle.dumps(job)) == job
    for bad, message in (({"alpha": 1.5}, "alpha must be"), ({"engine": "cuda"}, "engine must be one of"),
                         ({"size": -1}, "size must be 0"), ({"upscale": "nearest"}, "upscale must be one of")):
        with pytest.raises(InputError, match=message):
            Job(**bad)


@pytest.mark.parametrize("options,flag_check", [
    ({"style_weights": (float("nan"),)}, ("check_style_weights", [float("nan")], 1)),
    ({"style_weights": (float("inf"), 1.0)}, ("check_style_weights", [float("inf"), 1.0], 2)),
    ({"style_weights": (-1.0, 1.0)}, ("check_style_weights", [-1.0, 1.0], 2)),
    ({"style_weights": (0.0, 0.0)}, ("check_style_weights", [0.0, 0.0], 2)),
    ({"temporal_strength": 2.0}, ("check_strength", 2.0)),
    ({"temporal_strength": float("nan")}, ("check_strength", float("nan"))),
    ({"size": -1}, ("check_short_side", -1, "--size")),
    ({"style_size": -1}, ("check_short_side", -1, "--style-size")),
])
def test_a_jobs_message_is_the_line_the_commands_own_check_prints(options, flag_check):
    """A command builds its Job before some of its own checks (a video render, live): the user reads the same line
    whichever check comes first."""
    import streamer.options
    import streamer.temporal

    name, *args = flag_check
    check = getattr(streamer.options, name, None) or getattr(streamer.temporal, name)
    with pytest.raises(InputError) as by_flag:
        check(*args)
    with pytest.raises(InputError) as by_job:
        Job(**options)
    assert str(by_job.value) == str(by_flag.value)
