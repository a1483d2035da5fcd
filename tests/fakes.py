"""Stand-ins shared by several test files."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer import options
from streamer.options import Style


@dataclass
class StandIn:
    """What every command uses instead of a network while :func:`stand_in_model` is active."""

    stylizer: Any
    styles: Callable[[list[Path]], list[Style]]
    any_style_path: bool = False
    #: how many times a command asked for a model (tests check that a refusal came before any)
    built: int = 0


def empty_styles(paths: list[Path]) -> list[Style]:
    """One style per path with an empty code: for a stand-in stylizer that ignores codes."""
    return [Style(p.stem, p, {}) for p in paths]


@contextlib.contextmanager
def stand_in_model(stylizer: Any, styles: Callable[[list[Path]], list[Style]] = empty_styles, *,
                   any_style_path: bool = False) -> Iterator[StandIn]:
    """Within the block, commands take ``stylizer`` (anything with ``stylize``) instead of building a model
    and engine, and ``styles(paths)`` instead of encoding style images; ``any_style_path``: ``--style``
    names are taken as they are, without looking for the files. Everything else runs as it does for users.

    It replaces :func:`streamer.options.build_stylizer`, ``load_styles`` (and with ``any_style_path``
    ``expand_style_paths``) wherever a streamer module holds them, and puts them back after: the product
    code has no switch for tests."""
    stand_in = StandIn(stylizer, styles, any_style_path)

    def build_stylizer(*args: Any, **kwargs: Any) -> Any:
        stand_in.built += 1
        return stand_in.stylizer

    fakes: dict[str, Any] = {"build_stylizer": build_stylizer,
                             "load_styles": lambda paths, *args, **kwargs: stand_in.styles(list(paths))}
    if any_style_path:
        fakes["expand_style_paths"] = lambda items, *args, **kwargs: [Path(item) for item in items]
    originals = {name: getattr(options, name) for name in fakes}
    patched: list[tuple[Any, str, Any]] = []
    for module in [m for name, m in list(sys.modules.items()) if name.split(".")[0] == "streamer" and m]:
        for name, fake in fakes.items():
            if getattr(module, name, None) is originals[name]:
                patched.append((module, name, originals[name]))
                setattr(module, name, fake)
    try:
        yield stand_in
    finally:
        for module, name, original in patched:
            setattr(module, name, original)


class InvertingStylizer:
    """Inverts colours instantly; raises ``stop`` (default KeyboardInterrupt, a user's Ctrl-C) on call ``stop_at``."""

    name = "fake"

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls = 0
        self.stop_at = stop_at
        self.stop: BaseException = KeyboardInterrupt()

    def stylize(self, frame, code, alpha=1.0, keep_color=False):
        self.calls += 1
        if self.stop_at is not None and self.calls >= self.stop_at:
            raise self.stop
        return 255 - frame
