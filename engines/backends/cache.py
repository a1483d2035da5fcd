"""On-disk cache of built engines (ONNX exports, TensorRT engines).

An entry is ``<stem>-<digest>.<ext>`` plus ``<same>.json`` holding the full key. The digest is a hash
of the key, so a changed model, weights file, shape profile, precision, GPU or library version looks
for a different file and the build runs again. The sidecar is compared field by field before loading:
an entry whose key does not match exactly (copied from another machine, left by another version, or
half-written) is rebuilt and replaced, never loaded. An entry whose key matches but whose file does not
load (truncated, damaged on disk) is removed and rebuilt once, with a warning: every engine reads its
cached files through :meth:`EngineCache.load` (or :class:`CacheEntry`), so none can be bricked by one.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import platformdirs
import torch

from engines.errors import StreamerError
from engines.files import Replacing
from engines.progress import bars_enabled

log = logging.getLogger(__name__)

#: bump when the layout of cached entries or the export recipe changes
CACHE_FORMAT = 1

T = TypeVar("T")


def engine_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("streamer")) / "engines"


def key_digest(key: Mapping[str, Any]) -> str:
    raw = json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def graph_weights_id(module: torch.nn.Module) -> str:
    """A hash of a module's parameters and buffers: the weights id when the caller has none (random weights)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return "t" + h.hexdigest()[:15]


def _normalise(key: Mapping[str, Any]) -> dict:
    return json.loads(json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True, default=str))


class EngineCache:
    """A folder of built engines, each found by its key and trusted only if its sidecar matches."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else engine_cache_dir()

    def path_for(self, stem: str, key: Mapping[str, Any], ext: str) -> Path:
        return self.folder / f"{stem}-{key_digest(key)}.{ext}"

    def lookup(self, stem: str, key: Mapping[str, Any], ext: str) -> Path | None:
        """The entry for ``key`` if present and its recorded key matches exactly; stale entries are removed."""
        path = self.path_for(stem, key, ext)
        meta = path.with_name(path.name + ".json")
        if not path.exists():
            return None
        if path.is_dir():  # something made a folder at the entry's name: it cannot be ours, and blocks the rename
            log.warning("engine cache entry %s is a folder, not a built engine; removed it, rebuilding", path.name)
            self.remove(path)
            return None
        try:
            recorded = json.loads(meta.read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded != _normalise(key):
            log.warning("engine cache entry %s does not match this model/machine; rebuilding it", path.name)
            self.remove(path)
            return None
        return path

    def store(self, stem: str, key: Mapping[str, Any], ext: str, write: Callable[[Path], None]) -> Path:
        """Build into a temporary file with ``write(tmp_path)``, then publish the entry and its key atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path_for(stem, key, ext)
        with Replacing(path, suffix=f".{ext}") as payload, Replacing(path.with_name(path.name + ".json")) as meta:
            write(payload.path)
            meta.path.write_text(json.dumps(_normalise(key), indent=1, sort_keys=True))
            payload.commit()  # the payload first: a sidecar never points at a half-written file
            meta.commit()
        return path

    def get_or_build(self, stem: str, key: Mapping[str, Any], ext: str, write: Callable[[Path], None]) -> Path:
        found = self.lookup(stem, key, ext)
        if found is not None:
            log.debug("engine cache hit: %s", found)
            return found
        return self.store(stem, key, ext, write)

    def load(self, stem: str, key: Mapping[str, Any], ext: str, write: Callable[[Path], None],
             read: Callable[[Path], T]) -> T:
        """``read(entry)``, building the entry first if needed; an entry that fails to load is removed and
        rebuilt once, with a warning (a truncated or damaged file must not fail every later run)."""
        path = self.get_or_build(stem, key, ext, write)
        try:
            return read(path)
        except StreamerError:
            raise  # the user's problem (a missing package, say), not the file's
        except Exception as exc:  # noqa: BLE001 - whatever the runtime raises for a file it cannot parse
            log.warning("engine cache entry %s could not be loaded (%s); removed it, rebuilding",
                        path.name, first_line(exc))
            self.remove(path)
        return read(self.store(stem, key, ext, write))

    @staticmethod
    def remove(path: Path) -> None:
        """An entry and its sidecar, files or (a stray) folder; what cannot be removed stays."""
        for p in (path, path.with_name(path.name + ".json")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


def first_line(exc: BaseException, limit: int = 120) -> str:
    """A runtime's (often multi-line, C++-flavoured) error as one short line for a log message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else exc.__class__.__name__  # runtimes put the reason last, after the location
    return text if len(text) <= limit else text[:limit - 1] + "…"


class CacheEntry:
    """One cached file (stem, key, builder): built on first use, read through :meth:`load`."""

    def __init__(self, cache: EngineCache, stem: str, key: Mapping[str, Any], ext: str,
                 write: Callable[[Path], None]) -> None:
        self.cache, self.stem, self.key, self.ext, self.write = cache, stem, dict(key), ext, write

    @property
    def path(self) -> Path:
        """The entry's file, built now if missing or stale."""
        return self.cache.get_or_build(self.stem, self.key, self.ext, self.write)

    def is_built(self) -> bool:
        """Whether the entry is in the cache, its key matching (builds nothing)."""
        return self.cache.lookup(self.stem, self.key, self.ext) is not None

    def load(self, read: Callable[[Path], T]) -> T:
        """``read(path)``; a file that fails to load is removed and rebuilt once, with a warning."""
        return self.cache.load(self.stem, self.key, self.ext, self.write, read)


@contextlib.contextmanager
def quiet_build(loggers: tuple[str, ...], hide_warnings: bool = True) -> Iterator[None]:
    """Builders (exporters, quantisers) narrate every step on stdout and in their logs: keep only errors."""
    noisy = [logging.getLogger(n) for n in loggers]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            if hide_warnings:
                warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def build_progress(desc: str, enabled: bool = True) -> Iterator[None]:
    """A ticking elapsed-time bar for builds that give no progress of their own (exports, TensorRT builds)."""
    log.info("%s (first time only; cached afterwards)", desc)
    if not enabled or not bars_enabled() or not sys.stderr.isatty():
        yield
        return
    from tqdm import tqdm

    stop = threading.Event()
    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", leave=False, dynamic_ncols=True)

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        stop.set()
        t.join()
        bar.close()
        log.info("%s: done in %.1f s", desc, time.perf_counter() - start)
