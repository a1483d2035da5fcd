"""`streamer live --size auto`: the size controller (step times in, size out), its hysteresis, the hand-pinned
size ([, ], ``size N``) and the command end to end with an engine whose speed depends on the frame's area."""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

from streamer.cli import main
from streamer.live import sizing
from streamer.live.hotkeys import Action, LiveState, handle_command, handle_key
from streamer.live.sizing import COOLDOWN, FAST_STEPS, SLOW_STEPS, ladder, next_size, pin, start, unpin
from streamer.options import Style
from tests.fakes import stand_in_model

SIZES = (152, 204, 272, 360)


def run(s: sizing.Sizing, step_of, target: float, steps: int) -> list[int]:
    """The size after each of ``steps`` engine steps, each taking ``step_of(size)`` seconds."""
    out = []
    for _ in range(steps):
        s = next_size(s, step_of(s.size), target)
        out.append(s.size)
    return out


def area_engine(seconds_at_360: float, noise: float = 0.0, seed: int = 0):
    """Step time proportional to the area, plus a fixed 5 ms, with +-``noise`` relative jitter."""
    rng = random.Random(seed)
    return lambda size: (0.005 + seconds_at_360 * (size / 360) ** 2) * (1 + rng.uniform(-noise, noise))


def test_ladder_is_short_sorted_multiples_of_the_factor_capped_at_the_capture():
    assert ladder(4, 360, 360) == SIZES
    assert all(s % 8 == 0 for s in ladder(8, 720, 360)) and max(ladder(8, 720, 360)) == 480
    assert ladder(4, 96, 96) == (72, 96)  # the floor (64 px) cuts it short
    assert len(ladder(16, 2160, 360)) == sizing.RUNGS  # no more than an engine keeps built


def test_start_is_the_largest_rung_not_above_the_asked_size():
    assert start(SIZES, 360).size == 360 and start(SIZES, 300).size == 272 and start(SIZES, 10).size == 152


def test_a_slow_engine_steps_down_to_a_size_that_reaches_the_target_and_stays():
    sizes = run(start(SIZES, 360), area_engine(0.25), 12.0, 60)  # 4 fps at 360: ~14 fps needs 152..204
    assert sizes[COOLDOWN + SLOW_STEPS - 2] == 360  # no decision in the cool-down and before N slow steps
    assert sizes[-1] < 360 and len(set(sizes[20:])) == 1  # settled
    assert 1 / area_engine(0.25)(sizes[-1]) >= 0.95 * 12


def test_a_fast_engine_steps_up_and_never_past_the_capture_size():
    sizes = run(start(SIZES, 152), area_engine(0.02), 12.0, 200)
    assert sizes[FAST_STEPS] == 152  # waits for FAST_STEPS good steps first
    assert sizes[-1] == 360


def test_no_oscillation_on_noisy_times_near_a_threshold():
    """Step times jitter +-30% around a rate where one rung is too slow and the next down is enough."""
    s = start(SIZES, 360)
    sizes = run(s, area_engine(0.15, noise=0.3, seed=1), 12.0, 400)  # 272: ~11.5 fps, 204: ~19 fps
    switches = sum(a != b for a, b in zip(sizes, sizes[1:]))
    assert sizes[-1] == 204 and switches <= 3


def test_up_uses_the_step_time_measured_at_the_rung_above_not_only_the_area():
    """Overheads that do not shrink with the area make the area ratio optimistic: having been too slow at
    272, the controller does not go back up although 204 x (272/204)^2 would promise enough."""
    heavy = lambda size: 0.055 if size == 204 else (0.095 if size == 272 else 0.3)  # 18 fps vs 10.5 fps
    sizes = run(start(SIZES, 272), heavy, 12.0, 300)
    assert sizes[-1] == 204 and sizes.count(272) < 15


def test_pinned_size_is_held_whatever_the_step_times_until_unpinned():
    s = pin(start(SIZES, 360), 210)
    assert s.size == 204 and s.pinned
    assert set(run(s, lambda size: 1.0, 12.0, 50)) == {204}
    assert run(unpin(s), lambda size: 1.0, 12.0, 50)[-1] == 152


def test_brackets_step_the_working_size_and_pin_it():
    state = LiveState(n_styles=1, sizes=SIZES, size=272)
    down, actions = handle_key("[", state)
    assert (down.size, down.size_pinned, actions) == (204, True, [Action.SIZE_CHANGED])
    assert handle_key("]", handle_key("]", down)[0])[0].size == 360
    assert handle_key("[", LiveState(n_styles=1, sizes=SIZES, size=152))[0].size == 152  # the floor
    fixed = LiveState(n_styles=1, size=288)  # --size 288: nothing to step, the log says how
    assert handle_key("[", fixed) == (fixed, [Action.SIZE_FIXED])


def test_size_command_pins_the_nearest_built_size_and_auto_lets_go():
    state = LiveState(n_styles=1, sizes=SIZES, size=360)
    new, actions, reply = handle_command("size 272", state, ["a"])
    assert (new.size, new.size_pinned, actions, reply) == (272, True, [Action.SIZE_CHANGED], None)
    near, _, reply = handle_command("size 250", state, ["a"])
    assert near.size == 272 and "152, 204, 272, 360" in reply
    back, _, _ = handle_command("size auto", new, ["a"])
    assert not back.size_pinned
    assert "number of pixels" in handle_command("size big", state, ["a"])[2]
    assert "--size auto" in handle_command("size 200", LiveState(n_styles=1, size=288), ["a"])[2]


class AreaStylizer:
    """Sleeps in proportion to the frame's area (0.3 s at 320x180), so only a smaller size keeps up."""

    name = "area"

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def stylize(self, frame, code, alpha=1.0, keep_color=False):
        self.shapes.append(frame.shape[:2])
        time.sleep(0.3 * frame.shape[0] * frame.shape[1] / (320 * 180))
        return 255 - frame


def test_live_size_auto_steps_down_and_reports_the_working_sizes(tmp_path, capsys):
    engine = AreaStylizer()
    out = tmp_path / "rec.mp4"
    styles = lambda paths: [Style("s", tmp_path / "s.png", {})]
    with stand_in_model(engine, styles, any_style_path=True):
        rc = main(["live", "--no-stdin", "--source", "test", "--capture-size", "320x180", "--size", "auto",
                   "--target-fps", "12", "--record", str(out), "--max-frames", "16", "--style", "x.png"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "working sizes 76, 101, 135, 180, starting at 180"  # a stand-in: factor 1 in err
    assert "working size 180 x" in err and "working size 180 -> " in err
    assert min(engine.shapes[-3:]) < (180, 320)  # the last frames were stylized smaller
    assert out.is_file()


@pytest.mark.parametrize("bad", ["big", "-3"])
def test_bad_size_is_one_line(bad, capsys):
    assert main(["live", "--no-stdin", "--source", "test", "--record", "x.mp4", "--size", bad, "--style", "x.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamer: error: --size must be ") and err.count("\n") == 1


def test_engine_holds_a_pinned_size_and_steps_down_once_let_go():
    """The engine thread: pinned by hand (state.size_pinned), every frame is stylized at that size however slow;
    after 'size auto' the controller takes over and steps down."""
    import threading

    from streamer.live.capture import Frame
    from streamer.live.engine_thread import EngineThread
    from streamer.live.slot import LatestSlot

    in_slot, out_slot, pinned_for = LatestSlot(), LatestSlot(), 12  # past the cool-down and N slow steps
    states = [LiveState(n_styles=1, sizes=SIZES, size=360, size_pinned=True)] * pinned_for
    states += [LiveState(n_styles=1, sizes=SIZES, size=360)] * 10
    shapes: list[tuple[int, int]] = []

    class Slow:
        def stylize(self, frame, code, alpha=1.0, keep_color=False):
            shapes.append(frame.shape[:2])
            time.sleep(0.12 if frame.shape[0] == 360 else 0.0)  # 8 fps at 360, instant below
            if len(shapes) < len(states):
                in_slot.put(Frame(np.zeros((360, 640, 3), np.uint8), len(shapes), 0.0))
            else:
                in_slot.close()
            return frame

    engine = EngineThread(Slow(), [{}], lambda: states[min(len(shapes), len(states) - 1)], in_slot, out_slot,
                          threading.Event(), sizing=start(SIZES, 360), target_fps=12.0)
    in_slot.put(Frame(np.zeros((360, 640, 3), np.uint8), 0, 0.0))
    engine.run()
    assert shapes[:pinned_for] == [(360, 640)] * pinned_for
    assert shapes[-1][0] < 360 and engine.sizes[360] >= pinned_for


@pytest.mark.parametrize("asked, short_side, gpu, expected", [
    (None, 720, False, (sizing.CPU_SIZE, True)),      # a CPU: auto, starting at CPU_SIZE
    (None, 720, True, (0, False)),                    # a GPU: the capture size
    (None, sizing.AUTO_MIN_SOURCE, False, (0, False)),  # a source this small: as it is
    ("auto", 240, False, (240, True)),                # auto never starts above the source
    ("auto", 720, True, (720, True)),
    (300, 720, False, (300, False)),
    (900, 720, False, (0, False)),                    # above the source would only upscale: its own size
    (0, 720, False, (0, False)),
])
def test_first_size_is_one_rule_for_live_and_serve(asked, short_side, gpu, expected):
    assert sizing.first_size(asked, short_side, gpu) == expected


def test_target_rate_and_working_size():
    assert sizing.target_rate(None, 30.0, gpu=True) == 30.0
    assert sizing.target_rate(None, 30.0, gpu=False) == sizing.CPU_TARGET_FPS
    assert sizing.target_rate(8.0, 30.0, gpu=False) == 8.0
    assert sizing.working_size("AUTO") == "auto" and sizing.working_size(None) is None
    assert sizing.working_size("96") == 96
    for bad, message in (("big", "must be auto or a number"), ("-1", r"0 \(capture size\) or a positive")):
        with pytest.raises(Exception, match=message):
            sizing.working_size(bad)
    s = sizing.auto_sizing(8, 720, 360)
    assert s.size == 360 and s.sizes[-1] == 480 and all(x % 8 == 0 for x in s.sizes)


def test_target_fps_with_a_size_too_large_names_the_size_asked_then_the_clamp(tmp_path, capsys):
    """--target-fps beside a number: the warning names the --size the user gave (not the 0 it was clamped to), then
    the one line saying the size is larger than the source."""
    from tests.fakes import InvertingStylizer

    styles = lambda paths: [Style("s", tmp_path / "s.png", {})]
    with stand_in_model(InvertingStylizer(), styles, any_style_path=True):
        rc = main(["live", "--no-stdin", "--source", "test", "--capture-size", "96x64", "--size", "9999",
                   "--target-fps", "10", "--record", str(tmp_path / "rec.mp4"), "--max-frames", "2",
                   "--style", "x.png"])
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = [line for line in err.splitlines() if "--size" in line]
    assert lines == ["streamer: --target-fps only steers --size auto: the size stays at --size 9999",
                     "streamer: --size 9999 is larger than the source's short side (64 px): stylizing at its own size"]
