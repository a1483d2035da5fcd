"""What a key press (or a typed command) does to the live session, as pure functions.

``handle_key(key, state) -> (new_state, actions)`` holds every rule, so it is unit-tested without a
window. Keys are normalised names: single characters (``"n"``, ``"+"``, ``"3"``) plus ``"space"`` and
``"esc"``; the window toolkits translate their key codes with :func:`normalise_key`. Without a window
the same rules are driven by text commands, one per line on stdin (:func:`handle_command`).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from engines.upscale import UPSCALE_METHODS

ALPHA_STEP = 0.1


class Action(enum.Enum):
    """Side effects the session performs after a key; the state change itself is already in the new state."""

    QUIT = "quit"
    SNAPSHOT = "snapshot"
    FULLSCREEN = "fullscreen"
    STYLE_CHANGED = "style changed"  # temporal filters reset, the log says which style
    BYPASS_CHANGED = "bypass changed"  # temporal filters reset too: the previous output is not comparable
    SIZE_CHANGED = "size changed"  # the working size was picked (pinned) or given back to --size auto
    SIZE_FIXED = "size fixed"  # [ or ] with a fixed --size: nothing to step, the log says how
    MOTION_CHANGED = "motion changed"  # --motion switched (key m): the log says so
    UPSCALE_CHANGED = "upscale changed"  # --upscale switched (key u): the log says so


@dataclass(frozen=True)
class LiveState:
    """Everything a key can change. Frozen: the engine thread reads one consistent snapshot per frame."""

    n_styles: int
    style_index: int = 0
    alpha: float = 1.0
    keep_color: bool = False
    bypass: bool = False
    hud: bool = False
    help: bool = False
    fullscreen: bool = False
    sizes: tuple[int, ...] = ()  # --size auto's ladder (smallest first); empty: the size is fixed by --size
    size: int = 0  # the working short side now (0 = the capture size)
    size_pinned: bool = False  # picked by hand ([, ], size N): --size auto holds it until 'size auto'
    motion: bool = False  # --motion: frames between engine frames follow the scene (key m)
    upscale: str = UPSCALE_METHODS[0]  # --upscale: the way back from the working size (key u)


#: key -> what it does, for the help overlay, ``help`` on stdin, and the README
HELP: tuple[tuple[str, str], ...] = (
    ("n / p", "next / previous style"),
    ("1 .. 9", "pick style 1 to 9"),
    ("+ / -", "more / less style (alpha)"),
    ("c", "keep the camera's colours on/off"),
    ("space", "bypass: show the raw camera"),
    ("[ / ]", "smaller / larger working size (pins it)"),
    ("m", "motion between engine frames on/off"),
    ("u", "way back to full size: guided / bicubic"),
    ("s", "snapshot (PNG)"),
    ("i", "HUD: style, alpha, fps, drops, latency"),
    ("h", "this help"),
    ("f", "fullscreen"),
    ("q / Esc", "quit"),
)


def normalise_key(name: str) -> str | None:
    """A toolkit's key name or character -> our key name (``None`` for keys we ignore)."""
    aliases = {" ": "space", "\x1b": "esc", "escape": "esc", "plus": "+", "minus": "-", "equal": "=",
               "kp_add": "+", "kp_subtract": "-", "underscore": "_",
               "bracketleft": "[", "bracketright": "]", "return": None, "\r": None, "\n": None}
    if not name:
        return None
    lowered = name.lower()
    if lowered in aliases:
        return aliases[lowered]
    if lowered.startswith("kp_") and lowered[3:].isdigit():
        return lowered[3:]
    if len(name) == 1:
        return lowered
    return lowered if lowered in ("space", "esc") else None


def _clamp_alpha(value: float) -> float:
    return round(min(1.0, max(0.0, value)), 2)  # rounding stops 0.1 steps drifting to 0.30000000000000004


def select_style(state: LiveState, index: int) -> tuple[LiveState, list[Action]]:
    """Switch to style ``index`` (0-based); out-of-range or unchanged picks do nothing."""
    if not 0 <= index < state.n_styles or index == state.style_index:
        return state, []
    return replace(state, style_index=index), [Action.STYLE_CHANGED]


def step_size(state: LiveState, step: int) -> tuple[LiveState, list[Action]]:
    """One rung of the size ladder down (-1) or up (+1) from the size in use, pinned there."""
    if not state.sizes:
        return state, [Action.SIZE_FIXED]
    here = min(range(len(state.sizes)), key=lambda i: abs(state.sizes[i] - state.size))
    index = min(len(state.sizes) - 1, max(0, here + step))
    return replace(state, size=state.sizes[index], size_pinned=True), [Action.SIZE_CHANGED]


def handle_key(key: str | None, state: LiveState) -> tuple[LiveState, list[Action]]:
    """The new state and the side effects of pressing ``key`` (a :func:`normalise_key` name)."""
    if key is None:
        return state, []
    if key in ("q", "esc"):
        return state, [Action.QUIT]
    if key in ("n", "p"):
        if state.n_styles < 2:
            return state, []
        step = 1 if key == "n" else -1
        return select_style(state, (state.style_index + step) % state.n_styles)
    if key in "123456789" and len(key) == 1:
        return select_style(state, int(key) - 1)
    if key in ("+", "="):  # '=' is '+' without Shift on most layouts
        return replace(state, alpha=_clamp_alpha(state.alpha + ALPHA_STEP)), []
    if key in ("-", "_"):
        return replace(state, alpha=_clamp_alpha(state.alpha - ALPHA_STEP)), []
    if key == "c":
        return replace(state, keep_color=not state.keep_color), []
    if key == "space":
        return replace(state, bypass=not state.bypass), [Action.BYPASS_CHANGED]
    if key in ("[", "]"):
        return step_size(state, -1 if key == "[" else 1)
    if key == "m":
        return replace(state, motion=not state.motion), [Action.MOTION_CHANGED]
    if key == "u":
        following = UPSCALE_METHODS[(UPSCALE_METHODS.index(state.upscale) + 1) % len(UPSCALE_METHODS)]
        return replace(state, upscale=following), [Action.UPSCALE_CHANGED]
    if key == "s":
        return state, [Action.SNAPSHOT]
    if key == "i":
        return replace(state, hud=not state.hud), []
    if key == "h":
        return replace(state, help=not state.help), []
    if key == "f":
        return replace(state, fullscreen=not state.fullscreen), [Action.FULLSCREEN]
    return state, []


def status_line(state: LiveState, style_names: list[str]) -> str:
    """One line saying what is on: the reply to a command that changed something."""
    parts = [f"style {state.style_index + 1}/{state.n_styles} {style_names[state.style_index]}",
             f"alpha {state.alpha:.2f}"]
    if state.keep_color:
        parts.append("colours kept")
    if state.bypass:
        parts.append("BYPASS (raw camera)")
    if state.sizes:
        parts.append(f"size {state.size} {'pinned' if state.size_pinned else 'auto'}")
    parts.append(f"motion {'on' if state.motion else 'off'}")
    parts.append(f"upscale {state.upscale}")
    return ", ".join(parts)


COMMAND_HELP = (
    "commands (one per line, then Enter): n, p, 1..9, +, -, c, space or bypass, s or snapshot, "
    "[, ], m, u, q or quit, alpha 0.6, style NAME_OR_NUMBER, size N or size auto, motion on|off, "
    f"upscale {'|'.join(UPSCALE_METHODS)}, styles, help"
)


def handle_command(line: str, state: LiveState, style_names: list[str]) -> tuple[LiveState, list[Action], str | None]:
    """A typed command (stdin, no window) -> (new state, actions, reply to print or ``None``).

    Single keys work as typed (``n``, ``3``, ``+``); words cover what keys cannot say
    (``alpha 0.6``, ``style la_muse``).
    """
    words = line.strip().split()
    if not words:
        return state, [], None
    cmd, rest = words[0].lower(), " ".join(words[1:])
    if cmd in ("quit", "exit"):
        return state, [Action.QUIT], None
    if cmd == "bypass":
        return (*handle_key("space", state), None)
    if cmd == "snapshot":
        return state, [Action.SNAPSHOT], None
    if cmd in ("help", "?"):
        return state, [], COMMAND_HELP
    if cmd == "styles":
        listing = ", ".join(f"{i + 1}={n}{'*' if i == state.style_index else ''}" for i, n in enumerate(style_names))
        return state, [], f"styles: {listing}"
    if cmd == "alpha":
        try:
            value = float(rest)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            return state, [], f"alpha needs a number between 0 and 1, not '{rest}'"
        new = replace(state, alpha=_clamp_alpha(value))
        if not 0.0 <= value <= 1.0:  # said, not silent: 'alpha 7' would otherwise look like it took 7
            return new, [], f"alpha {value:g} is outside 0..1: using {new.alpha:.2f}; {status_line(new, style_names)}"
        return new, [], None
    if cmd == "size":
        return _size_command(rest, state)
    if cmd == "motion":
        if rest.lower() not in ("on", "off"):
            return state, [], f"motion needs on or off, not '{rest}'"
        on = rest.lower() == "on"
        return (replace(state, motion=on), [Action.MOTION_CHANGED] if on != state.motion else [], None)
    if cmd == "upscale":
        if rest.lower() not in UPSCALE_METHODS:
            return state, [], f"upscale needs {' or '.join(UPSCALE_METHODS)}, not '{rest}'"
        method = rest.lower()
        return replace(state, upscale=method), [Action.UPSCALE_CHANGED] if method != state.upscale else [], None
    if cmd == "style":
        if rest.isdigit():
            index = int(rest) - 1
        else:
            matches = [i for i, n in enumerate(style_names) if n.lower() == rest.lower()]
            index = matches[0] if matches else -1
        if not 0 <= index < state.n_styles:
            return state, [], f"no style '{rest}'; type 'styles' for the list"
        return (*select_style(state, index), None)
    if cmd.isdigit() and not rest:
        index = int(cmd) - 1
        if not 0 <= index < state.n_styles:
            return state, [], f"no style {cmd}: there are {state.n_styles}"
        return (*select_style(state, index), None)
    key = normalise_key(cmd) if len(cmd) == 1 or cmd in ("space", "esc") else None
    if key is None or rest:
        return state, [], f"unknown command '{line.strip()}'; type 'help'"
    new, actions = handle_key(key, state)
    if new == state and not actions and key not in ("n", "p"):
        return state, [], f"unknown command '{line.strip()}'; type 'help'"
    return new, actions, None


def _size_command(rest: str, state: LiveState) -> tuple[LiveState, list[Action], str | None]:
    """``size N``: pin the ladder's size nearest N (one already built); ``size auto``: let go of it."""
    if not state.sizes:
        return state, [], f"the working size is fixed ({state.size or 'the capture size'}): start with --size auto"
    listing = ", ".join(map(str, state.sizes))
    if rest.lower() == "auto":
        return replace(state, size_pinned=False), [Action.SIZE_CHANGED], None
    if not rest.isdigit():
        return state, [], f"size needs a number of pixels ({listing}) or 'auto', not '{rest}'"
    wanted = int(rest)
    size = min(state.sizes, key=lambda s: (abs(s - wanted), s))
    new = replace(state, size=size, size_pinned=True)
    note = f"size {wanted} is not one of the built sizes ({listing}): using {size}, pinned" if size != wanted else None
    return new, [Action.SIZE_CHANGED], note
