"""Live's and serve's ``--size``: what it may be (:func:`working_size`), where a session starts
(:func:`first_size`, :func:`target_rate`), and ``--size auto``: the working size chosen while running, to keep the
engine at ``--target-fps``.

Pure functions over a frozen :class:`Sizing`: measured step times in, a size out, so every decision is
unit-tested without an engine. The rules, and why:

* the sizes are a short ladder (:func:`ladder`, at most :data:`RUNGS`, multiples of the model's factor), all
  built before the first frame, and no more than an engine keeps built (``PerShape``): a switch never stalls;
* down after :data:`SLOW_STEPS` steps in a row whose smoothed rate is under 95% of the target: to the largest
  rung predicted (by the area ratio) to reach the target, at least one rung, so a far-off start settles fast;
* up a rung only when the rate predicted there stays at or above 115% of the target for :data:`FAST_STEPS`
  steps: predicted from the step times last measured at both rungs where it has been there (the area ratio
  alone is optimistic: resizing and overheads do not shrink with the area), from the area ratio otherwise;
  so after going up the rate is still above 95% and it does not come straight back;
* after a switch, :data:`COOLDOWN` steps without a decision, and the smoothing starts again at the new size.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from engines.errors import InputError

CPU_SIZE = 360  # where --size auto starts on a CPU: microast runs near real time there
AUTO_MIN_SOURCE = 160  # default --size on a CPU: auto, except for sources this small (stylized as they are)
CPU_TARGET_FPS = 12.0  # --size auto's default on a CPU: smooth enough to watch, reachable at ~300 px by microast
RUNGS = 4  # engines keep the last four frame sizes built (engines.backends.base.PerShape)
RATIO = 0.75  # one rung down: 0.75 of the side, 0.56 of the area (about 1.8x faster)
MIN_SIDE = 64
SLOW_STEPS = 3
FAST_STEPS = 8
COOLDOWN = 3
DOWN_BELOW = 0.95
UP_ABOVE = 1.15
SMOOTH = 0.3  # weight of the newest step in the running mean


def working_size(text: str | int | None) -> str | int | None:
    """``--size`` of live and serve: ``auto``, 0 (the capture size) or a short side in pixels; None stays None."""
    from streamer.options import check_short_side

    if text is None or str(text).lower() == "auto":
        return None if text is None else "auto"
    try:
        size = int(text)
    except ValueError:
        raise InputError(f"--size must be auto or a number of pixels, not '{text}'") from None
    if size < 0:
        raise InputError("--size must be 0 (capture size) or a positive number of pixels")
    check_short_side(size, "--size")
    return size


def first_size(asked: str | int | None, short_side: int, gpu: bool) -> tuple[int, bool]:
    """(the working size to start at, whether ``--size auto`` steers it) for a source of ``short_side``.

    Not given: the capture size on a GPU or for a source this small, else auto. Auto starts at the capture
    size on a GPU, at :data:`CPU_SIZE` at most on a CPU. A number above the short side would only upscale:
    the capture size (0)."""
    if asked is None:
        asked = 0 if gpu or short_side <= AUTO_MIN_SOURCE else "auto"
    if asked == "auto":
        return (short_side if gpu else min(short_side, CPU_SIZE)), True
    return (0 if int(asked) > short_side else int(asked)), False


def target_rate(asked: float | None, fps: float, gpu: bool) -> float:
    """The engine rate ``--size auto`` holds: as asked, else the output rate on a GPU, :data:`CPU_TARGET_FPS` on a
    CPU."""
    return asked or (fps if gpu else CPU_TARGET_FPS)


def auto_sizing(factor: int, short_side: int, first: int) -> Sizing:
    """The controller for ``--size auto``, on its ladder below the source's short side, at ``first``."""
    return start(ladder(factor, short_side, first), first)


def ladder(factor: int, short_side: int, start: int) -> tuple[int, ...]:
    """Working short sides, smallest first: from one rung above ``start`` (capped at the capture's
    ``short_side``) down, each a multiple of ``factor``, :data:`RUNGS` of them where the floor allows."""
    factor = max(1, factor)
    top = min(short_side, round(start / RATIO))
    sizes: list[int] = []
    side = float(top)
    while len(sizes) < RUNGS and side >= MIN_SIDE:
        size = short_side if round(side) >= short_side else max(factor, round(side / factor) * factor)
        if size not in sizes:
            sizes.append(size)
        side *= RATIO
    return tuple(sorted(sizes)) or (short_side,)


@dataclass(frozen=True)
class Sizing:
    """Where the controller stands: the ladder, the rung in use, and its running counts."""

    sizes: tuple[int, ...]
    index: int
    step_s: float = 0.0  # smoothed seconds a step at the current size (0 = none measured yet)
    slow: int = 0
    fast: int = 0
    cooldown: int = COOLDOWN
    pinned: bool = False
    seen: tuple[float, ...] = ()  # per rung, the smoothed step time last measured there (0 = never there)

    @property
    def size(self) -> int:
        return self.sizes[self.index]


def start(sizes: tuple[int, ...], size: int) -> Sizing:
    """The controller at the largest rung not above ``size`` (the smallest if all are)."""
    fits = [i for i, s in enumerate(sizes) if s <= size]
    return Sizing(sizes, fits[-1] if fits else 0, seen=(0.0,) * len(sizes))


def _moved(s: Sizing, index: int) -> Sizing:
    return replace(s, index=index, step_s=0.0, slow=0, fast=0, cooldown=COOLDOWN)


def next_size(s: Sizing, step_s: float, target_fps: float) -> Sizing:
    """The controller after one engine step of ``step_s`` seconds at ``s.size``; pinned: unchanged."""
    if s.pinned or step_s <= 0:
        return s
    mean = step_s if s.step_s == 0 else (1 - SMOOTH) * s.step_s + SMOOTH * step_s
    seen = s.seen or (0.0,) * len(s.sizes)
    s = replace(s, step_s=mean, seen=seen[:s.index] + (mean,) + seen[s.index + 1:])
    if s.cooldown > 0:
        return replace(s, cooldown=s.cooldown - 1)
    rate = 1.0 / mean
    slow = s.slow + 1 if rate < DOWN_BELOW * target_fps else 0
    fast = 0
    if s.index + 1 < len(s.sizes):
        up = s.seen[s.index + 1]
        predicted = rate * (mean / up if up else (s.size / s.sizes[s.index + 1]) ** 2)
        fast = s.fast + 1 if predicted >= UP_ABOVE * target_fps else 0
    if slow >= SLOW_STEPS and s.index > 0:
        reach = [i for i in range(s.index) if rate * (s.size / s.sizes[i]) ** 2 >= target_fps]
        return _moved(s, reach[-1] if reach else 0)
    if fast >= FAST_STEPS:
        return _moved(s, s.index + 1)
    return replace(s, slow=slow, fast=fast)


def nearest(sizes: tuple[int, ...], size: int) -> int:
    """The rung closest to ``size`` (a typed ``size N``), so a hand-picked size is one already built."""
    return min(range(len(sizes)), key=lambda i: (abs(sizes[i] - size), sizes[i]))


def pin(s: Sizing, size: int) -> Sizing:
    """Held at the rung nearest ``size`` until :func:`unpin`."""
    index = nearest(s.sizes, size)
    moved = s if index == s.index else _moved(s, index)
    return replace(moved, pinned=True)


def unpin(s: Sizing) -> Sizing:
    """Back to automatic, measuring afresh from the current rung."""
    return replace(_moved(s, s.index), pinned=False) if s.pinned else s
