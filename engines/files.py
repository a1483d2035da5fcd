"""The one temp-then-rename writer and the one file hasher, for every file streamer writes for itself
(weights, engine and style caches, checkpoints, training logs).

A user's outputs go through ``streamer.fileutil.AtomicOutput`` instead: the same rename at the end, plus
what only a user's file needs (an exclusive, locked ``.NAME.part``, the overwrite rule, the same-file guard).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from types import TracebackType

_HASH_CHUNK = 1 << 20


class Replacing:
    """A new temporary file beside ``dest`` that becomes ``dest`` in one rename.

    ``with Replacing(dest) as tmp: write(tmp.path)`` publishes on a clean exit and removes the temporary file
    on any error, so a crash, a full disk or a signal never leaves half a file at ``dest`` nor a stray
    temporary beside it. ``commit()`` publishes earlier, for files that must appear in a given order.
    """

    def __init__(self, dest: Path, suffix: str = ".part") -> None:
        self.dest = Path(dest)
        fd, name = tempfile.mkstemp(dir=self.dest.parent, prefix=f".{self.dest.name}.", suffix=suffix)
        os.close(fd)
        self.path = Path(name)
        self._committed = False

    def commit(self) -> None:
        os.replace(self.path, self.dest)
        self._committed = True

    def discard(self) -> None:
        if not self._committed:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> Replacing:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if kind is None and not self._committed:
                self.commit()
        finally:
            self.discard()


# (resolved path, size, mtime_ns) -> sha256 hex: hashing a few MB on every model load is wasted work.
_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()


def _digest_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex), memoised per (path, size, mtime) so repeated checks are cheap; OSError if unreadable."""
    path = Path(path)
    key = _digest_key(path)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    remember_sha256(path, digest.hexdigest())
    return digest.hexdigest()


def remember_sha256(path: Path, value: str) -> None:
    """Record a digest computed while writing ``path`` (a download), so its first use does not hash it again."""
    try:
        key = _digest_key(Path(path))
    except OSError:
        return
    with _DIGESTS_LOCK:
        _DIGESTS[key] = value
