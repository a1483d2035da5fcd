"""One rule for every progress bar (renders, downloads, engine builds): on at the default log level, off with -q."""
from __future__ import annotations

import logging


def bars_enabled() -> bool:
    """True unless logging is set above INFO (``-q``): the bars follow the info lines they sit between."""
    return logging.getLogger("streamer").isEnabledFor(logging.INFO)


def tqdm_disable(wanted: bool = True) -> bool | None:
    """tqdm's ``disable=``: True when quiet or not ``wanted``, else None (tqdm's own rule: only on a terminal)."""
    return None if wanted and bars_enabled() else True
