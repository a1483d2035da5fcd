"""A stylization job: what to stylize with and how, typed and picklable, checked once.

The Python API builds one from keyword arguments, the commands from their flags (:meth:`Job.from_args`); below
them, code reads a ``Job``, never an argparse namespace. It pickles, so a cluster worker gets the same one.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

from engines.backends import ENGINE_NAMES, PRECISIONS
from engines.errors import InputError
from engines.models import MODEL_NAMES
from engines.upscale import UPSCALE_METHODS

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_strength(strength: float) -> float:
    """``--temporal-strength`` must lie in [0, 1] (nan does not)."""
    if not (isinstance(strength, (int, float)) and 0.0 <= strength <= 1.0):
        shown = f"{strength:g}" if isinstance(strength, (int, float)) else repr(strength)
        raise InputError(f"--temporal-strength must be between 0 and 1, not {shown}")
    return float(strength)


def check_style_weights(weights: Sequence[float] | None, count: int | None = None) -> None:
    """Refuse weights that cannot mix ``count`` styles (any count when None); cheap, so commands call it before
    loading a model."""
    if weights is None:
        return
    if count is not None and len(weights) != count:
        raise InputError(f"--style-weights has {len(weights)} values for {count} styles")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:  # nan passes every comparison below and mixes into a flat image
        raise InputError(f"--style-weights must be finite numbers, not {bad[0]:g}")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise InputError("--style-weights must be non-negative and not all zero")


@dataclass(frozen=True)
class Job:
    """The options every command and the API share (names as the flags, without dashes)."""

    model: str = "auto"
    weights_dir: str | None = None
    decoder: str | None = None
    device: str = "auto"
    engine: str = "auto"
    precision: str = "auto"
    style_size: int = 512
    style_weights: tuple[float, ...] | None = None
    alpha: float = 1.0
    preserve_color: bool = False
    size: int = 0
    upscale: str = UPSCALE_METHODS[0]
    temporal: bool = False
    temporal_strength: float = 0.8
    mask: str | None = None  # still images: region k of the mask gets style k
    engine_wait: bool = False  # wait for the fastest engine's first build instead of starting on a ready one

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Every value within its range, in one line each: cheap, so it runs before any model loads. Each message
        names the flag (a keyword argument is its flag without dashes) and is the line the command's own check
        (``check_short_side``, ``check_style_weights``, ``check_strength``) prints: a command that builds its Job
        first says what it said before."""
        for name, allowed in (("model", ("auto", *MODEL_NAMES)), ("device", DEVICE_CHOICES),
                              ("engine", ENGINE_NAMES), ("precision", ("auto", *PRECISIONS)),
                              ("upscale", UPSCALE_METHODS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{_flag(name)} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise InputError(f"--alpha must be a number in [0, 1], not {self.alpha!r}")
        check_strength(self.temporal_strength)
        for name in ("size", "style_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                wrong = "" if isinstance(value, int) else f", not {value!r}"
                raise InputError(f"{_flag(name)} must be 0 (original) or a positive number of pixels{wrong}")
        check_style_weights(self.style_weights or None)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> Job:
        """The job a command's flags describe (flags a command does not have keep their defaults)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        if values.get("style_weights") is not None:
            values["style_weights"] = tuple(values["style_weights"])
        if isinstance(values.get("size"), str):  # live's and serve's --size (auto or N, text): they size themselves
            values.pop("size")
        return cls(**{**values, **overrides})
