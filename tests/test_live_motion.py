"""live --motion: output frames between engine frames carried along the flow to the newest captured frame.

The carry itself on synthetic motion (a scrolling texture, a disc over a still background, a cut), the
rule for where to carry, the session (the virtual camera gets more distinct frames than the engine makes,
following the source; the recording keeps each stylized frame once), and the switches (--motion, m, 'motion').
"""
from __future__ import annotations

import logging
import time

import cv2
import numpy as np
import pytest

from streamer.live.command import _motion_on
from streamer.live.hotkeys import Action, LiveState, handle_command, handle_key, status_line
from streamer.live.motion import MotionCarrier, carry_weight
from streamer.sinks import Recording
from streamer.live.session import LiveSession
from tests.fakes import InvertingStylizer
from tests.test_live import Collector, fake_styles, frames_of

W, H = 320, 180


def texture(width: int = 2 * W, height: int = H, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture (blurred noise): something a flow can follow everywhere."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC), (5, 5), 0)


def mean_error(a: np.ndarray, b: np.ndarray, margin: int = 16) -> float:
    """Mean absolute difference away from the borders (where a shift brings in unseen content)."""
    diff = cv2.absdiff(a, b)
    return float((diff[margin:-margin, margin:-margin] if margin else diff).mean())


# -- the carry ---------------------------------------------------------------------------------
def test_a_stylized_frame_follows_a_scrolling_texture_to_the_newest_frame():
    big = texture()
    source, newest = big[:, 0:W].copy(), big[:, 9:9 + W].copy()  # the scene moved 9 px left
    stylized = 255 - source  # a "style" that keeps positions
    carried = MotionCarrier().carry(stylized, 3, source, 1.0, 6, newest, 1.1)
    assert carried.index == 6 and carried.t_capture == 1.1 and carried.trusted > 0.8
    unmoved = mean_error(stylized, 255 - newest)
    assert mean_error(carried.image, 255 - newest) < 0.3 * unmoved, unmoved


def disc_scene(x: int) -> np.ndarray:
    frame = texture(W, H, seed=1)
    cv2.circle(frame, (x, H // 2), 24, (250, 250, 250), -1, cv2.LINE_AA)
    return frame


def disc_mask(x: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (x, H // 2), 22, 1, -1)
    return mask.astype(bool)


def test_a_moving_disc_is_shown_where_it_is_now_over_a_still_background():
    source, newest = disc_scene(120), disc_scene(136)
    carried = MotionCarrier().carry(source.copy(), 0, source, 0.0, 3, newest, 0.1)
    white = carried.image.min(axis=2) > 230
    ahead = disc_mask(136) & ~disc_mask(120)  # where the disc is now and was not before
    assert white[ahead].mean() > 0.9 and (source.min(axis=2) > 230)[ahead].mean() < 0.2
    far = np.ones((H, W), bool)
    far[:, 80:180] = False  # the background away from the disc's path stays as it was
    assert cv2.absdiff(carried.image, source)[far].mean() < 1.0


def test_nothing_is_carried_across_a_cut_to_an_older_or_a_differently_sized_frame():
    source, other = texture(W, H, seed=2), texture(W, H, seed=3)
    stylized = 255 - source
    for index, newest in ((5, other), (2, source), (1, source), (5, cv2.resize(source, (W // 2, H // 2)))):
        shown = MotionCarrier().carry(stylized, 2, source, 0.5, index, newest, 0.9)  # fresh: no cached answer
        assert shown.image is stylized and shown.index == 2 and shown.t_capture == 0.5 and shown.trusted == 0


def test_where_the_flow_explains_the_newest_frame_worse_the_pixel_stays():
    newest = np.full((40, 40), 100, np.uint8)
    source = newest.copy()
    moved = newest.copy()
    moved[:, 20:] = 160  # moving makes the right half 60 levels worse than standing still
    weight = carry_weight(newest, source, moved)
    assert weight[:, :15].min() == pytest.approx(1.0) and weight[:, 25:].max() == pytest.approx(0.0)
    source[:, :20] = 10  # the left half: moving explains it (moved == newest) and standing still does not
    assert carry_weight(newest, source, moved)[:, :15].min() == pytest.approx(1.0)


# -- the session -------------------------------------------------------------------------------
class ScrollingSource:
    """A texture moving 2 px left per frame at 30 fps: the newest frame always shows something new."""

    live, width, height, fps = False, W, H, 30.0

    def __init__(self) -> None:
        self.big = texture(8 * W, H, seed=4)
        self.count = 0

    def read(self) -> np.ndarray:
        x = (2 * self.count) % (7 * W)
        self.count += 1
        return self.big[:, x:x + W].copy()

    def describe(self) -> str:
        return "scrolling"

    def release(self) -> None:
        pass


class SlowInverting(InvertingStylizer):
    """About 6 frames/s: the output (30 fps) has four or five ticks between two engine frames."""

    def stylize(self, frame, code, alpha=1.0, keep_color=False):
        time.sleep(0.16)
        return super().stylize(frame, code, alpha, keep_color)


def depicted(frame: np.ndarray, sources: list[np.ndarray]) -> tuple[int, float]:
    """Which source frame ``frame`` shows (the best match, centre only: a warp repeats the border pixels), and how
    well (mean abs difference, 0-255)."""
    errors = [float(cv2.absdiff(frame, s)[20:-20, 40:-40].mean()) for s in sources]
    return int(np.argmin(errors)), min(errors)


def distinct(frames: list[np.ndarray]) -> int:
    return sum(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))


def run_session(tmp_path, motion: bool, frames: int = 36):
    vcam = Collector()
    rec = Recording(tmp_path / f"motion-{motion}.mp4", W, H, 30)
    session = LiveSession(ScrollingSource(), SlowInverting(), fake_styles(None), LiveState(1, motion=motion),
                          outputs=[vcam, rec], fps=30, max_frames=frames)
    return session.run(), vcam.frames, frames_of(tmp_path / f"motion-{motion}.mp4")


def test_with_motion_the_virtual_camera_moves_between_engine_frames(tmp_path):
    summary, shown, recorded = run_session(tmp_path, motion=True)
    assert summary.frames_out == len(shown) == 36
    assert 2 <= summary.frames_stylized <= 12  # the engine really was slower than the output
    # the picture moves on ticks with no new engine frame: far more distinct frames than stylized ones
    assert distinct(shown) >= 1.5 * summary.frames_stylized, (distinct(shown), summary.frames_stylized)
    assert summary.frames_carried > 0 and summary.trusted > 0.8 and summary.frames_new == distinct(shown) + 1
    # it moves the right way: each frame is (the inverse of) a captured frame, newer and newer, never back
    scroll = ScrollingSource()
    inverted = [255 - scroll.read() for _ in range(summary.frames_captured + 5)]
    matches = [depicted(f, inverted) for f in shown]
    indices = [i for i, error in matches if error < 1.5]  # the rest: a flow partly wrong, pixels left behind
    assert len(indices) >= 0.8 * len(matches), matches
    assert all(b >= a for a, b in zip(indices, indices[1:])), indices
    assert len(set(indices)) >= 1.5 * summary.frames_stylized, indices
    assert len(recorded) <= summary.frames_stylized  # the recording: each stylized frame once, never a carried one


def test_without_motion_the_engine_frame_is_repeated_as_before(tmp_path):
    summary, shown, recorded = run_session(tmp_path, motion=False)
    assert summary.frames_out == len(shown) == 36
    assert distinct(shown) + 1 <= summary.frames_stylized and summary.frames_carried == 0
    assert summary.motion_text() == "motion off"


# -- the switches ------------------------------------------------------------------------------
def test_key_m_and_the_motion_command_switch_it():
    state = LiveState(2)
    on, actions = handle_key("m", state)
    assert on.motion and actions == [Action.MOTION_CHANGED]
    assert not handle_key("m", on)[0].motion
    new, actions, reply = handle_command("motion on", state, ["a", "b"])
    assert new.motion and actions == [Action.MOTION_CHANGED] and reply is None
    assert handle_command("motion on", new, ["a", "b"])[1] == []  # already on: nothing to do
    new, _, reply = handle_command("motion maybe", state, ["a", "b"])
    assert new == state and "on or off" in reply
    assert "motion on" in status_line(on, ["a", "b"]) and "motion off" in status_line(state, ["a", "b"])


@pytest.mark.parametrize("choice, gpu, steady, on", [
    ("auto", False, True, True),  # a CPU engine is slower than the output: it pays (tools/live_motion.py)
    ("auto", True, True, False),  # a GPU keeps up with the output: nothing to carry, not measured
    ("auto", False, False, False),  # a recording alone takes each stylized frame once
    ("on", True, True, True),
    ("off", False, True, False),
])
def test_motion_auto_is_on_for_cpu_engines_with_a_steady_output(choice, gpu, steady, on):
    assert _motion_on(choice, gpu, steady) is on


def test_motion_on_with_a_recording_alone_says_it_does_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        assert _motion_on("on", False, steady=False) is False
    assert "recording keeps each stylized frame once" in caplog.text


def test_a_frame_the_flow_cannot_take_stops_motion_with_one_warning_not_the_session(monkeypatch, caplog):
    import streamer.live.motion as motion

    def refuse(*args, **kwargs):
        raise cv2.error("OpenCV(5.0.0) resize.cpp:4220: error: (-215:Assertion failed) inv_scale_x > 0")

    monkeypatch.setattr(motion.MotionCarrier, "carry", refuse)
    vcam = Collector()
    session = LiveSession(ScrollingSource(), SlowInverting(), fake_styles(None), LiveState(1, motion=True),
                          outputs=[vcam], fps=30, max_frames=20)
    with caplog.at_level(logging.WARNING):
        summary = session.run()
    assert summary.frames_out == 20 and summary.stop_reason == "20 frames done" and summary.frames_carried == 0
    warnings = [r.getMessage() for r in caplog.records if "motion between engine frames stopped" in r.getMessage()]
    assert len(warnings) == 1 and "inv_scale_x > 0" in warnings[0]
    assert not session.state.motion and summary.motion_text() == "motion off"  # the HUD and replies say so


def test_motion_thread_starts_only_when_motion_is_on(tmp_path):
    session = LiveSession(ScrollingSource(), SlowInverting(), fake_styles(None), LiveState(1), outputs=[Collector()],
                          fps=30, max_frames=8)
    session.run()
    assert session.motion.ident is None  # --motion off: nothing polling in the background


def test_motion_on_typed_into_a_recording_only_session_is_refused(tmp_path, caplog):
    session = LiveSession(ScrollingSource(), SlowInverting(), fake_styles(None), LiveState(1),
                          outputs=[Recording(tmp_path / "r.mp4", W, H, 30)], fps=30, max_frames=2)
    with caplog.at_level(logging.INFO):
        session.apply(*handle_key("m", session.state))
    assert not session.state.motion and "window or a virtual camera" in caplog.text
    session.run()


def test_big_frames_carry_less_often_rather_than_take_the_engines_cpu():
    from streamer.live.motion import MAX_BUSY, pause_after

    assert pause_after(0.012, 1 / 30) == pytest.approx(1 / 30)  # 640x360: every tick
    assert pause_after(0.040, 1 / 30) == pytest.approx(0.040 / MAX_BUSY)  # 1280x720 on a busy CPU
    assert 0.040 / pause_after(0.040, 1 / 30) <= MAX_BUSY


def test_the_measurement_tool_runs_and_reports_both_settings(tmp_path, weights_dir, media):
    """tools/live_motion.py (the README's figures) on a short run: it must keep working. (The tool measures the
    engine it asks for: --engine-wait, never torch while OpenVINO builds. At 360 px the engine stays under the
    30 fps output on any CPU, so motion on has frames to carry.)"""
    import json

    from tools import live_motion

    live_motion.main(["--sources", "test", "--seconds", "3", "--rounds", "1", "--size", "360", "--out",
                      str(tmp_path), "--weights-dir", str(weights_dir), "--strip", "3",
                      "--style", str(media / "style" / "la_muse.jpg")])
    runs = json.loads((tmp_path / "live_motion.json").read_text())
    assert [r["motion"] for r in runs] == ["off", "on"] and all(r["vcam_frames"] == 90 for r in runs)
    assert runs[0]["carried"] == 0 and runs[1]["carried"] > 0 and runs[1]["record_frames"] > 0
    assert (tmp_path / "strip_test.png").stat().st_size > 1000
