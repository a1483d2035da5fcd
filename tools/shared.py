"""Where the shared real weights and media are, for the tests and the measurement tools.

``$STREAMER_SHARED`` if set, else a ``shared`` folder beside the checkout: ``<shared>/weights`` in the
``--weights-dir`` layout and ``<shared>/media/{content,style,mask,video}``. Nothing here names a file.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_SHARED = "STREAMER_SHARED"
_CHECKOUT = Path(__file__).resolve().parents[1]



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
