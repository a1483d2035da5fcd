"""Validate first (bad flags, files and sizes fail before any model loads), -q/-v everywhere, closed pipes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from engines.stylizer import Stylizer
from streamer.cli import build_parser, main, setup_logging

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def files(media: Path, tmp_path: Path) -> dict[str, Path]:
    """Small inputs: a 146x103 image, styles, a corrupt file, masks of the right and of another aspect."""
    content = tmp_path / "content.png"
    Image.open(media / "content" / "cornell.jpg").resize((146, 103)).save(content)
    wide_mask = tmp_path / "wide_mask.png"
    Image.open(media / "mask" / "mask.png").convert("L").resize((200, 50), Image.Resampling.NEAREST).save(wide_mask)
    mask = tmp_path / "mask.png"
    Image.open(media / "mask" / "mask.png").convert("L").resize((292, 206), Image.Resampling.NEAREST).save(mask)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    thin = tmp_path / "thin.png"
    Image.new("RGB", (4000, 100), (120, 60, 30)).save(thin)
    return {"content": content, "out": tmp_path / "out.png", "video_out": tmp_path / "out.mp4",
            "rec": tmp_path / "rec.mp4", "style": media / "style" / "la_muse.jpg",
            "style2": media / "style" / "brick.jpg", "style3": media / "style" / "tiger.jpg",
            "bad": bad, "thin": thin, "mask": mask, "wide_mask": wide_mask, "missing": tmp_path / "missing.png"}


def _run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_error(code: int, err: str, exit_code: int, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("streamer: error:")]
    assert code == exit_code and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], err


LIVE = ("live", "--no-stdin", "--source", "test", "--max-frames", "2")
#: case -> (argv with {placeholders} for ``files``, the one line's needles); exit code 2 for all
CASES = {
    # item 3: every size is checked against the image limit before any work
    "render --size": (("render", "{content}", "{out}", "-s", "{style}", "--size", "100000"),
                      ("--size 100000 is too large", "16384 px")),
    "render --style-size": (("render", "{content}", "{out}", "-s", "{style}", "--style-size", "100000"),
                            ("--style-size 100000 is too large",)),
    "style too long at --style-size": (("render", "{content}", "{out}", "-s", "{thin}", "--style-size", "1000"),
                                       ("thin.png at --style-size 1000 is too large", "40000x1000")),
    "video --size": (("render", "{clip}", "{video_out}", "-s", "{style}", "--size", "100000"),
                     ("--size 100000 is too large",)),
    "live --capture-size": ((*LIVE, "-s", "{style}", "--record", "{rec}", "--capture-size", "100000x100000"),
                            ("--capture-size is too large (100000x100000)",)),
    "live --out-size": ((*LIVE, "-s", "{style}", "--record", "{rec}", "--out-size", "20000x100"),
                        ("--out-size is too large (20000x100)",)),
    "live --size": ((*LIVE, "-s", "{style}", "--record", "{rec}", "--size", "100000"), ("--size 100000 is too large",)),
    "styles add --style-size": (("styles", "add", "{style}", "--style-size", "100000"), ("--style-size 100000",)),
    # item 13: missing and broken files, impossible combinations
    "missing mask": (("render", "{content}", "{out}", "-s", "{style}", "--mask", "{missing}"), ("mask not found",)),
    "mask regions vs styles": (("render", "{content}", "{out}", "-s", "{style}", "{style2}", "{style3}",
                                "--mask", "{mask}"), ("2 regions but 3 styles",)),
    "corrupt style": (("render", "{content}", "{out}", "-s", "{bad}"), ("cannot read style image",)),
    "corrupt input": (("render", "{bad}", "{out}", "-s", "{style}"), ("cannot read input image",)),
    "style weights": (("render", "{content}", "{out}", "-s", "{style}", "{style2}", "--style-weights", "1"),
                      ("--style-weights has 1 values for 2 styles",)),
    "video corrupt style": (("render", "{clip}", "{video_out}", "-s", "{bad}"), ("cannot read style image",)),
    "live corrupt style": ((*LIVE, "-s", "{bad}", "--record", "{rec}"), ("cannot read style image",)),
    "live record .xyz": ((*LIVE, "-s", "{style}", "--record", "rec.xyz"), ("unsupported video output type '.xyz'",)),
    "live --temporal-strength": ((*LIVE, "-s", "{style}", "--record", "{rec}", "--temporal", "--temporal-strength",
                                  "2"), ("--temporal-strength",)),
    "bench --style missing": (("bench", "--models", "microast", "--engines", "torch", "--style", "{missing}"),
                              ("style image not found",)),
    "styles add corrupt": (("styles", "add", "{bad}"), ("cannot read style image",)),
    # item 15
    "mask of another aspect": (("render", "{content}", "{out}", "-s", "{style}", "--mask", "{wide_mask}"),
                               ("the mask is 200x50 but the image is 146x103", "aspect ratio")),
    "live --fps 0": ((*LIVE, "-s", "{style}", "--record", "{rec}", "--fps", "0"), ("--fps must be greater than 0",)),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_arguments_fail_in_one_line_before_any_model_loads(case, files, clip, weights_dir, no_model, capsys,
                                                               tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, needles = CASES[case]
    names = {**files, "clip": clip}
    argv = [a.format(**{k: str(v) for k, v in names.items()}) for a in argv]
    if argv[0] != "bench":
        argv += ["--weights-dir", str(weights_dir)]
    _one_error(*_run(capsys, *argv), 2, *needles)
    assert not files["out"].exists() and not files["video_out"].exists() and not files["rec"].exists()
    assert not list(tmp_path.glob(".*.part"))


def test_missing_vcam_driver_fails_before_any_model_loads(files, weights_dir, no_model, capsys, monkeypatch):
    import pyvirtualcam

    class NoDriver:
        def __init__(self, **kwargs):
            raise RuntimeError("No v4l2 loopback device found at /dev/video[0-99]")

    monkeypatch.setitem(pyvirtualcam.camera.BACKENDS, "nodriver", NoDriver)
    _one_error(*_run(capsys, *LIVE, "-s", files["style"], "--vcam", "--vcam-backend", "nodriver",
                     "--weights-dir", weights_dir), 3, "no virtual camera available")


def test_the_sentinel_trips_when_the_arguments_are_fine(files, weights_dir, no_model, capsys):
    """The check above can fail: a valid render reaches the model, and the sentinel says so."""
    code, err = _run(capsys, "render", files["content"], files["out"], "-s", files["style"], "--weights-dir",
                     weights_dir)
    assert code == 1 and "a model was loaded before the arguments were checked" in err


def test_a_mask_of_the_same_aspect_at_another_size_is_used(files, weights_dir, capsys):
    code, err = _run(capsys, "render", files["content"], files["out"], "-s", files["style"], "--mask", files["mask"],
                     "--model", "microast", "--weights-dir", weights_dir)
    assert code == 0, err
    assert Image.open(files["out"]).size == (146, 103)


def test_size_above_the_input_is_clamped_and_said(files, weights_dir, capsys, monkeypatch):
    seen = []
    stylize = Stylizer.stylize

    def spy(self, rgb, *args, **kwargs):
        seen.append(rgb.shape[:2])
        return stylize(self, rgb, *args, **kwargs)

    monkeypatch.setattr(Stylizer, "stylize", spy)
    code, err = _run(capsys, "render", files["content"], files["out"], "-s", files["style"], "--size", "500",
                     "--model", "microast", "--weights-dir", weights_dir)
    assert code == 0, err
    assert "--size 500 is larger than the input's short side (103 px)" in err
    assert seen == [(103, 146)]  # stylized at its own size, not upscaled to 500 px
    assert Image.open(files["out"]).size == (146, 103)


def test_temporal_on_an_image_says_it_is_ignored(files, weights_dir, capsys):
    code, err = _run(capsys, "render", files["content"], files["out"], "-s", files["style"], "--temporal",
                     "--model", "microast", "--weights-dir", weights_dir)
    assert code == 0, err
    assert "--temporal" in err and "ignored" in err and files["out"].exists()


# -- item 12: -q/-v on every command, no codec chatter, closed pipes ---------------------------------
@pytest.mark.parametrize("argv", [
    ["render", "a.png", "b.png", "-s", "s.jpg"], ["live", "-s", "s.jpg"], ["models", "list"],
    ["models", "download", "all"], ["styles", "add", "s.jpg"], ["bench"], ["eval", "flicker", "a", "b"],
    ["evaluate", "flicker", "a", "b"]], ids=lambda a: " ".join(a[:2]))
def test_every_command_takes_q_and_v(argv):
    parser = build_parser()
    assert parser.parse_args([*argv, "-q"]).quiet is True
    assert parser.parse_args(["-q", *argv]).quiet is True  # an absent flag below never resets the one above
    assert parser.parse_args([*argv, "-vv"]).verbose == 2
    assert parser.parse_args(["-v", *argv]).verbose == 1
    plain = parser.parse_args(argv)
    assert plain.quiet is False and plain.verbose == 0


def test_quiet_after_the_command_prints_nothing(files, weights_dir, capsys):
    code, err = _run(capsys, "render", files["content"], files["out"], "-s", files["style"], "--model", "microast",
                     "-q", "--weights-dir", weights_dir)
    assert code == 0 and err == "" and files["out"].exists()


def test_progress_bars_follow_the_quiet_flag():
    from engines.progress import tqdm_disable

    try:
        setup_logging(0, quiet=True)
        assert tqdm_disable() is True
        setup_logging(0, quiet=False)
        assert tqdm_disable() is None  # tqdm's own rule: a bar on a terminal only
        assert tqdm_disable(False) is True
    finally:
        setup_logging(0, quiet=False)


@pytest.mark.skipif("libx265" not in av.codecs_available, reason="this FFmpeg build has no libx265")
def test_x265_chatter_only_with_v(clip, weights_dir, media, tmp_path, capfd):
    """x265 writes its banner and [info] lines straight to fd 2; capfd sees them."""
    base = ["render", str(clip), None, "-s", str(media / "style" / "la_muse.jpg"), "--model", "microast",
            "--size", "64", "--max-frames", "2", "--codec", "libx265", "--weights-dir", str(weights_dir)]
    outputs = {}
    for flags in ((), ("-v",)):
        out = tmp_path / f"x265{''.join(flags)}.mp4"
        base[2] = str(out)
        assert main([*flags, *base]) == 0
        outputs[flags] = capfd.readouterr().err
        assert out.exists()
    assert "x265 [" not in outputs[()], outputs[()]
    assert "x265 [info]" in outputs[("-v",)]


def _frames(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    for i in range(3):
        Image.fromarray(np.roll(base, i, axis=1)).save(folder / f"{i:03d}.png")
    return folder


class _ClosedPipe:
    """stdout whose reader went away (``| head``): every write and flush raises BrokenPipeError."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise OSError("no file descriptor")


def test_closed_stdout_ends_quietly(tmp_path, capsys, monkeypatch):
    frames = _frames(tmp_path / "frames")
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    code = main(["eval", "flicker", str(frames), str(frames), "--json"])
    assert code == 141
    assert capsys.readouterr().err == ""


def test_closed_pipe_in_a_real_process_ends_quietly(tmp_path):
    """`streamer eval flicker ... --json | head`: the reader is gone before the first byte is written."""
    frames = _frames(tmp_path / "frames")
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "eval", "flicker", str(frames), str(frames), "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the child has imported anything
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err.decode() == "", err.decode()
