"""Where the shared real weights and media are (tests, tools, and `streamer bench`'s defaults).

``$STREAMER_SHARED`` if set, else a ``shared`` folder beside the checkout: ``<shared>/weights`` in the
``--weights-dir`` layout and ``<shared>/media/{content,style,mask,video}``. Nothing here names a file.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_SHARED = "STREAMER_SHARED"
_CHECKOUT = Path(__file__).resolve().parents[1]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm")


def shared_dir() -> Path:
    """``$STREAMER_SHARED``, else ``shared`` beside the checkout; read at every call (tests may set it)."""
    env = os.environ.get(ENV_SHARED, "").strip()
    return Path(env).expanduser() if env else _CHECKOUT.parent / "shared"


def shared_media() -> Path:
    """The shared media folder (``content/``, ``style/``, ``mask/``, ``video/``)."""
    return shared_dir() / "media"


def shared_weights() -> Path:
    """The shared weights folder (``<model>/<file>``)."""
    return shared_dir() / "weights"


def first_media(kind: str, suffixes: tuple[str, ...]) -> Path | None:
    """The first file (by name) of ``shared_media()/kind`` with one of ``suffixes``; None if there is none."""
    folder = shared_media() / kind
    if not folder.is_dir():
        return None
    return next((p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes and p.is_file()), None)
