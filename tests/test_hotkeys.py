"""Hotkeys and stdin commands as pure functions: (key, state) -> (new state, actions)."""
from __future__ import annotations

import pytest

from streamer.live.hotkeys import HELP, Action, LiveState, handle_command, handle_key, normalise_key, status_line

NAMES = ["la_muse", "mondrian", "sketch"]


def press(state: LiveState, *keys: str) -> tuple[LiveState, list[Action]]:
    actions: list[Action] = []
    for key in keys:
        state, new = handle_key(key, state)
        actions += new
    return state, actions


def test_next_previous_wrap_around_and_say_the_style_changed():
    s = LiveState(n_styles=3)
    s1, actions = handle_key("n", s)
    assert s1.style_index == 1 and actions == [Action.STYLE_CHANGED]
    assert press(s, "n", "n", "n")[0].style_index == 0
    assert press(s, "p")[0].style_index == 2


def test_one_style_has_nothing_to_switch_to():
    assert handle_key("n", LiveState(n_styles=1)) == (LiveState(n_styles=1), [])


def test_digits_pick_a_style_and_ignore_missing_ones():
    s = LiveState(n_styles=3)
    assert handle_key("3", s) == (LiveState(n_styles=3, style_index=2), [Action.STYLE_CHANGED])
    assert handle_key("9", s) == (s, [])
    assert handle_key("1", s) == (s, [])  # already on style 1: nothing to reset


def test_alpha_steps_are_clamped_and_exact():
    s = LiveState(n_styles=1, alpha=1.0)
    assert press(s, "+")[0].alpha == 1.0
    assert press(s, "-", "-", "-")[0].alpha == 0.7  # no 0.7000000000000001
    assert press(s, *["-"] * 15)[0].alpha == 0.0
    assert press(LiveState(1, alpha=0.5), "=")[0].alpha == 0.6  # '+' without Shift


@pytest.mark.parametrize("key,field", [("c", "keep_color"), ("space", "bypass"), ("i", "hud"), ("h", "help"),
                                       ("f", "fullscreen")])
def test_toggles_flip_and_flip_back(key, field):
    s = LiveState(n_styles=2)
    once = handle_key(key, s)[0]
    assert getattr(once, field) is True
    assert handle_key(key, once)[0] == s


def test_actions_for_side_effects():
    s = LiveState(n_styles=2)
    assert handle_key("q", s) == (s, [Action.QUIT])
    assert handle_key("esc", s) == (s, [Action.QUIT])
    assert handle_key("s", s) == (s, [Action.SNAPSHOT])
    assert handle_key("f", s)[1] == [Action.FULLSCREEN]
    assert handle_key("space", s)[1] == [Action.BYPASS_CHANGED]
    assert handle_key("x", s) == (s, [])
    assert handle_key(None, s) == (s, [])


def test_toolkit_key_names_are_normalised():
    assert [normalise_key(k) for k in ("N", " ", "\x1b", "Escape", "plus", "KP_Add", "minus", "KP_3", "Return",
                                       "Shift_L")] == ["n", "space", "esc", "esc", "+", "+", "-", "3", None, None]


def test_every_key_in_the_help_does_something():
    s = LiveState(n_styles=9, style_index=4, alpha=0.5)
    for keys, _ in HELP:
        for name in keys.replace(" / ", " ").replace(" .. ", " ").split():
            key = normalise_key(name)
            assert handle_key(key, s) != (s, []), name


def test_commands_switch_styles_by_number_or_name():
    s = LiveState(n_styles=3)
    assert handle_command("2\n", s, NAMES)[:2] == (LiveState(3, style_index=1), [Action.STYLE_CHANGED])
    assert handle_command("style sketch", s, NAMES)[0].style_index == 2
    assert handle_command("style 3", s, NAMES)[0].style_index == 2
    new, actions, reply = handle_command("style cubism", s, NAMES)
    assert new == s and not actions and "no style 'cubism'" in reply
    assert "no style 7" in handle_command("7", s, NAMES)[2]
    assert handle_command("n", s, NAMES)[0].style_index == 1


def test_commands_for_alpha_quit_bypass_and_help():
    s = LiveState(n_styles=3)
    assert handle_command("alpha 0.25", s, NAMES)[0].alpha == 0.25
    assert handle_command("alpha 7", s, NAMES)[0].alpha == 1.0
    assert "alpha 7 is outside 0..1: using 1.00" in handle_command("alpha 7", s, NAMES)[2]  # said, not silent
    assert handle_command("alpha -2", s, NAMES)[0].alpha == 0.0
    assert handle_command("alpha nan", s, NAMES)[:2] == (s, [])  # refused, the state kept
    assert handle_command("alpha 0.5", s, NAMES)[2] is None  # in range: the usual status line follows
    assert "number" in handle_command("alpha much", s, NAMES)[2]
    assert handle_command("quit", s, NAMES)[1] == [Action.QUIT]
    assert handle_command("q", s, NAMES)[1] == [Action.QUIT]
    assert handle_command("bypass", s, NAMES)[0].bypass
    assert handle_command("snapshot", s, NAMES)[1] == [Action.SNAPSHOT]
    assert "alpha" in handle_command("help", s, NAMES)[2]
    assert "2=mondrian" in handle_command("styles", s, NAMES)[2]
    assert handle_command("   ", s, NAMES) == (s, [], None)
    assert "unknown command" in handle_command("dance", s, NAMES)[2]


def test_u_and_upscale_command_switch_the_way_back():
    s = LiveState(n_styles=1)
    assert s.upscale == "guided"
    bicubic, actions = handle_key("u", s)
    assert bicubic.upscale == "bicubic" and actions == [Action.UPSCALE_CHANGED]
    assert handle_key("u", bicubic)[0] == s
    new, actions, reply = handle_command("upscale bicubic", s, NAMES)
    assert new.upscale == "bicubic" and actions == [Action.UPSCALE_CHANGED] and reply is None
    assert handle_command("upscale guided", s, NAMES)[:2] == (s, [])  # already: nothing to say it changed
    same, actions, reply = handle_command("upscale nearest", s, NAMES)
    assert same == s and not actions and "guided or bicubic" in reply
    assert "upscale bicubic" in status_line(bicubic, NAMES)
    assert any(k == "u" for k, _ in HELP)
