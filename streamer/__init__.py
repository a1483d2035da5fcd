"""streamer: live and offline arbitrary style transfer. From Python: ``from streamer import StyleTransfer``
(:mod:`streamer.api`)."""
from __future__ import annotations

from typing import Any

__all__ = ["Job", "StyleTransfer"]


def __getattr__(name: str) -> Any:  # imported on first use: the command line starts without torch
    if name in __all__:
        from streamer import api

        return getattr(api, name)
    raise AttributeError(f"module 'streamer' has no attribute {name!r}")
