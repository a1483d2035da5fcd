"""No waiting for a build (issue 22): render and live start on torch while OpenVINO builds in the background, then
switch between two frames; a failed build or check keeps torch with one warning; a warm cache starts on OpenVINO.

Real microast and real engines at tiny sizes, each cold test with an engine cache of its own (XDG_CACHE_HOME).
A test seam holds the stylizing thread at one frame until the background engine has been checked on it, so
the switch falls inside the run on any machine (no timing)."""
from __future__ import annotations

import fractions
import logging
import os
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from engines.backends.switch import EngineSpans, UpgradingEngine, background_targets
from engines.backends.torch_engine import TorchEngine
from streamer.cli import main

FRAMES = 24
HOLD_AT = 8  # the stylize call held until the built engine is checked on its frame: frames 0-7 run on torch


def pts_of(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def seconds_of(path: Path) -> list[fractions.Fraction]:
    with av.open(str(path)) as c:
        return [f.pts * f.time_base for f in c.decode(video=0)]


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def hold_until_switched(monkeypatch: pytest.MonkeyPatch, at_call: int) -> list[str]:
    """Call ``at_call`` of UpgradingEngine.run waits for the background build, runs (its frame is the check's),
    then waits for the check to pass: the next call runs on the built engine. Returns the engine of each call."""
    engines: list[str] = []
    real_run = UpgradingEngine.run

    def run(self, image, alpha, code):
        if len(engines) + 1 == at_call:
            assert self.checking.wait(300), "the background build never finished"
        out = real_run(self, image, alpha, code)
        engines.append(self.name)  # after the call: a switch happens as it starts
        if len(engines) == at_call:
            assert self.switched.wait(300), "the built engine never passed its check"
        return out

    monkeypatch.setattr(UpgradingEngine, "run", run)
    return engines


@pytest.fixture()
def warnings() -> list[str]:
    """Every warning the project logs during the test (its own handler: the CLI resets the root logger's)."""
    found: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                found.append(record.getMessage())

    handler = Keep()
    for name in ("engines", "streamer"):
        logging.getLogger(name).addHandler(handler)
    yield found
    for name in ("engines", "streamer"):
        logging.getLogger(name).removeHandler(handler)


@pytest.fixture()
def cold_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


def render_args(clip: Path, out: Path, style: Path, weights_dir: Path, *extra: str) -> list[str]:
    return ["render", str(clip), str(out), "--style", str(style), "--style-size", "128", "--size", "64",
            "--max-frames", str(FRAMES), "--model", "microast", "--weights-dir", str(weights_dir), *extra]


@pytest.fixture(scope="module")
def style(media: Path) -> Path:
    return media / "style" / "brushstrokes.jpg"


# -- render --------------------------------------------------------------------------------------------
def test_render_switches_to_openvino_between_two_frames_and_keeps_every_frame(
        cold_cache, clip, style, weights_dir, tmp_path, monkeypatch, capsys, warnings) -> None:
    pytest.importorskip("openvino")
    engines = hold_until_switched(monkeypatch, HOLD_AT)
    out = tmp_path / "out.mp4"
    assert main(render_args(clip, out, style, weights_dir)) == 0
    err = capsys.readouterr().err
    assert "engine: torch fp32 on cpu now; building openvino fp32 in the background" in err
    assert engines == ["torch"] * HOLD_AT + ["openvino"] * (FRAMES - HOLD_AT)
    assert f"engine torch fp32 for frames 0-{HOLD_AT - 1}, then openvino fp32 for frames {HOLD_AT}-{FRAMES - 1}" in err
    assert "switched to openvino" in err and warnings == []
    # every frame once, in order, on the source's timestamps
    assert pts_of(out) == pts_of(clip)[:FRAMES]
    assert seconds_of(out) == seconds_of(clip)[:FRAMES]
    frames = frames_of(out)
    assert len(frames) == FRAMES and all(f.std() > 10 for f in frames)  # pictures, not blanks
    # across the switch the pictures go on as before: the step from torch's last frame to openvino's first is
    # no larger than the video's own steps from frame to frame (an engine change would show as a jump)
    steps = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, frames[1:])]
    assert steps[HOLD_AT - 1] <= max(steps[:HOLD_AT - 1] + steps[HOLD_AT:]) + 0.5
    # the build is cached: the next render starts on openvino at once, with no background work
    again = tmp_path / "again.mp4"
    assert main(render_args(clip, again, style, weights_dir)) == 0
    err = capsys.readouterr().err
    assert "in the background" not in err and "engine: openvino" in err
    assert re.search(r"; engine openvino fp32$", err, re.M)
    assert len(engines) == FRAMES  # no engine in between this time


def test_engine_wait_builds_first(cold_cache, clip, style, weights_dir, tmp_path, capsys) -> None:
    pytest.importorskip("openvino")
    out = tmp_path / "out.mp4"
    assert main(render_args(clip, out, style, weights_dir, "--engine-wait", "--max-frames", "3")) == 0
    err = capsys.readouterr().err
    assert "in the background" not in err and "engine openvino fp32" in err
    assert len(pts_of(out)) == 3


class WrongPictures(TorchEngine):
    """A stand-in for a faster engine whose pictures are wrong (the negative): its check must refuse it."""

    name = "openvino"

    def run(self, image, alpha, code):
        return 1.0 - super().run(image, alpha, code)


@pytest.mark.parametrize("failure", ["build", "check"])
def test_a_failed_background_build_keeps_torch_with_one_warning(
        failure, cold_cache, clip, style, weights_dir, tmp_path, monkeypatch, capsys, warnings) -> None:
    pytest.importorskip("openvino")

    def build(kind, model, device, precision, weights_id, shape_hint):
        if failure == "build":
            raise RuntimeError(f"{kind} could not compile (simulated)")
        return WrongPictures(model, device, precision)

    monkeypatch.setattr("engines.backends.switch.build_in_child", lambda spec, started=None: None)  # no export
    monkeypatch.setattr("engines.backends._build", build)
    out = tmp_path / "out.mp4"
    assert main(render_args(clip, out, style, weights_dir)) == 0
    err = capsys.readouterr().err
    assert len(warnings) == 1, err
    assert f"streamer: {warnings[0]}" in err  # said once, on stderr
    if failure == "build":
        assert "openvino fp32 could not be built (openvino could not compile (simulated))" in warnings[0]
    else:
        assert "openvino fp32 failed its check" in warnings[0] and "needs 40" in warnings[0]
    assert "staying on torch fp32" in warnings[0] and "switched" not in err
    assert re.search(r"; engine torch fp32$", err, re.M)
    assert pts_of(out) == pts_of(clip)[:FRAMES]


def test_torch_and_openvino_pictures_match(media, style, weights_dir) -> None:
    """What a person sees at the switch: the same frame from both engines, within 40 dB (measured: 80 dB)."""
    pytest.importorskip("openvino")
    from engines.backends.openvino_engine import OpenVINOEngine
    from engines.models import load_model
    from engines.ops import psnr
    from engines.stylizer import Stylizer, resize_short_side
    from streamer.imageio import load_image

    model = load_model("microast", str(weights_dir))
    frame = resize_short_side(load_image(media / "content" / "chicago.jpg", "content"), 128)
    torch_side = Stylizer(model, TorchEngine(model, torch.device("cpu")))
    openvino_side = Stylizer(model, OpenVINOEngine(model, torch.device("cpu")))
    code = torch_side.encode_style(load_image(style, "style"), 128)
    a, b = torch_side.stylize(frame, code), openvino_side.stylize(frame, code)
    db = psnr(torch.from_numpy(a / 255.0), torch.from_numpy(b / 255.0))
    assert db >= 40.0
    if os.environ.get("STREAMER_SAVE_PICTURES"):  # to look at: torch | openvino
        from PIL import Image

        Image.fromarray(np.concatenate([a, b], axis=1)).save(os.environ["STREAMER_SAVE_PICTURES"])


# -- live ----------------------------------------------------------------------------------------------
def test_live_recording_across_the_switch_holds_each_frame_once_in_order(
        cold_cache, style, weights_dir, tmp_path, monkeypatch, capsys, warnings) -> None:
    pytest.importorskip("openvino")
    engines = hold_until_switched(monkeypatch, 5)
    out = tmp_path / "live.mp4"
    rc = main(["live", "--no-stdin", "--source", "test", "--capture-size", "160x96", "--record", str(out),
               "--max-frames", "16", "--style", str(style), "--style-size", "128", "--model", "microast",
               "--precision", "fp32", "--weights-dir", str(weights_dir)])
    err = capsys.readouterr().err
    assert rc == 0, err
    frames, times = frames_of(out), seconds_of(out)
    assert len(frames) == 16 and "wrote" in err
    assert all(b > a for a, b in zip(times, times[1:]))  # each stylized frame once, in capture order
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() > 0.5 for a, b in zip(frames, frames[1:]))
    assert engines[:5] == ["torch"] * 5 and engines[5] == "openvino"
    assert re.search(r"torch fp32 for frames 0-4, then openvino fp32 for frames 5-\d+", err), err
    assert warnings == []


# -- the pieces --------------------------------------------------------------------------------------
def test_what_is_built_in_the_background() -> None:
    cpu = [("openvino", "fp32"), ("onnxruntime", "fp32"), ("torch", "fp32")]
    assert background_targets(cpu, "cpu") == [("openvino", "fp32"), ("onnxruntime", "fp32")]
    assert background_targets([("torch", "fp32")], "cpu") == []
    gpu = [("tensorrt", "fp16"), ("torch-cuda", "fp16"), ("onnxruntime", "fp16"), ("torch", "fp16")]
    assert background_targets(gpu, "cuda") == [("tensorrt", "fp16"), ("torch-cuda", "fp16")]
    assert background_targets(gpu, "cuda", have_triton=False) == [("tensorrt", "fp16")]
    assert background_targets([("torch-cuda", "fp16"), ("torch", "fp16")], "cuda", have_triton=False) == []


def test_spans_say_which_engine_ran_when() -> None:
    spans = EngineSpans()
    assert spans.text() == "none"
    spans.note("torch fp32", 3)
    assert spans.text() == "torch fp32"
    spans.note("torch fp32")
    spans.note("openvino fp32", 8)
    assert spans.text() == "torch fp32 for frames 0-3, then openvino fp32 for frames 4-11"



def build_processes(cache: Path) -> list[int]:
    """Child build processes (engines.backends.switch) working for the engine cache under ``cache``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"engines.backends.switch" in cmdline and f"XDG_CACHE_HOME={cache}".encode() in environ:
            found.append(int(proc.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_ctrl_c_during_the_background_build_stops_it(clip, style, weights_dir, tmp_path) -> None:
    """Ctrl-C while OpenVINO is still building: exit 130 with the playable file as always, and the build's
    process ends with the command (nothing is left working for a run that is over)."""
    pytest.importorskip("openvino")
    import signal
    import subprocess
    import sys

    cache = tmp_path / "cache"
    out = tmp_path / "out.mp4"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    # a render long enough to be interrupted while the build runs: the whole clip, on torch at full size
    command = [sys.executable, "-m", "streamer", "render", str(clip), str(out), "--style", str(style),
               "--style-size", "128", "--model", "microast", "--weights-dir", str(weights_dir)]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own group, as a shell's foreground job
    lines = []
    for line in process.stderr:  # started: the engine is torch and the build is under way
        lines.append(line)
        if "rendering" in line:
            break
    assert build_processes(cache), "".join(lines)
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C goes to its whole foreground group
    _, rest = process.communicate(timeout=120)
    err = "".join(lines) + rest
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert "could not be built" not in err, err  # the build was stopped by the command, not hit by the Ctrl-C
    assert build_processes(cache) == []
    engines = cache / "streamer" / "engines"  # no half-written temporary file left in the engine cache
    assert not [p.name for p in engines.rglob(".*") if p.is_file()]
