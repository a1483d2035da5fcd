"""Style codes cached on disk, so a style costs its encoder pass once, ever.

The key covers everything that changes the code: model, weights, the image's bytes and the style size.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import platformdirs
import torch

from engines.files import Replacing, file_sha256
from engines.models.base import StyleCode

log = logging.getLogger(__name__)

CODE_FORMAT = 1


def style_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("streamer")) / "styles"


def style_key(model: str, weights_id: str, image_digest: str, style_size: int) -> str:
    raw = f"v{CODE_FORMAT}|{model}|{weights_id}|{image_digest}|{style_size}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class StyleCache:
    """A folder of ``<model>-<key>.pt`` files, each one style code; an unreadable entry is removed and recomputed."""

    def __init__(self, model: str, weights_id: str, folder: Path | None = None) -> None:
        self.model = model
        self.weights_id = weights_id
        self.folder = folder or style_cache_dir()

    def path_for(self, image_path: Path, style_size: int) -> Path:
        key = style_key(self.model, self.weights_id, file_sha256(image_path), style_size)
        return self.folder / f"{self.model}-{key}.pt"

    def get_or_compute(self, image_path: Path, style_size: int, compute: Callable[[], StyleCode]) -> StyleCode:
        entry = self.path_for(image_path, style_size)
        if entry.exists():
            try:
                code = torch.load(entry, map_location="cpu", weights_only=True)
                if not (isinstance(code, dict) and code and all(isinstance(v, torch.Tensor) for v in code.values())):
                    raise ValueError(f"it holds a {type(code).__name__}, not a style code")
                log.debug("style code from cache: %s", entry)
                return code
            except Exception as exc:  # noqa: BLE001 - a damaged entry: removed and computed again, once
                from engines.backends.cache import first_line

                log.warning("style cache entry %s could not be loaded (%s); removed it, recomputing",
                            entry.name, first_line(exc))
                entry.unlink(missing_ok=True)
        code = compute()
        self._store(entry, code)
        return code

    def _store(self, entry: Path, code: StyleCode) -> None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with Replacing(entry) as tmp:  # never a half-written (or empty) temp file left in the cache
                with tmp.path.open("wb") as f:
                    torch.save({k: v.cpu() for k, v in code.items()}, f)
        except (OSError, RuntimeError) as exc:  # a read-only or full cache only costs speed (torch's writer
            # reports a full disk as RuntimeError)
            from engines.backends.cache import first_line

            log.warning("could not cache the style code (%s); it will be recomputed next time", first_line(exc))
