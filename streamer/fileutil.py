"""Small file-system helpers shared by the image and video readers and writers."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from engines.errors import InputError


def existing_file(path: str | Path, what: str, kind: str = "file") -> Path:
    """``path`` as a Path if it names a file; else one clear line: missing, or a folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"{what} is a folder, not {kind}: {path}")
    return path


def check_overwrite(path: str | Path, overwrite: bool) -> None:
    """An existing output is kept unless ``--overwrite``: the one refusal every command gives."""
    if not overwrite and Path(path).exists():
        raise InputError(f"output exists: {path} (use --overwrite to replace it)")


def new_file_mode() -> int:
    """The mode a new file gets under the current umask (mkstemp's temp files are private, 0600)."""
    try:
        with open("/proc/self/status") as f:  # race-free on Linux
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


# -- writing outputs: the one home for "temporary file, then rename" ------------------------------------
try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the rename still keeps half-written files away
    fcntl = None  # type: ignore[assignment]

_REASONS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.ENAMETOOLONG: "name too long"}


def write_error(path: str | Path, exc: OSError) -> InputError:
    """An OSError met while writing ``path`` as the one line a user reads (read-only, permission, disk full...)."""
    reason = _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    return InputError(f"cannot write {path}: {reason}")


def busy_error(path: str | Path) -> InputError:
    return InputError(f"{path} is being written by another streamer process right now; "
                      "wait for it to finish or choose another output")


def _try_lock(fd: int) -> bool:
    """An exclusive advisory lock on ``fd``'s open file, without waiting; the kernel drops it if we die."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks (some network mounts): go on unlocked
        return True
    return True


def part_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed: a hidden ``.NAME.part`` beside it (same file system)."""
    return path.with_name(f".{path.name}.part")


class AtomicOutput:
    """An output file written to ``.NAME.part`` beside it under an exclusive lock, renamed to ``NAME`` by commit().

    Why: a crash, a full disk or a signal never leaves a half-written file at the final name; a second
    process writing the same output refuses at once (the lock); and the kernel drops the lock when a
    process dies, so a ``.part`` left by a killed run (SIGKILL, power loss) is taken over and replaced
    by the next run instead of blocking it or lying there forever. Created before any heavy work, so
    a read-only folder or a busy output fails in a second. ``overwrite=False`` refuses an existing
    output, checked under the lock, so two runs cannot both decide the name is free.
    """

    def __init__(self, path: str | Path, overwrite: bool = True) -> None:
        self.path = Path(path)
        self.tmp_path = part_path(self.path)
        self._fd: int | None = self._open_locked()
        try:
            check_overwrite(self.path, overwrite)
        except InputError:
            self.discard()
            raise

    def _open_locked(self) -> int:
        for _ in range(5):  # the previous holder may rename or remove the file between our open and lock
            try:
                fd = os.open(self.tmp_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as exc:
                raise write_error(self.path, exc) from None
            if not _try_lock(fd):
                os.close(fd)
                raise busy_error(self.path)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.tmp_path))
            except OSError:
                same = False
            if same:
                os.ftruncate(fd, 0)  # a stale .part from a killed run starts again empty
                os.chmod(self.tmp_path, new_file_mode())
                return fd
            os.close(fd)
        raise busy_error(self.path)

    @property
    def active(self) -> bool:
        return self._fd is not None

    def commit(self) -> Path:
        """Flush the finished temp file to disk and move it to its final name (atomic on one file system)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: already committed or discarded")
        try:
            os.fsync(self._fd)  # the data is on disk before the name points at it
            os.replace(self.tmp_path, self.path)
        except OSError as exc:
            self.discard()
            raise write_error(self.path, exc) from None
        os.close(self._fd)
        self._fd = None
        return self.path

    def discard(self) -> None:
        """Remove the temp file (still under our lock, so no other run's file is touched); idempotent."""
        if self._fd is None:
            return
        try:
            self.tmp_path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def __del__(self) -> None:  # a forgotten output: never leave the temp file behind
        if getattr(self, "_fd", None) is not None:
            self.discard()


class FolderLock:
    """An exclusive lock on an output folder, so two folder renders into it cannot interleave; released on close."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None
        if fcntl is None:
            return
        try:
            self._fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise write_error(folder, exc) from None
        if not _try_lock(self._fd):
            self.close()
            raise busy_error(folder)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_output_folder(folder: Path) -> bool:
    """Create ``folder`` (and parents) if needed; True when we created it. Write problems are one line."""
    if folder.is_dir():
        return False
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return False
    except OSError as exc:
        raise write_error(folder, exc) from None
    return True
